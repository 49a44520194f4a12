//! The fleet view of a cell: what a cloud team asks of a cache crash at
//! fleet scale, drawn from the timeline and the cell's recovery facts.
//!
//! - how fast the fleet came back: time from the mark until 50 %, 99 % and
//!   100 % of the devices had recovered, and wakes and time per firmware;
//! - the reconnect storm the cloud saw: full handshakes per minute after the
//!   cache came back, and its peak;
//! - what the outage cost: bytes per device per day before the mark against
//!   from the mark until the last device recovered (the incident's
//!   "runaway data consumption");
//! - the devices that never recovered, by id.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::CellSummary;
use crate::timeline::{Event, EventKind};

/// Minutes of handshakes per minute shown after the restore.
pub const STORM_MINUTES: usize = 60;
/// Devices that never recovered listed by id (the rest are counted).
pub const MAX_LISTED: usize = 200;

const DAY_MS: f64 = 86_400_000.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirmwareRow {
    pub fixture: String,
    pub devices: usize,
    pub recovered: usize,
    pub wakes_p50: Option<u32>,
    pub wakes_max: Option<u32>,
    pub ms_p50: Option<u64>,
    pub ms_max: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetStats {
    pub mark: String,
    pub devices: usize,
    pub recovered: usize,
    /// Milliseconds from the mark until 50 %, 99 % and 100 % had recovered
    /// (None: that share never did).
    pub t50_ms: Option<u64>,
    pub t99_ms: Option<u64>,
    pub t100_ms: Option<u64>,
    pub by_firmware: Vec<FirmwareRow>,
    /// When the cache came back after the mark (cell ms).
    pub restore_ms: Option<u64>,
    /// Full handshakes in each minute after the restore.
    pub handshakes_per_minute: Vec<u32>,
    /// (minute after the restore, handshakes in it) of the busiest minute.
    pub storm_peak: Option<(usize, u32)>,
    /// Bytes per device per day, both ways, before the mark.
    pub normal_bytes_per_day: Option<f64>,
    /// Bytes per device per day from the mark until the last recovery (or
    /// the cell's end).
    pub outage_bytes_per_day: Option<f64>,
    pub never_recovered: Vec<String>,
}

fn bytes_of(kind: &EventKind) -> u64 {
    match kind {
        EventKind::CloudRx { bytes, .. } | EventKind::CloudTx { bytes, .. } => *bytes,
        EventKind::CloudExchange { rx, tx, .. } => rx + tx,
        _ => 0,
    }
}

fn pct<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// The fleet view of `cell`, or None when it has no `expect_recovery`.
pub fn stats(cell: &CellSummary, events: &[Event]) -> Option<FleetStats> {
    let mut f = FleetFold::new(cell)?;
    for e in events {
        f.feed(e);
    }
    Some(f.finish(cell))
}

/// [`stats`] as a fold over the timeline: it keeps a few numbers per
/// device and per minute of the storm, never the events.
#[derive(Debug)]
pub struct FleetFold {
    cell: u32,
    mark_t: u64,
    /// When the last device recovered (cell ms), if all did.
    t100_end: Option<u64>,
    firmware: HashMap<String, String>,
    restore_ms: Option<u64>,
    /// Handshakes after the mark seen before the restore (the restore's
    /// time decides which of them count).
    pending: Vec<u64>,
    per_minute: Vec<u32>,
    end: u64,
    /// Traffic bytes at `end` exactly (a window ending at `end` excludes them).
    at_end: u64,
    first_t: Option<u64>,
    before_mark: u64,
    /// Traffic from the mark on, and the part of it before `t100_end`.
    after_mark: u64,
    in_outage: u64,
}

impl FleetFold {
    /// None when `cell` has no `expect_recovery` (no fleet view).
    pub fn new(cell: &CellSummary) -> Option<FleetFold> {
        let rec = cell.recovery();
        let first = rec.first()?.1;
        let mark_t = first.mark_t_ms;
        let times = recovery_times(&rec);
        let t100_end = (times.len() == rec.len()).then(|| mark_t + times.last().copied().unwrap_or(0).max(1));
        Some(FleetFold {
            cell: cell.index,
            mark_t,
            t100_end,
            firmware: HashMap::new(),
            restore_ms: None,
            pending: Vec::new(),
            per_minute: Vec::new(),
            end: 0,
            at_end: 0,
            first_t: None,
            before_mark: 0,
            after_mark: 0,
            in_outage: 0,
        })
    }

    fn count_handshake(&mut self, t: u64, r: u64) {
        if t >= r {
            let m = ((t - r) / 60_000) as usize;
            if m < STORM_MINUTES {
                self.per_minute[m] += 1;
            }
        }
    }

    pub fn feed(&mut self, e: &Event) {
        if e.cell != self.cell {
            return;
        }
        if e.t_ms > self.end {
            self.end = e.t_ms;
            self.at_end = 0;
        }
        match &e.kind {
            EventKind::FlashDone { fixture, .. } => {
                if let Some(d) = e.device.as_deref() {
                    self.firmware.insert(d.to_owned(), fixture.clone());
                }
            }
            EventKind::CacheRestore { .. } | EventKind::CacheStart { .. }
                if e.device.is_none() && e.t_ms >= self.mark_t && self.restore_ms.is_none() =>
            {
                let r = e.t_ms;
                self.restore_ms = Some(r);
                self.per_minute = vec![0u32; STORM_MINUTES];
                for t in std::mem::take(&mut self.pending) {
                    self.count_handshake(t, r);
                }
            }
            EventKind::CloudHandshake { .. } if e.device.is_some() => match self.restore_ms {
                Some(r) => self.count_handshake(e.t_ms, r),
                None if e.t_ms >= self.mark_t => self.pending.push(e.t_ms),
                None => {}
            },
            k => {
                let b = bytes_of(k);
                if b > 0 && e.device.is_some() {
                    self.first_t.get_or_insert(e.t_ms);
                    if e.t_ms < self.mark_t {
                        self.before_mark += b;
                    } else {
                        self.after_mark += b;
                        if self.t100_end.is_some_and(|end| e.t_ms < end) {
                            self.in_outage += b;
                        }
                    }
                    if e.t_ms == self.end {
                        self.at_end += b;
                    }
                }
            }
        }
    }

    pub fn finish(mut self, cell: &CellSummary) -> FleetStats {
        let rec = cell.recovery();
        let first = rec[0].1;
        let mark = first.mark.clone();
        let mark_t = self.mark_t;
        let n = rec.len();
        let times = recovery_times(&rec);
        let at_share = |share: f64| -> Option<u64> {
            let need = ((n as f64) * share).ceil() as usize;
            if need == 0 || times.len() < need {
                None
            } else {
                Some(times[need - 1])
            }
        };

        let mut groups: BTreeMap<&str, Vec<&crate::timeline::RecoveryFacts>> = BTreeMap::new();
        for (d, f) in &rec {
            groups
                .entry(self.firmware.get(*d).map_or("?", String::as_str))
                .or_default()
                .push(f);
        }
        let by_firmware = groups
            .into_iter()
            .map(|(fixture, fs)| {
                let mut wakes: Vec<u32> = fs.iter().filter(|f| f.recovered).map(|f| f.wakes).collect();
                let mut ms: Vec<u64> = fs.iter().filter(|f| f.recovered).filter_map(|f| f.ms).collect();
                wakes.sort_unstable();
                ms.sort_unstable();
                FirmwareRow {
                    fixture: fixture.to_owned(),
                    devices: fs.len(),
                    recovered: fs.iter().filter(|f| f.recovered).count(),
                    wakes_p50: pct(&wakes, 0.5),
                    wakes_max: wakes.last().copied(),
                    ms_p50: pct(&ms, 0.5),
                    ms_max: ms.last().copied(),
                }
            })
            .collect();

        let mut per_minute = std::mem::take(&mut self.per_minute);
        // Trailing quiet minutes say nothing.
        while per_minute.last() == Some(&0) && per_minute.len() > 1 {
            per_minute.pop();
        }
        let storm_peak = per_minute
            .iter()
            .enumerate()
            .max_by_key(|(i, h)| (**h, std::cmp::Reverse(*i)))
            .filter(|(_, h)| **h > 0)
            .map(|(i, h)| (i, *h));

        let t100 = at_share(1.0);
        let rate = |bytes: u64, from: u64, to: u64| -> Option<f64> {
            if to <= from || n == 0 {
                return None;
            }
            Some(bytes as f64 / n as f64 / ((to - from) as f64 / DAY_MS))
        };
        // The outage runs from the mark until the last recovery, or to the
        // end of the cell (whose last instant's traffic it excludes).
        let outage = match t100 {
            Some(t) => rate(self.in_outage, mark_t, (mark_t + t).max(mark_t + 1)),
            None if self.end > mark_t => rate(self.after_mark - self.at_end, mark_t, self.end),
            None => rate(self.after_mark, mark_t, mark_t + 1),
        };
        let never_recovered = rec
            .iter()
            .filter(|(_, f)| !f.recovered)
            .map(|(d, _)| (*d).to_owned())
            .collect();
        FleetStats {
            mark,
            devices: n,
            recovered: times.len(),
            t50_ms: at_share(0.5),
            t99_ms: at_share(0.99),
            t100_ms: t100,
            by_firmware,
            restore_ms: self.restore_ms,
            handshakes_per_minute: per_minute,
            storm_peak,
            normal_bytes_per_day: self.first_t.and_then(|f| rate(self.before_mark, f, mark_t)),
            outage_bytes_per_day: outage,
            never_recovered,
        }
    }
}

/// The recovered devices' times after the mark, sorted.
fn recovery_times(rec: &[(&str, &crate::timeline::RecoveryFacts)]) -> Vec<u64> {
    let mut times: Vec<u64> = rec.iter().filter_map(|(_, f)| f.ms.filter(|_| f.recovered)).collect();
    times.sort_unstable();
    times
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::summary::{CellVerdict, CheckRow};
    use crate::timeline::{ConnectVia, RecoveryFacts, Source};

    fn facts(recovered: bool, wakes: u32, ms: u64) -> RecoveryFacts {
        RecoveryFacts {
            mark: "crash".into(),
            mark_t_ms: 60_000,
            recovered,
            via: recovered.then_some(ConnectVia::Handshake),
            wakes,
            ms: recovered.then_some(ms),
            bytes: 100,
            handshakes: 1,
            unknown_resumes: 1,
            power_cycled: false,
            node: None,
            lost: None,
        }
    }

    fn cell(rows: Vec<(&str, RecoveryFacts)>) -> CellSummary {
        CellSummary {
            index: 0,
            plan: "p".into(),
            plan_path: String::new(),
            plan_sha256: String::new(),
            name: "default".into(),
            vars: Default::default(),
            expect_failure: false,
            outcome: None,
            verdict: CellVerdict::Passed,
            clock: "virtual".into(),
            plan_ms: 0,
            wall_ms: 0,
            devices: rows.iter().map(|(d, _)| (*d).to_owned()).collect(),
            fixtures: Vec::new(),
            faults: Vec::new(),
            checks: rows
                .into_iter()
                .map(|(d, f)| CheckRow {
                    step: 3,
                    check: "expect_recovery".into(),
                    device: Some(d.into()),
                    passed: f.recovered,
                    text: String::new(),
                    facts: Some(f),
                    t_ms: 0,
                    seq: 0,
                    wall_s: 0.0,
                })
                .collect(),
        }
    }

    fn flash(seq: u64, d: &str, fixture: &str) -> Event {
        Event::at(
            seq,
            0,
            d,
            Source::Flash,
            EventKind::FlashDone {
                fixture: fixture.into(),
                version: "v".into(),
                sha256: String::new(),
                ms: 0,
            },
        )
    }

    #[test]
    fn shares_storm_and_the_devices_that_never_recovered() {
        let c = cell(vec![
            ("a", facts(true, 1, 1_000)),
            ("b", facts(true, 2, 120_000)),
            ("c", facts(true, 3, 200_000)),
            ("d", facts(false, 4, 0)),
        ]);
        let mut evs = vec![
            flash(0, "a", "fw-1.2"),
            flash(1, "b", "fw-1.2"),
            flash(2, "c", "fw-1.2"),
            flash(3, "d", "fw-1.1"),
        ];
        let mut restore = Event::at(
            4,
            90_000,
            "x",
            Source::Cache,
            EventKind::CacheRestore {
                from: "empty".into(),
                sessions: 0,
                pid: None,
            },
        );
        restore.device = None;
        evs.push(restore);
        for (i, t) in [91_000u64, 95_000, 160_000].iter().enumerate() {
            evs.push(Event::at(
                5 + i as u64,
                *t,
                "a",
                Source::Cloud,
                EventKind::CloudHandshake { session: "s".into() },
            ));
        }
        let s = stats(&c, &evs).unwrap();
        assert_eq!((s.devices, s.recovered), (4, 3));
        assert_eq!(s.t50_ms, Some(120_000), "2 of 4 back at 2 min");
        assert_eq!(s.t99_ms, None, "the fourth never recovered");
        assert_eq!(s.t100_ms, None);
        assert_eq!(s.never_recovered, vec!["d".to_string()]);
        assert_eq!(s.restore_ms, Some(90_000));
        assert_eq!(s.handshakes_per_minute, vec![2, 1]);
        assert_eq!(s.storm_peak, Some((0, 2)));
        let fw: Vec<(&str, usize, usize)> = s
            .by_firmware
            .iter()
            .map(|r| (r.fixture.as_str(), r.devices, r.recovered))
            .collect();
        assert_eq!(fw, vec![("fw-1.1", 1, 0), ("fw-1.2", 3, 3)]);
        assert_eq!(s.by_firmware[1].wakes_max, Some(3));
        assert_eq!(s.by_firmware[1].wakes_p50, Some(2));
    }

    #[test]
    fn bytes_per_device_per_day_before_and_during_the_outage() {
        let c = cell(vec![("a", facts(true, 1, 60_000)), ("b", facts(true, 1, 60_000))]);
        let ex = |seq, t, b| {
            Event::at(
                seq,
                t,
                "a",
                Source::Cloud,
                EventKind::CloudExchange {
                    msg: "m".into(),
                    rx: b,
                    tx: 0,
                },
            )
        };
        // 200 bytes in the minute before the mark; 1,000 in the minute after.
        let evs = vec![ex(0, 0, 100), ex(1, 30_000, 100), ex(2, 70_000, 1_000)];
        let s = stats(&c, &evs).unwrap();
        let per_day = |b: f64| b / 2.0 * 1440.0;
        assert_eq!(s.normal_bytes_per_day, Some(per_day(200.0)));
        assert_eq!(s.outage_bytes_per_day, Some(per_day(1_000.0)));
    }

    #[test]
    fn a_cell_without_recovery_has_no_fleet_view() {
        assert!(stats(&cell(vec![]), &[]).is_none());
    }
}
