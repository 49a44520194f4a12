//! `rig run`, `rig check` and `rig report`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CliError, inputs};
use crate::lock;
use crate::report::{self, Overall};
use crate::runner::{self, RunConfig};
use crate::units::fmt_duration;

/// What `rig check` and `rig run` are given.
pub struct InputOpts {
    pub plans: Vec<PathBuf>,
    pub bench: Option<PathBuf>,
    pub sets: Vec<(String, String)>,
    pub fixtures: Option<PathBuf>,
}

pub struct RunOpts {
    pub input: InputOpts,
    pub seed: Option<u64>,
    pub out: PathBuf,
    pub wait_lock: Option<Duration>,
    pub shard: Option<crate::bench::Shard>,
    /// Slices of the fleet run side by side, one thread each (1: unsliced).
    pub jobs: usize,
    /// Matrix cells run side by side (1: one after another).
    pub cell_jobs: usize,
}

fn load(i: &InputOpts) -> Result<(crate::bench::Bench, crate::fixture::Fixtures, Vec<crate::plan::Plan>), CliError> {
    inputs::load(&i.plans, i.bench.as_deref(), i.fixtures.as_deref(), &i.sets)
}

/// `rig check`: validates plans (or, with only `--bench`, the bench file).
pub fn check(i: &InputOpts) -> Result<Overall, CliError> {
    if i.plans.is_empty() {
        let path = i
            .bench
            .as_deref()
            .ok_or_else(|| CliError::Usage("rig check needs a PLAN or --bench FILE".into()))?;
        let b = crate::bench::Bench::load(path)?;
        println!(
            "{}: ok (bench `{}`, {} device{}, {} clock)",
            path.display(),
            b.name,
            b.devices.len(),
            if b.devices.len() == 1 { "" } else { "s" },
            b.clock
        );
        return Ok(Overall::Passed);
    }
    let (bench, _, plans) = load(i)?;
    for p in &plans {
        println!(
            "{}: ok ({} cell{}, bench {})",
            p.path.display(),
            p.cells.len(),
            if p.cells.len() == 1 { "" } else { "s" },
            bench.name
        );
    }
    Ok(Overall::Passed)
}

/// `rig run`.
pub fn run(o: &RunOpts) -> Result<Overall, CliError> {
    if o.shard.is_some() && o.seed.is_none() {
        return Err(CliError::Usage(
            "--shard needs --seed: every slice of a fleet must run with the same seed".into(),
        ));
    }
    if o.jobs == 0 {
        return Err(CliError::Usage("--jobs must be at least 1".into()));
    }
    if o.cell_jobs == 0 {
        return Err(CliError::Usage("--cell-jobs must be at least 1".into()));
    }
    if o.jobs > 1 && o.shard.is_some() {
        return Err(CliError::Usage(
            "--jobs and --shard do not go together: a shard is already one slice (run it with --jobs 1)".into(),
        ));
    }
    let (bench, fixtures, plans) = match o.shard {
        None => load(&o.input)?,
        Some(shard) => {
            // Plans select devices from the slice, as if it were the bench.
            let i = &o.input;
            let bench = match i.bench.as_deref() {
                Some(p) => crate::bench::Bench::load(p)?,
                None => crate::bench::Bench::builtin_sim(),
            }
            .into_shard(shard)
            .map_err(CliError::Usage)?;
            inputs::load_against(bench, &i.plans, i.fixtures.as_deref(), &i.sets)?
        }
    };
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 & 0xffff_ffff)
            .unwrap_or(1)
    });
    eprintln!(
        "rig {}: bench `{}` ({} devices{}, {} clock), seed {seed} (rerun with --seed {seed})",
        env!("CARGO_PKG_VERSION"),
        bench.name,
        bench.devices.len(),
        o.shard.map(|s| format!(" of shard {s}")).unwrap_or_default(),
        bench.clock
    );
    let _lock = if bench.lock {
        let plans: Vec<String> = o.input.plans.iter().map(|p| p.display().to_string()).collect();
        Some(take_lock(&bench, &plans.join(" "), o.wait_lock)?)
    } else {
        None
    };
    let slices = slices(&o.input, &bench, o.jobs)?;
    let progress = super::progress::for_stderr();
    let wall = Instant::now();
    let cfg = RunConfig {
        bench: &bench,
        fixtures: &fixtures,
        plans: &plans,
        seed,
        out: &o.out,
        progress: progress.as_ref(),
        shard: o.shard,
        folder: None,
        reports: crate::runner::Reports::All,
        cell_jobs: o.cell_jobs,
    };
    let result = match &slices {
        Some(slices) => runner::slices::run_sliced(&cfg, slices),
        None => runner::run(&cfg),
    }
    .map_err(|e| CliError::Fault(format!("{e:#}")))?;
    drop(progress);
    print!("\n{}", report::verdict_table(&result.summary));
    let plan_ms: u64 = result.summary.cells.iter().map(|c| c.plan_ms).sum();
    println!("\n{}", report::overall_line(&result.summary.cells));
    println!(
        "seed {seed}; {} of plan time in {} of wall time; reports in {}",
        fmt_duration(Duration::from_millis(plan_ms)),
        fmt_duration(wall.elapsed()),
        result.dir.display()
    );
    Ok(Overall::of(&result.summary.cells))
}

