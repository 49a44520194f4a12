//! Executes a cell's resolved steps against its world.
//!
//! Device-scoped steps act on every selected device concurrently and finish
//! when all have. Waiting steps feed the timeline's events to the trackers
//! of `crate::checks` and are bounded by their own timeout and by the
//! plan's; every other step is cut off where the plan's time runs out.
//! Checks record `check.pass`/`check.fail` events; the first failing check
//! step stops the remaining steps (teardown still runs). A driver or cache
//! error is a fault that names the device and the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::world::World;
use crate::checks::{self, RecoveryArgs, RecoverySet, SleepCyclesTracker, Verdict, WaitForTracker};
use crate::drivers::DriverError;
use crate::plan::{Action, Cell, Expect, PowerAction, Step, Target};
use crate::timeline::{EventKind, RecoveryFacts, Source, Timeline};
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
    cell_index: u32,
    devices: Vec<String>,
    deadline: Instant,
    step_no: usize,
    on_step: OnStep<'a>,
    timed_out_in: Option<(usize, String)>,
    /// Every `expect_recovery` of the cell (by the address of its args).
    recoveries: Vec<(usize, RecoveryArgs)>,
    /// Those whose mark was set: followed live since, by an observer.
    live: HashMap<usize, (Arc<Mutex<RecoverySet>>, u64)>,
}

impl Drop for Exec<'_> {
    fn drop(&mut self) {
        for (_, (_, id)) in self.live.drain() {
            self.timeline.unobserve(id);
        }
    }
}

/// The key of an `expect_recovery` step: where its arguments live.
fn key(args: &RecoveryArgs) -> usize {
    std::ptr::from_ref(args) as usize
}

/// Every step of `steps`, repeated ones included.
fn each_step<'s>(steps: &'s [Step], f: &mut impl FnMut(&'s Step)) {
    for s in steps {
        f(s);
        if let Action::Repeat { steps, .. } = &s.action {
            each_step(steps, f);
        }
    }
}

