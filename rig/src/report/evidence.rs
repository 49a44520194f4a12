//! What the reports need of a run beyond its summary, gathered in one
//! streaming pass over the timeline once the summary is known: the drawn
//! devices' tracks, the bench-wide marks, the fleet view, and the console
//! lines before each failed check. What it keeps grows with the devices
//! drawn or quoted and with the cells, not with plan time, so a fleet's day
//! or a week's soak renders in bounded memory (`rig report` reads the
//! journal; `rig run` reads its own after every cell).

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::fleet::{FleetFold, FleetStats};
use super::summary::Summary;
use crate::timeline::query::{Cycle, WakeCycles};
use crate::timeline::{Event, EventKind};

/// Console lines kept before a failed check (the most any report quotes).
pub const TAIL: usize = 15;

/// What a device did during a cell, for drawing.
#[derive(Default, Debug)]
pub struct Track {
    /// (from, to) in cell ms.
    pub powered: Vec<(u64, u64)>,
    pub awake: Vec<(u64, u64)>,
    pub handshakes: Vec<u64>,
    pub resumes: Vec<u64>,
    pub unknown: Vec<u64>,
    /// (t, cumulative bytes) at each datagram.
    pub bytes: Vec<(u64, u64)>,
}

/// Bench-wide marks: plan marks and cache operations.
#[derive(Debug)]
pub struct Mark {
    pub t: u64,
    pub label: String,
    pub kind: &'static str,
}

/// One cell's evidence.
#[derive(Debug, Default)]
pub struct CellEvidence {
    /// Tracks of the devices the sign-off draws.
    pub tracks: BTreeMap<String, Track>,
    pub marks: Vec<Mark>,
    /// The cell's last event time (at least 1).
    pub end: u64,
    pub fleet: Option<FleetStats>,
}

/// Everything the reports render besides the summary.
#[derive(Debug, Default)]
pub struct Evidence {
    pub cells: BTreeMap<u32, CellEvidence>,
    /// Wall time of the run's last event.
    pub last_wall: Option<time::OffsetDateTime>,
    /// (cell, device, before seq) → the device's last console lines in the
    /// cell before that event, with their cell times.
    tails: HashMap<(u32, String, u64), Vec<(u64, String)>>,
}

impl Evidence {
    /// Gathers the evidence for `summary` from events in memory.
    pub fn of(summary: &Summary, events: &[Event]) -> Evidence {
        let mut g = Gather::new(summary);
        for e in events {
            g.feed(e);
        }
        g.finish(summary)
    }

    /// The last `n` console lines of `device` in `cell` before event
    /// `before`, oldest first: as `query::console_tail` gives, for the
    /// failed checks the gathering was asked about (and nothing otherwise).
    pub fn console_tail(&self, cell: u32, device: &str, before: u64, n: usize) -> Vec<(u64, String)> {
        let Some(lines) = self.tails.get(&(cell, device.to_owned(), before)) else {
            return Vec::new();
        };
        lines[lines.len().saturating_sub(n)..].to_vec()
    }
}

struct CellFold {
    view: ViewFold,
    fleet: Option<FleetFold>,
}

/// Which journal lines [`Gather`] and the console logs need: what any
/// device's console log or the fleet view shows, checks, device-less
/// events, and every event of the devices drawn or quoted. The rest (a
/// fleet's wakes, resumes, publishes) is not parsed at all.
#[derive(Debug, Clone)]
pub struct Filter {
    devices: std::collections::HashSet<String>,
    traffic: bool,
}

impl Filter {
    pub fn keep(&self, kind: &str, device: Option<&str>) -> bool {
        let Some(d) = device else { return true };
        match kind {
            "console.line" | "console.gap" | "power.on" | "power.off" | "reset.soft" | "device.reset"
            | "flash.done" | "cloud.handshake" | "check.pass" | "check.fail" => true,
            "cloud.exchange" | "cloud.rx" | "cloud.tx" if self.traffic => true,
            _ => self.devices.contains(d),
        }
    }
}

/// The one pass that builds [`Evidence`].
pub struct Gather {
    cells: BTreeMap<u32, CellFold>,
    last_wall: Option<time::OffsetDateTime>,
    /// Recent console lines of the devices with failed checks, per cell.
    rings: HashMap<(u32, String), VecDeque<(u64, String)>>,
    /// seq of a failed check → the (cell, device) rings to copy there.
    wanted_at: HashMap<u64, Vec<(u32, String)>>,
    tails: HashMap<(u32, String, u64), Vec<(u64, String)>>,
}

