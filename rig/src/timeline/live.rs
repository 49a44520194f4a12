//! The live timeline: a cheap-to-clone handle that drivers, the cloud and
//! the runner append to, journaled as it happens, and that waiting steps
//! follow.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::{Event, EventKind, Header, Source};

/// When the journal's buffer goes to the file (what a SIGKILL can lose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// After every event: a kill loses at most the event being written.
    /// Real-clock runs, where an event is rare and a run is not repeatable.
    EveryEvent,
    /// After every verdict-bearing event (plan steps, checks, faults, cell
    /// ends) at once, otherwise when 64 KiB are buffered or 100 ms of wall
    /// time have passed: a kill loses at most that much of the device
    /// chatter between two steps, never a verdict. Virtual-clock runs,
    /// where a `write` per event was a sixth of a fleet run's time and the
    /// same seed replays what was lost.
    Batched,
}

/// Most bytes, and wall time, a batched journal holds before writing.
const BATCH_BYTES: usize = 64 * 1024;
const BATCH_WALL: std::time::Duration = std::time::Duration::from_millis(100);

/// Where journal lines go: a buffered file, or a zstd stream over one.
type Journal = Box<dyn Write + Send>;

struct State {
    /// Retained events; `events[0]` has seq `base`.
    events: Vec<Event>,
    base: u64,
    /// Keep at most about this many events in memory (None: all of them).
    retain: Option<usize>,
    journal: Option<Journal>,
    flush: Flush,
    /// Bytes written into the journal's buffer since it last went to the file.
    unflushed: usize,
    /// The line being serialised, kept between events: a fresh buffer per
    /// event was an allocation and a free each time.
    line: Vec<u8>,
    last_flush: std::time::Instant,
    journal_error: Option<String>,
    /// Whether console lines are journaled (`journal: { console_lines }`).
    console_lines: bool,
    /// Whether a console's "connected" line makes the connect events (in
    /// front of an external cloud, which does not tell the rig).
    connects_from_console: bool,
    /// A board that failed on its own between steps (an emulator that died).
    board_fault: Option<String>,
    /// Bounded journals (long-running `rig cloud serve`) roll over.
    rotation: Option<Rotation>,
    cell: u32,
    cell_base: tokio::time::Instant,
    /// Marks set in the current cell: name → (seq, cell ms) of the last one.
    marks: std::collections::HashMap<String, (u64, u64)>,
    index: super::index::CellIndex,
    /// Called with every event as it is emitted (live checks).
    observers: Vec<(u64, Observer)>,
    /// Where each running [`Timeline::wait`] has got to: events it has not
    /// seen are retained whatever `retain` says.
    cursors: std::collections::BTreeMap<u64, u64>,
    next_id: u64,
}

