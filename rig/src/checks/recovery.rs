//! `expect_recovery`: did each device get its cloud session back after a
//! mark, through its own wake cycles, within the limits?

use crate::timeline::query::WakeCycles;
use crate::timeline::{ConnectVia, Event, EventKind, RecoveryFacts, UnknownAction};
use crate::units::{Dur, fmt_bytes, fmt_duration};

/// Parameters of `expect_recovery`.
#[derive(Debug, Clone)]
pub struct RecoveryArgs {
    pub mark: String,
    pub within_cycles: Option<u32>,
    pub within: Option<Dur>,
    pub no_power_cycle: bool,
    pub max_bytes: Option<u64>,
    /// See [`crate::plan::step::ExpectRecovery::exact_loss`].
    pub exact_loss: bool,
}

/// Follows one device's events after a mark and decides whether and how it
/// recovered its cloud session. Feed it that device's events in order; it
/// needs nothing else, so the same tracker serves the live wait and a replay.
#[derive(Debug, Clone)]
pub struct RecoveryTracker {
    device: String,
    args: RecoveryArgs,
    mark_t: u64,
    /// Wake cycles that started after the mark.
    cycles: WakeCycles,
    unknown_in_current_wake: bool,
    wakes_with_unknown_resume: u32,
    unknown_resume_records: u32,
    last_action: Option<UnknownAction>,
    handshakes: u32,
    bytes: u64,
    power_cycled: bool,
    recovered: Option<(u64, ConnectVia)>,
    /// After recovery, bytes are counted up to the cloud's reply.
    closed: bool,
    last_line: Option<String>,
    fate: Fate,
}

/// Where the device's session lived and whether a fault lost it.
#[derive(Debug, Clone, Default)]
pub struct Fate {
    pub node: Option<u32>,
    /// `Some(true)`: a cache fault after the mark lost it (what `exact_loss`
    /// then requires a handshake for); `Some(false)`: it was kept.
    pub lost: Option<bool>,
    /// How it was lost, for messages ("with node 2").
    pub how: String,
}

/// A decided recovery check.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryVerdict {
    pub passed: bool,
    pub text: String,
    pub facts: RecoveryFacts,
}

impl RecoveryTracker {
    pub fn new(device: &str, args: RecoveryArgs, mark_t: u64) -> RecoveryTracker {
        RecoveryTracker {
            device: device.to_owned(),
            args,
            mark_t,
            cycles: WakeCycles::default(),
            // A wake in progress at the mark may already try a resume.
            unknown_in_current_wake: false,
            wakes_with_unknown_resume: 0,
            unknown_resume_records: 0,
            last_action: None,
            handshakes: 0,
            bytes: 0,
            power_cycled: false,
            recovered: None,
            closed: false,
            last_line: None,
            fate: Fate::default(),
        }
    }

    /// Says where the session lived and whether a fault lost it.
    pub fn with_fate(mut self, fate: Fate) -> RecoveryTracker {
        self.fate = fate;
        self
    }

    pub fn set_fate(&mut self, fate: Fate) {
        self.fate = fate;
    }

