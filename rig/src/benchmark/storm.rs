//! `rig bench storm`: the reconnect storm after a session-cache crash, on
//! real UDP sockets and the real clock.
//!
//! Every client gets a session (a bounded number at a time, as devices of a
//! fleet join over a day), the cache is killed and started empty, and then
//! all clients wake at the same instant and resume. The cloud answers
//! "session unknown" (mitigation `reject`, the fix from the incident) and
//! every client falls back to a full handshake, retransmitting a flight that
//! got no answer within [`REPLY_TIMEOUT`] as firmware does. Printed: how long
//! until the last client was back, full handshakes per second at the peak,
//! the latency of a client's way back, and the datagrams the kernel dropped
//! because the cloud's receive buffer was full, from its own counters.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rig_proto::client::{Handshake, Progress};
use rig_proto::frame::FLAG_RESUME;
use rig_proto::{Frame, Inner, InnerKind};

use super::{Client, REPLY_TIMEOUT};
use crate::cache::{CacheCfg, OpenCtx};
use crate::cloud::durable::DurableKeys;
use crate::cloud::{CloudConfig, Mitigation, Secrets};
use crate::timeline::Timeline;

/// Clients joining at once before the crash: the setup is not the storm.
const JOINING_AT_ONCE: usize = 256;
/// A flight is sent this often without an answer before the client starts
/// its handshake over.
const TRIES_PER_FLIGHT: u32 = 3;
/// A client still not back after this long counts as never reconnected.
pub const GIVE_UP: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct StormFigures {
    pub devices: usize,
    pub cache: String,
    pub workers: usize,
    /// The cloud socket's receive buffer as the kernel granted it.
    pub rcvbuf: usize,
    /// Sockets bound to the cloud's port (its workers' group), if known.
    pub sockets: Option<usize>,
    /// Time to give every client its first session.
    pub setup: Duration,
    /// Clients back within [`GIVE_UP`].
    pub reconnected: usize,
    /// Of those, clients whose old session still worked (none, when the
    /// cache came back empty).
    pub resumed: usize,
    /// From the cache's restart until the last client was back.
    pub all_back: Duration,
    /// Most full handshakes completed in one second of the storm, and which.
    pub peak_per_sec: usize,
    pub peak_second: u64,
    pub p50: Duration,
    pub p99: Duration,
    /// Flights sent again after no answer within the reply timeout.
    pub retransmits: u64,
    /// Datagrams the kernel dropped on the cloud's socket during the storm
    /// (`/proc/net/udp`); `None` where the counter cannot be read.
    pub cloud_drops: Option<u64>,
    /// All UDP receive-buffer overflows of the machine during the storm
    /// (`/proc/net/snmp`, `Udp: RcvbufErrors`): the clients' sockets too.
    pub rcvbuf_errors: Option<u64>,
}

/// How one client's way back went.
struct Back {
    after: Option<Duration>,
    /// Its old session still worked (the cache had not lost it).
    resumed: bool,
    retransmits: u64,
}

