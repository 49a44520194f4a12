//! The command line's library half: what each `rig` subcommand does, and
//! the one place where an outcome becomes an exit code ([`exit`],
//! [`overall_code`], [`CliError::exit_code`]). `main.rs` only
//! defines the arguments (clap) and dispatches here.
//!
//! # Layout
//! - [`inputs`]: loading plans, benches and fixtures the way every command does.
//! - [`run`]: `rig run`, `rig check`, `rig report` (and `merge`).
//! - [`hands_on`]: `rig power|flash|reset|console` on one bench device.
//! - [`cache_client`]: `rig cache ...` against a serving cloud's admin socket.
//! - [`cloud`]: `rig cloud serve` and `rig bench`; [`bench_qemu`]: `rig bench qemu`;
//!   [`bench_fleet`]: `rig bench fleet`.
//! - [`progress`]: what a run shows while it runs (a bar on a terminal, lines in CI).

pub mod bench_console;
pub mod bench_fleet;
pub mod bench_qemu;
pub mod bench_serve;
pub mod cache_client;
pub mod cloud;
pub mod hands_on;
pub mod inputs;
pub mod progress;
pub mod run;

use crate::diag::{self, Diagnostic};
use crate::report::Overall;

/// The documented exit codes (README, `rig --help`).
pub mod exit {
    /// Everything behaved as the plan expects.
    pub const PASSED: u8 = 0;
    /// A check failed: the firmware (or the cloud under test) misbehaved.
    pub const FAILED: u8 = 1;
    /// Bad plan, bench, fixture or usage: nothing was run.
    pub const BAD_INPUT: u8 = 2;
    /// A rig or bench fault, or an interrupted run: no verdict.
    pub const RIG_FAULT: u8 = 3;
}

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Errors pointing into input files.
    #[error("{}", render_input(.0))]
    Input(Vec<Diagnostic>),
    /// A bad argument or a name that does not exist.
    #[error("error: {0}")]
    Usage(String),
    /// The rig, the bench or the machine failed.
    #[error("rig fault: {0}")]
    Fault(String),
}

fn render_input(errors: &[Diagnostic]) -> String {
    format!(
        "{}\n\n{} error{} in the input; nothing was run.",
        diag::render(errors),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    )
}

/// A journal that cannot be read is the user's input being wrong (a folder
/// that is not a run folder, a damaged file), not the rig failing.
impl From<crate::timeline::ReadError> for CliError {
    fn from(e: crate::timeline::ReadError) -> CliError {
        CliError::Usage(e.to_string())
    }
}

impl From<crate::cache::BadCacheCommand> for CliError {
    fn from(e: crate::cache::BadCacheCommand) -> CliError {
        CliError::Usage(e.to_string())
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) | CliError::Usage(_) => exit::BAD_INPUT,
            CliError::Fault(_) => exit::RIG_FAULT,
        }
    }

    pub fn fault(e: impl std::fmt::Display) -> CliError {
        CliError::Fault(e.to_string())
    }
}

impl From<Vec<Diagnostic>> for CliError {
    fn from(d: Vec<Diagnostic>) -> Self {
        CliError::Input(d)
    }
}

/// What a command that judges something concluded.
pub fn overall_code(o: Overall) -> u8 {
    match o {
        Overall::Passed => exit::PASSED,
        Overall::Failed => exit::FAILED,
        Overall::NoVerdict => exit::RIG_FAULT,
    }
}

/// The exit code of any command's result; errors are printed here, once.
pub fn finish(r: Result<Overall, CliError>) -> u8 {
    match r {
        Ok(o) => overall_code(o),
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

/// A multi-threaded runtime for commands that are not runs (hands-on,
/// serving); runs build their own per cell.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Fault(format!("cannot start the async runtime: {e}")))
}