impl<'a> Exec<'a> {
    pub fn new(
        world: &'a World,
        timeline: &'a Timeline,
        cell_index: u32,
        cell: &Cell,
        on_step: OnStep<'a>,
    ) -> Exec<'a> {
        // What the checks will ask of the past is gathered as it happens.
        let mut recoveries = Vec::new();
        for phase in [&cell.setup, &cell.steps, &cell.teardown] {
            each_step(phase, &mut |s| match &s.action {
                Action::Expect(Expect {
                    after: Some(m),
                    within: Some(w),
                    ..
                }) => timeline.want_limit(m, w.as_millis() as u64),
                Action::ExpectRecovery(args) => recoveries.push((key(args), args.clone())),
                _ => {}
            });
        }
        Exec {
            world,
            timeline,
            cell_index,
            devices: cell.devices.clone(),
            deadline: Instant::now() + cell.timeout,
            step_no: 0,
            on_step,
            timed_out_in: None,
            recoveries,
            live: HashMap::new(),
        }
    }

    /// Gives teardown its own time budget, whatever is left of the plan's.
    pub fn set_budget(&mut self, budget: Duration) {
        self.deadline = Instant::now() + budget;
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The step that ran into the plan's timeout, if one did.
    pub fn timed_out_in(&self) -> Option<(usize, String)> {
        self.timed_out_in.clone()
    }

    pub async fn run_phase(&mut self, steps: &[Step], phase: &str) -> Result<(), Stop> {
        for s in steps {
            Box::pin(self.run_step(s, phase)).await?;
        }
        Ok(())
    }

    async fn run_step(&mut self, step: &Step, phase: &str) -> Result<(), Stop> {
        if let Action::Repeat { times, steps } = &step.action {
            for _ in 0..*times {
                self.run_phase(steps, phase).await?;
            }
            return Ok(());
        }
        self.step_no += 1;
        let n = self.step_no;
        let desc = step.desc.as_str();
        (self.on_step)(n, desc);
        self.timeline.emit(
            None,
            Source::Runner,
            EventKind::PlanStep {
                index: n,
                phase: phase.to_owned(),
                step: desc.to_owned(),
            },
        );
        let result = if self.remaining().is_zero() {
            Err(Stop::Timeout)
        } else if step.action.bounds_itself() {
            self.exec(&step.action, n, desc).await
        } else {
            // Every other step (a power cycle's off time, a flash, a relay
            // command) is cut off where the plan's time runs out.
            let limit = self.remaining();
            match tokio::time::timeout(limit, self.exec(&step.action, n, desc)).await {
                Ok(r) => r,
                Err(_) => Err(Stop::Timeout),
            }
        };
        if result == Err(Stop::Timeout) && self.timed_out_in.is_none() {
            self.timed_out_in = Some((n, desc.to_owned()));
        }
        result
    }

    async fn exec(&mut self, action: &Action, n: usize, desc: &str) -> Result<(), Stop> {
        let fault = |device: &str, e: &DriverError| Stop::Fault(format!("{device}: step {n} ({desc}): {e}"));
        match action {
            Action::Power(p) => {
                let results = join_all(self.selected().map(|d| async move {
                    match p {
                        PowerAction::On => d.power(true).await,
                        PowerAction::Off => d.power(false).await,
                        PowerAction::Cycle { off_for } => d.power_cycle(off_for.0).await,
                    }
                }))
                .await;
                self.first_fault(results, &fault)
            }
            Action::Reset => {
                let results = join_all(self.selected().map(|d| d.soft_reset())).await;
                self.first_fault(results, &fault)
            }
            Action::Flash(fx) => {
                let results = join_all(self.selected().map(|d| d.flash(fx))).await;
                self.first_fault(results, &fault)
            }
            Action::ConsoleSend(text) => {
                let results: Vec<_> = self.selected().map(|d| d.console_send(text)).collect();
                self.first_fault(results, &fault)
            }
            Action::Wait(d) => {
                if *d > self.remaining() {
                    tokio::time::sleep(self.remaining()).await;
                    return Err(Stop::Timeout);
                }
                tokio::time::sleep(*d).await;
                Ok(())
            }
            Action::Mark(name) => {
                let seq = self
                    .timeline
                    .emit(None, Source::Runner, EventKind::PlanMark { name: name.clone() });
                self.follow_recoveries(name, seq);
                Ok(())
            }
            Action::Cache(cmd) => self
                .world
                .cache
                .run(cmd)
                .await
                .map_err(|e| Stop::Fault(format!("session cache: step {n} ({desc}): {e}"))),
            Action::Cloud(m) => self
                .world
                .set_mitigation(*m)
                .await
                .map_err(|e| Stop::Fault(format!("cloud: step {n} ({desc}): {e}"))),
            Action::Network { fault, lasts, devices } => match self.world.relay() {
                Some(r) => {
                    r.fault(*fault, *lasts, devices.clone());
                    Ok(())
                }
                None => Err(Stop::Fault(format!(
                    "network: step {n} ({desc}): no relay stands between the boards and the cloud"
                ))),
            },
            Action::WaitFor { target, timeout } => self.wait_for(n, desc, target, *timeout).await,
            Action::SleepCycles { n: cycles, timeout } => self.sleep_cycles(n, desc, *cycles, *timeout).await,
            Action::Expect(e) => self.expect(n, desc, e),
            Action::ExpectRecovery(args) => self.expect_recovery(n, desc, key(args), &args.mark).await,
            Action::Repeat { .. } => unreachable!("expanded by run_step"),
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
        let mut faults: Vec<String> = self
            .devices
            .iter()
            .zip(results)
            .filter_map(|(id, r)| match r.err().map(|e| fault(id, &e)) {
                Some(Stop::Fault(m)) => Some(m),
                Some(other) => Some(format!("{other:?}")),
                None => None,
            })
            .collect();
        match faults.len() {
            0 => Ok(()),
            1 => Err(Stop::Fault(faults.remove(0))),
            _ => Err(Stop::Fault(faults.join("; "))),
        }
    }

    fn record(&self, n: usize, desc: &str, device: Option<&str>, v: Verdict, facts: Option<RecoveryFacts>) -> bool {
        let passed = v.passed();
        let kind = match v {
            Verdict::Pass(detail) => EventKind::CheckPass {
                step: n,
                check: desc.to_owned(),
                detail,
                facts: facts.map(Box::new),
            },
            Verdict::Fail(message) => EventKind::CheckFail {
                step: n,
                check: desc.to_owned(),
                message,
                facts: facts.map(Box::new),
            },
        };
        self.timeline.emit(device, Source::Check, kind);
        passed
    }

    /// A failure with the device's last console line; a pass as it is (the
    /// line is looked up backwards through the cell, which a fleet's every
    /// passing device must not pay for).
    fn quote_console(&self, v: Verdict, device: &str) -> Verdict {
        if v.passed() {
            v
        } else {
            v.with_last_line(self.last_console_line(device).as_deref())
        }
    }

    fn last_console_line(&self, device: &str) -> Option<String> {
        self.timeline.index(|i| i.last_console_line(device))
    }

    /// Bound for a waiting step: its own timeout if shorter than the plan's.
    fn limit(&self, own: Option<Duration>) -> (Duration, bool) {
        let rem = self.remaining();
        match own {
            Some(t) if t < rem => (t, false),
            _ => (rem, true),
        }
    }

    /// Feeds the timeline from `from` to `f` for at most `limit`.
    async fn follow(&self, from: u64, limit: Duration, f: impl FnMut(&crate::timeline::Event) -> bool) {
        self.timeline.wait(from, Some(limit), f).await;
    }

    async fn wait_for(&mut self, n: usize, desc: &str, target: &Target, timeout: Option<Duration>) -> Result<(), Stop> {
        let from = self.timeline.len();
        let (limit, plan_bound) = self.limit(timeout);
        let mut t = WaitForTracker::new(target.clone(), &self.devices, self.timeline.now_ms());
        self.follow(from, limit, |e| t.feed(e)).await;
        let mut ok = true;
        for (device, v) in t.verdicts(&self.devices, limit) {
            let v = match &device {
                Some(d) => self.quote_console(v, d),
                None => v,
            };
            ok &= self.record(n, desc, device.as_deref(), v, None);
        }
        verdict(ok, plan_bound)
    }

    async fn sleep_cycles(&mut self, n: usize, desc: &str, cycles: u32, timeout: Option<Duration>) -> Result<(), Stop> {
        let from = self.timeline.len();
        let (limit, plan_bound) = self.limit(timeout);
        let mut t = SleepCyclesTracker::new(cycles, &self.devices);
        self.follow(from, limit, |e| t.feed(e)).await;
        let mut ok = true;
        for d in &self.devices {
            let v = self.quote_console(t.verdict(d, limit), d);
            ok &= self.record(n, desc, Some(d), v, None);
        }
        verdict(ok, plan_bound)
    }

    /// The mark's (seq, cell ms), from the timeline.
    fn mark(&self, n: usize, name: &str) -> Result<(u64, u64), Stop> {
        self.timeline
            .mark(name)
            .ok_or_else(|| Stop::Fault(format!("step {n}: mark '{name}' was not set before this step")))
    }

    fn expect(&mut self, n: usize, desc: &str, e: &Expect) -> Result<(), Stop> {
        let since = match (&e.after, e.within) {
            (Some(a), Some(w)) => format!("within {} after '{a}'", fmt_duration(w)),
            (Some(a), None) => format!("after '{a}'"),
            (None, _) => "since the start of the cell".to_owned(),
        };
        if let Some(a) = &e.after {
            self.mark(n, a)?;
        }
        let within = e.within.filter(|_| e.after.is_some()).map(|w| w.as_millis() as u64);
        let after = e.after.as_deref();
        let mut ok = true;
        if e.tag.is_deviceless() {
            let seen = self
                .timeline
                .index(|i| i.count(None, e.tag, after, within))
                .unwrap_or(0);
            let v = checks::expect::verdict("bench", seen, e.tag, e.min, e.max, &since);
            ok &= self.record(n, desc, None, v, None);
        } else {
            let verdicts: Vec<_> = self.timeline.index(|i| {
                self.devices
                    .iter()
                    .map(|d| {
                        let seen = i.count(Some(d), e.tag, after, within).unwrap_or(0);
                        checks::expect::verdict(d, seen, e.tag, e.min, e.max, &since)
                    })
                    .collect()
            });
            let devices = self.devices.clone();
            for (d, v) in devices.iter().zip(verdicts) {
                ok &= self.record(n, desc, Some(d), v, None);
            }
        }
        verdict(ok, false)
    }

    /// A mark was set: every `expect_recovery` after it starts following
    /// the devices from here (again, if the mark is set again).
    fn follow_recoveries(&mut self, name: &str, mark_seq: u64) {
        let mark_t = self.timeline.mark(name).map_or(0, |(_, t)| t);
        let cluster = self.world.cache.backend().nodes() > 0;
        for (k, args) in self.recoveries.iter().filter(|(_, a)| a.mark == name) {
            if let Some((_, id)) = self.live.remove(k) {
                self.timeline.unobserve(id);
            }
            let sessions = self
                .timeline
                .index(|i| i.sessions_at_mark(name).cloned().unwrap_or_default());
            let set = RecoverySet::new(
                self.cell_index,
                args.clone(),
                mark_t,
                &self.devices,
                sessions,
                cluster || args.exact_loss,
            );
            let set = Arc::new(Mutex::new(set));
            let fed = Arc::clone(&set);
            let id = self.timeline.observe(Box::new(move |e| {
                if e.seq > mark_seq {
                    fed.lock().unwrap_or_else(|p| p.into_inner()).feed(e);
                }
            }));
            self.live.insert(*k, (set, id));
        }
    }

    async fn expect_recovery(&mut self, n: usize, desc: &str, k: usize, mark: &str) -> Result<(), Stop> {
        self.mark(n, mark)?;
        let Some((set, id)) = self.live.remove(&k) else {
            return Err(Stop::Fault(format!(
                "step {n}: mark '{mark}' was set, but not followed for this check"
            )));
        };
        let lock = || set.lock().unwrap_or_else(|p| p.into_inner());
        lock().start();
        let mut timed_out = false;
        loop {
            // The timeline's lock is never taken while the set's is held
            // (the observer takes them the other way round).
            let now = self.timeline.now_ms();
            let (all, next_deadline) = {
                let mut s = lock();
                (s.decide(now), s.next_deadline())
            };
            if all {
                break;
            }
            if self.remaining().is_zero() {
                timed_out = true;
                break;
            }
            // Wake up for new events, or when a time limit falls due.
            let limit = next_deadline
                .map(|ms| Duration::from_millis(ms.saturating_sub(now)))
                .map_or(self.remaining(), |d| d.min(self.remaining()));
            let from = self.timeline.len();
            self.follow(from, limit, |_| lock().all_decided()).await;
        }
        self.timeline.unobserve(id);
        let verdicts = lock().verdicts();
        let mut ok = true;
        for (d, v) in verdicts {
            let v = match v {
                Some(v) => v,
                None => {
                    let Some(mut v) = lock().verdict_so_far(&d) else {
                        continue;
                    };
                    v.passed = false;
                    v.text = format!("plan timeout before the check was decided: {}", v.text);
                    v
                }
            };
            let r = if v.passed {
                Verdict::Pass(v.text)
            } else {
                Verdict::Fail(v.text)
            };
            ok &= self.record(n, desc, Some(&d), r, Some(v.facts));
        }
        verdict(ok, timed_out)
    }
}

fn verdict(ok: bool, plan_bound: bool) -> Result<(), Stop> {
    match (ok, plan_bound) {
        (true, _) => Ok(()),
        (false, true) => Err(Stop::Timeout),
        (false, false) => Err(Stop::CheckFailed),
    }
}
