//! Executes a cell's steps against its world.
//!
//! Device-scoped steps act on every selected device concurrently and finish
//! when all have. Waiting steps (`wait_for`, `sleep_cycles`,
//! `expect_recovery`) watch the timeline and are bounded by their own
//! timeout and by the plan's. Checks record `check.pass`/`check.fail`
//! events; the first failing check step stops the remaining steps (teardown
//! still runs). A driver or cache error is a fault that names the device and
//! the step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::future::join_all;
use regex::Regex;
use serde_saphyr::Spanned;
use tokio::time::Instant;

use super::world::World;
use crate::cache::RestoreFrom;
use crate::checks::{self, RecoveryArgs, RecoveryTracker, RecoveryVerdict, Window};
use crate::drivers::DriverError;
use crate::fixture::Fixtures;
use crate::plan::step::{CacheOp, PowerAction, ResetKind};
use crate::plan::{Cell, Step};
use crate::timeline::{Event, EventKind, RecoveryFacts, Source, Timeline};
use crate::units::fmt_duration;

/// Why a phase stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A check failed (already recorded as `check.fail`).
    CheckFailed,
    /// The plan's timeout expired.
    Timeout,
    /// The rig or bench failed; the message names device and step.
    Fault(String),
    /// `events.jsonl` could not be written: nothing more can be kept.
    JournalFailed,
}

/// Reports step progress to the user interface.
pub type OnStep<'a> = &'a (dyn Fn(usize, &str) + Sync);

pub struct Exec<'a> {
    world: &'a World,
    timeline: &'a Timeline,
    fixtures: &'a Fixtures,
    cell_index: u32,
    devices: Vec<String>,
    deadline: Instant,
    step_no: usize,
    marks: HashMap<String, (u64, u64)>,
    on_step: OnStep<'a>,
    timed_out_in: Option<(usize, String)>,
}

