//! Runs validated plans on a bench: one run folder, one timeline, one cell
//! after another, each in a fresh runtime with a fresh world (on a
//! virtual-clock bench, cells side by side: [`cells`]).
//!
//! # Layout
//! - [`world`]: cache, cloud and device handles built from the bench.
//! - [`device`]: a device's drivers plus the events each action records.
//! - [`exec`]: step semantics and checks.
//! - [`cells`]: a virtual-clock run's cells side by side, one per core.
//! - [`slices`]: a virtual-clock fleet's devices as slices side by side.
//!
//! On a virtual-clock bench each cell runs on a single-threaded Tokio
//! runtime whose clock is paused: whenever every task is waiting, the clock
//! jumps to the next timer. Nothing else is random but the seeded RNGs, so a
//! seed reproduces a run, and a simulated day takes seconds.

pub mod cells;
pub mod device;
pub mod exec;
pub mod slices;
pub mod world;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use time::OffsetDateTime;

use crate::bench::{Bench, Clock};
use crate::fixture::Fixtures;
use crate::plan::{Cell, Plan};
use crate::report::{self, Summary};
use crate::timeline::{CellOutcome, EventKind, FORMAT, FORMAT_VERSION, Flush, Header, Source, Timeline};
use exec::{Exec, Stop};
use world::World;

pub use crate::plan::TEARDOWN_BUDGET;

/// What the user sees while a run progresses.
pub trait Progress: Sync {
    fn cell_start(&self, index: usize, total: usize, plan: &str, cell: &str);
    fn step(&self, n: usize, desc: &str, t_ms: u64);
    fn cell_end(&self, line: &str);
}

/// Shows nothing (tests, `rig report`).
pub struct Quiet;

impl Progress for Quiet {
    fn cell_start(&self, _: usize, _: usize, _: &str, _: &str) {}
    fn step(&self, _: usize, _: &str, _: u64) {}
    fn cell_end(&self, _: &str) {}
}

pub struct RunConfig<'a> {
    pub bench: &'a Bench,
    pub fixtures: &'a Fixtures,
    pub plans: &'a [Plan],
    pub seed: u64,
    /// Parent of the run folder (`reports/` by default).
    pub out: &'a Path,
    pub progress: &'a dyn Progress,
    /// The slice of the bench's fleet this run is (the bench is already cut).
    pub shard: Option<crate::bench::Shard>,
    /// The run folder's exact name under `out` (a slice's), instead of
    /// one made from the time and the plan.
    pub folder: Option<&'a str>,
    /// What this run renders itself.
    pub reports: Reports,
    /// Matrix cells run side by side on a virtual-clock bench (1: one
    /// after another). See [`cells`].
    pub cell_jobs: usize,
}

/// Which reports a run renders after each cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reports {
    /// Every report: summary, JUnit, sign-off, console logs.
    All,
    /// Only `summary.json`: a slice run side by side, whose console logs
    /// and sign-off come from the join of all slices.
    Summary,
}

pub struct RunResult {
    pub dir: PathBuf,
    pub summary: Summary,
}

