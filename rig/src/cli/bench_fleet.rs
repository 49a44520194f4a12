//! `rig bench fleet`: what a simulated fleet costs this machine. N sleepy
//! sim devices (1.2 firmware, 15-minute sleeps) on the virtual clock run
//! `H` hours of plan time with one cache crash after the third hour's
//! start, through the real runner and reports, on a fleet bench
//! (`journal: { console_lines: false, datagrams: per_exchange, compress: true }`).
//!
//! Prints wake cycles per wall second, wall time and journal bytes per wake
//! and peak RSS, against a floor measured in the same run: the AEAD work a
//! wake's records need (seal and open of each datagram it exchanges), which
//! no bookkeeping can undercut.

use std::io::BufRead as _;
use std::path::Path;
use std::time::Instant;

use super::CliError;
use crate::report::Overall;

/// Most devices `rig bench fleet` simulates.
pub const MAX_DEVICES: usize = 200_000;

pub(super) fn fault(what: &str) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::Fault(format!("{what}: {e}"))
}

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    super::bench_qemu::proc_status_kib("self", "VmHWM")
}

/// The bench and plan texts `rig bench fleet` runs.
pub fn inputs(devices: usize, hours: u32) -> (String, String) {
    let bench = format!(
        "name: bench-fleet\nclock: virtual\ncloud: {{ cache: {{ kind: memory }}, latency: 60ms, mitigation: drop }}\njournal: {{ console_lines: false, datagrams: per_exchange, compress: true }}\ndevices:\n  - {{ id: \"dev-{{:06}}\", count: {devices}, board: sim, tags: [sleepy] }}\n"
    );
    // Setup and three cycles (~1 h), a 30-minute outage, then the rest.
    let after = (hours * 60).saturating_sub(120).max(10);
    let plan = format!(
        "name: bench-fleet\nfixture: sleepy-1.2\ndevices: {{ tags: [sleepy] }}\ntimeout: {}h\nsetup:\n  - power: on\n  - flash: \"${{fixture}}\"\n  - wait_for: {{ event: cloud.connected, timeout: 30m }}\nsteps:\n  - sleep_cycles: 3\n  - mark: crash\n  - cache: kill\n  - wait: 30m\n  - cache: {{ restore: empty }}\n  - expect_recovery: {{ after: crash, within_cycles: 4, no_power_cycle: true }}\n  - wait: {after}m\nteardown:\n  - power: off\n",
        hours + 6
    );
    (bench, plan)
}

/// Seconds per wake of the AEAD floor: `records` datagrams each sealed by
/// one side and opened by the other, one way and back.
fn aead_floor(records_per_wake: f64) -> f64 {
    use rig_proto::{Direction, Psk, SessionKeys};
    let keys = SessionKeys::derive(&Psk([7; 32]), "dev-000001", &[1; 16], &[2; 16], 9);
    let aad = [0u8; 16];
    let rounds = 200_000u64;
    let t = Instant::now();
    let mut ok = 0u64;
    for i in 0..rounds {
        let mut buf = [i as u8; 64];
        let tag = keys.seal(Direction::ToCloud, i, &aad, &mut buf);
        ok += u64::from(keys.open(Direction::ToCloud, i, &aad, &mut buf, &tag));
        let tag = keys.seal(Direction::ToDevice, i, &aad, &mut buf);
        ok += u64::from(keys.open(Direction::ToDevice, i, &aad, &mut buf, &tag));
    }
    assert_eq!(ok, rounds * 2, "the floor's own records must verify");
    t.elapsed().as_secs_f64() / rounds as f64 * records_per_wake
}

