//! The firmware model a simulated board runs: the sleepy-device loop of
//! DESIGN §3, parameterised by the flashed fixture's `behaviour`.
//!
//! wake → attach → connect (resume the retained session, or full handshake)
//! → publish → sleep, printing the log lines a real device would. What the
//! firmware does when a resume goes unanswered is its `session_policy`; that
//! is the behaviour under test, so this file models it faithfully and
//! decides nothing else.

use std::sync::Arc;

use rand::{Rng, RngExt};
use rig_proto::client::{Handshake, Progress};
use rig_proto::frame::FLAG_RESUME;
use rig_proto::{Frame, Inner, InnerKind};
use tokio::time::{Duration, Instant};

use super::{BootReason, DeviceSession, Inner as Board};
use crate::fixture::{Behaviour, Fixture, Range, SessionPolicy};

/// Entry point of the firmware task; returns only if there is nothing to run.
pub(crate) async fn run(board: Arc<Board>, fixture: Option<Arc<Fixture>>, reason: BootReason) {
    let boot = Instant::now();
    let Some(fx) = fixture else {
        board.println(
            boot,
            "boot",
            "ERROR",
            "no valid application in flash; staying in bootloader",
        );
        return;
    };
    let Some(behaviour) = fx.behaviour.as_ref().map(|b| b.scaled(board.time_scale)) else {
        board.println(boot, "boot", "ERROR", "application is not runnable on this board");
        return;
    };
    let mut fw = Firmware {
        board,
        fx,
        b: behaviour,
        boot,
        cycle: 0,
        msg_id: 0,
    };
    fw.main(reason).await;
}

struct Firmware {
    board: Arc<Board>,
    fx: Arc<Fixture>,
    b: Behaviour,
    boot: Instant,
    cycle: u64,
    msg_id: u16,
}

/// How an exchange of confirmable messages ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    AllAcked,
    Deadline,
    SessionUnknown,
    GaveUp,
}

struct Outstanding {
    msg_id: u16,
    kind: InnerKind,
    payload: Vec<u8>,
    flags: u8,
    first_sent: Instant,
    sends: usize,
    next_at: Option<Instant>,
}

impl Firmware {
    fn log(&self, category: &str, level: &str, msg: &str) {
        self.board.println(self.boot, category, level, msg);
    }

    fn draw(&self, r: Range) -> Duration {
        let (lo, hi) = (r.0.0.as_millis() as u64, r.1.0.as_millis() as u64);
        let ms = if hi > lo {
            self.board.with_rng(|g| g.random_range(lo..=hi))
        } else {
            lo
        };
        Duration::from_millis(ms)
    }

    fn session(&self) -> Option<DeviceSession> {
        self.board.with_retained(|r| r.session.clone())
    }

    fn set_session(&self, s: Option<DeviceSession>) {
        self.board.with_retained(|r| r.session = s);
    }

    async fn main(&mut self, reason: BootReason) {
        self.log(
            "boot",
            "INFO",
            &format!(
                "{} v{} booting (reset reason: {})",
                self.fx.name,
                self.fx.version,
                reason.as_str()
            ),
        );
        if let Some(s) = self.session() {
            self.log("boot", "INFO", &format!("retained session {:016x} found", s.session.id));
        }
        let mut wake_reason = "boot";
        loop {
            self.cycle += 1;
            self.log("app", "INFO", &format!("wake #{} reason={wake_reason}", self.cycle));
            let attach = if wake_reason == "boot" {
                self.draw(self.b.boot_attach_time)
            } else {
                self.draw(self.b.attach_time)
            };
            tokio::time::sleep(attach).await;
            self.log(
                "net",
                "INFO",
                &format!("cellular attached in {:.1}s", attach.as_secs_f64()),
            );
            self.drain().await;
            let deadline = Instant::now() + self.b.awake_window.0;
            self.connect_and_publish(deadline).await;
            let interval = self.b.sleep_interval.0.as_millis() as i64;
            let jitter = self.b.sleep_jitter.0.as_millis() as i64;
            let j = if jitter > 0 {
                self.board.with_rng(|g| g.random_range(-jitter..=jitter))
            } else {
                0
            };
            // Whole seconds, as the firmware's RTC alarm would have it; never
            // below one second (or one tick on a time-scaled bench).
            let ms = (interval + j).max(1) as u64;
            let secs = (ms / 1000).max(1);
            let sleep = if self.board.time_scale < 1.0 {
                Duration::from_millis(ms)
            } else {
                Duration::from_secs(secs)
            };
            self.log("app", "INFO", &format!("sleeping for {secs}s"));
            tokio::time::sleep(sleep).await;
            wake_reason = "rtc";
        }
    }

