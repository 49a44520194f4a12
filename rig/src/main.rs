//! The `rig` command line: argument definitions (clap) and dispatch. What
//! each command does is in the library's `cli` module; exit codes are
//! chosen there, in one place.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use rig::cli::{self, CliError, hands_on, run};
use rig::report::Overall;

// A fleet run allocates and frees an event's strings at every wake of every
// device, on several threads: glibc's malloc spent ~15 % of a 10k-device
// run in its own bookkeeping (see the README's fleet figures).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Validate plans against a bench and fixtures without running them (or, with only --bench, the bench file).
    Check(CheckArgs),
    /// Re-render the reports of a run folder from its events.jsonl, or merge runs.
    #[command(args_conflicts_with_subcommands = true)]
    Report {
        #[command(subcommand)]
        cmd: Option<ReportCmd>,
        /// Run folders, e.g. reports/20261123-101500-session-cache-crash
        run_dirs: Vec<PathBuf>,
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
    /// Flash a fixture onto a bench device by hand (its power is left as it is).
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
    /// Soft-reset a bench device (its core restarts, power stays as it is).
    Reset {
        device: String,
        #[arg(long)]
        bench: PathBuf,
        #[arg(long, value_parser = parse_dur)]
        wait_lock: Option<Duration>,
    },
    /// Stream a bench device's console; optionally send a line first (power stays as it is).
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
    /// session resumes per second, against a raw UDP echo floor measured in
    /// the same run); `rig bench storm`, `fleet` and `qemu` measure more.
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
        /// Concurrent clients (1 to 10000).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds per phase (at most 3600).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Session caches to measure one after the other, comma-separated:
        /// memory, redis (a redis-server child), redis-cluster (3 masters).
        #[arg(long, default_value = "memory", value_delimiter = ',')]
        cache: Vec<CacheArg>,
        /// Cloud workers (sessions partitioned by id; 1 = one receive loop;
        /// default one per core, 2 to 16).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Print a shell completion script: rig completions bash > /etc/bash_completion.d/rig
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): rig man > rig.1 && man ./rig.1
    Man,
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
    /// Serve devices of a bench over UDP until Ctrl-C or SIGTERM.
    Serve {
        /// Bench file whose device keys the cloud accepts (default: the built-in sim bench).
        #[arg(long)]
        bench: Option<PathBuf>,
        /// UDP address to listen on (loopback unless you say otherwise: 0.0.0.0:5684 for a bench network).
        #[arg(long, default_value = "127.0.0.1:5684")]
        listen: String,
        /// Session cache: memory, redis (a redis-server child), redis-cluster (3 masters)
        /// or remote-redis (a server someone else runs, its URL in $RIG_CACHE_URL).
        #[arg(long, default_value = "memory")]
        cache: CacheArg,
        #[arg(long, default_value = "drop")]
        mitigation: rig::cloud::Mitigation,
        /// Folder for events.jsonl, the redis data and the durable key store.
        #[arg(long, default_value = "reports/cloud")]
        out: PathBuf,
        /// Return once the cloud is serving, leaving it running (log in OUT/serve.log).
        #[arg(long)]
        background: bool,
    },
    /// Stop a cloud started with `rig cloud serve` (e.g. in the background).
    Stop {
        /// The serving cloud's --out folder.
        #[arg(long, default_value = "reports/cloud")]
        cloud: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PowerArg {
    On,
    Off,
    Cycle,
}

fn parse_dur(s: &str) -> Result<Duration, rig::units::BadDuration> {
    rig::units::Dur::parse(s).map(|d| d.0)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CacheArg {
    Memory,
    Redis,
    RedisCluster,
    RemoteRedis,
}

impl From<CacheArg> for rig::cache::CacheCfg {
    fn from(c: CacheArg) -> Self {
        match c {
            CacheArg::Memory => rig::cache::CacheCfg::Memory(rig::cache::memory::MemoryCfg {}),
            CacheArg::Redis => rig::cache::CacheCfg::Redis(Default::default()),
            CacheArg::RedisCluster => rig::cache::CacheCfg::RedisCluster(rig::cache::redis_cluster::RedisClusterCfg {
                masters: 3,
                replicas: 0,
            }),
            CacheArg::RemoteRedis => rig::cache::CacheCfg::RemoteRedis(Default::default()),
        }
    }
}

/// What plans run against: shared by `rig run` and `rig check`.
#[derive(Subcommand)]
enum BenchWhat {
    /// The reconnect storm after a cache crash: every client gets a session,
    /// the cache is killed and comes back empty, all clients wake at once;
    /// time until all are back, peak handshakes/s, p99 and kernel drops.
    Storm {
        /// Clients, each with its own UDP socket (1 to 10000).
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Session caches, one storm each, comma-separated: memory, redis, redis-cluster.
        #[arg(long, default_value = "memory", value_delimiter = ',')]
        cache: Vec<CacheArg>,
        /// Cloud workers (default one per core, 2 to 16).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// What `rig console` costs a flooded board: lines/s, latency (p50, p99)
    /// and memory of a real `rig console` reading a pty, against a plain
    /// reader of the same pty.
    Console {
        /// Lines per reader (10 to 100,000,000).
        #[arg(long, default_value_t = 1_000_000)]
        lines: u64,
        /// Lines written per second (0: as fast as the reader takes them;
        /// a 115200-baud UART carries about 150 such lines per second).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Wall time, CPU and memory of emulated boards running wake cycles
    /// (needs qemu-system-arm and the images: make -C firmware-fixtures/sleepy-c).
    Qemu {
        /// Boards (1 to 256).
        #[arg(long, default_value_t = 32)]
        boards: usize,
        /// Wake cycles per board.
        #[arg(long, default_value_t = 10)]
        cycles: u32,
        /// The fixture every board runs.
        #[arg(long, default_value = "sleepy-1.2")]
        fixture: String,
    },
    /// What a running `rig cloud serve` holds in memory under load: a child
    /// cloud driven by handshakes and resumes, its RSS sampled every second.
    Serve {
        /// Protocol clients (1 to 16, the cloud's pending handshakes per address).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of load, in one-second phases of handshakes and resumes.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Wake cycles per wall second, memory and journal bytes per wake of a
    /// simulated fleet on the virtual clock, against the AEAD floor.
    Fleet {
        /// Devices (1 to 200,000).
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Hours of plan time (3 to 720), with one cache crash.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Keep the run folder under this folder (default: a temporary one).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Slices run side by side, one thread each (as `rig run --jobs`);
        /// by default one per core.
        #[arg(long)]
        jobs: Option<usize>,
    },
}

#[derive(Args)]
struct Against {
    /// Bench file; without it, the built-in simulated bench.
    #[arg(long)]
    bench: Option<PathBuf>,
    /// Override a plan variable or pin a matrix axis: --set fixture=sleepy-1.1
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = rig::plan::parse_set)]
    sets: Vec<(String, String)>,
    /// Fixtures folder; by default the firmware-fixtures/ found beside or above the plan.
    #[arg(long)]
    fixtures: Option<PathBuf>,
}

impl Against {
    fn with(self, plans: Vec<PathBuf>) -> run::InputOpts {
        run::InputOpts {
            plans,
            bench: self.bench,
            sets: self.sets,
            fixtures: self.fixtures,
        }
    }
}

#[derive(Args)]
struct InputArgs {
    /// Test plan files (YAML).
    #[arg(required = true)]
    plans: Vec<PathBuf>,
    #[command(flatten)]
    against: Against,
}

#[derive(Args)]
struct CheckArgs {
    /// Test plan files (YAML); none to check only the --bench file.
    #[arg(required_unless_present = "bench")]
    plans: Vec<PathBuf>,
    #[command(flatten)]
    against: Against,
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
    /// Run only the K-th of N slices of the bench's devices (needs --seed);
    /// `rig report merge` joins the slices into one fleet sign-off.
    #[arg(long)]
    shard: Option<rig::bench::Shard>,
    /// Run a virtual-clock bench's devices as N slices side by side, one
    /// core each, joined into one run's reports (what `--shard K/N` on N
    /// runners and `rig report merge` give).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Matrix cells of a virtual-clock bench run side by side, one thread
    /// each (default: one per core; 1 runs them one after another). The
    /// journal and reports are the same either way.
    #[arg(long)]
    cell_jobs: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic must not leave a relay in whatever state it was.
    rig::drivers::power::safe::install_panic_hook();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,redis=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    ExitCode::from(cli::finish(dispatch(cli.cmd)))
}

fn dispatch(cmd: Cmd) -> Result<Overall, CliError> {
    match cmd {
        Cmd::Run(a) => run::run(&run::RunOpts {
            input: a.input.against.with(a.input.plans),
            seed: a.seed,
            out: a.out,
            wait_lock: a.wait_lock,
            shard: a.shard,
            jobs: a.jobs,
            cell_jobs: a
                .cell_jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        }),
        Cmd::Check(a) => run::check(&a.against.with(a.plans)),
        Cmd::Report {
            cmd: Some(ReportCmd::Merge { run_dirs, out }),
            ..
        } => run::merge(&run_dirs, &out),
        Cmd::Report { run_dirs, .. } if !run_dirs.is_empty() => run::report(&run_dirs),
        Cmd::Report { .. } => Err(CliError::Usage(
            "rig report needs a RUN_DIR (or `merge RUN_DIR... --out DIR`)".into(),
        )),
        Cmd::Cloud {
            cmd: CloudCmd::Serve {
                background: true, out, ..
            },
        } => {
            // The same command line, minus --background, as the child.
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).filter(|a| a != "--background").collect();
            cli::cloud::serve_in_background(&out, &args)
        }
        Cmd::Cloud {
            cmd: CloudCmd::Stop { cloud },
        } => cli::cloud::stop(&cloud),
        Cmd::Cloud {
            cmd:
                CloudCmd::Serve {
                    bench,
                    listen,
                    cache,
                    mitigation,
                    out,
                    ..
                },
        } => cli::cloud::serve(&cli::cloud::ServeOpts {
            bench,
            listen,
            cache: cache.into(),
            mitigation,
            out,
        }),
        Cmd::Bench {
            what:
                Some(BenchWhat::Qemu {
                    boards,
                    cycles,
                    fixture,
                }),
            ..
        } => cli::bench_qemu::run(boards, cycles, &fixture),
        Cmd::Bench {
            what:
                Some(BenchWhat::Storm {
                    devices,
                    cache,
                    workers,
                }),
            ..
        } => cli::cloud::storm(devices, cache.into_iter().map(Into::into).collect(), workers),
        Cmd::Bench {
            what: Some(BenchWhat::Serve { clients, seconds }),
            ..
        } => cli::bench_serve::run(clients, seconds),
        Cmd::Bench {
            what: Some(BenchWhat::Console { lines, rate }),
            ..
        } => cli::bench_console::run(lines, rate),
        Cmd::Bench {
            what:
                Some(BenchWhat::Fleet {
                    devices,
                    hours,
                    out,
                    jobs,
                }),
            ..
        } => cli::bench_fleet::run(
            devices,
            hours,
            jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            out.as_deref(),
        ),
        Cmd::Bench {
            what: None,
            clients,
            seconds,
            cache,
            workers,
        } => cli::cloud::bench(clients, seconds, cache.into_iter().map(Into::into).collect(), workers),
        Cmd::Doctor { bench } => rig::doctor::command(bench.as_deref()),
        Cmd::Cache { command, cloud } => cli::cache_client::send(&command.join(" "), &cloud),
        Cmd::Flash {
            device,
            fixture,
            bench,
            fixtures,
            wait_lock,
        } => hands_on::flash(&device, &fixture, &bench, fixtures.as_ref(), wait_lock),
        Cmd::Reset {
            device,
            bench,
            wait_lock,
        } => hands_on::reset(&device, &bench, wait_lock),
        Cmd::Console {
            device,
            bench,
            send,
            duration,
            wait_lock,
        } => hands_on::console(&device, &bench, send, duration, wait_lock),
        Cmd::Power {
            device,
            action,
            bench,
            off_for,
            wait_lock,
        } => {
            let action = match action {
                PowerArg::On => hands_on::PowerAction::On,
                PowerArg::Off => hands_on::PowerAction::Off,
                PowerArg::Cycle => hands_on::PowerAction::Cycle,
            };
            hands_on::power(&device, action, &bench, off_for, wait_lock)
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rig", &mut std::io::stdout());
            Ok(Overall::Passed)
        }
        Cmd::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(CliError::fault)?;
            Ok(Overall::Passed)
        }
    }
}
