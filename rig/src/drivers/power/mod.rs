//! Power drivers: what switches a board's supply on a real bench.
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
