//! The cloud's protocol state machine and its receive loop.
//!
//! [`Server::handle`] turns one datagram into replies and events; [`serve`]
//! drives it from a [`Datagram`] transport and journals byte counts. Nothing
//! a peer sends can make it panic, and only a datagram authenticated under a
//! session's key changes that session: forged, replayed and malformed input
//! is counted (`cloud.invalid`) and dropped.
//!
//! Cache calls are bounded by a timeout and guarded by a short circuit
//! breaker, so a dead or stalled cache costs at most one timeout per breaker
//! interval instead of one per datagram; failures are `cache.error` events and
//! count as cache misses, which the mitigation setting then handles.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rig_proto::crypto::NONCE_LEN;
use rig_proto::{
    ClientFinished, ClientHello, CookieKey, Direction, Frame, HelloVerify, Inner, InnerKind, Psk, Record, RecordHeader,
    ServerFinished, ServerHello, SessionId, SessionKeys, SessionUnknown, Transcript,
};
use tokio::time::Instant;

mod burst;

use super::Mitigation;
use super::durable::DurableKeys;
use super::shards::{PendingIps, Shard};
use super::transport::Datagram;
use crate::cache::{CacheError, SessionCache, SessionRecord, session_label};
use crate::timeline::{ConnectVia, EventKind, Source, Timeline, UnknownAction};

/// Where the cloud's secrets (cookie key, nonces, session ids) come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// A seeded generator: only for the virtual clock, where the cloud is
    /// reachable by nothing but the simulation and a seed must reproduce a
    /// run.
    Seeded(u64),
    /// The OS RNG: every cloud a peer can reach (UDP, `rig cloud serve`).
    Os,
}

/// Static settings of a cloud instance.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// Pre-shared keys by device id; hellos from other ids are dropped.
    pub keys: BTreeMap<String, Psk>,
    pub secrets: Secrets,
    /// TTL given to sessions in the cache.
    pub session_ttl: Duration,
    /// Upper bound on one cache call.
    pub cache_timeout: Duration,
    /// After a failed cache call, calls fail fast for this long.
    pub cache_retry: Duration,
    /// Pending handshakes kept at most. When full, new hellos are refused:
    /// a live pending handshake is never evicted by a flood.
    pub max_pending: usize,
    /// Pending handshakes one source IP may hold at once.
    pub max_pending_per_ip: usize,
    /// A pending handshake not finished within this is forgotten.
    pub pending_ttl: Duration,
    /// The cookie secret is replaced this often (cookies of the previous
    /// secret stay valid for one more period).
    pub cookie_rotation: Duration,
    /// Replay protection that survives the cache: the highest record counter
    /// accepted per session is also kept in the cloud process, which no
    /// cache restore can roll back. Off models a cloud whose replay window
    /// lives only in the (restorable) cache; a replay it accepts is then a
    /// `cloud.replay_accepted` event.
    pub replay_floor: bool,
    /// Journal a datagram and its replies as one `cloud.exchange` instead
    /// of a `cloud.rx` and a `cloud.tx` each (fleet benches).
    pub per_exchange: bool,
    /// Workers handling datagrams concurrently, each owning the sessions
    /// whose id is its index modulo this (see [`super::shards`]). 1 keeps
    /// one receive loop, which the virtual clock needs to be deterministic.
    pub workers: usize,
}

impl CloudConfig {
    /// A cloud with seeded secrets (the virtual clock).
    pub fn new(keys: BTreeMap<String, Psk>, seed: u64) -> CloudConfig {
        CloudConfig::with_secrets(keys, Secrets::Seeded(seed))
    }

    pub fn with_secrets(keys: BTreeMap<String, Psk>, secrets: Secrets) -> CloudConfig {
        CloudConfig {
            keys,
            secrets,
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            cache_timeout: Duration::from_millis(250),
            cache_retry: Duration::from_secs(1),
            max_pending: 4096,
            max_pending_per_ip: 16,
            pending_ttl: Duration::from_secs(60),
            cookie_rotation: Duration::from_secs(600),
            replay_floor: true,
            per_exchange: false,
            workers: 1,
        }
    }
}

/// A device as one worker knows it: its last address, the session it is
/// known to hold and the one its latest handshake created.
///
/// A device holds one session. Once it uses the one a handshake gave it,
/// the session it held before is dead on the device, and the cloud drops it
/// from the cache, the durable store and its replay floors: whatever the
/// handshake rate, the cloud then keeps a session per device instead of one
/// per handshake. Until that first use the old session stays valid (the
/// device may never have received the finished flight), and a newer
/// handshake replaces a successor that was never used. Per worker: a device
/// whose new session lives on another worker leaves its old one to the
/// cache's TTL, so the bound is a session per device per worker.
#[derive(Default)]
struct Known {
    addr: Option<SocketAddr>,
    current: Option<SessionId>,
    successor: Option<SessionId>,
}

