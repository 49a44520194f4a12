//! A virtual-clock run's matrix cells side by side, one thread per core.
//!
//! Each cell is independent: its own runtime and virtual clock, its own
//! world (cloud, cache, boards) and the run's seed. What it records goes to
//! a timeline of its own, journaled in `cell-K/cell-events.jsonl`. As the
//! cells finish, in cell order, each one's events are copied into the run's
//! timeline ([`Timeline::import`]) with the seqs they would have had one
//! after another, its cell file is removed and the reports are brought up
//! to date: the run's journal, summary and reports are those of the cells
//! run in turn, but for wall-clock times.
//!
//! Crash safety: the run's journal holds the cells copied so far, then the
//! `cell.start` of the next one (the run writes it when it has copied the
//! cell before, as if that cell had begun then), so a run cut short always
//! ends in an unfinished cell: no verdict, as one after another. After a
//! SIGKILL, a cell that was still running or waiting for an earlier one
//! left its events in its `cell-events.jsonl`. A Ctrl-C stops every running
//! cell (each runs its teardown and safe power state), starts no new one,
//! and the cells that ran are copied in, the interrupted ones marked so.
//!
//! Only a virtual-clock bench: its boards are simulated and share nothing
//! but the machine. A real-clock bench drives hardware that two cells
//! cannot share, and its timing would suffer from a busy machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Context as _;

use super::{Quiet, RETAINED_EVENTS, Reports, RunConfig, cell_dir, cell_start, run_cell, runtime};
use crate::bench::Clock;
use crate::plan::{Cell, Plan};
use crate::timeline::{CellOutcome, Event, EventKind, Flush, Header, Source, Timeline};

/// A cell's own journal until it is copied into the run's.
pub const CELL_JOURNAL: &str = "cell-events.jsonl";

/// How many cells `cfg` runs at once: 1 but on a virtual-clock bench with
/// more than one cell, and never in a slice run side by side (the slices
/// use the cores).
pub(super) fn jobs(cfg: &RunConfig<'_>, cells: usize) -> usize {
    if cfg.bench.clock != Clock::Virtual || cfg.reports != Reports::All {
        return 1;
    }
    cfg.cell_jobs.min(cells).max(1)
}

/// Runs `cells` on `jobs` threads; in cell order, this thread shows each
/// cell's start and calls `done(index)` once its events are in `timeline`.
/// Stops starting cells after an interrupted or failed one, or an error of
/// `done`.
pub(super) fn run_side_by_side(
    cfg: &RunConfig<'_>,
    cells: &[(&Plan, &Cell)],
    jobs: usize,
    header: &Header,
    dir: &Path,
    timeline: &Timeline,
    mut done: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, anyhow::Result<(CellOutcome, PathBuf)>)>();
    // When each cell was taken up by a thread: the wall time its
    // `cell.start` in the run's journal shows.
    let began: Vec<std::sync::OnceLock<time::OffsetDateTime>> = cells.iter().map(|_| Default::default()).collect();
    // The cell the run's journal shows as begun (see the module doc).
    let begin = |i: usize| {
        let (plan, cell) = cells[i];
        timeline.import(Event {
            seq: 0,
            cell: i as u32,
            t_ms: 0,
            wall: *began[i].get_or_init(time::OffsetDateTime::now_utc),
            device: None,
            source: Source::Runner,
            kind: cell_start(cfg, plan, cell),
        });
        timeline.flush();
    };
    begin(0);
    // The cells `begin` has shown: 0..shown.
    let mut shown = 1usize;
    std::thread::scope(|s| {
        let mut started = Ok(());
        for j in 0..jobs {
            let (tx, next, stop, began) = (tx.clone(), &next, &stop, &began);
            let spawned = std::thread::Builder::new()
                .name(format!("cell-job-{}", j + 1))
                .spawn_scoped(s, move || {
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&(plan, cell)) = cells.get(i) else { break };
                        began[i].get_or_init(time::OffsetDateTime::now_utc);
                        let r = run_one(cfg, plan, cell, i, header, dir);
                        // As one after another: an interrupted cell is the
                        // last (a faulted one is not).
                        if matches!(r, Ok((CellOutcome::Interrupted, _)) | Err(_)) {
                            stop.store(true, Ordering::SeqCst);
                        }
                        if tx.send((i, r)).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                stop.store(true, Ordering::SeqCst);
                started = Err(anyhow::anyhow!("cannot start a thread for matrix cells: {e}"));
                break;
            }
        }
        drop(tx);
        // Cells finish in any order; they are copied in in cell order.
        let mut finished = BTreeMap::new();
        let mut want = 0usize;
        let mut result = started;
        for (i, r) in rx {
            finished.insert(i, r);
            while let Some(r) = finished.remove(&want) {
                want += 1;
                if result.is_err() {
                    continue;
                }
                let (plan, cell) = cells[want - 1];
                cfg.progress.cell_start(want, cells.len(), &plan.name, &cell.name);
                if shown < want {
                    begin(want - 1);
                    shown = want;
                }
                result = r
                    .with_context(|| format!("cell {want} of {}", cells.len()))
                    .and_then(|(_, journal)| import(timeline, &journal))
                    .and_then(|()| done(want - 1));
                if result.is_err() {
                    stop.store(true, Ordering::SeqCst);
                } else if want < cells.len() && !stop.load(Ordering::SeqCst) {
                    begin(want);
                    shown = want + 1;
                }
            }
        }
        result
    })
}

/// One cell on its own runtime and timeline; its outcome and journal.
fn run_one(
    cfg: &RunConfig<'_>,
    plan: &Plan,
    cell: &Cell,
    index: usize,
    header: &Header,
    dir: &Path,
) -> anyhow::Result<(CellOutcome, PathBuf)> {
    let cell_dir = cell_dir(dir, index);
    crate::fsutil::ensure_dir(&cell_dir, 0o755).with_context(|| format!("cannot create {}", cell_dir.display()))?;
    let path = cell_dir.join(CELL_JOURNAL);
    let timeline = Timeline::create_with(&path, header, Flush::Batched, false)
        .with_context(|| format!("cannot create {}", path.display()))?
        .retain_last(RETAINED_EVENTS);
    timeline.set_console_lines(cfg.bench.journal.console_lines);
    // Steps of cells side by side would interleave: the run shows each
    // cell's line as it is copied in.
    let quiet = RunConfig {
        progress: &Quiet,
        ..*cfg
    };
    let rt = runtime(cfg.bench.clock)?;
    let outcome = rt.block_on(run_cell(&quiet, plan, cell, index as u32, &timeline, &cell_dir));
    drop(rt);
    timeline.flush();
    if let Some(e) = timeline.journal_error() {
        anyhow::bail!(
            "cannot write {}: {e}; the cell was stopped at the first failed write, after teardown and the safe power state, and no new cell started",
            path.display()
        );
    }
    Ok((outcome, path))
}

/// A cell's journal copied into the run's timeline but for its
/// `cell.start` (already there), then removed.
fn import(timeline: &Timeline, journal: &Path) -> anyhow::Result<()> {
    let mut first = true;
    crate::timeline::store::stream(journal, |ev| {
        let begun = first && matches!(ev.kind, EventKind::CellStart(_));
        first = false;
        if !begun {
            timeline.import(ev);
        }
    })
    .with_context(|| format!("cannot read {}", journal.display()))?;
    std::fs::remove_file(journal).with_context(|| format!("cannot remove {}", journal.display()))
}
