//! Reports: pure functions of the timeline, written into the run folder.
//!
//! `summary.json` (verdicts, checks, recovery facts), `junit.xml` for CI, and
//! `console/<device>.log`. [`write_all`] is what both `rig run` (after every
//! cell, so a crash leaves a readable partial report) and `rig report
//! RUN_DIR` call.

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
    write_atomic(&dir.join("summary.json"), &serde_json::to_vec_pretty(&summary)?)?;
    write_atomic(&dir.join("junit.xml"), &junit::render(&summary, events))?;
    let run = [signoff::Run {
        header,
        events,
        summary: &summary,
    }];
    write_atomic(&dir.join("signoff.html"), signoff::html(&run).as_bytes())?;
    write_atomic(&dir.join("signoff.md"), signoff::markdown(&run).as_bytes())?;
    let console_dir = dir.join("console");
    crate::fsutil::ensure_dir(&console_dir, 0o755).map_err(std::io::Error::other)?;
    for (device, text) in console_logs(&summary, events) {
        write_atomic(&console_dir.join(format!("{device}.log")), text.as_bytes())?;
    }
    Ok(summary)
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
    pub events: Vec<Event>,
    pub summary: Summary,
}

pub fn load(dir: &Path) -> Result<Loaded, crate::timeline::ReadError> {
    let (header, events) = crate::timeline::read_jsonl(&crate::timeline::journal_in(dir))?;
    let summary = summarize(&header, &events);
    Ok(Loaded {
        dir: dir.to_owned(),
        header,
        events,
        summary,
    })
}

/// Combines runs (from several benches, say) into one `junit.xml`, one
/// sign-off and a `merged.json` index in `out`. Returns the combined exit code.
pub fn merge(runs: &[Loaded], out: &Path) -> std::io::Result<i32> {
    crate::fsutil::ensure_dir(out, 0o755).map_err(std::io::Error::other)?;
    let pairs: Vec<(&Summary, &[Event])> = runs.iter().map(|r| (&r.summary, r.events.as_slice())).collect();
    write_atomic(&out.join("junit.xml"), &junit::render_runs(&pairs, true))?;
    let views: Vec<signoff::Run> = runs
        .iter()
        .map(|r| signoff::Run {
            header: &r.header,
            events: &r.events,
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

/// One log per device: every console line with its plan time, cell by cell.
pub fn console_logs(summary: &Summary, events: &[Event]) -> BTreeMap<String, String> {
    let mut logs: BTreeMap<String, String> = BTreeMap::new();
    let mut current: BTreeMap<String, u32> = BTreeMap::new();
    for e in events {
        let Some(d) = &e.device else { continue };
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
            | EventKind::CheckFail { .. } => continue,
        };
        let log = logs.entry(d.clone()).or_default();
        if current.get(d) != Some(&e.cell) {
            current.insert(d.clone(), e.cell);
            let cell = summary.cells.iter().find(|c| c.index == e.cell);
            let title = cell.map(|c| format!("{} [{}]", c.plan, c.name)).unwrap_or_default();
            let _ = writeln!(log, "===== cell {}: {title} =====", e.cell + 1);
        }
        let _ = writeln!(log, "[{}] {line}", fmt_clock(e.t_ms));
    }
    logs
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
