//! What `rig run` shows while it runs: an indicatif spinner on a terminal,
//! one plain line per step in CI logs (or when `CI` is set).

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::runner::Progress;
use crate::units::fmt_clock;

/// The right display for where stderr goes.
pub fn for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress)
    }
}

/// Plain lines for CI logs.
pub struct LineProgress;

impl Progress for LineProgress {
    fn cell_start(&self, index: usize, total: usize, plan: &str, cell: &str) {
        eprintln!("[{index}/{total}] {plan} [{cell}]");
    }
    fn step(&self, n: usize, desc: &str, t_ms: u64) {
        eprintln!("  {} step {n}: {desc}", fmt_clock(t_ms));
    }
    fn cell_end(&self, line: &str) {
        eprintln!("  => {line}");
    }
}

/// An indicatif spinner for terminals.
pub struct BarProgress {
    bar: ProgressBar,
    cell: Mutex<String>,
}

impl BarProgress {
    pub fn new() -> BarProgress {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        BarProgress {
            bar,
            cell: Mutex::new(String::new()),
        }
    }
}

impl Default for BarProgress {
    fn default() -> Self {
        BarProgress::new()
    }
}

impl Progress for BarProgress {
    fn cell_start(&self, index: usize, total: usize, plan: &str, cell: &str) {
        let c = format!("[{index}/{total}] {plan} [{cell}]");
        self.bar.set_message(c.clone());
        *self.cell.lock().unwrap_or_else(|p| p.into_inner()) = c;
    }
    fn step(&self, n: usize, desc: &str, t_ms: u64) {
        let cell = self.cell.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.bar
            .set_message(format!("{cell} · plan time {} · step {n}: {desc}", fmt_clock(t_ms)));
    }
    fn cell_end(&self, line: &str) {
        self.bar.println(format!("  {line}"));
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
