//! The session cache: the separate store where the cloud keeps sessions, and
//! which the rig can kill, restore, flush, evict from and pause.
//!
//! [`SessionCache`] is the seam between the cloud and a backend; backends
//! know nothing of the timeline. [`Cache`] wraps a backend for the rig's
//! administrative operations and records each one as a `cache.*` event. The
//! cloud owns its own data-path error handling (timeouts, `cache.error`).
//!
//! Backends, one folder each, registered in [`CacheCfg`] and opened by
//! [`open`]: [`memory`] (inside the rig, the default), [`redis`] (a real
//! `redis-server` child process the rig controls), [`redis_cluster`]
//! (a Redis Cluster of such processes, broken node by node) and
//! [`remote_redis`] (a server someone else runs: the data path only).

pub mod memory;
pub mod redis;
pub mod redis_cluster;
pub mod remote_redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rig_proto::{SessionId, SessionKeys};
use serde::{Deserialize, Serialize};

use crate::timeline::{EventKind, Source, Timeline};

/// What a cache backend may use when it is opened.
pub struct OpenCtx<'a> {
    /// A folder of its own for data and snapshots (a server's files).
    pub dir: &'a std::path::Path,
    /// Seeds its random choices (which sessions `evict` takes).
    pub seed: u64,
}

/// A cache backend, configured.
#[async_trait]
pub trait CacheBackend: std::fmt::Debug + Send + Sync {
    /// Its `kind:` name.
    fn name(&self) -> &'static str;
    /// Whether it can run on the virtual clock (an outside server cannot).
    fn virtual_clock(&self) -> bool;
    /// Whether a call waits on another process (a server over a socket):
    /// then more cloud workers than cores overlap those waits.
    fn networked(&self) -> bool {
        !self.virtual_clock()
    }
    async fn open(&self, ctx: &OpenCtx<'_>) -> Result<Arc<dyn SessionCache>, CacheError>;
}

crate::drivers::backends! {
    /// The session cache of a bench's cloud: `cache: { kind: redis }`.
    pub enum CacheCfg: CacheBackend {
        "memory" => Memory(memory::MemoryCfg),
        "redis" => Redis(redis::RedisCfg),
        "redis-cluster" => RedisCluster(redis_cluster::RedisClusterCfg),
        "remote-redis" => RemoteRedis(remote_redis::RemoteRedisCfg),
    }
}

impl Default for CacheCfg {
    fn default() -> Self {
        CacheCfg::Memory(memory::MemoryCfg {})
    }
}

/// Opens the configured cache: the one way `rig run`, `rig cloud serve`
/// and `rig bench` get a session cache.
pub async fn open(cfg: &CacheCfg, ctx: &OpenCtx<'_>) -> Result<Arc<dyn SessionCache>, CacheError> {
    cfg.backend().open(ctx).await
}

/// What the cloud stores per session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: SessionId,
    pub device_id: String,
    pub c2s: [u8; 32],
    pub s2c: [u8; 32],
    pub mac: [u8; 32],
    /// Highest record counter accepted from the device.
    pub rx_counter: u64,
    /// Last record counter the cloud used towards the device.
    pub tx_counter: u64,
}

impl SessionRecord {
    pub fn new(session_id: SessionId, device_id: &str, keys: &SessionKeys) -> SessionRecord {
        SessionRecord {
            session_id,
            device_id: device_id.to_owned(),
            c2s: keys.c2s,
            s2c: keys.s2c,
            mac: keys.mac,
            rx_counter: 0,
            tx_counter: 0,
        }
    }

    pub fn keys(&self) -> SessionKeys {
        SessionKeys {
            c2s: self.c2s,
            s2c: self.s2c,
            mac: self.mac,
        }
    }
}

/// A session id as shown in events and reports.
pub fn session_label(id: SessionId) -> String {
    format!("{id:016x}")
}