    /// Feeds one event of this device that came after the mark.
    pub fn feed(&mut self, e: &Event) {
        if self.closed {
            return;
        }
        // After recovery only the bytes up to the cloud's reply still count.
        if self.recovered.is_some()
            && !matches!(
                e.kind,
                EventKind::CloudRx { .. } | EventKind::CloudTx { .. } | EventKind::CloudExchange { .. }
            )
        {
            return;
        }
        match &e.kind {
            // A folded exchange comes after the connect it caused, with the
            // reply's bytes in it: the same total as its rx and tx.
            EventKind::CloudExchange { rx, tx, .. } => {
                self.bytes += rx + tx;
                if self.recovered.is_some() && *tx > 0 {
                    self.closed = true;
                }
            }
            EventKind::CloudRx { bytes, .. } => self.bytes += bytes,
            EventKind::CloudTx { bytes, .. } => {
                self.bytes += bytes;
                if self.recovered.is_some() {
                    self.closed = true;
                }
            }
            EventKind::DeviceWake { .. } => {
                self.cycles.feed(e);
                self.unknown_in_current_wake = false;
            }
            EventKind::DeviceSleep { .. } => {
                self.cycles.feed(e);
            }
            EventKind::PowerOff { .. } => {
                self.cycles.feed(e);
                self.power_cycled = true;
            }
            EventKind::CloudHandshake { .. } => self.handshakes += 1,
            EventKind::CloudResumeUnknown { resume, action, .. } => {
                self.last_action = Some(*action);
                if *resume {
                    self.unknown_resume_records += 1;
                    if !self.unknown_in_current_wake {
                        self.unknown_in_current_wake = true;
                        self.wakes_with_unknown_resume += 1;
                    }
                }
            }
            EventKind::CloudConnected { via, .. } => self.recovered = Some((e.t_ms, *via)),
            EventKind::ConsoleLine { line, .. } => self.last_line = Some(line.clone()),
            // Everything else says nothing about recovery.
            EventKind::CellStart { .. }
            | EventKind::CellEnd { .. }
            | EventKind::RigFault { .. }
            | EventKind::PowerOn { .. }
            | EventKind::ResetSoft
            | EventKind::FlashStart { .. }
            | EventKind::FlashDone { .. }
            | EventKind::ConsoleGap { .. }
            | EventKind::DeviceBoot
            | EventKind::DeviceReset { .. }
            | EventKind::CloudConfig { .. }
            | EventKind::CloudResumed { .. }
            | EventKind::CloudPublish { .. }
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
            | EventKind::PlanStep { .. }
            | EventKind::CheckPass { .. }
            | EventKind::CheckFail { .. } => {}
        }
    }

