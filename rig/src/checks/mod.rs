//! Checks: pure functions of the timeline (DESIGN §4).
//!
//! The runner decides *when* to evaluate (it feeds new events as they
//! come); this module decides *what* the events mean. Each check is a
//! tracker fed one event at a time, so the same code serves a live wait and
//! a replay, and given the same events a check always gives the same result
//! (which is what lets `rig report` re-derive a verdict from `events.jsonl`).
//!
//! # Layout
//! - [`expect`]: `expect`'s bounds.
//! - [`waiting`]: `wait_for` and `sleep_cycles`.
//! - [`recovery`]: `expect_recovery`, with the endless-resume-loop diagnosis.
//! - [`recovery_set`]: one `expect_recovery` for every device of a cell,
//!   followed live from its mark (with the sessions faults lose).

pub mod expect;
pub mod recovery;
pub mod recovery_set;
pub mod waiting;

pub use recovery::{Fate, RecoveryArgs, RecoveryTracker, RecoveryVerdict};
pub use recovery_set::RecoverySet;
pub use waiting::{SleepCyclesTracker, WaitForTracker};

/// The outcome of one check for one device (or the bench): what a
/// `check.pass` or `check.fail` event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass(String),
    Fail(String),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass(_))
    }

    pub fn text(&self) -> &str {
        match self {
            Verdict::Pass(t) | Verdict::Fail(t) => t,
        }
    }

    /// A failure with the device's last console line appended (or that
    /// there was none): the first thing an engineer wants to see.
    pub fn with_last_line(self, last: Option<&str>) -> Verdict {
        match self {
            Verdict::Fail(m) => Verdict::Fail(match last {
                Some(l) => format!("{m} (last console line: {l:?})"),
                None => format!("{m} (no console output)"),
            }),
            pass => pass,
        }
    }
}
