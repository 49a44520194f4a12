//! A burst: the datagrams a worker found queued at once, answered with one
//! cache round trip to fetch their sessions and one to store them.
//!
//! One datagram at a time, a resume over Redis is a GET and a SET in turn,
//! and the cloud spends its time on the way to the cache rather than on the
//! protocol (measured with `rig bench --cache redis`, 32 clients: per
//! resume 0.8 `writev` to Redis and 1.7 futex wakes between threads; 26 %
//! of the echo floor, 34 % in bursts). Fetched together, the datagrams of a
//! burst share those.
//!
//! Order and replay protection are those of one datagram at a time: the
//! datagrams are still handled in the order they arrived, a session that
//! appears twice in a burst is read the second time as the first one left
//! it, and all are stored before the worker takes its next burst.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use rig_proto::SessionId;
use tokio::time::Instant;

use super::{Answered, Refused, Server, cache_error};
use crate::cache::{CacheError, SessionRecord};
use crate::cloud::transport::Datagram;

/// Most datagrams a worker takes off its socket before answering them: a
/// bound on how long the first of them waits for the last.
pub(super) const BURST: usize = 32;

impl Server {
    /// Answers `burst` in order (see the module doc).
    pub(super) async fn answer_burst(
        &mut self,
        socket: &dyn Datagram,
        burst: &[(Vec<u8>, SocketAddr)],
        refused: &mut Refused,
    ) {
        if burst.len() == 1 || !self.cache.remote() {
            for (data, peer) in burst {
                self.answer(socket, data, *peer, refused).await;
            }
            return;
        }
        let ids: Vec<SessionId> = burst
            .iter()
            .filter_map(|(data, _)| rig_proto::frame::record_session_of(data))
            .collect();
        self.prefetch(&ids).await;
        let mut answered = Vec::with_capacity(burst.len());
        for (data, peer) in burst {
            let a = self.reply(socket, data, *peer, refused).await;
            if let Some(rec) = &a.out.store {
                // The next datagram of this session in the burst reads it
                // as this one left it, not as the cache had it.
                self.prefetched.insert(rec.session_id, Ok(Some(rec.clone())));
            }
            answered.push(a);
        }
        self.prefetched.clear();
        self.store_burst(&mut answered).await;
        for a in answered {
            self.finish(a);
        }
    }

    /// Fetches the sessions of `ids` into `prefetched`, one call per part
    /// of the cache whose circuit is closed, the parts concurrently. A part
    /// that fails leaves its error to its first datagram (as the first of
    /// them would have met it alone) and its circuit open for the rest.
    async fn prefetch(&mut self, ids: &[SessionId]) {
        let parts = self.closed_parts(ids.iter().copied());
        let timeout = self.cfg.cache_timeout;
        let fetched = futures::future::join_all(parts.into_iter().map(|(part, ids)| {
            let cache = self.cache.clone();
            async move {
                let r = match tokio::time::timeout(timeout, cache.get_many(&ids)).await {
                    Ok(r) => r,
                    Err(_) => Err(CacheError::Timeout(timeout)),
                };
                (part, ids, r)
            }
        }))
        .await;
        for (part, ids, r) in fetched {
            match r {
                Ok(recs) => {
                    for (id, rec) in ids.into_iter().zip(recs) {
                        self.prefetched.insert(id, Ok(rec));
                    }
                }
                Err(e) => {
                    self.trip_if_down(part, &e);
                    self.prefetched.insert(ids[0], Err(e));
                }
            }
        }
    }

    /// Writes the sessions the burst left to store: the durable store, then
    /// the cache, one call per part, the last record of each session.
    async fn store_burst(&mut self, answered: &mut [Answered]) {
        let mut last: HashMap<SessionId, (usize, SessionRecord)> = HashMap::new();
        for (i, a) in answered.iter_mut().enumerate() {
            if let Some(rec) = a.out.store.take() {
                if let Err(e) = self.durable.put(&rec) {
                    a.out
                        .events
                        .push(cache_error("durable.put", &CacheError::io("durable key store")(e)));
                }
                last.insert(rec.session_id, (i, rec));
            }
        }
        if !last.is_empty() {
            self.put_burst(answered, last).await;
        }
        // Rare (once per handshake a device goes on to use), so not batched.
        for a in answered.iter_mut() {
            self.retire(&mut a.out).await;
        }
    }