impl Gather {
    pub fn new(summary: &Summary) -> Gather {
        let mut cells = BTreeMap::new();
        let mut rings = HashMap::new();
        let mut wanted_at: HashMap<u64, Vec<(u32, String)>> = HashMap::new();
        for c in &summary.cells {
            let drawn = super::signoff::drawn_devices(c);
            cells.insert(
                c.index,
                CellFold {
                    view: ViewFold::new(c.index, &drawn),
                    fleet: FleetFold::new(c),
                },
            );
            for k in c.failed_checks() {
                if let Some(d) = &k.device {
                    rings.insert((c.index, d.clone()), VecDeque::new());
                    wanted_at.entry(k.seq).or_default().push((c.index, d.clone()));
                }
            }
        }
        Gather {
            cells,
            last_wall: None,
            rings,
            wanted_at,
            tails: HashMap::new(),
        }
    }

    /// The lines this gathering needs (see [`Filter`]).
    pub fn filter(&self) -> Filter {
        let mut devices: std::collections::HashSet<String> = self
            .cells
            .values()
            .flat_map(|c| c.view.tracks.keys().cloned())
            .collect();
        devices.extend(self.rings.keys().map(|(_, d)| d.clone()));
        Filter {
            devices,
            traffic: self.cells.values().any(|c| c.fleet.is_some()),
        }
    }

    pub fn feed(&mut self, e: &Event) {
        self.last_wall = Some(e.wall);
        if let Some(want) = self.wanted_at.remove(&e.seq) {
            for (cell, d) in want {
                let lines = self
                    .rings
                    .get(&(cell, d.clone()))
                    .map(|r| r.iter().cloned().collect())
                    .unwrap_or_default();
                self.tails.insert((cell, d, e.seq), lines);
            }
        }
        if let Some(d) = e.device.as_deref()
            && let Some(line) = e.kind.console_line()
            && let Some(ring) = self.rings.get_mut(&(e.cell, d.to_owned()))
        {
            if ring.len() == TAIL {
                ring.pop_front();
            }
            ring.push_back((e.t_ms, line.to_owned()));
        }
        if let Some(c) = self.cells.get_mut(&e.cell) {
            c.view.feed(e);
            if let Some(f) = c.fleet.as_mut() {
                f.feed(e);
            }
        }
    }

    pub fn finish(mut self, summary: &Summary) -> Evidence {
        // A check the journal does not reach (it was cut): its device's
        // lines up to the end.
        for (seq, want) in std::mem::take(&mut self.wanted_at) {
            for (cell, d) in want {
                let lines = self
                    .rings
                    .get(&(cell, d.clone()))
                    .map(|r| r.iter().cloned().collect())
                    .unwrap_or_default();
                self.tails.insert((cell, d, seq), lines);
            }
        }
        let mut cells = BTreeMap::new();
        for c in &summary.cells {
            let Some(fold) = self.cells.remove(&c.index) else {
                continue;
            };
            let mut ev = fold.view.finish();
            ev.fleet = fold.fleet.map(|f| f.finish(c));
            cells.insert(c.index, ev);
        }
        Evidence {
            cells,
            last_wall: self.last_wall,
            tails: self.tails,
        }
    }
}

fn close(open: &mut Option<u64>, t: u64, into: &mut Vec<(u64, u64)>) {
    if let Some(from) = open.take() {
        into.push((from, t));
    }
}

/// The drawn devices' tracks and the marks of one cell.
struct ViewFold {
    cell: u32,
    tracks: BTreeMap<String, Track>,
    marks: Vec<Mark>,
    power_on: BTreeMap<String, u64>,
    cycles: BTreeMap<String, WakeCycles>,
    end: u64,
}

impl ViewFold {
    fn new(cell: u32, drawn: &[String]) -> ViewFold {
        ViewFold {
            cell,
            tracks: drawn.iter().map(|d| (d.clone(), Track::default())).collect(),
            marks: Vec::new(),
            power_on: BTreeMap::new(),
            cycles: BTreeMap::new(),
            end: 0,
        }
    }

