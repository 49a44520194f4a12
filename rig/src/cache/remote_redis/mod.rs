//! `cache: { kind: remote-redis }`: a Redis the cloud uses but does not run.
//! This is the cache of a cloud the rig starts as a child process (`rig
//! cloud serve --cache remote-redis`): the rig runs the server, kills and
//! restores it, and hands the cloud its URL in an environment variable,
//! never on the command line, which every local user can read in
//! `/proc/PID/cmdline`.
//!
//! Only the data path lives here; breaking the cache is the business of
//! whoever runs the server, so the administrative operations refuse.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use rig_proto::SessionId;

use super::redis::{DATA_TIMEOUT, data, manager};
use super::{CacheBackend, CacheError, Evicted, OpenCtx, PutAndGet, RestoreFrom, SessionCache, SessionRecord};

/// The environment variable a remote Redis's URL is read from by default.
pub const URL_ENV: &str = "RIG_CACHE_URL";

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteRedisCfg {
    /// The environment variable holding the URL (`redis://user:pass@host:port`).
    #[serde(default = "default_env")]
    pub url_env: String,
}

fn default_env() -> String {
    URL_ENV.into()
}

impl Default for RemoteRedisCfg {
    fn default() -> Self {
        RemoteRedisCfg { url_env: default_env() }
    }
}

#[async_trait]
impl CacheBackend for RemoteRedisCfg {
    fn name(&self) -> &'static str {
        "remote-redis"
    }

    fn virtual_clock(&self) -> bool {
        false
    }

    async fn open(&self, _ctx: &OpenCtx<'_>) -> Result<Arc<dyn SessionCache>, CacheError> {
        let url = std::env::var(&self.url_env).map_err(|_| {
            CacheError::Backend(format!(
                "the remote Redis's URL is read from ${}, which is not set",
                self.url_env
            ))
        })?;
        // Only the scheme and address, never the password, go into messages.
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|e| CacheError::Backend(format!("${} is not a Redis URL: {e}", self.url_env)))?;
        let conn = manager(&url, DATA_TIMEOUT)?;
        Ok(Arc::new(RemoteRedis {
            conn,
            addr: info.addr().to_string(),
        }))
    }
}

/// A data-path connection to a server someone else runs.
pub struct RemoteRedis {
    conn: ConnectionManager,
    addr: String,
}

impl RemoteRedis {
    fn refuse(&self, what: &str) -> CacheError {
        CacheError::Backend(format!(
            "cannot {what} the remote Redis at {}: it is run (and broken) by whoever started it",
            self.addr
        ))
    }
}

#[async_trait]
impl SessionCache for RemoteRedis {
    fn backend(&self) -> &'static str {
        "remote-redis"
    }

    fn remote(&self) -> bool {
        true
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
        data::get(&mut self.conn.clone(), id).await
    }

    async fn put(&self, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError> {
        data::put(&mut self.conn.clone(), rec, ttl).await
    }

    async fn get_many(&self, ids: &[SessionId]) -> Result<Vec<Option<SessionRecord>>, CacheError> {
        data::get_many(&mut self.conn.clone(), ids).await
    }

    async fn put_many(&self, recs: &[SessionRecord], ttl: Duration) -> Result<(), CacheError> {
        data::put_many(&mut self.conn.clone(), recs, ttl).await
    }

    async fn put_and_get_many(&self, recs: &[SessionRecord], ttl: Duration, ids: &[SessionId]) -> PutAndGet {
        data::put_and_get_many(&mut self.conn.clone(), recs, ttl, ids).await
    }

    async fn delete(&self, id: SessionId) -> Result<(), CacheError> {
        data::delete(&mut self.conn.clone(), id).await
    }

    async fn kill(&self) -> Result<(), CacheError> {
        Err(self.refuse("kill"))
    }

    async fn start(&self) -> Result<(), CacheError> {
        Err(self.refuse("start"))
    }

    async fn snapshot(&self, _name: &str) -> Result<u64, CacheError> {
        Err(self.refuse("snapshot"))
    }

    async fn restore(&self, _from: &RestoreFrom) -> Result<u64, CacheError> {
        Err(self.refuse("restore"))
    }

    async fn flush(&self) -> Result<u64, CacheError> {
        Err(self.refuse("flush"))
    }

    async fn evict(&self, _fraction: f64) -> Result<Vec<Evicted>, CacheError> {
        Err(self.refuse("evict from"))
    }

    async fn pause(&self, _d: Duration) -> Result<(), CacheError> {
        Err(self.refuse("pause"))
    }
}
