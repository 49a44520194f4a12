//! Joining the slices of one fleet run (`rig run --shard K/N` on N CI
//! runners, same bench, seed and plans) back into one run, so `rig report
//! merge` renders one fleet sign-off instead of N side by side.
//!
//! Each slice journaled its own devices and the same bench-wide events (cell
//! starts, plan steps, marks, cache operations: the plan ran the same way on
//! every slice). The join keeps every device's events from every slice and
//! the bench-wide ones of the first slice (a rig fault from any slice), in
//! plan-time order within each cell, renumbered; the summary is then derived
//! from the joined timeline as for any run.

use std::collections::BTreeMap;

use super::{Loaded, summarize};
use crate::bench::Shard;
use crate::timeline::EventKind;

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

// The slices' events are held together to be put in plan-time order (a
// join needs memory for the whole fleet's timeline, unlike `rig report`).
fn join_group(slices: Vec<Loaded>) -> Result<Loaded, JoinError> {
    let mut it = slices.into_iter();
    let first = it.next().expect("a group has a slice");
    let mut header = first.header.clone();
    let (_, mut joined) = crate::timeline::read_jsonl(&crate::timeline::journal_in(&first.dir))?;
    let mut n = 1;
    for s in it {
        n += 1;
        crate::timeline::store::stream(&crate::timeline::journal_in(&s.dir), |e| {
            if e.device.is_some() || matches!(e.kind, EventKind::RigFault { .. }) {
                joined.push(e);
            }
        })?;
    }
    // Stable: within a slice, events at one instant keep their order.
    joined.sort_by_key(|e| (e.cell, e.t_ms));
    for (i, e) in joined.iter_mut().enumerate() {
        e.seq = i as u64;
    }
    header.shard = None;
    header.run_id = format!("{} (+{} shards joined)", header.run_id, n - 1);
    let summary = summarize(&header, &joined);
    Ok(Loaded {
        dir: first.dir,
        header,
        evidence: super::evidence::Evidence::of(&summary, &joined),
        summary,
    })
}
