//! The run's single, append-only record of everything observed.
//!
//! Drivers, the cloud, the cache, the runner and the checks append
//! [`Event`]s through a cloneable [`Timeline`] handle; checks and reports only
//! ever read it. Each event is written to `events.jsonl` as it happens. On
//! the real clock it is flushed before `emit` returns, so a crash or Ctrl-C
//! loses nothing already seen; on the virtual clock the journal is written
//! at every step, check and cell end, and otherwise every 64 KiB or 100 ms
//! ([`live::Flush`]), so a SIGKILL loses at most that much device chatter
//! and never a verdict. `rig report RUN_DIR` re-renders every report from
//! that file alone.
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
//! - [`index`]: what the checks ask of the current cell's past, kept as
//!   events are emitted, so `rig run` holds only the last few thousand
//!   events in memory (and any a waiting step has not seen yet).

pub mod event;
pub mod index;
pub mod join;
pub mod live;
pub mod query;
pub mod store;

pub use event::*;
pub use live::{Flush, Timeline};
pub use store::{MAX_LINE, ReadError, journal_in, read_jsonl, read_jsonl_from};

#[cfg(test)]
mod tests;