/// The slices `--jobs N` runs side by side (None for one), each with the
/// plans resolved against it as `--shard K/N` would.
pub(super) fn slices(
    input: &InputOpts,
    bench: &crate::bench::Bench,
    jobs: usize,
) -> Result<Option<Vec<runner::slices::Slice>>, CliError> {
    if jobs <= 1 {
        return Ok(None);
    }
    if bench.clock != crate::bench::Clock::Virtual {
        return Err(CliError::Usage(format!(
            "--jobs {jobs}: bench `{}` runs on the real clock; only a virtual-clock bench is run as slices side by side",
            bench.name
        )));
    }
    if jobs > bench.devices.len() {
        return Err(CliError::Usage(format!(
            "--jobs {jobs}: bench `{}` has {} devices, fewer than the slices",
            bench.name,
            bench.devices.len()
        )));
    }
    let mut out = Vec::with_capacity(jobs);
    for k in 1..=jobs {
        let b = bench
            .clone()
            .into_shard(crate::bench::Shard { k, n: jobs })
            .map_err(CliError::Usage)?;
        let (b, _, plans) = inputs::load_against(b, &input.plans, input.fixtures.as_deref(), &input.sets)?;
        out.push(runner::slices::Slice { bench: b, plans });
    }
    Ok(Some(out))
}

/// `rig report RUN_DIR...`: re-renders every report from `events.jsonl`;
/// the outcome is the worst of the runs'.
pub fn report(dirs: &[PathBuf]) -> Result<Overall, CliError> {
    let mut cells = Vec::new();
    let mut empty = false;
    for dir in dirs {
        let summary = report::write_from_folder(dir).map_err(|e| match e {
            report::ReportError::Read(e) => CliError::from(e),
            report::ReportError::Write(e) => CliError::Fault(format!("cannot write reports in {}: {e}", dir.display())),
        })?;
        print!("{}", report::verdict_table(&summary));
        println!("\n{}", report::overall_line(&summary.cells));
        println!("reports re-rendered in {}\n", dir.display());
        // A journal with only its header judged nothing: no verdict.
        empty |= summary.cells.is_empty();
        cells.extend(summary.cells);
    }
    if empty {
        return Ok(Overall::NoVerdict);
    }
    Ok(Overall::of(&cells))
}

/// `rig report merge RUN_DIR... --out DIR`.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Overall, CliError> {
    let mut runs = Vec::new();
    for d in dirs {
        runs.push(report::load(d)?);
    }
    let given = runs.len();
    let (runs, missing) = report::shards::join(runs).map_err(|e| CliError::Usage(e.to_string()))?;
    if runs.len() < given {
        println!(
            "{given} run folders, {} runs once the slices of each fleet run are joined",
            runs.len()
        );
    }
    for m in &missing {
        eprintln!("warning: {m} is missing: its devices are not in the sign-off");
    }
    report::merge(&runs, out).map_err(|e| CliError::Fault(format!("cannot write {}: {e}", out.display())))?;
    for r in &runs {
        print!("{}", report::verdict_table(&r.summary));
    }
    let cells: Vec<_> = runs.iter().flat_map(|r| r.summary.cells.iter().cloned()).collect();
    println!("\n{}", report::overall_line(&cells));
    println!("{} runs merged into {}", runs.len(), out.display());
    Ok(Overall::of(&cells))
}

/// Takes the bench lock, saying who has it or that a stale one was taken over.
pub fn take_lock(bench: &crate::bench::Bench, what: &str, wait: Option<Duration>) -> Result<lock::BenchLock, CliError> {
    let me = lock::Holder::me(what);
    let dir = lock::lock_dir_for(bench.lock_dir.as_deref());
    let l = lock::acquire(&dir, &bench.name, &me, wait).map_err(CliError::fault)?;
    let bench = &bench.name;
    if let Some(dead) = &l.took_over {
        eprintln!(
            "warning: bench `{bench}` was left locked by a run that ended without releasing it ({dead}); taking over, the safe power state is restored first"
        );
    }
    Ok(l)
}