impl<'a> Exec<'a> {
    pub fn new(
        world: &'a World,
        timeline: &'a Timeline,
        fixtures: &'a Fixtures,
        cell_index: u32,
        cell: &Cell,
        on_step: OnStep<'a>,
    ) -> Exec<'a> {
        Exec {
            world,
            timeline,
            fixtures,
            cell_index,
            devices: cell.devices.clone(),
            deadline: Instant::now() + cell.timeout,
            step_no: 0,
            marks: HashMap::new(),
            on_step,
            timed_out_in: None,
        }
    }

    /// Gives teardown its own time budget, whatever is left of the plan's.
    pub fn set_budget(&mut self, budget: Duration) {
        self.deadline = Instant::now() + budget;
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub async fn run_phase(&mut self, steps: &[Spanned<Step>], phase: &str) -> Result<(), Stop> {
        for s in steps {
            Box::pin(self.run_step(&s.value, phase)).await?;
        }
        Ok(())
    }

    async fn run_step(&mut self, step: &Step, phase: &str) -> Result<(), Stop> {
        if let Step::Repeat(r) = step {
            for _ in 0..r.times {
                self.run_phase(&r.steps, phase).await?;
            }
            return Ok(());
        }
        self.step_no += 1;
        let n = self.step_no;
        let desc = step.describe();
        (self.on_step)(n, &desc);
        self.timeline.emit(
            None,
            Source::Runner,
            EventKind::PlanStep {
                index: n,
                phase: phase.to_owned(),
                step: desc.clone(),
            },
        );
        let result = if self.remaining().is_zero() {
            Err(Stop::Timeout)
        } else if bounds_itself(step) {
            self.exec_step(step, n, &desc).await
        } else {
            // Every other step (a power cycle's off time, a flash, a relay
            // command) is cut off where the plan's time runs out.
            let limit = self.remaining();
            match tokio::time::timeout(limit, self.exec_step(step, n, &desc)).await {
                Ok(r) => r,
                Err(_) => Err(Stop::Timeout),
            }
        };
        if result == Err(Stop::Timeout) && self.timed_out_in.is_none() {
            self.timed_out_in = Some((n, desc));
        }
        result
    }

    /// The step that ran into the plan's timeout, if one did.
    pub fn timed_out_in(&self) -> Option<(usize, String)> {
        self.timed_out_in.clone()
    }

    async fn exec_step(&mut self, step: &Step, n: usize, desc: &str) -> Result<(), Stop> {
        let fault = |device: &str, e: &DriverError| Stop::Fault(format!("{device}: step {n} ({desc}): {e}"));
        match step {
            Step::Power(action) => {
                let results = join_all(self.selected().map(|d| async move {
                    match action {
                        PowerAction::On => d.power(true).await,
                        PowerAction::Off => d.power(false).await,
                        PowerAction::Cycle { off_for } => d.power_cycle(off_for.0).await,
                    }
                }))
                .await;
                self.first_fault(results, &fault)
            }
            Step::Reset(ResetKind::Soft) => {
                let results = join_all(self.selected().map(|d| d.soft_reset())).await;
                self.first_fault(results, &fault)
            }
            Step::Flash(name) => {
                let Some(fx) = self.fixtures.get(&name.value) else {
                    return Err(Stop::Fault(format!(
                        "step {n} ({desc}): fixture disappeared since validation"
                    )));
                };
                let fx = &fx;
                let results = join_all(self.selected().map(|d| d.flash(fx))).await;
                self.first_fault(results, &fault)
            }
            Step::Console(c) => {
                let results: Vec<_> = self.selected().map(|d| d.console_send(&c.send)).collect();
                self.first_fault(results, &fault)
            }
            Step::Wait(d) => {
                if d.0 > self.remaining() {
                    tokio::time::sleep(self.remaining()).await;
                    return Err(Stop::Timeout);
                }
                tokio::time::sleep(d.0).await;
                Ok(())
            }
            Step::Mark(m) => {
                let seq = self
                    .timeline
                    .emit(None, Source::Runner, EventKind::PlanMark { name: m.value.clone() });
                self.marks.insert(m.value.clone(), (seq, self.timeline.now_ms()));
                Ok(())
            }
            Step::Cache(op) => {
                let cache = &self.world.cache;
                let r = match op {
                    CacheOp::Kill => cache.kill().await,
                    CacheOp::Start => cache.start().await,
                    CacheOp::Flush => cache.flush().await,
                    CacheOp::Snapshot(name) => cache.snapshot(name).await,
                    CacheOp::Restore(name) if name == "empty" => cache.restore(&RestoreFrom::Empty).await,
                    CacheOp::Restore(name) => cache.restore(&RestoreFrom::Snapshot(name.clone())).await,
                    CacheOp::Evict(e) => cache.evict(e.fraction).await,
                    CacheOp::Pause(d) => cache.pause(d.0).await,
                };
                r.map_err(|e| Stop::Fault(format!("session cache: step {n} ({desc}): {e}")))
            }
            Step::Cloud(c) => {
                self.world.cloud.set_mitigation(c.mitigation);
                Ok(())
            }
            Step::WaitFor(w) => {
                let matcher = match (&w.event, &w.console) {
                    (Some(e), _) => Matcher::Kind(e.value.clone()),
                    (None, Some(c)) => Matcher::Console(
                        crate::diag::regex(&c.value).map_err(|e| Stop::Fault(format!("step {n}: {e}")))?,
                    ),
                    (None, None) => return Err(Stop::Fault(format!("step {n}: wait_for without a target"))),
                };
                self.wait_for(n, desc, matcher, w.timeout.map(|t| t.0)).await
            }
            Step::SleepCycles(s) => self.sleep_cycles(n, desc, s.n(), s.timeout().map(|t| t.0)).await,
            Step::Expect(e) => self.expect(n, desc, e),
            Step::ExpectRecovery(r) => {
                let args = RecoveryArgs {
                    mark: r.after.value.clone(),
                    within_cycles: r.within_cycles,
                    within: r.within,
                    no_power_cycle: r.no_power_cycle,
                    max_bytes: r.max_bytes.map(|b| b.0),
                };
                self.expect_recovery(n, desc, args).await
            }
            Step::Repeat(_) => unreachable!("expanded above"),
            Step::Run(_) => Err(Stop::Fault(format!("step {n}: `run:` is not supported"))),
        }
    }

    fn selected(&self) -> impl Iterator<Item = &'a super::device::DeviceHandle> + '_ {
        let world = self.world;
        self.devices.iter().filter_map(move |id| world.device(id))
    }

    fn first_fault(
        &self,
        results: Vec<Result<(), DriverError>>,
        fault: &dyn Fn(&str, &DriverError) -> Stop,
    ) -> Result<(), Stop> {
        let faults: Vec<Stop> = self
            .devices
            .iter()
            .zip(results)
            .filter_map(|(id, r)| r.err().map(|e| fault(id, &e)))
            .collect();
        match faults.len() {
            0 => Ok(()),
            1 => Err(faults.into_iter().next().expect("one")),
            _ => Err(Stop::Fault(
                faults
                    .into_iter()
                    .map(|f| match f {
                        Stop::Fault(m) => m,
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    fn record(
        &self,
        n: usize,
        desc: &str,
        device: Option<&str>,
        result: Result<String, String>,
        facts: Option<RecoveryFacts>,
    ) -> bool {
        let kind = match result {
            Ok(detail) => EventKind::CheckPass {
                step: n,
                check: desc.to_owned(),
                detail,
                facts,
            },
            Err(message) => EventKind::CheckFail {
                step: n,
                check: desc.to_owned(),
                message,
                facts,
            },
        };
        let passed = matches!(kind, EventKind::CheckPass { .. });
        self.timeline.emit(device, Source::Check, kind);
        passed
    }

    fn last_console_line(&self, device: &str) -> Option<String> {
        self.timeline.read(|evs| {
            evs.iter()
                .rev()
                .take_while(|e| e.cell == self.cell_index)
                .find_map(|e| match &e.kind {
                    EventKind::ConsoleLine { line, .. } if e.is(device) => Some(line.clone()),
                    _ => None,
                })
        })
    }

    fn with_last_line(&self, device: &str, msg: String) -> String {
        match self.last_console_line(device) {
            Some(l) => format!("{msg} (last console line: {l:?})"),
            None => format!("{msg} (no console output)"),
        }
    }

    /// Bound for a waiting step: its own timeout if shorter than the plan's.
    fn limit(&self, own: Option<Duration>) -> (Duration, bool) {
        let rem = self.remaining();
        match own {
            Some(t) if t < rem => (t, false),
            _ => (rem, true),
        }
    }

    async fn wait_for(&mut self, n: usize, desc: &str, m: Matcher, timeout: Option<Duration>) -> Result<(), Stop> {
        let from = self.timeline.len();
        let (limit, plan_bound) = self.limit(timeout);
        if m.is_deviceless() {
            // A bench-wide event (cache.resume, plan.mark...): seen once, not per device.
            let started = self.timeline.now_ms();
            let mut hit = None;
            self.timeline
                .wait(from, Some(limit), |e| {
                    if e.device.is_none() && m.matches(e) {
                        hit = Some(e.t_ms);
                    }
                    hit.is_some()
                })
                .await;
            let r = match hit {
                Some(t) => Ok(format!(
                    "{} after {}",
                    m.describe(),
                    fmt_duration(Duration::from_millis(t - started))
                )),
                None => Err(format!("bench: no {} within {}", m.describe(), fmt_duration(limit))),
            };
            let ok = self.record(n, desc, None, r, None);
            return verdict(ok, plan_bound);
        }
        let mut pending: BTreeSet<String> = self.devices.iter().cloned().collect();
        let mut hits: BTreeMap<String, u64> = BTreeMap::new();
        let started = self.timeline.now_ms();
        self.timeline
            .wait(from, Some(limit), |e| {
                if let Some(d) = &e.device
                    && pending.contains(d)
                    && m.matches(e)
                {
                    pending.remove(d);
                    hits.insert(d.clone(), e.t_ms);
                }
                pending.is_empty()
            })
            .await;
        let mut ok = true;
        for d in &self.devices {
            let r = match hits.get(d) {
                Some(t) => Ok(format!(
                    "{} after {}",
                    m.describe(),
                    fmt_duration(Duration::from_millis(t - started))
                )),
                None => Err(self.with_last_line(d, format!("{d}: no {} within {}", m.describe(), fmt_duration(limit)))),
            };
            ok &= self.record(n, desc, Some(d), r, None);
        }
        verdict(ok, plan_bound)
    }

    async fn sleep_cycles(&mut self, n: usize, desc: &str, cycles: u32, timeout: Option<Duration>) -> Result<(), Stop> {
        let from = self.timeline.len();
        let (limit, plan_bound) = self.limit(timeout);
        // A cycle is complete when the device goes back to sleep after a
        // wake that began during this step.
        let mut state: BTreeMap<String, (u32, u32)> = self.devices.iter().map(|d| (d.clone(), (0, 0))).collect();
        self.timeline
            .wait(from, Some(limit), |e| {
                if let Some((wakes, done)) = e.device.as_ref().and_then(|d| state.get_mut(d)) {
                    match e.kind {
                        EventKind::DeviceWake { .. } => *wakes += 1,
                        EventKind::DeviceSleep { .. } if *done < *wakes => *done += 1,
                        _ => {}
                    }
                }
                state.values().all(|(_, done)| *done >= cycles)
            })
            .await;
        let mut ok = true;
        for d in &self.devices {
            let done = state[d].1;
            let r = if done >= cycles {
                Ok(format!("{cycles} wake cycles completed"))
            } else {
                Err(self.with_last_line(
                    d,
                    format!(
                        "{d}: completed {done} of {cycles} wake cycles within {}",
                        fmt_duration(limit)
                    ),
                ))
            };
            ok &= self.record(n, desc, Some(d), r, None);
        }
        verdict(ok, plan_bound)
    }

    fn expect(&mut self, n: usize, desc: &str, e: &crate::plan::step::Expect) -> Result<(), Stop> {
        let until_seq = self.timeline.len();
        let (after_seq, within_ms, since) = match &e.after {
            Some(a) => {
                let (seq, t) =
                    self.marks.get(&a.value).copied().ok_or_else(|| {
                        Stop::Fault(format!("step {n}: mark '{}' was not set before this step", a.value))
                    })?;
                let within = e.within.map(|w| (t, w.0.as_millis() as u64));
                let since = match e.within {
                    Some(w) => format!("within {w} after '{}'", a.value),
                    None => format!("after '{}'", a.value),
                };
                (Some(seq), within, since)
            }
            None => (None, None, "since the start of the cell".to_owned()),
        };
        let w = Window {
            after_seq,
            within_ms,
            until_seq,
        };
        let kind = e.event.value.as_str();
        let mut ok = true;
        if checks::is_deviceless(kind) {
            let seen = self
                .timeline
                .read(|evs| checks::count(evs, self.cell_index, None, kind, w));
            ok &= self.record(
                n,
                desc,
                None,
                checks::expect("bench", seen, kind, e.min, e.max, &since),
                None,
            );
        } else {
            for d in &self.devices {
                let seen = self
                    .timeline
                    .read(|evs| checks::count(evs, self.cell_index, Some(d), kind, w));
                ok &= self.record(
                    n,
                    desc,
                    Some(d),
                    checks::expect(d, seen, kind, e.min, e.max, &since),
                    None,
                );
            }
        }
        verdict(ok, false)
    }

    async fn expect_recovery(&mut self, n: usize, desc: &str, args: RecoveryArgs) -> Result<(), Stop> {
        let (mark_seq, mark_t) = self
            .marks
            .get(&args.mark)
            .copied()
            .ok_or_else(|| Stop::Fault(format!("step {n}: mark '{}' was not set before this step", args.mark)))?;
        let mut trackers: BTreeMap<String, RecoveryTracker> = self
            .devices
            .iter()
            .map(|d| (d.clone(), RecoveryTracker::new(d, args.clone(), mark_t)))
            .collect();
        let mut decided: BTreeMap<String, RecoveryVerdict> = BTreeMap::new();
        let mut next = mark_seq + 1;
        let mut timed_out = false;
        loop {
            let now = self.timeline.now_ms();
            for (d, tr) in &trackers {
                if !decided.contains_key(d)
                    && let Some(v) = tr.decided(now)
                {
                    decided.insert(d.clone(), v);
                }
            }
            if decided.len() == trackers.len() {
                break;
            }
            if self.remaining().is_zero() {
                timed_out = true;
                break;
            }
            // Wake up for new events, or when a time limit falls due.
            let next_deadline = trackers
                .iter()
                .filter(|(d, _)| !decided.contains_key(*d))
                .filter_map(|(_, t)| t.deadline_ms())
                .min()
                .map(|ms| Duration::from_millis(ms.saturating_sub(now)));
            let limit = next_deadline.map_or(self.remaining(), |d| d.min(self.remaining()));
            self.timeline
                .wait(next, Some(limit), |e| {
                    next = e.seq + 1;
                    if e.cell != self.cell_index {
                        return false;
                    }
                    let Some(d) = e.device.as_deref() else { return false };
                    let Some(tr) = trackers.get_mut(d) else { return false };
                    if decided.contains_key(d) {
                        return false;
                    }
                    tr.feed(e);
                    if let Some(v) = tr.decided(e.t_ms) {
                        decided.insert(d.to_owned(), v);
                    }
                    decided.len() == trackers.len()
                })
                .await;
        }
        let mut ok = true;
        for d in &self.devices {
            let v = match decided.remove(d) {
                Some(v) => v,
                None => {
                    let mut v = trackers[d].verdict();
                    v.passed = false;
                    v.text = format!("plan timeout before the check was decided: {}", v.text);
                    v
                }
            };
            let r = if v.passed { Ok(v.text) } else { Err(v.text) };
            ok &= self.record(n, desc, Some(d), r, Some(v.facts));
        }
        verdict(ok, timed_out)
    }
}

/// Steps that watch the plan's timeout themselves, so their checks are
/// recorded before they stop.
fn bounds_itself(step: &Step) -> bool {
    matches!(
        step,
        Step::WaitFor(_) | Step::SleepCycles(_) | Step::ExpectRecovery(_) | Step::Wait(_) | Step::Expect(_)
    )
}

fn verdict(ok: bool, plan_bound: bool) -> Result<(), Stop> {
    match (ok, plan_bound) {
        (true, _) => Ok(()),
        (false, true) => Err(Stop::Timeout),
        (false, false) => Err(Stop::CheckFailed),
    }
}

enum Matcher {
    Kind(String),
    Console(Regex),
}

impl Matcher {
    fn matches(&self, e: &Event) -> bool {
        match (self, &e.kind) {
            (Matcher::Kind(k), kind) => kind.name() == k,
            (Matcher::Console(re), EventKind::ConsoleLine { line, .. }) => re.is_match(line),
            (Matcher::Console(_), _) => false,
        }
    }

    fn is_deviceless(&self) -> bool {
        matches!(self, Matcher::Kind(k) if checks::is_deviceless(k))
    }

    fn describe(&self) -> String {
        match self {
            Matcher::Kind(k) => k.clone(),
            Matcher::Console(re) => format!("console line matching /{}/", re.as_str()),
        }
    }
}
