//! Soft reset through the board's debug probe (a core reset; retained RAM
//! survives). Uses the probe and chip of the device's `flash: { kind:
//! probe-rs }` section.

use serde::Deserialize;

use crate::drivers::flash::FlashCfg;
use crate::drivers::flash::probe_rs::ProbeRsReset;
use crate::drivers::{Availability, Check, DriverError, Reset};

/// `reset: { kind: probe-rs }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRsResetCfg {}

impl super::ResetBackend for ProbeRsResetCfg {
    fn open(&self, ctx: &super::ResetCtx<'_>) -> Result<Box<dyn Reset>, DriverError> {
        match ctx.flash {
            Some(FlashCfg::ProbeRs(p)) => Ok(Box::new(ProbeRsReset {
                probe: p.probe.clone(),
                chip: p.chip.clone(),
            })),
            _ => Err(DriverError::Unsupported {
                driver: "probe-rs reset",
                what: "a reset without `flash: { kind: probe-rs, ... }` naming the probe and chip".into(),
            }),
        }
    }

    fn check(&self, device: &str) -> Check {
        Check {
            what: format!("{device}: reset through the flash probe"),
            availability: Availability::Found("uses the flash probe".into()),
        }
    }
}