struct Pending {
    ip: std::net::IpAddr,
    device_id: String,
    transcript: Transcript,
    keys: SessionKeys,
    created: Instant,
}

/// What one datagram produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The device the datagram is attributed to, if known.
    pub device: Option<String>,
    /// The message name for the byte-count event.
    pub msg: &'static str,
    pub replies: Vec<Frame>,
    pub events: Vec<EventKind>,
    /// The session as it must be stored once the replies are on their way
    /// (see [`Server::store`]).
    pub store: Option<SessionRecord>,
    /// A session its device has replaced, to drop after the store (see
    /// `Known`).
    pub retire: Option<SessionId>,
}

/// The cloud's protocol state. Owned by one task.
pub struct Server {
    cfg: CloudConfig,
    cache: Arc<dyn SessionCache>,
    durable: DurableKeys,
    mitigation: super::CloudHandle,
    timeline: Timeline,
    rng: ChaCha8Rng,
    cookie_key: CookieKey,
    /// The secret before the last rotation, still accepted for one period.
    previous_cookie_key: Option<CookieKey>,
    cookie_rotated: Instant,
    cert: Vec<u8>,
    /// Highest record counter accepted per session, outside the cache.
    highest_rx: HashMap<SessionId, u64>,
    pending: BTreeMap<SessionId, Pending>,
    /// Pending handshakes by age, oldest first: expiry looks only at the
    /// front instead of walking every pending handshake on every hello.
    pending_by_age: std::collections::VecDeque<(Instant, SessionId)>,
    // Which device last spoke from an address: how bytes of records the cloud
    // cannot decrypt are still attributed to a device. One address per
    // device (see `heard`), so it is bounded by the devices with a key.
    peers: HashMap<SocketAddr, String>,
    /// What this worker knows of each device's sessions (see `Known`).
    devices: HashMap<String, Known>,
    /// Circuit breaker, per part of the cache (a cluster's slot range): a
    /// dead node fails fast only the sessions it served.
    cache_down_until: HashMap<usize, Instant>,
    /// Sessions fetched for the datagrams of a burst (see `burst`).
    prefetched: HashMap<SessionId, Result<Option<SessionRecord>, CacheError>>,
    /// The last burst's sessions, written with the next burst's fetch.
    unstored: burst::Unstored,
    /// Which worker this is: the session ids it hands out are its own.
    shard: Shard,
    /// Pending handshakes per source IP, across all workers.
    ips: Arc<PendingIps>,
}

impl Server {
    pub fn new(
        cfg: CloudConfig,
        cache: Arc<dyn SessionCache>,
        durable: DurableKeys,
        handle: super::CloudHandle,
        timeline: Timeline,
    ) -> Server {
        Server::shard(cfg, cache, durable, handle, timeline, Shard::ONE, Arc::default())
    }

    /// The cloud as `cfg.workers` servers, one per worker, sharing the
    /// cache, the durable store and the per-IP handshake budget.
    pub fn sharded(
        cfg: CloudConfig,
        cache: Arc<dyn SessionCache>,
        durable: DurableKeys,
        handle: super::CloudHandle,
        timeline: Timeline,
    ) -> Vec<Server> {
        let count = cfg.workers.max(1) as u64;
        let ips = Arc::<PendingIps>::default();
        (0..count)
            .map(|index| {
                let mut cfg = cfg.clone();
                cfg.max_pending = cfg.max_pending.div_ceil(count as usize);
                Server::shard(
                    cfg,
                    cache.clone(),
                    durable.clone(),
                    handle.clone(),
                    timeline.clone(),
                    Shard { index, count },
                    ips.clone(),
                )
            })
            .collect()
    }

