//! Joining the slices of one fleet run (`rig run --shard K/N` on N CI
//! runners, same bench, seed and plans) back into one run, so `rig report
//! merge` renders one fleet sign-off instead of N side by side.
//!
//! The join is [`crate::timeline::join`]'s (what it keeps of each slice,
//! and in which order); the summary and the evidence are then derived from
//! the joined timeline as for any run.

use std::collections::BTreeMap;

use super::Loaded;
use crate::bench::Shard;

/// Why slices cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("shard {shard} of bench `{bench}` (seed {seed}) is given twice: {a} and {b}")]
    Twice {
        shard: String,
        bench: String,
        seed: u64,
        a: String,
        b: String,
    },
    #[error("{dir}: shard `{shard}` in its journal is not K/N")]
    Unreadable { dir: String, shard: String },
    #[error(transparent)]
    Read(#[from] crate::timeline::ReadError),
}

/// Runs that are slices of one fleet run are joined; the others are kept as
/// they are, in order. Also returns the slices that were missing, per group.
pub fn join(runs: Vec<Loaded>) -> Result<(Vec<Loaded>, Vec<String>), JoinError> {
    type Key = (String, u64, Vec<String>, usize);
    let mut out: Vec<Option<Loaded>> = Vec::new();
    let mut groups: BTreeMap<Key, (usize, Vec<(Shard, Loaded)>)> = BTreeMap::new();
    for r in runs {
        let Some(s) = r.header.shard.clone() else {
            out.push(Some(r));
            continue;
        };
        let shard: Shard = s.parse().map_err(|_| JoinError::Unreadable {
            dir: r.dir.display().to_string(),
            shard: s.clone(),
        })?;
        let key = (r.header.bench.clone(), r.header.seed, r.header.plans.clone(), shard.n);
        let slot = out.len();
        let g = groups.entry(key).or_insert_with(|| {
            out.push(None);
            (slot, Vec::new())
        });
        if let Some((_, other)) = g.1.iter().find(|(k, _)| *k == shard) {
            return Err(JoinError::Twice {
                shard: s,
                bench: r.header.bench.clone(),
                seed: r.header.seed,
                a: other.dir.display().to_string(),
                b: r.dir.display().to_string(),
            });
        }
        g.1.push((shard, r));
    }
    let mut missing = Vec::new();
    for ((bench, seed, _, n), (slot, mut slices)) in groups {
        slices.sort_by_key(|(s, _)| s.k);
        let have: Vec<usize> = slices.iter().map(|(s, _)| s.k).collect();
        for k in (1..=n).filter(|k| !have.contains(k)) {
            missing.push(format!("shard {k}/{n} of bench `{bench}` (seed {seed})"));
        }
        out[slot] = Some(join_group(slices.into_iter().map(|(_, r)| r).collect())?);
    }
    Ok((out.into_iter().flatten().collect(), missing))
}

// Read again from the slices' journals, joined as a stream: memory holds a
// line per slice and what the reports keep, not the fleet's timeline.
fn join_group(slices: Vec<Loaded>) -> Result<Loaded, JoinError> {
    let first = slices.first().expect("a group has a slice");
    let run_id = format!("{} (+{} shards joined)", first.header.run_id, slices.len() - 1);
    let journals: Vec<_> = slices.iter().map(|s| crate::timeline::journal_in(&s.dir)).collect();
    let summaries: Vec<_> = slices.iter().map(|s| s.summary.clone()).collect();
    Ok(super::load_joined(&first.dir, &journals, &summaries, &run_id)?)
}
