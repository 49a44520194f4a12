//! The run's single, append-only record of everything observed.
//!
//! Drivers, the cloud, the cache, the runner and the checks append
//! [`Event`]s through a cloneable [`Timeline`] handle; checks and reports only
//! ever read it. Each event is written to `events.jsonl` and flushed before
//! `emit` returns, so a crash or Ctrl-C loses nothing already seen, and
//! `rig report RUN_DIR` can re-render every report from that file alone.
//!
//! The stored form is JSON Lines: a header line (`format`, `version`, run
//! metadata) followed by one event per line, `kind` naming the variant of
//! [`EventKind`] and its fields beside it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;

/// Name and version of the stored format; bump the version on breaking changes.
pub const FORMAT: &str = "rig.events";
pub const FORMAT_VERSION: u32 = 1;

/// Who observed an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Runner,
    Power,
    Flash,
    Reset,
    Console,
    Cloud,
    Cache,
    Check,
}

/// How the cloud authenticated a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectVia {
    Handshake,
    Resume,
}

/// What the cloud did with a record for a session its cache did not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownAction {
    /// Silently dropped: the incident's behaviour.
    Dropped,
    /// Answered with "session unknown".
    Rejected,
    /// Found in the durable key store and put back in the cache.
    Healed,
}

/// Every kind of observation. Consumers match on this exhaustively, so a new
/// kind cannot be silently ignored by a check or a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum EventKind {
    #[serde(rename = "cell.start")]
    CellStart {
        plan: String,
        /// The plan file and its SHA-256, so a sign-off names what ran.
        #[serde(default)]
        plan_path: String,
        #[serde(default)]
        plan_sha256: String,
        /// The cell's name, e.g. `fixture=sleepy-1.1 mitigation=drop`.
        name: String,
        vars: BTreeMap<String, String>,
        expect_failure: bool,
        seed: u64,
        bench: String,
        clock: String,
    },
    #[serde(rename = "cell.end")]
    CellEnd { outcome: CellOutcome },
    #[serde(rename = "rig.fault")]
    RigFault {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<usize>,
        message: String,
    },
    #[serde(rename = "power.on")]
    PowerOn,
    #[serde(rename = "power.off")]
    PowerOff,
    #[serde(rename = "reset.soft")]
    ResetSoft,
    #[serde(rename = "flash.start")]
    FlashStart { fixture: String },
    #[serde(rename = "flash.done")]
    FlashDone {
        fixture: String,
        version: String,
        sha256: String,
        ms: u64,
    },
    #[serde(rename = "console.line")]
    ConsoleLine {
        line: String,
        /// The line was cut by a gap in the console link.
        #[serde(default, skip_serializing_if = "is_false")]
        partial: bool,
    },
    #[serde(rename = "console.gap")]
    ConsoleGap { ms: u64 },
    #[serde(rename = "device.boot")]
    DeviceBoot,
    #[serde(rename = "device.wake")]
    DeviceWake {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename = "device.sleep")]
    DeviceSleep {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secs: Option<u64>,
    },
    #[serde(rename = "cloud.config")]
    CloudConfig { mitigation: String },
    #[serde(rename = "cloud.handshake")]
    CloudHandshake { session: String },
    #[serde(rename = "cloud.resumed")]
    CloudResumed { session: String },
    #[serde(rename = "cloud.connected")]
    CloudConnected { via: ConnectVia, session: String },
    #[serde(rename = "cloud.resume_unknown")]
    CloudResumeUnknown {
        session: String,
        action: UnknownAction,
        /// The record was flagged as the first after a wake (a resume
        /// attempt) rather than a later record of the same wake.
        resume: bool,
    },
    #[serde(rename = "cloud.publish")]
    CloudPublish { session: String, topic: String },
    #[serde(rename = "cloud.rx")]
    CloudRx { bytes: u64, msg: String, peer: String },
    #[serde(rename = "cloud.tx")]
    CloudTx { bytes: u64, msg: String, peer: String },
    /// Datagrams the cloud refused: malformed, forged, replayed or
    /// unexpected. Aggregated per source and reason over a second, so a
    /// flood is a few events, not one per datagram.
    #[serde(rename = "cloud.invalid")]
    CloudInvalid {
        reason: String,
        peer: String,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u64,
        /// Bytes of those datagrams not attributed to a device.
        #[serde(default, skip_serializing_if = "is_zero")]
        bytes: u64,
    },
    /// A record the cloud accepted although its counter was not above the
    /// highest it had accepted for that session before (a replay that got
    /// through, as after a restore when the replay window lives only in the
    /// restorable cache).
    #[serde(rename = "cloud.replay_accepted")]
    CloudReplayAccepted {
        session: String,
        counter: u64,
        highest: u64,
    },
    /// `pid`: the server process that was killed (gone when this is recorded).
    #[serde(rename = "cache.kill")]
    CacheKill {
        backend: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "cache.start")]
    CacheStart {
        backend: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "cache.restore")]
    CacheRestore {
        from: String,
        sessions: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "cache.snapshot")]
    CacheSnapshot { name: String, sessions: u64 },
    #[serde(rename = "cache.flush")]
    CacheFlush { sessions: u64 },
    #[serde(rename = "cache.evict")]
    CacheEvict {
        fraction: f64,
        sessions: Vec<String>,
        devices: Vec<String>,
    },
    #[serde(rename = "cache.pause")]
    CachePause { ms: u64 },
    #[serde(rename = "cache.resume")]
    CacheResume,
    #[serde(rename = "cache.error")]
    CacheError { op: String, error: String },
    /// The cache's server died without the rig killing it.
    #[serde(rename = "cache.died")]
    CacheDied { backend: String, pid: u32, how: String },
    #[serde(rename = "plan.mark")]
    PlanMark { name: String },
    #[serde(rename = "plan.step")]
    PlanStep { index: usize, phase: String, step: String },
    #[serde(rename = "check.pass")]
    CheckPass {
        step: usize,
        check: String,
        detail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<RecoveryFacts>,
    },
    #[serde(rename = "check.fail")]
    CheckFail {
        step: usize,
        check: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<RecoveryFacts>,
    },
}

