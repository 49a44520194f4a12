//! One cloud socket, several workers: how the cloud uses the machine.
//!
//! Each worker owns its own [`Server`] state. Sessions are partitioned by
//! id: worker `i` hands out only ids `≡ i (mod N)`, so a session's finished
//! flight and all its records reach the worker that holds its pending
//! handshake, replay floor and counters, in the order they arrived. Workers
//! overlap their cache round trips (the Redis clients multiplex concurrent
//! calls on one connection), which a single receive loop cannot.
//!
//! On a UDP socket each worker reads sockets of its own in one
//! `SO_REUSEPORT` group ([`Datagram::sibling`]), at least [`SOCKETS`] in
//! all; the kernel keeps a source address on one socket, so a device's
//! datagrams arrive at one worker in order. A datagram of a session another
//! worker owns (a device whose NAT gave it a new port) is forwarded to that
//! worker; hellos are answered where they arrive. Measured with `rig bench`: a hand-off of every
//! datagram from one reader to the workers cost a fifth of the memory
//! cache's throughput. Elsewhere (an in-process network) one dispatcher
//! reads and hands datagrams out, hellos by source address.
//!
//! The only state shared between workers is the per-IP budget of pending
//! handshakes, so an address cannot hold N times its share by spreading
//! its hellos over workers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::server::{Batch, Closed, Server, receive_error, work, work_in_group};
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

/// The worker that owns the session a datagram names, if it names one.
pub fn owner(data: &[u8], workers: usize) -> Option<usize> {
    rig_proto::frame::session_of(data).map(|s| (s % workers as u64) as usize)
}

/// The worker a dispatcher hands a datagram to.
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

/// The sockets `workers` workers read: `socket` and its siblings (see
/// [`SOCKETS`]), or `socket` alone where it has none. Formed before the
/// first worker reads: the kernel spreads sources by the group as it is, so
/// a group still growing would move a device to another socket between its
/// hello and its cookie, and another worker's cookie key refuses it
/// (`rig bench` saw a handful of such failed handshakes per run).
pub fn group(socket: Arc<dyn Datagram>, workers: usize) -> Vec<Arc<dyn Datagram>> {
    let mut sockets = vec![socket.clone()];
    let wanted = workers * SOCKETS.div_ceil(workers.max(1));
    while sockets.len() < wanted {
        match socket.sibling() {
            Some(Ok(s)) => sockets.push(s),
            Some(Err(e)) => {
                tracing::warn!("cannot open another socket for a cloud worker ({e}); one reader hands datagrams out");
                break;
            }
            None => break,
        }
    }
    if sockets.len() < workers {
        sockets.truncate(1);
    }
    sockets
}

/// Runs `servers` (from [`Server::sharded`]) on `sockets` (from [`group`])
/// until `shutdown`.
pub async fn serve(sockets: Vec<Arc<dyn Datagram>>, servers: Vec<Server>, shutdown: impl Future<Output = ()>) {
    if sockets.len() >= servers.len() {
        in_group(sockets, servers, shutdown).await
    } else {
        dispatched(sockets[0].clone(), servers, shutdown).await
    }
}

/// Sockets of a group at least, however few workers read them: what a
/// reconnect burst meets before any worker reads is the sum of their receive
/// buffers (each at most `net.core.rmem_max`, 4 MiB here, counted double by
/// the kernel). `rig bench storm`, 10,000 hellos at once: 2 sockets let the
/// kernel drop 3,634 of them, 16 none.
const SOCKETS: usize = 16;

/// Each worker reads every `workers`-th socket.
async fn in_group(sockets: Vec<Arc<dyn Datagram>>, servers: Vec<Server>, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (inboxes, receivers): (Vec<_>, Vec<_>) = servers.iter().map(|_| mpsc::channel::<Batch>(INBOX)).unzip();
    let workers = servers.len();
    let mut shares: Vec<Vec<Arc<dyn Datagram>>> = vec![Vec::new(); workers];
    for (i, s) in sockets.into_iter().enumerate() {
        shares[i % workers].push(s);
    }
    let tasks: Vec<_> = shares
        .into_iter()
        .zip(servers)
        .zip(receivers)
        .enumerate()
        .map(|(me, ((socket, server), inbox))| {
            tokio::spawn(work_in_group(
                socket,
                server,
                me,
                inboxes.clone(),
                inbox,
                stopped.clone(),
            ))
        })
        .collect();
    drop(inboxes);
    shutdown.await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

async fn dispatched(socket: Arc<dyn Datagram>, servers: Vec<Server>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let workers = servers.len();
    let mut inboxes = Vec::with_capacity(workers);
    let mut tasks = Vec::with_capacity(workers);
    for server in servers {
        let (tx, rx) = mpsc::channel(INBOX);
        inboxes.push(tx);
        tasks.push(tokio::spawn(work(socket.clone(), server, rx)));
    }
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
        let to = route(data, peer, workers);
        if inboxes[to].send(vec![(data.to_vec(), peer)]).await.is_err() {
            tracing::error!("cloud worker {to} ended; the cloud stops");
            break;
        }
    }
    // Hanging up lets each worker finish what it holds and flush its
    // aggregated refusals.
    drop(inboxes);
    for t in tasks {
        let _ = t.await;
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