    fn shard(
        cfg: CloudConfig,
        cache: Arc<dyn SessionCache>,
        durable: DurableKeys,
        handle: super::CloudHandle,
        timeline: Timeline,
        shard: Shard,
        ips: Arc<PendingIps>,
    ) -> Server {
        let mut rng = match cfg.secrets {
            // Worker 0 keeps the single cloud's stream, so a seed still
            // reproduces a one-worker run exactly.
            Secrets::Seeded(seed) => {
                ChaCha8Rng::seed_from_u64(seed ^ 0xc10d ^ shard.index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            }
            Secrets::Os => {
                let mut seed = [0u8; 32];
                // Without OS randomness a network-facing cloud must not run
                // on guessable secrets.
                getrandom::fill(&mut seed).expect("the OS random number generator is available");
                ChaCha8Rng::from_seed(seed)
            }
        };
        let mut ck = [0u8; 32];
        rng.fill_bytes(&mut ck);
        Server {
            cfg,
            cache,
            durable,
            mitigation: handle,
            timeline,
            rng,
            cookie_key: CookieKey(ck),
            previous_cookie_key: None,
            cookie_rotated: Instant::now(),
            cert: rig_proto::handshake::certificate(rig_proto::SERVER_CERT_LEN, 0x5a),
            highest_rx: HashMap::new(),
            pending: BTreeMap::new(),
            pending_by_age: std::collections::VecDeque::new(),
            peers: HashMap::new(),
            devices: HashMap::new(),
            cache_down_until: HashMap::new(),
            prefetched: HashMap::new(),
            unstored: burst::Unstored::default(),
            shard,
            ips,
        }
    }

    /// Processes one datagram from `peer`, the session stored before it
    /// returns.
    pub async fn handle(&mut self, data: &[u8], peer: SocketAddr) -> Outcome {
        let mut out = self.handle_deferred(data, peer).await;
        self.store(&mut out).await;
        out
    }

    /// Writes what `out` left to store to the durable store and the cache.
    ///
    /// The receive paths call it after sending the replies: the device does
    /// not wait for the cache's acknowledgement, which halves what a resume
    /// costs it with a networked cache. Order and replay protection are
    /// unchanged: the worker finishes the write before it takes the next
    /// datagram (a session's datagrams all reach this worker; a burst's
    /// writes go with the next burst's fetch, which reads those sessions
    /// from the write, see `burst`), and the in-process replay floor was
    /// raised before the reply was sealed.
    pub async fn store(&mut self, out: &mut Outcome) {
        if let Some(rec) = out.store.take() {
            if let Err(e) = self.durable.put(&rec) {
                out.events
                    .push(cache_error("durable.put", &CacheError::io("durable key store")(e)));
            }
            if let Err(e) = self.cache_put(&rec).await {
                out.events.push(cache_error("put", &e));
            }
        }
        // After the put, so a cache that is down fails the put as before.
        self.retire(out).await;
    }

    async fn handle_deferred(&mut self, data: &[u8], peer: SocketAddr) -> Outcome {
        let mut out = Outcome {
            device: self.peers.get(&peer).cloned(),
            msg: "malformed",
            ..Outcome::default()
        };
        let frame = match Frame::decode(data) {
            Ok(f) => f,
            Err(e) => {
                out.events.push(invalid(e.0, peer));
                return out;
            }
        };
        out.msg = frame.name();
        match frame {
            Frame::ClientHello(h) => self.on_client_hello(h, peer, &mut out),
            Frame::ClientFinished(f) => self.on_client_finished(f, peer, &mut out).await,
            Frame::Record(r) => self.on_record(r, peer, &mut out).await,
            Frame::HelloVerify(_) | Frame::ServerHello(_) | Frame::ServerFinished(_) | Frame::SessionUnknown(_) => {
                out.events.push(invalid("message only the cloud sends", peer));
            }
        }
        out
    }

    fn on_client_hello(&mut self, h: ClientHello, peer: SocketAddr, out: &mut Outcome) {
        let Some(psk) = self.cfg.keys.get(&h.device_id).cloned() else {
            out.events.push(invalid("hello from a device without a key", peer));
            return;
        };
        out.device = Some(h.device_id.clone());
        self.rotate_cookie_key();
        let peer_bytes = peer.to_string();
        let cookie_ok = h.cookie.is_some_and(|c| {
            let ok = |k: &CookieKey| k.verify(peer_bytes.as_bytes(), &h.device_id, &h.client_nonce, &c);
            ok(&self.cookie_key) || self.previous_cookie_key.as_ref().is_some_and(ok)
        });
        if !cookie_ok {
            // Stateless: nothing is remembered until the peer proves it
            // receives at its source address by echoing this.
            let cookie = self
                .cookie_key
                .cookie(peer_bytes.as_bytes(), &h.device_id, &h.client_nonce);
            out.replies.push(Frame::HelloVerify(HelloVerify { cookie }));
            return;
        }
        self.expire_pending();
        if self.pending.len() >= self.cfg.max_pending {
            out.events
                .push(invalid("handshake refused: too many pending handshakes", peer));
            return;
        }
        if !self.ips.take(peer.ip(), self.cfg.max_pending_per_ip) {
            out.events.push(invalid(
                "handshake refused: too many pending handshakes from this address",
                peer,
            ));
            return;
        }
        self.heard(peer, &h.device_id);
        let mut server_nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut server_nonce);
        let session_id = loop {
            // Ids ≡ this worker's index, so the finished flight and every
            // record of the session come back to the worker holding it.
            let Some(id) = self.shard.own(self.rng.next_u64()) else {
                continue;
            };
            if id != 0 && !self.pending.contains_key(&id) {
                break id;
            }
        };
        let transcript = Transcript {
            client_nonce: h.client_nonce,
            server_nonce,
            session_id,
        };
        let keys = SessionKeys::derive(&psk, &h.device_id, &h.client_nonce, &server_nonce, session_id);
        let mac = transcript.server_hello_mac(&keys, &self.cert);
        out.replies.push(Frame::ServerHello(ServerHello {
            session_id,
            server_nonce,
            cert: self.cert.clone(),
            mac,
        }));
        let created = Instant::now();
        self.pending_by_age.push_back((created, session_id));
        self.pending.insert(
            session_id,
            Pending {
                ip: peer.ip(),
                device_id: h.device_id,
                transcript,
                keys,
                created,
            },
        );
        if self.pending_by_age.len() > 2 * self.pending.len().max(64) {
            // Finished handshakes leave their entries behind; at a high
            // handshake rate they would pile up for a whole pending TTL.
            // Amortised: the queue at least halves each time.
            let pending = &self.pending;
            self.pending_by_age
                .retain(|(c, id)| pending.get(id).is_some_and(|p| p.created == *c));
        }
    }

