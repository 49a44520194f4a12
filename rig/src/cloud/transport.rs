//! Datagram transports the cloud and simulated boards speak over.
//!
//! [`Datagram`] is the seam: a UDP socket on a real or real-clock bench, an
//! in-process [`MemNet`] on a virtual-clock bench. The bytes are the same
//! either way; only delivery differs (MemNet delivers after a configurable
//! one-way latency on the runtime's clock, so a paused clock stays
//! deterministic).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// A connectionless datagram socket.
#[async_trait]
pub trait Datagram: Send + Sync {
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize>;
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Another socket on the same address that shares its datagrams (the
    /// kernel spreads them by source over the group), for one more receive
    /// loop; `None` where the transport has no such thing.
    fn sibling(&self) -> Option<io::Result<Arc<dyn Datagram>>> {
        None
    }
    /// A datagram already queued, without waiting (`WouldBlock` if none, or
    /// where the transport cannot tell).
    fn try_recv_from(&self, _buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

#[async_trait]
impl Datagram for tokio::net::UdpSocket {
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::send_to(self, buf, to).await
    }
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::recv_from(self, buf).await
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
    fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::try_recv_from(self, buf)
    }
    fn sibling(&self) -> Option<io::Result<Arc<dyn Datagram>>> {
        // Only a socket made by `cloud_udp` is in a group.
        if !socket2::SockRef::from(self).reuse_port().unwrap_or(false) {
            return None;
        }
        Some(self.local_addr().and_then(|a| {
            let s = bind_in_group(a)?;
            Ok(Arc::new(s) as Arc<dyn Datagram>)
        }))
    }
}

/// What the cloud asks of the kernel for its socket's receive queue: a
/// reconnect storm of 10,000 devices arrives faster than any worker pool
/// drains it, and what does not fit is dropped before the cloud sees it.
/// Linux grants at most `net.core.rmem_max` (`rig bench storm` prints what
/// it got).
pub const CLOUD_RECV_BUFFER: usize = 4 << 20;

/// The cloud's UDP socket on `addr`, non-blocking, with its receive buffer
/// raised towards [`CLOUD_RECV_BUFFER`], and open to siblings
/// ([`Datagram::sibling`]): each cloud worker reads a socket of its own on
/// the same port (`SO_REUSEPORT`), so no datagram is handed from thread to
/// thread. Linux admits to such a group only sockets of the same user, and
/// an address already in use is refused first, so two clouds never end up
/// sharing one port unknowingly.
pub fn cloud_udp(addr: &str) -> io::Result<tokio::net::UdpSocket> {
    use std::net::ToSocketAddrs as _;
    let a = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr} names no address")))?;
    if a.port() != 0 {
        // Fails with "address in use" if anything holds it, whether in a
        // group or not.
        drop(std::net::UdpSocket::bind(a)?);
    }
    bind_in_group(a)
}

fn bind_in_group(a: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::DGRAM, None)?;
    s.set_reuse_port(true)?;
    // Best effort: a smaller buffer than asked for is the kernel's limit,
    // not a reason to refuse to serve.
    let _ = s.set_recv_buffer_size(CLOUD_RECV_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&a.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

type Packet = (Vec<u8>, SocketAddr);

struct NetState {
    ports: HashMap<SocketAddr, mpsc::UnboundedSender<Packet>>,
}

/// An in-process datagram network: sockets bind to addresses on it and
/// datagrams arrive after `latency`. Datagrams to an unbound address vanish,
/// as UDP to a closed port does.
#[derive(Clone)]
pub struct MemNet {
    state: Arc<Mutex<NetState>>,
    latency: Duration,
}

impl MemNet {
    pub fn new(latency: Duration) -> MemNet {
        MemNet {
            state: Arc::new(Mutex::new(NetState { ports: HashMap::new() })),
            latency,
        }
    }

    pub fn bind(&self, addr: SocketAddr) -> io::Result<MemSocket> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.ports.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is already bound on this in-process network"),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        st.ports.insert(addr, tx);
        Ok(MemSocket {
            net: self.clone(),
            addr,
            rx: tokio::sync::Mutex::new(rx),
        })
    }

    fn deliver(&self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let tx = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.ports.get(&to).cloned()
        };
        if let Some(tx) = tx {
            // A closed receiver is a socket being dropped: the datagram is lost.
            let _ = tx.send((data, from));
        }
    }
}

/// A socket bound on a [`MemNet`].
pub struct MemSocket {
    net: MemNet,
    addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Packet>>,
}

impl Drop for MemSocket {
    fn drop(&mut self) {
        let mut st = self.net.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ports.remove(&self.addr);
    }
}

#[async_trait]
impl Datagram for MemSocket {
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let data = buf.to_vec();
        let (net, from) = (self.net.clone(), self.addr);
        if net.latency.is_zero() {
            net.deliver(from, to, data);
        } else {
            let latency = net.latency;
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                net.deliver(from, to, data);
            });
        }
        Ok(buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some((data, from)) => {
                // Like a UDP socket: a datagram longer than the buffer is truncated.
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Ok((n, from))
            }
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "network closed")),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[tokio::test(start_paused = true)]
    async fn memnet_delivers_after_latency_with_source_address() {
        let net = MemNet::new(Duration::from_millis(40));
        let a = net.bind(addr(1)).unwrap();
        let b = net.bind(addr(2)).unwrap();
        assert!(net.bind(addr(2)).is_err());
        let t0 = tokio::time::Instant::now();
        a.send_to(b"hi", addr(2)).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"hi"[..], addr(1)));
        assert_eq!(t0.elapsed(), Duration::from_millis(40));
    }

    #[tokio::test(start_paused = true)]
    async fn datagrams_to_unbound_or_dropped_sockets_vanish() {
        let net = MemNet::new(Duration::ZERO);
        let a = net.bind(addr(1)).unwrap();
        a.send_to(b"x", addr(9)).await.unwrap();
        let b = net.bind(addr(2)).unwrap();
        drop(b);
        a.send_to(b"x", addr(2)).await.unwrap();
        let b = net.bind(addr(2)).unwrap();
        let mut buf = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(1), b.recv_from(&mut buf)).await;
        assert!(r.is_err(), "nothing was queued for the new socket");
    }

    #[tokio::test]
    async fn udp_socket_is_a_datagram_transport() {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a, b): (Box<dyn Datagram>, Box<dyn Datagram>) = (Box::new(a), Box::new(b));
        a.send_to(b"ping", b.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, a.local_addr().unwrap());
    }
}