/// Runs the storm with `devices` clients against a cloud with `workers`
/// workers and the cache `cache` (its files in `dir`); `crash: false` wakes
/// the clients without killing the cache first (the control).
pub async fn run(
    devices: usize,
    cache: &CacheCfg,
    workers: usize,
    dir: &Path,
    crash: bool,
) -> anyhow::Result<StormFigures> {
    let timeline = Timeline::in_memory().retain_last(0);
    let name = cache.backend().name();
    let backend = crate::cache::open(cache, &OpenCtx { dir, seed: 1 }).await?;
    let mut clients = super::new_clients(devices).await?;
    let keys = clients.iter().map(|c| (c.id.clone(), c.psk.clone())).collect();
    let sock = crate::cloud::transport::cloud_udp("127.0.0.1:0")?;
    let rcvbuf = socket2::SockRef::from(&sock).recv_buffer_size()?;
    let cloud = sock.local_addr()?;
    let mut cfg = CloudConfig::with_secrets(keys, Secrets::Os);
    cfg.workers = workers;
    // Every client shares 127.0.0.1, as every board behind one NAT would.
    cfg.max_pending_per_ip = devices.max(cfg.max_pending_per_ip);
    let running = crate::cloud::start(
        Arc::new(sock),
        cfg,
        backend.clone(),
        DurableKeys::off(),
        Mitigation::Reject,
        &timeline,
    );

    let began = Instant::now();
    clients = join_all(clients, cloud).await;
    let setup = began.elapsed();
    let without = clients.iter().filter(|c| c.session.is_none()).count();
    anyhow::ensure!(
        without == 0,
        "{without} of {devices} clients got no session before the crash"
    );

    // A session is stored after its last flight is answered: wait until
    // every one is in the cache, or a store landing after the restart would
    // bring it back (a client resuming after the crash).
    let ids: Vec<_> = clients
        .iter()
        .filter_map(|c| c.session.as_ref().map(|s| s.id))
        .collect();
    let stored_by = Instant::now() + Duration::from_secs(10);
    loop {
        let mut missing = 0;
        for part in ids.chunks(1000) {
            missing += backend.get_many(part).await?.iter().filter(|r| r.is_none()).count();
        }
        if missing == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < stored_by,
            "{missing} sessions not in the cache 10 s after their handshakes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    if crash {
        running.cache.kill().await?;
        running.cache.start().await?;
    }
    let before = KernelCounters::read(cloud.port());
    let (go, ready) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let mut ready = ready.clone();
            tokio::spawn(async move {
                let _ = ready.wait_for(|go| *go).await;
                let t0 = Instant::now();
                let back = come_back(&mut c, cloud, t0 + GIVE_UP).await;
                (t0, back)
            })
        })
        .collect();
    let restored = Instant::now();
    let _ = go.send(true);
    let mut backs = Vec::with_capacity(devices);
    for t in tasks {
        if let Ok(b) = t.await {
            backs.push(b);
        }
    }
    let after = KernelCounters::read(cloud.port());
    running.stop().await;
    Ok(summarize(
        devices, name, workers, rcvbuf, setup, restored, backs, before, after,
    ))
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    devices: usize,
    cache: &str,
    workers: usize,
    rcvbuf: usize,
    setup: Duration,
    restored: Instant,
    backs: Vec<(Instant, Back)>,
    before: KernelCounters,
    after: KernelCounters,
) -> StormFigures {
    let retransmits = backs.iter().map(|(_, b)| b.retransmits).sum();
    // Latency from the client's own start; completion from the restart.
    let mut lat: Vec<Duration> = backs.iter().filter_map(|(_, b)| b.after).collect();
    let done: Vec<Duration> = backs
        .iter()
        .filter_map(|(t0, b)| b.after.map(|a| (*t0 + a).saturating_duration_since(restored)))
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let mut per_sec = std::collections::BTreeMap::<u64, usize>::new();
    for d in &done {
        *per_sec.entry(d.as_secs()).or_default() += 1;
    }
    let (peak_second, peak_per_sec) = per_sec
        .iter()
        .max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s)))
        .map(|(s, n)| (*s, *n))
        .unwrap_or_default();
    StormFigures {
        devices,
        cache: cache.into(),
        workers,
        rcvbuf,
        sockets: after.sockets,
        setup,
        reconnected: done.len(),
        resumed: backs.iter().filter(|(_, b)| b.resumed).count(),
        all_back: done.iter().max().copied().unwrap_or_default(),
        peak_per_sec,
        peak_second,
        p50: pct(0.5),
        p99: pct(0.99),
        retransmits,
        cloud_drops: after
            .cloud_drops
            .zip(before.cloud_drops)
            .map(|(a, b)| a.saturating_sub(b)),
        rcvbuf_errors: after
            .rcvbuf_errors
            .zip(before.rcvbuf_errors)
            .map(|(a, b)| a.saturating_sub(b)),
    }
}

/// Gives every client a session, [`JOINING_AT_ONCE`] at a time.
async fn join_all(clients: Vec<Client>, cloud: SocketAddr) -> Vec<Client> {
    let gate = Arc::new(tokio::sync::Semaphore::new(JOINING_AT_ONCE));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await;
                let mut retransmits = 0;
                handshake(&mut c, cloud, Instant::now() + GIVE_UP, &mut retransmits).await;
                c
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(c) = t.await {
            out.push(c);
        }
    }
    out
}