/// A function fed every event as it is emitted, under the timeline's lock:
/// it must be quick and must not touch the timeline.
pub type Observer = Box<dyn FnMut(&Event) + Send>;

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

    fn roll(&mut self) -> std::io::Result<Journal> {
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
        Ok(Box::new(w))
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
        Timeline::create_with(path, header, Flush::EveryEvent, false)
    }

    /// [`Timeline::create`] with a flush policy; `compress` writes the
    /// lines as one zstd stream (level 1: a fleet's journal shrinks about
    /// tenfold for a few percent of its run time). Each flush ends a zstd
    /// block, so what was flushed decodes even if the rig is killed.
    pub fn create_with(path: &Path, header: &Header, flush: Flush, compress: bool) -> std::io::Result<Timeline> {
        // A new file: never an old journal truncated, never a planted link.
        let f = crate::fsutil::create_new(path, 0o644).map_err(std::io::Error::other)?;
        let buffered = BufWriter::with_capacity(BATCH_BYTES * 2, f);
        let mut w: Journal = if compress {
            Box::new(zstd::stream::write::Encoder::new(buffered, 1)?.auto_finish())
        } else {
            Box::new(buffered)
        };
        serde_json::to_writer(&mut w, header)?;
        w.write_all(b"\n")?;
        w.flush()?;
        let tl = Timeline::with_journal(Some(w));
        tl.lock().flush = flush;
        Ok(tl)
    }

    /// Writes what a batched journal holds to the file now.
    pub fn flush(&self) {
        let mut s = self.lock();
        if let Some(w) = s.journal.as_mut()
            && let Err(e) = w.flush()
        {
            s.journal = None;
            s.journal_error = Some(e.to_string());
        }
        s.unflushed = 0;
        s.last_flush = std::time::Instant::now();
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

    /// Whether consoles journal every line or only what lines stand for.
    pub fn set_console_lines(&self, keep: bool) {
        self.lock().console_lines = keep;
    }

    pub fn set_connects_from_console(&self, yes: bool) {
        self.lock().connects_from_console = yes;
    }

    pub fn connects_from_console(&self) -> bool {
        self.lock().connects_from_console
    }

    pub fn keeps_console_lines(&self) -> bool {
        self.lock().console_lines
    }

    fn with_journal(journal: Option<Journal>) -> Timeline {
        let (notify, _) = watch::channel(0);
        Timeline {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    events: Vec::new(),
                    base: 0,
                    retain: None,
                    journal,
                    flush: Flush::EveryEvent,
                    unflushed: 0,
                    line: Vec::new(),
                    last_flush: std::time::Instant::now(),
                    journal_error: None,
                    console_lines: true,
                    board_fault: None,
                    connects_from_console: false,
                    rotation: None,
                    cell: 0,
                    cell_base: tokio::time::Instant::now(),
                    marks: std::collections::HashMap::new(),
                    index: Default::default(),
                    observers: Vec::new(),
                    cursors: Default::default(),
                    next_id: 0,
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
        s.marks.clear();
        s.index = Default::default();
        // A board or cloud that died in the last cell is gone with its world.
        s.board_fault = None;
    }

    /// Milliseconds since the current cell began.
    pub fn now_ms(&self) -> u64 {
        let s = self.lock();
        tokio::time::Instant::now()
            .saturating_duration_since(s.cell_base)
            .as_millis() as u64
    }

    /// Appends an event, journals it (flushed as the [`Flush`] policy says),
    /// and wakes waiters.
    pub fn emit(&self, device: Option<&str>, source: Source, kind: EventKind) -> u64 {
        self.emit_at(device, source, kind, tokio::time::Instant::now())
    }

    /// [`Timeline::emit`] for something observed at `at` (a console line is
    /// timestamped when its first byte arrived, not when it ended).
    pub fn emit_at(&self, device: Option<&str>, source: Source, kind: EventKind, at: tokio::time::Instant) -> u64 {
        let wall = OffsetDateTime::now_utc();
        let s = self.lock();
        let t_ms = at.saturating_duration_since(s.cell_base).as_millis() as u64;
        let ev = Event {
            seq: 0,
            cell: s.cell,
            t_ms,
            wall,
            device: device.map(str::to_owned),
            source,
            kind,
        };
        self.record(s, ev)
    }

    /// An event another timeline recorded (a matrix cell run side by side,
    /// see `runner::cells`), appended as it was but for its seq, which
    /// follows this timeline's: the journal reads as if the cell had run
    /// here.
    pub fn import(&self, ev: Event) -> u64 {
        let s = self.lock();
        self.record(s, ev)
    }

    /// `ev` given the next seq, journaled, indexed, observed and retained.
    fn record(&self, mut s: std::sync::MutexGuard<'_, State>, mut ev: Event) -> u64 {
        let seq = s.base + s.events.len() as u64;
        ev.seq = seq;
        let t_ms = ev.t_ms;
        let flush_now = match s.flush {
            Flush::EveryEvent => true,
            Flush::Batched => {
                matches!(
                    ev.kind,
                    EventKind::PlanStep { .. }
                        | EventKind::PlanMark { .. }
                        | EventKind::CheckPass { .. }
                        | EventKind::CheckFail { .. }
                        | EventKind::RigFault { .. }
                        | EventKind::CellStart { .. }
                        | EventKind::CellEnd { .. }
                ) || s.unflushed >= BATCH_BYTES
                    || s.last_flush.elapsed() >= BATCH_WALL
            }
        };
        let st = &mut *s;
        if let Some(w) = st.journal.as_mut() {
            let line = &mut st.line;
            line.clear();
            if serde_json::to_writer(&mut *line, &ev).is_err() {
                line.clear();
            }
            line.push(b'\n');
            let mut res = w.write_all(line);
            if res.is_ok() && flush_now {
                res = w.flush();
            }
            if flush_now {
                st.unflushed = 0;
                st.last_flush = std::time::Instant::now();
            } else {
                st.unflushed += line.len();
            }
            if res.is_ok()
                && let Some(r) = st.rotation.as_mut()
            {
                r.written += line.len() as u64;
                if r.written > r.max_bytes {
                    // The rolled file must hold everything before the roll.
                    match w.flush().and_then(|_| r.roll()) {
                        Ok(new) => st.journal = Some(new),
                        Err(e) => res = Err(e),
                    }
                }
            }
            if let Err(e) = res {
                // Stop journaling at the first failure (a full disk would
                // otherwise fail, and be reported, once per event) and let
                // the runner stop the run: a verdict that is not on disk is
                // no verdict.
                st.journal = None;
                st.journal_error = Some(e.to_string());
            }
        }
        if let EventKind::PlanMark { name } = &ev.kind {
            s.marks.insert(name.clone(), (seq, t_ms));
        }
        s.index.feed(&ev);
        for (_, f) in &mut s.observers {
            f(&ev);
        }
        s.events.push(ev);
        if let Some(n) = s.retain
            && s.events.len() > n.max(1) * 2
        {
            // Drop the older half at once: amortised O(1) per event. Never
            // what a waiting step has yet to see.
            let mut drop_n = s.events.len() - n;
            if let Some(min) = s.cursors.values().min() {
                drop_n = drop_n.min(min.saturating_sub(s.base) as usize);
            }
            s.events.drain(..drop_n);
            s.base += drop_n as u64;
        }
        drop(s);
        // Waiters subscribe before they look at the events, so one that
        // subscribes after this check still sees this event; with none, the
        // notification (a lock per waiter slot) is skipped: the cloud emits
        // several events per datagram.
        if self.shared.notify.receiver_count() > 0 {
            self.shared.notify.send_replace(seq + 1);
        }
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

    /// The last `plan.mark` named `name` in the current cell: (seq, cell ms).
    pub fn mark(&self, name: &str) -> Option<(u64, u64)> {
        self.lock().marks.get(name).copied()
    }

    /// Asks the cell's index for counts `within_ms` after each mark `mark`
    /// (an `expect` step's window). Call after [`Timeline::begin_cell`].
    pub fn want_limit(&self, mark: &str, within_ms: u64) {
        self.lock().index.want_limit(mark, within_ms);
    }

    /// Runs `f` on the current cell's index.
    pub fn index<R>(&self, f: impl FnOnce(&super::index::CellIndex) -> R) -> R {
        f(&self.lock().index)
    }

    /// Feeds every event from now on to `f` until [`Timeline::unobserve`].
    pub fn observe(&self, f: Observer) -> u64 {
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.observers.push((id, f));
        id
    }

    pub fn unobserve(&self, id: u64) {
        self.lock().observers.retain(|(i, _)| *i != id);
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

    /// Says that a board failed on its own, outside any step's driver call
    /// (an emulator process that died): the runner stops the cell with it as
    /// a rig fault. The first one is kept.
    pub fn board_failed(&self, message: String) {
        let mut s = self.lock();
        s.board_fault.get_or_insert(message);
        let next = s.base + s.events.len() as u64;
        drop(s);
        self.shared.notify.send_replace(next);
    }

    /// Resolves once a board has failed (at once if one already has).
    pub async fn board_fault(&self) -> String {
        let mut rx = self.shared.notify.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(e) = self.lock().board_fault.clone() {
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

    /// The retained events from `*next` on, at most `max`, copied out so the
    /// caller can act on them without holding the timeline (a terminal that
    /// blocks must not stall the drivers writing it); waits for one if none
    /// is there yet. Advances `*next` and says how many events before the
    /// first were no longer retained (the caller fell behind). `None` when
    /// `deadline` passes first.
    pub async fn next_batch(
        &self,
        next: &mut u64,
        max: usize,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<(Vec<Event>, u64)> {
        let mut rx = self.shared.notify.subscribe();
        let mut skipped = 0;
        loop {
            rx.borrow_and_update();
            {
                let s = self.lock();
                if *next < s.base {
                    skipped += s.base - *next;
                    *next = s.base;
                }
                let end = s.base + s.events.len() as u64;
                if *next < end {
                    let from = (*next - s.base) as usize;
                    let n = ((end - *next) as usize).min(max.max(1));
                    let batch = s.events[from..from + n].to_vec();
                    *next += n as u64;
                    return Some((batch, skipped));
                }
            }
            let changed = rx.changed();
            match deadline {
                Some(d) => match tokio::time::timeout_at(d, changed).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return None,
                },
                None => changed.await.ok()?,
            }
        }
    }

    /// Feeds every event from `from_seq` on, in order, to `f` (including
    /// events appended while waiting) until `f` returns true; false if
    /// `limit` elapses first. `f` sees each event exactly once.
    pub async fn wait(&self, from_seq: u64, limit: Option<Duration>, mut f: impl FnMut(&Event) -> bool) -> bool {
        let mut rx = self.shared.notify.subscribe();
        let mut next = from_seq;
        let cursor = Cursor::new(self, from_seq);
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        loop {
            rx.borrow_and_update();
            let done = {
                let mut s = self.lock();
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
                s.cursors.insert(cursor.id, next);
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

/// A running wait's place in the timeline, dropped with it (also when the
/// wait is cancelled).
struct Cursor<'a> {
    tl: &'a Timeline,
    id: u64,
}

impl<'a> Cursor<'a> {
    fn new(tl: &'a Timeline, at: u64) -> Cursor<'a> {
        let mut s = tl.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.cursors.insert(id, at);
        Cursor { tl, id }
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        self.tl.lock().cursors.remove(&self.id);
    }
}