    async fn connect_and_publish(&mut self, mut deadline: Instant) {
        if let (SessionPolicy::ExpireAfterUses(n), Some(s)) = (self.b.session_policy, self.session())
            && s.unanswered_uses >= n
        {
            self.log(
                "cloud",
                "WARN",
                &format!(
                    "session {:016x} unanswered on {n} connects; discarding it",
                    s.session.id
                ),
            );
            self.set_session(None);
        }
        if let Some(mut s) = self.session() {
            s.unanswered_uses += 1;
            let id = s.session.id;
            self.set_session(Some(s));
            self.log("cloud", "INFO", &format!("resuming session {id:016x}"));
            let resume_deadline = match self.b.session_policy {
                SessionPolicy::FallbackNow => deadline.min(Instant::now() + self.b.resume_timeout.0),
                _ => deadline,
            };
            let hello = self.resume_payload();
            let publish = self.publish_payload();
            let (end, authed) = self
                .exchange(
                    vec![(InnerKind::Ping, hello, FLAG_RESUME), (InnerKind::Publish, publish, 0)],
                    resume_deadline,
                )
                .await;
            if authed {
                self.log("cloud", "INFO", "session resumed");
                if end != End::AllAcked {
                    self.log("cloud", "WARN", "publish not acknowledged before sleep");
                }
                return;
            }
            match end {
                End::SessionUnknown => {
                    self.log(
                        "cloud",
                        "WARN",
                        &format!("cloud does not know session {id:016x}; discarding it"),
                    );
                    self.set_session(None);
                    deadline = deadline.max(Instant::now() + self.b.awake_window.0);
                }
                End::GaveUp => return,
                End::AllAcked | End::Deadline => match self.b.session_policy {
                    SessionPolicy::FallbackNow => {
                        self.log(
                            "cloud",
                            "WARN",
                            "no answer to session resume; falling back to a full handshake",
                        );
                        self.set_session(None);
                        deadline = deadline.max(Instant::now() + self.b.awake_window.0);
                    }
                    SessionPolicy::Keep | SessionPolicy::ExpireAfterUses(_) => {
                        let uses = self.session().map(|s| s.unanswered_uses).unwrap_or(0);
                        self.log(
                            "cloud",
                            "WARN",
                            &format!("no answer from cloud; keeping session {id:016x} for next wake (unanswered uses: {uses})"),
                        );
                        return;
                    }
                },
            }
        }
        if self.handshake(deadline).await {
            let publish = self.publish_payload();
            let (end, _) = self.exchange(vec![(InnerKind::Publish, publish, 0)], deadline).await;
            if end != End::AllAcked {
                self.log("cloud", "WARN", "publish not acknowledged before sleep");
            }
        } else {
            self.log("cloud", "WARN", "handshake did not complete; retrying on next wake");
        }
    }

    fn resume_payload(&self) -> Vec<u8> {
        let mut p = format!("hello fw={} v={}", self.fx.name, self.fx.version).into_bytes();
        p.resize(40, b' ');
        p
    }

