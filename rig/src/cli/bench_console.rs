//! `rig bench console`: what `rig console` costs a flooded board. A pty
//! stands in for the board's USB serial console; a writer floods it with
//! time-stamped lines as fast as the reader takes them, first read by a
//! plain blocking reader in this process (the floor: what the kernel's pty
//! alone costs), then by a real `rig console` child process on a bench file
//! naming the pty, whose stdout this process reads. Per line: latency from
//! the write to the line arriving on stdout (p50, p99, max); lines per
//! second; the child's resident memory after the first lines and at the end
//! (growth per line) and its peak.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};

use super::CliError;
use super::bench_fleet::fault;
use crate::report::Overall;

/// At most this many lines per phase.
pub const MAX_LINES: u64 = 100_000_000;

/// A console that prints nothing for this long has lost lines or is stuck.
const STALL: Duration = Duration::from_secs(5);

/// At most this many lines per second when paced.
pub const MAX_RATE: u64 = 10_000_000;

/// A line of a typical firmware log, about 80 bytes with its stamp.
const FILLER: &str = "[app] INFO: cloud: record acked, rssi -71 dBm";

/// What an ended child wrote to its stderr.
fn stderr_of(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    err.trim().to_string()
}

/// What one reader achieved.
struct Figures {
    lines: u64,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// The reader's resident memory (KiB) after the first tenth of the lines
    /// and at the end, and its peak; none for the in-process floor.
    rss: Option<(u64, u64, u64)>,
}

/// A pty pair whose slave end is raw, as a board's USB console is.
fn board() -> Result<(TTYPort, TTYPort), CliError> {
    let (mut master, mut slave) = TTYPort::pair().map_err(|e| CliError::Fault(format!("cannot open a pty: {e}")))?;
    crate::board::sim::pty::make_raw(&slave).map_err(fault("cannot make the pty raw"))?;
    // Reads and writes wait this long for the other end (serialport's
    // default would end them at the first pause).
    for end in [&mut master, &mut slave] {
        end.set_timeout(Duration::from_secs(30))
            .map_err(|e| CliError::Fault(format!("pty: {e}")))?;
    }
    Ok((master, slave))
}

/// Writes `lines` stamped lines (nanoseconds since `base`) into `master`,
/// `rate` per second (0: as fast as they are taken). Gives the master back:
/// closed before the reader is done, it would hang up the slave, which may
/// discard what is still buffered.
fn flood(
    mut master: TTYPort,
    lines: u64,
    rate: u64,
    base: Instant,
) -> std::thread::JoinHandle<std::io::Result<TTYPort>> {
    std::thread::spawn(move || {
        let mut line = Vec::with_capacity(128);
        let start = Instant::now();
        for i in 0..lines {
            if rate > 0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            line.clear();
            let ns = base.elapsed().as_nanos() as u64;
            write!(line, "{i:010} {ns:016} {FILLER}\r\n")?;
            master.write_all(&line)?;
        }
        master.flush()?;
        Ok(master)
    })
}

/// Reads stamped lines from `from` until `lines` arrived (or it ends),
/// sampling `on_tenth` once a tenth of them are in.
fn read_stamped(
    from: impl std::io::Read,
    lines: u64,
    base: Instant,
    progress: &AtomicU64,
    mut on_tenth: impl FnMut(),
) -> (Vec<u64>, Duration) {
    let mut r = BufReader::with_capacity(64 * 1024, from);
    let mut lat = Vec::with_capacity(lines as usize);
    let mut buf = String::new();
    let start = Instant::now();
    while (lat.len() as u64) < lines {
        buf.clear();
        match r.read_line(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let now = base.elapsed().as_nanos() as u64;
        let Some(ns) = buf.split_whitespace().nth(1).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        lat.push(now.saturating_sub(ns));
        progress.store(lat.len() as u64, Ordering::Relaxed);
        if lat.len() as u64 == lines / 10 {
            on_tenth();
        }
    }
    (lat, start.elapsed())
}

fn figures(mut lat: Vec<u64>, took: Duration, rss: Option<(u64, u64, u64)>) -> Figures {
    lat.sort_unstable();
    let pct = |p: f64| {
        Duration::from_nanos(
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0),
        )
    };
    Figures {
        lines: lat.len() as u64,
        per_sec: lat.len() as f64 / took.as_secs_f64().max(1e-9),
        p50: pct(0.5),
        p99: pct(0.99),
        max: Duration::from_nanos(lat.last().copied().unwrap_or(0)),
        rss,
    }
}

/// The floor: this process reads the pty slave itself.
fn plain_reader(lines: u64, rate: u64) -> Result<Figures, CliError> {
    let (master, slave) = board()?;
    let base = Instant::now();
    let writer = flood(master, lines, rate, base);
    let (lat, took) = read_stamped(slave, lines, base, &AtomicU64::new(0), || {});
    // The slave is closed: a writer still blocked fails instead of waiting.
    let _ = writer.join();
    Ok(figures(lat, took, None))
}