    async fn put_burst(&mut self, answered: &mut [Answered], last: HashMap<SessionId, (usize, SessionRecord)>) {
        let mut by_part: BTreeMap<usize, Vec<(usize, SessionRecord)>> = BTreeMap::new();
        for (_, (i, rec)) in last {
            by_part
                .entry(self.cache.part_of(rec.session_id))
                .or_default()
                .push((i, rec));
        }
        let now = Instant::now();
        let (ttl, timeout) = (self.cfg.session_ttl, self.cfg.cache_timeout);
        let mut calls = Vec::new();
        for (part, recs) in by_part {
            if self.circuit_open(part, now) {
                for (i, _) in recs {
                    answered[i].out.events.push(cache_error("put", &circuit_open()));
                }
                continue;
            }
            let cache = self.cache.clone();
            calls.push(async move {
                let (who, recs): (Vec<usize>, Vec<SessionRecord>) = recs.into_iter().unzip();
                let r = match tokio::time::timeout(timeout, cache.put_many(&recs, ttl)).await {
                    Ok(r) => r,
                    Err(_) => Err(CacheError::Timeout(timeout)),
                };
                (part, who, r)
            });
        }
        for (part, who, r) in futures::future::join_all(calls).await {
            let Err(e) = r else { continue };
            self.trip_if_down(part, &e);
            for i in who {
                answered[i].out.events.push(cache_error("put", &e));
            }
        }
    }

    /// `ids` grouped by the part of the cache that holds them, each once,
    /// leaving out the parts whose circuit is open (their datagrams fail
    /// fast on their own).
    fn closed_parts(&mut self, ids: impl Iterator<Item = SessionId>) -> BTreeMap<usize, Vec<SessionId>> {
        let now = Instant::now();
        let mut parts: BTreeMap<usize, Vec<SessionId>> = BTreeMap::new();
        for id in ids {
            let part = parts.entry(self.cache.part_of(id)).or_default();
            if !part.contains(&id) {
                part.push(id);
            }
        }
        parts.retain(|&part, _| !self.circuit_open(part, now));
        parts
    }

    /// Whether `part`'s circuit is still open at `now` (an expired one is
    /// closed again).
    pub(super) fn circuit_open(&mut self, part: usize, now: Instant) -> bool {
        match self.cache_down_until.get(&part) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.cache_down_until.remove(&part);
                false
            }
            None => false,
        }
    }

    pub(super) fn trip_if_down(&mut self, part: usize, e: &CacheError) {
        if matches!(e, CacheError::Down(_) | CacheError::Timeout(_)) {
            self.cache_down_until
                .insert(part, Instant::now() + self.cfg.cache_retry);
        }
    }
}