/// Runs every cell of every plan. Errors are infrastructure failures of the
/// rig itself (cannot create the run folder, cannot start a runtime).
pub fn run(cfg: &RunConfig<'_>) -> anyhow::Result<RunResult> {
    let started = OffsetDateTime::now_utc();
    let dir = match cfg.folder {
        Some(name) => create_named_dir(cfg.out, name)?,
        None => create_run_dir(cfg.out, cfg.plans, started)?,
    };
    let header = Header {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        run_id: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rig_version: env!("CARGO_PKG_VERSION").into(),
        seed: cfg.seed,
        bench: cfg.bench.name.clone(),
        plans: cfg.plans.iter().map(|p| p.path.display().to_string()).collect(),
        started,
        shard: cfg.shard.map(|s| s.to_string()),
        console_lines: cfg.bench.journal.console_lines,
    };
    let events_path = dir.join(if cfg.bench.journal.compress {
        crate::timeline::store::COMPRESSED
    } else {
        "events.jsonl"
    });
    let flush = match cfg.bench.clock {
        Clock::Virtual => Flush::Batched,
        Clock::Real => Flush::EveryEvent,
    };
    // Checks read the cell's index and follow the live events, reports read
    // the journal: memory holds only the last events (and those a waiting
    // step has yet to see), whatever the plan's length.
    let timeline = Timeline::create_with(&events_path, &header, flush, cfg.bench.journal.compress)
        .with_context(|| format!("cannot create {}", events_path.display()))?
        .retain_last(RETAINED_EVENTS);
    timeline.set_console_lines(cfg.bench.journal.console_lines);
    // The summary is kept as the events are emitted (it is small); the
    // rest of the reports come from the journal after each cell.
    let summarizer = std::sync::Arc::new(std::sync::Mutex::new(report::summary::Summarizer::default()));
    let fed = std::sync::Arc::clone(&summarizer);
    timeline.observe(Box::new(move |e| fed.lock().unwrap_or_else(|p| p.into_inner()).feed(e)));
    let cells: Vec<(&Plan, &Cell)> = cfg
        .plans
        .iter()
        .flat_map(|p| p.cells.iter().map(move |c| (p, c)))
        .collect();
    let mut after = AfterCell {
        cfg,
        dir: &dir,
        header: &header,
        events_path: &events_path,
        timeline: &timeline,
        summarizer: &summarizer,
        total: cells.len(),
        last: None,
    };
    let jobs = cells::jobs(cfg, cells.len());
    if jobs > 1 {
        // Only the summary after each cell: the other reports read the
        // whole journal, and rendering them once per cell took the main
        // thread longer than the cells it waited for.
        cells::run_side_by_side(cfg, &cells, jobs, &header, &dir, &timeline, |index| {
            after.cell_done(index, Reports::Summary)
        })?;
        after.render(cfg.reports)?;
    } else {
        for (index, &(plan, cell)) in cells.iter().enumerate() {
            cfg.progress.cell_start(index + 1, cells.len(), &plan.name, &cell.name);
            let rt = runtime(cfg.bench.clock)?;
            let cell_dir = cell_dir(&dir, index);
            let outcome = rt.block_on(run_cell(cfg, plan, cell, index as u32, &timeline, &cell_dir));
            // Dropping the runtime cancels every task of the cell's world.
            drop(rt);
            after.cell_done(index, cfg.reports)?;
            if outcome == CellOutcome::Interrupted {
                break;
            }
        }
    }
    let last = after.last;
    if let Some(e) = timeline.journal_error() {
        anyhow::bail!("{} could not be written completely: {e}", events_path.display());
    }
    let summary = match last {
        Some(s) => s,
        None => report::write_from_journal(&dir, &events_path)
            .with_context(|| format!("cannot write reports in {}", dir.display()))?,
    };
    Ok(RunResult { dir, summary })
}

/// What follows each cell: its events on disk, the summary and the reports
/// brought up to date, the cell's line shown.
struct AfterCell<'a> {
    cfg: &'a RunConfig<'a>,
    dir: &'a Path,
    header: &'a Header,
    events_path: &'a Path,
    timeline: &'a Timeline,
    summarizer: &'a std::sync::Mutex<report::summary::Summarizer>,
    total: usize,
    last: Option<Summary>,
}

