//! The relay between the boards and an external cloud: one UDP socket per
//! board facing the board (the address it is told to send to) and one
//! facing the cloud, so the cloud sees each board as a distinct peer.
//!
//! Every datagram is counted as it reaches the relay, as `cloud.rx` (from
//! the board) and `cloud.tx` (from the cloud), with the payload's size: UDP
//! adds no framing of the relay's own, so the totals are the bytes the board
//! and the cloud put on the wire above IP/UDP, whatever the network then
//! does with them (a board's radio spent them either way).
//!
//! Network faults (`network:` steps) act here, both ways: a partition drops
//! everything, loss drops a seeded random fraction, delay holds each
//! datagram.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngExt as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;

use crate::timeline::{EventKind, Source, Timeline};

/// What a `network:` step does to the path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    Partition,
    Loss(f64),
    Delay(Duration),
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Loss(_) => "loss",
            FaultKind::Delay(_) => "delay",
        }
    }
}

/// A fault in force.
struct Active {
    id: u64,
    kind: FaultKind,
    /// `None`: every device.
    devices: Option<HashSet<String>>,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

#[derive(Default)]
pub(super) struct Faults {
    active: Mutex<Vec<Arc<Active>>>,
    next: AtomicU64,
}

/// What happens to one datagram.
enum Fate {
    Pass,
    Drop,
    Delay(Duration),
}

impl Faults {
    /// Waits as a byte stream on this path would (see [`super::tcp`]):
    /// while a partition lasts, then any delay, and a retransmission
    /// timeout for a chunk that loss would have taken.
    pub(super) async fn hold(&self, device: &str, rng: &mut ChaCha8Rng) {
        // Each fault counts a held chunk once, however long it stalls.
        let mut counted: HashSet<u64> = HashSet::new();
        loop {
            let (partitioned, wait) = {
                let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
                let mut wait = Duration::ZERO;
                let mut partitioned = false;
                for a in active.iter() {
                    if a.devices.as_ref().is_some_and(|d| !d.contains(device)) {
                        continue;
                    }
                    match a.kind {
                        FaultKind::Partition => partitioned = true,
                        FaultKind::Loss(p) if rng.random::<f64>() < p => wait += super::tcp::RTO,
                        FaultKind::Loss(_) => {}
                        FaultKind::Delay(d) => wait += d,
                    }
                    let holds = matches!(a.kind, FaultKind::Partition | FaultKind::Delay(_)) || !wait.is_zero();
                    if holds && counted.insert(a.id) {
                        a.delayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (partitioned, wait)
            };
            if partitioned {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            return;
        }
    }

    fn fate(&self, device: &str, rng: &mut ChaCha8Rng) -> Fate {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let mut delay = Duration::ZERO;
        let mut delayed_by: Vec<&Arc<Active>> = Vec::new();
        for a in active.iter() {
            if a.devices.as_ref().is_some_and(|d| !d.contains(device)) {
                continue;
            }
            let drop = match a.kind {
                FaultKind::Partition => true,
                FaultKind::Loss(p) => rng.random::<f64>() < p,
                FaultKind::Delay(d) => {
                    delay += d;
                    delayed_by.push(a);
                    false
                }
            };
            if drop {
                a.dropped.fetch_add(1, Ordering::Relaxed);
                return Fate::Drop;
            }
        }
        if delay.is_zero() {
            return Fate::Pass;
        }
        for a in delayed_by {
            a.delayed.fetch_add(1, Ordering::Relaxed);
        }
        Fate::Delay(delay)
    }
}

/// The relays of one cell's boards.
pub struct Relay {
    /// When a datagram last went through, in ms since `born`.
    activity: Arc<AtomicU64>,
    born: std::time::Instant,
    faults: Arc<Faults>,
    addrs: HashMap<String, SocketAddr>,
    timeline: Timeline,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    close: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// One relay per `(device, port)` on `host` (port 0: a free one), each
    /// forwarding to `upstream`.
    pub async fn open(
        host: std::net::IpAddr,
        devices: &[(String, u16)],
        upstream: SocketAddr,
        tcp: bool,
        timeline: &Timeline,
        seed: u64,
    ) -> std::io::Result<Relay> {
        let faults = Arc::new(Faults::default());
        let born = std::time::Instant::now();
        let activity = Arc::new(AtomicU64::new(0));
        let (close, closed) = tokio::sync::watch::channel(false);
        let mut addrs = HashMap::new();
        let mut tasks = Vec::new();
        for (i, (device, port)) in devices.iter().enumerate() {
            let down = crate::board::udp(&SocketAddr::new(host, *port).to_string())
                .map_err(|e| std::io::Error::new(e.kind(), format!("{device}: relay port {port}: {e}")))?;
            let mut addr = down.local_addr()?;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            }
            let up_bind = if upstream.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
            let up = crate::board::udp(if upstream.ip().is_loopback() && upstream.is_ipv4() {
                "127.0.0.1:0"
            } else {
                up_bind
            })?;
            up.connect(upstream).await?;
            addrs.insert(device.clone(), addr);
            let link = Link {
                device: device.clone(),
                down: Arc::new(down),
                up: Arc::new(up),
                faults: faults.clone(),
                timeline: timeline.clone(),
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0x7e1a_u64.wrapping_mul(i as u64 + 1)),
                activity: activity.clone(),
                born,
            };
            tasks.push(tokio::spawn(link.run(closed.clone())));
            if tcp {
                // The same port number, for the boards' TCP connections.
                let listener = tokio::net::TcpListener::bind(SocketAddr::new(host, addr.port()))
                    .await
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("{device}: TCP relay port {}: {e}", addr.port()))
                    })?;
                let t = super::tcp::TcpLink {
                    device: device.clone(),
                    listener,
                    upstream,
                    faults: faults.clone(),
                    timeline: timeline.clone(),
                    seed: seed ^ (i as u64 + 1),
                };
                tasks.push(tokio::spawn(t.run(closed.clone())));
            }
        }
        Ok(Relay {
            activity,
            born,
            faults,
            addrs,
            timeline: timeline.clone(),
            tasks,
            close,
        })
    }

    /// Where `device` sends its datagrams.
    pub fn addr(&self, device: &str) -> Option<SocketAddr> {
        self.addrs.get(device).copied()
    }

    /// Starts a fault for `d` on `devices` (all of them if `None`), as a
    /// `network.fault` event; it heals by itself with a `network.healed`.
    pub fn fault(&self, kind: FaultKind, d: Duration, devices: Option<Vec<String>>) {
        let id = self.faults.next.fetch_add(1, Ordering::Relaxed);
        let listed = devices.clone().unwrap_or_else(|| {
            let mut all: Vec<String> = self.addrs.keys().cloned().collect();
            all.sort();
            all
        });
        let active = Arc::new(Active {
            id,
            kind,
            devices: devices.map(|d| d.into_iter().collect()),
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        });
        self.faults
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(active.clone());
        self.timeline.emit(
            None,
            Source::Runner,
            EventKind::NetworkFault {
                fault: kind.name().into(),
                ms: d.as_millis() as u64,
                loss: match kind {
                    FaultKind::Loss(p) => Some(p),
                    _ => None,
                },
                delay_ms: match kind {
                    FaultKind::Delay(d) => Some(d.as_millis() as u64),
                    _ => None,
                },
                devices: listed,
            },
        );
        let faults = self.faults.clone();
        let timeline = self.timeline.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            faults
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|a| a.id != id);
            timeline.emit(
                None,
                Source::Runner,
                EventKind::NetworkHealed {
                    fault: kind.name().into(),
                    dropped: active.dropped.load(Ordering::Relaxed),
                    delayed: active.delayed.load(Ordering::Relaxed),
                },
            );
        });
    }
}

