//! The floor of `rig bench`: a bare UDP echo server. It does what no cloud
//! can beat (a blocking `recv_from`/`send_to` loop on its own thread, no
//! decoding, no crypto, no cache), so the cloud's rate as a share of it says
//! how much of the machine the protocol work and bookkeeping cost.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rig_proto::frame::FLAG_RESUME;
use rig_proto::{Direction, Frame, Inner, InnerKind, Psk, Record, RecordHeader, SessionKeys};

/// A running echo server on 127.0.0.1; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start() -> std::io::Result<EchoServer> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        // Wakes the loop now and then to see whether it should stop.
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("udp echo floor".into())
            .spawn(move || {
                let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], peer);
                    }
                }
            })?;
        Ok(EchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A datagram exactly as long as the resume a bench client sends (a ping
/// with a 40-byte payload, sealed), so the floor moves the same bytes.
pub fn resume_sized_datagram() -> Vec<u8> {
    let keys = SessionKeys::derive(&Psk::derive_for("echo"), "echo", &[0; 16], &[0; 16], 1);
    let ping = Inner {
        kind: InnerKind::Ping,
        msg_id: 1,
        payload: vec![b' '; 40],
    };
    let header = RecordHeader {
        flags: FLAG_RESUME,
        session_id: 1,
        counter: 1,
    };
    Frame::Record(Record::seal(&keys, Direction::ToCloud, header, &ping)).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_echoes_what_it_receives_and_stops() {
        let echo = EchoServer::start().unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let probe = resume_sized_datagram();
        c.send_to(&probe, echo.addr()).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&probe[..], echo.addr()));
        drop(echo);
    }
}
