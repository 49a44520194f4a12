//! The Redis session cache: a real `redis-server` child process that the rig
//! starts on a free loopback port, SIGKILLs, restarts empty or from a named
//! RDB snapshot, and SIGSTOPs — the failure the incident was about, for real.
//!
//! - The child gets its own directory, no persistence except the snapshots a
//!   plan asks for (`--save ""`, `--appendonly no`), and dies with the rig:
//!   `PR_SET_PDEATHSIG` makes the kernel SIGKILL it if the rig dies, even by
//!   SIGKILL. (The signal follows the *thread* that spawned the child; the
//!   rig spawns from its long-lived main thread, never from a blocking pool.)
//! - The cloud talks to it with the `redis` crate's connection manager, which
//!   reconnects by itself when the server is back. Every call is bounded by a
//!   response timeout, so a dead or stopped server fails fast.
//! - Sessions are stored as JSON under `rig:session:<id>` with a TTL.
//! - Redis needs the real clock: on a paused virtual clock every network wait
//!   would look like a timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rig_proto::SessionId;

use super::{CacheError, Evicted, RestoreFrom, SessionCache, SessionRecord};

const KEY_PREFIX: &str = "rig:session:";

fn key(id: SessionId) -> String {
    format!("{KEY_PREFIX}{id:016x}")
}

struct Proc {
    child: Option<Child>,
}

struct Inner {
    port: u16,
    dir: PathBuf,
    proc: Mutex<Proc>,
    conn: ConnectionManager,
    rng: Mutex<ChaCha8Rng>,
}

/// Cheap-to-clone handle on the rig's own redis-server.
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

fn backend_err(e: redis::RedisError) -> CacheError {
    if e.is_timeout() {
        CacheError::Timeout(Duration::from_millis(0))
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        CacheError::Down(e.to_string())
    } else {
        CacheError::Backend(e.to_string())
    }
}

/// A free TCP port on loopback (bound and released; redis takes it next).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl RedisCache {
    /// Starts `redis-server` with its data in `dir`. Must be called on the
    /// thread that will outlive the child (see the module docs).
    pub async fn start_in(dir: &Path, seed: u64) -> Result<RedisCache, CacheError> {
        std::fs::create_dir_all(dir.join("snapshots"))
            .map_err(|e| CacheError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        // redis-server changes into `--dir` before it opens `--logfile`: a
        // relative folder (the default `--out reports`) would be looked up
        // twice and the log could not be opened.
        let dir = &std::path::absolute(dir)
            .map_err(|e| CacheError::Backend(format!("cannot resolve {}: {e}", dir.display())))?;
        let port = free_port().map_err(|e| CacheError::Backend(format!("no free loopback port: {e}")))?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .map_err(|e| CacheError::Backend(e.to_string()))?;
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(200)))
            .set_connection_timeout(Some(Duration::from_millis(200)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(backend_err)?;
        let cache = RedisCache {
            inner: Arc::new(Inner {
                port,
                dir: dir.to_owned(),
                proc: Mutex::new(Proc { child: None }),
                conn,
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x4ed1)),
            }),
        };
        cache.spawn(false).await?;
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Proc> {
        self.inner.proc.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dump(&self) -> PathBuf {
        self.inner.dir.join("dump.rdb")
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
        self.inner.dir.join("snapshots").join(format!("{safe}.rdb"))
    }

    /// Names of the snapshots taken so far, for error messages.
    fn snapshot_names(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.inner.dir.join("snapshots"))
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
        self.lock().child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Starts the server (loading `dump.rdb` if `keep_dump`) and waits until
    /// it answers.
    async fn spawn(&self, keep_dump: bool) -> Result<(), CacheError> {
        self.kill_now();
        if !keep_dump {
            let _ = std::fs::remove_file(self.dump());
        }
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.inner.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.inner.dir)
            .args(["--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--logfile")
            .arg(self.inner.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; this runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CacheError::Backend(
                    "redis-server is not installed (not found on PATH): install Debian's `redis-server` package (apt-get install redis-server)".into(),
                )
            } else {
                CacheError::Backend(format!("cannot start redis-server: {e}"))
            }
        })?;
        self.lock().child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = self.inner.conn.clone();
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.lock().child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(CacheError::Backend(format!(
                    "redis-server exited at start ({status}); see {}",
                    self.inner.dir.join("redis.log").display()
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

    /// SIGKILL and reap; afterwards the pid no longer exists.
    fn kill_now(&self) {
        let child = self.lock().child.take();
        if let Some(mut c) = child {
            // SIGCONT first would be pointless: SIGKILL also ends a stopped process.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), CacheError> {
        let pid = self
            .server_pid()
            .ok_or_else(|| CacheError::Down("redis-server is not running".into()))?;
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped
        // while we hold it in `Proc`.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(CacheError::Backend(format!(
                "cannot signal redis-server: {}",
                std::io::Error::last_os_error()
            )))
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    async fn dbsize(&self) -> Result<u64, CacheError> {
        redis::cmd("DBSIZE")
            .query_async(&mut self.conn())
            .await
            .map_err(backend_err)
    }

    async fn session_keys(&self) -> Result<Vec<String>, CacheError> {
        let mut c = self.conn();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{KEY_PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(backend_err)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        Ok(keys)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(mut c) = self.proc.get_mut().ok().and_then(|p| p.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[async_trait]
impl SessionCache for RedisCache {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn pid(&self) -> Option<u32> {
        self.server_pid()
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
        let v: Option<String> = self.conn().get(key(id)).await.map_err(backend_err)?;
        match v {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| CacheError::Backend(format!("corrupt session record: {e}"))),
        }
    }

    async fn put(&self, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError> {
        let json = serde_json::to_string(rec).map_err(|e| CacheError::Backend(e.to_string()))?;
        let ms = ttl.as_millis().max(1) as u64;
        let _: () = self
            .conn()
            .pset_ex(key(rec.session_id), json, ms)
            .await
            .map_err(backend_err)?;
        Ok(())
    }

    async fn delete(&self, id: SessionId) -> Result<(), CacheError> {
        let _: () = self.conn().del(key(id)).await.map_err(backend_err)?;
        Ok(())
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
            .query_async(&mut self.conn())
            .await
            .map_err(backend_err)?;
        std::fs::copy(self.dump(), self.snapshot_path(name))
            .map_err(|e| CacheError::Backend(format!("cannot keep snapshot `{name}`: {e}")))?;
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
                    .map_err(|e| CacheError::Backend(format!("cannot restore snapshot `{name}`: {e}")))?;
                self.spawn(true).await?;
            }
        }
        self.dbsize().await
    }

    async fn flush(&self) -> Result<u64, CacheError> {
        let n = self.session_keys().await?.len() as u64;
        let _: () = redis::cmd("FLUSHDB")
            .query_async(&mut self.conn())
            .await
            .map_err(backend_err)?;
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
            let json: Option<String> = self.conn().get_del(&k).await.map_err(backend_err)?;
            if let Some(rec) = json.and_then(|j| serde_json::from_str::<SessionRecord>(&j).ok()) {
                out.push(Evicted {
                    session_id: rec.session_id,
                    device_id: rec.device_id,
                });
            }
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