/// `rig console` itself, as a child on a bench naming the pty.
fn rig_console(lines: u64, rate: u64) -> Result<Figures, CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("rig-bench-console-")
        .tempdir()
        .map_err(fault("cannot create a temporary folder"))?;
    let (master, slave) = board()?;
    let port = slave
        .name()
        .ok_or_else(|| CliError::Fault("the pty has no name".into()))?;
    let bench = tmp.path().join("bench.yaml");
    std::fs::write(
        &bench,
        format!(
            "name: console-flood\ndevices:\n  - id: flooded\n    board: boron\n    power: {{ kind: command, on: 'true', off: 'true' }}\n    console: {{ port: {port} }}\n    flash: {{ kind: command, command: 'true {{image}}' }}\n    key: '{}'\n",
            "ab".repeat(32)
        ),
    )
    .map_err(fault("writing the bench"))?;
    let exe = std::env::current_exe().map_err(fault("cannot find the rig executable"))?;
    let mut child = std::process::Command::new(exe)
        .args(["console", "flooded", "--bench"])
        .arg(&bench)
        .env("RIG_LOCK_DIR", tmp.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(fault("cannot start rig console"))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    // The console opens the port by path: probe lines until one comes out,
    // then the clock starts.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let base = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    let reader = std::thread::spawn(move || {
        let mut out = BufReader::with_capacity(64 * 1024, stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match out.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) if line.trim_end() == "ready" => break,
                Ok(_) => {}
            }
        }
        let _ = ready_tx.send(());
        let mut early = 0;
        let (lat, took) = read_stamped(out, lines, base, &seen, || {
            early = super::bench_qemu::proc_status_kib(&pid.to_string(), "VmRSS");
        });
        Some((lat, took, early))
    });
    let mut probe = master
        .try_clone_native()
        .map_err(|e| CliError::Fault(format!("pty: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        probe.write_all(b"ready\r\n").map_err(fault("writing the pty"))?;
        if ready_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        let exited = child.try_wait().ok().flatten().is_some();
        if exited || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CliError::Fault(format!(
                "rig console printed nothing within 10 s (or ended): {}",
                stderr_of(&mut child)
            )));
        }
    }
    let writer = flood(master, lines, rate, base);
    // A console that stops printing (lines lost, or stuck) must not hang
    // the benchmark: after STALL without a line it is killed, and the
    // reader sees the end of its output.
    let (mut last, mut peak) = (0, 0);
    let mut count = 0;
    let mut moved = Instant::now();
    while !reader.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        last = super::bench_qemu::proc_status_kib(&pid.to_string(), "VmRSS");
        peak = super::bench_qemu::proc_status_kib(&pid.to_string(), "VmHWM");
        let now = progress.load(Ordering::Relaxed);
        if now != count {
            count = now;
            moved = Instant::now();
        } else if moved.elapsed() > STALL {
            let _ = child.kill();
            break;
        }
    }
    let (lat, took, early) = reader.join().expect("reader").unwrap_or_default();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
    let status = child.wait().map_err(fault("waiting for rig console"))?;
    drop(probe);
    drop(slave);
    let _ = writer.join();
    if lat.len() as u64 != lines {
        return Err(CliError::Fault(format!(
            "rig console printed {} of {lines} lines ({status}): {}",
            lat.len(),
            stderr_of(&mut child)
        )));
    }
    Ok(figures(lat, took, Some((early, last, peak))))
}

fn print(name: &str, f: &Figures) {
    println!(
        "  {name:<13} {:>9.0} lines/s   latency p50 {:>6} µs, p99 {:>6} µs, max {:>6} µs",
        f.per_sec,
        f.p50.as_micros(),
        f.p99.as_micros(),
        f.max.as_micros()
    );
    if let Some((early, last, peak)) = f.rss {
        let growth = (last as f64 - early as f64) * 1024.0 / (f.lines as f64 * 0.9);
        println!(
            "  {:<13} resident {:.1} MiB after a tenth of the lines, {:.1} MiB at the end ({growth:+.1} bytes per line), peak {:.1} MiB",
            "",
            early as f64 / 1024.0,
            last as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}

/// `rig bench console --lines N [--rate R]`.
pub fn run(lines: u64, rate: u64) -> Result<Overall, CliError> {
    if rate > MAX_RATE {
        return Err(CliError::Usage(format!(
            "--rate must be at most {MAX_RATE} lines per second, not {rate}"
        )));
    }
    if !(10..=MAX_LINES).contains(&lines) {
        return Err(CliError::Usage(format!(
            "--lines must be between 10 and {MAX_LINES}, not {lines}"
        )));
    }
    let pace = match rate {
        0 => "as fast as they are read".to_string(),
        r => format!("{r} per second"),
    };
    println!(
        "console flood over a pty: {lines} lines of {} bytes, written {pace}",
        FILLER.len() + 30
    );
    let floor = plain_reader(lines, rate)?;
    print("plain reader", &floor);
    let rig = rig_console(lines, rate)?;
    print("rig console", &rig);
    println!(
        "  rig console = {:.0} % of the plain reader's lines/s; p99 {:.1}× the plain reader's",
        100.0 * rig.per_sec / floor.per_sec.max(1e-9),
        rig.p99.as_secs_f64() / floor.p99.as_secs_f64().max(1e-9)
    );
    Ok(Overall::Passed)
}