/// What [`SessionCache::put_and_get_many`] gives: the writes' result and
/// the reads'.
pub type PutAndGet = (Result<(), CacheError>, Result<Vec<Option<SessionRecord>>, CacheError>);

/// A round trip not made because a record could not be encoded.
pub(crate) fn unencodable(e: serde_json::Error) -> PutAndGet {
    (
        Err(e.into()),
        Err(CacheError::Backend("not fetched: a record could not be encoded".into())),
    )
}

/// Failures of a cache operation.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("session cache is down ({0})")]
    Down(String),
    #[error("session cache did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no snapshot named `{0}` (snapshots taken so far: {1})")]
    NoSnapshot(String, String),
    /// A file or process of the backend (its folder, config, snapshot,
    /// the server binary) could not be used.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("corrupt session record: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The backend misbehaved in a way no lower error describes.
    #[error("session cache backend error: {0}")]
    Backend(String),
}

/// Two cache errors are the same when they are the same kind and say the
/// same thing (the sources they wrap are not comparable themselves).
impl PartialEq for CacheError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && self.to_string() == other.to_string()
    }
}

impl CacheError {
    /// The same failure once more, for a second operation that met it (a
    /// pipeline that failed fails each of its operations): what the
    /// cloud's breaker tells apart (down, timed out) is kept, the rest
    /// keeps its message.
    pub fn again(&self) -> CacheError {
        match self {
            CacheError::Down(m) => CacheError::Down(m.clone()),
            CacheError::Timeout(d) => CacheError::Timeout(*d),
            e => CacheError::Backend(e.to_string()),
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CacheError {
        let what = what.into();
        move |source| CacheError::Io { what, source }
    }
}

/// Where `restore` takes its data from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreFrom {
    Empty,
    Snapshot(String),
}

impl std::fmt::Display for RestoreFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreFrom::Empty => f.write_str("empty"),
            RestoreFrom::Snapshot(n) => f.write_str(n),
        }
    }
}

/// One administrative operation on the session cache: what a plan's
/// `cache:` step and a `rig cache ...` line both say.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheCommand {
    Kill,
    Start,
    Flush,
    Snapshot(String),
    Restore(RestoreFrom),
    Evict(f64),
    Pause(Duration),
    /// One node of a cluster cache (numbered from 1).
    Node(u32, NodeOp),
}

/// What one node of a cluster cache can be made to do.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOp {
    /// SIGKILL; a master's replica, if it has one, takes over its slots.
    Kill,
    /// Back, empty (a node keeps its place and slots in the cluster).
    Start,
    /// Back from `empty` or a snapshot.
    Restore(RestoreFrom),
    /// SIGSTOP for the duration, data kept.
    Pause(Duration),
}

impl std::fmt::Display for NodeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeOp::Kill => f.write_str("kill"),
            NodeOp::Start => f.write_str("start"),
            NodeOp::Restore(r) => write!(f, "restore {r}"),
            NodeOp::Pause(d) => write!(f, "pause {}", crate::units::fmt_duration(*d)),
        }
    }
}

/// What a node operation did, for its event.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub node: u32,
    pub role: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub slots: String,
    /// Sessions the node held (kill) or holds (start, restore).
    pub sessions: u64,
    /// The replica that took over a killed master's slots.
    pub promoted: Option<u32>,
    /// Sessions no node has any more, with their devices.
    pub lost: Vec<Evicted>,
}

/// A cache command line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} (cache commands: kill, start, flush, snapshot NAME, restore empty|NAME, evict FRACTION, pause DURATION; on a cluster also node N kill|start|restore empty|NAME|pause DURATION)"
)]
pub struct BadCacheCommand(pub String);

impl std::str::FromStr for CacheCommand {
    type Err = BadCacheCommand;

