//! Flash backends: how a fixture's image gets onto a board.
//!
//! - [`probe_rs`]: SWD/JTAG through a debug probe, with the probe-rs library.
//! - [`command`]: a shell command template (dfu-util, vendor CLIs).

pub mod command;
pub mod probe_rs;

use super::{Check, DriverError, Flasher, backends};

/// A flash backend, configured.
pub trait FlashBackend: std::fmt::Debug + Send + Sync {
    fn open(&self, device: &str) -> Result<Box<dyn Flasher>, DriverError>;
    fn check(&self, device: &str) -> Check;
}

backends! {
    /// How a device is flashed: `flash: { kind: probe-rs, ... }`.
    pub enum FlashCfg: FlashBackend {
        "probe-rs" => ProbeRs(probe_rs::ProbeRsCfg),
        "command" => Command(command::CommandFlashCfg),
    }
}