/// What `expect_recovery` measured for one device, carried on its check
/// event so reports need not re-derive it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecoveryFacts {
    pub mark: String,
    /// When the mark was set, in cell milliseconds.
    #[serde(default)]
    pub mark_t_ms: u64,
    pub recovered: bool,
    /// How the cloud session came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<ConnectVia>,
    /// Wake cycles counted from the mark to recovery (or to the decision).
    pub wakes: u32,
    /// Milliseconds from the mark to recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Bytes both ways from the mark to recovery inclusive (or to the decision).
    pub bytes: u64,
    pub handshakes: u32,
    /// Resume records the cloud did not know the session of.
    pub unknown_resumes: u32,
    pub power_cycled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a matrix cell's execution ended (not its verdict: that is derived
/// from check events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellOutcome {
    /// Every step ran (checks may still have failed).
    Completed,
    /// A check failed and the remaining steps were skipped.
    Stopped,
    /// The plan's timeout expired.
    Timeout,
    /// A rig or bench fault ended the cell.
    Fault,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// Every event kind name a plan may refer to.
pub const KIND_NAMES: &[&str] = &[
    "cell.start",
    "cell.end",
    "rig.fault",
    "power.on",
    "power.off",
    "reset.soft",
    "flash.start",
    "flash.done",
    "console.line",
    "console.gap",
    "device.boot",
    "device.wake",
    "device.sleep",
    "cloud.config",
    "cloud.handshake",
    "cloud.resumed",
    "cloud.connected",
    "cloud.resume_unknown",
    "cloud.publish",
    "cloud.rx",
    "cloud.tx",
    "cloud.invalid",
    "cloud.replay_accepted",
    "cache.kill",
    "cache.start",
    "cache.restore",
    "cache.snapshot",
    "cache.flush",
    "cache.evict",
    "cache.pause",
    "cache.resume",
    "cache.error",
    "cache.died",
    "plan.mark",
    "plan.step",
    "check.pass",
    "check.fail",
];

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::CellStart { .. } => "cell.start",
            EventKind::CellEnd { .. } => "cell.end",
            EventKind::RigFault { .. } => "rig.fault",
            EventKind::PowerOn => "power.on",
            EventKind::PowerOff => "power.off",
            EventKind::ResetSoft => "reset.soft",
            EventKind::FlashStart { .. } => "flash.start",
            EventKind::FlashDone { .. } => "flash.done",
            EventKind::ConsoleLine { .. } => "console.line",
            EventKind::ConsoleGap { .. } => "console.gap",
            EventKind::DeviceBoot => "device.boot",
            EventKind::DeviceWake { .. } => "device.wake",
            EventKind::DeviceSleep { .. } => "device.sleep",
            EventKind::CloudConfig { .. } => "cloud.config",
            EventKind::CloudHandshake { .. } => "cloud.handshake",
            EventKind::CloudResumed { .. } => "cloud.resumed",
            EventKind::CloudConnected { .. } => "cloud.connected",
            EventKind::CloudResumeUnknown { .. } => "cloud.resume_unknown",
            EventKind::CloudPublish { .. } => "cloud.publish",
            EventKind::CloudRx { .. } => "cloud.rx",
            EventKind::CloudTx { .. } => "cloud.tx",
            EventKind::CloudInvalid { .. } => "cloud.invalid",
            EventKind::CloudReplayAccepted { .. } => "cloud.replay_accepted",
            EventKind::CacheKill { .. } => "cache.kill",
            EventKind::CacheStart { .. } => "cache.start",
            EventKind::CacheRestore { .. } => "cache.restore",
            EventKind::CacheSnapshot { .. } => "cache.snapshot",
            EventKind::CacheFlush { .. } => "cache.flush",
            EventKind::CacheEvict { .. } => "cache.evict",
            EventKind::CachePause { .. } => "cache.pause",
            EventKind::CacheResume => "cache.resume",
            EventKind::CacheError { .. } => "cache.error",
            EventKind::CacheDied { .. } => "cache.died",
            EventKind::PlanMark { .. } => "plan.mark",
            EventKind::PlanStep { .. } => "plan.step",
            EventKind::CheckPass { .. } => "check.pass",
            EventKind::CheckFail { .. } => "check.fail",
        }
    }
}

