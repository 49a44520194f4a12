//! Reports: pure functions of the timeline, written into the run folder.
//!
//! `summary.json` (verdicts, checks, recovery facts), `junit.xml` for CI, and
//! `console/<device>.log`. [`write_all`] is what both `rig run` (after every
//! cell, so a crash leaves a readable partial report) and `rig report
//! RUN_DIR` call.

pub mod evidence;
pub mod fleet;
pub mod junit;
pub mod shards;
pub mod signoff;
pub mod summary;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::timeline::{Event, EventKind, Header};
use crate::units::{fmt_bytes, fmt_clock, fmt_duration};
pub use summary::{CellSummary, CellVerdict, Overall, Summary, summarize};

/// Writes every report for `events` into `dir` and returns the summary.
pub fn write_all(dir: &Path, header: &Header, events: &[Event]) -> std::io::Result<Summary> {
    let summary = summarize(header, events);
    write_with(dir, header, &summary, events.last().map(|e| e.wall), true, |_, f| {
        events.iter().for_each(f);
        Ok(())
    })
    .map_err(ReportError::into_io)?;
    Ok(summary)
}

/// Errors rendering reports from a journal on disk.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Read(#[from] crate::timeline::ReadError),
    #[error("{0}")]
    Write(#[from] std::io::Error),
}

impl ReportError {
    fn into_io(self) -> std::io::Error {
        match self {
            ReportError::Write(e) => e,
            ReportError::Read(e) => std::io::Error::other(e),
        }
    }
}

/// Every report of the journal at `journal`, written into `dir`, in two
/// streaming passes (the summary, then what the reports show of it): memory
/// grows with devices and checks, not with the journal's length.
pub fn write_from_journal(dir: &Path, journal: &Path) -> Result<Summary, ReportError> {
    let mut s = summary::Summarizer::default();
    let header = crate::timeline::store::stream(journal, |e| s.feed(&e))?;
    let summary = s.summary(&header);
    write_summarized(dir, &header, &summary, s.last_wall, journal)?;
    Ok(summary)
}

/// The reports of a run whose summary is known (`rig run` keeps it as the
/// events are emitted), from one filtered streaming pass over its journal.
pub fn write_summarized(
    dir: &Path,
    header: &Header,
    summary: &Summary,
    last_wall: Option<time::OffsetDateTime>,
    journal: &Path,
) -> Result<(), ReportError> {
    write_with(dir, header, summary, last_wall, true, |filter, f| {
        crate::timeline::store::stream_filtered(journal, |k, d| filter.keep(k, d), |e| f(&e)).map(drop)
    })
}

/// The reports of a run folder: from its journal, or from its slices'
/// journals joined when it ran as slices side by side (`rig run --jobs`).
pub fn write_from_folder(dir: &Path) -> Result<Summary, ReportError> {
    let journals = crate::timeline::join::slices_in(dir);
    if journals.is_empty() {
        return write_from_journal(dir, &crate::timeline::journal_in(dir));
    }
    let slices = slice_summaries(&journals)?;
    write_joined(dir, &journals, &slices, &joined_id(dir, journals.len()))
}

/// A slice's `summary.json` alone: what a slice run side by side writes;
/// its console logs and the sign-off come from [`write_joined`].
pub fn write_summary(dir: &Path, summary: &Summary) -> std::io::Result<()> {
    write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(summary).map_err(std::io::Error::other)?,
    )
}

/// What a run folder of slices run side by side is called in its reports.
pub fn joined_id(dir: &Path, slices: usize) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{name} ({slices} slices joined)")
}

