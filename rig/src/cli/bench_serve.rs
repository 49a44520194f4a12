//! `rig bench serve`: what a long-running `rig cloud serve` holds under
//! load. A real `rig cloud serve` child (memory cache, a bench file naming
//! the load's clients) is driven over UDP loopback by protocol clients in
//! alternating one-second phases of full handshakes (each a new session)
//! and resumes; the child's resident memory is sampled after every phase.
//! Printed: the operations, the child's RSS after the first phase, its
//! peak and its last sample, and the growth per operation from the first
//! sample to the last (a cloud that keeps something per datagram grows
//! with the run; one that is bounded does not).

use std::time::Duration;

use super::CliError;
use super::bench_fleet::fault;
use crate::report::Overall;

pub fn run(clients: usize, seconds: u64) -> Result<Overall, CliError> {
    // The cloud's flood guard admits this many pending handshakes per
    // address (all clients share 127.0.0.1): more clients would time out.
    let most = crate::cloud::CloudConfig::new(Default::default(), 0).max_pending_per_ip;
    if clients == 0 || clients > most {
        return Err(CliError::Usage(format!(
            "--clients must be between 1 and {most} (the cloud's pending handshakes per address), not {clients}"
        )));
    }
    if !(2..=3600).contains(&seconds) {
        return Err(CliError::Usage(format!(
            "--seconds must be between 2 and 3600, not {seconds}"
        )));
    }
    let tmp = tempfile::Builder::new()
        .prefix("rig-bench-serve-")
        .tempdir()
        .map_err(fault("cannot create a temporary folder"))?;
    let bench = tmp.path().join("bench-serve.yaml");
    std::fs::write(
        &bench,
        format!(
            "name: bench-serve\ndevices:\n  - {{ id: \"bench-{{:04}}\", count: {clients}, first: 0, board: sim }}\n"
        ),
    )
    .map_err(fault("writing the bench"))?;
    // A free port, taken back just before the cloud binds it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(fault("finding a free port"))?
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let out = tmp.path().join("cloud");
    let exe = std::env::current_exe().map_err(fault("cannot find the rig binary"))?;
    let log = std::fs::File::create(tmp.path().join("serve.log")).map_err(fault("creating the log"))?;
    let mut child = std::process::Command::new(exe)
        .args(["cloud", "serve", "--listen", &addr.to_string(), "--bench"])
        .arg(&bench)
        .arg("--out")
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(fault("the log"))?)
        .stderr(log)
        .spawn()
        .map_err(fault("cannot start rig cloud serve"))?;
    let result = drive(&mut child, &out, addr, clients, seconds);
    // SIGTERM: the cloud's own clean stop, then the process is reaped.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let figures = result?;
    print!("{figures}");
    Ok(Overall::Passed)
}

struct Sample {
    phase: usize,
    name: &'static str,
    ops: u64,
    failures: u64,
    per_sec: f64,
    rss_kib: u64,
}

struct Figures {
    clients: usize,
    samples: Vec<Sample>,
    journal_bytes: u64,
}

fn drive(
    child: &mut std::process::Child,
    out: &std::path::Path,
    addr: std::net::SocketAddr,
    clients: usize,
    seconds: u64,
) -> Result<Figures, CliError> {
    let sock = crate::serve::admin_socket(out);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CliError::Fault(format!("rig cloud serve exited at start ({status})")));
        }
        if std::time::Instant::now() > deadline {
            return Err(CliError::Fault("rig cloud serve did not start within 60 s".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(fault("cannot start the async runtime"))?;
    let mut samples = Vec::new();
    rt.block_on(crate::benchmark::load(
        addr,
        clients,
        seconds as usize,
        Duration::from_secs(1),
        |i, name, p| {
            samples.push(Sample {
                phase: i + 1,
                name: if name.starts_with("full") {
                    "handshakes"
                } else {
                    "resumes"
                },
                ops: p.ops,
                failures: p.failures,
                per_sec: p.per_sec,
                rss_kib: super::bench_qemu::proc_status_kib(&pid, "VmRSS"),
            })
        },
    ))
    .map_err(fault("the load's sockets"))?;
    let journal_bytes = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("events"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    Ok(Figures {
        clients,
        samples,
        journal_bytes,
    })
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops: u64 = self.samples.iter().map(|s| s.ops).sum();
        let failures: u64 = self.samples.iter().map(|s| s.failures).sum();
        writeln!(
            f,
            "rig cloud serve (memory cache) under {} clients over UDP loopback, {} one-second phases",
            self.clients,
            self.samples.len()
        )?;
        for s in self
            .samples
            .iter()
            .filter(|s| s.phase <= 2 || s.phase + 2 > self.samples.len())
        {
            writeln!(
                f,
                "  phase {:>4} {:<10} {:>8.0}/s ({} failed)   cloud RSS {:>6.1} MiB",
                s.phase,
                s.name,
                s.per_sec,
                s.failures,
                s.rss_kib as f64 / 1024.0
            )?;
        }
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return Ok(());
        };
        let peak = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let later_ops: u64 = self.samples.iter().skip(1).map(|s| s.ops).sum();
        writeln!(
            f,
            "  {ops} operations ({failures} failed); cloud RSS {:.1} MiB after the first phase, peak {:.1} MiB, last {:.1} MiB",
            first.rss_kib as f64 / 1024.0,
            peak as f64 / 1024.0,
            last.rss_kib as f64 / 1024.0
        )?;
        writeln!(
            f,
            "  growth {:.1} bytes per operation after the first phase; journal {:.1} MB (rotated, bounded on disk)",
            (last.rss_kib as f64 - first.rss_kib as f64) * 1024.0 / later_ops.max(1) as f64,
            self.journal_bytes as f64 / 1e6
        )
    }
}
