//! `rig cloud serve`: the local device cloud on its own, on a UDP socket,
//! for boards on a real bench or firmware under development. Events are
//! journaled to `<dir>/events.jsonl` and summarised on stderr.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use time::OffsetDateTime;

use crate::bench::Bench;
use crate::cache::{Cache, CacheCommand};
use crate::cloud::durable::DurableKeys;
use crate::cloud::{CloudConfig, Mitigation};
use crate::timeline::{EventKind, FORMAT, FORMAT_VERSION, Header, Timeline};

pub struct ServeOptions<'a> {
    pub bench: &'a Bench,
    pub listen: &'a str,
    pub cache: &'a crate::cache::CacheCfg,
    pub mitigation: Mitigation,
    pub dir: &'a Path,
    pub seed: u64,
}

/// Where a serving cloud takes cache commands (`rig cache ...`).
pub fn admin_socket(dir: &Path) -> std::path::PathBuf {
    dir.join("admin.sock")
}

/// Runs one cache command line (`kill`, `start`, `flush`, `snapshot NAME`,
/// `restore empty|NAME`, `evict FRACTION`, `pause DURATION`) and gives the
/// reply line: `ok`, `usage: ...` for a line that does not parse, or
/// `error: ...` when the cache failed.
pub async fn cache_command(cache: &Cache, line: &str) -> String {
    match line.parse::<CacheCommand>() {
        Err(e) => format!("usage: {e}"),
        Ok(cmd) => match cache.run(&cmd).await {
            Ok(()) => "ok".into(),
            Err(e) => format!("error: {e}"),
        },
    }
}

/// Longest line the admin socket reads; longer input ends the connection.
pub const MAX_ADMIN_LINE: usize = 4096;

/// Serves admin connections, each on its own task, so an idle client
/// cannot hold up another's `rig cache flush`. `shutdown` stops the cloud.
async fn admin_loop(listener: tokio::net::UnixListener, cache: Cache, stop: tokio::sync::mpsc::Sender<()>) {
    let me = crate::fsutil::euid();
    while let Ok((stream, _)) = listener.accept().await {
        // Only this user (or root) may break the cache or stop the cloud.
        match stream.peer_cred() {
            Ok(c) if c.uid() == me || c.uid() == 0 => {}
            Ok(c) => {
                tracing::warn!("admin socket: refused a connection from uid {}", c.uid());
                continue;
            }
            Err(e) => {
                tracing::warn!("admin socket: cannot check a peer's credentials: {e}");
                continue;
            }
        }
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = admin_connection(stream, &cache, &stop).await;
        });
    }
}