/// Each slice's summary and last event time, read from its journal (one
/// thread per slice), parsing only the lines a summary needs.
pub fn slice_summaries(journals: &[std::path::PathBuf]) -> Result<Vec<Summary>, crate::timeline::ReadError> {
    std::thread::scope(|s| {
        let handles: Vec<_> = journals
            .iter()
            .map(|j| {
                s.spawn(move || {
                    let mut sum = summary::Summarizer::default();
                    let lines = summary::SummaryLines::default();
                    let header =
                        crate::timeline::store::stream_in_cells(j, |c, k, d| lines.keep(c, k, d), |e| sum.feed(&e))?;
                    Ok(sum.summary(&header))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The reports of slices' journals read as one run ([`crate::timeline::join`]),
/// given the slices' summaries, written into `dir` and named `run_id`. The
/// devices' console logs are written in their slices' folders
/// (`slices/K/console/`), each slice's on its reader's thread.
pub fn write_joined(
    dir: &Path,
    journals: &[std::path::PathBuf],
    slices: &[Summary],
    run_id: &str,
) -> Result<Summary, ReportError> {
    let (header, summary) = joined_summary(journals, slices, run_id)?;
    let mut logs = Vec::with_capacity(journals.len());
    for (j, s) in journals.iter().zip(slices).filter(|_| header.console_lines) {
        let console_dir = j.parent().unwrap_or(Path::new(".")).join("console");
        crate::fsutil::ensure_dir(&console_dir, 0o755).map_err(std::io::Error::other)?;
        logs.push(SliceLogs {
            logs: Some(ConsoleLogs::new(&console_dir, s)),
            result: Ok(()),
        });
    }
    write_with(dir, &header, &summary, None, false, |filter, f| {
        let taps = logs
            .iter_mut()
            .map(|l| Box::new(l) as Box<dyn crate::timeline::join::Tap + '_>)
            .collect();
        crate::timeline::join::stream_tapped(journals, |_, k, d| filter.keep(k, d), taps, |e| f(&e)).map(drop)
    })?;
    for l in logs {
        l.result?;
    }
    Ok(summary)
}

/// A slice's console logs, fed by its reader in a join.
struct SliceLogs<'a> {
    logs: Option<ConsoleLogs<'a>>,
    result: std::io::Result<()>,
}

impl crate::timeline::join::Tap for SliceLogs<'_> {
    fn event(&mut self, e: &Event) {
        if let Some(l) = &mut self.logs {
            l.feed(e);
        }
    }
    fn end(&mut self) {
        if let Some(l) = self.logs.take() {
            self.result = l.finish();
        }
    }
}

/// The joined run's header (the first slice's, no longer a slice, renamed)
/// and its summary joined from the slices'.
fn joined_summary(
    journals: &[std::path::PathBuf],
    slices: &[Summary],
    run_id: &str,
) -> Result<(Header, Summary), crate::timeline::ReadError> {
    let first = journals.first().ok_or_else(|| crate::timeline::ReadError::Parse {
        path: "(no journal)".into(),
        line: 0,
        message: "a join needs at least one slice".into(),
    })?;
    let mut header = crate::timeline::store::header(first)?;
    header.shard = None;
    header.run_id = run_id.to_owned();
    let summary = summary::join(&header, slices);
    Ok((header, summary))
}

/// Slices' journals joined and read back as one run, given their summaries.
pub fn load_joined(
    dir: &Path,
    journals: &[std::path::PathBuf],
    slices: &[Summary],
    run_id: &str,
) -> Result<Loaded, crate::timeline::ReadError> {
    let (header, summary) = joined_summary(journals, slices, run_id)?;
    let mut gather = evidence::Gather::new(&summary);
    let filter = gather.filter();
    crate::timeline::join::stream(journals, |_, k, d| filter.keep(k, d), |e| gather.feed(&e))?;
    let evidence = gather.finish(&summary);
    Ok(Loaded {
        dir: dir.to_owned(),
        header,
        evidence,
        summary,
    })
}

/// Writes the reports of `summary`; `pass` feeds the run's events (those
/// the filter keeps, at least), in order, to the function it is given.
fn write_with(
    dir: &Path,
    header: &Header,
    summary: &Summary,
    last_wall: Option<time::OffsetDateTime>,
    console_logs: bool,
    pass: impl FnOnce(&evidence::Filter, &mut dyn FnMut(&Event)) -> Result<(), crate::timeline::ReadError>,
) -> Result<(), ReportError> {
    // Where no console line was journaled, a device's log would hold only
    // the rig's actions, all of which the journal and sign-off show.
    let mut logs = if console_logs && header.console_lines {
        let console_dir = dir.join("console");
        crate::fsutil::ensure_dir(&console_dir, 0o755).map_err(std::io::Error::other)?;
        Some(ConsoleLogs::new(&console_dir, summary))
    } else {
        None
    };
    let mut gather = evidence::Gather::new(summary);
    let filter = gather.filter();
    pass(&filter, &mut |e| {
        gather.feed(e);
        if let Some(l) = &mut logs {
            l.feed(e);
        }
    })?;
    let mut evidence = gather.finish(summary);
    evidence.last_wall = last_wall.or(evidence.last_wall);
    if let Some(l) = logs {
        l.finish()?;
    }
    write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(summary).map_err(std::io::Error::other)?,
    )?;
    write_atomic(&dir.join("junit.xml"), &junit::render(summary, &evidence))?;
    let run = [signoff::Run {
        header,
        evidence: &evidence,
        summary,
    }];
    write_atomic(&dir.join("signoff.html"), signoff::html(&run).as_bytes())?;
    write_atomic(&dir.join("signoff.md"), signoff::markdown(&run).as_bytes())?;
    Ok(())
}

// Reports are rewritten after every cell; a reader must never see half a file.
// A full disk leaves no half-written temp file behind, and a link planted
// at a report's path is replaced, not followed.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, data, 0o644).map_err(std::io::Error::other)
}

/// A run folder read back: what `rig report` and `rig report merge` work from.
pub struct Loaded {
    pub dir: std::path::PathBuf,
    pub header: Header,
    pub evidence: evidence::Evidence,
    pub summary: Summary,
}

/// Reads a run folder's journal in two streaming passes.
pub fn load(dir: &Path) -> Result<Loaded, crate::timeline::ReadError> {
    let journals = crate::timeline::join::slices_in(dir);
    if !journals.is_empty() {
        let slices = slice_summaries(&journals)?;
        return load_joined(dir, &journals, &slices, &joined_id(dir, journals.len()));
    }
    let journal = crate::timeline::journal_in(dir);
    let mut s = summary::Summarizer::default();
    let header = crate::timeline::store::stream(&journal, |e| s.feed(&e))?;
    let summary = s.summary(&header);
    let mut gather = evidence::Gather::new(&summary);
    let filter = gather.filter();
    crate::timeline::store::stream_filtered(&journal, |k, d| filter.keep(k, d), |e| gather.feed(&e))?;
    let mut evidence = gather.finish(&summary);
    evidence.last_wall = s.last_wall.or(evidence.last_wall);
    Ok(Loaded {
        dir: dir.to_owned(),
        header,
        evidence,
        summary,
    })
}

/// Combines runs (from several benches, say) into one `junit.xml`, one
/// sign-off and a `merged.json` index in `out`. Returns the combined exit code.
pub fn merge(runs: &[Loaded], out: &Path) -> std::io::Result<i32> {
    crate::fsutil::ensure_dir(out, 0o755).map_err(std::io::Error::other)?;
    let pairs: Vec<(&Summary, &evidence::Evidence)> = runs.iter().map(|r| (&r.summary, &r.evidence)).collect();
    write_atomic(&out.join("junit.xml"), &junit::render_runs(&pairs, true))?;
    let views: Vec<signoff::Run> = runs
        .iter()
        .map(|r| signoff::Run {
            header: &r.header,
            evidence: &r.evidence,
            summary: &r.summary,
        })
        .collect();
    write_atomic(&out.join("signoff.html"), signoff::html(&views).as_bytes())?;
    write_atomic(&out.join("signoff.md"), signoff::markdown(&views).as_bytes())?;
    let cells: Vec<CellSummary> = runs.iter().flat_map(|r| r.summary.cells.iter().cloned()).collect();
    let exit_code = summary::exit_code(&cells);
    let index = serde_json::json!({
        "format": "rig.merged",
        "version": 1,
        "exit_code": exit_code,
        "runs": runs.iter().map(|r| serde_json::json!({
            "dir": r.dir.display().to_string(),
            "run_id": r.summary.run_id,
            "bench": r.summary.bench,
            "exit_code": r.summary.exit_code,
        })).collect::<Vec<_>>(),
    });
    write_atomic(&out.join("merged.json"), &serde_json::to_vec_pretty(&index)?)?;
    Ok(exit_code)
}

/// Most console-log text held in memory before it goes to the files.
const CONSOLE_SPILL: usize = 8 << 20;

/// One log per device, `console/<device>.log`: every console line with its
/// plan time, cell by cell. Written as the events stream past: a device's
/// text is held until [`CONSOLE_SPILL`] bytes are held in all, then
/// appended to a private temporary file renamed over the log at the end.
struct ConsoleLogs<'a> {
    dir: std::path::PathBuf,
    summary: &'a Summary,
    held: BTreeMap<String, String>,
    held_bytes: usize,
    spill_at: usize,
    /// Temporary files of the logs that spilled.
    spilled: BTreeMap<String, std::path::PathBuf>,
    current: std::collections::HashMap<String, u32>,
    /// The first failed spill (what was held then is lost): `finish` says so.
    error: Option<std::io::Error>,
}

impl<'a> ConsoleLogs<'a> {
    fn new(dir: &Path, summary: &'a Summary) -> ConsoleLogs<'a> {
        ConsoleLogs {
            dir: dir.to_owned(),
            summary,
            held: BTreeMap::new(),
            held_bytes: 0,
            spill_at: CONSOLE_SPILL,
            spilled: BTreeMap::new(),
            current: Default::default(),
            error: None,
        }
    }

    fn feed(&mut self, e: &Event) {
        let Some(line) = console_log_line(e) else { return };
        let Some(d) = &e.device else { return };
        let log = self.held.entry(d.clone()).or_default();
        let before = log.len();
        if self.current.get(d) != Some(&e.cell) {
            self.current.insert(d.clone(), e.cell);
            let cell = self.summary.cells.iter().find(|c| c.index == e.cell);
            let title = cell.map(|c| format!("{} [{}]", c.plan, c.name)).unwrap_or_default();
            let _ = writeln!(log, "===== cell {}: {title} =====", e.cell + 1);
        }
        let _ = writeln!(log, "[{}] {line}", fmt_clock(e.t_ms));
        self.held_bytes += log.len() - before;
        if self.held_bytes > self.spill_at
            && let Err(e) = self.spill()
        {
            self.error.get_or_insert(e);
        }
    }

    fn log_path(&self, device: &str) -> std::path::PathBuf {
        self.dir.join(format!("{device}.log"))
    }

    fn spill(&mut self) -> std::io::Result<()> {
        for (d, text) in std::mem::take(&mut self.held) {
            let tmp = match self.spilled.get(&d) {
                Some(t) => t.clone(),
                None => {
                    let (t, _) =
                        crate::fsutil::temp_beside(&self.log_path(&d), 0o644).map_err(std::io::Error::other)?;
                    self.spilled.insert(d.clone(), t.clone());
                    t
                }
            };
            crate::fsutil::append_nofollow(&tmp, text.as_bytes()).map_err(std::io::Error::other)?;
        }
        self.held_bytes = 0;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            for tmp in self.spilled.values() {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
        if self.spilled.is_empty() {
            for (d, text) in &self.held {
                write_atomic(&self.log_path(d), text.as_bytes())?;
            }
            return Ok(());
        }
        let r = self.spill().and_then(|_| {
            for (d, tmp) in &self.spilled {
                std::fs::rename(tmp, self.log_path(d))?;
            }
            Ok(())
        });
        if r.is_err() {
            for tmp in self.spilled.values() {
                let _ = std::fs::remove_file(tmp);
            }
        }
        r
    }
}

/// What an event adds to its device's console log, if anything.
fn console_log_line(e: &Event) -> Option<String> {
    e.device.as_ref()?;
    let line = match &e.kind {
        EventKind::ConsoleLine { line, partial } => {
            if *partial {
                format!("{line} [partial: link lost mid-line]")
            } else {
                line.clone()
            }
        }
        EventKind::ConsoleGap { ms } => format!(
            "--- console link gap of {} ---",
            fmt_duration(std::time::Duration::from_millis(*ms))
        ),
        EventKind::PowerOn { .. } => "--- rig: power on ---".into(),
        EventKind::PowerOff { .. } => "--- rig: power off ---".into(),
        EventKind::ResetSoft => "--- rig: soft reset ---".into(),
        EventKind::DeviceReset { reason } => format!("--- board reset itself ({reason}) ---"),
        EventKind::FlashDone { fixture, version, .. } => format!("--- rig: flashed {fixture} {version} ---"),
        // Not part of what a device's console log shows.
        EventKind::CellStart { .. }
        | EventKind::CellEnd { .. }
        | EventKind::RigFault { .. }
        | EventKind::FlashStart { .. }
        | EventKind::DeviceBoot
        | EventKind::DeviceWake { .. }
        | EventKind::DeviceSleep { .. }
        | EventKind::CloudConfig { .. }
        | EventKind::CloudHandshake { .. }
        | EventKind::CloudResumed { .. }
        | EventKind::CloudConnected { .. }
        | EventKind::CloudResumeUnknown { .. }
        | EventKind::CloudPublish { .. }
        | EventKind::CloudRx { .. }
        | EventKind::CloudTx { .. }
        | EventKind::CloudExchange { .. }
        | EventKind::CloudInvalid { .. }
        | EventKind::CloudReplayAccepted { .. }
        | EventKind::CacheKill { .. }
        | EventKind::CacheDied { .. }
        | EventKind::CacheStart { .. }
        | EventKind::CacheRestore { .. }
        | EventKind::CacheSnapshot { .. }
        | EventKind::CacheFlush { .. }
        | EventKind::CacheEvict { .. }
        | EventKind::CachePause { .. }
        | EventKind::CacheResume
        | EventKind::CacheError { .. }
        | EventKind::CacheCluster { .. }
        | EventKind::CacheNodeKill { .. }
        | EventKind::CacheNodeStart { .. }
        | EventKind::CacheNodePause { .. }
        | EventKind::CacheNodeResume { .. }
        | EventKind::CloudProcess { .. }
        | EventKind::CloudLog { .. }
        | EventKind::NetworkFault { .. }
        | EventKind::NetworkHealed { .. }
        | EventKind::PlanMark { .. }
        | EventKind::PlanStep { .. }
        | EventKind::CheckPass { .. }
        | EventKind::CheckFail { .. } => return None,
    };
    Some(line)
}

/// The closing line of `rig run` and `rig report`: the whole run's verdict.
pub fn overall_line(cells: &[CellSummary]) -> String {
    let o = Overall::of(cells);
    match o {
        Overall::NoVerdict => format!("{}: {}", o.word(), o.explain()),
        _ => format!("verdict: {}", o.word()),
    }
}

/// One line per cell for progress output.
pub fn cell_line(c: &CellSummary) -> String {
    format!("{} [{}]: {}", c.plan, c.name, c.verdict.label())
}

/// The verdict table printed at the end of `rig run`.
pub fn verdict_table(s: &Summary) -> String {
    let mut rows = vec![[
        "#".to_string(),
        "cell".into(),
        "verdict".into(),
        "recovered".into(),
        "wakes (max)".into(),
        "bytes (max)".into(),
        "plan time".into(),
    ]];
    for c in &s.cells {
        let rec = c.recovery();
        let (recovered, wakes, bytes) = if rec.is_empty() {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            let ok: Vec<_> = rec.iter().filter(|(_, f)| f.recovered).collect();
            let wakes = ok.iter().map(|(_, f)| f.wakes).max();
            let bytes = ok.iter().map(|(_, f)| f.bytes).max();
            (
                format!("{}/{}", ok.len(), rec.len()),
                wakes.map_or("-".into(), |w| w.to_string()),
                bytes.map_or("-".into(), fmt_bytes),
            )
        };
        rows.push([
            (c.index + 1).to_string(),
            format!("{} [{}]", c.plan, c.name),
            c.verdict.label().to_string(),
            recovered,
            wakes,
            bytes,
            fmt_duration(std::time::Duration::from_millis(c.plan_ms)),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (ri, r) in rows.iter().enumerate() {
        let line: Vec<String> = r.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if ri == 0 {
            let _ = writeln!(
                out,
                "{}",
                widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ")
            );
        }
    }
    if s.cells.is_empty() {
        let _ = writeln!(out, "(no cell was run)");
    }
    for c in &s.cells {
        // Bench-wide failures (a plan timeout) first: they explain the rest.
        let mut failures: Vec<&str> = c.faults.iter().map(String::as_str).collect();
        failures.extend(
            c.failed_checks()
                .filter(|k| k.device.is_none())
                .map(|k| k.text.as_str()),
        );
        failures.extend(
            c.failed_checks()
                .filter(|k| k.device.is_some())
                .map(|k| k.text.as_str()),
        );
        if failures.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{} [{}] — {}:", c.plan, c.name, c.verdict.label());
        for f in failures.iter().take(3) {
            let _ = writeln!(out, "  {f}");
        }
        if failures.len() > 3 {
            let _ = writeln!(out, "  … and {} more (see junit.xml)", failures.len() - 3);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Source;

    fn logs_with(spill_at: usize, events: &[Event]) -> BTreeMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            format: crate::timeline::FORMAT.into(),
            version: 1,
            run_id: "r".into(),
            rig_version: "0".into(),
            seed: 1,
            bench: "sim".into(),
            plans: vec![],
            started: time::OffsetDateTime::UNIX_EPOCH,
            shard: None,
            console_lines: true,
        };
        let summary = summarize(&header, events);
        let mut logs = ConsoleLogs::new(dir.path(), &summary);
        logs.spill_at = spill_at;
        for e in events {
            logs.feed(e);
        }
        logs.finish().unwrap();
        let mut out = BTreeMap::new();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with('.'), "no temporary file left: {name}");
            out.insert(name, std::fs::read_to_string(f.path()).unwrap());
        }
        out
    }

    /// Console logs past the memory they may take go to temporary files
    /// and come out the same as those written from memory at once.
    #[test]
    fn console_logs_that_spill_to_disk_are_the_same_as_those_held() {
        let events: Vec<Event> = (0..400u64)
            .map(|i| {
                let d = format!("dev-{}", i % 3);
                Event::at(
                    i,
                    i * 10,
                    &d,
                    Source::Console,
                    EventKind::ConsoleLine {
                        line: format!("line {i} of {d}"),
                        partial: false,
                    },
                )
            })
            .collect();
        let held = logs_with(usize::MAX, &events);
        let spilled = logs_with(200, &events);
        assert_eq!(held.len(), 3);
        assert!(held["dev-1.log"].contains("line 397 of dev-1"));
        assert_eq!(held, spilled);
    }
}
