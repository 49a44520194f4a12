//! The Redis session cache: a real `redis-server` child process that the rig
//! starts on a free loopback port, SIGKILLs, restarts empty or from a named
//! RDB snapshot, and SIGSTOPs — the failure the incident was about, for real.
//!
//! - [`server`]: the child process itself (private folder, ACL users with
//!   OS-random passwords, death with the rig, deaths it did not cause).
//! - The cloud talks to it as `rig-cloud` (session keys only) through the
//!   `redis` crate's connection manager, which reconnects by itself when the
//!   server is back; the rig's own operations (snapshot, flush, evict) go as
//!   `rig-admin` on a second connection. Every call is bounded by a response
//!   timeout, so a dead or stopped server fails fast.
//! - Sessions are stored as JSON under `rig:session:<id>` with a TTL.
//! - Redis needs the real clock: on a paused virtual clock every network wait
//!   would look like a timeout.

pub mod server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rig_proto::SessionId;

use super::{CacheBackend, CacheError, Evicted, OpenCtx, PutAndGet, RestoreFrom, SessionCache, SessionRecord};
pub use server::RedisServer;

/// `cache: { kind: redis }`: one redis-server the rig starts.
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisCfg {
    /// The key pattern an external cloud keeps its sessions under
    /// (`keys: "acme:session:*"`): its user may run any command that is not
    /// `@dangerous` on those keys, and `evict` picks from them.
    #[serde(default)]
    pub keys: Option<String>,
}

impl RedisCfg {
    /// What is wrong with `keys:` (it goes into an ACL line).
    pub fn problems(&self) -> Vec<String> {
        match &self.keys {
            Some(k) if k.is_empty() || k.len() > 200 || !k.chars().all(|c| c.is_ascii_graphic()) => vec![format!(
                "`keys: {k:?}` must be 1 to 200 visible ASCII characters without spaces (a Redis key pattern such as `acme:session:*`)"
            )],
            _ => Vec::new(),
        }
    }
}

#[async_trait]
impl CacheBackend for RedisCfg {
    fn name(&self) -> &'static str {
        "redis"
    }

    // A real redis-server cannot follow a virtual clock.
    fn virtual_clock(&self) -> bool {
        false
    }

    async fn open(&self, ctx: &OpenCtx<'_>) -> Result<Arc<dyn SessionCache>, CacheError> {
        Ok(Arc::new(
            RedisCache::start_with(&ctx.dir.join("redis"), ctx.seed, self.keys.as_deref()).await?,
        ))
    }
}

const KEY_PREFIX: &str = "rig:session:";

pub(crate) fn key(id: SessionId) -> String {
    format!("{KEY_PREFIX}{id:016x}")
}

struct Inner {
    server: RedisServer,
    /// The cloud's data path, as `rig-cloud`.
    conn: ConnectionManager,
    /// The rig's administrative operations, as `rig-admin`.
    admin: ConnectionManager,
    rng: Mutex<ChaCha8Rng>,
    /// The keys `evict` picks from.
    pattern: String,
}

/// Cheap-to-clone handle on the rig's own redis-server.
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

/// The data path fails fast: a dead or stopped server must look like one
/// within a resume, not after the device gave up.
pub(crate) const DATA_TIMEOUT: Duration = Duration::from_millis(200);
/// The rig's own operations (SAVE, SCAN, restores) are rare and heavier, and
/// a loaded CI box can take longer than the data path's bound to write a
/// snapshot; a stopped server still fails them, just later.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

fn backend_err(e: redis::RedisError) -> CacheError {
    classify(e, DATA_TIMEOUT)
}

fn admin_err(e: redis::RedisError) -> CacheError {
    classify(e, ADMIN_TIMEOUT)
}

/// A Redis error as the cache's error: timeouts, and a server (or a
/// cluster's slots) that is not there, are what the cloud's breaker and the
/// checks tell apart from real errors.
pub(crate) fn classify(e: redis::RedisError, timeout: Duration) -> CacheError {
    if e.is_timeout() {
        CacheError::Timeout(timeout)
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_cluster_error()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
    {
        CacheError::Down(e.to_string())
    } else {
        CacheError::Redis(e)
    }
}

/// A lazily connecting manager with short timeouts.
pub(crate) fn manager(url: &str, timeout: Duration) -> Result<ConnectionManager, CacheError> {
    let client = redis::Client::open(url)?;
    let cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100));
    ConnectionManager::new_lazy_with_config(client, cfg).map_err(backend_err)
}

/// Every session key on the server `c` is connected to, sorted.
pub(crate) async fn scan_sessions(
    c: &mut impl redis::aio::ConnectionLike,
    timeout: Duration,
) -> Result<Vec<String>, CacheError> {
    scan_keys(c, &format!("{KEY_PREFIX}*"), timeout).await
}

/// Every key matching `pattern` on the server `c` is connected to, sorted.
pub(crate) async fn scan_keys(
    c: &mut impl redis::aio::ConnectionLike,
    pattern: &str,
    timeout: Duration,
) -> Result<Vec<String>, CacheError> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .map_err(|e| classify(e, timeout))?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    Ok(keys)
}

