//! Power backends: what switches a board's supply on a real bench.
//!
//! - [`gpio`]: relay channels on Raspberry Pi GPIO (rppal), active-high or
//!   active-low, with the rig — not rppal's reset-on-drop — deciding the
//!   level at every moment, including on panic.
//! - [`serial_relay`]: the common CH340 "LCUS" USB relay modules.
//! - [`command`]: shell command templates for anything else (uhubctl, PDUs).
//!
//! [`safe`] keeps the synchronous "return to the safe state" actions that
//! run on normal exit, errors, signals and panics.

pub mod command;
pub mod gpio;
pub mod safe;
pub mod serial_relay;

use super::{Check, DriverError, Power, backends};

/// A power backend, configured: how to open it and whether it is here.
pub trait PowerBackend: std::fmt::Debug + Send + Sync {
    /// Opens the driver for `device`. A backend that must set its line when
    /// it opens it (a GPIO pin becomes an output) sets it to `initially_on`;
    /// `safe_on` is the bench's safe state, restored on panic.
    fn open(&self, device: &str, safe_on: bool, initially_on: bool) -> Result<Box<dyn Power>, DriverError>;
    /// Whether what it needs is on this machine.
    fn check(&self, device: &str) -> Check;
    /// What it switches, to tell two devices that share it apart.
    fn claims(&self) -> Vec<(String, &'static str)> {
        Vec::new()
    }
}

backends! {
    /// How a device's supply is switched: `power: { kind: gpio, ... }`.
    pub enum PowerCfg: PowerBackend {
        "gpio" => Gpio(gpio::GpioCfg),
        "serial-relay" => SerialRelay(serial_relay::SerialRelayCfg),
        "command" => Command(command::CommandCfg),
    }
}
