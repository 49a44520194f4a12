//! A burst: the datagrams a worker found queued at once, answered with one
//! cache round trip that fetches their sessions and stores the sessions
//! the burst before them left.
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
//! it, and a session the previous burst left is read as that burst left it
//! (its write is under way in the same round trip), not from the cache.
//! Before it waits for datagrams, a worker writes what it holds.

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

/// A burst answered whose sessions are yet to be written to the cache: they
/// go out with the next burst's fetch (see [`Server::answer_burst`]).
#[derive(Default)]
pub(super) struct Unstored {
    answered: Vec<Answered>,
    /// The last record of each session the burst left, and which of
    /// `answered` left it.
    last: HashMap<SessionId, (usize, SessionRecord)>,
}

/// What one round trip does on one part of the cache.
#[derive(Default)]
struct Part {
    writes: Vec<SessionRecord>,
    /// Which datagram of the previous burst left each of `writes`.
    writers: Vec<usize>,
    reads: Vec<SessionId>,
}

impl Server {
    /// Answers `burst` in order (see the module doc).
    ///
    /// The sessions the previous burst left are written while this burst's
    /// are fetched, concurrently: a worker under load makes one cache round
    /// trip per burst instead of two in turn. A session the previous burst
    /// left is read from that write, not from the cache. A worker with
    /// nothing queued writes what it holds at once
    /// ([`Server::flush_stores`]), so an idle worker holds no write back.
    pub(super) async fn answer_burst(
        &mut self,
        socket: &dyn Datagram,
        burst: &[(Vec<u8>, SocketAddr)],
        refused: &mut Refused,
    ) {
        if !self.cache.remote() {
            for (data, peer) in burst {
                self.answer(socket, data, *peer, refused).await;
            }
            return;
        }
        let ids: Vec<SessionId> = burst
            .iter()
            .filter_map(|(data, _)| rig_proto::frame::record_session_of(data))
            .collect();
        self.settle(&ids).await;
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
        self.unstored = self.stage(answered);
    }

    /// Writes the sessions the last burst left and journals what their
    /// writes met. Called by a worker before it waits for datagrams.
    pub(super) async fn flush_stores(&mut self) {
        if !self.unstored.answered.is_empty() {
            self.settle(&[]).await;
            // What `settle` kept for a next burst must not outlive the write:
            // the cache may lose it (a kill) before the next datagram.
            self.prefetched.clear();
        }
    }

    /// The previous burst's sessions stored and `ids` fetched into
    /// `prefetched`, one round trip per part of the cache, the parts
    /// concurrently; then the previous burst's replaced sessions dropped
    /// and its events journaled.
    async fn settle(&mut self, ids: &[SessionId]) {
        let mut unstored = std::mem::take(&mut self.unstored);
        for (_, rec) in unstored.last.values() {
            self.prefetched.insert(rec.session_id, Ok(Some(rec.clone())));
        }
        let mut parts: BTreeMap<usize, Part> = BTreeMap::new();
        for (_, (i, rec)) in std::mem::take(&mut unstored.last) {
            let part = parts.entry(self.cache.part_of(rec.session_id)).or_default();
            part.writers.push(i);
            part.writes.push(rec);
        }
        for &id in ids {
            let part = parts.entry(self.cache.part_of(id)).or_default();
            if !self.prefetched.contains_key(&id) && !part.reads.contains(&id) {
                part.reads.push(id);
            }
        }
        let now = Instant::now();
        let (ttl, timeout) = (self.cfg.session_ttl, self.cfg.cache_timeout);
        let mut calls = Vec::with_capacity(parts.len());
        for (n, part) in parts {
            if self.circuit_open(n, now) {
                // Its writes fail fast, and so do its datagrams on their
                // own, those of a session not written included.
                for i in part.writers {
                    unstored.answered[i]
                        .out
                        .events
                        .push(cache_error("put", &circuit_open()));
                }
                for rec in &part.writes {
                    self.prefetched.remove(&rec.session_id);
                }
                continue;
            }
            if part.writes.is_empty() && part.reads.is_empty() {
                continue;
            }
            let cache = self.cache.clone();
            calls.push(async move {
                let r = tokio::time::timeout(timeout, cache.put_and_get_many(&part.writes, ttl, &part.reads)).await;
                let (put, got) =
                    r.unwrap_or_else(|_| (Err(CacheError::Timeout(timeout)), Err(CacheError::Timeout(timeout))));
                (n, part, put, got)
            });
        }
        for (n, part, put, got) in futures::future::join_all(calls).await {
            if let Err(e) = put {
                self.trip_if_down(n, &e);
                for &i in &part.writers {
                    unstored.answered[i].out.events.push(cache_error("put", &e));
                }
                // Not written: this burst reads those sessions from the
                // cache, as it would have after a failed write in turn.
                for rec in &part.writes {
                    self.prefetched.remove(&rec.session_id);
                }
            }
            match got {
                Ok(recs) => {
                    for (id, rec) in part.reads.into_iter().zip(recs) {
                        self.prefetched.insert(id, Ok(rec));
                    }
                }
                // The first datagram meets the failure (as it would have
                // alone), the others the open circuit.
                Err(e) => {
                    self.trip_if_down(n, &e);
                    if let Some(&first) = part.reads.first() {
                        self.prefetched.insert(first, Err(e));
                    }
                }
            }
        }
        // Rare (once per handshake a device goes on to use), so not batched;
        // after the put, so a cache that is down fails the put as before.
        for a in unstored.answered.iter_mut() {
            self.retire(&mut a.out).await;
        }
        for a in unstored.answered {
            self.finish(a);
        }
    }

