//! Soft reset backends: restart a board's core without removing power, so
//! retained RAM (and the session in it) survives, as the incident requires.
//!
//! - [`gpio`]: a pulse on a GPIO line wired to the board's reset pin.
//! - [`console`]: a command typed on the board's console.
//! - [`probe_rs`]: a core reset through the flash probe.

pub mod console;
pub mod gpio;
pub mod probe_rs;

use super::console::ConsoleSender;
use super::flash::FlashCfg;
use super::{Check, DriverError, Reset, backends};

/// What a reset backend may use of the rest of the device.
pub struct ResetCtx<'a> {
    pub device: &'a str,
    /// The device's watched console.
    pub console: &'a ConsoleSender,
    /// The device's flash section.
    pub flash: Option<&'a FlashCfg>,
}

/// A reset backend, configured.
pub trait ResetBackend: std::fmt::Debug + Send + Sync {
    fn open(&self, ctx: &ResetCtx<'_>) -> Result<Box<dyn Reset>, DriverError>;
    fn check(&self, device: &str) -> Check;
    fn claims(&self) -> Vec<(String, &'static str)> {
        Vec::new()
    }
}

backends! {
    /// How a device is soft-reset: `reset: { kind: gpio, ... }`.
    pub enum ResetCfg: ResetBackend {
        "gpio" => Gpio(gpio::GpioResetCfg),
        "console" => Console(console::ConsoleResetCfg),
        "probe-rs" => ProbeRs(probe_rs::ProbeRsResetCfg),
    }
}
