//! `rig bench`: throughput of the cloud over UDP on loopback, so later work
//! can compare. Measured, printed, never asserted: these machines are shared.
//!
//! Clients are plain protocol clients (no firmware model, no sleeping): each
//! has its own UDP socket and runs full handshakes for the first phase, then
//! authenticated resumes (ping with the resume flag, wait for the pong) for
//! the second. The cloud is the real one, with its timeline in memory.

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
    pub cache: String,
    pub handshakes: Phase,
    pub resumes: Phase,
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
        self.sock.send_to(&frame.encode(), cloud).await.ok()?;
        let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
        let (n, _) = tokio::time::timeout(REPLY_TIMEOUT, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Frame::decode(&buf[..n]).ok()
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

/// Runs both phases for `each` long with `clients` concurrent clients,
/// with the cloud's session cache as `cache` says (its files in `dir`).
pub async fn run(clients: usize, each: Duration, cache: &CacheCfg, dir: &Path) -> anyhow::Result<Figures> {
    // Events are produced (that is part of the cost) but not kept.
    let timeline = Timeline::in_memory().retain_last(0);
    let name = cache.backend().name();
    let cache = crate::cache::open(cache, &OpenCtx { dir, seed: 1 }).await?;
    let ids: Vec<String> = (0..clients).map(|i| format!("bench-{i:04}")).collect();
    let keys: BTreeMap<String, Psk> = ids.iter().map(|id| (id.clone(), Psk::derive_for(id))).collect();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let cloud = sock.local_addr()?;
    let cfg = CloudConfig::with_secrets(keys, Secrets::Os);
    let running = crate::cloud::start(
        Arc::new(sock),
        cfg,
        cache,
        DurableKeys::new(),
        Mitigation::Drop,
        &timeline,
    );

    let mut all = Vec::new();
    for id in ids {
        all.push(Client {
            sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await?,
            psk: Psk::derive_for(&id),
            id,
            session: None,
            nonce: 0,
        });
    }
    let handshakes = phase(&mut all, each, cloud, true).await;
    let resumes = phase(&mut all, each, cloud, false).await;
    running.stop().await;
    Ok(Figures {
        clients,
        cache: name.into(),
        handshakes,
        resumes,
    })
}

async fn phase(clients: &mut Vec<Client>, each: Duration, cloud: SocketAddr, handshake: bool) -> Phase {
    let started = Instant::now();
    let deadline = started + each;
    let tasks: Vec<_> = std::mem::take(clients)
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (mut lat, mut failures) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = if handshake || c.session.is_none() {
                        c.handshake(cloud).await
                    } else {
                        c.resume(cloud).await
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
            "cloud over UDP loopback, {} clients, {} session cache",
            self.clients, self.cache
        )?;
        for (name, p) in [
            ("full handshakes", &self.handshakes),
            ("session resumes", &self.resumes),
        ] {
            writeln!(
                f,
                "  {name:<16} {:>9.0}/s   ({} ok, {} failed; latency p50 {} µs, p99 {} µs)",
                p.per_sec, p.ops, p.failures, p.p50_us, p.p99_us
            )?;
        }
        Ok(())
    }
}
