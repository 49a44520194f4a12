//! `wait_for` and `sleep_cycles`: per device (or once for the bench, for a
//! bench-wide event), fed events from the step's start until every device
//! is done or time runs out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Verdict;
use crate::plan::Target;
use crate::timeline::query::WakeCycles;
use crate::timeline::{Event, EventKind};
use crate::units::fmt_duration;

/// `wait_for`: the first matching event of every selected device.
#[derive(Debug)]
pub struct WaitForTracker {
    target: Target,
    started_ms: u64,
    pending: BTreeSet<String>,
    hits: BTreeMap<String, u64>,
    /// For a bench-wide event: when it happened.
    bench_hit: Option<u64>,
}

impl WaitForTracker {
    pub fn new(target: Target, devices: &[String], started_ms: u64) -> WaitForTracker {
        WaitForTracker {
            target,
            started_ms,
            pending: devices.iter().cloned().collect(),
            hits: BTreeMap::new(),
            bench_hit: None,
        }
    }

    /// Whether the target is an event about the bench, not a device.
    pub fn bench_wide(&self) -> bool {
        matches!(self.target, Target::Event(t) if t.is_deviceless())
    }

    fn matches(&self, e: &Event) -> bool {
        match (&self.target, &e.kind) {
            (Target::Event(t), kind) => kind.tag() == *t,
            (Target::Console(re), EventKind::ConsoleLine { line, .. }) => re.is_match(line),
            (Target::Console(_), _) => false,
        }
    }

    /// Feeds one event; true once the wait is over.
    pub fn feed(&mut self, e: &Event) -> bool {
        if self.bench_wide() {
            if e.device.is_none() && self.bench_hit.is_none() && self.matches(e) {
                self.bench_hit = Some(e.t_ms);
            }
            return self.bench_hit.is_some();
        }
        if let Some(d) = &e.device
            && self.pending.contains(d)
            && self.matches(e)
        {
            self.pending.remove(d);
            self.hits.insert(d.clone(), e.t_ms);
        }
        self.pending.is_empty()
    }

    fn after(&self, t: u64) -> String {
        format!(
            "{} after {}",
            self.target.describe(),
            fmt_duration(Duration::from_millis(t.saturating_sub(self.started_ms)))
        )
    }

    /// One verdict per device (`Some(id)`), or one for the bench (`None`).
    pub fn verdicts(&self, devices: &[String], limit: Duration) -> Vec<(Option<String>, Verdict)> {
        let within = fmt_duration(limit);
        if self.bench_wide() {
            let v = match self.bench_hit {
                Some(t) => Verdict::Pass(self.after(t)),
                None => Verdict::Fail(format!("bench: no {} within {within}", self.target.describe())),
            };
            return vec![(None, v)];
        }
        devices
            .iter()
            .map(|d| {
                let v = match self.hits.get(d) {
                    Some(t) => Verdict::Pass(self.after(*t)),
                    None => Verdict::Fail(format!("{d}: no {} within {within}", self.target.describe())),
                };
                (Some(d.clone()), v)
            })
            .collect()
    }
}

/// `sleep_cycles: N`: every device completes N wake cycles that begin
/// during the step.
#[derive(Debug)]
pub struct SleepCyclesTracker {
    n: u32,
    devices: BTreeMap<String, WakeCycles>,
}

impl SleepCyclesTracker {
    pub fn new(n: u32, devices: &[String]) -> SleepCyclesTracker {
        SleepCyclesTracker {
            n,
            devices: devices.iter().map(|d| (d.clone(), WakeCycles::default())).collect(),
        }
    }

    /// Feeds one event; true once every device has its cycles.
    pub fn feed(&mut self, e: &Event) -> bool {
        if let Some(w) = e.device.as_ref().and_then(|d| self.devices.get_mut(d)) {
            w.feed(e);
        }
        self.devices.values().all(|w| w.completed >= self.n)
    }

    pub fn verdict(&self, device: &str, limit: Duration) -> Verdict {
        let done = self.devices.get(device).map_or(0, |w| w.completed);
        if done >= self.n {
            Verdict::Pass(format!("{} wake cycles completed", self.n))
        } else {
            Verdict::Fail(format!(
                "{device}: completed {done} of {} wake cycles within {}",
                self.n,
                fmt_duration(limit)
            ))
        }
    }
}
