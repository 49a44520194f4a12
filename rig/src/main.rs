//! The `rig` command line: argument parsing, progress display and exit
//! codes. Everything else lives in the library.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use rig::bench::Bench;
use rig::diag::{self, Diagnostic};
use rig::fixture::{self, Fixtures};
use rig::plan::{self, Plan};
use rig::report;
use rig::runner::{self, Progress, RunConfig};
use rig::units::fmt_clock;

/// Exit codes CI relies on.
mod exit {
    pub const PASSED: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const RIG_FAULT: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "rig",
    version,
    about = "Hardware-in-the-loop test rig: power, flash, consoles and a local device cloud",
    after_help = "Exit codes: 0 all passed, 1 a check failed, 2 bad plan/bench/usage, 3 rig or infrastructure fault."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run test plans on a bench (the built-in simulated bench by default).
    Run(RunArgs),
    /// Validate plans against a bench and fixtures without running them.
    Check(InputArgs),
    /// Re-render the reports of a run folder from its events.jsonl, or merge runs.
    #[command(args_conflicts_with_subcommands = true)]
    Report {
        #[command(subcommand)]
        cmd: Option<ReportCmd>,
        /// A run folder, e.g. reports/20261123-101500-session-cache-crash
        run_dir: Option<PathBuf>,
    },
    /// The local device cloud on its own.
    Cloud {
        #[command(subcommand)]
        cmd: CloudCmd,
    },
    /// What hardware this machine can see, and what a bench file needs that is missing.
    Doctor {
        #[arg(long)]
        bench: Option<PathBuf>,
    },
    /// Switch a bench device's power by hand: rig power DEVICE on|off|cycle.
    Power {
        device: String,
        action: PowerArg,
        #[arg(long)]
        bench: PathBuf,
        /// Off time of a cycle.
        #[arg(long, default_value = "2s", value_parser = parse_dur)]
        off_for: Duration,
        /// Wait this long for the bench lock instead of failing.
        #[arg(long, value_parser = parse_dur)]
        wait_lock: Option<Duration>,
    },
    /// Flash a fixture onto a bench device by hand.
    Flash {
        device: String,
        fixture: String,
        #[arg(long)]
        bench: PathBuf,
        #[arg(long)]
        fixtures: Option<PathBuf>,
        #[arg(long, value_parser = parse_dur)]
        wait_lock: Option<Duration>,
    },
    /// Soft-reset a bench device (its core restarts, power stays on).
    Reset {
        device: String,
        #[arg(long)]
        bench: PathBuf,
        #[arg(long, value_parser = parse_dur)]
        wait_lock: Option<Duration>,
    },
    /// Stream a bench device's console; optionally send a line first.
    Console {
        device: String,
        #[arg(long)]
        bench: PathBuf,
        /// A line to send once the console is open.
        #[arg(long)]
        send: Option<String>,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long = "for", value_parser = parse_dur)]
        duration: Option<Duration>,
        #[arg(long, value_parser = parse_dur)]
        wait_lock: Option<Duration>,
    },
    /// Break the session cache of a running `rig cloud serve`:
    /// kill | start | flush | snapshot NAME | restore empty|NAME | evict FRACTION | pause DURATION
    Cache {
        #[arg(required = true, num_args = 1..=2)]
        command: Vec<String>,
        /// The serving cloud's --out folder.
        #[arg(long, default_value = "reports/cloud")]
        cloud: PathBuf,
    },
    /// Measure the cloud's throughput over UDP loopback (full handshakes and
    /// session resumes per second).
    Bench {
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Session cache: memory or redis (a redis-server child).
        #[arg(long, default_value = "memory")]
        cache: CacheArg,
    },
}

