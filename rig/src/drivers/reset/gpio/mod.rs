//! Soft reset by a pulse on a GPIO line wired to the board's reset pin: the
//! core restarts, power and retained RAM stay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::drivers::power::gpio::{RelayPin, open_pin};
use crate::drivers::power::safe::{self, Registration};
use crate::drivers::{Check, DriverError, Reset};
use crate::units::Dur;

/// `reset: { kind: gpio, pin: 13, active_low: true, pulse: 100ms }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioResetCfg {
    pub pin: u8,
    #[serde(default = "yes")]
    pub active_low: bool,
    #[serde(default = "default_pulse")]
    pub pulse: Dur,
}

fn yes() -> bool {
    true
}

fn default_pulse() -> Dur {
    Dur(Duration::from_millis(100))
}

impl super::ResetBackend for GpioResetCfg {
    fn open(&self, _ctx: &super::ResetCtx<'_>) -> Result<Box<dyn Reset>, DriverError> {
        Ok(Box::new(GpioReset::open(self.pin, self.active_low, self.pulse.0)?))
    }

    fn check(&self, device: &str) -> Check {
        Check {
            what: format!("{device}: reset line on GPIO {}", self.pin),
            availability: crate::drivers::power::gpio::availability(),
        }
    }

    fn claims(&self) -> Vec<(String, &'static str)> {
        vec![(format!("GPIO {}", self.pin), "reset line")]
    }
}

pub struct GpioReset {
    pin: Arc<Mutex<Box<dyn RelayPin>>>,
    active_low: bool,
    pulse: Duration,
    _safe: Registration,
}

impl GpioReset {
    /// Wraps a pin already at its released level.
    pub fn new(pin: Box<dyn RelayPin>, active_low: bool, pulse: Duration) -> GpioReset {
        let pin = Arc::new(Mutex::new(pin));
        let p = pin.clone();
        // A panic mid-pulse must not leave the board held in reset.
        let registration = safe::register(move || {
            if let Ok(mut pin) = p.try_lock() {
                let _ = pin.write(active_low);
            }
        });
        GpioReset {
            pin,
            active_low,
            pulse,
            _safe: registration,
        }
    }

    pub fn open(bcm: u8, active_low: bool, pulse: Duration) -> Result<GpioReset, DriverError> {
        Ok(GpioReset::new(open_pin(bcm, active_low)?, active_low, pulse))
    }

    fn write(&self, asserted: bool) -> Result<(), DriverError> {
        self.pin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(asserted != self.active_low)
    }
}

#[async_trait]
impl Reset for GpioReset {
    async fn soft_reset(&self) -> Result<(), DriverError> {
        self.write(true)?;
        tokio::time::sleep(self.pulse).await;
        self.write(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct FakePin(Arc<Mutex<Vec<bool>>>);
    impl RelayPin for FakePin {
        fn write(&mut self, high: bool) -> Result<(), DriverError> {
            self.0.lock().unwrap().push(high);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_pulse_asserts_then_releases_for_the_pulse_width() {
        let pin = FakePin::default();
        let r = GpioReset::new(Box::new(pin.clone()), true, Duration::from_millis(150));
        let t0 = tokio::time::Instant::now();
        r.soft_reset().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(150));
        assert_eq!(
            *pin.0.lock().unwrap(),
            [false, true],
            "active low: pulled low, then released high"
        );
        let pin = FakePin::default();
        let r = GpioReset::new(Box::new(pin.clone()), false, Duration::from_millis(1));
        r.soft_reset().await.unwrap();
        assert_eq!(*pin.0.lock().unwrap(), [true, false]);
    }
}