    /// `kill`, `start`, `flush`, `snapshot NAME`, `restore empty|NAME`,
    /// `evict FRACTION`, `pause DURATION`; `node N kill|start|restore
    /// FROM|pause DURATION` for one node of a cluster.
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = |m: String| Err(BadCacheCommand(m));
        if let ["node", n, rest @ ..] = words.as_slice() {
            let node = match n.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => return bad(format!("a node is a number from 1, not `{n}`")),
            };
            let op = match CacheCommand::from_str(&rest.join(" "))? {
                CacheCommand::Kill => NodeOp::Kill,
                CacheCommand::Start => NodeOp::Start,
                CacheCommand::Restore(from) => NodeOp::Restore(from),
                CacheCommand::Pause(d) => NodeOp::Pause(d),
                other => return bad(format!("`{other}` acts on the whole cache, not one node")),
            };
            return Ok(CacheCommand::Node(node, op));
        }
        match words.as_slice() {
            ["kill"] => Ok(CacheCommand::Kill),
            ["start"] => Ok(CacheCommand::Start),
            ["flush"] => Ok(CacheCommand::Flush),
            ["snapshot", name] if crate::bench::is_safe_name(name) => Ok(CacheCommand::Snapshot((*name).to_owned())),
            ["snapshot", name] => bad(format!(
                "snapshot name `{name}` must be letters, digits, `-`, `_` or `.`"
            )),
            ["restore", "empty"] => Ok(CacheCommand::Restore(RestoreFrom::Empty)),
            ["restore", name] if crate::bench::is_safe_name(name) => {
                Ok(CacheCommand::Restore(RestoreFrom::Snapshot((*name).to_owned())))
            }
            ["restore", name] => bad(format!(
                "snapshot name `{name}` must be letters, digits, `-`, `_` or `.`"
            )),
            ["evict", f] => match f.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(CacheCommand::Evict(x)),
                _ => bad(format!("evict takes a fraction between 0 and 1, not `{f}`")),
            },
            ["pause", d] => match crate::units::Dur::parse(d) {
                Ok(d) => Ok(CacheCommand::Pause(d.0)),
                Err(e) => bad(format!("pause takes a duration: {e}")),
            },
            _ => bad(format!("unknown cache command `{}`", line.trim())),
        }
    }
}

/// In a plan: `cache: kill` (a word), or a one-key map whose value is the
/// argument (`{snapshot: NAME}`, `{restore: empty}`, `{pause: 30s}`,
/// `{evict: {fraction: 0.5}}`). Either form is turned into the command line
/// the admin socket takes and parsed by the one [`FromStr`](std::str::FromStr).
impl<'de> serde::Deserialize<'de> for CacheCommand {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fraction {
            fraction: f64,
        }
        /// `{node: 2}`, `{node: 2, from: empty}`, `{node: 4, for: 20s}`.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Node {
            node: crate::plan::Scalar,
            from: Option<crate::plan::Scalar>,
            #[serde(rename = "for")]
            for_: Option<crate::plan::Scalar>,
        }
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Arg {
            Fraction(Fraction),
            Node(Node),
            Text(crate::plan::Scalar),
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CacheCommand;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a cache operation: kill, start, flush, or {snapshot: NAME}, {restore: empty|NAME}, {evict: {fraction: F}}, {pause: DURATION}; for one node of a cluster {kill: {node: N}}, {start: {node: N}}, {restore: {node: N, from: empty|NAME}}, {pause: {node: N, for: DURATION}}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CacheCommand, E> {
                v.parse().map_err(|e: BadCacheCommand| E::custom(e.0))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<CacheCommand, A::Error> {
                let Some(op) = map.next_key::<String>()? else {
                    return Err(serde::de::Error::custom("expected one cache operation"));
                };
                let line = match map.next_value::<Arg>()? {
                    Arg::Fraction(f) => format!("{op} {}", f.fraction),
                    Arg::Text(t) => format!("{op} {}", t.0),
                    Arg::Node(n) => {
                        let arg = match (op.as_str(), n.from, n.for_) {
                            ("restore", Some(from), None) => from.0,
                            ("restore", None, _) => {
                                return Err(serde::de::Error::custom(
                                    "restore of a node needs `from: empty` or `from: SNAPSHOT`",
                                ));
                            }
                            ("pause", None, Some(d)) => d.0,
                            ("pause", _, None) => {
                                return Err(serde::de::Error::custom("pause of a node needs `for: DURATION`"));
                            }
                            ("kill" | "start", None, None) => String::new(),
                            _ => {
                                return Err(serde::de::Error::custom(format!(
                                    "`{op}` of a node takes only `node`{}",
                                    match op.as_str() {
                                        "restore" => " and `from`",
                                        "pause" => " and `for`",
                                        _ => "",
                                    }
                                )));
                            }
                        };
                        format!("node {} {op} {arg}", n.node.0)
                    }
                };
                if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::custom("one cache operation per step"));
                }
                line.parse().map_err(|e: BadCacheCommand| serde::de::Error::custom(e.0))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for CacheCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheCommand::Kill => f.write_str("kill"),
            CacheCommand::Start => f.write_str("start"),
            CacheCommand::Flush => f.write_str("flush"),
            CacheCommand::Snapshot(n) => write!(f, "snapshot {n}"),
            CacheCommand::Restore(r) => write!(f, "restore {r}"),
            CacheCommand::Evict(x) => write!(f, "evict {}%", x * 100.0),
            CacheCommand::Pause(d) => write!(f, "pause {}", crate::units::fmt_duration(*d)),
            CacheCommand::Node(n, op) => write!(f, "node {n} {op}"),
        }
    }
}