impl AfterCell<'_> {
    /// `reports` brought up to date after cell `index`.
    fn cell_done(&mut self, index: usize, reports: Reports) -> anyhow::Result<()> {
        let timeline = self.timeline;
        timeline.flush();
        if let Some(e) = timeline.journal_error() {
            // Teardown and the safe state ran; nothing more can be kept.
            anyhow::bail!(
                "cannot write {}: {e}; the run was stopped at the first failed write, after teardown and the safe power state",
                self.events_path.display()
            );
        }
        let rendering = std::time::Instant::now();
        self.render(reports)?;
        tracing::debug!(
            "{}: reports of cell {} of {} rendered in {:?}",
            self.dir.display(),
            index + 1,
            self.total,
            rendering.elapsed()
        );
        if let Some(c) = self.last.as_ref().and_then(|s| s.cells.last()) {
            self.cfg.progress.cell_end(&report::cell_line(c));
        }
        Ok(())
    }

    /// The summary as the cells so far left it, and `reports` from it.
    fn render(&mut self, reports: Reports) -> anyhow::Result<()> {
        let dir = self.dir;
        // From the journal, not the timeline in memory: what is
        // reported is what is on disk, in memory bounded by the devices.
        let (summary, last_wall) = {
            let s = self.summarizer.lock().unwrap_or_else(|p| p.into_inner());
            (s.summary(self.header), s.last_wall)
        };
        match reports {
            Reports::All => report::write_summarized(dir, self.header, &summary, last_wall, self.events_path)
                .map_err(anyhow::Error::from),
            Reports::Summary => report::write_summary(dir, &summary).map_err(anyhow::Error::from),
        }
        .with_context(|| format!("cannot write reports in {}", dir.display()))?;
        self.last = Some(summary);
        Ok(())
    }
}

/// A cell's own folder in the run folder (its world's files).
fn cell_dir(run: &Path, index: usize) -> PathBuf {
    run.join(format!("cell-{}", index + 1))
}

/// Events `rig run` keeps in memory besides those a waiting step has not
/// seen yet (what a debugger or a panic message can still show).
const RETAINED_EVENTS: usize = 4096;

fn runtime(clock: Clock) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all();
    if clock == Clock::Virtual {
        b.start_paused(true);
    }
    b.build().context("cannot start the async runtime")
}

