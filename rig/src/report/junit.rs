//! `junit.xml`: one testsuite per plan × matrix cell, one testcase per
//! device × check, written with the `junit-report` crate.
//!
//! In a negative-control cell a failing check is a passing testcase whose
//! output says "fails as expected" and carries the failure text, and an extra
//! `negative control` testcase fails if nothing in the cell failed.

use junit_report::{Duration, ReportBuilder, TestCase, TestSuiteBuilder};

use super::summary::{CellSummary, CellVerdict, Summary};
use crate::timeline::{Event, EventKind};
use crate::units::fmt_clock;

/// Console lines shown before a failing check.
const EXCERPT_LINES: usize = 15;

pub fn render(summary: &Summary, events: &[Event]) -> Vec<u8> {
    render_runs(&[(summary, events)], false)
}

/// One JUnit file for several runs (`rig report merge`); with `prefix`, each
/// testsuite is named after its run so cells of different benches stay apart.
pub fn render_runs(runs: &[(&Summary, &[Event])], prefix: bool) -> Vec<u8> {
    let mut report = ReportBuilder::new();
    for (summary, events) in runs {
        for cell in &summary.cells {
            let mut ts = suite(summary, cell, events);
            if prefix {
                ts.name = format!("{}/{}", summary.run_id, ts.name);
            }
            report.add_testsuite(ts);
        }
    }
    let mut out = Vec::new();
    report
        .build()
        .write_xml(&mut out)
        .expect("writing XML to memory cannot fail");
    out
}

fn suite(summary: &Summary, cell: &CellSummary, events: &[Event]) -> junit_report::TestSuite {
    let name = format!("{}[{}]", cell.plan, cell.name);
    let mut ts = TestSuiteBuilder::new(&name);
    ts.set_timestamp(summary.started);
    let mut out = format!(
        "seed: {}\nbench: {}\nclock: {}\nverdict: {}\nvars: {}\n",
        summary.seed,
        summary.bench,
        cell.clock,
        cell.verdict.label(),
        cell.vars
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for f in &cell.fixtures {
        out += &format!("fixture: {} {} sha256:{}\n", f.name, f.version, f.sha256);
    }
    ts.set_system_out(&out);
    for c in &cell.checks {
        let device = c.device.as_deref().unwrap_or("bench");
        let tc_name = format!("{:02} {} [{device}]", c.step, c.check);
        let mut tc = if c.passed {
            TestCase::success(&tc_name, Duration::ZERO)
        } else if cell.expect_failure {
            let mut tc = TestCase::success(&tc_name, Duration::ZERO);
            tc.set_system_out(&format!("fails as expected: {}\n", c.text));
            tc
        } else {
            let mut tc = TestCase::failure(
                &tc_name,
                Duration::ZERO,
                c.check.split(' ').next().unwrap_or("check"),
                &c.text,
            );
            tc.set_system_out(&excerpt(events, cell.index, c.device.as_deref(), c.seq));
            tc
        };
        tc.set_classname(&name);
        ts.add_testcase(tc);
    }
    if cell.expect_failure {
        let tc_name = "negative control";
        let mut tc = match cell.verdict {
            CellVerdict::UnexpectedlyPassed => TestCase::failure(
                tc_name,
                Duration::ZERO,
                "negative_control",
                "this cell must fail (it runs the known-bad combination) but every check passed: the rig can no longer detect the bug",
            ),
            _ => {
                let mut tc = TestCase::success(tc_name, Duration::ZERO);
                let first = cell.failed_checks().next().map(|c| c.text.clone()).unwrap_or_default();
                tc.set_system_out(&format!("fails as expected: {first}\n"));
                tc
            }
        };
        tc.set_classname(&name);
        ts.add_testcase(tc);
    }
    for f in &cell.faults {
        let mut tc = TestCase::error("rig", Duration::ZERO, "rig_fault", f);
        tc.set_classname(&name);
        ts.add_testcase(tc);
    }
    if matches!(cell.verdict, CellVerdict::Interrupted | CellVerdict::Incomplete) {
        let mut tc = TestCase::error(
            "rig",
            Duration::ZERO,
            "incomplete",
            "the run was interrupted before this cell finished",
        );
        tc.set_classname(&name);
        ts.add_testcase(tc);
    }
    ts.build()
}

/// The last console lines of `device` before event `seq`.
fn excerpt(events: &[Event], cell: u32, device: Option<&str>, seq: u64) -> String {
    let Some(device) = device else { return String::new() };
    let mut lines: Vec<String> = events
        .iter()
        .filter(|e| e.cell == cell && e.seq < seq && e.is(device))
        .filter_map(|e| match &e.kind {
            EventKind::ConsoleLine { line, .. } => Some(format!("[{}] {line}", fmt_clock(e.t_ms))),
            _ => None,
        })
        .collect();
    let start = lines.len().saturating_sub(EXCERPT_LINES);
    lines.drain(..start);
    format!(
        "console of {device}, last {} lines:\n{}\n",
        lines.len(),
        lines.join("\n")
    )
}
