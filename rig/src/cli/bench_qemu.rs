//! `rig bench qemu`: what emulated boards cost this machine. N boards on
//! the qemu kind, the 1.2 image, each running a number of wake cycles
//! through the real runner (power on, flash, handshake, resumes); prints
//! wall time against the firmware's own schedule (the floor: a cycle cannot
//! take less than its sleep), the CPU used by the rig and its QEMU children,
//! and the peak resident memory of all of them together.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::CliError;
use crate::report::Overall;

/// At most this many boards: each is a process with a few MiB.
pub const MAX_BOARDS: usize = 256;

/// Resident memory of `pid` in KiB (0 if it is gone).
fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(&pid.to_string(), "VmRSS")
}

/// A `kB` field of `/proc/<who>/status` (`who`: a pid or `self`); 0 if the
/// process is gone or the field absent.
pub(crate) fn proc_status_kib(who: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{who}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Our direct children (the QEMU processes).
fn children(of: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(of) {
            out.push(pid);
        }
    }
    out
}

fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: getrusage writes the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

pub fn run(boards: usize, cycles: u32, fixture: &str) -> Result<Overall, CliError> {
    if boards == 0 || boards > MAX_BOARDS {
        return Err(CliError::Usage(format!(
            "--boards must be between 1 and {MAX_BOARDS}, not {boards}"
        )));
    }
    if cycles == 0 || cycles > 1000 {
        return Err(CliError::Usage(format!(
            "--cycles must be between 1 and 1000, not {cycles}"
        )));
    }
    let fixtures = super::inputs::fixtures(None, None)?;
    let fx = fixtures
        .get(fixture)
        .ok_or_else(|| CliError::Usage(format!("unknown fixture `{fixture}` (available: {})", fixtures.names())))?;
    let params = fx
        .qemu
        .as_ref()
        .and_then(|q| q.params)
        .ok_or_else(|| CliError::Usage(format!("fixture `{fixture}` has no `qemu:` section with params")))?;
    let tmp = tempfile::Builder::new()
        .prefix("rig-bench-qemu-")
        .tempdir()
        .map_err(|e| CliError::Fault(format!("cannot create a temporary folder: {e}")))?;
    let mut bench = String::from(
        "name: bench-qemu\nclock: real\ncloud: { listen: \"127.0.0.1:0\", cache: { kind: memory }, mitigation: drop }\nsafe_state: off\ndevices:\n",
    );
    for i in 1..=boards {
        bench.push_str(&format!("  - {{ id: vboard-{i:03}, board: qemu, tags: [sleepy] }}\n"));
    }
    let plan = format!(
        "name: bench-qemu\nfixture: {fixture}\ndevices: {{ tags: [sleepy] }}\ntimeout: 1h\nsetup:\n  - power: on\n  - flash: \"${{fixture}}\"\n  - wait_for: {{ event: cloud.connected, timeout: 2m }}\nsteps:\n  - sleep_cycles: {cycles}\n  - expect: {{ event: cloud.resumed, min: {cycles} }}\nteardown:\n  - power: off\n"
    );
    let bench_path = tmp.path().join("bench.yaml");
    let plan_path = tmp.path().join("bench-qemu.yaml");
    std::fs::write(&bench_path, bench).map_err(|e| CliError::Fault(format!("{e}")))?;
    std::fs::write(&plan_path, plan).map_err(|e| CliError::Fault(format!("{e}")))?;
    let (bench, fixtures, plans) = super::inputs::load(
        std::slice::from_ref(&plan_path),
        Some(&bench_path),
        Some(&fixtures.dir),
        &[],
    )?;

    // Sample the RSS of the rig and its QEMU children while it runs.
    let me = std::process::id();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let total: u64 = rss_kib(me) + children(me).into_iter().map(rss_kib).sum::<u64>();
                peak.fetch_max(total, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF) + cpu_seconds(libc::RUSAGE_CHILDREN);
    let wall = Instant::now();
    let cfg = crate::runner::RunConfig {
        bench: &bench,
        fixtures: &fixtures,
        plans: &plans,
        seed: 1,
        out: &tmp.path().join("runs"),
        progress: &crate::runner::Quiet,
        shard: None,
        folder: None,
        reports: crate::runner::Reports::All,
        cell_jobs: 1,
    };
    let result = crate::runner::run(&cfg).map_err(|e| CliError::Fault(format!("{e:#}")));
    let wall = wall.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let result = result?;
    let cpu = cpu_seconds(libc::RUSAGE_SELF) + cpu_seconds(libc::RUSAGE_CHILDREN) - cpu0;
    let overall = Overall::of(&result.summary.cells);
    let events = count_lines(&result.dir.join("events.jsonl"));
    // The floor: boot, attach and `cycles` sleeps of the firmware's schedule.
    let floor = params.sleep_interval.0 * cycles + params.attach_time.0 * (cycles + 1);
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    println!(
        "{boards} qemu boards ({fixture}, {}), {cycles} wake cycles each",
        crate::board::qemu::DEFAULT_MACHINE
    );
    println!(
        "  wall       {:>8.1} s   ({:.2}x the firmware's own schedule of {:.1} s)",
        wall.as_secs_f64(),
        wall.as_secs_f64() / floor.as_secs_f64(),
        floor.as_secs_f64()
    );
    println!(
        "  CPU        {:>8.1} s   ({:.0} % of one core; rig and QEMU processes)",
        cpu,
        100.0 * cpu / wall.as_secs_f64()
    );
    println!(
        "  peak RSS   {:>8.0} MiB ({:.1} MiB per board, rig included)",
        peak_mib,
        peak_mib / boards as f64
    );
    println!("  events     {events:>8}     verdict {}", overall.word());
    Ok(overall)
}

fn count_lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0)
}
