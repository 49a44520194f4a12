//! The in-process session cache: the embedded default.
//!
//! It models a cache server's failure modes rather than just a map: killed
//! (every call fails at once, like a refused connection), paused (calls hang
//! until it resumes, like a SIGSTOPped server, so the cloud's own timeout is
//! what bounds them) and restored from named snapshots (which, like RDB files
//! on disk, survive a kill).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rig_proto::SessionId;
use tokio::time::Instant;

use super::{CacheBackend, CacheError, Evicted, OpenCtx, RestoreFrom, SessionCache, SessionRecord};

/// `cache: { kind: memory }`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryCfg {}

#[async_trait]
impl CacheBackend for MemoryCfg {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn virtual_clock(&self) -> bool {
        true
    }

    async fn open(&self, ctx: &OpenCtx<'_>) -> Result<std::sync::Arc<dyn SessionCache>, CacheError> {
        Ok(std::sync::Arc::new(MemoryCache::new(ctx.seed)))
    }
}

type Sessions = BTreeMap<SessionId, (SessionRecord, Instant)>;

struct State {
    up: bool,
    paused_until: Option<Instant>,
    // BTreeMap, not HashMap: eviction and snapshots must not depend on hash
    // order, or a seed would not reproduce a run.
    sessions: Sessions,
    snapshots: BTreeMap<String, Sessions>,
    rng: ChaCha8Rng,
}

/// Cheap-to-clone handle; all clones share one store.
#[derive(Clone)]
pub struct MemoryCache {
    // A std Mutex: every critical section is a few map operations and none
    // spans an await, so an async mutex would only add cost.
    shared: Arc<Mutex<State>>,
}