    /// The sessions `answered` left, written to the durable store now, and
    /// the last record of each kept for the cache.
    fn stage(&mut self, mut answered: Vec<Answered>) -> Unstored {
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
        Unstored { answered, last }
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
        /// Every session a batched read asked for.
        fetched: std::sync::Mutex<Vec<SessionId>>,
        down: AtomicBool,
        /// Batched writes fail too.
        puts_down: AtomicBool,
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
            self.fetched.lock().unwrap().extend_from_slice(ids);
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
            if self.puts_down.load(SeqCst) {
                return Err(CacheError::Down("connection refused".into()));
            }
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
            fetched: std::sync::Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            puts_down: AtomicBool::new(false),
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
        let puts = backend.put_manys.load(SeqCst);
        r.server.flush_stores().await;
        assert_eq!(backend.put_manys.load(SeqCst) - puts, 1, "one store for the burst");
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
    async fn a_burst_is_stored_with_the_next_bursts_fetch_and_its_sessions_are_read_from_that_write() {
        let (cache, backend) = remote();
        let mut r = rig_on(Mitigation::Reject, cache.clone(), backend.clone());
        let (mut a, _) = handshake(&mut r, A, peer(1)).await;
        let (mut b, _) = handshake(&mut r, B, peer(2)).await;
        r.server.flush_stores().await;
        let net = MemNet::new(Duration::ZERO);
        let socket = net.bind("127.0.0.9:5684".parse().unwrap()).unwrap();
        let mut refused = Refused::default();

        let a1 = a.record(FLAG_RESUME, InnerKind::Ping, 1);
        r.server
            .answer_burst(&socket, &[(a1.clone(), peer(1))], &mut refused)
            .await;
        let (puts, gets) = (backend.put_manys.load(SeqCst), backend.get_manys.load(SeqCst));
        let cached_rx = cache.get(a.id).await.unwrap().unwrap().rx_counter;
        assert!(
            cached_rx < a.tx,
            "not yet written: the worker holds it for the next round trip"
        );
        backend.fetched.lock().unwrap().clear();

        // The next burst: a's replay and its next record, and b.
        let burst = vec![
            (a1, peer(1)),
            (a.record(0, InnerKind::Publish, 2), peer(1)),
            (b.record(FLAG_RESUME, InnerKind::Ping, 1), peer(2)),
        ];
        r.server.answer_burst(&socket, &burst, &mut refused).await;
        refused.flush(&r.server);
        assert_eq!(backend.get_manys.load(SeqCst) - gets, 1, "one fetch");
        assert_eq!(
            backend.put_manys.load(SeqCst) - puts,
            1,
            "the first burst's store went with it"
        );
        assert_eq!(
            *backend.fetched.lock().unwrap(),
            vec![b.id],
            "a is read from the write under way, not from the cache"
        );
        assert_eq!(
            cache.get(a.id).await.unwrap().unwrap().rx_counter,
            a.tx - 1,
            "the first burst's a"
        );
        assert_eq!(count(&r, A, "cloud.publish"), 1);
        assert_eq!(count(&r, B, "cloud.resumed"), 1);
        let invalid: Vec<String> = r
            .timeline
            .snapshot()
            .iter()
            .filter(|e| e.kind.name() == "cloud.invalid")
            .map(|e| format!("{:?}", e.kind))
            .collect();
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        assert!(
            invalid[0].contains("replayed record (counter not above last accepted)"),
            "{invalid:?}"
        );

        // Nothing queued: the worker writes what it holds.
        r.server.flush_stores().await;
        assert_eq!(backend.put_manys.load(SeqCst) - puts, 2);
        assert_eq!(cache.get(a.id).await.unwrap().unwrap().rx_counter, a.tx);
        r.server.flush_stores().await;
        assert_eq!(backend.put_manys.load(SeqCst) - puts, 2, "nothing left to write");

        // The cache loses everything: the session written is not read from
        // what the worker once held for the write.
        cache.flush().await.unwrap();
        let a3 = a.record(FLAG_RESUME, InnerKind::Ping, 3);
        r.server.answer_burst(&socket, &[(a3, peer(1))], &mut refused).await;
        r.server.flush_stores().await;
        assert_eq!(
            count(&r, A, "cloud.resume_unknown"),
            1,
            "the cache's word, not a stale copy"
        );
        assert_eq!(count(&r, A, "cloud.resumed"), 1, "only the first burst's");
    }

    #[tokio::test]
    async fn a_session_whose_write_failed_is_not_read_from_the_failed_write() {
        let (cache, backend) = remote();
        let mut r = rig_on(Mitigation::Reject, cache, backend.clone());
        let (mut a, _) = handshake(&mut r, A, peer(1)).await;
        let net = MemNet::new(Duration::ZERO);
        let socket = net.bind("127.0.0.9:5684".parse().unwrap()).unwrap();
        let mut refused = Refused::default();
        let a1 = a.record(FLAG_RESUME, InnerKind::Ping, 1);
        r.server.answer_burst(&socket, &[(a1, peer(1))], &mut refused).await;
        // The cache dies before the write the worker holds goes out.
        backend.down.store(true, SeqCst);
        backend.puts_down.store(true, SeqCst);
        let a2 = a.record(0, InnerKind::Publish, 2);
        r.server.answer_burst(&socket, &[(a2, peer(1))], &mut refused).await;
        r.server.flush_stores().await;
        let errors: Vec<String> = r
            .timeline
            .snapshot()
            .iter()
            .filter_map(|e| match &e.kind {
                crate::timeline::EventKind::CacheError { op, .. } => Some(op.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(errors, ["put", "get"], "the write failed, then the read");
        assert_eq!(
            count(&r, A, "cloud.publish"),
            0,
            "not answered from the write that failed"
        );
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