    fn expire_pending(&mut self) {
        let now = Instant::now();
        let ttl = self.cfg.pending_ttl;
        while let Some(&(created, id)) = self.pending_by_age.front() {
            if now.duration_since(created) < ttl {
                break;
            }
            self.pending_by_age.pop_front();
            // The entry may have finished already, or its id been reused.
            if self.pending.get(&id).is_some_and(|p| p.created == created)
                && let Some(p) = self.pending.remove(&id)
            {
                self.ips.give_back(p.ip);
            }
        }
    }

    fn rotate_cookie_key(&mut self) {
        if self.cookie_rotated.elapsed() < self.cfg.cookie_rotation {
            return;
        }
        let mut ck = [0u8; 32];
        self.rng.fill_bytes(&mut ck);
        self.previous_cookie_key = Some(std::mem::replace(&mut self.cookie_key, CookieKey(ck)));
        self.cookie_rotated = Instant::now();
    }

    async fn on_client_finished(&mut self, f: ClientFinished, peer: SocketAddr, out: &mut Outcome) {
        let Some(p) = self.pending.remove(&f.session_id) else {
            out.events.push(invalid(
                "finished without a pending handshake (replayed or forged)",
                peer,
            ));
            return;
        };
        out.device = Some(p.device_id.clone());
        if !p.transcript.verify_client_finished(&p.keys, &f.cert, &f.mac) {
            // Keep the handshake pending: a forgery must not be able to
            // cancel the real device's handshake either.
            self.pending.insert(f.session_id, p);
            out.events.push(invalid("bad finished MAC", peer));
            return;
        }
        self.ips.give_back(p.ip);
        self.heard(peer, &p.device_id);
        let known = known(&mut self.devices, &p.device_id);
        // A successor never used: the device did not keep it.
        out.retire = known.successor.replace(f.session_id);
        let rec = SessionRecord::new(f.session_id, &p.device_id, &p.keys);
        out.store = Some(rec);
        let session = session_label(f.session_id);
        out.events.push(EventKind::CloudHandshake {
            session: session.clone(),
        });
        out.events.push(EventKind::CloudConnected {
            via: ConnectVia::Handshake,
            session,
        });
        out.replies.push(Frame::ServerFinished(ServerFinished {
            session_id: f.session_id,
            mac: p.transcript.server_finished_mac(&p.keys),
        }));
    }

