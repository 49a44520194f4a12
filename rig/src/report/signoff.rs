//! The release sign-off: one self-contained HTML page (`signoff.html`) and
//! its Markdown twin (`signoff.md`), rendered from runs' timelines alone.
//!
//! The verdict comes first; then what was tested (plan hash, bench, seed,
//! fixtures with image hashes), the matrix, and per cell the recovery table,
//! the failure diagnoses with console excerpts, one timeline per device
//! (inline SVG) and the cumulative bytes per device (the data-cost story of
//! the incident). HTML is built with `maud`, which escapes every value; the
//! bytes plot is drawn by `plotters`' SVG backend. Nothing is fetched: no
//! scripts, fonts or stylesheets from anywhere.
//!
//! Large fleets are aggregated: every failing device gets its own timeline
//! (up to a cap), a fixed sample of the others too, and the rest appear in
//! distributions, so a 10,000-device run stays a page, not a book.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use maud::{DOCTYPE, Markup, PreEscaped, html};
use plotters::prelude::*;

use super::evidence::{CellEvidence, Evidence, Mark, Track};
use super::summary::{CellSummary, CellVerdict, Overall, Summary};
use crate::timeline::{ConnectVia, Header, RecoveryFacts};
use crate::units::{fmt_bytes, fmt_clock, fmt_duration};

/// Devices drawn in full per cell besides the failing ones.
const SAMPLE: usize = 8;
/// Failing devices drawn in full per cell, at most.
const MAX_FAILED_DRAWN: usize = 40;
/// Console lines quoted per failure diagnosis.
const EXCERPT: usize = 12;

/// One run to render: its header, summary and the evidence gathered for it.
pub struct Run<'a> {
    pub header: &'a Header,
    pub evidence: &'a Evidence,
    pub summary: &'a Summary,
}

struct CellView<'a> {
    cell: &'a CellSummary,
    ev: &'a CellEvidence,
    evidence: &'a Evidence,
}

/// Devices of a cell that failed a check.
pub(super) fn failed_devices(cell: &CellSummary) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    cell.failed_checks()
        .filter_map(|c| c.device.clone())
        .filter(|d| seen.insert(d.clone()))
        .collect()
}

/// The devices a cell's section draws in full: every failing one (up to a
/// cap), then a fixed sample of the others in id order.
pub(super) fn drawn_devices(c: &CellSummary) -> Vec<String> {
    let failed = failed_devices(c);
    let failed_set: std::collections::BTreeSet<&String> = failed.iter().collect();
    let mut others: Vec<&String> = c.devices.iter().filter(|d| !failed_set.contains(d)).collect();
    others.sort_unstable();
    let mut drawn: Vec<String> = failed.iter().take(MAX_FAILED_DRAWN).cloned().collect();
    drawn.extend(others.into_iter().take(SAMPLE).cloned());
    drawn
}

fn overall(runs: &[Run]) -> Overall {
    let cells: Vec<CellSummary> = runs.iter().flat_map(|r| r.summary.cells.iter().cloned()).collect();
    Overall::of(&cells)
}