/// One observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the run's timeline, over all cells.
    pub seq: u64,
    /// Index of the matrix cell (0 for a plan without a matrix).
    pub cell: u32,
    /// Milliseconds since the cell started, on the bench's clock (virtual on
    /// a virtual-clock bench).
    pub t_ms: u64,
    /// Wall-clock time the event was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub wall: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub source: Source,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn is(&self, device: &str) -> bool {
        self.device.as_deref() == Some(device)
    }
}

/// The first line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub run_id: String,
    pub rig_version: String,
    pub seed: u64,
    pub bench: String,
    pub plans: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
}

struct State {
    /// Retained events; `events[0]` has seq `base`.
    events: Vec<Event>,
    base: u64,
    /// Keep at most about this many events in memory (None: all of them).
    retain: Option<usize>,
    journal: Option<BufWriter<File>>,
    journal_error: Option<String>,
    /// Bounded journals (long-running `rig cloud serve`) roll over.
    rotation: Option<Rotation>,
    cell: u32,
    cell_base: tokio::time::Instant,
}

/// When a journal rolls over: `events.jsonl` becomes `events.1.jsonl` (and
/// so on up to `keep`) and a new file starts with the same header.
struct Rotation {
    path: std::path::PathBuf,
    header: Header,
    max_bytes: u64,
    keep: usize,
    written: u64,
}

impl Rotation {
    fn rotated(&self, n: usize) -> std::path::PathBuf {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!("{stem}.{n}.jsonl"))
    }

    fn roll(&mut self) -> std::io::Result<BufWriter<File>> {
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        self.written = 0;
        let f = crate::fsutil::create_new(&self.path, 0o644).map_err(std::io::Error::other)?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer(&mut w, &self.header)?;
        w.write_all(b"\n")?;
        w.flush()?;
        Ok(w)
    }
}

struct Shared {
    state: Mutex<State>,
    notify: watch::Sender<u64>,
}

/// Cheap-to-clone handle on the run's timeline.
#[derive(Clone)]
pub struct Timeline {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timeline")
    }
}

