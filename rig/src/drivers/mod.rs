//! The hardware seams: one small trait per thing the rig does to a board,
//! and the backends that implement them.
//!
//! # Layout
//! - [`power`]: `gpio`, `serial-relay`, `command` (and [`power::safe`], the
//!   safe state restored on every exit path).
//! - [`flash`]: `probe-rs`, `command`.
//! - [`reset`]: `gpio`, `console`, `probe-rs`.
//! - [`console`]: turning a console byte stream into timeline events, and
//!   [`console::serial`], the reconnecting serial port driver.
//!
//! Each backend is one folder: its config struct (parsed and validated
//! where it lives), its error enum (folded into [`DriverError`]), whether it
//! is available on this machine ([`Availability`], which `rig doctor`
//! prints), and its implementation of the seam's trait. A seam's `mod.rs`
//! registers its backends in one `backends!` list: adding one is a folder
//! and a line. Optional capabilities are trait methods whose default is
//! [`DriverError::Unsupported`].
//!
//! Drivers do not write to the timeline; the runner's device wrapper records
//! what it asked for and what happened, so every path (plans, hands-on
//! commands) is observed the same way.

pub mod console;
pub mod flash;
pub mod power;
pub mod reset;
pub mod shell;

use async_trait::async_trait;

use crate::fixture::Fixture;

/// A driver failure. Messages say what to check, not just what failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{what} is not supported by the {driver} driver")]
    Unsupported { driver: &'static str, what: String },
    #[error("target not powered: {0}")]
    NotPowered(String),
    #[error("console link is gone (device unpowered or USB re-enumerating)")]
    LinkGone,
    #[error(transparent)]
    Gpio(#[from] power::gpio::GpioError),
    #[error(transparent)]
    SerialRelay(#[from] power::serial_relay::SerialRelayError),
    #[error(transparent)]
    Command(#[from] shell::CommandError),
    #[error(transparent)]
    Probe(#[from] flash::probe_rs::ProbeError),
    #[error(transparent)]
    Serial(#[from] console::serial::SerialError),
    #[error(transparent)]
    Qemu(#[from] crate::board::qemu::QemuError),
}

/// Whether a configured resource is usable on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Present and usable.
    Found(String),
    /// Present, but this user may not use it; `fix` says how.
    NoPermission { detail: String, fix: String },
    /// Not there (unplugged, unpowered, not installed).
    NotFound(String),
}

impl Availability {
    pub fn ok(&self) -> bool {
        matches!(self, Availability::Found(_))
    }

    pub fn detail(&self) -> String {
        match self {
            Availability::Found(d) | Availability::NotFound(d) => d.clone(),
            Availability::NoPermission { detail, fix } => format!("{detail}: {fix}"),
        }
    }

    /// Whether `path` can be opened for reading and writing by this user.
    pub fn of_path(path: &str, present: &str) -> Availability {
        let p = std::path::Path::new(path);
        if !p.exists() {
            return Availability::NotFound("missing (unplugged or unpowered?)".into());
        }
        match std::fs::OpenOptions::new().read(true).write(true).open(p) {
            Ok(_) => Availability::Found(present.into()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Availability::NoPermission {
                detail: format!("no permission on {path}"),
                fix: "add the user to the `dialout` group (sudo usermod -aG dialout $USER, then log in again)".into(),
            },
            Err(e) => Availability::NotFound(format!("cannot open: {e}")),
        }
    }

    /// Whether `program` is on PATH.
    pub fn of_program(program: &str) -> Availability {
        match on_path(program) {
            Some(p) => Availability::Found(p),
            None => Availability::NotFound("not on PATH".into()),
        }
    }
}

/// The full path of `program` found on PATH.
pub fn on_path(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// What one configured backend of a device is and whether it is here.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub availability: Availability,
}

/// Declares a seam's config enum from its backends: `kind:` names the
/// backend, the rest of the section is that backend's config struct, and
/// [`Self::backend`] gives the config as the seam's backend trait object.
/// One line per backend.
macro_rules! backends {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $tr:ident {
            $($kind:literal => $variant:ident($cfg:ty),)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
        #[serde(tag = "kind", deny_unknown_fields)]
        pub enum $name {
            $(#[serde(rename = $kind)] $variant($cfg),)*
        }

        impl $name {
            /// The backend this section configures.
            pub fn backend(&self) -> &dyn $tr {
                match self {
                    $($name::$variant(c) => c,)*
                }
            }

            /// The `kind:` names of every backend.
            pub const KINDS: &[&str] = &[$($kind,)*];
        }
    };
}
pub(crate) use backends;

/// Switches a board's supply.
#[async_trait]
pub trait Power: Send + Sync {
    async fn set(&self, on: bool) -> Result<(), DriverError>;
    /// The process that is the board while it is on, for boards that are
    /// processes (an emulator); recorded with power events.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// What this driver switches, for messages ("relay on GPIO 17, active low").
    fn describe(&self) -> String;
}

/// Writes a fixture's image to a board and restarts it.
#[async_trait]
pub trait Flasher: Send + Sync {
    /// Returns the SHA-256 of the image bytes written, when the backend
    /// knows it better than the fixture's own digest does.
    async fn flash(&self, fixture: &Fixture) -> Result<Option<String>, DriverError>;
    fn describe(&self) -> String;
}

/// Restarts the board's core without removing power (retained RAM survives).
#[async_trait]
pub trait Reset: Send + Sync {
    async fn soft_reset(&self) -> Result<(), DriverError>;
}

/// A byte stream to and from the board's console.
#[async_trait]
pub trait Console: Send {
    /// Reads some bytes. `Err(LinkGone)` when the link vanished; the caller
    /// decides whether to wait and retry (a USB CDC console comes back).
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, DriverError>;
    /// Writes bytes; a console that cannot be written says so.
    async fn write(&mut self, _data: &[u8]) -> Result<(), DriverError> {
        Err(DriverError::Unsupported {
            driver: "console",
            what: "writing to this console".into(),
        })
    }
}
