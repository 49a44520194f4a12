//! `rig cloud serve`: the local device cloud on its own, on a UDP socket,
//! for boards on a real bench or firmware under development. Events are
//! journaled to `<dir>/events.jsonl` and summarised on stderr.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use time::OffsetDateTime;

use crate::bench::{Bench, CacheKind};
use crate::cache::SessionCache;
use crate::cache::memory::MemoryCache;
use crate::cache::redis::RedisCache;
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

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(o: ServeOptions<'_>) -> anyhow::Result<()> {
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
    let _ = tokio::signal::ctrl_c().await;
    let _ = tx.send(());
    let _ = cloud.await;
    printer.abort();
    eprintln!("rig cloud: stopped");
    Ok(())
}