impl Timeline {
    /// A timeline kept only in memory (unit tests, benchmarks).
    pub fn in_memory() -> Timeline {
        Timeline::with_journal(None)
    }

    /// A timeline journaled to `path`, starting with `header`.
    pub fn create(path: &Path, header: &Header) -> std::io::Result<Timeline> {
        // A new file: never an old journal truncated, never a planted link.
        let f = crate::fsutil::create_new(path, 0o644).map_err(std::io::Error::other)?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer(&mut w, header)?;
        w.write_all(b"\n")?;
        w.flush()?;
        Ok(Timeline::with_journal(Some(w)))
    }

    /// [`Timeline::create`] for a process that runs for days: when the file
    /// passes `max_bytes` it rolls over, keeping `keep` older files, so the
    /// disk it uses is bounded whatever peers send.
    pub fn create_rotating(path: &Path, header: &Header, max_bytes: u64, keep: usize) -> std::io::Result<Timeline> {
        let tl = Timeline::create(path, header)?;
        tl.lock().rotation = Some(Rotation {
            path: path.to_owned(),
            header: header.clone(),
            max_bytes,
            keep: keep.max(1),
            written: 0,
        });
        Ok(tl)
    }

    /// Keeps only about the last `n` events in memory (0: none); the journal
    /// still gets every one. For long-running processes (`rig cloud serve`,
    /// `rig bench`) whose events nothing reads back from memory.
    pub fn retain_last(self, n: usize) -> Timeline {
        self.lock().retain = Some(n);
        self
    }

