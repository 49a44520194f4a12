//! `rig cloud serve` and `rig bench`.

use std::path::PathBuf;
use std::time::Duration;

use super::CliError;
use crate::bench::Bench;
use crate::cache::CacheCfg;
use crate::cloud::Mitigation;
use crate::report::Overall;

/// Most clients `rig bench` runs: each has its own UDP socket.
pub const MAX_BENCH_CLIENTS: usize = 10_000;
/// Most cloud workers `rig bench` and `rig cloud serve` accept.
pub const MAX_WORKERS: usize = 256;
/// Longest `rig bench` phase.
pub const MAX_BENCH_SECONDS: f64 = 3600.0;

pub struct ServeOpts {
    pub bench: Option<PathBuf>,
    pub listen: String,
    pub cache: CacheCfg,
    pub mitigation: Mitigation,
    pub out: PathBuf,
}

/// `rig cloud serve --background`: starts the same command as a child in its
/// own session, its output in `<out>/serve.log`, and returns once its admin
/// socket answers (or says why it could not start). Scripts and docs use it
/// so the next command never races the cloud's start.
pub fn serve_in_background(out: &std::path::Path, args: &[std::ffi::OsString]) -> Result<Overall, CliError> {
    use std::os::unix::process::CommandExt as _;
    std::fs::create_dir_all(out).map_err(|e| CliError::Fault(format!("cannot create {}: {e}", out.display())))?;
    let log_path = out.join("serve.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| CliError::Fault(format!("cannot create {}: {e}", log_path.display())))?;
    let exe = std::env::current_exe().map_err(|e| CliError::Fault(format!("cannot find the rig binary: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(CliError::fault)?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from the
    // terminal's Ctrl-C, which is what "in the background" means.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::Fault(format!("cannot start the cloud: {e}")))?;
    let sock = crate::serve::admin_socket(out);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            println!(
                "rig cloud: serving in the background (pid {}), log in {}; stop it with `rig cloud stop --cloud {}`",
                child.id(),
                log_path.display(),
                out.display()
            );
            return Ok(Overall::Passed);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(CliError::Fault(format!(
                "the cloud exited at start ({status}): {}",
                crate::drivers::shell::tail(&log, 5)
            )));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err(CliError::Fault(
                "the cloud did not open its admin socket within 60 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `rig cloud stop --cloud DIR`: asks the cloud serving there to stop and
/// waits until it has.
pub fn stop(cloud: &std::path::Path) -> Result<Overall, CliError> {
    use std::io::{BufRead, BufReader, Write};
    let sock = crate::serve::admin_socket(cloud);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock)
        .map_err(|e| CliError::Fault(format!("no cloud serving at {} ({e})", sock.display())))?;
    stream.write_all(b"shutdown\n").map_err(CliError::fault)?;
    let mut reply = String::new();
    let _ = BufReader::new(&stream).read_line(&mut reply);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sock.exists() {
        if std::time::Instant::now() > deadline {
            return Err(CliError::Fault(format!(
                "the cloud at {} did not stop within 30 s",
                cloud.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("rig cloud: stopped");
    Ok(Overall::Passed)
}

/// `rig cloud serve`: until Ctrl-C, SIGTERM or `rig cloud stop`.
pub fn serve(o: &ServeOpts) -> Result<Overall, CliError> {
    let bench = match &o.bench {
        Some(p) => Bench::load(p)?,
        None => Bench::builtin_sim(),
    };
    let rt = super::runtime()?;
    let opts = crate::serve::ServeOptions {
        bench: &bench,
        listen: &o.listen,
        cache: &o.cache,
        mitigation: o.mitigation,
        dir: &o.out,
        seed: 1,
    };
    rt.block_on(crate::serve::run(opts))
        .map_err(|e| CliError::Fault(format!("{e:#}")))?;
    Ok(Overall::Passed)
}

/// `rig bench`: the cloud's throughput over UDP loopback.
pub fn bench(clients: usize, seconds: f64, caches: Vec<CacheCfg>, workers: Option<usize>) -> Result<Overall, CliError> {
    check_workers(workers)?;
    if clients == 0 || clients > MAX_BENCH_CLIENTS {
        return Err(CliError::Usage(format!(
            "--clients must be between 1 and {MAX_BENCH_CLIENTS}, not {clients}"
        )));
    }
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_BENCH_SECONDS) {
        return Err(CliError::Usage(format!(
            "--seconds must be a number of seconds above 0 and at most {MAX_BENCH_SECONDS}, not {seconds}"
        )));
    }
    ensure_fds(clients + 64)?;
    let rt = super::runtime()?;
    // A fresh private folder (0700, unpredictable name) for the redis data.
    let dir = tempfile::Builder::new()
        .prefix("rig-bench-")
        .tempdir()
        .map_err(|e| CliError::Fault(format!("cannot create a temporary folder: {e}")))?;
    for cache in &caches {
        let res = rt.block_on(crate::benchmark::run(
            clients,
            Duration::from_secs_f64(seconds),
            cache,
            workers.unwrap_or_else(crate::cloud::real_clock_workers),
            &dir.path().join(cache.backend().name()),
        ));
        let f = res.map_err(|e| CliError::Fault(format!("{e:#}")))?;
        print!("{f}");
    }
    Ok(Overall::Passed)
}

/// `rig bench storm`: the reconnect storm after a cache crash.
pub fn storm(devices: usize, caches: Vec<CacheCfg>, workers: Option<usize>) -> Result<Overall, CliError> {
    check_workers(workers)?;
    if devices == 0 || devices > MAX_BENCH_CLIENTS {
        return Err(CliError::Usage(format!(
            "--devices must be between 1 and {MAX_BENCH_CLIENTS}, not {devices}"
        )));
    }
    ensure_fds(devices + 64)?;
    let rt = super::runtime()?;
    let dir = tempfile::Builder::new()
        .prefix("rig-storm-")
        .tempdir()
        .map_err(|e| CliError::Fault(format!("cannot create a temporary folder: {e}")))?;
    for cache in &caches {
        let res = rt.block_on(crate::benchmark::storm::run(
            devices,
            cache,
            workers.unwrap_or_else(crate::cloud::real_clock_workers),
            &dir.path().join(cache.backend().name()),
            true,
        ));
        let f = res.map_err(|e| CliError::Fault(format!("{e:#}")))?;
        print!("{f}");
    }
    Ok(Overall::Passed)
}

fn check_workers(workers: Option<usize>) -> Result<(), CliError> {
    match workers {
        Some(w) if !(1..=MAX_WORKERS).contains(&w) => Err(CliError::Usage(format!(
            "--workers must be between 1 and {MAX_WORKERS}, not {w}"
        ))),
        _ => Ok(()),
    }
}

/// Raises the open-file limit to `need` if the hard limit allows; a usage
/// error naming the limit otherwise.
fn ensure_fds(need: usize) -> Result<(), CliError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur >= need as libc::rlim_t {
            return Ok(());
        }
        if lim.rlim_max >= need as libc::rlim_t {
            lim.rlim_cur = need as libc::rlim_t;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                return Ok(());
            }
        }
    }
    Err(CliError::Usage(format!(
        "{need} open files are needed for this many clients, but the limit is {} (ulimit -n)",
        lim.rlim_max
    )))
}
