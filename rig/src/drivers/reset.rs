//! Soft reset drivers: restart a board's core without removing power, so
//! retained RAM (and the session in it) survives, as the incident requires.
//!
//! - [`GpioReset`]: a pulse on a GPIO line wired to the board's reset pin.
//! - [`ConsoleReset`]: a command typed on the board's console.
//!
//! A core reset through the debug probe is in [`super::probe`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::console::ConsoleSender;
use super::power::gpio::{RelayPin, open_pin};
use super::power::safe::{self, Registration};
use super::{DriverError, Reset};

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

pub struct ConsoleReset {
    tx: ConsoleSender,
    command: String,
}

impl ConsoleReset {
    pub fn new(tx: ConsoleSender, command: &str) -> ConsoleReset {
        ConsoleReset {
            tx,
            command: command.to_owned(),
        }
    }
}

#[async_trait]
impl Reset for ConsoleReset {
    async fn soft_reset(&self) -> Result<(), DriverError> {
        // Confirmed: a reset is done when the command reached the board.
        self.tx.send_confirmed(format!("{}\n", self.command).into_bytes()).await
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

    struct Recorder(Arc<Mutex<Vec<u8>>>);
    #[async_trait]
    impl crate::drivers::Console for Recorder {
        async fn read(&mut self, _: &mut [u8]) -> Result<usize, DriverError> {
            std::future::pending().await
        }
        async fn write(&mut self, data: &[u8]) -> Result<(), DriverError> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_console_reset_types_its_command_and_waits_for_the_write() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let h = crate::drivers::console::watch(
            "d".into(),
            Box::new(Recorder(written.clone())),
            crate::timeline::Timeline::in_memory(),
            Arc::new(Mutex::new(None)),
        );
        ConsoleReset::new(h.sender(), "system reset")
            .soft_reset()
            .await
            .unwrap();
        assert_eq!(
            *written.lock().unwrap(),
            b"system reset\n",
            "written before soft_reset returned"
        );
    }
}