#[derive(Subcommand)]
enum ReportCmd {
    /// Combine runs (e.g. from several bench rigs) into one junit.xml and one sign-off.
    Merge {
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CloudCmd {
    /// Serve devices of a bench over UDP until Ctrl-C.
    Serve {
        /// Bench file whose device keys the cloud accepts (default: the built-in sim bench).
        #[arg(long)]
        bench: Option<PathBuf>,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:5684")]
        listen: String,
        #[arg(long, default_value = "memory")]
        cache: CacheArg,
        #[arg(long, default_value = "drop")]
        mitigation: MitigationArg,
        /// Folder for events.jsonl, the redis data and the durable key store.
        #[arg(long, default_value = "reports/cloud")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PowerArg {
    On,
    Off,
    Cycle,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    rig::units::Dur::parse(s).map(|d| d.0)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CacheArg {
    Memory,
    Redis,
}

impl From<CacheArg> for rig::bench::CacheKind {
    fn from(c: CacheArg) -> Self {
        match c {
            CacheArg::Memory => rig::bench::CacheKind::Memory,
            CacheArg::Redis => rig::bench::CacheKind::Redis,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MitigationArg {
    Drop,
    Reject,
    Durable,
}

impl From<MitigationArg> for rig::cloud::Mitigation {
    fn from(m: MitigationArg) -> Self {
        match m {
            MitigationArg::Drop => rig::cloud::Mitigation::Drop,
            MitigationArg::Reject => rig::cloud::Mitigation::Reject,
            MitigationArg::Durable => rig::cloud::Mitigation::Durable,
        }
    }
}

#[derive(Args)]
struct InputArgs {
    /// Test plan files (YAML).
    #[arg(required = true)]
    plans: Vec<PathBuf>,
    /// Bench file; without it, the built-in simulated bench.
    #[arg(long)]
    bench: Option<PathBuf>,
    /// Override a plan variable or pin a matrix axis: --set fixture=sleepy-1.1
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = plan::parse_set)]
    sets: Vec<(String, String)>,
    /// Fixtures folder; by default the firmware-fixtures/ found beside or above the plan.
    #[arg(long)]
    fixtures: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Seed for every random choice (jitter, nonces, eviction). Printed when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Where run folders are created.
    #[arg(long, default_value = "reports")]
    out: PathBuf,
    /// Wait this long for the bench lock instead of failing when another run holds it.
    #[arg(long, value_parser = parse_dur)]
    wait_lock: Option<Duration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic must not leave a relay in whatever state it was.
    rig::drivers::power::safe::install_panic_hook();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Check(a) => cmd_check(a),
        Cmd::Report {
            cmd: Some(ReportCmd::Merge { run_dirs, out }),
            ..
        } => cmd_merge(&run_dirs, &out),
        Cmd::Report { run_dir: Some(d), .. } => cmd_report(&d),
        Cmd::Report { .. } => {
            eprintln!("error: rig report needs a RUN_DIR (or `merge RUN_DIR... --out DIR`)");
            exit::BAD_INPUT
        }
        Cmd::Cloud {
            cmd:
                CloudCmd::Serve {
                    bench,
                    listen,
                    cache,
                    mitigation,
                    out,
                },
        } => cmd_cloud_serve(bench.as_ref(), &listen, cache, mitigation, &out),
        Cmd::Bench {
            clients,
            seconds,
            cache,
        } => cmd_bench(clients, seconds, cache),
        Cmd::Doctor { bench } => cmd_doctor(bench.as_ref()),
        Cmd::Cache { command, cloud } => cmd_cache(&command.join(" "), &cloud),
        Cmd::Flash {
            device,
            fixture,
            bench,
            fixtures,
            wait_lock,
        } => with_device(&bench, &device, wait_lock, "flash", |dev, _| async move {
            let dir = fixtures
                .or_else(|| fixture::find_dir(Path::new(".")))
                .ok_or("no firmware-fixtures/ here; use --fixtures DIR")?;
            let all = Fixtures::load(&dir).map_err(|e| diag::render(&e))?;
            let fx = all
                .get(&fixture)
                .ok_or_else(|| format!("unknown fixture `{fixture}` (available: {})", all.names()))?;
            dev.flash(&fx).await.map_err(|e| e.to_string())?;
            Ok(format!(
                "flashed {} {} (sha256 {}) with {}",
                fx.name,
                fx.version,
                fx.sha256,
                dev.describe_flasher()
            ))
        }),
        Cmd::Reset {
            device,
            bench,
            wait_lock,
        } => with_device(&bench, &device, wait_lock, "reset", |dev, _| async move {
            dev.soft_reset().await.map_err(|e| e.to_string())?;
            Ok("soft reset".to_string())
        }),
        Cmd::Console {
            device,
            bench,
            send,
            duration,
            wait_lock,
        } => with_device(&bench, &device, wait_lock, "console", |dev, tl| async move {
            let mut interrupt = rig::signals::Interrupt::new();
            if let Some(line) = send {
                dev.console_send_confirmed(&line).await.map_err(|e| e.to_string())?;
            }
            let printer = tl.wait(0, duration, |e| {
                if let rig::timeline::EventKind::ConsoleLine { line, .. } = &e.kind {
                    println!("{line}");
                } else if let rig::timeline::EventKind::ConsoleGap { ms } = &e.kind {
                    println!("--- console link gap of {ms} ms ---");
                }
                false
            });
            tokio::select! {
                _ = printer => {}
                _ = interrupt.recv() => {}
            }
            Ok("console closed".to_string())
        }),
        Cmd::Power {
            device,
            action,
            bench,
            off_for,
            wait_lock,
        } => cmd_power(&device, action, &bench, off_for, wait_lock),
    };
    ExitCode::from(code)
}

fn load(input: &InputArgs) -> Result<(Bench, Fixtures, Vec<Plan>), Vec<Diagnostic>> {
    let bench = Bench::load_or_builtin(input.bench.as_ref())?;
    let fixtures_dir = match &input.fixtures {
        Some(d) => d.clone(),
        None => {
            let start = input.plans[0].parent().map(Path::to_path_buf).unwrap_or_default();
            let start = if start.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                start
            };
            fixture::find_dir(&start).ok_or_else(|| {
                vec![Diagnostic::file(
                    &input.plans[0],
                    "no firmware-fixtures/ folder beside or above this plan or in the current directory (use --fixtures DIR)",
                )]
            })?
        }
    };
    let fixtures = Fixtures::load(&fixtures_dir)?;
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for p in &input.plans {
        match plan::load(p, &bench, &fixtures, &input.sets) {
            Ok(plan) => plans.push(plan),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok((bench, fixtures, plans))
    } else {
        Err(errors)
    }
}

fn bad_input(errors: &[Diagnostic]) -> u8 {
    eprintln!("{}", diag::render(errors));
    eprintln!(
        "\n{} error{} in the input; nothing was run.",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    exit::BAD_INPUT
}

fn cmd_check(input: InputArgs) -> u8 {
    match load(&input) {
        Ok((bench, _, plans)) => {
            for p in &plans {
                println!(
                    "{}: ok ({} cell{}, bench {})",
                    p.path.display(),
                    p.cells.len(),
                    if p.cells.len() == 1 { "" } else { "s" },
                    bench.name
                );
            }
            exit::PASSED
        }
        Err(e) => bad_input(&e),
    }
}

fn cmd_run(args: RunArgs) -> u8 {
    let (bench, fixtures, plans) = match load(&args.input) {
        Ok(x) => x,
        Err(e) => return bad_input(&e),
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 & 0xffff_ffff)
            .unwrap_or(1)
    });
    eprintln!(
        "rig {}: bench `{}` ({} devices, {} clock), seed {seed} (rerun with --seed {seed})",
        env!("CARGO_PKG_VERSION"),
        bench.name,
        bench.devices.len(),
        bench.clock
    );
    let _lock = if bench.lock {
        let plans: Vec<String> = args.input.plans.iter().map(|p| p.display().to_string()).collect();
        match take_lock(&bench.name, &plans.join(" "), args.wait_lock) {
            Ok(l) => Some(l),
            Err(code) => return code,
        }
    } else {
        None
    };
    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress)
    };
    let wall = std::time::Instant::now();
    let cfg = RunConfig {
        bench: &bench,
        fixtures: &fixtures,
        plans: &plans,
        seed,
        out: &args.out,
        progress: progress.as_ref(),
    };
    let result = match runner::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rig fault: {e:#}");
            return exit::RIG_FAULT;
        }
    };
    drop(progress);
    print!("\n{}", report::verdict_table(&result.summary));
    let plan_ms: u64 = result.summary.cells.iter().map(|c| c.plan_ms).sum();
    println!(
        "\nseed {seed}; {} of plan time in {} of wall time; reports in {}",
        rig::units::fmt_duration(Duration::from_millis(plan_ms)),
        rig::units::fmt_duration(wall.elapsed()),
        result.dir.display()
    );
    match result.summary.exit_code {
        0 => exit::PASSED,
        1 => exit::FAILED,
        _ => exit::RIG_FAULT,
    }
}