    async fn on_record(&mut self, r: Record, peer: SocketAddr, out: &mut Outcome) {
        let sid = r.header.session_id;
        let session = session_label(sid);
        let cached = match self.cache_get(sid).await {
            Ok(rec) => rec,
            Err(e) => {
                out.events.push(cache_error("get", &e));
                None
            }
        };
        let (mut rec, healed) = match cached {
            Some(rec) => (rec, false),
            None => match self.mitigation.mitigation() {
                Mitigation::Durable => match self.durable.get(sid) {
                    Some(rec) => (rec, true),
                    None => {
                        out.events.push(unknown(&session, UnknownAction::Dropped, &r));
                        return;
                    }
                },
                Mitigation::Drop => {
                    out.events.push(unknown(&session, UnknownAction::Dropped, &r));
                    return;
                }
                Mitigation::Reject => {
                    out.events.push(unknown(&session, UnknownAction::Rejected, &r));
                    out.replies.push(Frame::SessionUnknown(SessionUnknown {
                        session_id: sid,
                        counter: r.header.counter,
                    }));
                    return;
                }
            },
        };
        out.device = Some(rec.device_id.clone());
        let keys = rec.keys();
        let Some(inner) = r.open(&keys, Direction::ToCloud) else {
            out.events.push(invalid("record fails authentication", peer));
            return;
        };
        if !self.holds(&rec.device_id, sid, out) {
            out.events
                .push(invalid("record on a session its device has replaced", peer));
            return;
        }
        if r.header.counter <= rec.rx_counter {
            out.events
                .push(invalid("replayed record (counter not above last accepted)", peer));
            return;
        }
        // The cache may have been restored to an older counter; the cloud
        // process remembers the highest it accepted.
        let highest = self.highest_rx.get(&sid).copied().unwrap_or(0);
        if r.header.counter <= highest {
            if self.cfg.replay_floor {
                out.events.push(invalid(
                    "replayed record (counter not above the highest accepted before a cache restore)",
                    peer,
                ));
                return;
            }
            out.events.push(EventKind::CloudReplayAccepted {
                session: session.clone(),
                counter: r.header.counter,
                highest,
            });
        }
        self.highest_rx.insert(sid, r.header.counter.max(highest));
        self.heard(peer, &rec.device_id);
        rec.rx_counter = r.header.counter;
        if healed {
            out.events.push(unknown(&session, UnknownAction::Healed, &r));
        }
        if r.header.is_resume() {
            out.events.push(EventKind::CloudResumed {
                session: session.clone(),
            });
            out.events.push(EventKind::CloudConnected {
                via: ConnectVia::Resume,
                session: session.clone(),
            });
        }
        let reply_kind = match inner.kind {
            InnerKind::Ping => Some(InnerKind::Pong),
            InnerKind::Publish => {
                let topic = publish_topic(&inner.payload);
                out.events.push(EventKind::CloudPublish {
                    session: session.clone(),
                    topic,
                });
                Some(InnerKind::Ack)
            }
            InnerKind::Pong | InnerKind::Ack => None,
        };
        if let Some(kind) = reply_kind {
            rec.tx_counter += 1;
            let header = RecordHeader {
                flags: 0,
                session_id: sid,
                counter: rec.tx_counter,
            };
            let reply = Inner {
                kind,
                msg_id: inner.msg_id,
                payload: Vec::new(),
            };
            out.replies
                .push(Frame::Record(Record::seal(&keys, Direction::ToDevice, header, &reply)));
        }
        out.store = Some(rec);
    }

    /// Records that `device` spoke from `peer`, forgetting the address it
    /// used before.
    fn heard(&mut self, peer: SocketAddr, device: &str) {
        if self.peers.get(&peer).is_some_and(|d| d == device) {
            return;
        }
        let known = known(&mut self.devices, device);
        if let Some(old) = known.addr.replace(peer)
            && self.peers.get(&old).is_some_and(|d| d == device)
        {
            self.peers.remove(&old);
        }
        if let Some(other) = self.peers.insert(peer, device.to_owned())
            && let Some(k) = self.devices.get_mut(&other)
            && k.addr == Some(peer)
        {
            // Another device had this address last; it has moved.
            k.addr = None;
        }
    }

    /// Whether an authenticated record of `sid` from `device` is on the
    /// session the device holds, moving to its successor on first use (see
    /// `Known`). A session the device has replaced is refused: a cache
    /// restored from an old snapshot could bring it back, its replay floor
    /// already forgotten.
    fn holds(&mut self, device: &str, sid: SessionId, out: &mut Outcome) -> bool {
        let known = known(&mut self.devices, device);
        if known.successor == Some(sid) {
            known.successor = None;
            out.retire = known.current.replace(sid);
            return true;
        }
        match known.current {
            Some(c) => c == sid,
            None => {
                known.current = Some(sid);
                true
            }
        }
    }

    /// Drops the session `out` retired from the replay floors, the durable
    /// store and the cache. Best effort: a failure leaves it to the cache's
    /// TTL, and is no event of the device's.
    async fn retire(&mut self, out: &mut Outcome) {
        let Some(old) = out.retire.take() else { return };
        self.highest_rx.remove(&old);
        if let Err(e) = self.durable.forget(old) {
            out.events
                .push(cache_error("durable.forget", &CacheError::io("durable key store")(e)));
        }
        if let Err(e) = self.guarded(old, |cache| async move { cache.delete(old).await }).await {
            tracing::debug!("dropping replaced session {}: {e}", session_label(old));
        }
    }