fn create_run_dir(out: &Path, plans: &[Plan], started: OffsetDateTime) -> anyhow::Result<PathBuf> {
    // Not writable by others whatever the umask; an existing folder is checked
    // (a sticky one like /tmp is fine: run folders are created exclusively).
    if out.exists() {
        crate::fsutil::check_parent_dir(out)
    } else {
        crate::fsutil::ensure_dir(out, 0o755)
    }
    .with_context(|| format!("cannot use {} for run folders", out.display()))?;
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = started.format(fmt).unwrap_or_else(|_| "run".into());
    let name = match plans {
        // Validated as a safe name; kept to one path component regardless.
        [one] if crate::bench::is_safe_name(&one.name) => one.name.clone(),
        [_] => "plan".to_owned(),
        _ => format!("{}-plans", plans.len()),
    };
    for n in 0..1000 {
        let id = if n == 0 {
            format!("{stamp}-{name}")
        } else {
            format!("{stamp}-{name}-{n}")
        };
        let dir = out.join(&id);
        let made = {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new().mode(0o755).create(&dir)
        };
        match made {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    anyhow::bail!("cannot find a free run folder name in {}", out.display())
}

/// `out/name`, created exclusively: a slice's folder is never shared.
fn create_named_dir(out: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    anyhow::ensure!(crate::bench::is_safe_name(name), "`{name}` is not a folder name");
    let dir = out.join(name);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn fault(timeline: &Timeline, message: String) {
    tracing::error!("{message}");
    timeline.emit(None, Source::Runner, EventKind::RigFault { step: None, message });
}

/// The event a cell begins with.
fn cell_start(cfg: &RunConfig<'_>, plan: &Plan, cell: &Cell) -> EventKind {
    EventKind::CellStart(Box::new(crate::timeline::CellStart {
        plan: plan.name.clone(),
        plan_path: plan.path.display().to_string(),
        plan_sha256: plan.sha256.clone(),
        name: cell.name.clone(),
        vars: cell.vars.clone(),
        expect_failure: cell.expect_failure,
        seed: cfg.seed,
        bench: cfg.bench.name.clone(),
        clock: cfg.bench.clock.to_string(),
    }))
}

async fn run_cell(
    cfg: &RunConfig<'_>,
    plan: &Plan,
    cell: &Cell,
    index: u32,
    timeline: &Timeline,
    dir: &Path,
) -> CellOutcome {
    // Before anything can take time: a signal from here on is seen.
    let mut interrupt = crate::signals::Interrupt::new();
    timeline.begin_cell(index);
    timeline.emit(None, Source::Runner, cell_start(cfg, plan, cell));
    let end = |outcome| {
        timeline.emit(None, Source::Runner, EventKind::CellEnd { outcome });
        outcome
    };
    let world = match World::build(cfg.bench, cfg.seed, timeline, dir, cell.uses_durable()).await {
        Ok(w) => w,
        Err(e) => {
            fault(timeline, format!("cannot bring up bench `{}`: {e}", cfg.bench.name));
            return end(CellOutcome::Fault);
        }
    };
    let failed = world.enforce_safe_state().await;
    if !failed.is_empty() {
        for (d, e) in failed {
            fault(
                timeline,
                format!("{d}: cannot reach the safe power state at start: {e}"),
            );
        }
        world.shutdown().await;
        return end(CellOutcome::Fault);
    }

    let on_step = |n: usize, desc: &str| cfg.progress.step(n, desc, timeline.now_ms());
    let mut exec = Exec::new(&world, timeline, index, cell, &on_step);
    let body = {
        let run = async {
            exec.run_phase(&cell.setup, "setup").await?;
            exec.run_phase(&cell.steps, "steps").await
        };
        tokio::select! {
            biased;
            _ = interrupt.recv() => None,
            _ = timeline.journal_failed() => Some(Err(Stop::JournalFailed)),
            m = timeline.board_fault() => Some(Err(Stop::Fault(m))),
            r = run => Some(r),
        }
    };
    let mut outcome = match body {
        None => CellOutcome::Interrupted,
        Some(Ok(())) => CellOutcome::Completed,
        Some(Err(Stop::CheckFailed)) => CellOutcome::Stopped,
        Some(Err(Stop::Timeout)) => {
            // Said once, where it happened, as a failing check: a plan that
            // runs out of time has failed, and must say why.
            let (step, desc) = exec.timed_out_in().unwrap_or((0, "?".into()));
            timeline.emit(
                None,
                Source::Check,
                EventKind::CheckFail {
                    step,
                    check: "plan timeout".into(),
                    message: format!(
                        "timed out after {} in step {step} ({desc})",
                        crate::units::fmt_duration(cell.timeout)
                    ),
                    facts: None,
                },
            );
            CellOutcome::Timeout
        }
        Some(Err(Stop::Fault(m))) => {
            fault(timeline, m);
            CellOutcome::Fault
        }
        // Said once, by `run`, when the cell is over.
        Some(Err(Stop::JournalFailed)) => CellOutcome::Fault,
    };

    // Teardown always runs, with its own budget; a second Ctrl-C skips it
    // (the safe power state below is still restored).
    exec.set_budget(TEARDOWN_BUDGET);
    let teardown = {
        let run = exec.run_phase(&cell.teardown, "teardown");
        tokio::select! {
            biased;
            _ = interrupt.recv() => None,
            r = run => Some(r),
        }
    };
    match teardown {
        None => outcome = CellOutcome::Interrupted,
        Some(Err(Stop::Fault(m))) => {
            fault(timeline, format!("teardown: {m}"));
            outcome = CellOutcome::Fault;
        }
        Some(Err(Stop::JournalFailed)) => outcome = CellOutcome::Fault,
        Some(Err(Stop::CheckFailed | Stop::Timeout)) if outcome == CellOutcome::Completed => {
            outcome = CellOutcome::Stopped;
        }
        Some(_) => {}
    }
    // Its live checks stop following the timeline with it.
    drop(exec);
    for (d, e) in world.enforce_safe_state().await {
        fault(timeline, format!("{d}: cannot restore the safe power state: {e}"));
        outcome = CellOutcome::Fault;
    }
    world.shutdown().await;
    end(outcome)
}