/// A session removed by `evict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// The session's label, or the key of a value that is not one of the
    /// rig's session records (a team's cloud's own format).
    pub session: String,
    /// Whose it was (empty when the value does not say).
    pub device_id: String,
}

impl Evicted {
    pub fn of(rec: SessionRecord) -> Evicted {
        Evicted {
            session: session_label(rec.session_id),
            device_id: rec.device_id,
        }
    }
}

/// A session store the rig can break on purpose.
#[async_trait]
pub trait SessionCache: Send + Sync {
    /// Short backend name for events and reports.
    fn backend(&self) -> &'static str;

    /// The pid of the cache's server process, when it is one.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// The URL (with credentials) a cloud outside the rig reaches the
    /// data path with, for a server the rig runs.
    fn cloud_url(&self) -> Option<String> {
        None
    }

    /// Registers what to do when the cache dies without the rig killing it
    /// (a server process that exits or is killed by someone else).
    fn on_death(&self, _f: DeathCallback) {}

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, CacheError>;
    async fn put(&self, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError>;
    async fn delete(&self, id: SessionId) -> Result<(), CacheError>;

    /// Whether a call leaves the process (a server on the network): then
    /// fetching a burst's sessions together saves round trips; in process
    /// it only adds bookkeeping.
    fn remote(&self) -> bool {
        false
    }

    /// Several sessions at once, in the order asked for: one round trip
    /// where the backend can pipeline (a cloud worker fetches what a burst
    /// of datagrams needs together). A failure fails them all.
    async fn get_many(&self, ids: &[SessionId]) -> Result<Vec<Option<SessionRecord>>, CacheError> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            out.push(self.get(id).await?);
        }
        Ok(out)
    }

    /// Several sessions stored at once (at most one record per session, so
    /// a backend may write them concurrently); one round trip where the
    /// backend can pipeline.
    async fn put_many(&self, recs: &[SessionRecord], ttl: Duration) -> Result<(), CacheError> {
        for rec in recs {
            self.put(rec, ttl).await?;
        }
        Ok(())
    }

    /// `recs` stored and `ids` fetched (no session in both), in one round
    /// trip where the backend can pipeline: a cloud worker stores one
    /// burst's sessions with the next burst's fetch. The results are those
    /// of `put_many` and `get_many`; a round trip that fails fails both.
    async fn put_and_get_many(&self, recs: &[SessionRecord], ttl: Duration, ids: &[SessionId]) -> PutAndGet {
        let put = async {
            match recs {
                [] => Ok(()),
                recs => self.put_many(recs, ttl).await,
            }
        };
        let get = async {
            match ids {
                [] => Ok(Vec::new()),
                ids => self.get_many(ids).await,
            }
        };
        futures::future::join(put, get).await
    }

    /// All data lost, unavailable until `start` or `restore`.
    async fn kill(&self) -> Result<(), CacheError>;
    /// Available again, empty.
    async fn start(&self) -> Result<(), CacheError>;
    /// Saves the current contents under `name`; returns the session count.
    async fn snapshot(&self, name: &str) -> Result<u64, CacheError>;
    /// Restarts the cache from `from`; returns the session count afterwards.
    async fn restore(&self, from: &RestoreFrom) -> Result<u64, CacheError>;
    /// Deletes every session; returns how many there were.
    async fn flush(&self) -> Result<u64, CacheError>;
    /// Deletes a seeded random `fraction` of the sessions.
    async fn evict(&self, fraction: f64) -> Result<Vec<Evicted>, CacheError>;
    /// Unavailable for `d` with data kept (a stalled process).
    async fn pause(&self, d: Duration) -> Result<(), CacheError>;

    /// How many nodes a cluster cache has (0: not a cluster).
    fn nodes(&self) -> u32 {
        0
    }

    /// The cluster's layout now, for a `cache.cluster` event.
    fn topology(&self) -> Option<Vec<crate::timeline::ClusterNode>> {
        None
    }

    /// Which part of the cache holds `id`: a cluster's slot range. The
    /// cloud's circuit breaker is per part, so one dead node does not fail
    /// fast the sessions the others still serve.
    fn part_of(&self, _id: SessionId) -> usize {
        0
    }

    /// One node of a cluster: kill, start, restore or pause it.
    async fn node(&self, node: u32, op: &NodeOp) -> Result<NodeReport, CacheError> {
        let _ = (node, op);
        Err(CacheError::Backend(format!(
            "the {} session cache has no nodes (node operations need `kind: redis-cluster`)",
            self.backend()
        )))
    }
}