    async fn cache_get(&mut self, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
        // Read as many times as a burst names the session; a failure only
        // by the first datagram that meets it.
        match self.prefetched.get(&id) {
            Some(Ok(rec)) => return Ok(rec.clone()),
            Some(Err(_)) => return self.prefetched.remove(&id).expect("just seen"),
            None => {}
        }
        self.guarded(id, |cache| async move { cache.get(id).await }).await
    }

    async fn cache_put(&mut self, rec: &SessionRecord) -> Result<(), CacheError> {
        let ttl = self.cfg.session_ttl;
        let rec = rec.clone();
        self.guarded(rec.session_id, |cache| async move { cache.put(&rec, ttl).await })
            .await
    }

    async fn guarded<T, F, Fut>(&mut self, id: SessionId, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(Arc<dyn SessionCache>) -> Fut,
        Fut: Future<Output = Result<T, CacheError>>,
    {
        let part = self.cache.part_of(id);
        if self.circuit_open(part, Instant::now()) {
            return Err(burst::circuit_open());
        }
        let res = match tokio::time::timeout(self.cfg.cache_timeout, op(self.cache.clone())).await {
            Ok(r) => r,
            Err(_) => Err(CacheError::Timeout(self.cfg.cache_timeout)),
        };
        if let Err(e) = &res {
            self.trip_if_down(part, e);
        }
        res
    }

    fn emit(&self, device: Option<&str>, kind: EventKind) {
        self.timeline.emit(device, Source::Cloud, kind);
    }
}

/// `device`'s entry, its id copied only the first time it is seen.
fn known<'a>(devices: &'a mut HashMap<String, Known>, device: &str) -> &'a mut Known {
    if !devices.contains_key(device) {
        devices.insert(device.to_owned(), Known::default());
    }
    devices.get_mut(device).expect("just inserted")
}

fn invalid(reason: &str, peer: SocketAddr) -> EventKind {
    EventKind::CloudInvalid {
        reason: reason.to_owned(),
        peer: peer.to_string(),
        count: 1,
        bytes: 0,
    }
}

fn unknown(session: &str, action: UnknownAction, r: &Record) -> EventKind {
    EventKind::CloudResumeUnknown {
        session: session.to_owned(),
        action,
        resume: r.header.is_resume(),
    }
}

fn cache_error(op: &str, e: &CacheError) -> EventKind {
    EventKind::CacheError {
        op: op.to_owned(),
        error: e.to_string(),
    }
}

/// A publish payload is `topic \0 data`.
fn publish_topic(payload: &[u8]) -> String {
    let topic = payload.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(topic).into_owned()
}

/// Refused datagrams of the current second, by (source, reason), waiting to
/// be journaled as one `cloud.invalid` each.
#[derive(Default)]
struct Refused {
    by_source: BTreeMap<(String, String), (Option<String>, u64, u64)>,
}

impl Refused {
    fn add(&mut self, device: Option<&str>, peer: &str, reason: String, bytes: u64) {
        let e = self
            .by_source
            .entry((peer.to_owned(), reason))
            .or_insert((device.map(str::to_owned), 0, 0));
        e.1 += 1;
        e.2 += bytes;
    }

    fn flush(&mut self, server: &Server) {
        for ((peer, reason), (device, count, bytes)) in std::mem::take(&mut self.by_source) {
            server.emit(
                device.as_deref(),
                EventKind::CloudInvalid {
                    reason,
                    peer,
                    count,
                    bytes,
                },
            );
        }
    }
}

/// Runs the cloud on `socket` until `shutdown` completes. Receive errors
/// (ICMP unreachable surfacing on UDP, a network going away) are logged and
/// the loop carries on: one peer must never stop the cloud for the others.
///
/// Refused datagrams are aggregated per source and reason each second, and
/// one not attributed to any device adds its bytes there instead of a
/// `cloud.rx` of its own: junk costs the journal a line per source per
/// second, not a line per datagram.
pub async fn serve(socket: Arc<dyn Datagram>, mut server: Server, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    // One byte more than the protocol allows, so oversized datagrams are
    // seen as such instead of silently truncated into something valid.
    let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM + 1];
    let mut refused = Refused::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut shutdown => {
                refused.flush(&server);
                return;
            }
            _ = tick.tick(), if !refused.by_source.is_empty() => {
                refused.flush(&server);
                continue;
            }
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received.map_err(receive_error) {
            Ok(x) => x,
            Err(Closed(true)) => {
                refused.flush(&server);
                return;
            }
            Err(Closed(false)) => continue,
        };
        server.answer(&*socket, &buf[..n], peer, &mut refused).await;
    }
}

/// Whether a receive error means the socket is gone for good.
pub(super) struct Closed(pub bool);

