//! Ctrl-C and SIGTERM, treated alike everywhere: a CI runner cancelling a
//! job sends SIGTERM, a person at a terminal presses Ctrl-C, and both mean
//! "stop cleanly: teardown, safe power state, a readable partial report".
//!
//! [`Interrupt::new`] installs the handlers *when it is called*, not when
//! first awaited (as `tokio::signal::ctrl_c()` does), so a signal that
//! arrives between setting up and waiting is not lost to the default action.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Resolves on SIGINT or SIGTERM. Must be created inside a Tokio runtime.
pub struct Interrupt {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Interrupt {
    pub fn new() -> Interrupt {
        let int = signal(SignalKind::interrupt())
            .map_err(|e| tracing::warn!("cannot watch SIGINT: {e}"))
            .ok();
        let term = signal(SignalKind::terminate())
            .map_err(|e| tracing::warn!("cannot watch SIGTERM: {e}"))
            .ok();
        Interrupt { int, term }
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            biased;
            _ = next(&mut self.int) => {}
            _ = next(&mut self.term) => {}
        }
    }
}

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt::new()
    }
}