fn cmd_report(dir: &Path) -> u8 {
    let path = dir.join("events.jsonl");
    let (header, events) = match rig::timeline::read_jsonl(&path) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::BAD_INPUT;
        }
    };
    match report::write_all(dir, &header, &events) {
        Ok(summary) => {
            print!("{}", report::verdict_table(&summary));
            println!("\nreports re-rendered in {}", dir.display());
            match summary.exit_code {
                0 => exit::PASSED,
                1 => exit::FAILED,
                _ => exit::RIG_FAULT,
            }
        }
        Err(e) => {
            eprintln!("rig fault: cannot write reports in {}: {e}", dir.display());
            exit::RIG_FAULT
        }
    }
}

fn take_lock(bench: &str, what: &str, wait: Option<Duration>) -> Result<rig::lock::BenchLock, u8> {
    let me = rig::lock::Holder::me(what);
    match rig::lock::acquire(&rig::lock::lock_dir(), bench, &me, wait) {
        Ok(l) => {
            if let Some(dead) = &l.took_over {
                eprintln!(
                    "warning: bench `{bench}` was left locked by a run that ended without releasing it ({dead}); taking over, the safe power state is restored first"
                );
            }
            Ok(l)
        }
        Err(e) => {
            eprintln!("rig fault: {e}");
            Err(exit::RIG_FAULT)
        }
    }
}

