//! Turns a board's console byte stream into timeline events; [`serial`] is
//! the serial port driver (hardware and pty consoles alike).
//!
//! Every complete line becomes a `console.line`; lines matching the flashed
//! fixture's console patterns also become `device.boot`, `device.wake` and
//! `device.sleep`. This is the only way the rig learns that a board woke or
//! slept, on hardware and in simulation alike: the simulator prints, the
//! rig reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub mod serial;

use super::{Console, DriverError};
use crate::fixture::Patterns;
use crate::timeline::{EventKind, Source, Timeline};

/// Which patterns apply now; the runner swaps them when it flashes a fixture.
pub type PatternSlot = Arc<Mutex<Option<Arc<Patterns>>>>;

type Ack = tokio::sync::oneshot::Sender<Result<(), DriverError>>;

/// A cloneable way to write to a watched console.
#[derive(Clone)]
pub struct ConsoleSender(mpsc::UnboundedSender<(Vec<u8>, Option<Ack>)>);

impl ConsoleSender {
    /// Queues bytes for the board (a line needs its own `\n`).
    pub fn send(&self, data: Vec<u8>) -> Result<(), DriverError> {
        self.0
            .send((data, None))
            .map_err(|_| DriverError::from(serial::SerialError::ReaderStopped))
    }

    /// Sends bytes and waits until the driver has written them.
    pub async fn send_confirmed(&self, data: Vec<u8>) -> Result<(), DriverError> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.0
            .send((data, Some(ack)))
            .map_err(|_| DriverError::from(serial::SerialError::ReaderStopped))?;
        done.await
            .map_err(|_| DriverError::from(serial::SerialError::ReaderStopped))?
    }
}

/// The runner's side of a watched console.
pub struct ConsoleHandle {
    tx: ConsoleSender,
    task: JoinHandle<()>,
}

impl ConsoleHandle {
    pub fn sender(&self) -> ConsoleSender {
        self.tx.clone()
    }

    /// Queues bytes for the board (a line needs its own `\n`).
    pub fn send(&self, data: Vec<u8>) -> Result<(), DriverError> {
        self.tx.send(data)
    }
}

impl Drop for ConsoleHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits a byte stream into lines (`\n`, with `\r` stripped), keeping an
/// unfinished tail until more bytes or a gap arrive. Each line carries the
/// time its first byte arrived.
#[derive(Default)]
pub struct LineAssembler {
    buf: Vec<u8>,
    started: Option<Instant>,
}

impl LineAssembler {
    pub fn push(&mut self, mut data: &[u8], now: Instant, mut line: impl FnMut(String, Instant)) {
        // Whole lines at a time: a simulated fleet's consoles are most of a
        // run's bytes, and a byte-by-byte loop showed in its profile.
        while !data.is_empty() {
            let started = *self.started.get_or_insert(now);
            let Some(end) = memchr::memchr(b'\n', data) else {
                self.buf.extend_from_slice(data);
                return;
            };
            let mut l = if self.buf.is_empty() {
                data[..end].to_vec()
            } else {
                self.buf.extend_from_slice(&data[..end]);
                std::mem::take(&mut self.buf)
            };
            data = &data[end + 1..];
            self.started = None;
            if l.last() == Some(&b'\r') {
                l.pop();
            }
            line(lossy(l), started);
        }
    }

    /// The unfinished tail and when it started, if any (at a gap in the link).
    pub fn take_partial(&mut self) -> Option<(String, Instant)> {
        let started = self.started.take()?;
        if self.buf.is_empty() {
            return None;
        }
        Some((lossy(std::mem::take(&mut self.buf)), started))
    }
}