    fn publish_payload(&self) -> Vec<u8> {
        let mut p = self.b.publish_topic.clone().into_bytes();
        p.push(0);
        let data = format!("{{\"t\":21.5,\"cycle\":{}}}", self.cycle);
        p.extend_from_slice(data.as_bytes());
        let target = p
            .len()
            .max(self.b.publish_topic.len() + 1 + self.b.publish_bytes as usize);
        p.resize(target, b' ');
        p
    }

    async fn send(&self, frame: &Frame) {
        if let Err(e) = self.board.socket.send_to(&frame.encode(), self.board.cloud).await {
            self.log("net", "WARN", &format!("send failed: {e}"));
        }
    }

    /// Receives the next datagram from the cloud, or None at `until`.
    async fn recv_until(&self, until: Instant) -> Option<Frame> {
        let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
        loop {
            let r = tokio::select! {
                biased;
                r = self.board.socket.recv_from(&mut buf) => r,
                _ = tokio::time::sleep_until(until) => return None,
            };
            match r {
                Ok((n, from)) if from == self.board.cloud => {
                    if let Ok(f) = Frame::decode(&buf[..n]) {
                        return Some(f);
                    }
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Discards whatever arrived while asleep (a modem in power saving mode
    /// does not buffer it either).
    async fn drain(&self) {
        let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::ZERO, self.board.socket.recv_from(&mut buf)).await {}
    }

    fn next_msg_id(&mut self) -> u16 {
        self.msg_id = self.msg_id.wrapping_add(1);
        self.msg_id
    }

    /// Seals `inner` with the next counter of the retained session and sends it.
    async fn send_record(&self, kind: InnerKind, msg_id: u16, payload: &[u8], flags: u8) -> Option<u64> {
        let inner = Inner {
            kind,
            msg_id,
            payload: payload.to_vec(),
        };
        let (frame, counter) = self.board.with_retained(|r| {
            let s = &mut r.session.as_mut()?.session;
            Some((s.seal(flags, &inner), s.tx_counter))
        })?;
        self.send(&frame).await;
        Some(counter)
    }

    /// Sends confirmable messages and waits for their answers with CoAP-like
    /// retransmission. Returns how it ended and whether any authenticated
    /// reply arrived (which is what resets `unanswered_uses`).
    async fn exchange(&mut self, msgs: Vec<(InnerKind, Vec<u8>, u8)>, deadline: Instant) -> (End, bool) {
        let mut out = Vec::new();
        let mut sent_counters = Vec::new();
        for (kind, payload, flags) in msgs {
            let msg_id = self.next_msg_id();
            let Some(c) = self.send_record(kind, msg_id, &payload, flags).await else {
                return (End::GaveUp, false);
            };
            sent_counters.push(c);
            let now = Instant::now();
            out.push(Outstanding {
                msg_id,
                kind,
                payload,
                flags,
                first_sent: now,
                sends: 1,
                next_at: self.b.retransmit.first().map(|d| now + d.0),
            });
        }
        let mut authed = false;
        let mut warned_unknown = false;
        loop {
            if out.is_empty() {
                return (End::AllAcked, authed);
            }
            let now = Instant::now();
            if now >= deadline {
                return (End::Deadline, authed);
            }
            let give_up_at = out.iter().map(|o| o.first_sent + self.b.give_up_after.0).min();
            if give_up_at.is_some_and(|t| now >= t) {
                self.log(
                    "coap",
                    "WARN",
                    &format!("no acknowledgement within {}; discarding session", self.b.give_up_after),
                );
                self.set_session(None);
                return (End::GaveUp, authed);
            }
            let mut wake_at = deadline;
            for t in out.iter().filter_map(|o| o.next_at).chain(give_up_at) {
                wake_at = wake_at.min(t);
            }
            match self.recv_until(wake_at).await {
                Some(Frame::Record(r)) => {
                    // Ours, fresh and authentic, or ignored.
                    let opened = self.board.with_retained(|ret| {
                        let sess = ret.session.as_mut()?;
                        let inner = sess.session.open(&r)?;
                        sess.unanswered_uses = 0;
                        Some(inner)
                    });
                    let Some(inner) = opened else { continue };
                    authed = true;
                    let answers = match inner.kind {
                        InnerKind::Pong => InnerKind::Ping,
                        InnerKind::Ack => InnerKind::Publish,
                        _ => continue,
                    };
                    out.retain(|o| !(o.msg_id == inner.msg_id && o.kind == answers));
                }
                Some(Frame::SessionUnknown(su)) => {
                    let ours = self.session().is_some_and(|s| s.session.id == su.session_id)
                        && sent_counters.contains(&su.counter);
                    if !ours {
                        continue;
                    }
                    if self.b.honours_session_unknown {
                        return (End::SessionUnknown, authed);
                    }
                    if !warned_unknown {
                        self.log("cloud", "WARN", "unexpected message type 0x11 from cloud; ignored");
                        warned_unknown = true;
                    }
                }
                Some(_) => {}
                None => {
                    let now = Instant::now();
                    let mut due = Vec::new();
                    for (i, o) in out.iter().enumerate() {
                        if o.next_at.is_some_and(|t| t <= now) {
                            due.push(i);
                        }
                    }
                    for i in due {
                        let (kind, msg_id, payload, flags) = {
                            let o = &out[i];
                            (o.kind, o.msg_id, o.payload.clone(), o.flags)
                        };
                        let name = if kind == InnerKind::Ping { "ping" } else { "publish" };
                        self.log(
                            "coap",
                            "INFO",
                            &format!("retransmitting {name} #{msg_id} (attempt {})", out[i].sends + 1),
                        );
                        match self.send_record(kind, msg_id, &payload, flags).await {
                            Some(c) => sent_counters.push(c),
                            None => return (End::GaveUp, authed),
                        }
                        let o = &mut out[i];
                        o.sends += 1;
                        o.next_at = self.b.retransmit.get(o.sends - 1).map(|d| now + d.0);
                    }
                }
            }
        }
    }

    /// Sends `frame` and waits for an answer `pick` accepts, retransmitting
    /// on the handshake schedule until `deadline`.
    async fn flight<T>(&self, frame: Frame, deadline: Instant, mut pick: impl FnMut(Frame) -> Option<T>) -> Option<T> {
        self.send(&frame).await;
        let mut sends = 1usize;
        let mut next = self.b.handshake_retransmit.first().map(|d| Instant::now() + d.0);
        loop {
            let until = next.map_or(deadline, |n| n.min(deadline));
            match self.recv_until(until).await {
                Some(f) => {
                    if let Some(t) = pick(f) {
                        return Some(t);
                    }
                }
                None => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    if next.is_some_and(|n| n <= now) {
                        self.send(&frame).await;
                        sends += 1;
                        next = self.b.handshake_retransmit.get(sends - 1).map(|d| now + d.0);
                    }
                }
            }
        }
    }

    async fn handshake(&mut self, deadline: Instant) -> bool {
        self.log("cloud", "INFO", "starting full handshake");
        let mut nonce = [0u8; 16];
        self.board.with_rng(|g| g.fill_bytes(&mut nonce));
        let mut hs = Handshake::new(
            &self.board.id,
            self.board.psk.clone(),
            nonce,
            rig_proto::CLIENT_HELLO_PADDING as u16,
        );
        let session = loop {
            // Each flight is resent on the handshake schedule until answered.
            let step = self
                .flight(hs.flight(), deadline, |f| match hs.on_frame(f) {
                    Progress::Ignored => None,
                    p => Some(p),
                })
                .await;
            match step {
                None => return false,
                Some(Progress::Next | Progress::Ignored) => continue,
                Some(Progress::Done(s)) => break s,
                Some(Progress::Failed(e)) => {
                    self.log("cloud", "ERROR", &e.to_string());
                    return false;
                }
            }
        };
        let sid = session.id;
        self.set_session(Some(DeviceSession {
            session,
            unanswered_uses: 0,
        }));
        self.log("cloud", "INFO", &format!("handshake complete, session {sid:016x}"));
        true
    }
}
