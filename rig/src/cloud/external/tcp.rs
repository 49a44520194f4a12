//! The relay's TCP side, for clouds that boards reach over TCP (MQTT over
//! TLS, say): each board's relay port also accepts TCP connections, and
//! each is paired with a connection of its own to the cloud, so the cloud
//! sees one peer per board connection. Bytes are counted per chunk read,
//! as `cloud.rx`/`cloud.tx` with `msg: "tcp"`: the TCP payload (TLS
//! records included), without TCP/IP headers.
//!
//! A byte stream cannot lose bytes, so network faults act as the network
//! would on it: a partition stalls both directions and new connections
//! until it heals (the ends' own timeouts may give up first, as they would
//! on a real link); `delay` holds each chunk; `loss` holds a chunk for a
//! retransmission timeout of [`RTO`] with the fault's probability.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::relay::Faults;
use crate::timeline::{EventKind, Source, Timeline};

/// What a lost TCP segment costs: Linux's minimum retransmission timeout.
pub const RTO: Duration = Duration::from_millis(200);

/// One board's TCP relay port.
pub(super) struct TcpLink {
    pub device: String,
    pub listener: TcpListener,
    pub upstream: SocketAddr,
    pub faults: Arc<Faults>,
    pub timeline: Timeline,
    pub seed: u64,
}

impl TcpLink {
    pub async fn run(self, mut closed: tokio::sync::watch::Receiver<bool>) {
        // Dropped with this task: a closed relay ends its connections.
        let mut conns = tokio::task::JoinSet::new();
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = closed.changed() => return,
                r = self.listener.accept() => {
                    let Ok((board, peer)) = r else { continue };
                    n += 1;
                    let c = Conn {
                        device: self.device.clone(),
                        peer,
                        faults: self.faults.clone(),
                        timeline: self.timeline.clone(),
                        rng: ChaCha8Rng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9e37_79b9)),
                    };
                    let upstream = self.upstream;
                    conns.spawn(c.relay(board, upstream));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

struct Conn {
    device: String,
    peer: SocketAddr,
    faults: Arc<Faults>,
    timeline: Timeline,
    rng: ChaCha8Rng,
}

impl Conn {
    async fn relay(mut self, board: TcpStream, upstream: SocketAddr) {
        // A partition also stalls a new connection's way to the cloud.
        self.faults.hold(&self.device, &mut self.rng).await;
        let Ok(cloud) = TcpStream::connect(upstream).await else {
            // Refused or unreachable: the board's connection just closes.
            return;
        };
        let _ = (board.set_nodelay(true), cloud.set_nodelay(true));
        let (br, bw) = board.into_split();
        let (cr, cw) = cloud.into_split();
        let mut back = Conn {
            device: self.device.clone(),
            peer: self.peer,
            faults: self.faults.clone(),
            timeline: self.timeline.clone(),
            rng: ChaCha8Rng::seed_from_u64(rand::Rng::next_u64(&mut self.rng)),
        };
        tokio::join!(self.pipe(br, cw, true), back.pipe(cr, bw, false));
    }

    async fn pipe(
        &mut self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        from_board: bool,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (bytes, msg, peer) = (n as u64, "tcp".to_string(), self.peer.to_string());
            let kind = if from_board {
                EventKind::CloudRx { bytes, msg, peer }
            } else {
                EventKind::CloudTx { bytes, msg, peer }
            };
            self.timeline.emit_device(&self.device, Source::Cloud, kind);
            self.faults.hold(&self.device, &mut self.rng).await;
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }
}
