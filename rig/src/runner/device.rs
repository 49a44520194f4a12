//! A bench device as the runner drives it: its drivers behind their traits,
//! plus the bookkeeping that turns each action into timeline events. Plans
//! and hands-on commands both go through here, so every action is observed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::drivers::console::{ConsoleHandle, PatternSlot};
use crate::drivers::{DriverError, Flasher, Power, Reset};
use crate::fixture::Fixture;
use crate::timeline::{EventKind, Source, Timeline};

pub struct DeviceHandle {
    pub id: String,
    /// None for hands-on commands that must not touch the supply.
    power: Option<Box<dyn Power>>,
    flasher: Box<dyn Flasher>,
    reset: Option<Box<dyn Reset>>,
    console: ConsoleHandle,
    patterns: PatternSlot,
    timeline: Timeline,
    /// Last power state the rig commanded, so re-asserting the safe state
    /// does not litter the timeline with no-op switch events.
    commanded: Mutex<Option<bool>>,
}

impl DeviceHandle {
    pub fn new(
        id: String,
        power: Option<Box<dyn Power>>,
        flasher: Box<dyn Flasher>,
        reset: Option<Box<dyn Reset>>,
        console: ConsoleHandle,
        patterns: PatternSlot,
        timeline: Timeline,
    ) -> DeviceHandle {
        DeviceHandle {
            id,
            power,
            flasher,
            reset,
            console,
            patterns,
            timeline,
            commanded: Mutex::new(None),
        }
    }

    fn emit(&self, source: Source, kind: EventKind) {
        self.timeline.emit_device(&self.id, source, kind);
    }

    pub async fn power(&self, on: bool) -> Result<(), DriverError> {
        let already = *self.commanded.lock().unwrap_or_else(|p| p.into_inner()) == Some(on);
        if already {
            return Ok(());
        }
        // Unknown until the switch completes: a switch cut short (Ctrl-C
        // while a relay command runs) must be driven again by teardown and
        // the safe state, not skipped as already done.
        let Some(power) = &self.power else {
            return Err(DriverError::Unsupported {
                driver: "hands-on",
                what: format!("switching the power of {}", self.id),
            });
        };
        *self.commanded.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let before = power.pid();
        power.set(on).await?;
        *self.commanded.lock().unwrap_or_else(|p| p.into_inner()) = Some(on);
        let kind = if on {
            EventKind::PowerOn { pid: power.pid() }
        } else {
            EventKind::PowerOff { pid: before }
        };
        self.emit(Source::Power, kind);
        Ok(())
    }

    pub async fn power_cycle(&self, off_for: Duration) -> Result<(), DriverError> {
        self.power(false).await?;
        tokio::time::sleep(off_for).await;
        self.power(true).await
    }

    pub async fn flash(&self, fixture: &Arc<Fixture>) -> Result<(), DriverError> {
        self.emit(
            Source::Flash,
            EventKind::FlashStart {
                fixture: fixture.name.clone(),
            },
        );
        let started = tokio::time::Instant::now();
        // The new image's boot banner follows the write immediately, so its
        // console patterns must be in place before flashing.
        let previous = self
            .patterns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(fixture.patterns.clone());
        let written = match self.flasher.flash(fixture).await {
            Ok(w) => w,
            Err(e) => {
                *self.patterns.lock().unwrap_or_else(|p| p.into_inner()) = previous;
                return Err(e);
            }
        };
        self.emit(
            Source::Flash,
            EventKind::FlashDone {
                fixture: fixture.name.clone(),
                version: fixture.version.clone(),
                sha256: written.unwrap_or_else(|| fixture.sha256.clone()),
                ms: started.elapsed().as_millis() as u64,
            },
        );
        Ok(())
    }

    pub async fn soft_reset(&self) -> Result<(), DriverError> {
        let Some(r) = &self.reset else {
            return Err(DriverError::Unsupported {
                driver: "bench",
                what: format!("soft reset of {} (no reset method configured)", self.id),
            });
        };
        r.soft_reset().await?;
        self.emit(Source::Reset, EventKind::ResetSoft);
        Ok(())
    }

    pub fn console_send(&self, text: &str) -> Result<(), DriverError> {
        let mut data = text.as_bytes().to_vec();
        if !data.ends_with(b"\n") {
            data.push(b'\n');
        }
        self.console.send(data)
    }

    /// Sends a line and waits until the console driver has written it.
    pub async fn console_send_confirmed(&self, text: &str) -> Result<(), DriverError> {
        let mut data = text.as_bytes().to_vec();
        if !data.ends_with(b"\n") {
            data.push(b'\n');
        }
        self.console.sender().send_confirmed(data).await
    }

    pub fn describe_power(&self) -> String {
        self.power
            .as_ref()
            .map_or_else(|| "not driven".into(), |p| p.describe())
    }

    pub fn describe_flasher(&self) -> String {
        self.flasher.describe()
    }
}