/// Loads `bench` and finds hardware device `device` in it, or says why not.
fn hardware_bench_device(bench: &Path, device: &str) -> Result<(Bench, usize), u8> {
    let b = Bench::load(bench).map_err(|e| bad_input(&e))?;
    let Some(i) = b.devices.iter().position(|d| d.id == device) else {
        eprintln!(
            "error: no device `{device}` on bench `{}` (devices: {})",
            b.name,
            b.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>().join(", ")
        );
        return Err(exit::BAD_INPUT);
    };
    if b.devices[i].is_sim {
        eprintln!("error: `{device}` is a simulated board; it exists only inside `rig run`");
        return Err(exit::BAD_INPUT);
    }
    Ok((b, i))
}

/// Prints the outcome of a hands-on command and maps it to an exit code.
fn hands_on_result(device: &str, res: Result<String, String>) -> u8 {
    match res {
        Ok(msg) => {
            eprintln!("{device}: {msg}");
            exit::PASSED
        }
        Err(e) => {
            eprintln!("rig fault: {device}: {e}");
            exit::RIG_FAULT
        }
    }
}

/// Builds one hardware device of a bench (under the bench lock) and runs `f`.
fn with_device<F, Fut>(bench: &Path, device: &str, wait_lock: Option<Duration>, what: &str, f: F) -> u8
where
    F: FnOnce(rig::runner::device::DeviceHandle, rig::timeline::Timeline) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let (b, i) = match hardware_bench_device(bench, device) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let _lock = match take_lock(&b.name, &format!("rig {what} {device}"), wait_lock) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(rt) = runtime() else { return exit::RIG_FAULT };
    let res = rt.block_on(async {
        let tl = rig::timeline::Timeline::in_memory();
        let dev = rig::runner::world::hardware_device(&b.devices[i], &b, &tl).map_err(|e| e.to_string())?;
        f(dev, tl).await
    });
    hands_on_result(device, res)
}

