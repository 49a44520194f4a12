//! The device side of the protocol, without I/O: which flight a device
//! sends, what it accepts in answer, and how a session seals and opens
//! records. The simulated firmware, `rig bench`'s clients and the tests all
//! drive this one state machine; the C firmware under `firmware-fixtures/`
//! mirrors it. Timing (retransmission, deadlines) and policy (when to give a
//! session up) are the caller's: this holds only what the protocol fixes.

use crate::crypto::{MAC_LEN, NONCE_LEN};
use crate::frame::{ClientFinished, ClientHello, Frame, Inner, Record, RecordHeader};
use crate::handshake::{Transcript, certificate};
use crate::{CLIENT_CERT_LEN, Direction, Psk, SessionId, SessionKeys};

/// An established session, as firmware keeps it in retained RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub keys: SessionKeys,
    /// Last counter used towards the cloud.
    pub tx_counter: u64,
    /// Highest counter accepted from the cloud.
    pub rx_counter: u64,
}

impl Session {
    pub fn new(id: SessionId, keys: SessionKeys) -> Session {
        Session {
            id,
            keys,
            tx_counter: 0,
            rx_counter: 0,
        }
    }

    /// Seals `inner` under the next counter towards the cloud.
    pub fn seal(&mut self, flags: u8, inner: &Inner) -> Frame {
        self.tx_counter += 1;
        let header = RecordHeader {
            flags,
            session_id: self.id,
            counter: self.tx_counter,
        };
        Frame::Record(Record::seal(&self.keys, Direction::ToCloud, header, inner))
    }

    /// Opens a record from the cloud: ours, fresh (counter above the highest
    /// accepted) and authentic, or None. Only then is the counter advanced.
    pub fn open(&mut self, r: &Record) -> Option<Inner> {
        if r.header.session_id != self.id || r.header.counter <= self.rx_counter {
            return None;
        }
        let inner = r.open(&self.keys, Direction::ToDevice)?;
        self.rx_counter = r.header.counter;
        Some(inner)
    }
}

/// Why a handshake cannot complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("server hello fails authentication (wrong device key?)")]
    ServerHelloMac,
    #[error("server finished fails authentication")]
    ServerFinishedMac,
}

/// What a frame from the cloud did to a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not an answer to the current flight (stray, late or for someone else).
    Ignored,
    /// The next flight is ready: send [`Handshake::flight`].
    Next,
    /// The session is established.
    Done(Session),
    Failed(HandshakeError),
}

#[derive(Debug, Clone)]
enum Stage {
    /// Hello without a cookie, waiting for HELLO_VERIFY.
    Hello,
    /// Hello with the cookie, waiting for SERVER_HELLO.
    Cookied([u8; MAC_LEN]),
    /// Finished sent, waiting for SERVER_FINISHED.
    Finishing {
        transcript: Transcript,
        keys: SessionKeys,
        finished: Frame,
    },
    Over,
}

/// A full handshake in progress.
#[derive(Debug, Clone)]
pub struct Handshake {
    device_id: String,
    psk: Psk,
    nonce: [u8; NONCE_LEN],
    padding: u16,
    stage: Stage,
}

impl Handshake {
    /// Starts a handshake with a fresh `client_nonce` (the caller's RNG);
    /// `padding` bytes stand in for DTLS cipher suites and extensions.
    pub fn new(device_id: &str, psk: Psk, client_nonce: [u8; NONCE_LEN], padding: u16) -> Handshake {
        Handshake {
            device_id: device_id.to_owned(),
            psk,
            nonce: client_nonce,
            padding,
            stage: Stage::Hello,
        }
    }

    fn hello(&self, cookie: Option<[u8; MAC_LEN]>) -> Frame {
        Frame::ClientHello(ClientHello {
            device_id: self.device_id.clone(),
            client_nonce: self.nonce,
            cookie,
            padding: self.padding,
        })
    }

    /// The flight to send now (and to resend until it is answered).
    pub fn flight(&self) -> Frame {
        match &self.stage {
            Stage::Hello | Stage::Over => self.hello(None),
            Stage::Cookied(c) => self.hello(Some(*c)),
            Stage::Finishing { finished, .. } => finished.clone(),
        }
    }