/// The cloud's data path on one server: what the rig's own server and a
/// server someone else runs ([`super::remote_redis`]) share.
pub(crate) mod data {
    use super::*;

    pub async fn get(c: &mut ConnectionManager, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
        let v: Option<String> = c.get(key(id)).await.map_err(backend_err)?;
        match v {
            None => Ok(None),
            Some(json) => Ok(Some(serde_json::from_str(&json)?)),
        }
    }

    pub async fn put(c: &mut ConnectionManager, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError> {
        let json = serde_json::to_string(rec)?;
        let ms = ttl.as_millis().max(1) as u64;
        let _: () = c.pset_ex(key(rec.session_id), json, ms).await.map_err(backend_err)?;
        Ok(())
    }

    pub async fn get_many(
        c: &mut ConnectionManager,
        ids: &[SessionId],
    ) -> Result<Vec<Option<SessionRecord>>, CacheError> {
        put_and_get_many(c, &[], Duration::ZERO, ids).await.1
    }

    fn parse(values: Vec<Option<String>>) -> Result<Vec<Option<SessionRecord>>, CacheError> {
        values
            .into_iter()
            .map(|v| {
                v.map(|json| serde_json::from_str(&json))
                    .transpose()
                    .map_err(CacheError::from)
            })
            .collect()
    }

    pub async fn put_many(c: &mut ConnectionManager, recs: &[SessionRecord], ttl: Duration) -> Result<(), CacheError> {
        put_and_get_many(c, recs, ttl, &[]).await.0
    }

    /// `recs` stored, then `ids` fetched, in one pipeline.
    pub async fn put_and_get_many(
        c: &mut ConnectionManager,
        recs: &[SessionRecord],
        ttl: Duration,
        ids: &[SessionId],
    ) -> PutAndGet {
        let ms = ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        for rec in recs {
            match serde_json::to_string(rec) {
                Ok(json) => pipe.pset_ex(key(rec.session_id), json, ms).ignore(),
                Err(e) => return super::super::unencodable(e),
            };
        }
        for &id in ids {
            pipe.get(key(id));
        }
        match pipe.query_async::<Vec<Option<String>>>(c).await {
            Ok(values) => (Ok(()), parse(values)),
            Err(e) => {
                let e = backend_err(e);
                (Err(e.again()), Err(e))
            }
        }
    }

    pub async fn delete(c: &mut ConnectionManager, id: SessionId) -> Result<(), CacheError> {
        let _: () = c.del(key(id)).await.map_err(backend_err)?;
        Ok(())
    }
}

impl RedisCache {
    /// Starts `redis-server` with its data in `dir`. Must be called on the
    /// thread that will outlive the child (see [`server`]).
    pub async fn start_in(dir: &Path, seed: u64) -> Result<RedisCache, CacheError> {
        RedisCache::start_with(dir, seed, None).await
    }

