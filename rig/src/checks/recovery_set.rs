//! One `expect_recovery` for all of a cell's devices, followed live from
//! its mark on: a [`RecoveryTracker`] per device, fed each event as it is
//! emitted (the timeline does not keep a cell's events for the check to
//! read back), and the sessions cache faults lose on the way.
//!
//! A device whose session a fault after the mark lost (`exact_loss`, or
//! any fault on a cluster cache) is followed from that fault on: what it
//! did before, it did with its session.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Fate, RecoveryArgs, RecoveryTracker, RecoveryVerdict};
use crate::timeline::Event;
use crate::timeline::query::{Loss, Sessions};

#[derive(Debug)]
pub struct RecoverySet {
    cell: u32,
    args: RecoveryArgs,
    mark_t: u64,
    all: Vec<String>,
    trackers: BTreeMap<String, RecoveryTracker>,
    decided: BTreeSet<String>,
    /// The node of each device's session at the mark (cluster caches).
    nodes: HashMap<String, u32>,
    /// Whether losses are tracked at all (cluster cache or `exact_loss`).
    track_losses: bool,
    sessions: Sessions,
    losses: Vec<Loss>,
    /// Device → (seq, how) of the fault that lost its session.
    lost: HashMap<String, (u64, String)>,
    /// The check's step has begun: later losses no longer change whom it
    /// follows from where (as when the losses were read at the step).
    started: bool,
}

impl RecoverySet {
    /// Starts following `devices` of `cell` from a mark at `mark_t`, with
    /// the sessions and layout at the mark.
    pub fn new(
        cell: u32,
        args: RecoveryArgs,
        mark_t: u64,
        devices: &[String],
        sessions: Sessions,
        track_losses: bool,
    ) -> RecoverySet {
        let nodes = if track_losses { sessions.nodes() } else { HashMap::new() };
        let mut set = RecoverySet {
            cell,
            args,
            mark_t,
            all: devices.to_vec(),
            trackers: BTreeMap::new(),
            decided: BTreeSet::new(),
            nodes,
            track_losses,
            sessions,
            losses: Vec::new(),
            lost: HashMap::new(),
            started: false,
        };
        for d in devices {
            let tr = set.fresh(d);
            set.trackers.insert(d.clone(), tr);
        }
        set
    }

    fn fate(&self, d: &str) -> Fate {
        Fate {
            node: self.nodes.get(d).copied(),
            lost: self.args.exact_loss.then(|| self.lost.contains_key(d)),
            how: self.lost.get(d).map(|(_, how)| how.clone()).unwrap_or_default(),
        }
    }

    fn fresh(&self, d: &str) -> RecoveryTracker {
        RecoveryTracker::new(d, self.args.clone(), self.mark_t).with_fate(self.fate(d))
    }

    /// Feeds one event emitted after the mark.
    pub fn feed(&mut self, e: &Event) {
        if e.cell != self.cell {
            return;
        }
        if self.track_losses {
            if !self.started {
                let before = self.losses.len();
                self.sessions.losses(e, &mut self.losses);
                let new: Vec<Loss> = self.losses[before..].to_vec();
                for l in new {
                    let devices: Vec<String> = match l.device {
                        Some(d) => vec![d],
                        None => self.all.clone(),
                    };
                    for d in devices {
                        if self.trackers.contains_key(&d) && !self.lost.contains_key(&d) {
                            self.lost.insert(d.clone(), (l.seq, l.how.clone()));
                            let tr = self.fresh(&d);
                            self.trackers.insert(d.clone(), tr);
                            self.decided.remove(&d);
                        }
                    }
                }
            }
            self.sessions.feed(e);
        }
        let Some(d) = e.device.as_deref() else { return };
        if self.decided.contains(d) {
            return;
        }
        let Some(tr) = self.trackers.get_mut(d) else { return };
        tr.feed(e);
        if tr.decided(e.t_ms).is_some() {
            self.decided.insert(d.to_owned());
        }
    }

    /// The check's step begins: the losses so far are final, and every
    /// device's fate is known.
    pub fn start(&mut self) {
        self.started = true;
        let fates: Vec<(String, Fate)> = self.trackers.keys().map(|d| (d.clone(), self.fate(d))).collect();
        for (d, f) in fates {
            if let Some(tr) = self.trackers.get_mut(&d) {
                tr.set_fate(f);
            }
        }
    }

    /// Decides every device whose time is up at `now_ms`; whether all are.
    pub fn decide(&mut self, now_ms: u64) -> bool {
        for (d, tr) in &self.trackers {
            if !self.decided.contains(d) && tr.decided(now_ms).is_some() {
                self.decided.insert(d.clone());
            }
        }
        self.all_decided()
    }

    pub fn all_decided(&self) -> bool {
        self.decided.len() == self.trackers.len()
    }

    /// The next time limit of an undecided device (cell ms).
    pub fn next_deadline(&self) -> Option<u64> {
        self.trackers
            .iter()
            .filter(|(d, _)| !self.decided.contains(*d))
            .filter_map(|(_, t)| t.deadline_ms())
            .min()
    }

    /// Each device's verdict, decided or (None) not when the step ended.
    pub fn verdicts(&self) -> Vec<(String, Option<RecoveryVerdict>)> {
        self.all
            .iter()
            .filter_map(|d| {
                let tr = self.trackers.get(d)?;
                Some((d.clone(), self.decided.contains(d).then(|| tr.verdict())))
            })
            .collect()
    }

    /// The tracker's verdict so far (for a device not decided in time).
    pub fn verdict_so_far(&self, d: &str) -> Option<RecoveryVerdict> {
        self.trackers.get(d).map(RecoveryTracker::verdict)
    }
}