fn cmd_cache(line: &str, cloud: &Path) -> u8 {
    use std::io::{BufRead, BufReader, Write};
    let sock = rig::serve::admin_socket(cloud);
    let mut stream = match std::os::unix::net::UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "rig fault: no cloud serving at {} ({e}); start one with `rig cloud serve --out {}`",
                sock.display(),
                cloud.display()
            );
            return exit::RIG_FAULT;
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reply = String::new();
    let sent = stream.write_all(format!("{line}\n").as_bytes());
    let got = BufReader::new(&stream).read_line(&mut reply);
    match (sent, got) {
        (Ok(()), Ok(_)) if reply.trim() == "ok" => {
            println!("cache {line}: ok");
            exit::PASSED
        }
        (Ok(()), Ok(_)) if reply.contains("unknown cache command") => {
            eprintln!("{}", reply.trim());
            exit::BAD_INPUT
        }
        (Ok(()), Ok(_)) => {
            eprintln!("rig fault: cache {line}: {}", reply.trim());
            exit::RIG_FAULT
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rig fault: cache {line}: {e}");
            exit::RIG_FAULT
        }
    }
}

fn cmd_doctor(bench: Option<&PathBuf>) -> u8 {
    print!("{}", rig::doctor::render("this machine:", &rig::doctor::machine()));
    let Some(path) = bench else { return exit::PASSED };
    let b = match Bench::load(path) {
        Ok(b) => b,
        Err(e) => return bad_input(&e),
    };
    let findings = rig::doctor::bench(&b);
    print!(
        "{}",
        rig::doctor::render(&format!("bench `{}` ({}):", b.name, path.display()), &findings)
    );
    let missing = findings.iter().filter(|f| !f.ok).count();
    if missing == 0 {
        println!("everything bench `{}` needs is here", b.name);
        exit::PASSED
    } else {
        println!(
            "{missing} resource{} of bench `{}` missing",
            if missing == 1 { "" } else { "s" },
            b.name
        );
        exit::RIG_FAULT
    }
}

fn cmd_power(device: &str, action: PowerArg, bench: &Path, off_for: Duration, wait_lock: Option<Duration>) -> u8 {
    // Only the power driver: switching a relay must not need the console.
    let (b, i) = match hardware_bench_device(bench, device) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let _lock = match take_lock(&b.name, &format!("rig power {device}"), wait_lock) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(rt) = runtime() else { return exit::RIG_FAULT };
    let res = rt.block_on(async {
        let power = rig::runner::world::build_power(&b.devices[i], &b)?;
        let r = match action {
            PowerArg::On => power.set(true).await,
            PowerArg::Off => power.set(false).await,
            PowerArg::Cycle => match power.set(false).await {
                Ok(()) => {
                    tokio::time::sleep(off_for).await;
                    power.set(true).await
                }
                Err(e) => Err(e),
            },
        };
        let done = match action {
            PowerArg::On => "on",
            PowerArg::Off => "off",
            PowerArg::Cycle => "cycled",
        };
        r.map(|_| format!("power {done} ({})", power.describe()))
            .map_err(|e| e.to_string())
    });
    hands_on_result(device, res)
}
fn cmd_merge(dirs: &[PathBuf], out: &Path) -> u8 {
    let mut runs = Vec::new();
    for d in dirs {
        match report::load(d) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::BAD_INPUT;
            }
        }
    }
    match report::merge(&runs, out) {
        Ok(code) => {
            for r in &runs {
                print!("{}", report::verdict_table(&r.summary));
            }
            println!("\n{} runs merged into {}", runs.len(), out.display());
            match code {
                0 => exit::PASSED,
                1 => exit::FAILED,
                _ => exit::RIG_FAULT,
            }
        }
        Err(e) => {
            eprintln!("rig fault: cannot write {}: {e}", out.display());
            exit::RIG_FAULT
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("rig fault: cannot start the async runtime: {e}");
            None
        }
    }
}

