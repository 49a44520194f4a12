//! `expect`: counting events of a kind in a window, and the bounds.

use crate::timeline::{Event, EventTag};

use super::Verdict;

/// Window of an `expect`: from a mark (or the cell start) up to now.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Events with seq > this count (None: from the start of the cell).
    pub after_seq: Option<u64>,
    /// Only events at most this long after the mark: (mark time, ms).
    pub within_ms: Option<(u64, u64)>,
    /// Events with seq < this count (the step's start).
    pub until_seq: u64,
}

/// Counts events of one kind for one device (or device-less ones when
/// `device` is None) in a window, within one cell, fed one event at a time.
#[derive(Debug, Clone)]
pub struct Counter {
    pub cell: u32,
    pub device: Option<String>,
    pub tag: EventTag,
    pub window: Window,
    pub count: u64,
}

impl Counter {
    pub fn new(cell: u32, device: Option<&str>, tag: EventTag, window: Window) -> Counter {
        Counter {
            cell,
            device: device.map(str::to_owned),
            tag,
            window,
            count: 0,
        }
    }

    pub fn feed(&mut self, e: &Event) {
        let w = &self.window;
        let inside = e.cell == self.cell
            && w.after_seq.is_none_or(|s| e.seq > s)
            && e.seq < w.until_seq
            && w.within_ms.is_none_or(|(mark_t, within)| e.t_ms <= mark_t + within)
            && e.device.as_deref() == self.device.as_deref()
            && e.kind.tag() == self.tag;
        if inside {
            self.count += 1;
        }
    }
}

/// Counts `tag` events of `device` in `window` of `cell`.
pub fn count(events: &[Event], cell: u32, device: Option<&str>, tag: EventTag, w: Window) -> u64 {
    let mut c = Counter::new(cell, device, tag, w);
    for e in events {
        c.feed(e);
    }
    c.count
}

/// [`count`] for every device at once, in one pass over the events (a
/// pass per device made a fleet's `expect` quadratic): device → count, for
/// the devices that had any.
pub fn count_per_device(events: &[Event], cell: u32, tag: EventTag, w: Window) -> std::collections::HashMap<&str, u64> {
    let mut counts = std::collections::HashMap::new();
    // Events are in seq order: skip to the window's start by binary search.
    let start = w.after_seq.map_or(0, |s| events.partition_point(|e| e.seq <= s));
    for e in &events[start..] {
        if e.seq >= w.until_seq {
            break;
        }
        let Some(d) = e.device.as_deref() else { continue };
        if e.cell == cell && e.kind.tag() == tag && w.within_ms.is_none_or(|(mark_t, within)| e.t_ms <= mark_t + within)
        {
            *counts.entry(d).or_insert(0) += 1;
        }
    }
    counts
}

/// `expect`'s verdict for `who` having seen `seen` events; without bounds
/// it means "at least one".
pub fn verdict(who: &str, seen: u64, tag: EventTag, min: Option<u64>, max: Option<u64>, since: &str) -> Verdict {
    let min = if min.is_none() && max.is_none() { Some(1) } else { min };
    if let Some(lo) = min
        && seen < lo
    {
        return Verdict::Fail(format!("{who}: expected at least {lo} {tag} {since}, saw {seen}"));
    }
    if let Some(hi) = max
        && seen > hi
    {
        return Verdict::Fail(format!("{who}: expected at most {hi} {tag} {since}, saw {seen}"));
    }
    Verdict::Pass(format!("{seen} {tag} {since}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{ConnectVia, EventKind, Source};

    fn ev(seq: u64, t_s: u64, kind: EventKind) -> Event {
        Event::at(seq, t_s * 1000, "d1", Source::Cloud, kind)
    }

    fn connected(via: ConnectVia) -> EventKind {
        EventKind::CloudConnected {
            via,
            session: "s".into(),
        }
    }

    const CONNECTED: EventTag = EventTag::CloudConnected;

    #[test]
    fn expect_counts_in_window_and_reports_both_bounds() {
        let evs = vec![
            ev(0, 1, connected(ConnectVia::Handshake)),
            ev(1, 2, EventKind::PlanMark { name: "m".into() }),
            ev(2, 3, connected(ConnectVia::Resume)),
            ev(3, 100, connected(ConnectVia::Resume)),
        ];
        let all = Window {
            after_seq: None,
            within_ms: None,
            until_seq: 4,
        };
        assert_eq!(count(&evs, 0, Some("d1"), CONNECTED, all), 3);
        let after = Window {
            after_seq: Some(1),
            within_ms: Some((2000, 10_000)),
            until_seq: 4,
        };
        assert_eq!(count(&evs, 0, Some("d1"), CONNECTED, after), 1);
        assert_eq!(count(&evs, 1, Some("d1"), CONNECTED, all), 0, "other cell");
        assert_eq!(count_per_device(&evs, 0, CONNECTED, all).get("d1"), Some(&3));
        assert_eq!(count_per_device(&evs, 0, CONNECTED, after).get("d1"), Some(&1));
        assert!(count_per_device(&evs, 1, CONNECTED, all).is_empty(), "other cell");
        let fail = |v: Verdict| match v {
            Verdict::Fail(m) => m,
            Verdict::Pass(p) => panic!("passed: {p}"),
        };
        assert!(
            fail(verdict("d1", 2, EventTag::CloudResumed, Some(3), None, "since start"))
                .contains("expected at least 3 cloud.resumed since start, saw 2")
        );
        assert!(fail(verdict("d1", 1, CONNECTED, None, Some(0), "after 'm'")).contains("at most 0"));
        assert!(
            !verdict("d1", 0, CONNECTED, None, None, "s").passed(),
            "no bounds means at least one"
        );
        assert!(verdict("d1", 3, CONNECTED, Some(3), Some(3), "s").passed());
    }
}
