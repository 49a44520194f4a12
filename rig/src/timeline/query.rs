//! What checks and reports ask of a timeline, answered in one place: where a
//! mark was set, how a device's wake cycles went, its last console lines.
//! The runner, the checks, JUnit and the sign-off all use these, so "a wake
//! cycle" or "the last console line" means the same thing everywhere.

use std::collections::HashMap;

use super::{Event, EventKind};

/// A session a cache fault lost: its device (None: every device), the
/// fault's seq and how.
#[derive(Debug, Clone)]
pub struct Loss {
    pub seq: u64,
    pub device: Option<String>,
    pub how: String,
}

/// Each device's first loss after event `after`.
pub fn first_losses(losses: &[Loss], after: u64, all: &[String]) -> HashMap<String, (u64, String)> {
    let mut lost: HashMap<String, (u64, String)> = HashMap::new();
    for l in losses.iter().filter(|l| l.seq > after) {
        let mut add = |d: &str| {
            lost.entry(d.to_owned()).or_insert_with(|| (l.seq, l.how.clone()));
        };
        match &l.device {
            Some(d) => add(d),
            None => all.iter().for_each(|d| add(d)),
        }
    }
    lost
}

/// The cloud session each device is on and the cache's cluster layout, as
/// the events go by: bounded by the devices, whatever the plan's length.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    layout: Option<Vec<super::ClusterNode>>,
    current: HashMap<String, String>,
}

impl Sessions {
    pub fn feed(&mut self, e: &Event) {
        match &e.kind {
            EventKind::CacheCluster { nodes } => self.layout = Some(nodes.clone()),
            EventKind::CloudHandshake { session: s }
            | EventKind::CloudResumed { session: s }
            | EventKind::CloudConnected { session: s, .. } => {
                if let Some(d) = e.device.as_deref() {
                    match self.current.get_mut(d) {
                        Some(cur) if cur == s => {}
                        Some(cur) => s.clone_into(cur),
                        None => {
                            self.current.insert(d.to_owned(), s.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The node each device's current session lives on (empty without a
    /// cluster layout).
    pub fn nodes(&self) -> HashMap<String, u32> {
        let Some(layout) = &self.layout else {
            return Default::default();
        };
        let owners = crate::cache::redis_cluster::nodes::owners(layout);
        self.current
            .iter()
            .filter_map(|(d, s)| {
                let slot = crate::cache::redis_cluster::slot_of(u64::from_str_radix(s, 16).ok()?);
                let node = owners
                    .iter()
                    .find(|((lo, hi), _)| (*lo..=*hi).contains(&slot))
                    .map(|(_, n)| *n)?;
                Some((d.clone(), node))
            })
            .collect()
    }

    /// The sessions cache fault `e` loses, given the sessions before it.
    pub fn losses(&self, e: &Event, out: &mut Vec<Loss>) {
        let listed = |sessions: &[String], devices: &[String], how: &str, out: &mut Vec<Loss>| {
            for (s, d) in sessions.iter().zip(devices) {
                if self.current.get(d.as_str()) == Some(s) {
                    out.push(Loss {
                        seq: e.seq,
                        device: Some(d.clone()),
                        how: how.to_owned(),
                    });
                }
            }
        };
        match &e.kind {
            EventKind::CacheNodeKill(k) => {
                let how = match k.promoted {
                    Some(p) => format!("with node {} (not yet on node {p}, which took over)", k.node),
                    None => format!("with node {}", k.node),
                };
                listed(&k.sessions, &k.devices, &how, out);
            }
            EventKind::CacheEvict { sessions, devices, .. } => listed(sessions, devices, "to an eviction", out),
            EventKind::CacheKill { .. } | EventKind::CacheFlush { .. } => out.push(Loss {
                seq: e.seq,
                device: None,
                how: "with the whole cache".into(),
            }),
            _ => {}
        }
    }
}

/// What one event did to a device's wake cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cycle {
    /// The device woke (a `device.wake`).
    Woke,
    /// It went back to sleep after a wake this tracker saw begin: one
    /// completed cycle, awake from `from` to `to` (cell milliseconds).
    Slept { from: u64, to: u64 },
    /// Power went while it was awake (the awake window ends there).
    Cut { from: u64, to: u64 },
}

/// Counts one device's wake cycles from the events it is fed: a wake cycle
/// is a `device.wake` (the board's own console said so); it is completed
/// by the next `device.sleep`.
#[derive(Debug, Clone, Default)]
pub struct WakeCycles {
    /// Wakes seen.
    pub wakes: u32,
    /// Sleeps that followed a wake seen here (at most one per wake).
    pub completed: u32,
    awake_since: Option<u64>,
    asleep: bool,
}

impl WakeCycles {
    /// Feeds one event of the device.
    pub fn feed(&mut self, e: &Event) -> Option<Cycle> {
        match &e.kind {
            EventKind::DeviceWake { .. } => {
                self.wakes += 1;
                self.asleep = false;
                self.awake_since = Some(e.t_ms);
                Some(Cycle::Woke)
            }
            EventKind::DeviceSleep { .. } => {
                self.asleep = true;
                if self.completed < self.wakes {
                    self.completed += 1;
                }
                let from = self.awake_since.take()?;
                Some(Cycle::Slept { from, to: e.t_ms })
            }
            EventKind::PowerOff { .. } => {
                let from = self.awake_since.take()?;
                Some(Cycle::Cut { from, to: e.t_ms })
            }
            _ => None,
        }
    }

    /// Asleep since its last wake (the last wake's cycle is complete).
    pub fn asleep_since_last_wake(&self) -> bool {
        self.asleep
    }

    /// Awake since this time, if it is awake now.
    pub fn awake_since(&self) -> Option<u64> {
        self.awake_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Source;

    fn ev(seq: u64, cell: u32, t: u64, device: &str, kind: EventKind) -> Event {
        Event {
            cell,
            ..Event::at(seq, t, device, Source::Console, kind)
        }
    }

    #[test]
    fn wake_cycles_count_wakes_completions_and_awake_windows() {
        let mut w = WakeCycles::default();
        let wake = EventKind::DeviceWake { reason: None };
        let sleep = EventKind::DeviceSleep { secs: None };
        assert_eq!(
            w.feed(&ev(0, 0, 5, "a", sleep.clone())),
            None,
            "a sleep before any wake"
        );
        assert_eq!(w.feed(&ev(1, 0, 10, "a", wake.clone())), Some(Cycle::Woke));
        assert!(!w.asleep_since_last_wake());
        assert_eq!(
            w.feed(&ev(2, 0, 30, "a", sleep)),
            Some(Cycle::Slept { from: 10, to: 30 })
        );
        assert_eq!((w.wakes, w.completed), (1, 1));
        assert!(w.asleep_since_last_wake());
        w.feed(&ev(3, 0, 40, "a", wake));
        assert_eq!(
            w.feed(&ev(4, 0, 45, "a", EventKind::PowerOff { pid: None })),
            Some(Cycle::Cut { from: 40, to: 45 })
        );
        assert_eq!((w.wakes, w.completed), (2, 1));
    }
}
