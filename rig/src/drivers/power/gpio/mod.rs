//! Relay channels on Raspberry Pi GPIO through `rppal`.
//!
//! The relay's state is always explicit: the pin is switched to output
//! *at* the safe level (no glitch through the other level), rppal's
//! reset-on-drop is disabled (releasing the pin would float it and can click
//! a relay), and a safe-state action is registered for exit and panic paths.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::safe::{self, Registration};
use crate::drivers::{Availability, Check, DriverError, Power};
use crate::units::Dur;

/// `power: { kind: gpio, pin: 17, active_low: true, settle: 200ms }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioCfg {
    /// BCM pin number.
    pub pin: u8,
    #[serde(default)]
    pub active_low: bool,
    /// Time the relay and the board's supply need after a switch.
    #[serde(default)]
    pub settle: Option<Dur>,
}

/// Failures of GPIO lines.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO is not available: {source}{hint}")]
    Unavailable {
        #[source]
        source: rppal::gpio::Error,
        hint: String,
    },
    #[error("GPIO {pin}: {source} (is another process using it?)")]
    Pin {
        pin: u8,
        #[source]
        source: rppal::gpio::Error,
    },
    #[error("fake GPIO {path}: {source}")]
    Fake {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether GPIO lines can be driven here (a fake folder counts).
pub fn availability() -> Availability {
    if let Some(dir) = std::env::var_os("RIG_FAKE_GPIO_DIR") {
        return Availability::Found(format!("fake GPIO lines in {}", std::path::Path::new(&dir).display()));
    }
    match rppal::gpio::Gpio::new() {
        Ok(_) => Availability::Found("available".into()),
        Err(rppal::gpio::Error::UnknownModel) => {
            Availability::NotFound("not a Raspberry Pi (rppal: Unknown Raspberry Pi model)".into())
        }
        Err(rppal::gpio::Error::PermissionDenied(p)) => Availability::NoPermission {
            detail: format!("no permission on {p}"),
            fix: "add the user to the `gpio` group (sudo usermod -aG gpio $USER, then log in again)".into(),
        },
        Err(e) => Availability::NotFound(e.to_string()),
    }
}

impl super::PowerBackend for GpioCfg {
    fn open(&self, _device: &str, safe_on: bool, initially_on: bool) -> Result<Box<dyn Power>, DriverError> {
        Ok(Box::new(GpioPower::open_at(
            self.pin,
            self.active_low,
            self.settle.map_or(Duration::ZERO, |s| s.0),
            safe_on,
            initially_on,
        )?))
    }

    fn check(&self, device: &str) -> Check {
        Check {
            what: format!(
                "{device}: power relay on GPIO {}{}",
                self.pin,
                if self.active_low { " (active low)" } else { "" }
            ),
            availability: availability(),
        }
    }

    fn claims(&self) -> Vec<(String, &'static str)> {
        vec![(format!("GPIO {}", self.pin), "power relay")]
    }
}

/// The seam under the driver: one output line.
pub trait RelayPin: Send {
    fn write(&mut self, high: bool) -> Result<(), DriverError>;
}

/// A BCM GPIO line driven through rppal.
pub struct RppalPin(rppal::gpio::OutputPin);

impl RelayPin for RppalPin {
    fn write(&mut self, high: bool) -> Result<(), DriverError> {
        if high {
            self.0.set_high();
        } else {
            self.0.set_low();
        }
        Ok(())
    }
}

/// A GPIO line simulated by a file: each level written is appended as a
/// line (`1`/`0`). Selected by `RIG_FAKE_GPIO_DIR` (one file per BCM pin),
/// for bench bring-up and tests on machines without GPIO.
pub struct FilePin(std::path::PathBuf);

impl RelayPin for FilePin {
    fn write(&mut self, high: bool) -> Result<(), DriverError> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .and_then(|mut f| f.write_all(if high { b"1\n" } else { b"0\n" }))
            .map_err(|source| {
                GpioError::Fake {
                    path: self.0.display().to_string(),
                    source,
                }
                .into()
            })
    }
}

/// Opens BCM pin `bcm` as an output already at `initial_high`: a real pin,
/// or a [`FilePin`] under `$RIG_FAKE_GPIO_DIR`.
pub fn open_pin(bcm: u8, initial_high: bool) -> Result<Box<dyn RelayPin>, DriverError> {
    if let Some(dir) = std::env::var_os("RIG_FAKE_GPIO_DIR") {
        let mut pin = FilePin(std::path::Path::new(&dir).join(format!("gpio{bcm}")));
        pin.write(initial_high)?;
        return Ok(Box::new(pin));
    }
    Ok(Box::new(open_rppal(bcm, initial_high)?))
}

