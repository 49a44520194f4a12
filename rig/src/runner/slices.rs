//! A virtual-clock fleet run as slices side by side, one thread each: the
//! slices `rig run --shard K/N` would run on N CI runners, run in one
//! process on this machine's cores instead.
//!
//! Each slice is a run of its own in `RUN/slices/K/` (its journal, its
//! `summary.json` and its devices' console logs), on its own runtime and clock, with its own
//! cloud and cache: the same seed, device ids, keys and per-device
//! randomness as the whole bench, so each device behaves as it would
//! there. What differs is what a plan waits for: a step that waits on the
//! devices (`wait_for`, `sleep_cycles`) waits on the slice's, so the
//! slices' marks may fall at slightly different plan times. The run
//! folder's own reports are those of the slices' journals joined
//! ([`crate::timeline::join`]), as `rig report merge` joins shards.

use std::path::Path;

use anyhow::Context as _;

use super::{Progress, Quiet, RunConfig, RunResult, run};
use crate::bench::{Bench, Shard};
use crate::plan::Plan;

/// One slice: its part of the bench and the plans resolved against it.
pub struct Slice {
    pub bench: Bench,
    pub plans: Vec<Plan>,
}

/// Shows the first slice's progress (steps are the same on every slice),
/// but not its verdicts, which are only a slice's.
struct FirstSlice<'a>(&'a dyn Progress);

impl Progress for FirstSlice<'_> {
    fn cell_start(&self, index: usize, total: usize, plan: &str, cell: &str) {
        self.0.cell_start(index, total, plan, cell);
    }
    fn step(&self, n: usize, desc: &str, t_ms: u64) {
        self.0.step(n, desc, t_ms);
    }
    fn cell_end(&self, _: &str) {}
}

/// Runs `slices` side by side (`cfg.bench` and `cfg.plans` are the whole
/// bench's: they name the run folder) and writes the joined reports.
pub fn run_sliced(cfg: &RunConfig<'_>, slices: &[Slice]) -> anyhow::Result<RunResult> {
    anyhow::ensure!(!slices.is_empty(), "a sliced run needs a slice");
    let started = time::OffsetDateTime::now_utc();
    let dir = super::create_run_dir(cfg.out, cfg.plans, started)?;
    let slices_dir = dir.join(crate::timeline::join::SLICES);
    crate::fsutil::ensure_dir(&slices_dir, 0o755).with_context(|| format!("cannot create {}", slices_dir.display()))?;
    let n = slices.len();
    let first = FirstSlice(cfg.progress);
    let results: Vec<anyhow::Result<RunResult>> = std::thread::scope(|s| {
        let handles: Vec<_> = slices
            .iter()
            .enumerate()
            .map(|(i, slice)| {
                let progress: &dyn Progress = if i == 0 { &first } else { &Quiet };
                let slices_dir: &Path = &slices_dir;
                std::thread::Builder::new()
                    .name(format!("slice-{}", i + 1))
                    .spawn_scoped(s, move || {
                        let name = (i + 1).to_string();
                        run(&RunConfig {
                            bench: &slice.bench,
                            fixtures: cfg.fixtures,
                            plans: &slice.plans,
                            seed: cfg.seed,
                            out: slices_dir,
                            progress,
                            shard: Some(Shard { k: i + 1, n }),
                            folder: Some(&name),
                            reports: super::Reports::Summary,
                            cell_jobs: 1,
                        })
                    })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("slice {}/{n} panicked", i + 1))),
                Err(e) => Err(anyhow::anyhow!("cannot start slice {}/{n}: {e}", i + 1)),
            })
            .collect()
    });
    let mut summaries = Vec::with_capacity(n);
    for (i, r) in results.into_iter().enumerate() {
        let r = r.with_context(|| format!("slice {}/{n} (in {})", i + 1, slices_dir.display()))?;
        summaries.push(r.summary);
    }
    let joining = std::time::Instant::now();
    let journals = crate::timeline::join::slices_in(&dir);
    anyhow::ensure!(
        journals.len() == n,
        "{} holds {} journals, not {n}",
        slices_dir.display(),
        journals.len()
    );
    let summary = crate::report::write_joined(&dir, &journals, &summaries, &crate::report::joined_id(&dir, n))
        .with_context(|| format!("cannot write reports in {}", dir.display()))?;
    tracing::debug!("{}: {n} slices joined in {:?}", dir.display(), joining.elapsed());
    if let Some(c) = summary.cells.last() {
        cfg.progress.cell_end(&crate::report::cell_line(c));
    }
    Ok(RunResult { dir, summary })
}