/// (wakes, exchanges) in a journal, by a scan of its lines.
fn count(journal: &Path) -> Result<(u64, u64), CliError> {
    let lines = crate::timeline::store::open_lines(journal).map_err(|e| CliError::Fault(format!("{e}")))?;
    let (mut wakes, mut exchanges) = (0, 0);
    for line in lines.split(b'\n') {
        let line = line.map_err(fault("reading the journal"))?;
        if contains(&line, b"\"kind\":\"device.wake\"") {
            wakes += 1;
        } else if contains(&line, b"\"kind\":\"cloud.exchange\"") {
            exchanges += 1;
        }
    }
    Ok((wakes, exchanges))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn run(devices: usize, hours: u32, jobs: usize, out: Option<&Path>) -> Result<Overall, CliError> {
    if devices == 0 || devices > MAX_DEVICES {
        return Err(CliError::Usage(format!(
            "--devices must be between 1 and {MAX_DEVICES}, not {devices}"
        )));
    }
    if !(3..=24 * 30).contains(&hours) {
        return Err(CliError::Usage(format!(
            "--hours must be between 3 and 720, not {hours}"
        )));
    }
    let tmp = tempfile::Builder::new()
        .prefix("rig-bench-fleet-")
        .tempdir()
        .map_err(fault("cannot create a temporary folder"))?;
    let (bench_text, plan_text) = inputs(devices, hours);
    let bench_path = tmp.path().join("bench-fleet.yaml");
    let plan_path = tmp.path().join("bench-fleet-plan.yaml");
    std::fs::write(&bench_path, bench_text).map_err(fault("writing the bench"))?;
    std::fs::write(&plan_path, plan_text).map_err(fault("writing the plan"))?;
    let fixtures = super::inputs::fixtures(None, None)?;
    let input = super::run::InputOpts {
        plans: vec![plan_path],
        bench: Some(bench_path),
        sets: Vec::new(),
        fixtures: Some(fixtures.dir.clone()),
    };
    let (bench, fixtures, plans) =
        super::inputs::load(&input.plans, input.bench.as_deref(), input.fixtures.as_deref(), &[])?;
    if jobs == 0 {
        return Err(CliError::Usage("--jobs must be at least 1".into()));
    }
    let jobs = jobs.min(devices);
    let slices = super::run::slices(&input, &bench, jobs)?;
    let runs = out.map_or_else(|| tmp.path().join("runs"), Path::to_owned);
    let wall = Instant::now();
    let cfg = crate::runner::RunConfig {
        bench: &bench,
        fixtures: &fixtures,
        plans: &plans,
        seed: 1,
        out: &runs,
        progress: &crate::runner::Quiet,
        shard: None,
        folder: None,
        reports: crate::runner::Reports::All,
        cell_jobs: 1,
    };
    let result = match &slices {
        Some(s) => crate::runner::slices::run_sliced(&cfg, s),
        None => crate::runner::run(&cfg),
    }
    .map_err(|e| CliError::Fault(format!("{e:#}")))?;
    let wall = wall.elapsed();
    let peak_mib = peak_rss_kib() as f64 / 1024.0;
    let mut journals = crate::timeline::join::slices_in(&result.dir);
    if journals.is_empty() {
        journals.push(crate::timeline::journal_in(&result.dir));
    }
    let journal_bytes: u64 = journals
        .iter()
        .map(|j| std::fs::metadata(j).map(|m| m.len()).unwrap_or(0))
        .sum();
    let folder_bytes = dir_bytes(&result.dir);
    let (mut wakes, mut exchanges) = (0, 0);
    for j in &journals {
        let (w, x) = count(j)?;
        wakes += w;
        exchanges += x;
    }
    let overall = Overall::of(&result.summary.cells);
    let w = wakes.max(1) as f64;
    let floor = aead_floor(exchanges as f64 / w);
    let per_wake = wall.as_secs_f64() / w;
    println!(
        "{devices} sim devices (sleepy-1.2, 15-minute sleeps), {hours} h of plan time, one cache crash, {jobs} slice{} side by side",
        if jobs == 1 { "" } else { "s" }
    );
    println!(
        "  wall         {:>9.1} s    {:.0} wake cycles per wall second ({wakes} wakes)",
        wall.as_secs_f64(),
        w / wall.as_secs_f64()
    );
    println!(
        "  per wake     {:>9.1} µs   {:.1}x the AEAD floor of {:.1} µs ({:.1} datagrams per wake)",
        per_wake * 1e6,
        per_wake / floor,
        floor * 1e6,
        exchanges as f64 / w
    );
    println!(
        "  peak RSS     {:>9.0} MiB  ({:.1} KiB per device)",
        peak_mib,
        peak_mib * 1024.0 / devices as f64
    );
    println!(
        "  journal      {:>9.1} MB   ({:.0} bytes per wake); run folder {:.1} MB",
        journal_bytes as f64 / 1e6,
        journal_bytes as f64 / w,
        folder_bytes as f64 / 1e6
    );
    println!("  verdict      {}", overall.word());
    if out.is_some() {
        println!("  run folder   {}", result.dir.display());
    }
    Ok(overall)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}
