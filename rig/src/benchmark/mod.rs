//! `rig bench`: throughput of the cloud over UDP on loopback, so later work
//! can compare. Measured, printed, never asserted: these machines are shared.
//!
//! Clients are plain protocol clients (no firmware model, no sleeping): each
//! has its own UDP socket and runs full handshakes for the first phase, then
//! authenticated resumes (ping with the resume flag, wait for the pong) for
//! the second. The cloud is the real one, with its timeline in memory.
//!
//! The floor ([`echo`]): the same clients, sockets and loop against a bare
//! UDP echo server, with datagrams the size of a resume, measured in the
//! same run just before the cloud. What the cloud achieves is printed as a
//! share of it, so figures from different machines (or a busy one) compare.

pub mod echo;
pub mod storm;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rig_proto::client::{Handshake, Progress, Session};
use rig_proto::frame::FLAG_RESUME;
use rig_proto::{Frame, Inner, InnerKind, Psk};

use crate::cache::{CacheCfg, OpenCtx};
use crate::cloud::durable::DurableKeys;
use crate::cloud::{CloudConfig, Mitigation, Secrets};
use crate::timeline::Timeline;

/// What one phase achieved.
#[derive(Debug, Clone)]
pub struct Phase {
    pub ops: u64,
    pub failures: u64,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub clients: usize,
    pub workers: usize,
    pub cache: String,
    /// Round trips/s of the raw UDP echo floor, same clients, same run.
    pub floor: Phase,
    pub handshakes: Phase,
    pub resumes: Phase,
}

impl Figures {
    /// Resumes/s as a share of the echo floor.
    pub fn resume_ratio(&self) -> f64 {
        if self.floor.per_sec > 0.0 {
            self.resumes.per_sec / self.floor.per_sec
        } else {
            0.0
        }
    }
}

/// What a phase's clients do, over and over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Handshake,
    Resume,
    /// Send a resume-sized datagram, wait for it to come back.
    Echo,
}

struct Client {
    sock: tokio::net::UdpSocket,
    id: String,
    psk: Psk,
    session: Option<Session>,
    nonce: u64,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

impl Client {
    async fn exchange(&self, frame: &Frame, cloud: SocketAddr) -> Option<Frame> {
        let reply = self.round_trip(&frame.encode(), cloud).await?;
        Frame::decode(&reply).ok()
    }