/// Receive errors (ICMP unreachable surfacing on UDP, a network going
/// away) are logged and skipped; only a socket that is gone ends a loop.
pub(super) fn receive_error(e: std::io::Error) -> Closed {
    tracing::debug!("cloud receive error: {e}");
    Closed(e.kind() == std::io::ErrorKind::NotConnected)
}

/// Datagrams a dispatcher hands a worker at once, in arrival order.
pub(super) type Batch = Vec<(Vec<u8>, SocketAddr)>;

/// One worker of a sharded cloud: the datagrams the dispatcher routed to it,
/// answered on the shared socket, until the dispatcher hangs up.
pub(super) async fn work(socket: Arc<dyn Datagram>, mut server: Server, mut inbox: tokio::sync::mpsc::Receiver<Batch>) {
    let mut refused = Refused::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            biased;
            _ = tick.tick(), if !refused.by_source.is_empty() => {
                refused.flush(&server);
                continue;
            }
            d = inbox.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        for (data, peer) in batch {
            server.answer(&*socket, &data, peer, &mut refused).await;
        }
    }
    refused.flush(&server);
}

/// One worker of a cloud whose workers each read sockets of one group (see
/// `shards`): what arrives for a session another worker owns goes to that
/// worker's inbox, and what others forward arrives in `inbox`. Replies go
/// out on the first socket (all share one address).
pub(super) async fn work_in_group(
    sockets: Vec<Arc<dyn Datagram>>,
    mut server: Server,
    me: usize,
    workers: Vec<tokio::sync::mpsc::Sender<Batch>>,
    mut inbox: tokio::sync::mpsc::Receiver<Batch>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM + 1];
    let mut refused = Refused::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reply_on = sockets[0].clone();
    let mut spare: Vec<Vec<u8>> = sockets.iter().skip(1).map(|_| vec![0u8; buf.len()]).collect();
    // Where the next burst starts reading, so no socket of this worker is
    // always read last.
    let mut next = 0usize;
    loop {
        let mut mine = Vec::new();
        let mut theirs: Vec<Batch> = vec![Vec::new(); workers.len()];
        let mut sort = |data: &[u8], peer| match super::shards::owner(data, workers.len()) {
            Some(owner) if owner != me => theirs[owner].push((data.to_vec(), peer)),
            _ => mine.push((data.to_vec(), peer)),
        };
        let mut closed = false;
        let mut taken = 0usize;
        // What is queued already forms a burst, without waiting.
        let mut empty = 0usize;
        while taken < burst::BURST && empty < sockets.len() {
            let socket = &sockets[next % sockets.len()];
            match socket.try_recv_from(&mut buf) {
                Ok((n, peer)) => {
                    sort(&buf[..n], peer);
                    taken += 1;
                    empty = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    empty += 1;
                    next += 1;
                }
                Err(e) => {
                    if let Closed(true) = receive_error(e) {
                        closed = true;
                        break;
                    }
                }
            }
        }
        if taken == 0 && !closed {
            // Nothing queued anywhere: write what the last burst left, then
            // wait for the first thing to happen.
            server.flush_stores().await;
            tokio::select! {
                biased;
                // Sent once, at stop (or the sender is gone).
                _ = stopped.changed() => break,
                _ = tick.tick(), if !refused.by_source.is_empty() => refused.flush(&server),
                Some(batch) = inbox.recv() => server.answer_burst(&*reply_on, &batch, &mut refused).await,
                r = first_datagram(&sockets, &mut buf, &mut spare) => match r.map_err(receive_error) {
                    Ok((n, peer)) => sort(&buf[..n], peer),
                    Err(Closed(true)) => closed = true,
                    Err(Closed(false)) => {}
                },
            }
        } else {
            // Under load the select above is not reached: keep forwarded
            // batches, the stop and the refusal tick moving.
            if *stopped.borrow() {
                break;
            }
            while let Ok(batch) = inbox.try_recv() {
                server.answer_burst(&*reply_on, &batch, &mut refused).await;
            }
            if !refused.by_source.is_empty()
                && tick
                    .poll_tick(&mut std::task::Context::from_waker(std::task::Waker::noop()))
                    .is_ready()
            {
                refused.flush(&server);
            }
        }
        for (owner, batch) in theirs.into_iter().enumerate() {
            // Never wait on another worker (two forwarding to each other
            // would wait forever): a full inbox loses the datagrams, as a
            // full socket buffer would.
            if !batch.is_empty() && workers[owner].try_send(batch).is_err() {
                tracing::debug!("cloud worker {owner} is full; datagrams forwarded to it are lost");
            }
        }
        if !mine.is_empty() {
            server.answer_burst(&*reply_on, &mine, &mut refused).await;
        }
        if closed {
            break;
        }
    }
    server.flush_stores().await;
    refused.flush(&server);
}