/// Called with (pid, how it ended) when a cache server dies on its own.
pub type DeathCallback = std::sync::Arc<dyn Fn(u32, String) + Send + Sync>;

/// The rig's administrative handle on the cache: every operation becomes a
/// `cache.*` event, and so does a death the rig did not cause.
#[derive(Clone)]
pub struct Cache {
    backend: Arc<dyn SessionCache>,
    timeline: Timeline,
}

impl Cache {
    pub fn new(backend: Arc<dyn SessionCache>, timeline: Timeline) -> Cache {
        let tl = timeline.clone();
        let name = backend.backend();
        backend.on_death(Arc::new(move |pid, how| {
            tl.emit(
                None,
                Source::Cache,
                EventKind::CacheDied {
                    backend: name.into(),
                    pid,
                    how,
                },
            );
        }));
        Cache { backend, timeline }
    }

    /// The data path, for the cloud.
    pub fn backend(&self) -> Arc<dyn SessionCache> {
        self.backend.clone()
    }

    fn emit(&self, kind: EventKind) {
        self.timeline.emit(None, Source::Cache, kind);
    }

    /// Runs one administrative command.
    pub async fn run(&self, cmd: &CacheCommand) -> Result<(), CacheError> {
        match cmd {
            CacheCommand::Kill => self.kill().await,
            CacheCommand::Start => self.start().await,
            CacheCommand::Flush => self.flush().await,
            CacheCommand::Snapshot(n) => self.snapshot(n).await,
            CacheCommand::Restore(from) => self.restore(from).await,
            CacheCommand::Evict(f) => self.evict(*f).await,
            CacheCommand::Pause(d) => self.pause(*d).await,
            CacheCommand::Node(n, op) => self.node(*n, op).await,
        }
    }

