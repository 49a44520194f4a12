//! The simulated board as a board kind, and its bench-wide settings.

use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::{SimBoard, SimFlasher, SimPower, SimReset};
use crate::bench::{Clock, Device};
use crate::board::{BoardError, BoardKind, BuildEnv, Built, Drivers};
use crate::drivers::Console;
use crate::drivers::console::serial::SerialConsole;
use crate::drivers::console::{self, PatternSlot};
use crate::runner::device::DeviceHandle;

/// Settings of simulated boards (`sim:` in a bench file).
#[derive(Debug, Clone, PartialEq)]
pub struct SimCfg {
    /// Multiplies every duration of a fixture's behaviour (sleep interval,
    /// attach time, retransmits...). 0.005 turns 15-minute cycles into 4.5 s.
    pub time_scale: f64,
    /// `channel` (in-process) or `pty`: each board's console on a
    /// pseudo-terminal, read through the serial driver used for hardware.
    pub console: SimConsoleKind,
}

impl Default for SimCfg {
    fn default() -> Self {
        SimCfg {
            time_scale: 1.0,
            console: SimConsoleKind::Channel,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SimConsoleKind {
    #[default]
    Channel,
    Pty,
}

/// A simulated board: the firmware model runs inside the rig.
#[derive(Debug)]
pub struct Sim;

impl BoardKind for Sim {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn claims(&self, board: &str) -> bool {
        board == "sim"
    }

    fn derives_key(&self) -> bool {
        true
    }

    fn runs_on(&self, _clock: Clock) -> bool {
        true
    }

    fn physical(&self) -> bool {
        false
    }

    fn validate(&self, id: &str, _board: &str, drivers: &Drivers) -> Vec<String> {
        let present = drivers.present();
        if present.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "device `{id}` is a simulated board: it has simulated power, console, flash and reset; remove its `{}:` section{}",
            present.join(":`, `"),
            if present.len() == 1 { "" } else { "s" }
        )]
    }

    fn build(&self, d: &Device, env: &BuildEnv<'_>) -> Result<Built, BoardError> {
        let sock = env.network.board_socket(env.index).map_err(BoardError::Socket)?;
        let patterns: PatternSlot = Arc::new(Mutex::new(None));
        let sim = &env.bench.sim;
        let (board, rig_console): (SimBoard, Box<dyn Console>) = match sim.console {
            SimConsoleKind::Channel => {
                let (b, c) = SimBoard::new(&d.id, d.key.clone(), env.seed, sock, env.cloud_addr, sim.time_scale);
                (b, Box::new(c))
            }
            SimConsoleKind::Pty => {
                // A stable path in the run folder, like /dev/serial/by-id.
                let link = env.cell_dir.join("consoles").join(&d.id);
                let b = SimBoard::with_pty(
                    &d.id,
                    d.key.clone(),
                    env.seed,
                    sock,
                    env.cloud_addr,
                    sim.time_scale,
                    link.clone(),
                );
                (b, Box::new(SerialConsole::open(&link, 115_200)))
            }
        };
        let console = console::watch(d.id.clone(), rig_console, env.timeline.clone(), patterns.clone());
        let handle = DeviceHandle::new(
            d.id.clone(),
            Some(Box::new(SimPower(board.clone()))),
            Box::new(SimFlasher(board.clone())),
            Some(Box::new(SimReset(board.clone()))),
            console,
            patterns,
            env.timeline.clone(),
        );
        Ok(Built {
            handle,
            keep: Some(Box::new(board)),
        })
    }
}