pub(super) fn circuit_open() -> CacheError {
    CacheError::Down("circuit open after a recent failure".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    use async_trait::async_trait;
    use rig_proto::frame::FLAG_RESUME;
    use rig_proto::{InnerKind, SessionId};

    use super::super::Refused;
    use crate::cache::memory::MemoryCache;
    use crate::cache::{CacheError, Evicted, RestoreFrom, SessionCache, SessionRecord};
    use crate::cloud::Mitigation;
    use crate::cloud::tests::{A, B, handshake, peer, rig_on};
    use crate::cloud::transport::MemNet;

    /// The memory cache posing as a networked one, counting its calls and
    /// able to fail its batched reads.
    struct Remote {
        inner: MemoryCache,
        gets: AtomicUsize,
        get_manys: AtomicUsize,
        put_manys: AtomicUsize,
        down: AtomicBool,
    }

    #[async_trait]
    impl SessionCache for Remote {
        fn backend(&self) -> &'static str {
            "remote"
        }
        fn remote(&self) -> bool {
            true
        }
        async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
            self.gets.fetch_add(1, SeqCst);
            self.inner.get(id).await
        }
        async fn get_many(&self, ids: &[SessionId]) -> Result<Vec<Option<SessionRecord>>, CacheError> {
            self.get_manys.fetch_add(1, SeqCst);
            if self.down.load(SeqCst) {
                return Err(CacheError::Down("connection refused".into()));
            }
            self.inner.get_many(ids).await
        }
        async fn put(&self, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError> {
            self.inner.put(rec, ttl).await
        }
        async fn put_many(&self, recs: &[SessionRecord], ttl: Duration) -> Result<(), CacheError> {
            self.put_manys.fetch_add(1, SeqCst);
            self.inner.put_many(recs, ttl).await
        }
        async fn delete(&self, id: SessionId) -> Result<(), CacheError> {
            self.inner.delete(id).await
        }
        async fn kill(&self) -> Result<(), CacheError> {
            self.inner.kill().await
        }
        async fn start(&self) -> Result<(), CacheError> {
            self.inner.start().await
        }
        async fn snapshot(&self, name: &str) -> Result<u64, CacheError> {
            self.inner.snapshot(name).await
        }
        async fn restore(&self, from: &RestoreFrom) -> Result<u64, CacheError> {
            self.inner.restore(from).await
        }
        async fn flush(&self) -> Result<u64, CacheError> {
            self.inner.flush().await
        }
        async fn evict(&self, fraction: f64) -> Result<Vec<Evicted>, CacheError> {
            self.inner.evict(fraction).await
        }
        async fn pause(&self, d: Duration) -> Result<(), CacheError> {
            self.inner.pause(d).await
        }
    }

    fn remote() -> (MemoryCache, Arc<Remote>) {
        let inner = MemoryCache::new(1);
        let remote = Arc::new(Remote {
            inner: inner.clone(),
            gets: AtomicUsize::new(0),
            get_manys: AtomicUsize::new(0),
            put_manys: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        (inner, remote)
    }

    fn count(r: &crate::cloud::tests::Rig, device: &str, name: &str) -> usize {
        r.timeline
            .snapshot()
            .iter()
            .filter(|e| e.device.as_deref() == Some(device) && e.kind.name() == name)
            .count()
    }

    #[tokio::test]
    async fn a_burst_fetches_its_sessions_at_once_and_reads_a_repeated_session_as_the_burst_left_it() {
        let (cache, backend) = remote();
        let mut r = rig_on(Mitigation::Reject, cache.clone(), backend.clone());
        let (mut a, _) = handshake(&mut r, A, peer(1)).await;
        let (mut b, _) = handshake(&mut r, B, peer(2)).await;
        let before = (backend.gets.load(SeqCst), backend.get_manys.load(SeqCst));

        let a1 = a.record(FLAG_RESUME, InnerKind::Ping, 1);
        let b1 = b.record(FLAG_RESUME, InnerKind::Ping, 1);
        let a2 = a.record(0, InnerKind::Publish, 2);
        let burst = vec![
            (a1.clone(), peer(1)),
            (b1, peer(2)),
            // A replay inside the burst: the session as the first record
            // left it refuses it, though the cache still held the old one.
            (a1, peer(1)),
            (a2, peer(1)),
        ];
        let net = MemNet::new(Duration::ZERO);
        let socket = net.bind("127.0.0.9:5684".parse().unwrap()).unwrap();
        let mut refused = Refused::default();
        r.server.answer_burst(&socket, &burst, &mut refused).await;
        refused.flush(&r.server);

        assert_eq!(backend.get_manys.load(SeqCst) - before.1, 1, "one fetch for the burst");
        assert_eq!(backend.gets.load(SeqCst) - before.0, 0, "no datagram fetched alone");
        assert_eq!(backend.put_manys.load(SeqCst), 1, "one store for the burst");
        assert_eq!(count(&r, A, "cloud.resumed"), 1);
        assert_eq!(count(&r, A, "cloud.publish"), 1, "the record after the replay is taken");
        assert_eq!(count(&r, B, "cloud.resumed"), 1);
        let replays: Vec<_> = r
            .timeline
            .snapshot()
            .into_iter()
            .filter(|e| e.kind.name() == "cloud.invalid")
            .collect();
        assert_eq!(replays.len(), 1, "{replays:?}");
        assert!(
            format!("{:?}", replays[0].kind).contains("replayed record"),
            "{replays:?}"
        );
        // Stored as the last record of the burst left it.
        let stored = cache.get(a.id).await.unwrap().unwrap();
        assert_eq!(stored.rx_counter, a.tx);
    }

    #[tokio::test]
    async fn a_burst_on_a_dead_cache_waits_for_it_once_and_the_rest_fail_fast() {
        let (cache, backend) = remote();
        let mut r = rig_on(Mitigation::Reject, cache, backend.clone());
        let (mut a, _) = handshake(&mut r, A, peer(1)).await;
        let (mut b, _) = handshake(&mut r, B, peer(2)).await;
        backend.down.store(true, SeqCst);
        let gets = backend.gets.load(SeqCst);
        let burst = vec![
            (a.record(FLAG_RESUME, InnerKind::Ping, 1), peer(1)),
            (b.record(FLAG_RESUME, InnerKind::Ping, 1), peer(2)),
            (a.record(0, InnerKind::Publish, 2), peer(1)),
        ];
        let net = MemNet::new(Duration::ZERO);
        let socket = net.bind("127.0.0.9:5684".parse().unwrap()).unwrap();
        let mut refused = Refused::default();
        r.server.answer_burst(&socket, &burst, &mut refused).await;

        let errors: Vec<String> = r
            .timeline
            .snapshot()
            .iter()
            .filter_map(|e| match &e.kind {
                crate::timeline::EventKind::CacheError { op, error } if op == "get" => Some(error.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(errors.len(), 3, "every datagram reports the failure: {errors:?}");
        assert!(errors[0].contains("connection refused"), "{errors:?}");
        assert!(errors[1..].iter().all(|e| e.contains("circuit open")), "{errors:?}");
        assert_eq!(backend.get_manys.load(SeqCst), 1);
        assert_eq!(backend.gets.load(SeqCst), gets, "the open circuit spares the cache");
        assert_eq!(count(&r, A, "cloud.resumed") + count(&r, B, "cloud.resumed"), 0);
    }
}
