//! Real boards on the bench: power, console, flash and reset come from the
//! backends their bench entry names (`power: { kind: gpio, ... }`, ...).

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{BoardError, BoardKind, BuildEnv, Built, Drivers};
use crate::bench::{Bench, Clock, Device, PowerState};
use crate::drivers::console::serial::SerialConsole;
use crate::drivers::console::{self, PatternSlot};
use crate::drivers::reset::ResetCtx;
use crate::drivers::{Check, Power};
use crate::runner::device::DeviceHandle;
use crate::timeline::Timeline;

#[derive(Debug)]
pub struct Hardware;

impl Hardware {
    fn open_power(&self, d: &Device, bench: &Bench, initially_on: Option<bool>) -> Result<Box<dyn Power>, BoardError> {
        let cfg = d.drivers.power.as_ref().expect("validated: hardware has power");
        let safe_on = bench.safe_state == PowerState::On;
        Ok(cfg.backend().open(&d.id, safe_on, initially_on.unwrap_or(safe_on))?)
    }

    /// The device's drivers; with `power`, the power driver opened at the
    /// safe state, without, none (hands-on commands leave power alone).
    fn device(&self, d: &Device, bench: &Bench, timeline: &Timeline, power: bool) -> Result<DeviceHandle, BoardError> {
        let power = if power {
            Some(self.open_power(d, bench, None)?)
        } else {
            None
        };
        let flash = d.drivers.flash.as_ref().expect("validated: hardware has flash");
        let flasher = flash.backend().open(&d.id)?;
        let serial = d.drivers.console.as_ref().expect("validated: hardware has a console");
        let patterns: PatternSlot = Arc::new(Mutex::new(None));
        let console = console::watch(
            d.id.clone(),
            Box::new(SerialConsole::open(Path::new(&serial.port), serial.baud())),
            timeline.clone(),
            patterns.clone(),
        );
        let reset = match &d.drivers.reset {
            None => None,
            Some(r) => Some(r.backend().open(&ResetCtx {
                device: &d.id,
                console: &console.sender(),
                flash: Some(flash),
            })?),
        };
        Ok(DeviceHandle::new(
            d.id.clone(),
            power,
            flasher,
            reset,
            console,
            patterns,
            timeline.clone(),
        ))
    }
}

impl BoardKind for Hardware {
    fn name(&self) -> &'static str {
        "hardware"
    }

    fn claims(&self, _board: &str) -> bool {
        true
    }

    fn runs_on(&self, clock: Clock) -> bool {
        clock == Clock::Real
    }

    fn physical(&self) -> bool {
        true
    }

    fn validate(&self, id: &str, board: &str, drivers: &Drivers) -> Vec<String> {
        let mut out = Vec::new();
        for (what, present) in [
            ("power", drivers.power.is_some()),
            ("console", drivers.console.is_some()),
            ("flash", drivers.flash.is_some()),
        ] {
            if !present {
                out.push(format!("device `{id}` (board `{board}`) needs a `{what}:` section"));
            }
        }
        if let (Some(crate::drivers::reset::ResetCfg::ProbeRs(_)), flash) = (&drivers.reset, &drivers.flash)
            && !matches!(flash, Some(crate::drivers::flash::FlashCfg::ProbeRs(_)))
        {
            out.push(format!(
                "device `{id}`: `reset: {{ kind: probe-rs }}` needs `flash: {{ kind: probe-rs, ... }}` to name the probe and chip"
            ));
        }
        out
    }

    fn claims_resources(&self, d: &Device) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        if let Some(p) = &d.drivers.power {
            out.extend(p.backend().claims());
        }
        if let Some(r) = &d.drivers.reset {
            out.extend(r.backend().claims());
        }
        if let Some(c) = &d.drivers.console {
            out.push((format!("serial port {}", crate::bench::port_id(&c.port)), "console"));
        }
        out
    }

    fn checks(&self, d: &Device) -> Vec<Check> {
        let mut out = Vec::new();
        if let Some(p) = &d.drivers.power {
            out.push(p.backend().check(&d.id));
        }
        if let Some(c) = &d.drivers.console {
            out.push(c.check(&d.id));
        }
        if let Some(f) = &d.drivers.flash {
            out.push(f.backend().check(&d.id));
        }
        if let Some(r) = &d.drivers.reset {
            out.push(r.backend().check(&d.id));
        }
        out
    }

    fn build(&self, d: &Device, env: &BuildEnv<'_>) -> Result<Built, BoardError> {
        Ok(Built {
            handle: self.device(d, env.bench, env.timeline, true)?,
            keep: None,
        })
    }

    fn hands_on(&self, d: &Device, bench: &Bench, timeline: &Timeline) -> Result<DeviceHandle, BoardError> {
        self.device(d, bench, timeline, false)
    }

    fn power(&self, d: &Device, bench: &Bench, initially_on: bool) -> Result<Box<dyn Power>, BoardError> {
        self.open_power(d, bench, Some(initially_on))
    }
}