/// One client after the crash: resumes its old session, which the cloud no
/// longer knows, and handshakes anew.
async fn come_back(c: &mut Client, cloud: SocketAddr, give_up: Instant) -> Back {
    let t0 = Instant::now();
    let mut retransmits = 0;
    if let Some(s) = c.session.as_mut() {
        let ping = Inner {
            kind: InnerKind::Ping,
            msg_id: ((s.tx_counter + 1) & 0xffff) as u16,
            payload: vec![b' '; 40],
        };
        let frame = s.seal(FLAG_RESUME, &ping).encode();
        if c.sock.send_to(&frame, cloud).await.is_ok() {
            // The answer ("session unknown" or, were the session still
            // known, a pong) or a timeout: a handshake follows either way
            // unless the session survived.
            if let Some(Frame::Record(r)) = recv_frame(c, Instant::now() + REPLY_TIMEOUT).await
                && c.session.as_mut().and_then(|s| s.open(&r)).is_some()
            {
                return Back {
                    after: Some(t0.elapsed()),
                    resumed: true,
                    retransmits,
                };
            }
        }
    }
    c.session = None;
    let ok = handshake(c, cloud, give_up, &mut retransmits).await;
    Back {
        after: ok.then(|| t0.elapsed()),
        resumed: false,
        retransmits,
    }
}

/// A full handshake until it succeeds or `give_up`: each flight sent up to
/// [`TRIES_PER_FLIGHT`] times, then the handshake starts over.
async fn handshake(c: &mut Client, cloud: SocketAddr, give_up: Instant, retransmits: &mut u64) -> bool {
    while Instant::now() < give_up {
        c.nonce += 1;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&c.nonce.to_be_bytes());
        nonce[8..].copy_from_slice(&(c.id.len() as u64).to_be_bytes());
        let mut hs = Handshake::new(&c.id, c.psk.clone(), nonce, rig_proto::CLIENT_HELLO_PADDING as u16);
        let mut tries = 0;
        'flight: while tries < TRIES_PER_FLIGHT && Instant::now() < give_up {
            if tries > 0 {
                *retransmits += 1;
            }
            tries += 1;
            if c.sock.send_to(&hs.flight().encode(), cloud).await.is_err() {
                continue;
            }
            let wait = Instant::now() + REPLY_TIMEOUT;
            while let Some(f) = recv_frame(c, wait).await {
                match hs.on_frame(f) {
                    // A late answer to an earlier try: keep waiting.
                    Progress::Ignored => {}
                    Progress::Next => {
                        tries = 0;
                        continue 'flight;
                    }
                    Progress::Done(s) => {
                        c.session = Some(s);
                        return true;
                    }
                    Progress::Failed(_) => break 'flight,
                }
            }
        }
    }
    false
}

async fn recv_frame(c: &Client, until: Instant) -> Option<Frame> {
    let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
    loop {
        let (n, _) = tokio::time::timeout_at(until.into(), c.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if let Ok(f) = Frame::decode(&buf[..n]) {
            return Some(f);
        }
    }
}

/// The kernel's UDP drop counters.
#[derive(Debug, Clone, Copy, Default)]
struct KernelCounters {
    sockets: Option<usize>,
    cloud_drops: Option<u64>,
    rcvbuf_errors: Option<u64>,
}

impl KernelCounters {
    fn read(port: u16) -> KernelCounters {
        let table = std::fs::read_to_string("/proc/net/udp").ok();
        KernelCounters {
            sockets: sockets_on(port),
            cloud_drops: table.as_deref().and_then(|t| socket_drops(t, port)),
            rcvbuf_errors: std::fs::read_to_string("/proc/net/snmp")
                .ok()
                .and_then(|t| snmp_udp(&t, "RcvbufErrors")),
        }
    }
}

/// The rows of `/proc/net/udp` of sockets bound to local `port` (ports are
/// hex after the colon of `local_address`), split into columns.
fn bound_to(table: &str, port: u16) -> Vec<Vec<&str>> {
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.get(1).is_some_and(|a| a.ends_with(&want)))
        .collect()
}

