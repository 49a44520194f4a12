//! `rig cloud serve`: the local device cloud on its own, on a UDP socket,
//! for boards on a real bench or firmware under development. Events are
//! journaled to `<dir>/events.jsonl` and summarised on stderr.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use time::OffsetDateTime;

use crate::bench::{Bench, CacheKind};
use crate::cache::memory::MemoryCache;
use crate::cache::redis::RedisCache;
use crate::cache::{Cache, RestoreFrom, SessionCache};
use crate::cloud::durable::DurableKeys;
use crate::cloud::{CloudConfig, CloudHandle, Mitigation, Server, serve};
use crate::timeline::{EventKind, FORMAT, FORMAT_VERSION, Header, Timeline};

pub struct ServeOptions<'a> {
    pub bench: &'a Bench,
    pub listen: &'a str,
    pub cache: CacheKind,
    pub mitigation: Mitigation,
    pub dir: &'a Path,
    pub seed: u64,
}

/// Where a serving cloud takes cache commands (`rig cache ...`).
pub fn admin_socket(dir: &Path) -> std::path::PathBuf {
    dir.join("admin.sock")
}

/// Runs one cache command line (`kill`, `start`, `flush`, `snapshot NAME`,
/// `restore empty|NAME`, `evict FRACTION`, `pause DURATION`).
pub async fn cache_command(cache: &Cache, line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let op = words.next().unwrap_or("");
    let arg = words.next();
    let r = match (op, arg) {
        ("kill", None) => cache.kill().await,
        ("start", None) => cache.start().await,
        ("flush", None) => cache.flush().await,
        ("snapshot", Some(n)) => cache.snapshot(n).await,
        ("restore", Some("empty")) => cache.restore(&RestoreFrom::Empty).await,
        ("restore", Some(n)) => cache.restore(&RestoreFrom::Snapshot(n.to_owned())).await,
        ("evict", Some(f)) => match f.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => cache.evict(f).await,
            _ => return Err(format!("evict takes a fraction between 0 and 1, not `{f}`")),
        },
        ("pause", Some(d)) => match crate::units::Dur::parse(d) {
            Ok(d) => cache.pause(d.0).await,
            Err(e) => return Err(e),
        },
        _ => {
            return Err(format!(
                "unknown cache command `{line}` (kill, start, flush, snapshot NAME, restore empty|NAME, evict FRACTION, pause DURATION)"
            ));
        }
    };
    r.map_err(|e| e.to_string())
}

async fn admin_loop(listener: tokio::net::UnixListener, cache: Cache) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    while let Ok((stream, _)) = listener.accept().await {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = match cache_command(&cache, &line).await {
                Ok(()) => "ok\n".to_string(),
                Err(e) => format!("error: {e}\n"),
            };
            if write.write_all(reply.as_bytes()).await.is_err() {
                break;
            }
        }
    }
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(o: ServeOptions<'_>) -> anyhow::Result<()> {
    let mut interrupt = crate::signals::Interrupt::new();
    std::fs::create_dir_all(o.dir).with_context(|| format!("cannot create {}", o.dir.display()))?;
    let header = Header {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        run_id: o
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rig_version: env!("CARGO_PKG_VERSION").into(),
        seed: o.seed,
        bench: o.bench.name.clone(),
        plans: Vec::new(),
        started: OffsetDateTime::now_utc(),
    };
    // Everything goes to the journal; memory keeps only what the printer needs.
    let timeline = Timeline::create(&o.dir.join("events.jsonl"), &header)?.retain_last(10_000);
    timeline.begin_cell(0);
    let cache: Arc<dyn SessionCache> = match o.cache {
        CacheKind::Memory => Arc::new(MemoryCache::new(o.seed)),
        CacheKind::Redis => Arc::new(RedisCache::start_in(&o.dir.join("redis"), o.seed).await?),
    };
    let cache_handle = cache.clone();
    let durable = DurableKeys::with_file(&o.dir.join("durable-keys.jsonl"))?;
    let keys = o.bench.devices.iter().map(|d| (d.id.clone(), d.key.clone())).collect();
    let handle = CloudHandle::new(o.mitigation, timeline.clone());
    let server = Server::new(CloudConfig::new(keys, o.seed), cache, durable, handle, timeline.clone());
    let sock = tokio::net::UdpSocket::bind(o.listen)
        .await
        .with_context(|| format!("cannot listen on UDP {}", o.listen))?;
    eprintln!(
        "rig cloud: listening on udp://{} for {} devices of bench `{}`, {} cache, mitigation {}; events in {}",
        sock.local_addr()?,
        o.bench.devices.len(),
        o.bench.name,
        match o.cache {
            CacheKind::Memory => "memory",
            CacheKind::Redis => "redis",
        },
        o.mitigation,
        o.dir.join("events.jsonl").display()
    );
    let printer = {
        let tl = timeline.clone();
        tokio::spawn(async move {
            tl.wait(0, None, |e| {
                let what = match &e.kind {
                    EventKind::CloudConnected { via, session } => format!("connected via {via:?} (session {session})"),
                    EventKind::CloudResumeUnknown { session, action, .. } => {
                        format!("resume of unknown session {session}: {action:?}")
                    }
                    EventKind::CloudInvalid { reason, peer } => format!("invalid datagram from {peer}: {reason}"),
                    EventKind::CacheError { op, error } => format!("cache {op} failed: {error}"),
                    _ => return false,
                };
                eprintln!("{} {}: {what}", e.wall.time(), e.device.as_deref().unwrap_or("?"));
                false
            })
            .await;
        })
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cloud = tokio::spawn(serve(Arc::new(sock), server, async {
        let _ = rx.await;
    }));
    let admin = admin_socket(o.dir);
    let _ = std::fs::remove_file(&admin);
    let listener =
        tokio::net::UnixListener::bind(&admin).with_context(|| format!("cannot bind {}", admin.display()))?;
    let admin_task = tokio::spawn(admin_loop(listener, Cache::new(cache_handle, timeline.clone())));
    interrupt.recv().await;
    admin_task.abort();
    let _ = std::fs::remove_file(&admin);
    let _ = tx.send(());
    let _ = cloud.await;
    printer.abort();
    eprintln!("rig cloud: stopped");
    Ok(())
}
