//! The hardware seams: one small trait per thing the rig does to a board.
//!
//! Each bench device gets one implementation of each trait, chosen by its
//! bench file entry. Simulated boards (`crate::sim`) implement the same
//! traits, so the runner cannot tell a simulated bench from a real one.
//! Drivers do not write to the timeline; the runner's device wrapper records
//! what it asked for and what happened, so every path (plans, hands-on
//! commands) is observed the same way.

pub mod console;
pub mod flash;
pub mod power;
pub mod probe;
pub mod reset;
pub mod serial;

use async_trait::async_trait;

use crate::fixture::Fixture;

/// A driver failure. Messages say what to check, not just what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("{what} is not supported by the {driver} driver")]
    Unsupported { driver: String, what: String },
    #[error("target not powered: {0}")]
    NotPowered(String),
    #[error("{0}")]
    Io(String),
    #[error("console link is gone (device unpowered or USB re-enumerating)")]
    LinkGone,
}

/// Switches a board's supply.
#[async_trait]
pub trait Power: Send + Sync {
    async fn set(&self, on: bool) -> Result<(), DriverError>;
    /// What this driver switches, for messages ("relay on GPIO 17, active low").
    fn describe(&self) -> String;
}

/// What a flash operation wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashReport {
    pub bytes: u64,
}

/// Writes a fixture's image to a board and restarts it.
#[async_trait]
pub trait Flasher: Send + Sync {
    async fn flash(&self, fixture: &Fixture) -> Result<FlashReport, DriverError>;
    fn describe(&self) -> String;
}

/// Restarts the board's core without removing power (retained RAM survives).
#[async_trait]
pub trait Reset: Send + Sync {
    async fn soft_reset(&self) -> Result<(), DriverError>;
}

/// A byte stream to and from the board's console.
#[async_trait]
pub trait Console: Send {
    /// Reads some bytes. `Err(LinkGone)` when the link vanished; the caller
    /// decides whether to wait and retry (a USB CDC console comes back).
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, DriverError>;
    async fn write(&mut self, data: &[u8]) -> Result<(), DriverError>;
}