/// How many sockets are bound to local UDP `port` on this machine.
pub(crate) fn sockets_on(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    Some(bound_to(&table, port).len())
}

/// The `drops` column summed over the sockets bound to local `port` (all
/// of the cloud's workers' group).
fn socket_drops(table: &str, port: u16) -> Option<u64> {
    let drops: Vec<u64> = bound_to(table, port)
        .iter()
        .filter_map(|cols| cols.last()?.parse().ok())
        .collect();
    (!drops.is_empty()).then(|| drops.iter().sum())
}

/// A counter of the `Udp:` lines of `/proc/net/snmp` (a header line of
/// names, then a line of values).
fn snmp_udp(snmp: &str, name: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?;
    let values = udp.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

impl std::fmt::Display for StormFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |c: Option<u64>| c.map_or("unknown".to_string(), |n| n.to_string());
        writeln!(
            f,
            "reconnect storm over UDP loopback: {} clients, {} session cache, {} workers reading {} sockets, receive buffer {} KiB each",
            self.devices,
            self.cache,
            self.workers,
            self.sockets.map_or("?".to_string(), |n| n.to_string()),
            self.rcvbuf / 1024
        )?;
        writeln!(
            f,
            "  sessions before the crash  {:.1} s to give every client one",
            self.setup.as_secs_f64()
        )?;
        writeln!(
            f,
            "  reconnected                {} of {} ({} by a full handshake, {} resumed, {} never within {} s)",
            self.reconnected,
            self.devices,
            self.reconnected - self.resumed,
            self.resumed,
            self.devices - self.reconnected,
            GIVE_UP.as_secs()
        )?;
        writeln!(
            f,
            "  all back                   {:.2} s after the cache came back empty",
            self.all_back.as_secs_f64()
        )?;
        writeln!(
            f,
            "  peak                       {} full handshakes in second {} of the storm",
            self.peak_per_sec, self.peak_second
        )?;
        writeln!(
            f,
            "  way back per client        p50 {} ms, p99 {} ms ({} flights sent again after {} s without an answer)",
            self.p50.as_millis(),
            self.p99.as_millis(),
            self.retransmits,
            REPLY_TIMEOUT.as_secs()
        )?;
        writeln!(
            f,
            "  dropped by the kernel      {} on the cloud's socket; {} UDP receive-buffer overflows machine-wide",
            count(self.cloud_drops),
            count(self.rcvbuf_errors)
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloud_sockets_drops_are_read_from_its_own_line() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             1: 0100007F:A3F1 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 1 2 0000000000000000 0\n\
             2: 0100007F:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 3 2 0000000000000000 17\n";
        assert_eq!(socket_drops(table, 0x1F90), Some(17));
        assert_eq!(socket_drops(table, 0xA3F1), Some(0));
        assert_eq!(socket_drops(table, 0x1F91), None);
    }

    #[test]
    fn snmp_counters_are_found_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 100 2 5 90 4 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 9 0\n";
        assert_eq!(snmp_udp(snmp, "RcvbufErrors"), Some(4));
        assert_eq!(snmp_udp(snmp, "InErrors"), Some(5));
        assert_eq!(snmp_udp(snmp, "Nope"), None);
    }

    /// A small storm end to end: every client gets back through a full
    /// handshake (the cache came back empty), and the figures add up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_client_comes_back_through_a_full_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheCfg::Memory(crate::cache::memory::MemoryCfg {});
        let f = run(200, &cfg, 4, dir.path(), true).await.unwrap();
        assert_eq!(f.reconnected, 200, "{f}");
        assert_eq!(f.resumed, 0, "the cache came back empty: {f}");
        assert!(f.peak_per_sec > 0 && f.peak_per_sec <= 200, "{f}");
        assert!(f.p50 <= f.p99 && f.p99 <= f.all_back + Duration::from_millis(50), "{f}");
        assert!(f.rcvbuf > 0);

        // The control: without the crash every old session still resumes.
        let f = run(200, &cfg, 4, dir.path(), false).await.unwrap();
        assert_eq!((f.reconnected, f.resumed), (200, 200), "{f}");
    }
}
