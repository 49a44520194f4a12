//! `rig`: a hardware-in-the-loop test rig controller.
//!
//! The library holds everything; `main.rs` only parses arguments and maps
//! outcomes to exit codes. See the README for the tour and DESIGN.md (shared)
//! for the contract.

pub mod bench;
pub mod benchmark;
pub mod board;
pub mod cache;
pub mod checks;
pub mod cli;
pub mod cloud;
pub mod diag;
pub mod doctor;
pub mod drivers;
pub mod fixture;
pub mod fsutil;
pub mod fuzzing;
pub mod lock;
pub mod plan;
pub mod report;
pub mod runner;
pub mod serve;
pub mod signals;
pub mod timeline;
pub mod units;
