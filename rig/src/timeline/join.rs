//! The journals of a fleet run's slices read as one timeline: a streaming
//! k-way merge in plan-time order, so joining N slices holds one line per
//! slice in memory, not the fleet's day.
//!
//! Every slice journaled its own devices and the same bench-wide events
//! (cell starts, plan steps, marks, cache operations: the plan ran the same
//! way on every slice). The join keeps every device's events from every
//! slice and the bench-wide ones of the first slice, plus what any slice
//! says went wrong on its own (a rig fault, a failed bench-wide check such
//! as a plan timeout). Lines are ordered by (cell, plan time), a slice's
//! own order kept among equals and the lower slice first. A joined event's
//! `seq` is [`joined_seq`] of its slice's: unique, the same whatever a
//! reader filters, and known without reading the other slices (so a
//! slice's summary joins with the others' by rewriting its numbers).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::store::{EventLines, kind_and_device, sort_key};

use super::{Event, Header, ReadError};

/// The folder of a run folder that holds its slices, one run folder each
/// (`slices/1`, `slices/2`, …), when `rig run --jobs N` ran them side by side.
pub const SLICES: &str = "slices";

/// The journals of a run folder's slices in slice order; empty for a run
/// that was not sliced.
pub fn slices_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir.join(SLICES))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let k = e.file_name().to_str()?.parse().ok()?;
            Some((k, super::journal_in(&e.path())))
        })
        .filter(|(_, j)| j.exists())
        .collect();
    found.sort();
    found.into_iter().map(|(_, j)| j).collect()
}

/// The `seq` in a join of `n` slices of the event numbered `seq` in slice
/// `index` (from 0).
pub fn joined_seq(seq: u64, index: usize, n: usize) -> u64 {
    seq * n as u64 + index as u64
}

/// An event of a slice with where it sorts.
struct Item {
    cell: u32,
    t_ms: u64,
    ev: Event,
}

/// Events a slice's reader hands over at a time.
const BATCH: usize = 1024;

/// What a slice's reader also hands each of its events to, on its thread
/// (a slice's own console logs), before they are merged.
pub trait Tap: Send {
    fn event(&mut self, e: &Event);
    /// The slice's last event was read.
    fn end(&mut self);
}

/// Reads the slices' journals as one; `keep(cell, kind, device)` says which
/// lines are parsed and fed to `f`. Each slice is read and parsed on a
/// thread of its own (that is where the time goes); the merge is this
/// thread's. Returns the first slice's header.
pub fn stream(
    journals: &[PathBuf],
    keep: impl Fn(u32, &str, Option<&str>) -> bool + Sync,
    f: impl FnMut(Event),
) -> Result<Header, ReadError> {
    stream_tapped(journals, keep, Vec::new(), f)
}

/// [`stream`], each slice's events also given to its tap (`taps[i]` for
/// slice `i`, if there is one).
pub fn stream_tapped(
    journals: &[PathBuf],
    keep: impl Fn(u32, &str, Option<&str>) -> bool + Sync,
    mut taps: Vec<Box<dyn Tap + '_>>,
    mut f: impl FnMut(Event),
) -> Result<Header, ReadError> {
    let mut readers = Vec::with_capacity(journals.len());
    let mut header = None;
    for p in journals {
        let (h, lines) = EventLines::open(p)?;
        header.get_or_insert(h);
        readers.push(lines);
    }
    let Some(header) = header else {
        return Err(ReadError::Parse {
            path: "(no journal)".into(),
            line: 0,
            message: "a join needs at least one slice".into(),
        });
    };
    let n = readers.len();
    let keep = &keep;
    std::thread::scope(|s| {
        let mut feeds = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        taps.resize_with(n.max(taps.len()), || Box::new(NoTap));
        for ((i, r), mut tap) in readers.into_iter().enumerate().zip(taps) {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(4);
            workers.push(s.spawn(move || {
                let r = read_slice(r, i, n, keep, &mut *tap, &tx);
                tap.end();
                r
            }));
            feeds.push((rx, std::collections::VecDeque::<Item>::new()));
        }
        // The next item of slice i, refilling its queue from its reader.
        let next = |feeds: &mut Vec<(std::sync::mpsc::Receiver<Vec<Item>>, std::collections::VecDeque<Item>)>,
                    i: usize|
         -> Option<Item> {
            let (rx, q) = &mut feeds[i];
            if q.is_empty() {
                q.extend(rx.recv().ok()?);
            }
            q.pop_front()
        };
        let mut heads: Vec<Option<Item>> = Vec::with_capacity(n);
        let mut order = BinaryHeap::new();
        for i in 0..n {
            let h = next(&mut feeds, i);
            if let Some(h) = &h {
                order.push(Reverse((h.cell, h.t_ms, i)));
            }
            heads.push(h);
        }
        while let Some(Reverse((_, _, i))) = order.pop() {
            let head = heads[i].take().expect("a slice in the order has a head");
            f(head.ev);
            let h = next(&mut feeds, i);
            if let Some(h) = &h {
                order.push(Reverse((h.cell, h.t_ms, i)));
            }
            heads[i] = h;
        }
        drop(feeds);
        for w in workers {
            w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        }
        Ok(header)
    })
}