    /// [`RedisCache::start_in`], with an external cloud's own key pattern.
    pub async fn start_with(dir: &Path, seed: u64, keys: Option<&str>) -> Result<RedisCache, CacheError> {
        let opts = server::ServerOpts {
            // Checked when the bench was loaded: no spaces, so nothing but
            // a key pattern reaches the ACL line.
            cloud_acl: keys
                .map(|k| format!(" ~{k} +@all -@dangerous -@admin -@scripting -@pubsub"))
                .unwrap_or_default(),
            ..Default::default()
        };
        let server = RedisServer::prepare_opts(dir, opts)?;
        let cache = RedisCache {
            inner: Arc::new(Inner {
                conn: manager(&server.cloud_url(), DATA_TIMEOUT)?,
                admin: manager(&server.admin_url(), ADMIN_TIMEOUT)?,
                server,
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x4ed1)),
                pattern: keys.map_or_else(|| format!("{KEY_PREFIX}*"), str::to_owned),
            }),
        };
        cache.spawn(false).await?;
        Ok(cache)
    }

    fn dump(&self) -> PathBuf {
        self.inner.server.dump()
    }

    fn snapshot_path(&self, name: &str) -> PathBuf {
        // Names come from plans; keep them inside the snapshots folder.
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.inner.server.dir.join("snapshots").join(format!("{safe}.rdb"))
    }

    /// Names of the snapshots taken so far, for error messages.
    fn snapshot_names(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.inner.server.dir.join("snapshots"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rdb").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The server's pid while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.inner.server.pid()
    }

    pub fn port(&self) -> u16 {
        self.inner.server.port
    }

    /// The data-path URL (with its password) for a cloud outside the rig.
    pub fn cloud_url(&self) -> String {
        self.inner.server.cloud_url()
    }

    /// Starts the server (loading `dump.rdb` if `keep_dump`) and waits until
    /// it answers.
    async fn spawn(&self, keep_dump: bool) -> Result<(), CacheError> {
        self.inner.server.spawn(keep_dump)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = self.inner.admin.clone();
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.inner.server.exited() {
                return Err(CacheError::Backend(format!(
                    "redis-server exited at start ({status}); see {}",
                    self.inner.server.log_path().display()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(CacheError::Backend(
                    "redis-server did not answer within 10 s of starting".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill_now(&self) {
        self.inner.server.kill_now();
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), CacheError> {
        self.inner.server.signal(sig)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn admin(&self) -> ConnectionManager {
        self.inner.admin.clone()
    }

    async fn dbsize(&self) -> Result<u64, CacheError> {
        redis::cmd("DBSIZE")
            .query_async(&mut self.admin())
            .await
            .map_err(admin_err)
    }

    async fn session_keys(&self) -> Result<Vec<String>, CacheError> {
        scan_keys(&mut self.admin(), &self.inner.pattern, ADMIN_TIMEOUT).await
    }
}

#[async_trait]
impl SessionCache for RedisCache {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn remote(&self) -> bool {
        true
    }

    fn pid(&self) -> Option<u32> {
        self.server_pid()
    }

    fn cloud_url(&self) -> Option<String> {
        Some(RedisCache::cloud_url(self))
    }

    fn on_death(&self, f: super::DeathCallback) {
        self.inner.server.on_death(f);
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
        data::get(&mut self.conn(), id).await
    }

    async fn put(&self, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError> {
        data::put(&mut self.conn(), rec, ttl).await
    }

    async fn get_many(&self, ids: &[SessionId]) -> Result<Vec<Option<SessionRecord>>, CacheError> {
        data::get_many(&mut self.conn(), ids).await
    }

    async fn put_many(&self, recs: &[SessionRecord], ttl: Duration) -> Result<(), CacheError> {
        data::put_many(&mut self.conn(), recs, ttl).await
    }

    async fn put_and_get_many(&self, recs: &[SessionRecord], ttl: Duration, ids: &[SessionId]) -> PutAndGet {
        data::put_and_get_many(&mut self.conn(), recs, ttl, ids).await
    }

    async fn delete(&self, id: SessionId) -> Result<(), CacheError> {
        data::delete(&mut self.conn(), id).await
    }

    async fn kill(&self) -> Result<(), CacheError> {
        let pid = self.server_pid();
        self.kill_now();
        if let Some(pid) = pid {
            // SAFETY: signal 0 only checks for existence.
            let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
            if alive {
                return Err(CacheError::Backend(format!("redis-server pid {pid} survived SIGKILL")));
            }
        }
        Ok(())
    }

    async fn start(&self) -> Result<(), CacheError> {
        self.spawn(false).await
    }

    async fn snapshot(&self, name: &str) -> Result<u64, CacheError> {
        let n = self.dbsize().await?;
        let _: () = redis::cmd("SAVE")
            .query_async(&mut self.admin())
            .await
            .map_err(admin_err)?;
        std::fs::copy(self.dump(), self.snapshot_path(name))
            .map_err(CacheError::io(format!("cannot keep snapshot `{name}`")))?;
        Ok(n)
    }

    async fn restore(&self, from: &RestoreFrom) -> Result<u64, CacheError> {
        // A restore that cannot happen must not take the cache down first.
        if let RestoreFrom::Snapshot(name) = from
            && !self.snapshot_path(name).exists()
        {
            return Err(CacheError::NoSnapshot(name.clone(), self.snapshot_names()));
        }
        self.kill_now();
        match from {
            RestoreFrom::Empty => self.spawn(false).await?,
            RestoreFrom::Snapshot(name) => {
                let snap = self.snapshot_path(name);
                std::fs::copy(&snap, self.dump())
                    .map_err(CacheError::io(format!("cannot restore snapshot `{name}`")))?;
                self.spawn(true).await?;
            }
        }
        self.dbsize().await
    }

    async fn flush(&self) -> Result<u64, CacheError> {
        let n = self.session_keys().await?.len() as u64;
        let _: () = redis::cmd("FLUSHDB")
            .query_async(&mut self.admin())
            .await
            .map_err(admin_err)?;
        Ok(n)
    }

    async fn evict(&self, fraction: f64) -> Result<Vec<Evicted>, CacheError> {
        let mut keys = self.session_keys().await?;
        let n = ((keys.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        keys.shuffle(&mut *self.inner.rng.lock().unwrap_or_else(|p| p.into_inner()));
        keys.truncate(n);
        keys.sort();
        let mut out = Vec::new();
        for k in keys {
            // DEL, not GETDEL: a team's cloud may keep a hash or a list.
            let value: Option<String> = self.admin().get(&k).await.unwrap_or(None);
            let n: u64 = self.admin().del(&k).await.map_err(admin_err)?;
            if n == 0 {
                continue;
            }
            out.push(
                match value.and_then(|j| serde_json::from_str::<SessionRecord>(&j).ok()) {
                    Some(rec) => Evicted::of(rec),
                    None => Evicted {
                        session: k,
                        device_id: String::new(),
                    },
                },
            );
        }
        Ok(out)
    }

    async fn pause(&self, d: Duration) -> Result<(), CacheError> {
        self.signal(libc::SIGSTOP)?;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if let Err(e) = me.signal(libc::SIGCONT) {
                tracing::warn!("cannot resume redis-server after pause: {e}");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