    fn feed(&mut self, e: &Event) {
        if e.cell != self.cell {
            return;
        }
        self.end = self.end.max(e.t_ms);
        let Some(d) = e.device.as_deref() else {
            let mark = match &e.kind {
                EventKind::PlanMark { name } => Some((format!("mark {name}"), "mark")),
                EventKind::CacheKill { .. } => Some(("cache killed".to_string(), "kill")),
                EventKind::CacheDied { .. } => Some(("cache died".to_string(), "kill")),
                EventKind::CacheStart { .. } => Some(("cache started".to_string(), "restore")),
                EventKind::CacheRestore { from, .. } => Some((format!("cache restored ({from})"), "restore")),
                EventKind::CachePause { .. } => Some(("cache paused".to_string(), "kill")),
                EventKind::CacheFlush { .. } => Some(("cache flushed".to_string(), "kill")),
                EventKind::CacheEvict { .. } => Some(("cache evicted".to_string(), "kill")),
                EventKind::CacheNodeKill(k) => Some((
                    match k.promoted {
                        Some(p) => format!("node {} killed, node {p} took over ({} lost)", k.node, k.lost),
                        None => format!("node {} killed ({} lost)", k.node, k.lost),
                    },
                    "kill",
                )),
                EventKind::CacheNodeStart(s) => Some((format!("node {} back ({})", s.node, s.from), "restore")),
                EventKind::CacheNodePause { node, .. } => Some((format!("node {node} paused"), "kill")),
                EventKind::NetworkFault { fault, ms, .. } => Some((
                    format!(
                        "network {fault} ({})",
                        crate::units::fmt_duration(std::time::Duration::from_millis(*ms))
                    ),
                    "kill",
                )),
                EventKind::NetworkHealed { fault, dropped, .. } => {
                    Some((format!("network {fault} healed ({dropped} dropped)"), "restore"))
                }
                // Bench-wide events that draw nothing on a timeline.
                EventKind::CellStart { .. }
                | EventKind::CellEnd { .. }
                | EventKind::RigFault { .. }
                | EventKind::CacheSnapshot { .. }
                | EventKind::CacheResume
                | EventKind::CacheError { .. }
                | EventKind::CacheCluster { .. }
                | EventKind::CacheNodeResume { .. }
                | EventKind::CloudConfig { .. }
                | EventKind::CloudProcess { .. }
                | EventKind::CloudLog { .. }
                | EventKind::PlanStep { .. }
                | EventKind::CheckPass { .. }
                | EventKind::CheckFail { .. } => None,
                // Device events without a device (a peer no device spoke from).
                EventKind::PowerOn { .. }
                | EventKind::PowerOff { .. }
                | EventKind::ResetSoft
                | EventKind::FlashStart { .. }
                | EventKind::FlashDone { .. }
                | EventKind::ConsoleLine { .. }
                | EventKind::ConsoleGap { .. }
                | EventKind::DeviceBoot
                | EventKind::DeviceReset { .. }
                | EventKind::DeviceWake { .. }
                | EventKind::DeviceSleep { .. }
                | EventKind::CloudHandshake { .. }
                | EventKind::CloudResumed { .. }
                | EventKind::CloudConnected { .. }
                | EventKind::CloudResumeUnknown { .. }
                | EventKind::CloudPublish { .. }
                | EventKind::CloudRx { .. }
                | EventKind::CloudTx { .. }
                | EventKind::CloudExchange { .. }
                | EventKind::CloudInvalid { .. }
                | EventKind::CloudReplayAccepted { .. } => None,
            };
            if let Some((label, kind)) = mark {
                self.marks.push(Mark { t: e.t_ms, label, kind });
            }
            return;
        };
        let Some(tr) = self.tracks.get_mut(d) else { return };
        // Awake windows are wake cycles, counted as everywhere else.
        match self.cycles.entry(d.to_owned()).or_default().feed(e) {
            Some(Cycle::Slept { from, to } | Cycle::Cut { from, to }) => tr.awake.push((from, to)),
            Some(Cycle::Woke) | None => {}
        }
        match &e.kind {
            EventKind::PowerOn { .. } => {
                self.power_on.insert(d.to_owned(), e.t_ms);
            }
            EventKind::PowerOff { .. } => {
                let mut open = self.power_on.remove(d);
                close(&mut open, e.t_ms, &mut tr.powered);
            }
            EventKind::CloudHandshake { .. } => tr.handshakes.push(e.t_ms),
            EventKind::CloudResumed { .. } => tr.resumes.push(e.t_ms),
            EventKind::CloudResumeUnknown { resume, .. } => {
                if *resume {
                    tr.unknown.push(e.t_ms);
                }
            }
            EventKind::CloudRx { bytes, .. } | EventKind::CloudTx { bytes, .. } => {
                let total = tr.bytes.last().map_or(0, |(_, b)| *b) + bytes;
                tr.bytes.push((e.t_ms, total));
            }
            EventKind::CloudExchange { rx, tx, .. } => {
                let total = tr.bytes.last().map_or(0, |(_, b)| *b) + rx + tx;
                tr.bytes.push((e.t_ms, total));
            }
            // Drawn from the cycles above, or not drawn.
            EventKind::ConsoleLine { .. }
            | EventKind::DeviceWake { .. }
            | EventKind::DeviceSleep { .. }
            | EventKind::CellStart { .. }
            | EventKind::CellEnd { .. }
            | EventKind::RigFault { .. }
            | EventKind::ResetSoft
            | EventKind::FlashStart { .. }
            | EventKind::FlashDone { .. }
            | EventKind::ConsoleGap { .. }
            | EventKind::DeviceBoot
            | EventKind::DeviceReset { .. }
            | EventKind::CloudConfig { .. }
            | EventKind::CloudConnected { .. }
            | EventKind::CloudPublish { .. }
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
            | EventKind::CheckFail { .. } => {}
        }
    }