    /// The cluster's layout, as a `cache.cluster` event (nothing for a
    /// cache that is not a cluster).
    pub fn announce_topology(&self) {
        if let Some(nodes) = self.backend.topology() {
            self.emit(EventKind::CacheCluster { nodes });
        }
    }

    pub async fn node(&self, node: u32, op: &NodeOp) -> Result<(), CacheError> {
        if let NodeOp::Pause(d) = op {
            self.backend.node(node, op).await?;
            self.emit(EventKind::CacheNodePause {
                node,
                ms: d.as_millis() as u64,
            });
            let me = self.clone();
            let d = *d;
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                me.emit(EventKind::CacheNodeResume { node });
            });
            return Ok(());
        }
        let r = self.backend.node(node, op).await?;
        match op {
            NodeOp::Kill => self.emit(EventKind::CacheNodeKill(Box::new(crate::timeline::NodeKill {
                node,
                role: r.role,
                port: r.port,
                pid: r.pid,
                slots: r.slots,
                held: r.sessions,
                promoted: r.promoted,
                lost: r.lost.len() as u64,
                sessions: r.lost.iter().map(|e| e.session.clone()).collect(),
                devices: r.lost.iter().map(|e| e.device_id.clone()).collect(),
            }))),
            NodeOp::Start | NodeOp::Restore(_) | NodeOp::Pause(_) => {
                self.emit(EventKind::CacheNodeStart(Box::new(crate::timeline::NodeStart {
                    node,
                    from: match op {
                        NodeOp::Restore(from) => from.to_string(),
                        _ => "empty".into(),
                    },
                    role: r.role,
                    port: r.port,
                    pid: r.pid,
                    slots: r.slots,
                    sessions: r.sessions,
                })))
            }
        }
        self.announce_topology();
        Ok(())
    }

    pub async fn kill(&self) -> Result<(), CacheError> {
        let pid = self.backend.pid();
        self.backend.kill().await?;
        self.emit(EventKind::CacheKill {
            backend: self.backend.backend().into(),
            pid,
        });
        Ok(())
    }

    pub async fn start(&self) -> Result<(), CacheError> {
        self.backend.start().await?;
        self.emit(EventKind::CacheStart {
            backend: self.backend.backend().into(),
            pid: self.backend.pid(),
        });
        Ok(())
    }

    pub async fn snapshot(&self, name: &str) -> Result<(), CacheError> {
        let sessions = self.backend.snapshot(name).await?;
        self.emit(EventKind::CacheSnapshot {
            name: name.into(),
            sessions,
        });
        Ok(())
    }

    pub async fn restore(&self, from: &RestoreFrom) -> Result<(), CacheError> {
        let sessions = self.backend.restore(from).await?;
        self.emit(EventKind::CacheRestore {
            from: from.to_string(),
            sessions,
            pid: self.backend.pid(),
        });
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), CacheError> {
        let sessions = self.backend.flush().await?;
        self.emit(EventKind::CacheFlush { sessions });
        Ok(())
    }

    pub async fn evict(&self, fraction: f64) -> Result<(), CacheError> {
        let gone = self.backend.evict(fraction).await?;
        self.emit(EventKind::CacheEvict {
            fraction,
            sessions: gone.iter().map(|e| e.session.clone()).collect(),
            devices: gone.iter().map(|e| e.device_id.clone()).collect(),
        });
        Ok(())
    }

    /// Pauses the cache; a `cache.resume` event follows when it is back.
    pub async fn pause(&self, d: Duration) -> Result<(), CacheError> {
        self.backend.pause(d).await?;
        self.emit(EventKind::CachePause {
            ms: d.as_millis() as u64,
        });
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            me.emit(EventKind::CacheResume);
        });
        Ok(())
    }
}