const CSS: &str = r#"
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0;font-size:30px;letter-spacing:.5px}h2{margin:32px 0 8px;font-size:20px}h3{margin:20px 0 6px;font-size:16px}
.verdict{padding:22px 24px;border-radius:10px;color:#fff}.verdict.pass{background:#1e7a45}.verdict.fail{background:#b3261e}
.verdict p{margin:6px 0 0;font-size:15px}.verdict ul{margin:8px 0 0 18px;padding:0}
table{border-collapse:collapse;background:#fff;width:100%;margin:6px 0}th,td{border:1px solid #d9dde3;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.b-passed{background:#1e7a45}.b-failed{background:#b3261e}.b-failed_as_expected{background:#6b4fbb}.b-unexpectedly_passed{background:#b3261e}.b-fault,.b-interrupted,.b-incomplete{background:#8a5a00}
.cell{background:#fff;border:1px solid #d9dde3;border-radius:10px;padding:4px 18px 14px;margin:18px 0}
.neg{font-size:12px;color:#6b4fbb;font-weight:600}
pre{background:#11161d;color:#dde3ea;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
.diag{border-left:4px solid #b3261e;padding:4px 10px;margin:8px 0;background:#fdf3f2}.diag.expected{border-color:#6b4fbb;background:#f4f1fb}
.legend span{margin-right:14px;font-size:12px}.sw{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:middle}
svg text{font:11px sans-serif}.muted{color:#5d6775}
"#;

/// The sign-off page for one or more runs.
pub fn html(runs: &[Run]) -> String {
    let overall = overall(runs);
    let views: Vec<Vec<CellView>> = runs
        .iter()
        .map(|r| {
            r.summary
                .cells
                .iter()
                .filter_map(|c| {
                    Some(CellView {
                        cell: c,
                        ev: r.evidence.cells.get(&c.index)?,
                        evidence: r.evidence,
                    })
                })
                .collect()
        })
        .collect();
    let page: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "rig sign-off: " (overall.word()) }
                style { (PreEscaped(CSS)) }
            }
            body { main {
                (verdict_block(runs, overall))
                h2 { "What was tested" }
                (tested_table(runs))
                h2 { "Matrix" }
                (matrix_table(runs))
                @for run_views in &views {
                    @for v in run_views {
                        (cell_section(v))
                    }
                }
                p.muted { "Rendered by rig " (env!("CARGO_PKG_VERSION")) " from events.jsonl; re-render with `rig report RUN_DIR`." }
            } }
        }
    };
    page.into_string()
}

fn verdict_block(runs: &[Run], overall: Overall) -> Markup {
    let cells: Vec<(&Run, &CellSummary)> = runs
        .iter()
        .flat_map(|r| r.summary.cells.iter().map(move |c| (r, c)))
        .collect();
    let bad: Vec<&(&Run, &CellSummary)> = cells.iter().filter(|(_, c)| !c.verdict.ok()).collect();
    html! {
        section.verdict.(overall.css()) {
            h1 { (overall.headline()) }
            @if overall == Overall::NoVerdict { p { strong { (overall.explain()) } } }
            p {
                (cells.len()) " matrix cell" (if cells.len() == 1 { "" } else { "s" }) " on "
                (runs.iter().map(|r| r.header.bench.as_str()).collect::<Vec<_>>().join(", "))
                "; " (cells.iter().filter(|(_, c)| c.verdict.ok()).count()) " behaved as the plan expects"
                @let neg = cells.iter().filter(|(_, c)| c.expect_failure).count();
                @if neg > 0 { ", including " (neg) " negative control" (if neg == 1 { "" } else { "s" }) " that must fail" }
                "."
            }
            @if !bad.is_empty() {
                ul {
                    @for (_, c) in &bad {
                        li {
                            strong { (c.plan) " [" (c.name) "]: " (c.verdict.label()) }
                            @let failed = failed_devices(c);
                            @if !failed.is_empty() {
                                " — devices " (failed.iter().take(10).cloned().collect::<Vec<_>>().join(", "))
                                @if failed.len() > 10 { " and " (failed.len() - 10) " more" }
                            }
                            @if let Some(first) = c.failed_checks().next() { br; (first.text) }
                            @for f in &c.faults { br; (f) }
                            @if c.verdict == CellVerdict::UnexpectedlyPassed { br; "This negative control passed: the rig can no longer detect the bug it exists to catch." }
                        }
                    }
                }
            }
        }
    }
}

fn tested_table(runs: &[Run]) -> Markup {
    html! {
        table {
            tr { th { "run" } th { "plan (sha256)" } th { "bench" } th { "rig" } th { "seed" } th { "fixtures (sha256)" } th { "mitigations" } th { "started / ended (UTC)" } th { "duration (plan / wall)" } }
            @for r in runs {
                @let s = r.summary;
                @let plans: Vec<String> = dedup(s.cells.iter().map(|c| format!("{} ({}) {}", c.plan, c.plan_path, short(&c.plan_sha256))));
                @let fixtures: Vec<String> = dedup(s.cells.iter().flat_map(|c| c.fixtures.iter().map(|f| format!("{} {} {}", f.name, f.version, short(&f.sha256)))));
                @let mitigations: Vec<String> = dedup(s.cells.iter().filter_map(|c| c.vars.get("mitigation").cloned()));
                @let plan_ms: u64 = s.cells.iter().map(|c| c.plan_ms).sum();
                @let wall_ms: u64 = s.cells.iter().map(|c| c.wall_ms).sum();
                tr {
                    td { (s.run_id) }
                    td { @for p in &plans { (p) br; } }
                    td { (s.bench) }
                    td { (s.rig_version) }
                    td.num { (s.seed) }
                    td { @for f in &fixtures { (f) br; } }
                    td { (if mitigations.is_empty() { "bench default".to_string() } else { mitigations.join(", ") }) }
                    td { (utc(s.started)) br; (r.evidence.last_wall.map_or("–".into(), utc)) }
                    td { (fmt_duration(std::time::Duration::from_millis(plan_ms))) " / " (fmt_duration(std::time::Duration::from_millis(wall_ms))) }
                }
            }
        }
    }
}

fn utc(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.to_offset(time::UtcOffset::UTC).format(f).unwrap_or_default()
}

fn short(hash: &str) -> String {
    if hash.len() > 16 {
        format!("{}…", &hash[..16])
    } else {
        hash.to_owned()
    }
}

fn dedup(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

fn matrix_table(runs: &[Run]) -> Markup {
    html! {
        table {
            tr { th { "cell" } th { "verdict" } th { "recovered" } th { "wakes to recovery (max)" } th { "bytes to recovery (max)" } th { "plan time" } }
            @for r in runs { @for c in &r.summary.cells {
                @let rec = c.recovery();
                @let ok: Vec<&RecoveryFacts> = rec.iter().filter(|(_, f)| f.recovered).map(|(_, f)| *f).collect();
                tr {
                    td { (c.plan) " [" (c.name) "]" @if c.expect_failure { " " span.neg { "negative control" } } }
                    td { span class=(format!("badge b-{}", verdict_key(c.verdict))) { (c.verdict.label()) } }
                    td.num { @if rec.is_empty() { "–" } @else { (ok.len()) "/" (rec.len()) } }
                    td.num { (ok.iter().map(|f| f.wakes).max().map_or("–".into(), |w| w.to_string())) }
                    td.num { (ok.iter().map(|f| f.bytes).max().map_or("–".into(), fmt_bytes)) }
                    td.num { (fmt_duration(std::time::Duration::from_millis(c.plan_ms))) }
                }
            } }
        }
    }
}

fn verdict_key(v: CellVerdict) -> &'static str {
    match v {
        CellVerdict::Passed => "passed",
        CellVerdict::Failed => "failed",
        CellVerdict::FailedAsExpected => "failed_as_expected",
        CellVerdict::UnexpectedlyPassed => "unexpectedly_passed",
        CellVerdict::Fault => "fault",
        CellVerdict::Interrupted => "interrupted",
        CellVerdict::Incomplete => "incomplete",
    }
}

fn cell_section(v: &CellView) -> Markup {
    let c = v.cell;
    let drawn_list = drawn_devices(c);
    let drawn: Vec<&String> = drawn_list.iter().collect();
    let rec = c.recovery();
    let recovery_at: BTreeMap<&str, u64> = rec
        .iter()
        .filter_map(|(d, f)| Some((*d, f.mark_t_ms + f.ms?)))
        .collect();
    html! {
        section.cell {
            h2 {
                (c.plan) " [" (c.name) "] "
                span class=(format!("badge b-{}", verdict_key(c.verdict))) { (c.verdict.label()) }
            }
            @if c.expect_failure { p.neg { "Negative control: this combination reproduces the bug and must fail." } }
            @if let Some(f) = &v.ev.fleet {
                (fleet_section(f))
            }
            @if !rec.is_empty() {
                h3 { "Recovery after '" (rec[0].1.mark) "'" }
                @if rec.len() > MAX_TABLE_ROWS {
                    p.muted { "Showing the " (drawn.len()) " drawn devices of " (rec.len()) "; summary.json has every row." }
                    @let shown: Vec<(&str, &RecoveryFacts)> = rec.iter().filter(|(d, _)| drawn.iter().any(|x| x.as_str() == *d)).copied().collect();
                    (recovery_table(&shown))
                } @else {
                    (recovery_table(&rec))
                }
            }
            @let groups = diagnosis_groups(c);
            @if !groups.is_empty() {
                h3 { (if c.expect_failure { "Failures (as expected)" } else { "Failure diagnoses" }) }
                @for g in groups.iter().take(MAX_FAILED_DRAWN) {
                    div.diag.(if c.expect_failure { "expected" } else { "" }) {
                        strong { "step " (g.step) " " (g.check) }
                        @if g.devices.len() > 1 {
                            " — " (g.devices.len()) " devices: " (device_list(&g.devices))
                        }
                        br; (g.text)
                        @if let Some(dev) = g.devices.first() {
                            details { summary { "console of " (dev) " before the check" }
                                pre { @for (tm, line) in v.evidence.console_tail(c.index, dev, g.seq, EXCERPT) { "[" (fmt_clock(tm)) "] " (line) "\n" } }
                            }
                        }
                    }
                }
                @if groups.len() > MAX_FAILED_DRAWN { p.muted { "… and " (groups.len() - MAX_FAILED_DRAWN) " more in junit.xml" } }
            }
            @for f in &c.faults { div.diag { strong { "rig fault" } br; (f) } }
            h3 { "Timelines" }
            p.legend {
                span { span.sw style="background:#7fbf7f" {} "powered" }
                span { span.sw style="background:#5b8def" {} "awake" }
                span { span.sw style="background:#e8a33d" {} "full handshake" }
                span { span.sw style="background:#1e7a45" {} "session resumed" }
                span { span.sw style="background:#d93025" {} "resume of an unknown session" }
                span { span.sw style="background:#7b1fa2" {} "recovered" }
            }
            @if drawn.len() < c.devices.len() {
                p.muted { "Showing " (drawn.len()) " of " (c.devices.len()) " devices: every failing device (up to " (MAX_FAILED_DRAWN) ") and a sample of the rest; the distributions below cover all." }
            }
            (axis_svg(&v.ev.marks, v.ev.end))
            @for d in &drawn { @if let Some(t) = v.ev.tracks.get(*d) {
                (device_svg(d, t, &v.ev.marks, v.ev.end, recovery_at.get(d.as_str()).copied()))
            } }
            @if c.devices.len() > drawn.len() { (distributions(&rec)) }
            h3 { "Cumulative bytes on the air per device" }
            (PreEscaped(bytes_plot(v, &drawn)))
        }
    }
}

/// Failed checks that say the same thing about several devices, shown once.
struct DiagGroup {
    step: usize,
    check: String,
    /// The diagnosis, as for the first device (its name and last console
    /// line are what differs between devices, and are dropped).
    text: String,
    devices: Vec<String>,
    /// The first device's check event.
    seq: u64,
}

/// A diagnosis without what is particular to its device: the `device: `
/// prefix and the quoted last console line.
fn diagnosis_key(device: Option<&str>, text: &str) -> String {
    let t = match device {
        Some(d) => text.strip_prefix(&format!("{d}: ")).unwrap_or(text),
        None => text,
    };
    match t.find(" (last console line: ") {
        Some(i) => t[..i].to_owned(),
        None => t.strip_suffix(" (no console output)").unwrap_or(t).to_owned(),
    }
}

fn diagnosis_groups(c: &CellSummary) -> Vec<DiagGroup> {
    let mut groups: Vec<DiagGroup> = Vec::new();
    let mut index: BTreeMap<(usize, String, String), usize> = BTreeMap::new();
    for f in c.failed_checks() {
        let key = diagnosis_key(f.device.as_deref(), &f.text);
        let k = (f.step, f.check.clone(), key.clone());
        match index.get(&k) {
            Some(&i) => groups[i].devices.extend(f.device.clone()),
            None => {
                index.insert(k, groups.len());
                groups.push(DiagGroup {
                    step: f.step,
                    check: f.check.clone(),
                    text: if f.device.is_some() { key } else { f.text.clone() },
                    devices: f.device.clone().into_iter().collect(),
                    seq: f.seq,
                });
            }
        }
    }
    groups
}

fn device_list(devices: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = devices.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if devices.len() > SHOWN {
        s += &format!(" and {} more", devices.len() - SHOWN);
    }
    s
}

/// Rows of the recovery table before it shows only the drawn devices: a
/// 10,000-device table would be most of a fleet sign-off's size.
const MAX_TABLE_ROWS: usize = 64;

fn ms_text(ms: Option<u64>) -> String {
    ms.map_or("never".into(), |ms| fmt_duration(std::time::Duration::from_millis(ms)))
}

fn per_day(b: Option<f64>) -> String {
    b.map_or("–".into(), |b| format!("{}/day", fmt_bytes(b.round() as u64)))
}

fn fleet_section(f: &super::fleet::FleetStats) -> Markup {
    html! {
        h3 { "Fleet: " (f.recovered) " of " (f.devices) " devices recovered after '" (f.mark) "'" }
        table {
            tr { th { "recovered" } th { "50 %" } th { "99 %" } th { "100 %" } }
            tr { td { "time after the mark" } td.num { (ms_text(f.t50_ms)) } td.num { (ms_text(f.t99_ms)) } td.num { (ms_text(f.t100_ms)) } }
        }
        table {
            tr { th { "firmware" } th { "devices" } th { "recovered" } th { "wakes p50" } th { "wakes max" } th { "time p50" } th { "time max" } }
            @for r in &f.by_firmware {
                tr {
                    td { (r.fixture) } td.num { (r.devices) } td.num { (r.recovered) }
                    td.num { (r.wakes_p50.map_or("–".into(), |w| w.to_string())) }
                    td.num { (r.wakes_max.map_or("–".into(), |w| w.to_string())) }
                    td.num { (r.ms_p50.map_or("–".into(), |m| ms_text(Some(m)))) }
                    td.num { (r.ms_max.map_or("–".into(), |m| ms_text(Some(m)))) }
                }
            }
        }
        @if let Some((minute, peak)) = f.storm_peak {
            p { "Reconnect storm: " strong { (peak) " full handshakes" } " in minute " (minute + 1) " after the cache came back (" (f.handshakes_per_minute.iter().map(|h| u64::from(*h)).sum::<u64>()) " in the " (f.handshakes_per_minute.len()) " minutes shown)." }
            (storm_svg(&f.handshakes_per_minute))
        }
        p { "Data per device: " (per_day(f.normal_bytes_per_day)) " before the crash, " strong { (per_day(f.outage_bytes_per_day)) } " from the crash until the last device recovered." }
        @if !f.never_recovered.is_empty() {
            p.neg {
                "Never recovered (" (f.never_recovered.len()) "): "
                (f.never_recovered.iter().take(super::fleet::MAX_LISTED).cloned().collect::<Vec<_>>().join(", "))
                @if f.never_recovered.len() > super::fleet::MAX_LISTED { " … and " (f.never_recovered.len() - super::fleet::MAX_LISTED) " more in summary.json" }
            }
        }
    }
}

/// Full handshakes per minute after the restore, as bars.
fn storm_svg(per_minute: &[u32]) -> Markup {
    let (w, h) = (W, 90.0);
    let peak = per_minute.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = (w - LEFT - 10.0) / per_minute.len().max(1) as f64;
    html! {
        svg width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) xmlns="http://www.w3.org/2000/svg" role="img" aria-label="full handshakes per minute after the restore" {
            text x="4" y="16" fill="#5d6775" { "handshakes/min" }
            text x="4" y="32" fill="#5d6775" { (peak) " peak" }
            @for (i, n) in per_minute.iter().enumerate() {
                @let bh = (*n as f64 / peak) * (h - 20.0);
                rect x=(LEFT + i as f64 * bw) y=(h - 14.0 - bh) width=((bw - 1.0).max(1.0)) height=(bh) fill="#e8a33d" { title { "minute " (i + 1) ": " (n) } }
            }
            text x=(LEFT) y=(h - 2.0) fill="#5d6775" { "restore" }
            text x=(w - 10.0) y=(h - 2.0) fill="#5d6775" text-anchor="end" { "+" (per_minute.len()) " min" }
        }
    }
}

fn recovery_table(rec: &[(&str, &RecoveryFacts)]) -> Markup {
    // On a cluster cache: where each session lived, and whether a node's
    // fault lost it (the devices that then had to handshake).
    let nodes = rec.iter().any(|(_, f)| f.node.is_some() || f.lost.is_some());
    html! {
        table {
            tr {
                th { "device" }
                @if nodes { th { "session on node" } th { "session lost" } }
                th { "recovered" } th { "via" } th { "wakes" } th { "time" } th { "bytes" } th { "handshakes" } th { "unknown resumes" } th { "power-cycled" }
            }
            @for (d, f) in rec {
                tr {
                    td { (d) }
                    @if nodes {
                        td.num { (f.node.map_or("–".into(), |n| n.to_string())) }
                        td { (match f.lost { Some(true) => "LOST", Some(false) => "kept", None => "–" }) }
                    }
                    td { (if f.recovered { "yes" } else { "NO" }) }
                    td { (match f.via { Some(ConnectVia::Handshake) => "full handshake", Some(ConnectVia::Resume) => "resume", None => "–" }) }
                    td.num { (f.wakes) }
                    td.num { (f.ms.map_or("–".into(), |ms| fmt_duration(std::time::Duration::from_millis(ms)))) }
                    td.num { (fmt_bytes(f.bytes)) }
                    td.num { (f.handshakes) }
                    td.num { (f.unknown_resumes) }
                    td { (if f.power_cycled { "yes" } else { "no" }) }
                }
            }
        }
    }
}

fn distributions(rec: &[(&str, &RecoveryFacts)]) -> Markup {
    let mut by_wakes: BTreeMap<u32, usize> = BTreeMap::new();
    let mut bytes: Vec<u64> = Vec::new();
    for (_, f) in rec.iter().filter(|(_, f)| f.recovered) {
        *by_wakes.entry(f.wakes).or_default() += 1;
        bytes.push(f.bytes);
    }
    bytes.sort_unstable();
    let q = |p: f64| {
        bytes
            .get(((bytes.len() as f64 * p) as usize).min(bytes.len().saturating_sub(1)))
            .copied()
    };
    html! {
        h3 { "Distributions over all devices" }
        table {
            tr { th { "wakes to recovery" } th { "devices" } }
            @for (w, n) in &by_wakes { tr { td.num { (w) } td.num { (n) } } }
            tr { td { "not recovered" } td.num { (rec.iter().filter(|(_, f)| !f.recovered).count()) } }
        }
        @if !bytes.is_empty() {
            p { "Bytes to recovery: p50 " (q(0.5).map_or("–".into(), fmt_bytes)) ", p90 " (q(0.9).map_or("–".into(), fmt_bytes)) ", max " (bytes.last().map_or("–".into(), |b| fmt_bytes(*b))) "." }
        }
    }
}

const W: f64 = 1100.0;
const LEFT: f64 = 90.0;

fn device_svg(device: &str, t: &Track, marks: &[Mark], end: u64, recovered_at: Option<u64>) -> Markup {
    let span = W - LEFT - 10.0;
    let x = |ms: u64| LEFT + (ms as f64 / end as f64) * span;
    let h = 64.0;
    html! {
        svg width=(W) height=(h) viewBox=(format!("0 0 {W} {h}")) xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(format!("timeline of {device}")) {
            rect x="0" y="0" width=(W) height=(h) fill="#ffffff" {}
            text x="4" y="28" font-weight="600" { (device) }
            text x="4" y="44" fill="#5d6775" { (fmt_clock(end).split('.').next().unwrap_or("")) }
            @for (a, b) in &t.powered { rect x=(x(*a)) y="6" width=((x(*b) - x(*a)).max(1.0)) height="8" fill="#7fbf7f" {} }
            @for (a, b) in &t.awake { rect x=(x(*a)) y="18" width=((x(*b) - x(*a)).max(1.5)) height="12" fill="#5b8def" {} }
            @for m in marks {
                line x1=(x(m.t)) x2=(x(m.t)) y1="2" y2=(h - 2.0) stroke=(match m.kind { "kill" => "#d93025", "restore" => "#1e7a45", _ => "#222" }) stroke-dasharray=(if m.kind == "mark" { "4 3" } else { "" }) stroke-width="1.2" {}
                title { (m.label) }
            }
            @for tm in &t.handshakes { rect x=(x(*tm) - 3.0) y="36" width="6" height="10" fill="#e8a33d" {} }
            @for tm in &t.resumes { circle cx=(x(*tm)) cy="41" r="3" fill="#1e7a45" {} }
            @for tm in &t.unknown { line x1=(x(*tm) - 3.0) x2=(x(*tm) + 3.0) y1="50" y2="58" stroke="#d93025" stroke-width="2" {} line x1=(x(*tm) - 3.0) x2=(x(*tm) + 3.0) y1="58" y2="50" stroke="#d93025" stroke-width="2" {} }
            @if let Some(rt) = recovered_at {
                circle cx=(x(rt)) cy="41" r="7" fill="none" stroke="#7b1fa2" stroke-width="2.5" {}
                @let right = x(rt) > W - 80.0;
                text x=(if right { x(rt) - 9.0 } else { x(rt) + 9.0 }) y="45" fill="#7b1fa2" text-anchor=(if right { "end" } else { "start" }) { "recovered" }
            }
        }
    }
}

/// The time axis above a cell's timelines, with marks and cache operations named.
fn axis_svg(marks: &[Mark], end: u64) -> Markup {
    let span = W - LEFT - 10.0;
    let x = |ms: u64| LEFT + (ms as f64 / end as f64) * span;
    let ticks: Vec<u64> = (0..=6).map(|i| end * i / 6).collect();
    // Labels of marks at (almost) the same time share a line, one per row.
    let mut rows: Vec<f64> = Vec::new();
    let placed: Vec<(f64, usize, &Mark)> = marks
        .iter()
        .map(|m| {
            let px = x(m.t);
            let row = rows.iter().position(|last| px - last > 110.0).unwrap_or_else(|| {
                rows.push(f64::MIN);
                rows.len() - 1
            });
            rows[row] = px;
            (px, row, m)
        })
        .collect();
    let h = 24.0 + 13.0 * rows.len() as f64;
    html! {
        svg width=(W) height=(h) viewBox=(format!("0 0 {W} {h}")) xmlns="http://www.w3.org/2000/svg" role="img" aria-label="time axis" {
            line x1=(LEFT) x2=(W - 10.0) y1="14" y2="14" stroke="#5d6775" {}
            @for t in &ticks {
                line x1=(x(*t)) x2=(x(*t)) y1="10" y2="18" stroke="#5d6775" {}
                text x=(x(*t)) y="9" text-anchor=(if *t == end { "end" } else if *t == 0 { "start" } else { "middle" }) fill="#5d6775" { (fmt_clock(*t).split('.').next().unwrap_or("")) }
            }
            @for (px, row, m) in &placed {
                text x=(px + 2.0) y=(32.0 + 13.0 * *row as f64) fill=(match m.kind { "kill" => "#d93025", "restore" => "#1e7a45", _ => "#222" }) { (m.label) }
            }
        }
    }
}

/// Cumulative bytes per drawn device, as an SVG string from plotters.
fn bytes_plot(v: &CellView, drawn: &[&String]) -> String {
    let mut svg = String::new();
    let max_kib = drawn
        .iter()
        .filter_map(|d| v.ev.tracks.get(*d)?.bytes.last().map(|(_, b)| *b))
        .max()
        .unwrap_or(0) as f64
        / 1024.0;
    let hours = v.ev.end as f64 / 3_600_000.0;
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 300)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..hours.max(1e-6), 0f64..(max_kib * 1.1).max(1.0));
        let Ok(mut chart) = chart else { return String::new() };
        let _ = chart
            .configure_mesh()
            .x_desc("plan time (hours)")
            .y_desc("KiB, both directions")
            .light_line_style(RGBColor(235, 238, 242))
            .draw();
        for (i, d) in drawn.iter().enumerate() {
            let Some(t) = v.ev.tracks.get(*d) else { continue };
            let color = Palette99::pick(i).to_rgba();
            let points = t
                .bytes
                .iter()
                .map(|(ms, b)| (*ms as f64 / 3_600_000.0, *b as f64 / 1024.0));
            if let Ok(series) = chart.draw_series(LineSeries::new(points, color.stroke_width(2))) {
                series
                    .label(d.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw();
        let _ = root.present();
    }
    svg
}

/// The same verdict and tables in Markdown, for a PR comment or a ticket.
pub fn markdown(runs: &[Run]) -> String {
    let overall = overall(runs);
    let mut s = String::new();
    let _ = writeln!(s, "# rig sign-off: {}\n", overall.markdown());
    if overall == Overall::NoVerdict {
        let _ = writeln!(s, "**{}**\n", overall.explain());
    }
    for r in runs {
        let m = r.summary;
        let _ = writeln!(
            s,
            "- run `{}` on bench `{}`, rig {}, seed {}",
            m.run_id, m.bench, m.rig_version, m.seed
        );
        for p in dedup(m.cells.iter().map(|c| {
            format!(
                "plan `{}` (`{}`, sha256 `{}`)",
                c.plan,
                c.plan_path,
                short(&c.plan_sha256)
            )
        })) {
            let _ = writeln!(s, "- {p}");
        }
        for f in dedup(m.cells.iter().flat_map(|c| {
            c.fixtures
                .iter()
                .map(|f| format!("fixture `{}` {} (sha256 `{}`)", f.name, f.version, short(&f.sha256)))
        })) {
            let _ = writeln!(s, "- {f}");
        }
    }
    let _ = writeln!(
        s,
        "\n| cell | verdict | recovered | wakes (max) | bytes (max) |\n|---|---|---|---|---|"
    );
    for r in runs {
        for c in &r.summary.cells {
            let rec = c.recovery();
            let ok: Vec<&RecoveryFacts> = rec.iter().filter(|(_, f)| f.recovered).map(|(_, f)| *f).collect();
            let neg = if c.expect_failure { " (negative control)" } else { "" };
            let _ = writeln!(
                s,
                "| {} [{}]{neg} | {} | {} | {} | {} |",
                c.plan,
                c.name,
                c.verdict.label(),
                if rec.is_empty() {
                    "–".into()
                } else {
                    format!("{}/{}", ok.len(), rec.len())
                },
                ok.iter().map(|f| f.wakes).max().map_or("–".into(), |w| w.to_string()),
                ok.iter().map(|f| f.bytes).max().map_or("–".into(), fmt_bytes),
            );
        }
    }
    for r in runs {
        for c in &r.summary.cells {
            let Some(f) = r.evidence.cells.get(&c.index).and_then(|e| e.fleet.as_ref()) else {
                continue;
            };
            let _ = writeln!(
                s,
                "\n**{} [{}] fleet:** {}/{} recovered after '{}'; 50 % in {}, 99 % in {}, 100 % in {}; data per device {} before the crash, {} until the last recovery.",
                c.plan,
                c.name,
                f.recovered,
                f.devices,
                f.mark,
                ms_text(f.t50_ms),
                ms_text(f.t99_ms),
                ms_text(f.t100_ms),
                per_day(f.normal_bytes_per_day),
                per_day(f.outage_bytes_per_day),
            );
            if let Some((minute, peak)) = f.storm_peak {
                let _ = writeln!(
                    s,
                    "Reconnect storm: {peak} full handshakes in minute {} after the restore.",
                    minute + 1
                );
            }
            if !f.never_recovered.is_empty() {
                let _ = writeln!(
                    s,
                    "Never recovered ({}): {}",
                    f.never_recovered.len(),
                    device_list(&f.never_recovered)
                );
            }
        }
    }
    for r in runs {
        for c in r
            .summary
            .cells
            .iter()
            .filter(|c| c.failed_checks().next().is_some() || !c.faults.is_empty())
        {
            let _ = writeln!(s, "\n**{} [{}]: {}**\n", c.plan, c.name, c.verdict.label());
            let groups = diagnosis_groups(c);
            for g in groups.iter().take(5) {
                if g.devices.len() > 1 {
                    let _ = writeln!(
                        s,
                        "- {} devices ({}): {}",
                        g.devices.len(),
                        device_list(&g.devices),
                        g.text
                    );
                } else {
                    let _ = writeln!(
                        s,
                        "- {}{}",
                        g.devices.first().map(|d| format!("{d}: ")).unwrap_or_default(),
                        g.text
                    );
                }
            }
            if groups.len() > 5 {
                let _ = writeln!(s, "- … and {} more (see junit.xml)", groups.len() - 5);
            }
            for f in &c.faults {
                let _ = writeln!(s, "- rig fault: {f}");
            }
        }
    }
    s
}