impl MemoryCache {
    pub fn new(seed: u64) -> MemoryCache {
        MemoryCache {
            shared: Arc::new(Mutex::new(State {
                up: true,
                paused_until: None,
                sessions: BTreeMap::new(),
                snapshots: BTreeMap::new(),
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0xcace),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits out a pause, then fails if the cache is down.
    async fn available(&self) -> Result<(), CacheError> {
        loop {
            let until = {
                let s = self.lock();
                if !s.up {
                    return Err(CacheError::Down("connection refused: cache killed".into()));
                }
                match s.paused_until {
                    Some(t) if t > Instant::now() => t,
                    _ => return Ok(()),
                }
            };
            tokio::time::sleep_until(until).await;
        }
    }

    /// Number of live sessions (for tests and diagnostics).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock().sessions.values().filter(|(_, exp)| *exp > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live(sessions: &Sessions) -> Sessions {
    let now = Instant::now();
    sessions
        .iter()
        .filter(|(_, (_, exp))| *exp > now)
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

#[async_trait]
impl SessionCache for MemoryCache {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
        self.available().await?;
        let mut s = self.lock();
        match s.sessions.get(&id) {
            Some((rec, exp)) if *exp > Instant::now() => Ok(Some(rec.clone())),
            Some(_) => {
                s.sessions.remove(&id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError> {
        self.available().await?;
        self.lock()
            .sessions
            .insert(rec.session_id, (rec.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn delete(&self, id: SessionId) -> Result<(), CacheError> {
        self.available().await?;
        self.lock().sessions.remove(&id);
        Ok(())
    }

    async fn kill(&self) -> Result<(), CacheError> {
        let mut s = self.lock();
        s.up = false;
        s.paused_until = None;
        s.sessions.clear();
        Ok(())
    }

    async fn start(&self) -> Result<(), CacheError> {
        let mut s = self.lock();
        s.up = true;
        s.paused_until = None;
        s.sessions.clear();
        Ok(())
    }

    async fn snapshot(&self, name: &str) -> Result<u64, CacheError> {
        self.available().await?;
        let mut s = self.lock();
        let snap = live(&s.sessions);
        let n = snap.len() as u64;
        s.snapshots.insert(name.to_owned(), snap);
        Ok(n)
    }

    async fn restore(&self, from: &RestoreFrom) -> Result<u64, CacheError> {
        let mut s = self.lock();
        let data = match from {
            RestoreFrom::Empty => BTreeMap::new(),
            RestoreFrom::Snapshot(name) => match s.snapshots.get(name) {
                Some(d) => d.clone(),
                None => {
                    let known = s.snapshots.keys().cloned().collect::<Vec<_>>();
                    let known = if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    };
                    return Err(CacheError::NoSnapshot(name.clone(), known));
                }
            },
        };
        s.up = true;
        s.paused_until = None;
        s.sessions = data;
        Ok(s.sessions.len() as u64)
    }

    async fn flush(&self) -> Result<u64, CacheError> {
        self.available().await?;
        let mut s = self.lock();
        let n = live(&s.sessions).len() as u64;
        s.sessions.clear();
        Ok(n)
    }

    async fn evict(&self, fraction: f64) -> Result<Vec<Evicted>, CacheError> {
        self.available().await?;
        let mut s = self.lock();
        let mut ids: Vec<SessionId> = live(&s.sessions).into_keys().collect();
        let n = ((ids.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        ids.shuffle(&mut s.rng);
        ids.truncate(n);
        ids.sort_unstable();
        Ok(ids
            .into_iter()
            .filter_map(|id| s.sessions.remove(&id))
            .map(|(rec, _)| Evicted::of(rec))
            .collect())
    }

    async fn pause(&self, d: Duration) -> Result<(), CacheError> {
        let mut s = self.lock();
        if !s.up {
            return Err(CacheError::Down("cannot pause a killed cache".into()));
        }
        s.paused_until = Some(Instant::now() + d);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rig_proto::{Psk, SessionKeys};

    const TTL: Duration = Duration::from_secs(3600);

    fn rec(id: u64) -> SessionRecord {
        let keys = SessionKeys::derive(&Psk([1; 32]), "d", &[1; 16], &[2; 16], id);
        SessionRecord::new(id, &format!("dev-{id}"), &keys)
    }

    #[tokio::test(start_paused = true)]
    async fn get_put_delete_and_ttl() {
        let c = MemoryCache::new(1);
        assert_eq!(c.get(1).await, Ok(None));
        c.put(&rec(1), Duration::from_secs(10)).await.unwrap();
        assert_eq!(c.get(1).await, Ok(Some(rec(1))));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.get(1).await, Ok(None), "expired by TTL");
        c.put(&rec(2), TTL).await.unwrap();
        c.delete(2).await.unwrap();
        assert_eq!(c.get(2).await, Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn kill_loses_everything_until_start() {
        let c = MemoryCache::new(1);
        c.put(&rec(1), TTL).await.unwrap();
        c.kill().await.unwrap();
        assert!(matches!(c.get(1).await, Err(CacheError::Down(_))));
        assert!(matches!(c.put(&rec(2), TTL).await, Err(CacheError::Down(_))));
        c.start().await.unwrap();
        assert_eq!(c.get(1).await, Ok(None), "a killed cache comes back empty");
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_restore_is_stale_and_survives_kill() {
        let c = MemoryCache::new(1);
        c.put(&rec(1), TTL).await.unwrap();
        assert_eq!(c.snapshot("before").await, Ok(1));
        c.put(&rec(2), TTL).await.unwrap();
        c.kill().await.unwrap();
        assert_eq!(c.restore(&RestoreFrom::Snapshot("before".into())).await, Ok(1));
        assert_eq!(c.get(1).await, Ok(Some(rec(1))));
        assert_eq!(c.get(2).await, Ok(None), "newer than the snapshot");
        assert_eq!(
            c.restore(&RestoreFrom::Snapshot("nope".into())).await,
            Err(CacheError::NoSnapshot("nope".into(), "before".into()))
        );
        assert_eq!(c.restore(&RestoreFrom::Empty).await, Ok(0));
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn flush_and_seeded_evict() {
        let fill = |c: MemoryCache| async move {
            for i in 1..=10 {
                c.put(&rec(i), TTL).await.unwrap();
            }
            c
        };
        let a = fill(MemoryCache::new(7)).await;
        let b = fill(MemoryCache::new(7)).await;
        let ea = a.evict(0.5).await.unwrap();
        let eb = b.evict(0.5).await.unwrap();
        assert_eq!(ea.len(), 5);
        assert_eq!(ea, eb, "same seed, same victims");
        assert_eq!(a.len(), 5);
        for e in &ea {
            let id = u64::from_str_radix(&e.session, 16).unwrap();
            assert_eq!(a.get(id).await, Ok(None));
        }
        assert_eq!(a.flush().await, Ok(5));
        assert!(a.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pause_stalls_calls_and_keeps_data() {
        let c = MemoryCache::new(1);
        c.put(&rec(1), TTL).await.unwrap();
        c.pause(Duration::from_secs(30)).await.unwrap();
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(1), c.get(1)).await;
        assert!(r.is_err(), "a paused cache does not answer");
        assert_eq!(c.get(1).await, Ok(Some(rec(1))));
        assert!(Instant::now() - t0 >= Duration::from_secs(30));
    }
}