impl Relay {
    /// Waits until no datagram has gone through for `idle` (at most `max`):
    /// what the boards sent before they were switched off reaches the cloud,
    /// and its answers come back, before the cloud is stopped. (A cloud
    /// stopped at once lost the board's last record, which the relay had
    /// counted.)
    pub async fn quiesce(&self, idle: Duration, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let last = Duration::from_millis(self.activity.load(Ordering::Relaxed));
            let quiet = self.born.elapsed().saturating_sub(last);
            if quiet >= idle || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }

    /// Counts what is still queued on its sockets, then closes. Called once
    /// the cloud has stopped, so every datagram it sent is counted.
    pub async fn close(mut self) {
        self.close.send_replace(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One board's path.
struct Link {
    activity: Arc<AtomicU64>,
    born: std::time::Instant,
    device: String,
    down: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    faults: Arc<Faults>,
    timeline: Timeline,
    rng: ChaCha8Rng,
}

/// Largest datagram relayed (the most UDP carries).
const MAX_DATAGRAM: usize = 65_536;

impl Link {
    async fn run(mut self, mut closed: tokio::sync::watch::Receiver<bool>) {
        let mut from_board = vec![0u8; MAX_DATAGRAM];
        let mut from_cloud = vec![0u8; MAX_DATAGRAM];
        // Replies go where the board last sent from.
        let mut board: Option<SocketAddr> = None;
        loop {
            tokio::select! {
                _ = closed.changed() => {
                    // Counted, not forwarded: the cloud and the boards are gone.
                    while let Ok((n, peer)) = self.down.try_recv_from(&mut from_board) {
                        self.count(true, n, peer);
                    }
                    while let Ok(n) = self.up.try_recv(&mut from_cloud) {
                        if let Some(to) = board {
                            self.count(false, n, to);
                        }
                    }
                    return;
                }
                r = self.down.recv_from(&mut from_board) => {
                    let Ok((n, peer)) = r else { continue };
                    board = Some(peer);
                    self.count(true, n, peer);
                    match self.faults.fate(&self.device, &mut self.rng) {
                        Fate::Pass => {
                            let _ = self.up.send(&from_board[..n]).await;
                        }
                        Fate::Drop => {}
                        Fate::Delay(d) => {
                            let (up, b) = (self.up.clone(), from_board[..n].to_vec());
                            later(d, async move { up.send(&b).await.map(|_| ()) });
                        }
                    }
                }
                r = self.up.recv(&mut from_cloud) => {
                    // A refused send (the cloud restarting) comes back here
                    // as an error: nothing to relay.
                    let Ok(n) = r else { continue };
                    let Some(to) = board else { continue };
                    self.count(false, n, to);
                    match self.faults.fate(&self.device, &mut self.rng) {
                        Fate::Pass => {
                            let _ = self.down.send_to(&from_cloud[..n], to).await;
                        }
                        Fate::Drop => {}
                        Fate::Delay(d) => {
                            let (down, b) = (self.down.clone(), from_cloud[..n].to_vec());
                            later(d, async move { down.send_to(&b, to).await.map(|_| ()) });
                        }
                    }
                }
            }
        }
    }

    fn count(&self, from_board: bool, n: usize, peer: SocketAddr) {
        self.activity
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        let (bytes, msg, peer) = (n as u64, "datagram".to_string(), peer.to_string());
        let kind = if from_board {
            EventKind::CloudRx { bytes, msg, peer }
        } else {
            EventKind::CloudTx { bytes, msg, peer }
        };
        self.timeline.emit_device(&self.device, Source::Cloud, kind);
    }
}

/// Sends after `d` (a delayed datagram; later ones overtake nothing, as
/// every datagram of a delay fault waits as long).
fn later(d: Duration, send: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let _ = send.await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in cloud that answers every datagram with its bytes reversed.
    async fn echo_cloud() -> SocketAddr {
        let s = crate::board::udp("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut b).await {
                b[..n].reverse();
                let _ = s.send_to(&b[..n], from).await;
            }
        });
        addr
    }

    async fn ask(board: &UdpSocket, to: SocketAddr, what: &[u8]) -> Option<Vec<u8>> {
        board.send_to(what, to).await.unwrap();
        let mut b = [0u8; 2048];
        match tokio::time::timeout(Duration::from_millis(500), board.recv(&mut b)).await {
            Ok(Ok(n)) => Some(b[..n].to_vec()),
            _ => None,
        }
    }

    fn bytes(tl: &Timeline, kind: &str) -> u64 {
        tl.snapshot()
            .iter()
            .filter(|e| e.kind.name() == kind && e.is("b1"))
            .map(|e| match &e.kind {
                EventKind::CloudRx { bytes, .. } | EventKind::CloudTx { bytes, .. } => *bytes,
                _ => 0,
            })
            .sum()
    }

    #[tokio::test]
    async fn a_relay_forwards_counts_and_partitions_each_board_until_it_heals() {
        let cloud = echo_cloud().await;
        let tl = Timeline::in_memory();
        let devices = [("b1".to_string(), 0), ("b2".to_string(), 0)];
        let relay = Relay::open("127.0.0.1".parse().unwrap(), &devices, cloud, false, &tl, 1)
            .await
            .unwrap();
        let (a1, a2) = (relay.addr("b1").unwrap(), relay.addr("b2").unwrap());
        assert_ne!(a1, a2, "one port per board");
        let board = crate::board::udp("127.0.0.1:0").unwrap();
        assert_eq!(ask(&board, a1, b"abc").await.as_deref(), Some(&b"cba"[..]));
        assert_eq!((bytes(&tl, "cloud.rx"), bytes(&tl, "cloud.tx")), (3, 3));

        relay.fault(
            FaultKind::Partition,
            Duration::from_millis(1500),
            Some(vec!["b1".into()]),
        );
        assert_eq!(ask(&board, a1, b"lost").await, None, "partitioned");
        let other = crate::board::udp("127.0.0.1:0").unwrap();
        assert_eq!(
            ask(&other, a2, b"xy").await.as_deref(),
            Some(&b"yx"[..]),
            "another board's path is not cut"
        );
        // What the board sent still counts: its radio spent it.
        assert_eq!(bytes(&tl, "cloud.rx"), 7);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(ask(&board, a1, b"back").await.as_deref(), Some(&b"kcab"[..]), "healed");
        let evs = tl.snapshot();
        let fault = evs.iter().find(|e| e.kind.name() == "network.fault").unwrap();
        assert!(
            matches!(&fault.kind, EventKind::NetworkFault { fault, ms: 1500, devices, .. } if fault == "partition" && devices == &["b1".to_string()])
        );
        assert!(evs.iter().any(|e| matches!(
            &e.kind,
            EventKind::NetworkHealed { fault, dropped: 1, .. } if fault == "partition"
        )));
        relay.close().await;
    }

    #[tokio::test]
    async fn loss_drops_about_its_fraction_and_delay_holds_datagrams() {
        let cloud = echo_cloud().await;
        let tl = Timeline::in_memory();
        let relay = Relay::open(
            "127.0.0.1".parse().unwrap(),
            &[("b1".to_string(), 0)],
            cloud,
            false,
            &tl,
            7,
        )
        .await
        .unwrap();
        let a = relay.addr("b1").unwrap();
        let board = crate::board::udp("127.0.0.1:0").unwrap();
        relay.fault(
            FaultKind::Delay(Duration::from_millis(100)),
            Duration::from_secs(5),
            None,
        );
        let t = std::time::Instant::now();
        assert!(ask(&board, a, b"slow").await.is_some());
        // Held on the way there and on the way back.
        assert!(t.elapsed() >= Duration::from_millis(195), "{:?}", t.elapsed());
        relay.close().await;

        let tl = Timeline::in_memory();
        let relay = Relay::open(
            "127.0.0.1".parse().unwrap(),
            &[("b1".to_string(), 0)],
            cloud,
            false,
            &tl,
            7,
        )
        .await
        .unwrap();
        let a = relay.addr("b1").unwrap();
        relay.fault(FaultKind::Loss(0.5), Duration::from_secs(30), None);
        let mut answered = 0;
        for i in 0..40u8 {
            board.send_to(&[i], a).await.unwrap();
            let mut b = [0u8; 16];
            if tokio::time::timeout(Duration::from_millis(50), board.recv(&mut b))
                .await
                .is_ok()
            {
                answered += 1;
            }
        }
        // Each way loses half: about a quarter come back.
        assert!((3..=20).contains(&answered), "{answered} of 40 answered");
        relay.close().await;
    }

    /// A stand-in TCP cloud that answers each chunk reversed.
    async fn tcp_echo_cloud() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 {
                            break;
                        }
                        b[..n].reverse();
                        if s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_connections_are_relayed_counted_and_stalled_by_a_partition() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let cloud = tcp_echo_cloud().await;
        let tl = Timeline::in_memory();
        let relay = Relay::open(
            "127.0.0.1".parse().unwrap(),
            &[("b1".to_string(), 0)],
            cloud,
            true,
            &tl,
            3,
        )
        .await
        .unwrap();
        let mut board = tokio::net::TcpStream::connect(relay.addr("b1").unwrap()).await.unwrap();
        let mut b = [0u8; 64];
        board.write_all(b"abc").await.unwrap();
        let n = board.read(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"cba");
        assert_eq!((bytes(&tl, "cloud.rx"), bytes(&tl, "cloud.tx")), (3, 3));
        relay.fault(FaultKind::Partition, Duration::from_millis(800), None);
        board.write_all(b"held").await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_millis(400), board.read(&mut b)).await;
        assert!(stalled.is_err(), "nothing gets through a partition");
        // A stream loses nothing: what was held arrives once it heals.
        let n = tokio::time::timeout(Duration::from_secs(3), board.read(&mut b))
            .await
            .expect("through after the heal")
            .unwrap();
        assert_eq!(&b[..n], b"dleh");
        assert!(tl.snapshot().iter().any(|e| matches!(
            &e.kind,
            EventKind::NetworkHealed { delayed, .. } if *delayed >= 1
        )));
        relay.close().await;
    }
}