    fn finish(mut self) -> CellEvidence {
        let end = self.end;
        for (d, from) in std::mem::take(&mut self.power_on) {
            if let Some(tr) = self.tracks.get_mut(&d) {
                tr.powered.push((from, end));
            }
        }
        for (d, c) in std::mem::take(&mut self.cycles) {
            if let (Some(from), Some(tr)) = (c.awake_since(), self.tracks.get_mut(&d)) {
                tr.awake.push((from, end));
            }
        }
        CellEvidence {
            tracks: self.tracks,
            marks: self.marks,
            end: end.max(1),
            fleet: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{CellStart, Header, Source};

    fn ev(seq: u64, cell: u32, t: u64, device: Option<&str>, kind: EventKind) -> Event {
        let mut e = Event::at(seq, t, device.unwrap_or("-"), Source::Console, kind);
        e.cell = cell;
        e.device = device.map(str::to_owned);
        e
    }

    fn line(s: &str) -> EventKind {
        EventKind::ConsoleLine {
            line: s.into(),
            partial: false,
        }
    }

    fn start() -> EventKind {
        EventKind::CellStart(Box::new(CellStart {
            plan: "p".into(),
            plan_path: "p.yaml".into(),
            plan_sha256: "00".into(),
            name: "c".into(),
            vars: Default::default(),
            expect_failure: false,
            seed: 1,
            bench: "sim".into(),
            clock: "virtual".into(),
        }))
    }

    fn fail(check: &str) -> EventKind {
        EventKind::CheckFail {
            step: 1,
            check: check.into(),
            message: "m".into(),
            facts: None,
        }
    }

    /// The console lines quoted for a failed check are the device's last
    /// ones in its cell before the check: not another cell's, not another
    /// device's, not those after it.
    #[test]
    fn a_failed_checks_console_tail_is_its_devices_last_lines_of_the_cell_before_it() {
        let evs = vec![
            ev(0, 0, 0, None, start()),
            ev(1, 0, 1, Some("a"), line("old cell")),
            ev(2, 1, 0, None, start()),
            ev(3, 1, 1, Some("a"), line("one")),
            ev(4, 1, 2, Some("b"), line("other device")),
            ev(5, 1, 3, Some("a"), line("two")),
            ev(6, 1, 4, Some("a"), line("three")),
            ev(7, 1, 5, Some("a"), fail("x")),
            ev(8, 1, 6, Some("a"), line("after")),
        ];
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
        let summary = super::super::summarize(&header, &evs);
        let ev = Evidence::of(&summary, &evs);
        assert_eq!(
            ev.console_tail(1, "a", 7, 2),
            vec![(3, "two".to_string()), (4, "three".to_string())]
        );
        assert_eq!(ev.console_tail(1, "a", 7, 10).len(), 3);
        assert!(ev.console_tail(1, "b", 7, 10).is_empty(), "b failed nothing");
        // Only the failing device and the sample are drawn; all are counted.
        let cell = &ev.cells[&1];
        assert!(cell.tracks.contains_key("a"));
    }
}