    fn with_journal(journal: Option<BufWriter<File>>) -> Timeline {
        let (notify, _) = watch::channel(0);
        Timeline {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    events: Vec::new(),
                    base: 0,
                    retain: None,
                    journal,
                    journal_error: None,
                    rotation: None,
                    cell: 0,
                    cell_base: tokio::time::Instant::now(),
                }),
                notify,
            }),
        }
    }

    // A std Mutex, not tokio's: it is held only to push one event and write
    // one line, never across an await.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a matrix cell: later events carry `cell` and times from now.
    /// Call from inside the cell's runtime so a virtual clock is used.
    pub fn begin_cell(&self, cell: u32) {
        let mut s = self.lock();
        s.cell = cell;
        s.cell_base = tokio::time::Instant::now();
    }

    /// Milliseconds since the current cell began.
    pub fn now_ms(&self) -> u64 {
        let s = self.lock();
        tokio::time::Instant::now()
            .saturating_duration_since(s.cell_base)
            .as_millis() as u64
    }

    /// Appends an event, journals and flushes it, and wakes waiters.
    pub fn emit(&self, device: Option<&str>, source: Source, kind: EventKind) -> u64 {
        self.emit_at(device, source, kind, tokio::time::Instant::now())
    }

    /// [`Timeline::emit`] for something observed at `at` (a console line is
    /// timestamped when its first byte arrived, not when it ended).
    pub fn emit_at(&self, device: Option<&str>, source: Source, kind: EventKind, at: tokio::time::Instant) -> u64 {
        let wall = OffsetDateTime::now_utc();
        let mut s = self.lock();
        let t_ms = at.saturating_duration_since(s.cell_base).as_millis() as u64;
        let seq = s.base + s.events.len() as u64;
        let ev = Event {
            seq,
            cell: s.cell,
            t_ms,
            wall,
            device: device.map(str::to_owned),
            source,
            kind,
        };
        if let Some(w) = s.journal.as_mut() {
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            let mut res = w.write_all(&line).and_then(|_| w.flush());
            if res.is_ok()
                && let Some(r) = s.rotation.as_mut()
            {
                r.written += line.len() as u64;
                if r.written > r.max_bytes {
                    match r.roll() {
                        Ok(new) => s.journal = Some(new),
                        Err(e) => res = Err(e),
                    }
                }
            }
            if let Err(e) = res {
                // Stop journaling at the first failure (a full disk would
                // otherwise fail, and be reported, once per event) and let
                // the runner stop the run: a verdict that is not on disk is
                // no verdict.
                s.journal = None;
                s.journal_error = Some(e.to_string());
            }
        }
        s.events.push(ev);
        if let Some(n) = s.retain
            && s.events.len() > n.max(1) * 2
        {
            // Drop the older half at once: amortised O(1) per event.
            let drop_n = s.events.len() - n;
            s.events.drain(..drop_n);
            s.base += drop_n as u64;
        }
        drop(s);
        self.shared.notify.send_replace(seq + 1);
        seq
    }

    pub fn emit_device(&self, device: &str, source: Source, kind: EventKind) -> u64 {
        self.emit(Some(device), source, kind)
    }

    /// Number of events so far; the seq the next event will get.
    pub fn len(&self) -> u64 {
        let s = self.lock();
        s.base + s.events.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A journal write error, if one happened.
    pub fn journal_error(&self) -> Option<String> {
        self.lock().journal_error.clone()
    }

    /// Resolves once writing the journal has failed (at once if it already has).
    pub async fn journal_failed(&self) -> String {
        let mut rx = self.shared.notify.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(e) = self.journal_error() {
                return e;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Runs `f` over all (retained) events so far without copying them.
    pub fn read<R>(&self, f: impl FnOnce(&[Event]) -> R) -> R {
        f(&self.lock().events)
    }

    /// Copies all events so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// Feeds every event from `from_seq` on, in order, to `f` (including
    /// events appended while waiting) until `f` returns true; false if
    /// `limit` elapses first. `f` sees each event exactly once.
    pub async fn wait(&self, from_seq: u64, limit: Option<Duration>, mut f: impl FnMut(&Event) -> bool) -> bool {
        let mut rx = self.shared.notify.subscribe();
        let mut next = from_seq;
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        loop {
            rx.borrow_and_update();
            let done = {
                let s = self.lock();
                let mut done = false;
                // Events no longer retained are skipped.
                next = next.max(s.base);
                while next < s.base + s.events.len() as u64 {
                    let hit = f(&s.events[(next - s.base) as usize]);
                    next += 1;
                    if hit {
                        done = true;
                        break;
                    }
                }
                done
            };
            if done {
                return true;
            }
            let changed = rx.changed();
            match deadline {
                Some(d) => match tokio::time::timeout_at(d, changed).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return false,
                    Err(_) => return false,
                },
                None => {
                    if changed.await.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

/// Errors reading a stored timeline.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse { path: String, line: usize, message: String },
}

/// Reads `events.jsonl`. A torn last line (the rig was killed mid-write) is
/// ignored: everything before it is intact by construction.
pub fn read_jsonl(path: &Path) -> Result<(Header, Vec<Event>), ReadError> {
    let p = path.display().to_string();
    let file = crate::fsutil::open_read_nofollow(path).map_err(|e| ReadError::Io {
        path: p.clone(),
        source: std::io::Error::other(e),
    })?;
    read_jsonl_named(BufReader::new(file), &p)
}

/// [`read_jsonl`] on bytes already in memory.
pub fn read_jsonl_from(data: &[u8]) -> Result<(Header, Vec<Event>), ReadError> {
    read_jsonl_named(data, "events.jsonl")
}

/// Longest line `events.jsonl` may hold: a garbled file must not make the
/// reader buffer gigabytes looking for a newline.
pub const MAX_LINE: usize = 1024 * 1024;

/// The next line (without its end), bounded by [`MAX_LINE`].
fn next_line<R: BufRead>(r: &mut R, p: &str) -> Result<Option<String>, ReadError> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|source| ReadError::Io {
            path: p.to_owned(),
            source,
        })?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(ReadError::Parse {
            path: p.to_owned(),
            line: 0,
            message: format!("a line is longer than {MAX_LINE} bytes: not a rig journal"),
        });
    }
    Ok(Some(
        String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

fn read_jsonl_named<R: BufRead>(mut r: R, p: &str) -> Result<(Header, Vec<Event>), ReadError> {
    let Some(header_line) = next_line(&mut r, p)? else {
        return Err(ReadError::Parse {
            path: p.to_owned(),
            line: 1,
            message: "empty file: expected a rig.events header line".into(),
        });
    };
    let header: Header = serde_json::from_str(&header_line).map_err(|e| ReadError::Parse {
        path: p.to_owned(),
        line: 1,
        message: format!("not a rig.events header: {e}"),
    })?;
    if header.format != FORMAT || header.version > FORMAT_VERSION {
        return Err(ReadError::Parse {
            path: p.to_owned(),
            line: 1,
            message: format!(
                "format {} version {} is not readable by this rig (reads {FORMAT} up to version {FORMAT_VERSION})",
                header.format, header.version
            ),
        });
    }
    let mut events = Vec::new();
    let mut lineno = 1;
    let mut next = next_line(&mut r, p)?;
    while let Some(line) = next {
        lineno += 1;
        next = next_line(&mut r, p)?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(ev) => events.push(ev),
            // A torn last line: the rig was killed mid-write.
            Err(_) if next.is_none() => break,
            Err(e) => {
                return Err(ReadError::Parse {
                    path: p.to_owned(),
                    line: lineno,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok((header, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<EventKind> {
        vec![
            EventKind::CellStart {
                plan: "p".into(),
                plan_path: "p.yaml".into(),
                plan_sha256: "00".into(),
                name: "c".into(),
                vars: BTreeMap::from([("a".into(), "b".into())]),
                expect_failure: true,
                seed: 7,
                bench: "sim".into(),
                clock: "virtual".into(),
            },
            EventKind::CellEnd {
                outcome: CellOutcome::Stopped,
            },
            EventKind::RigFault {
                step: Some(2),
                message: "m".into(),
            },
            EventKind::PowerOn,
            EventKind::PowerOff,
            EventKind::ResetSoft,
            EventKind::FlashStart { fixture: "f".into() },
            EventKind::FlashDone {
                fixture: "f".into(),
                version: "1".into(),
                sha256: "ab".into(),
                ms: 3,
            },
            EventKind::ConsoleLine {
                line: "l".into(),
                partial: true,
            },
            EventKind::ConsoleGap { ms: 5 },
            EventKind::DeviceBoot,
            EventKind::DeviceWake {
                reason: Some("rtc".into()),
            },
            EventKind::DeviceSleep { secs: Some(900) },
            EventKind::CloudConfig {
                mitigation: "drop".into(),
            },
            EventKind::CloudHandshake { session: "s".into() },
            EventKind::CloudResumed { session: "s".into() },
            EventKind::CloudConnected {
                via: ConnectVia::Resume,
                session: "s".into(),
            },
            EventKind::CloudResumeUnknown {
                session: "s".into(),
                action: UnknownAction::Healed,
                resume: true,
            },
            EventKind::CloudPublish {
                session: "s".into(),
                topic: "t".into(),
            },
            EventKind::CloudRx {
                bytes: 80,
                msg: "record".into(),
                peer: "p".into(),
            },
            EventKind::CloudTx {
                bytes: 80,
                msg: "record".into(),
                peer: "p".into(),
            },
            EventKind::CloudInvalid {
                reason: "r".into(),
                peer: "p".into(),
                count: 3,
                bytes: 9,
            },
            EventKind::CloudReplayAccepted {
                session: "s".into(),
                counter: 4,
                highest: 9,
            },
            EventKind::CacheKill {
                backend: "redis".into(),
                pid: Some(4242),
            },
            EventKind::CacheStart {
                backend: "memory".into(),
                pid: None,
            },
            EventKind::CacheRestore {
                from: "empty".into(),
                sessions: 0,
                pid: Some(4243),
            },
            EventKind::CacheSnapshot {
                name: "n".into(),
                sessions: 3,
            },
            EventKind::CacheFlush { sessions: 3 },
            EventKind::CacheEvict {
                fraction: 0.5,
                sessions: vec!["a".into()],
                devices: vec!["d".into()],
            },
            EventKind::CachePause { ms: 100 },
            EventKind::CacheResume,
            EventKind::CacheError {
                op: "get".into(),
                error: "down".into(),
            },
            EventKind::CacheDied {
                backend: "redis".into(),
                pid: 77,
                how: "exit status: 0".into(),
            },
            EventKind::PlanMark { name: "crash".into() },
            EventKind::PlanStep {
                index: 1,
                phase: "steps".into(),
                step: "wait 30s".into(),
            },
            EventKind::CheckPass {
                step: 1,
                check: "expect".into(),
                detail: "d".into(),
                facts: None,
            },
            EventKind::CheckFail {
                step: 1,
                check: "expect_recovery".into(),
                message: "m".into(),
                facts: Some(RecoveryFacts {
                    mark: "crash".into(),
                    mark_t_ms: 1000,
                    recovered: false,
                    via: None,
                    wakes: 5,
                    ms: None,
                    bytes: 4100,
                    handshakes: 0,
                    unknown_resumes: 12,
                    power_cycled: false,
                }),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_through_jsonl_and_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let header = Header {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            run_id: "r".into(),
            rig_version: "0".into(),
            seed: 1,
            bench: "sim".into(),
            plans: vec!["p".into()],
            started: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
        };
        let tl = Timeline::create(&path, &header).unwrap();
        let kinds = samples();
        assert_eq!(kinds.len(), KIND_NAMES.len(), "a sample per kind");
        for k in &kinds {
            assert!(KIND_NAMES.contains(&k.name()), "{} listed", k.name());
            tl.emit_device("dev", Source::Runner, k.clone());
        }
        let (h, evs) = read_jsonl(&path).unwrap();
        assert_eq!(h, header);
        // RFC 3339 keeps nanoseconds, so the stored events equal the live ones.
        assert_eq!(evs, tl.snapshot());
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.contains(r#""kind":"cloud.resume_unknown""#));
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let header = Header {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            run_id: "r".into(),
            rig_version: "0".into(),
            seed: 1,
            bench: "sim".into(),
            plans: vec![],
            started: OffsetDateTime::now_utc(),
        };
        let tl = Timeline::create(&path, &header).unwrap();
        tl.emit(None, Source::Runner, EventKind::PowerOn);
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":1,"cell":0,"t_"#).unwrap();
        let (_, evs) = read_jsonl(&path).unwrap();
        assert_eq!(evs.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_retention_keeps_seq_numbers_and_recent_events() {
        let tl = Timeline::in_memory().retain_last(10);
        for _ in 0..100 {
            tl.emit(None, Source::Runner, EventKind::PowerOn);
        }
        assert_eq!(tl.len(), 100);
        let kept = tl.snapshot();
        assert!(kept.len() <= 20 && kept.len() >= 10, "{}", kept.len());
        assert_eq!(kept.last().unwrap().seq, 99);
        let mut seen = Vec::new();
        let hit = tl.wait(95, Some(Duration::ZERO), |e| {
            seen.push(e.seq);
            e.seq == 99
        });
        assert!(hit.await);
        assert_eq!(seen, [95, 96, 97, 98, 99]);
        let none = Timeline::in_memory().retain_last(0);
        none.emit(None, Source::Runner, EventKind::PowerOn);
        none.emit(None, Source::Runner, EventKind::PowerOn);
        none.emit(None, Source::Runner, EventKind::PowerOn);
        assert!(none.snapshot().len() <= 2);
        assert_eq!(none.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sees_each_event_once_and_times_out() {
        let tl = Timeline::in_memory();
        tl.emit(None, Source::Runner, EventKind::PowerOn);
        let tl2 = tl.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tl2.emit(Some("a"), Source::Power, EventKind::PowerOff);
        });
        let mut seen = Vec::new();
        let hit = tl
            .wait(0, Some(Duration::from_secs(10)), |e| {
                seen.push(e.seq);
                e.kind == EventKind::PowerOff
            })
            .await;
        assert!(hit);
        assert_eq!(seen, vec![0, 1]);
        assert_eq!(tl.now_ms(), 5000);
        let hit = tl.wait(2, Some(Duration::from_secs(10)), |_| true).await;
        assert!(!hit);
        assert_eq!(tl.now_ms(), 15000);
    }
}

#[cfg(test)]
mod roundtrip {
    //! Property: whatever an event holds (any text, any numbers), the journal
    //! gives back exactly what was emitted.
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Any unicode, quotes, backslashes and line breaks included.
        proptest::string::string_regex("(.|\n|\"|\\\\){0,40}").unwrap()
    }

    fn facts() -> impl Strategy<Value = Option<RecoveryFacts>> {
        proptest::option::of(
            (
                text(),
                any::<u64>(),
                any::<bool>(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
            )
                .prop_map(
                    |(mark, t, recovered, wakes, bytes, handshakes, unknown)| RecoveryFacts {
                        mark,
                        mark_t_ms: t,
                        recovered,
                        via: recovered.then_some(ConnectVia::Handshake),
                        wakes,
                        ms: recovered.then_some(t / 2),
                        bytes,
                        handshakes,
                        unknown_resumes: unknown,
                        power_cycled: !recovered,
                    },
                ),
        )
    }

    fn kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            (text(), text(), any::<bool>(), any::<u64>()).prop_map(|(plan, name, ef, seed)| EventKind::CellStart {
                plan: plan.clone(),
                plan_path: name.clone(),
                plan_sha256: "ab".into(),
                name,
                vars: BTreeMap::from([(plan, "v".into())]),
                expect_failure: ef,
                seed,
                bench: "b".into(),
                clock: "virtual".into(),
            }),
            (proptest::option::of(any::<usize>()), text())
                .prop_map(|(step, message)| EventKind::RigFault { step, message }),
            Just(EventKind::PowerOn),
            Just(EventKind::PowerOff),
            (text(), text(), text(), any::<u64>()).prop_map(|(fixture, version, sha256, ms)| EventKind::FlashDone {
                fixture,
                version,
                sha256,
                ms
            }),
            (text(), any::<bool>()).prop_map(|(line, partial)| EventKind::ConsoleLine { line, partial }),
            any::<u64>().prop_map(|ms| EventKind::ConsoleGap { ms }),
            proptest::option::of(text()).prop_map(|reason| EventKind::DeviceWake { reason }),
            proptest::option::of(any::<u64>()).prop_map(|secs| EventKind::DeviceSleep { secs }),
            text().prop_map(|session| EventKind::CloudResumed { session }),
            (text(), any::<bool>()).prop_map(|(session, resume)| EventKind::CloudResumeUnknown {
                session,
                action: if resume {
                    UnknownAction::Healed
                } else {
                    UnknownAction::Dropped
                },
                resume
            }),
            (any::<u64>(), text(), text()).prop_map(|(bytes, msg, peer)| EventKind::CloudRx { bytes, msg, peer }),
            (text(), text(), any::<u64>(), any::<u64>()).prop_map(|(reason, peer, count, bytes)| {
                EventKind::CloudInvalid {
                    reason,
                    peer,
                    count,
                    bytes,
                }
            }),
            (text(), any::<u64>(), any::<u64>()).prop_map(|(session, counter, highest)| {
                EventKind::CloudReplayAccepted {
                    session,
                    counter,
                    highest,
                }
            }),
            (text(), proptest::option::of(any::<u32>()))
                .prop_map(|(backend, pid)| EventKind::CacheKill { backend, pid }),
            (any::<u64>(), proptest::collection::vec(text(), 0..3)).prop_map(|(n, sessions)| EventKind::CacheEvict {
                fraction: (n % 1000) as f64 / 1000.0,
                devices: sessions.clone(),
                sessions,
            }),
            (text(), any::<u32>(), text()).prop_map(|(backend, pid, how)| EventKind::CacheDied { backend, pid, how }),
            (any::<usize>(), text(), text(), facts()).prop_map(|(step, check, detail, facts)| EventKind::CheckPass {
                step,
                check,
                detail,
                facts
            }),
            (any::<usize>(), text(), text(), facts()).prop_map(|(step, check, message, facts)| EventKind::CheckFail {
                step,
                check,
                message,
                facts
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn whatever_is_emitted_is_read_back(events in proptest::collection::vec((proptest::option::of(text()), kind()), 0..30)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.jsonl");
            let header = Header {
                format: FORMAT.into(),
                version: FORMAT_VERSION,
                run_id: "r".into(),
                rig_version: "0".into(),
                seed: 1,
                bench: "b".into(),
                plans: vec![],
                started: OffsetDateTime::UNIX_EPOCH,
            };
            let tl = Timeline::create(&path, &header).unwrap();
            for (device, kind) in events {
                tl.emit(device.as_deref(), Source::Runner, kind);
            }
            let (h, evs) = read_jsonl(&path).unwrap();
            prop_assert_eq!(h, header);
            prop_assert_eq!(evs, tl.snapshot());
        }
    }
}