    async fn round_trip(&self, bytes: &[u8], to: SocketAddr) -> Option<Vec<u8>> {
        self.sock.send_to(bytes, to).await.ok()?;
        let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
        let (n, _) = tokio::time::timeout(REPLY_TIMEOUT, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// One full handshake, flight by flight, through the device-side state
    /// machine every device model uses.
    async fn handshake(&mut self, cloud: SocketAddr) -> bool {
        self.nonce += 1;
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.nonce.to_be_bytes());
        nonce[8..].copy_from_slice(&(self.id.len() as u64).to_be_bytes());
        let mut hs = Handshake::new(
            &self.id,
            self.psk.clone(),
            nonce,
            rig_proto::CLIENT_HELLO_PADDING as u16,
        );
        loop {
            let Some(answer) = self.exchange(&hs.flight(), cloud).await else {
                return false;
            };
            match hs.on_frame(answer) {
                Progress::Next => {}
                Progress::Done(s) => {
                    self.session = Some(s);
                    return true;
                }
                Progress::Ignored | Progress::Failed(_) => return false,
            }
        }
    }

    /// A resume: a ping flagged as the first record after a wake, and its pong.
    async fn resume(&mut self, cloud: SocketAddr) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let ping = Inner {
            kind: InnerKind::Ping,
            msg_id: ((s.tx_counter + 1) & 0xffff) as u16,
            payload: vec![b' '; 40],
        };
        let frame = s.seal(FLAG_RESUME, &ping);
        match self.exchange(&frame, cloud).await {
            Some(Frame::Record(r)) => self
                .session
                .as_mut()
                .and_then(|s| s.open(&r))
                .is_some_and(|i| i.kind == InnerKind::Pong),
            _ => false,
        }
    }
}

fn summarize(mut lat: Vec<u64>, failures: u64, took: Duration) -> Phase {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Phase {
        ops: lat.len() as u64,
        failures,
        per_sec: lat.len() as f64 / took.as_secs_f64(),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

/// Runs the floor and both phases for `each` long with `clients`
/// concurrent clients, with the cloud's session cache as `cache` says (its
/// files in `dir`) and `workers` cloud workers.
pub async fn run(
    clients: usize,
    each: Duration,
    cache: &CacheCfg,
    workers: usize,
    dir: &Path,
) -> anyhow::Result<Figures> {
    let mut all = new_clients(clients).await?;
    let echo = echo::EchoServer::start()?;
    let floor = phase(&mut all, each, echo.addr(), Mode::Echo).await;
    drop(echo);

    // Events are produced (that is part of the cost) but not kept.
    let timeline = Timeline::in_memory().retain_last(0);
    let name = cache.backend().name();
    let cache = crate::cache::open(cache, &OpenCtx { dir, seed: 1 }).await?;
    let keys: BTreeMap<String, Psk> = (0..clients)
        .map(client_id)
        .map(|id| (id.clone(), Psk::derive_for(&id)))
        .collect();
    let sock = crate::cloud::transport::cloud_udp("127.0.0.1:0")?;
    let cloud = sock.local_addr()?;
    let mut cfg = CloudConfig::with_secrets(keys, Secrets::Os);
    cfg.workers = workers;
    // Every client shares 127.0.0.1: the per-address budget of pending
    // handshakes (a flood guard) would otherwise throttle the bench itself.
    cfg.max_pending_per_ip = clients.max(cfg.max_pending_per_ip);
    let running = crate::cloud::start(
        Arc::new(sock),
        cfg,
        cache,
        DurableKeys::off(),
        Mitigation::Drop,
        &timeline,
    );

    let handshakes = phase(&mut all, each, cloud, Mode::Handshake).await;
    let resumes = phase(&mut all, each, cloud, Mode::Resume).await;
    running.stop().await;
    Ok(Figures {
        clients,
        workers,
        cache: name.into(),
        floor,
        handshakes,
        resumes,
    })
}

/// Load on a cloud that runs elsewhere (`rig bench serve`): `clients`
/// clients (`bench-0000`, … with the keys a sim bench derives for those
/// ids) alternate phases of `each`, full handshakes then resumes, for
/// `phases` phases; `after` is called after each phase with its figures
/// (what the caller measures of the cloud meanwhile).
pub async fn load(
    cloud: SocketAddr,
    clients: usize,
    phases: usize,
    each: Duration,
    mut after: impl FnMut(usize, &str, &Phase),
) -> std::io::Result<()> {
    let mut all = new_clients(clients).await?;
    for i in 0..phases {
        let (name, mode) = if i % 2 == 0 {
            ("full handshakes", Mode::Handshake)
        } else {
            ("session resumes", Mode::Resume)
        };
        let p = phase(&mut all, each, cloud, mode).await;
        after(i, name, &p);
    }
    Ok(())
}

/// Protocol clients `bench-0000`, `bench-0001`, …, each on its own socket.
async fn new_clients(n: usize) -> std::io::Result<Vec<Client>> {
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let id = client_id(i);
        all.push(Client {
            sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await?,
            psk: Psk::derive_for(&id),
            id,
            session: None,
            nonce: 0,
        });
    }
    Ok(all)
}

fn client_id(i: usize) -> String {
    format!("bench-{i:04}")
}

async fn phase(clients: &mut Vec<Client>, each: Duration, to: SocketAddr, mode: Mode) -> Phase {
    let probe = Arc::new(echo::resume_sized_datagram());
    let started = Instant::now();
    let deadline = started + each;
    let tasks: Vec<_> = std::mem::take(clients)
        .into_iter()
        .map(|mut c| {
            let probe = probe.clone();
            tokio::spawn(async move {
                let (mut lat, mut failures) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = match mode {
                        Mode::Echo => c.round_trip(&probe, to).await.is_some_and(|r| r == *probe),
                        Mode::Resume if c.session.is_some() => c.resume(to).await,
                        Mode::Handshake | Mode::Resume => c.handshake(to).await,
                    };
                    if ok {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        failures += 1;
                    }
                }
                (c, lat, failures)
            })
        })
        .collect();
    let (mut lat, mut failures) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((c, l, f)) = t.await {
            clients.push(c);
            lat.extend(l);
            failures += f;
        }
    }
    summarize(lat, failures, started.elapsed())
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "cloud over UDP loopback, {} clients, {} session cache, {} workers",
            self.clients, self.cache, self.workers
        )?;
        for (name, p) in [
            ("UDP echo floor", &self.floor),
            ("full handshakes", &self.handshakes),
            ("session resumes", &self.resumes),
        ] {
            writeln!(
                f,
                "  {name:<16} {:>9.0}/s   ({} ok, {} failed; latency p50 {} µs, p99 {} µs)",
                p.per_sec, p.ops, p.failures, p.p50_us, p.p99_us
            )?;
        }
        writeln!(
            f,
            "  resumes/s = {:.0} % of the echo floor",
            100.0 * self.resume_ratio()
        )?;
        Ok(())
    }
}
