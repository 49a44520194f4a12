//! What the checks ask of the current cell's past, kept up to date as each
//! event is emitted, so the timeline need not hold the events themselves:
//! counts of each event kind per device (at every mark too, and at the
//! `within` limits the plan's `expect` steps name), each device's last
//! console line, its cloud session and the cluster layout (at every mark
//! too), and the sessions cache faults lost. All of it grows with devices,
//! marks and faults, never with plan time.

use std::collections::HashMap;

use super::query::{Loss, Sessions};
use super::{Event, EventKind, EventTag};

/// Events of each tag, per device and for the bench (device-less events).
#[derive(Debug, Clone, Default)]
pub struct Counts {
    per_device: HashMap<String, Box<[u32]>>,
    bench: Vec<u32>,
}

fn zeros() -> Box<[u32]> {
    vec![0; EventTag::ALL.len()].into_boxed_slice()
}

impl Counts {
    fn add(&mut self, e: &Event) {
        let i = e.kind.tag() as usize;
        match e.device.as_deref() {
            Some(d) => match self.per_device.get_mut(d) {
                Some(c) => c[i] += 1,
                None => {
                    let mut c = zeros();
                    c[i] = 1;
                    self.per_device.insert(d.to_owned(), c);
                }
            },
            None => {
                if self.bench.is_empty() {
                    self.bench = zeros().into_vec();
                }
                self.bench[i] += 1;
            }
        }
    }

    fn get(&self, device: Option<&str>, tag: EventTag) -> u64 {
        let i = tag as usize;
        let v = match device {
            Some(d) => self.per_device.get(d).map_or(0, |c| c[i]),
            None => self.bench.get(i).copied().unwrap_or(0),
        };
        u64::from(v)
    }
}

/// The index of one cell (reset when the next begins).
#[derive(Debug, Default)]
pub struct CellIndex {
    totals: Counts,
    /// Name → counts right after the last mark of that name.
    at_mark: HashMap<String, Counts>,
    /// (mark, within ms) limits to count up to, as the plan's steps name them.
    wanted: Vec<(String, u64)>,
    /// Limits of the current marks not reached yet: (cell ms, mark, within).
    pending: Vec<(u64, String, u64)>,
    /// Counts at a reached limit.
    at_limit: HashMap<(String, u64), Counts>,
    last_line: HashMap<String, String>,
    sessions: Sessions,
    /// Name → the sessions and layout at the last mark of that name.
    sessions_at_mark: HashMap<String, Sessions>,
    losses: Vec<Loss>,
}

impl CellIndex {
    /// Asks for counts `within` ms after each mark named `mark`.
    pub fn want_limit(&mut self, mark: &str, within_ms: u64) {
        let k = (mark.to_owned(), within_ms);
        if !self.wanted.contains(&k) {
            self.wanted.push(k);
        }
    }

    pub fn feed(&mut self, e: &Event) {
        if self.pending.iter().any(|(t, _, _)| e.t_ms > *t) {
            let (reached, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|(t, _, _)| e.t_ms > *t);
            self.pending = left;
            for (_, m, w) in reached {
                self.at_limit.insert((m, w), self.totals.clone());
            }
        }
        self.totals.add(e);
        self.sessions.losses(e, &mut self.losses);
        self.sessions.feed(e);
        match &e.kind {
            EventKind::PlanMark { name } => {
                self.at_mark.insert(name.clone(), self.totals.clone());
                self.sessions_at_mark.insert(name.clone(), self.sessions.clone());
                for (m, w) in self.wanted.iter().filter(|(m, _)| m == name) {
                    self.at_limit.remove(&(m.clone(), *w));
                    self.pending.retain(|(_, pm, pw)| !(pm == m && pw == w));
                    self.pending.push((e.t_ms + w, m.clone(), *w));
                }
            }
            EventKind::ConsoleLine { line, .. } => {
                if let Some(d) = e.device.as_deref() {
                    match self.last_line.get_mut(d) {
                        Some(l) => line.clone_into(l),
                        None => {
                            self.last_line.insert(d.to_owned(), line.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Events of `tag` for `device` (None: device-less) in this cell: since
    /// the last mark `after` (None: since the cell began), and at most
    /// `within` ms after it. None when the mark was not set.
    pub fn count(&self, device: Option<&str>, tag: EventTag, after: Option<&str>, within: Option<u64>) -> Option<u64> {
        let Some(mark) = after else {
            return Some(self.totals.get(device, tag));
        };
        let base = self.at_mark.get(mark)?;
        let upto = within
            .and_then(|w| self.at_limit.get(&(mark.to_owned(), w)))
            .unwrap_or(&self.totals);
        Some(upto.get(device, tag).saturating_sub(base.get(device, tag)))
    }

    pub fn last_console_line(&self, device: &str) -> Option<String> {
        self.last_line.get(device).cloned()
    }

    /// The sessions and cluster layout at the last mark `mark`.
    pub fn sessions_at_mark(&self, mark: &str) -> Option<&Sessions> {
        self.sessions_at_mark.get(mark)
    }

    /// What cache faults after event `after` lost (see `query::lost_sessions`).
    pub fn lost_since(&self, after: u64, all: &[String]) -> HashMap<String, (u64, String)> {
        super::query::first_losses(&self.losses, after, all)
    }
}