/// Reads slice `i` of `n`: the events of its lines that belong in the join
/// and that `keep` wants, renumbered, in batches to `tx`.
fn read_slice<R: BufRead>(
    mut r: EventLines<R>,
    i: usize,
    n: usize,
    keep: &(impl Fn(u32, &str, Option<&str>) -> bool + Sync),
    tap: &mut dyn Tap,
    tx: &std::sync::mpsc::SyncSender<Vec<Item>>,
) -> Result<(), ReadError> {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(line) = r.next_line()? {
        let seen = kind_and_device(&line);
        if i > 0 && seen.is_some_and(|(kind, device)| !its_own(kind, device)) {
            continue;
        }
        // Placed and filtered from the line as the rig writes it; any other
        // line is read in full first.
        let ev = match (sort_key(&line), seen) {
            (Some((_, cell, _)), Some((kind, device))) => {
                if !keep(cell, kind, device) {
                    continue;
                }
                r.parse(&line)?
            }
            _ => match r.parse(&line)? {
                Some(ev) if i > 0 && ev.device.is_none() && !slice_says(&ev.kind) => continue,
                Some(ev) if !keep(ev.cell, ev.kind.name(), ev.device.as_deref()) => continue,
                ev => ev,
            },
        };
        let Some(mut ev) = ev else { break };
        ev.seq = joined_seq(ev.seq, i, n);
        tap.event(&ev);
        batch.push(Item {
            cell: ev.cell,
            t_ms: ev.t_ms,
            ev,
        });
        if batch.len() == BATCH
            && tx
                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            // The merge stopped reading.
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok(())
}

impl<T: Tap + ?Sized> Tap for &mut T {
    fn event(&mut self, e: &Event) {
        (**self).event(e);
    }
    fn end(&mut self) {
        (**self).end();
    }
}

struct NoTap;

impl Tap for NoTap {
    fn event(&mut self, _: &Event) {}
    fn end(&mut self) {}
}

/// Whether a line of a slice other than the first is its own: a device's
/// event, or what went wrong on that slice alone.
fn its_own(kind: &str, device: Option<&str>) -> bool {
    device.is_some() || matches!(kind, "rig.fault" | "check.fail")
}

fn slice_says(kind: &super::EventKind) -> bool {
    matches!(
        kind,
        super::EventKind::RigFault { .. } | super::EventKind::CheckFail { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::{sort_key, stream};

    const WALL: &str = "2026-12-07T08:00:00Z";

    fn journal(dir: &std::path::Path, name: &str, lines: &[String]) -> std::path::PathBuf {
        let header = format!(
            r#"{{"format":"rig.events","version":2,"run_id":"{name}","rig_version":"0","seed":1,"bench":"b","plans":[],"started":"{WALL}","shard":"{name}/2"}}"#
        );
        let p = dir.join(name);
        std::fs::write(&p, format!("{header}\n{}\n", lines.join("\n"))).unwrap();
        p
    }

    fn line(seq: u64, t: u64, device: Option<&str>, kind: &str) -> String {
        let device = device.map(|d| format!(r#""device":"{d}","#)).unwrap_or_default();
        let rest = match kind {
            "check.fail" => r#","step":3,"check":"plan timeout","message":"timed out""#,
            "plan.mark" => r#","name":"crash""#,
            _ => r#","reason":"rtc""#,
        };
        format!(
            r#"{{"seq":{seq},"cell":0,"t_ms":{t},"wall":"{WALL}",{device}"source":"runner","kind":"{kind}"{rest}}}"#
        )
    }

    /// The first slice's bench-wide events once, every slice's devices, a
    /// failure of any slice, in plan-time order, each with its own number.
    #[test]
    fn a_join_keeps_each_slices_own_events_in_plan_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let one = journal(
            dir.path(),
            "1",
            &[
                line(0, 0, None, "plan.mark"),
                line(1, 10, Some("a"), "device.wake"),
                line(2, 30, Some("a"), "device.wake"),
            ],
        );
        let two = journal(
            dir.path(),
            "2",
            &[
                line(0, 0, None, "plan.mark"),
                line(1, 10, Some("b"), "device.wake"),
                line(2, 20, Some("b"), "device.wake"),
                line(3, 40, None, "check.fail"),
            ],
        );
        let mut seen = Vec::new();
        let h = stream(
            &[one.clone(), two.clone()],
            |_, _, _| true,
            |e| seen.push((e.t_ms, e.device.clone(), e.kind.name(), e.seq)),
        )
        .unwrap();
        assert_eq!(h.run_id, "1");
        let a = |s: &str| Some(s.to_owned());
        assert_eq!(
            seen,
            vec![
                (0, None, "plan.mark", 0),
                (10, a("a"), "device.wake", 2),
                (10, a("b"), "device.wake", 3),
                (20, a("b"), "device.wake", 5),
                (30, a("a"), "device.wake", 4),
                (40, None, "check.fail", 7),
            ]
        );
        // What `keep` refuses is not parsed nor fed; the numbers stay.
        let mut kept = Vec::new();
        stream(&[one, two], |_, _, d| d == Some("b"), |e| kept.push(e.seq)).unwrap();
        assert_eq!(kept, vec![3, 5]);
    }

    #[test]
    fn the_sort_key_is_read_from_the_writers_shape_only() {
        assert_eq!(
            sort_key(r#"{"seq":12,"cell":3,"t_ms":4567,"wall":"x","source":"runner","kind":"plan.mark"}"#),
            Some((12, 3, 4567))
        );
        // Another field order, a number that does not end, or a cell out
        // of range: the line is parsed in full instead.
        assert_eq!(sort_key(r#"{"cell":3,"seq":12,"t_ms":4567,"wall":"x"}"#), None);
        assert_eq!(sort_key(r#"{"seq":12,"cell":3,"t_ms":4567"#), None);
        assert_eq!(
            sort_key(r#"{"seq":12,"cell":99999999999,"t_ms":4567,"wall":"x"}"#),
            None
        );
        assert_eq!(sort_key(r#"{"seq":,"cell":3,"t_ms":4567,"wall":"x"}"#), None);
    }
}
