//! Connection state from an external cloud's log lines. The rig cannot
//! decrypt a foreign protocol, but the cloud usually says when a device came
//! online; a bench's `log: { connected }` regex turns such a line into the
//! same `cloud.handshake`/`cloud.resumed` and `cloud.connected` events the
//! built-in cloud records, so `expect_recovery`, `max_bytes` and the
//! sign-off work unchanged.

use std::collections::HashSet;

use regex::Regex;

use crate::timeline::{ConnectVia, EventKind, Source, Timeline, UnknownAction};

/// The compiled patterns, and the devices they may name.
#[derive(Debug, Default)]
pub struct Patterns {
    connected: Option<Regex>,
    unknown: Option<Regex>,
    devices: HashSet<String>,
}

impl Patterns {
    /// From a checked bench ([`super::ExternalCfg::problems`] compiled them once).
    pub fn new(cfg: &super::config::LogCfg, devices: impl IntoIterator<Item = String>) -> Patterns {
        Patterns {
            connected: cfg.connected.as_deref().and_then(|r| Regex::new(r).ok()),
            unknown: cfg.unknown_session.as_deref().and_then(|r| Regex::new(r).ok()),
            devices: devices.into_iter().collect(),
        }
    }

    /// The bench device a match names. A name that is not on the bench is
    /// the cloud's business (another team's board, a typo in its log): not
    /// an event of this run.
    fn device<'l>(&self, c: &regex::Captures<'l>) -> Option<&'l str> {
        let d = c.name("device")?.as_str();
        self.devices.contains(d).then_some(d)
    }

    /// Records what `line` says about a bench device's connection.
    pub fn feed(&self, line: &str, timeline: &Timeline) {
        if let Some(c) = self.unknown.as_ref().and_then(|re| re.captures(line))
            && let Some(device) = self.device(&c)
        {
            let action = match c.name("action").map(|m| m.as_str().to_ascii_lowercase()) {
                Some(a) if a.starts_with("reject") => UnknownAction::Rejected,
                Some(a) if a.starts_with("heal") => UnknownAction::Healed,
                _ => UnknownAction::Dropped,
            };
            let kind = EventKind::CloudResumeUnknown {
                session: c.name("session").map(|m| m.as_str().to_owned()).unwrap_or_default(),
                action,
                resume: c.name("resume").is_some(),
            };
            timeline.emit_device(device, Source::Cloud, kind);
            return;
        }
        let Some(c) = self.connected.as_ref().and_then(|re| re.captures(line)) else {
            return;
        };
        let Some(device) = self.device(&c) else {
            return;
        };
        let via = via(c.name("via").map(|m| m.as_str()));
        let session = c.name("session").map(|m| m.as_str().to_owned()).unwrap_or_default();
        connected(timeline, device, via, session, Source::Cloud);
    }
}

/// How a connect line says the device got its session: a word with
/// `resum` in it is a resumed session, anything else a full handshake.
pub fn via(word: Option<&str>) -> ConnectVia {
    match word {
        Some(v) if v.to_ascii_lowercase().contains("resum") => ConnectVia::Resume,
        _ => ConnectVia::Handshake,
    }
}

/// The events the built-in cloud records for a connect, from a line that
/// said so (the cloud's log, or the board's console).
pub fn connected(timeline: &Timeline, device: &str, via: ConnectVia, session: String, source: Source) {
    let first = match via {
        ConnectVia::Resume => EventKind::CloudResumed {
            session: session.clone(),
        },
        ConnectVia::Handshake => EventKind::CloudHandshake {
            session: session.clone(),
        },
    };
    timeline.emit_device(device, source, first);
    timeline.emit_device(device, source, EventKind::CloudConnected { via, session });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_line_becomes_the_built_in_clouds_events_for_bench_devices_only() {
        let cfg = super::super::config::LogCfg {
            connected: Some(r"(?P<device>\S+): connected via (?P<via>\w+) \(session (?P<session>\w+)\)".into()),
            unknown_session: Some(
                r"(?P<device>\S+): (?:(?P<resume>resume)|record) (?:of|for) unknown session (?P<session>\w+): (?P<action>\w+)"
                    .into(),
            ),
        };
        let p = Patterns::new(&cfg, ["sleepy-01".to_string()]);
        let tl = Timeline::in_memory();
        p.feed("12:00:00 sleepy-01: connected via resume (session 00ab)", &tl);
        p.feed("12:00:01 sleepy-01: connected via handshake (session 00cd)", &tl);
        p.feed("12:00:02 stranger: connected via handshake (session 00ef)", &tl);
        p.feed("unrelated line", &tl);
        p.feed("12:00:03 sleepy-01: resume of unknown session 00ab: dropped", &tl);
        p.feed("12:00:04 sleepy-01: record for unknown session 00ab: rejected", &tl);
        let names: Vec<_> = tl.snapshot().iter().map(|e| e.kind.name()).collect();
        assert_eq!(
            names,
            [
                "cloud.resumed",
                "cloud.connected",
                "cloud.handshake",
                "cloud.connected",
                "cloud.resume_unknown",
                "cloud.resume_unknown"
            ]
        );
        let evs = tl.snapshot();
        assert!(evs.iter().all(|e| e.is("sleepy-01")));
        assert!(matches!(
            &evs[1].kind,
            EventKind::CloudConnected { via: ConnectVia::Resume, session } if session == "00ab"
        ));
        assert!(matches!(
            &evs[4].kind,
            EventKind::CloudResumeUnknown {
                action: UnknownAction::Dropped,
                resume: true,
                ..
            }
        ));
        assert!(matches!(
            &evs[5].kind,
            EventKind::CloudResumeUnknown {
                action: UnknownAction::Rejected,
                resume: false,
                ..
            }
        ));
    }
}