/// Opens BCM pin `bcm` as an output already at `initial_high`.
pub fn open_rppal(bcm: u8, initial_high: bool) -> Result<RppalPin, GpioError> {
    let gpio = rppal::gpio::Gpio::new().map_err(|source| {
        let hint = match &source {
            rppal::gpio::Error::UnknownModel => {
                " (this is not a Raspberry Pi; GPIO relays need the bench's Pi)".to_string()
            }
            rppal::gpio::Error::PermissionDenied(p) => {
                format!(" (no permission on {p}: add the user to the `gpio` group)")
            }
            _ => String::new(),
        };
        GpioError::Unavailable { source, hint }
    })?;
    let pin = gpio.get(bcm).map_err(|source| GpioError::Pin { pin: bcm, source })?;
    let mut out = if initial_high {
        pin.into_output_high()
    } else {
        pin.into_output_low()
    };
    out.set_reset_on_drop(false);
    Ok(RppalPin(out))
}

/// One relay channel.
pub struct GpioPower {
    pin: Arc<Mutex<Box<dyn RelayPin>>>,
    bcm: u8,
    active_low: bool,
    settle: Duration,
    _safe: Registration,
}

/// The pin level that switches the supply `on`.
pub fn level(on: bool, active_low: bool) -> bool {
    on != active_low
}

impl GpioPower {
    /// Wraps `pin` (already at the safe level) and registers the safe state.
    pub fn new(pin: Box<dyn RelayPin>, bcm: u8, active_low: bool, settle: Duration, safe_on: bool) -> GpioPower {
        let pin = Arc::new(Mutex::new(pin));
        let p = pin.clone();
        let registration = safe::register(move || {
            if let Ok(mut pin) = p.try_lock() {
                let _ = pin.write(level(safe_on, active_low));
            }
        });
        GpioPower {
            pin,
            bcm,
            active_low,
            settle,
            _safe: registration,
        }
    }

    /// Opens the real pin at its safe level.
    pub fn open(bcm: u8, active_low: bool, settle: Duration, safe_on: bool) -> Result<GpioPower, DriverError> {
        GpioPower::open_at(bcm, active_low, settle, safe_on, safe_on)
    }

    /// Opens the real pin already driving the supply `initially_on`: a pin
    /// becomes an output at the level it must have, never passing through
    /// the other one.
    pub fn open_at(
        bcm: u8,
        active_low: bool,
        settle: Duration,
        safe_on: bool,
        initially_on: bool,
    ) -> Result<GpioPower, DriverError> {
        let pin = open_pin(bcm, level(initially_on, active_low))?;
        Ok(GpioPower::new(pin, bcm, active_low, settle, safe_on))
    }
}

#[async_trait]
impl Power for GpioPower {
    async fn set(&self, on: bool) -> Result<(), DriverError> {
        self.pin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(level(on, self.active_low))?;
        if !self.settle.is_zero() {
            tokio::time::sleep(self.settle).await;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "relay on GPIO {} ({})",
            self.bcm,
            if self.active_low { "active low" } else { "active high" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every level written.
    #[derive(Clone, Default)]
    pub struct FakePin(pub Arc<Mutex<Vec<bool>>>);

    impl RelayPin for FakePin {
        fn write(&mut self, high: bool) -> Result<(), DriverError> {
            self.0.lock().unwrap().push(high);
            Ok(())
        }
    }

    #[tokio::test]
    async fn active_high_and_active_low_drive_opposite_levels() {
        let hi = FakePin::default();
        let p = GpioPower::new(Box::new(hi.clone()), 17, false, Duration::ZERO, false);
        p.set(true).await.unwrap();
        p.set(false).await.unwrap();
        assert_eq!(*hi.0.lock().unwrap(), [true, false]);

        let lo = FakePin::default();
        let p = GpioPower::new(Box::new(lo.clone()), 27, true, Duration::ZERO, false);
        p.set(true).await.unwrap();
        p.set(false).await.unwrap();
        assert_eq!(*lo.0.lock().unwrap(), [false, true], "active low: on is a low level");
        assert_eq!(p.describe(), "relay on GPIO 27 (active low)");
    }

    #[test]
    fn a_panic_restores_the_safe_state_before_unwinding() {
        safe::install_panic_hook();
        let pin = FakePin::default();
        let p = GpioPower::new(Box::new(pin.clone()), 22, true, Duration::ZERO, false);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(p.set(true)).unwrap();
        assert_eq!(*pin.0.lock().unwrap(), [false]);
        let r = std::panic::catch_unwind(|| panic!("driver bug mid-plan"));
        assert!(r.is_err());
        // The hook drove the channel to its safe state (off = high for active low).
        assert_eq!(pin.0.lock().unwrap().last(), Some(&true));
        drop(p);
        // Once the driver is gone its action is deregistered.
        let before = pin.0.lock().unwrap().len();
        safe::restore_all();
        assert_eq!(pin.0.lock().unwrap().len(), before);
    }

    #[test]
    fn off_a_pi_the_error_says_so() {
        match open_rppal(17, false) {
            Ok(_) => {} // running on a Pi: nothing to check
            Err(e) => assert!(e.to_string().contains("GPIO is not available"), "{e}"),
        }
    }
}