async fn admin_connection(
    stream: tokio::net::UnixStream,
    cache: &Cache,
    stop: &tokio::sync::mpsc::Sender<()>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        // Bounded: a line longer than this is refused, never buffered whole.
        let n = (&mut reader)
            .take(MAX_ADMIN_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let msg = format!("usage: a command line is at most {MAX_ADMIN_LINE} bytes\n");
            write.write_all(msg.as_bytes()).await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        let reply = if text == "shutdown" {
            let _ = stop.try_send(());
            "ok".to_string()
        } else {
            cache_command(cache, text).await
        };
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
}

/// Largest `events.jsonl` of a serving cloud before it rolls over, and how
/// many rolled-over files are kept: the journal's disk use is bounded
/// whatever peers send.
pub const JOURNAL_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const JOURNAL_KEEP: usize = 4;

/// Serves until Ctrl-C, SIGTERM or `shutdown` on the admin socket.
pub async fn run(o: ServeOptions<'_>) -> anyhow::Result<()> {
    let mut interrupt = crate::signals::Interrupt::new();
    // The folder holds session keys (durable store, redis data) and the
    // admin socket: private, whatever the umask.
    crate::fsutil::ensure_dir(o.dir, 0o700).with_context(|| format!("cannot use {} for the cloud", o.dir.display()))?;
    // One cloud per folder: a second one would fight over the journal and
    // the admin socket.
    let me = crate::lock::Holder::me(&format!("rig cloud serve --listen {}", o.listen));
    let _folder = crate::lock::acquire(o.dir, "serve", &me, None).map_err(|e| match e {
        crate::lock::LockError::Held { holder, .. } => anyhow::anyhow!(
            "{} is in use by another `rig cloud serve` ({holder}); stop it (`rig cloud stop --cloud {}`) or use another --out",
            o.dir.display(),
            o.dir.display()
        ),
        other => other.into(),
    })?;
    let started = OffsetDateTime::now_utc();
    let events = o.dir.join("events.jsonl");
    if events.exists() {
        // An earlier cloud's journal is kept, never truncated.
        let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
        let stamp = started.format(fmt).unwrap_or_else(|_| "old".into());
        let kept = o.dir.join(format!("events-{stamp}.jsonl"));
        std::fs::rename(&events, &kept).with_context(|| format!("cannot keep the old {}", events.display()))?;
    }
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
        started,
        shard: None,
        console_lines: true,
    };
    // Everything goes to the journal; memory keeps only what the printer needs.
    let timeline = Timeline::create_rotating(&events, &header, JOURNAL_MAX_BYTES, JOURNAL_KEEP)?.retain_last(10_000);
    timeline.begin_cell(0);
    let cache = crate::cache::open(
        o.cache,
        &crate::cache::OpenCtx {
            dir: o.dir,
            seed: o.seed,
        },
    )
    .await?;
    let backend_name = cache.backend();
    let durable = DurableKeys::with_file(&o.dir.join("durable-keys.jsonl"))?;
    let keys = o.bench.devices.iter().map(|d| (d.id.clone(), d.key.clone())).collect();
    // Reachable from the network: secrets from the OS RNG, never a seed.
    let mut cfg = CloudConfig::with_secrets(keys, crate::cloud::Secrets::Os);
    cfg.workers = crate::cloud::real_clock_workers();
    let sock =
        crate::cloud::transport::cloud_udp(o.listen).with_context(|| format!("cannot listen on UDP {}", o.listen))?;
    eprintln!(
        "rig cloud: listening on udp://{} for {} devices of bench `{}`, {backend_name} cache, mitigation {}; events in {}",
        sock.local_addr()?,
        o.bench.devices.len(),
        o.bench.name,
        o.mitigation,
        events.display()
    );
    let printer = {
        let tl = timeline.clone();
        tokio::spawn(async move {
            tl.wait(0, None, |e| {
                let what = match &e.kind {
                    EventKind::CloudConnected { via, session } => {
                        let via = match via {
                            crate::timeline::ConnectVia::Handshake => "handshake",
                            crate::timeline::ConnectVia::Resume => "resume",
                        };
                        format!("connected via {via} (session {session})")
                    }
                    EventKind::CloudResumeUnknown {
                        session,
                        action,
                        resume,
                    } => {
                        let action = match action {
                            crate::timeline::UnknownAction::Dropped => "dropped",
                            crate::timeline::UnknownAction::Rejected => "rejected",
                            crate::timeline::UnknownAction::Healed => "healed",
                        };
                        if *resume {
                            format!("resume of unknown session {session}: {action}")
                        } else {
                            format!("record for unknown session {session}: {action}")
                        }
                    }
                    EventKind::CloudInvalid {
                        reason, peer, count, ..
                    } => {
                        format!("{count} invalid datagram(s) from {peer}: {reason}")
                    }
                    EventKind::CloudReplayAccepted {
                        session,
                        counter,
                        highest,
                    } => {
                        format!("REPLAY ACCEPTED on session {session}: counter {counter} after {highest}")
                    }
                    EventKind::CacheError { op, error } => format!("cache {op} failed: {error}"),
                    EventKind::CacheDied { pid, how, .. } => format!("the session cache (pid {pid}) died: {how}"),
                    _ => return false,
                };
                eprintln!("{} {}: {what}", e.wall.time(), e.device.as_deref().unwrap_or("-"));
                false
            })
            .await;
        })
    };
    let cloud = crate::cloud::start(Arc::new(sock), cfg, cache, durable, o.mitigation, &timeline);
    let admin = admin_socket(o.dir);
    // Only a stale socket of ours can be here: the folder is private and locked.
    let _ = std::fs::remove_file(&admin);
    let listener =
        tokio::net::UnixListener::bind(&admin).with_context(|| format!("cannot bind {}", admin.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", admin.display()))?;
    }
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(1);
    let admin_task = tokio::spawn(admin_loop(listener, cloud.cache.clone(), stop_tx));
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = stop_rx.recv() => {}
    }
    admin_task.abort();
    let _ = std::fs::remove_file(&admin);
    cloud.stop().await;
    printer.abort();
    eprintln!("rig cloud: stopped");
    Ok(())
}