    /// When the check must be decided at the latest, in cell milliseconds.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.args.within.map(|w| self.mark_t + w.0.as_millis() as u64)
    }

    /// The verdict if it is already decided at `now_ms`.
    pub fn decided(&self, now_ms: u64) -> Option<RecoveryVerdict> {
        if self.recovered.is_some() {
            return self.closed.then(|| self.verdict());
        }
        let cycles_exhausted = self
            .args
            .within_cycles
            .is_some_and(|n| self.cycles.wakes > n || (self.cycles.wakes == n && self.cycles.asleep_since_last_wake()));
        let time_up = self.deadline_ms().is_some_and(|d| now_ms >= d);
        let power = self.args.no_power_cycle && self.power_cycled;
        (cycles_exhausted || time_up || power).then(|| self.verdict())
    }

    /// The verdict with what has been seen so far (at a timeout).
    pub fn verdict(&self) -> RecoveryVerdict {
        let mark = &self.args.mark;
        let facts = RecoveryFacts {
            mark: mark.clone(),
            mark_t_ms: self.mark_t,
            recovered: self.recovered.is_some(),
            via: self.recovered.map(|(_, v)| v),
            wakes: self.counted_cycles(),
            ms: self.recovered.map(|(t, _)| t.saturating_sub(self.mark_t)),
            bytes: self.bytes,
            handshakes: self.handshakes,
            unknown_resumes: self.unknown_resume_records,
            power_cycled: self.power_cycled,
            node: self.fate.node,
            lost: self.fate.lost,
        };
        let d = &self.device;
        let used = fmt_bytes(self.bytes);
        let attempts = self.attempts_text();
        let Some((t, via)) = self.recovered else {
            let text = if self.args.no_power_cycle && self.power_cycled {
                format!(
                    "{d}: was power-cycled after '{mark}' before its cloud session recovered ({attempts}); a power cycle is what this check forbids"
                )
            } else {
                let limit = match (self.args.within_cycles, self.args.within) {
                    (Some(n), _) if self.cycles.wakes >= n => format!("within {n} wake cycles"),
                    (_, Some(w)) => format!("within {w}"),
                    _ => format!(
                        "in the {} wake cycles seen before the plan timed out",
                        self.cycles.wakes
                    ),
                };
                let mut s = format!(
                    "{d}: no cloud session {limit} after '{mark}': {attempts}, {} handshake{}, {used} used",
                    self.handshakes,
                    plural(self.handshakes)
                );
                if let Some(diag) = self.diagnosis() {
                    s += &format!("; {diag}");
                }
                if let Some(l) = &self.last_line {
                    s += &format!(" (last console line: {l:?})");
                }
                s
            };
            return RecoveryVerdict {
                passed: false,
                text,
                facts,
            };
        };
        let cycles = self.counted_cycles();
        let took = fmt_duration(std::time::Duration::from_millis(t.saturating_sub(self.mark_t)));
        let via = match via {
            ConnectVia::Handshake => "full handshake",
            ConnectVia::Resume => "session resume",
        };
        let summary = format!(
            "recovered via {via} in {cycles} wake cycle{}, {took} after '{mark}', {used} used ({attempts})",
            plural(cycles)
        );
        let mut problems = Vec::new();
        let mut summary = summary;
        if self.args.exact_loss {
            let node = self.fate.node.map(|n| format!(" on node {n}")).unwrap_or_default();
            match (self.fate.lost, via == "full handshake") {
                (Some(true), true) => summary += &format!("; its session was lost {}", self.fate.how),
                (Some(true), false) => problems.push(format!(
                    "its session{node} was lost {}, yet it came back by a {via}",
                    self.fate.how
                )),
                (_, true) => problems.push(format!("its session{node} was not lost, yet it did a full handshake")),
                (_, false) if self.handshakes > 0 => problems.push(format!(
                    "its session{node} was not lost, yet it did {} full handshake{}",
                    self.handshakes,
                    plural(self.handshakes)
                )),
                (_, false) => summary += &format!("; its session{node} was kept"),
            }
        }
        if let Some(n) = self.args.within_cycles
            && cycles > n
        {
            problems.push(format!("needed {cycles} wake cycles (limit {n})"));
        }
        if let Some(w) = self.args.within
            && t.saturating_sub(self.mark_t) > w.0.as_millis() as u64
        {
            problems.push(format!("took {took} (limit {w})"));
        }
        if let Some(max) = self.args.max_bytes
            && self.bytes > max
        {
            problems.push(format!("used {used} (limit {})", fmt_bytes(max)));
        }
        if problems.is_empty() {
            RecoveryVerdict {
                passed: true,
                text: summary,
                facts,
            }
        } else {
            RecoveryVerdict {
                passed: false,
                text: format!("{d}: {}: {summary}", problems.join(", ")),
                facts,
            }
        }
    }

    fn counted_cycles(&self) -> u32 {
        // Recovery inside the wake that was in progress at the mark counts as 1.
        if self.recovered.is_some() {
            self.cycles.wakes.max(1)
        } else {
            self.cycles.wakes
        }
    }

    fn attempts_text(&self) -> String {
        let n = self.wakes_with_unknown_resume;
        let what = match self.last_action {
            Some(UnknownAction::Rejected) => "rejected as unknown",
            Some(UnknownAction::Healed) => "healed from the durable store",
            _ => "unanswered",
        };
        format!(
            "{n} resume attempt{} {what} ({} record{} for an unknown session)",
            plural(n),
            self.unknown_resume_records,
            plural(self.unknown_resume_records)
        )
    }

    /// Names the endless session-resume loop when that is what happened.
    fn diagnosis(&self) -> Option<String> {
        let looping = self.handshakes == 0
            && self.wakes_with_unknown_resume >= 2
            && self.wakes_with_unknown_resume + 1 >= self.cycles.wakes;
        if !looping {
            return None;
        }
        Some(match self.last_action {
            Some(UnknownAction::Rejected) => "looks like an endless session-resume loop: the cloud answered 'session unknown' on every wake and the firmware ignored it".into(),
            _ => "looks like an endless session-resume loop: the firmware resumes a session the cloud no longer knows on every wake and never falls back to a full handshake (only a power cycle would clear it)".into(),
        })
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Source;
    use std::time::Duration;

    fn ev(seq: u64, t_s: u64, kind: EventKind) -> Event {
        Event::at(seq, t_s * 1000, "d1", Source::Cloud, kind)
    }

    fn args(cycles: u32) -> RecoveryArgs {
        RecoveryArgs {
            mark: "crash".into(),
            within_cycles: Some(cycles),
            within: None,
            no_power_cycle: true,
            max_bytes: Some(16 * 1024),
            exact_loss: false,
        }
    }

    fn wake() -> EventKind {
        EventKind::DeviceWake { reason: None }
    }
    fn sleep() -> EventKind {
        EventKind::DeviceSleep { secs: None }
    }
    fn rx(b: u64) -> EventKind {
        EventKind::CloudRx {
            bytes: b,
            msg: "record_resume".into(),
            peer: "p".into(),
        }
    }
    fn tx(b: u64) -> EventKind {
        EventKind::CloudTx {
            bytes: b,
            msg: "x".into(),
            peer: "p".into(),
        }
    }
    fn unknown() -> EventKind {
        EventKind::CloudResumeUnknown {
            session: "s".into(),
            action: UnknownAction::Dropped,
            resume: true,
        }
    }
    fn connected(via: ConnectVia) -> EventKind {
        EventKind::CloudConnected {
            via,
            session: "s".into(),
        }
    }

    /// A failed wake: resume sent three times, nothing back.
    fn failed_wake(seq: &mut u64, t: &mut u64, out: &mut Vec<Event>) {
        for k in [wake(), rx(84), unknown(), rx(84), unknown(), rx(84), unknown(), sleep()] {
            out.push(ev(*seq, *t, k));
            *seq += 1;
            *t += 5;
        }
        *t += 900;
    }

    #[test]
    fn endless_loop_fails_with_a_diagnosis_after_the_allowed_cycles() {
        let (mut seq, mut t, mut evs) = (0, 100, Vec::new());
        let mut tr = RecoveryTracker::new("d1", args(4), 0);
        for _ in 0..4 {
            failed_wake(&mut seq, &mut t, &mut evs);
        }
        for e in &evs[..evs.len() - 1] {
            tr.feed(e);
        }
        assert!(tr.decided(t * 1000).is_none(), "undecided until the 4th wake ends");
        tr.feed(evs.last().unwrap());
        let v = tr.decided(t * 1000).expect("decided when the 4th wake ends");
        assert!(!v.passed);
        assert!(v.text.starts_with("d1: no cloud session within 4 wake cycles after 'crash': 4 resume attempts unanswered (12 records for an unknown session), 0 handshakes, 1008 B used"), "{}", v.text);
        assert!(v.text.contains("endless session-resume loop"), "{}", v.text);
        assert_eq!(v.facts.wakes, 4);
        assert!(!v.facts.recovered);
    }

    #[test]
    fn recovery_by_handshake_on_the_fourth_wake_passes_and_counts_bytes_to_the_reply() {
        let (mut seq, mut t, mut evs) = (0, 100, Vec::new());
        for _ in 0..3 {
            failed_wake(&mut seq, &mut t, &mut evs);
        }
        for k in [
            wake(),
            rx(153),
            tx(20),
            rx(169),
            tx(3096),
            rx(1880),
            EventKind::CloudHandshake { session: "s".into() },
            connected(ConnectVia::Handshake),
            tx(28),
            rx(105),
        ] {
            evs.push(ev(seq, t, k));
            seq += 1;
        }
        let mut tr = RecoveryTracker::new("d1", args(4), 0);
        for e in &evs {
            tr.feed(e);
        }
        let v = tr.decided(t * 1000).unwrap();
        assert!(v.passed, "{}", v.text);
        assert_eq!(v.facts.wakes, 4);
        assert_eq!(v.facts.handshakes, 1);
        // 9 failed resumes + the handshake up to and including ServerFinished;
        // the publish after it is not part of the recovery.
        assert_eq!(v.facts.bytes, 9 * 84 + 153 + 20 + 169 + 3096 + 1880 + 28);
        assert!(
            v.text.starts_with("recovered via full handshake in 4 wake cycles"),
            "{}",
            v.text
        );
    }

    #[test]
    fn recovery_beyond_limits_fails_naming_each_limit() {
        let mut evs = Vec::new();
        let (mut seq, mut t) = (0, 100);
        for _ in 0..2 {
            failed_wake(&mut seq, &mut t, &mut evs);
        }
        evs.push(ev(seq, t, wake()));
        evs.push(ev(seq + 1, t, rx(20_000)));
        evs.push(ev(seq + 2, t, connected(ConnectVia::Handshake)));
        evs.push(ev(seq + 3, t, tx(10)));
        let mut tr = RecoveryTracker::new("d1", args(2), 0);
        evs.iter().for_each(|e| tr.feed(e));
        let v = tr.verdict();
        assert!(!v.passed);
        assert!(v.text.contains("needed 3 wake cycles (limit 2)"), "{}", v.text);
        assert!(v.text.contains("(limit 16.0 KiB)"), "{}", v.text);
    }

    #[test]
    fn a_power_cycle_decides_failure_at_once_when_forbidden() {
        let mut tr = RecoveryTracker::new("d1", args(4), 0);
        tr.feed(&ev(0, 10, EventKind::PowerOff { pid: None }));
        let v = tr.decided(10_000).unwrap();
        assert!(!v.passed);
        assert!(v.text.contains("power-cycled"), "{}", v.text);

        let mut allowed = args(4);
        allowed.no_power_cycle = false;
        let mut tr = RecoveryTracker::new("d1", allowed, 0);
        tr.feed(&ev(0, 10, EventKind::PowerOff { pid: None }));
        assert!(tr.decided(10_000).is_none());
    }

    #[test]
    fn durable_heal_in_the_wake_in_progress_counts_as_one_cycle() {
        let mut tr = RecoveryTracker::new("d1", args(4), 0);
        for (i, k) in [rx(84), connected(ConnectVia::Resume), tx(49)].into_iter().enumerate() {
            tr.feed(&ev(i as u64, 3, k));
        }
        let v = tr.decided(3000).unwrap();
        assert!(v.passed);
        assert_eq!(v.facts.wakes, 1);
        assert_eq!(v.facts.ms, Some(3000));
    }

    #[test]
    fn a_time_limit_decides_on_the_clock() {
        let mut a = args(10);
        a.within = Some(Dur(Duration::from_secs(60)));
        let tr = RecoveryTracker::new("d1", a, 1000);
        assert_eq!(tr.deadline_ms(), Some(61_000));
        assert!(tr.decided(60_999).is_none());
        let v = tr.decided(61_000).unwrap();
        assert!(
            v.text.contains("no cloud session within 1m after 'crash'"),
            "{}",
            v.text
        );
    }

    /// `exact_loss`: the way back must match what the cache fault did.
    #[test]
    fn exact_loss_wants_a_handshake_where_the_session_was_lost_and_none_elsewhere() {
        let exact = RecoveryArgs {
            exact_loss: true,
            ..args(4)
        };
        let run = |lost: bool, via: ConnectVia| {
            let fate = Fate {
                node: Some(2),
                lost: Some(lost),
                how: "with node 2".into(),
            };
            let mut tr = RecoveryTracker::new("d1", exact.clone(), 0).with_fate(fate);
            let mut evs = vec![ev(1, 1, wake())];
            if via == ConnectVia::Handshake {
                evs.push(ev(2, 2, EventKind::CloudHandshake { session: "n".into() }));
            }
            evs.extend([ev(3, 3, connected(via)), ev(4, 4, tx(40))]);
            for e in &evs {
                tr.feed(e);
            }
            tr.decided(5).expect("decided")
        };
        let v = run(true, ConnectVia::Handshake);
        assert!(v.passed && v.text.contains("lost with node 2"), "{}", v.text);
        assert_eq!((v.facts.node, v.facts.lost), (Some(2), Some(true)));
        let v = run(false, ConnectVia::Resume);
        assert!(v.passed && v.text.contains("was kept"), "{}", v.text);
        // The negative controls: a kept session must not need a handshake,
        // and a lost one cannot come back by resuming.
        let v = run(false, ConnectVia::Handshake);
        assert!(
            !v.passed && v.text.contains("was not lost, yet it did a full handshake"),
            "{}",
            v.text
        );
        let v = run(true, ConnectVia::Resume);
        assert!(
            !v.passed && v.text.contains("yet it came back by a session resume"),
            "{}",
            v.text
        );
        // Without exact_loss the same handshake is fine.
        let mut tr = RecoveryTracker::new("d1", args(4), 0);
        for e in [
            ev(1, 1, wake()),
            ev(2, 2, EventKind::CloudHandshake { session: "n".into() }),
            ev(3, 3, connected(ConnectVia::Handshake)),
            ev(4, 4, tx(40)),
        ] {
            tr.feed(&e);
        }
        assert!(tr.decided(5).unwrap().passed);
    }
}