/// The line as text: invalid UTF-8 replaced (a garbled baud rate must not
/// lose the line), valid UTF-8 not copied.
fn lossy(l: Vec<u8>) -> String {
    String::from_utf8(l).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Starts reading `console` for `device`.
pub fn watch(
    device: String,
    mut console: Box<dyn Console>,
    timeline: Timeline,
    patterns: PatternSlot,
) -> ConsoleHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Option<Ack>)>();
    let task = tokio::spawn(async move {
        let mut lines = LineAssembler::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut gap_since: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some((data, ack)) => {
                        let r = console.write(&data).await;
                        if let Err(e) = &r {
                            tracing::warn!("{device}: console write failed: {e}");
                        }
                        if let Some(ack) = ack {
                            let _ = ack.send(r);
                        }
                    }
                    None => return,
                },
                r = console.read(&mut buf) => match r {
                    Ok(0) | Err(DriverError::LinkGone) => {
                        if gap_since.is_none() {
                            gap_since = Some(Instant::now());
                            if let Some((partial, at)) = lines.take_partial() {
                                emit_line(&device, &timeline, &patterns, partial, true, at);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(n) => {
                        if let Some(since) = gap_since.take() {
                            timeline.emit_device(&device, Source::Console, EventKind::ConsoleGap {
                                ms: since.elapsed().as_millis() as u64,
                            });
                        }
                        let now = Instant::now();
                        lines.push(&buf[..n], now, |l, at| emit_line(&device, &timeline, &patterns, l, false, at));
                    }
                    Err(e) => {
                        tracing::warn!("{device}: console read failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
    });
    ConsoleHandle {
        tx: ConsoleSender(tx),
        task,
    }
}

fn emit_line(device: &str, timeline: &Timeline, slot: &PatternSlot, line: String, partial: bool, at: Instant) {
    // Classified under the slot's lock: a clone of the patterns per line
    // was a measurable part of a console flood.
    let derived = slot
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|p| classify(p, &line, timeline.connects_from_console()));
    if timeline.keeps_console_lines() {
        timeline.emit_at(
            Some(device),
            Source::Console,
            EventKind::ConsoleLine { line, partial },
            at,
        );
    }
    match derived {
        // Said by the cloud itself when the rig can see the protocol: only
        // in front of an external cloud does the console's word count.
        Some(EventKind::CloudConnected { via, session }) => {
            crate::cloud::external::logs::connected(timeline, device, via, session, Source::Console);
        }
        Some(kind) => {
            timeline.emit_at(Some(device), Source::Console, kind, at);
        }
        None => {}
    }
}

/// The device event a console line stands for, if any; the `connected`
/// pattern is read only if `connects` (in front of an external cloud).
pub fn classify(p: &Patterns, line: &str, connects: bool) -> Option<EventKind> {
    let [boot, wake, sleep, connected] = p.matching(line);
    if boot {
        return Some(EventKind::DeviceBoot);
    }
    if wake && let Some(c) = p.wake.captures(line) {
        return Some(EventKind::DeviceWake {
            reason: c.name("reason").map(|m| m.as_str().to_owned()),
        });
    }
    if sleep && let Some(c) = p.sleep.captures(line) {
        return Some(EventKind::DeviceSleep {
            secs: c.name("secs").and_then(|m| m.as_str().parse().ok()),
        });
    }
    if connected
        && connects
        && let Some(c) = p.connected.as_ref().and_then(|re| re.captures(line))
    {
        return Some(EventKind::CloudConnected {
            via: crate::cloud::external::logs::via(c.name("via").map(|m| m.as_str())),
            session: c.name("session").map(|m| m.as_str().to_owned()).unwrap_or_default(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn lines_are_split_across_chunks_and_crlf_is_stripped() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut a = LineAssembler::default();
        let mut out = Vec::new();
        a.push(b"000123 [app] wa", t0, |l, at| out.push((l, at)));
        assert!(out.is_empty());
        a.push(b"ke\r\nsecond\nthi", t1, |l, at| out.push((l, at)));
        // A line is stamped with the arrival of its first byte.
        assert_eq!(
            out,
            vec![("000123 [app] wake".to_string(), t0), ("second".to_string(), t1)]
        );
        assert_eq!(a.take_partial(), Some(("thi".to_string(), t1)));
        assert_eq!(a.take_partial(), None);
    }

    #[test]
    fn a_line_over_many_chunks_keeps_its_first_bytes_time_and_loses_only_bad_bytes() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut a = LineAssembler::default();
        let mut out = Vec::new();
        a.push(b"\nab", t0, |l, at| out.push((l, at)));
        a.push(b"c\xff", t1, |l, at| out.push((l, at)));
        a.push(b"d\r", t1, |l, at| out.push((l, at)));
        a.push(b"\n\r\nx", t1, |l, at| out.push((l, at)));
        assert_eq!(
            out,
            vec![
                (String::new(), t0),
                ("abc\u{fffd}d".to_string(), t0),
                (String::new(), t1)
            ]
        );
        assert_eq!(a.take_partial(), Some(("x".to_string(), t1)));
    }

    #[test]
    fn patterns_classify_lines() {
        let p = Patterns::new(
            Regex::new(r"\[boot\]").unwrap(),
            Regex::new(r"wake #\d+ reason=(?P<reason>\w+)").unwrap(),
            Regex::new(r"sleeping for (?P<secs>\d+)s").unwrap(),
            Some(
                Regex::new(
                    r"\[cloud\] INFO: (?:(?P<via>session resumed)|handshake complete, session (?P<session>[0-9a-f]+))",
                )
                .unwrap(),
            ),
        );
        assert_eq!(
            classify(&p, "0001 [boot] INFO: booting", false),
            Some(EventKind::DeviceBoot)
        );
        assert_eq!(
            classify(&p, "0001 [app] INFO: wake #3 reason=rtc", false),
            Some(EventKind::DeviceWake {
                reason: Some("rtc".into())
            })
        );
        assert_eq!(
            classify(&p, "0001 [app] INFO: sleeping for 912s", false),
            Some(EventKind::DeviceSleep { secs: Some(912) })
        );
        assert_eq!(classify(&p, "0001 [net] INFO: attached", true), None);
        // The patterns are tried in order: boot before wake.
        assert_eq!(
            classify(&p, "0001 [boot] wake #1 reason=rtc", false),
            Some(EventKind::DeviceBoot)
        );
        // A connect on the console counts only when asked for.
        let line = "0001 [cloud] INFO: handshake complete, session 00ab";
        assert_eq!(classify(&p, line, false), None);
        assert_eq!(
            classify(&p, line, true),
            Some(EventKind::CloudConnected {
                via: crate::cloud::external::logs::via(None),
                session: "00ab".into()
            })
        );
        let no_connects = Patterns::new(p.boot.clone(), p.wake.clone(), p.sleep.clone(), None);
        assert_eq!(classify(&no_connects, line, true), None);
        assert_eq!(
            classify(&no_connects, "0001 [app] INFO: sleeping for 5s", true),
            Some(EventKind::DeviceSleep { secs: Some(5) })
        );
    }
}
