//! One cloud socket, several workers: how the cloud uses the machine.
//!
//! A dispatcher reads every datagram and hands it to one worker, each owning
//! its own [`Server`] state. Sessions are partitioned by id: worker `i`
//! hands out only ids `≡ i (mod N)`, so a session's finished flight and all
//! its records reach the worker that holds its pending handshake, replay
//! floor and counters, in the order they arrived. Hellos carry no session
//! and go by source address, so a device's cookie round trip stays on one
//! worker. Workers overlap their cache round trips (the Redis clients
//! multiplex concurrent calls on one connection), which a single receive
//! loop cannot.
//!
//! The only state shared between workers is the per-IP budget of pending
//! handshakes, so an address cannot hold N times its share by spreading
//! its hellos over workers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::server::{Batch, Closed, Server, receive_error, work};
use super::transport::Datagram;

/// Which of `count` workers a server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const ONE: Shard = Shard { index: 0, count: 1 };

    /// `random` moved onto this worker's residue class, or `None` where
    /// that would overflow (the caller draws again).
    pub fn own(self, random: u64) -> Option<u64> {
        (random - random % self.count).checked_add(self.index)
    }
}

/// Pending handshakes per source IP, shared by all workers.
#[derive(Default)]
pub struct PendingIps(Mutex<HashMap<IpAddr, usize>>);

impl PendingIps {
    /// Counts one more pending handshake from `ip` unless it holds `limit`.
    pub fn take(&self, ip: IpAddr, limit: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn give_back(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// The worker a datagram goes to.
pub fn route(data: &[u8], peer: SocketAddr, workers: usize) -> usize {
    let n = workers as u64;
    let key = match rig_proto::frame::session_of(data) {
        Some(session) => session % n,
        None => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            peer.hash(&mut h);
            h.finish() % n
        }
    };
    key as usize
}

/// Batches waiting for one worker. When a worker falls behind, the
/// dispatcher waits, and the socket's receive buffer takes the rest (where
/// the kernel counts what overflows).
const INBOX: usize = 256;
/// Most datagrams the reader thread takes off the socket before handing
/// them out: one hand-off (and at most one wakeup) per worker per batch
/// instead of per datagram, which is most of what a hand-off costs.
const BATCH: usize = 64;

/// Runs `servers` (from [`Server::sharded`]) on `socket` until `shutdown`.
///
/// On an OS socket the dispatcher is a thread of its own: when thousands of
/// devices wake at once their datagrams arrive in one burst, and a reader
/// that waits for a turn among the runtime's tasks lets the kernel's receive
/// queue overflow (measured with `rig bench storm`: 6,328 of 10,000 hellos
/// dropped with an 8 MiB buffer). The thread drains the queue into the
/// workers' inboxes as fast as the kernel fills it.
pub async fn serve(socket: Arc<dyn Datagram>, servers: Vec<Server>, shutdown: impl Future<Output = ()>) {
    let workers = servers.len();
    let mut inboxes = Vec::with_capacity(workers);
    let mut tasks = Vec::with_capacity(workers);
    for server in servers {
        let (tx, rx) = mpsc::channel(INBOX);
        inboxes.push(tx);
        tasks.push(tokio::spawn(work(socket.clone(), server, rx)));
    }
    match socket.os_socket() {
        Some(os) => read_on_a_thread(os, inboxes, shutdown).await,
        None => read_on_the_runtime(socket.as_ref(), inboxes, shutdown).await,
    }
    // The inboxes are dropped: hanging up lets each worker finish what it
    // holds and flush its aggregated refusals.
    for t in tasks {
        let _ = t.await;
    }
}

type Inbox = mpsc::Sender<Batch>;

async fn read_on_the_runtime(socket: &dyn Datagram, inboxes: Vec<Inbox>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM + 1];
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received.map_err(receive_error) {
            Ok(x) => x,
            Err(Closed(true)) => break,
            Err(Closed(false)) => continue,
        };
        let data = &buf[..n];
        let to = route(data, peer, inboxes.len());
        if inboxes[to].send(vec![(data.to_vec(), peer)]).await.is_err() {
            tracing::error!("cloud worker {to} ended; the cloud stops");
            break;
        }
    }
}

/// How often the reader thread looks up from an idle socket to see whether
/// it should stop.
const IDLE_POLL_MS: i32 = 50;

async fn read_on_a_thread(os: std::net::UdpSocket, inboxes: Vec<Inbox>, shutdown: impl Future<Output = ()>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
    let flag = stop.clone();
    let reader = std::thread::Builder::new().name("cloud reader".into()).spawn(move || {
        read_until(&os, &inboxes, &flag);
        let _ = ended_tx.send(());
    });
    let Ok(reader) = reader else {
        tracing::error!("cannot start the cloud's reader thread; the cloud stops");
        return;
    };
    tokio::pin!(ended);
    tokio::select! {
        _ = shutdown => {}
        _ = &mut ended => {}
    }
    stop.store(true, Ordering::Relaxed);
    let _ = ended.await;
    let _ = reader.join();
}

/// The reader thread's loop: the socket stays non-blocking (the workers'
/// sends share it with the runtime), so an empty queue is waited out in
/// `poll`. What the queue holds (up to [`BATCH`]) is taken at once and
/// handed out per worker.
fn read_until(os: &std::net::UdpSocket, inboxes: &[Inbox], stop: &std::sync::atomic::AtomicBool) {
    use std::os::fd::AsRawFd as _;
    let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM + 1];
    let mut batches: Vec<Batch> = vec![Vec::new(); inboxes.len()];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut taken = 0;
        let mut idle = false;
        while taken < BATCH {
            match os.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    let data = &buf[..n];
                    batches[route(data, peer, inboxes.len())].push((data.to_vec(), peer));
                    taken += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    idle = taken == 0;
                    break;
                }
                Err(e) => {
                    if let Closed(true) = receive_error(e) {
                        return;
                    }
                }
            }
        }
        for (to, batch) in batches.iter_mut().enumerate() {
            if !batch.is_empty() && inboxes[to].blocking_send(std::mem::take(batch)).is_err() {
                tracing::error!("cloud worker {to} ended; the cloud stops");
                return;
            }
        }
        if idle {
            let mut fd = libc::pollfd {
                fd: os.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own, for the length we pass.
            unsafe { libc::poll(&mut fd, 1, IDLE_POLL_MS) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_hands_out_only_its_own_ids() {
        for count in [1u64, 2, 3, 8, 16] {
            for index in 0..count {
                let s = Shard { index, count };
                for r in [0u64, 1, 12345, u64::MAX / 2, u64::MAX - 20] {
                    if let Some(id) = s.own(r) {
                        assert_eq!(id % count, index);
                    }
                }
            }
        }
        // 2^64 - 1 is a multiple of 3: its block has no room for index 1.
        assert_eq!(Shard { index: 1, count: 3 }.own(u64::MAX), None, "overflow draws again");
    }

    #[test]
    fn the_ip_budget_is_shared_and_given_back() {
        let ips = PendingIps::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(ips.take(a, 2) && ips.take(a, 2));
        assert!(!ips.take(a, 2), "a third from one address is refused");
        assert!(ips.take(b, 2), "another address has its own budget");
        ips.give_back(a);
        assert!(ips.take(a, 2));
    }
}