/// The first datagram any of `sockets` receives.
/// `spare` holds a buffer per socket but the first.
async fn first_datagram(
    sockets: &[Arc<dyn Datagram>],
    buf: &mut [u8],
    spare: &mut [Vec<u8>],
) -> std::io::Result<(usize, SocketAddr)> {
    let [first, rest @ ..] = sockets else {
        return Err(std::io::ErrorKind::NotConnected.into());
    };
    if rest.is_empty() {
        return first.recv_from(buf).await;
    }
    // Each waits on its own buffer; the first to finish wins and the others
    // are dropped unfinished (select_all polls no future after one is
    // ready, and an unfinished recv_from has taken nothing off its socket).
    let (r, i) = {
        let waits = std::iter::once(first.recv_from(&mut *buf))
            .chain(rest.iter().zip(spare.iter_mut()).map(|(s, b)| s.recv_from(b)));
        let (r, i, others) = futures::future::select_all(waits).await;
        drop(others);
        (r, i)
    };
    let (n, peer) = r?;
    if i > 0 {
        buf[..n].copy_from_slice(&spare[i - 1][..n]);
    }
    Ok((n, peer))
}

impl Server {
    /// Handles one datagram: its replies sent, its bytes and events
    /// journaled (refusals aggregated in `refused`).
    async fn answer(&mut self, socket: &dyn Datagram, data: &[u8], peer: SocketAddr, refused: &mut Refused) {
        let mut answered = self.reply(socket, data, peer, refused).await;
        self.store(&mut answered.out).await;
        self.finish(answered);
    }

    /// What follows the store: its events (a failed write), for the device.
    fn finish(&self, answered: Answered) {
        for ev in answered.out.events {
            self.emit(answered.device.as_deref(), ev);
        }
    }

    /// A datagram handled, its replies sent and its events journaled; what
    /// is left is to store the session.
    async fn reply(&mut self, socket: &dyn Datagram, data: &[u8], peer: SocketAddr, refused: &mut Refused) -> Answered {
        let n = data.len();
        let mut out = self.handle_deferred(data, peer).await;
        let replies = std::mem::take(&mut out.replies);
        let mut tx = 0u64;
        for reply in replies {
            let bytes = reply.encode();
            match socket.send_to(&bytes, peer).await {
                Ok(_) => {
                    tx += bytes.len() as u64;
                    out.events.push(EventKind::CloudTx {
                        bytes: bytes.len() as u64,
                        msg: reply.name().to_owned(),
                        peer: String::new(),
                    });
                }
                Err(e) => tracing::debug!("cloud send to {peer} failed: {e}"),
            }
        }
        let device_owned = out.device.take();
        let device = device_owned.as_deref();
        let peer_s = peer.to_string();
        let junk = device.is_none() && out.events.iter().any(|e| matches!(e, EventKind::CloudInvalid { .. }));
        let per_exchange = self.cfg.per_exchange;
        if !junk && !per_exchange {
            self.emit(
                device,
                EventKind::CloudRx {
                    bytes: n as u64,
                    msg: out.msg.to_owned(),
                    peer: peer_s.clone(),
                },
            );
        }
        // Journaled before the session is stored, so their times are when
        // the device got its answer (wake-cycle checks compare them with
        // the device's console).
        for ev in std::mem::take(&mut out.events) {
            match ev {
                EventKind::CloudInvalid { reason, .. } => {
                    refused.add(device, &peer_s, reason, if junk { n as u64 } else { 0 });
                }
                EventKind::CloudTx { .. } if per_exchange => {}
                EventKind::CloudTx { bytes, msg, .. } => self.emit(
                    device,
                    EventKind::CloudTx {
                        bytes,
                        msg,
                        peer: peer_s.clone(),
                    },
                ),
                ev => self.emit(device, ev),
            }
        }
        if !junk && per_exchange {
            self.emit(
                device,
                EventKind::CloudExchange {
                    msg: out.msg.to_owned(),
                    rx: n as u64,
                    tx,
                },
            );
        }
        Answered {
            device: device_owned,
            out,
        }
    }
}

/// A datagram answered but its session not yet stored (see [`Server::reply`]).
struct Answered {
    device: Option<String>,
    out: Outcome,
}

impl Server {
    /// Handshakes waiting for their finished flight (for tests and diagnostics).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Entries of the worker's own per-session and per-peer state: what
    /// must stay bounded under load (for tests).
    pub fn held(&self) -> usize {
        self.highest_rx.len() + self.pending.len() + self.pending_by_age.len() + self.peers.len() + self.devices.len()
    }
}
