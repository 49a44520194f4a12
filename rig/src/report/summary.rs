//! The run's verdicts, derived from its timeline alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::timeline::{CellOutcome, Event, EventKind, Header, RecoveryFacts};

/// How a cell turned out, negative controls included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellVerdict {
    Passed,
    Failed,
    /// A negative control that failed, as it must.
    FailedAsExpected,
    /// A negative control that passed: the rig can no longer detect the bug.
    UnexpectedlyPassed,
    /// The rig or bench failed; no verdict on the firmware.
    Fault,
    Interrupted,
    /// The timeline ends inside this cell (the rig was killed).
    Incomplete,
}

impl CellVerdict {
    pub fn label(self) -> &'static str {
        match self {
            CellVerdict::Passed => "PASSED",
            CellVerdict::Failed => "FAILED",
            CellVerdict::FailedAsExpected => "FAILED as expected (negative control)",
            CellVerdict::UnexpectedlyPassed => "PASSED but must fail (negative control)",
            CellVerdict::Fault => "RIG FAULT",
            CellVerdict::Interrupted => "INTERRUPTED",
            CellVerdict::Incomplete => "INCOMPLETE",
        }
    }

    /// Whether this cell behaved as the plan expects.
    pub fn ok(self) -> bool {
        matches!(self, CellVerdict::Passed | CellVerdict::FailedAsExpected)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRow {
    pub step: usize,
    pub check: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub passed: bool,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<RecoveryFacts>,
    pub t_ms: u64,
    pub seq: u64,
    /// Wall-clock seconds from the start of the check's step to its result.
    #[serde(default)]
    pub wall_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixtureRow {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    pub index: u32,
    pub plan: String,
    #[serde(default)]
    pub plan_path: String,
    #[serde(default)]
    pub plan_sha256: String,
    pub name: String,
    pub vars: BTreeMap<String, String>,
    pub expect_failure: bool,
    pub outcome: Option<CellOutcome>,
    pub verdict: CellVerdict,
    pub clock: String,
    /// Plan time the cell took (virtual on a virtual-clock bench).
    pub plan_ms: u64,
    /// Wall-clock time the cell took.
    pub wall_ms: u64,
    pub devices: Vec<String>,
    pub fixtures: Vec<FixtureRow>,
    pub faults: Vec<String>,
    pub checks: Vec<CheckRow>,
}

impl CellSummary {
    pub fn failed_checks(&self) -> impl Iterator<Item = &CheckRow> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// The recovery facts of the last `expect_recovery` step, per device.
    pub fn recovery(&self) -> Vec<(&str, &RecoveryFacts)> {
        let Some(last_step) = self.checks.iter().filter(|c| c.facts.is_some()).map(|c| c.step).max() else {
            return Vec::new();
        };
        self.checks
            .iter()
            .filter(|c| c.step == last_step)
            .filter_map(|c| Some((c.device.as_deref()?, c.facts.as_ref()?)))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub format: String,
    pub version: u32,
    pub run_id: String,
    pub rig_version: String,
    pub seed: u64,
    pub bench: String,
    pub plans: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// 0 all as expected, 1 a check failed, 3 rig fault or incomplete.
    pub exit_code: i32,
    pub cells: Vec<CellSummary>,
}

/// Derives the summary from the timeline.
pub fn summarize(header: &Header, events: &[Event]) -> Summary {
    let mut s = Summarizer::default();
    for e in events {
        s.feed(e);
    }
    s.summary(header)
}

/// Which journal lines a [`Summarizer`] needs (for a reader that does not
/// parse the rest): everything without a device, a device's checks,
/// faults, fixtures and power, and the first line of each device in each
/// cell (the cell's device list). A fleet's wakes and datagrams are not
/// among them.
#[derive(Debug, Default)]
pub struct SummaryLines {
    seen: std::cell::RefCell<std::collections::HashMap<u32, std::collections::HashSet<String>>>,
}

impl SummaryLines {
    pub fn keep(&self, cell: u32, kind: &str, device: Option<&str>) -> bool {
        let Some(d) = device else { return true };
        if matches!(
            kind,
            "check.pass"
                | "check.fail"
                | "rig.fault"
                | "flash.done"
                | "power.on"
                | "power.off"
                | "cell.start"
                | "cell.end"
                | "plan.step"
        ) {
            return true;
        }
        let mut seen = self.seen.borrow_mut();
        let in_cell = seen.entry(cell).or_default();
        if in_cell.contains(d) {
            return false;
        }
        in_cell.insert(d.to_owned());
        true
    }
}

/// The summary as a fold over the timeline, one event at a time: what it
/// holds grows with cells, devices and checks, never with plan time.
#[derive(Debug, Default, Clone)]
pub struct Summarizer {
    cells: Vec<CellSummary>,
    first_wall: BTreeMap<u32, OffsetDateTime>,
    seen: BTreeMap<u32, std::collections::HashSet<String>>,
    // When each step started (wall clock), for the checks' durations.
    step_wall: BTreeMap<(u32, usize), OffsetDateTime>,
    /// Wall time of the last event fed.
    pub last_wall: Option<OffsetDateTime>,
}

impl Summarizer {
    pub fn feed(&mut self, e: &Event) {
        self.last_wall = Some(e.wall);
        let Summarizer {
            cells,
            first_wall,
            seen,
            step_wall,
            ..
        } = self;
        if let EventKind::PlanStep { index, .. } = &e.kind {
            step_wall.insert((e.cell, *index), e.wall);
        }
        let took = |step: usize| {
            step_wall
                .get(&(e.cell, step))
                .map_or(0.0, |w| (e.wall - *w).as_seconds_f64().max(0.0))
        };
        first_wall.entry(e.cell).or_insert(e.wall);
        if let EventKind::CellStart(start) = &e.kind {
            let crate::timeline::CellStart {
                plan,
                plan_path,
                plan_sha256,
                name,
                vars,
                expect_failure,
                clock,
                ..
            } = &**start;
            cells.push(CellSummary {
                index: e.cell,
                plan: plan.clone(),
                plan_path: plan_path.clone(),
                plan_sha256: plan_sha256.clone(),
                name: name.clone(),
                vars: vars.clone(),
                expect_failure: *expect_failure,
                outcome: None,
                verdict: CellVerdict::Incomplete,
                clock: clock.clone(),
                plan_ms: 0,
                wall_ms: 0,
                devices: Vec::new(),
                fixtures: Vec::new(),
                faults: Vec::new(),
                checks: Vec::new(),
            });
            return;
        }
        let Some(c) = cells.iter_mut().rev().find(|c| c.index == e.cell) else {
            return;
        };
        c.plan_ms = c.plan_ms.max(e.t_ms);
        if let Some(w) = first_wall.get(&e.cell) {
            c.wall_ms = (e.wall - *w).whole_milliseconds().max(0) as u64;
        }
        // A set beside the list: a fleet has thousands of devices.
        if let Some(d) = &e.device {
            let in_cell = seen.entry(e.cell).or_default();
            if !in_cell.contains(d) {
                in_cell.insert(d.clone());
                c.devices.push(d.clone());
            }
        }
        match &e.kind {
            EventKind::CellEnd { outcome } => c.outcome = Some(*outcome),
            EventKind::RigFault { message, .. } => c.faults.push(message.clone()),
            EventKind::FlashDone {
                fixture,
                version,
                sha256,
                ..
            } => {
                if !c.fixtures.iter().any(|f| &f.sha256 == sha256) {
                    c.fixtures.push(FixtureRow {
                        name: fixture.clone(),
                        version: version.clone(),
                        sha256: sha256.clone(),
                    });
                }
            }
            EventKind::CheckPass {
                step,
                check,
                detail,
                facts,
            } => c.checks.push(CheckRow {
                step: *step,
                check: check.clone(),
                device: e.device.clone(),
                passed: true,
                text: detail.clone(),
                facts: facts.as_deref().cloned(),
                t_ms: e.t_ms,
                seq: e.seq,
                wall_s: took(*step),
            }),
            EventKind::CheckFail {
                step,
                check,
                message,
                facts,
            } => c.checks.push(CheckRow {
                step: *step,
                check: check.clone(),
                device: e.device.clone(),
                passed: false,
                text: message.clone(),
                facts: facts.as_deref().cloned(),
                t_ms: e.t_ms,
                seq: e.seq,
                wall_s: took(*step),
            }),
            // The rest is evidence for the checks, not verdict material.
            EventKind::CellStart { .. }
            | EventKind::PowerOn { .. }
            | EventKind::PowerOff { .. }
            | EventKind::ResetSoft
            | EventKind::FlashStart { .. }
            | EventKind::ConsoleLine { .. }
            | EventKind::ConsoleGap { .. }
            | EventKind::DeviceBoot
            | EventKind::DeviceReset { .. }
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
            | EventKind::CacheDied { .. }
            | EventKind::CacheKill { .. }
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
            | EventKind::PlanStep { .. } => {}
        }
    }

    /// The summary of what was fed so far.
    pub fn summary(&self, header: &Header) -> Summary {
        let mut cells = self.cells.clone();
        for c in &mut cells {
            c.verdict = verdict_of(c);
        }
        of_cells(header, cells)
    }
}

/// The summary of slices joined as [`crate::timeline::join`] joins their
/// journals, from the slices' own summaries: every device's checks from
/// every slice, the bench-wide ones of the first, and whatever failed on
/// any; each cell's outcome the worst of the slices'. `header` names the
/// joined run.
pub fn join(header: &Header, slices: &[Summary]) -> Summary {
    use crate::timeline::join::joined_seq;
    let n = slices.len();
    let mut cells: Vec<CellSummary> = Vec::new();
    for (i, s) in slices.iter().enumerate() {
        for c in &s.cells {
            let mut rows: Vec<CheckRow> = c
                .checks
                .iter()
                .filter(|k| i == 0 || k.device.is_some() || !k.passed)
                .cloned()
                .map(|mut k| {
                    k.seq = joined_seq(k.seq, i, n);
                    k
                })
                .collect();
            let Some(j) = cells.iter_mut().find(|j| j.index == c.index) else {
                let mut c = c.clone();
                c.checks = rows;
                cells.push(c);
                continue;
            };
            let known: std::collections::HashSet<String> = j.devices.iter().cloned().collect();
            j.devices
                .extend(c.devices.iter().filter(|d| !known.contains(*d)).cloned());
            for f in &c.fixtures {
                if !j.fixtures.iter().any(|g| g.sha256 == f.sha256) {
                    j.fixtures.push(f.clone());
                }
            }
            j.faults.extend(c.faults.iter().cloned());
            j.checks.append(&mut rows);
            j.outcome = worse(j.outcome, c.outcome);
            j.plan_ms = j.plan_ms.max(c.plan_ms);
            j.wall_ms = j.wall_ms.max(c.wall_ms);
        }
    }
    for c in &mut cells {
        // The joined journal's order: plan time, then slice, then each
        // slice's own order (the seqs say both).
        c.checks.sort_by_key(|k| (k.t_ms, k.seq % n as u64, k.seq));
        c.verdict = verdict_of(c);
    }
    cells.sort_by_key(|c| c.index);
    of_cells(header, cells)
}

/// The summary of `header`'s run with these judged cells.
fn of_cells(header: &Header, cells: Vec<CellSummary>) -> Summary {
    let exit_code = exit_code(&cells);
    Summary {
        format: "rig.summary".into(),
        version: 1,
        run_id: header.run_id.clone(),
        rig_version: header.rig_version.clone(),
        seed: header.seed,
        bench: header.bench.clone(),
        plans: header.plans.clone(),
        started: header.started,
        exit_code,
        cells,
    }
}

/// Of two slices' outcomes for one cell, the one that says most: a cell
/// that did not end on one slice did not end.
fn worse(a: Option<CellOutcome>, b: Option<CellOutcome>) -> Option<CellOutcome> {
    let rank = |o: CellOutcome| match o {
        CellOutcome::Completed => 0,
        CellOutcome::Stopped => 1,
        CellOutcome::Timeout => 2,
        CellOutcome::Interrupted => 3,
        CellOutcome::Fault => 4,
    };
    Some(match (a?, b?) {
        (a, b) if rank(b) > rank(a) => b,
        (a, _) => a,
    })
}

fn verdict_of(c: &CellSummary) -> CellVerdict {
    if !c.faults.is_empty() || c.outcome == Some(CellOutcome::Fault) {
        return CellVerdict::Fault;
    }
    let failed = c.checks.iter().any(|k| !k.passed) || c.outcome == Some(CellOutcome::Timeout);
    match c.outcome {
        None => CellVerdict::Incomplete,
        Some(CellOutcome::Interrupted) => CellVerdict::Interrupted,
        Some(_) => match (c.expect_failure, failed) {
            (false, false) => CellVerdict::Passed,
            (false, true) => CellVerdict::Failed,
            (true, true) => CellVerdict::FailedAsExpected,
            (true, false) => CellVerdict::UnexpectedlyPassed,
        },
    }
}

/// What a whole run (or a merge of runs) says about the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    /// Every cell behaved as the plan expects.
    Passed,
    /// A check failed: the firmware (or the cloud) did not behave.
    Failed,
    /// A rig fault, an interrupt or a run that never finished: nothing was
    /// judged, so nothing may be signed off, and nothing blamed on firmware.
    NoVerdict,
}

impl Overall {
    /// A fault beats a failure beats a pass; a run with no cell (a journal
    /// holding only its header) judged nothing.
    pub fn of(cells: &[CellSummary]) -> Overall {
        let fault = cells.iter().any(|c| match c.verdict {
            CellVerdict::Fault | CellVerdict::Interrupted | CellVerdict::Incomplete => true,
            CellVerdict::Passed
            | CellVerdict::FailedAsExpected
            | CellVerdict::Failed
            | CellVerdict::UnexpectedlyPassed => false,
        });
        let failed = cells
            .iter()
            .any(|c| matches!(c.verdict, CellVerdict::Failed | CellVerdict::UnexpectedlyPassed));
        if cells.is_empty() || fault {
            Overall::NoVerdict
        } else if failed {
            Overall::Failed
        } else {
            Overall::Passed
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Overall::Passed => "PASSED",
            Overall::Failed => "FAILED",
            Overall::NoVerdict => "NO VERDICT",
        }
    }

    pub fn headline(self) -> &'static str {
        match self {
            Overall::Passed => "SIGN-OFF PASSED",
            Overall::Failed => "SIGN-OFF FAILED",
            Overall::NoVerdict => "NO VERDICT",
        }
    }

    pub fn markdown(self) -> &'static str {
        match self {
            Overall::Passed => "PASSED ✅",
            Overall::Failed => "FAILED ❌",
            Overall::NoVerdict => "NO VERDICT ⚠️",
        }
    }

    pub fn css(self) -> &'static str {
        match self {
            Overall::Passed => "pass",
            Overall::Failed => "fail",
            Overall::NoVerdict => "none",
        }
    }

    /// Why there is no verdict, for the reader who must decide what to do.
    pub fn explain(self) -> &'static str {
        match self {
            Overall::NoVerdict => {
                "The run was interrupted, did not finish, or the rig or bench failed (infrastructure, not firmware): the firmware was not judged. Fix the bench and run again."
            }
            Overall::Passed | Overall::Failed => "",
        }
    }
}

/// The exit code a run with these cells ends with (kept in summary.json);
/// the mapping itself is [`crate::cli::overall_code`], the one place.
pub fn exit_code(cells: &[CellSummary]) -> i32 {
    i32::from(crate::cli::overall_code(Overall::of(cells)))
}