fn cmd_cloud_serve(
    bench: Option<&PathBuf>,
    listen: &str,
    cache: CacheArg,
    mitigation: MitigationArg,
    out: &Path,
) -> u8 {
    let bench = match Bench::load_or_builtin(bench) {
        Ok(b) => b,
        Err(e) => return bad_input(&e),
    };
    let Some(rt) = runtime() else { return exit::RIG_FAULT };
    let opts = rig::serve::ServeOptions {
        bench: &bench,
        listen,
        cache: cache.into(),
        mitigation: mitigation.into(),
        dir: out,
        seed: 1,
    };
    match rt.block_on(rig::serve::run(opts)) {
        Ok(()) => exit::PASSED,
        Err(e) => {
            eprintln!("rig fault: {e:#}");
            exit::RIG_FAULT
        }
    }
}

fn cmd_bench(clients: usize, seconds: f64, cache: CacheArg) -> u8 {
    if clients == 0 || !seconds.is_finite() || seconds <= 0.0 {
        eprintln!("error: --clients must be at least 1 and --seconds positive");
        return exit::BAD_INPUT;
    }
    let Some(rt) = runtime() else { return exit::RIG_FAULT };
    let dir = tempfile_dir();
    let redis_dir = matches!(cache, CacheArg::Redis).then(|| dir.join("redis"));
    let res = rt.block_on(rig::benchmark::run(
        clients,
        Duration::from_secs_f64(seconds),
        redis_dir.as_deref(),
    ));
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(f) => {
            print!("{f}");
            exit::PASSED
        }
        Err(e) => {
            eprintln!("rig fault: {e:#}");
            exit::RIG_FAULT
        }
    }
}

fn tempfile_dir() -> PathBuf {
    std::env::temp_dir().join(format!("rig-bench-{}", std::process::id()))
}

/// Plain lines for CI logs.
struct LineProgress;

impl Progress for LineProgress {
    fn cell_start(&self, index: usize, total: usize, plan: &str, cell: &str) {
        eprintln!("[{index}/{total}] {plan} [{cell}]");
    }
    fn step(&self, n: usize, desc: &str, t_ms: u64) {
        eprintln!("  {} step {n}: {desc}", fmt_clock(t_ms));
    }
    fn cell_end(&self, line: &str) {
        eprintln!("  => {line}");
    }
}

/// An indicatif spinner for terminals.
struct BarProgress {
    bar: ProgressBar,
    cell: Mutex<String>,
}

impl BarProgress {
    fn new() -> BarProgress {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        BarProgress {
            bar,
            cell: Mutex::new(String::new()),
        }
    }
}

impl Progress for BarProgress {
    fn cell_start(&self, index: usize, total: usize, plan: &str, cell: &str) {
        let c = format!("[{index}/{total}] {plan} [{cell}]");
        self.bar.set_message(c.clone());
        *self.cell.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }
    fn step(&self, n: usize, desc: &str, t_ms: u64) {
        let cell = self.cell.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.bar
            .set_message(format!("{cell} · plan time {} · step {n}: {desc}", fmt_clock(t_ms)));
    }
    fn cell_end(&self, line: &str) {
        self.bar.println(format!("  {line}"));
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