    /// Takes a frame from the cloud.
    pub fn on_frame(&mut self, f: Frame) -> Progress {
        match (&self.stage, f) {
            (Stage::Hello, Frame::HelloVerify(h)) => {
                self.stage = Stage::Cookied(h.cookie);
                Progress::Next
            }
            (Stage::Cookied(_), Frame::ServerHello(sh)) => {
                let keys =
                    SessionKeys::derive(&self.psk, &self.device_id, &self.nonce, &sh.server_nonce, sh.session_id);
                let transcript = Transcript {
                    client_nonce: self.nonce,
                    server_nonce: sh.server_nonce,
                    session_id: sh.session_id,
                };
                if !transcript.verify_server_hello(&keys, &sh.cert, &sh.mac) {
                    self.stage = Stage::Over;
                    return Progress::Failed(HandshakeError::ServerHelloMac);
                }
                // Deterministic filler for the client certificate chain.
                let cert = certificate(CLIENT_CERT_LEN, self.device_id.len() as u8);
                let mac = transcript.client_finished_mac(&keys, &cert);
                let finished = Frame::ClientFinished(ClientFinished {
                    session_id: sh.session_id,
                    cert,
                    mac,
                });
                self.stage = Stage::Finishing {
                    transcript,
                    keys,
                    finished,
                };
                Progress::Next
            }
            (Stage::Finishing { transcript, keys, .. }, Frame::ServerFinished(sf))
                if sf.session_id == transcript.session_id =>
            {
                if !transcript.verify_server_finished(keys, &sf.mac) {
                    self.stage = Stage::Over;
                    return Progress::Failed(HandshakeError::ServerFinishedMac);
                }
                let session = Session::new(transcript.session_id, keys.clone());
                self.stage = Stage::Over;
                Progress::Done(session)
            }
            _ => Progress::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{HelloVerify, InnerKind, ServerFinished, ServerHello};

    /// The cloud's side, just enough to answer each flight.
    fn cloud_answer(f: &Frame, psk: &Psk) -> Frame {
        match f {
            Frame::ClientHello(h) if h.cookie.is_none() => Frame::HelloVerify(HelloVerify { cookie: [5; MAC_LEN] }),
            Frame::ClientHello(h) => {
                let keys = SessionKeys::derive(psk, &h.device_id, &h.client_nonce, &[2; 16], 77);
                let t = Transcript {
                    client_nonce: h.client_nonce,
                    server_nonce: [2; 16],
                    session_id: 77,
                };
                let cert = certificate(100, 1);
                Frame::ServerHello(ServerHello {
                    session_id: 77,
                    server_nonce: [2; 16],
                    mac: t.server_hello_mac(&keys, &cert),
                    cert,
                })
            }
            Frame::ClientFinished(cf) => {
                let keys = SessionKeys::derive(psk, "dev", &[1; 16], &[2; 16], 77);
                let t = Transcript {
                    client_nonce: [1; 16],
                    server_nonce: [2; 16],
                    session_id: 77,
                };
                assert!(t.verify_client_finished(&keys, &cf.cert, &cf.mac));
                Frame::ServerFinished(ServerFinished {
                    session_id: 77,
                    mac: t.server_finished_mac(&keys),
                })
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_handshake_runs_hello_cookie_finished_and_ignores_strays() {
        let psk = Psk([9; 32]);
        let mut hs = Handshake::new("dev", psk.clone(), [1; 16], 120);
        assert_eq!(
            hs.on_frame(Frame::ServerFinished(ServerFinished {
                session_id: 1,
                mac: [0; 16]
            })),
            Progress::Ignored
        );
        let mut session = None;
        for _ in 0..3 {
            let answer = cloud_answer(&hs.flight(), &psk);
            match hs.on_frame(answer) {
                Progress::Next => {}
                Progress::Done(s) => session = Some(s),
                other => panic!("{other:?}"),
            }
        }
        let mut s = session.expect("established");
        assert_eq!(s.id, 77);
        // Records: counters advance, replays and other sessions are refused.
        let Frame::Record(r) = s.seal(
            0,
            &Inner {
                kind: InnerKind::Ping,
                msg_id: 1,
                payload: vec![],
            },
        ) else {
            panic!()
        };
        assert_eq!(r.header.counter, 1);
        let reply = |counter| {
            Record::seal(
                &s.keys,
                Direction::ToDevice,
                RecordHeader {
                    flags: 0,
                    session_id: 77,
                    counter,
                },
                &Inner {
                    kind: InnerKind::Pong,
                    msg_id: 1,
                    payload: vec![],
                },
            )
        };
        let (r1, r0) = (reply(1), reply(1));
        assert!(s.open(&r1).is_some());
        assert!(s.open(&r0).is_none(), "a replay is refused");
        assert_eq!(s.rx_counter, 1);
    }

    #[test]
    fn a_wrong_key_fails_the_handshake_at_the_server_hello() {
        let mut hs = Handshake::new("dev", Psk([1; 32]), [1; 16], 0);
        let answer = cloud_answer(&hs.flight(), &Psk([1; 32]));
        assert_eq!(hs.on_frame(answer), Progress::Next);
        let answer = cloud_answer(&hs.flight(), &Psk([2; 32]));
        assert_eq!(hs.on_frame(answer), Progress::Failed(HandshakeError::ServerHelloMac));
    }
}
