//! The run's single, append-only record of everything observed.
//!
//! Drivers, the cloud, the cache, the runner and the checks append
//! [`Event`]s through a cloneable [`Timeline`] handle; checks and reports only
//! ever read it. Each event is written to `events.jsonl` and flushed before
//! `emit` returns, so a crash or Ctrl-C loses nothing already seen, and
//! `rig report RUN_DIR` can re-render every report from that file alone.
//!
//! The stored form is JSON Lines: a header line (`format`, `version`, run
//! metadata) followed by one event per line, `kind` naming the variant of
//! [`EventKind`] and its fields beside it.
//!
//! # Layout
//! - [`event`]: the envelope, every [`EventKind`], and [`EventTag`].
//! - [`live`]: the [`Timeline`] handle (emit, journal, wait).
//! - [`store`]: reading `events.jsonl` back.
//! - [`query`]: what checks and reports ask of a timeline (marks, wake
//!   cycles, a device's last console lines).

pub mod event;
pub mod live;
pub mod query;
pub mod store;

pub use event::*;
pub use live::Timeline;
pub use store::{MAX_LINE, ReadError, read_jsonl, read_jsonl_from};

#[cfg(test)]
mod tests;
