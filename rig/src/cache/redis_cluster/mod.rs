//! The Redis Cluster session cache: the incident's production shape. The
//! rig starts `masters × (1 + replicas)` redis-server child processes on
//! loopback, forms them into a cluster itself (slots split evenly, replicas
//! assigned, no redis-cli needed) and can then break it node by node: kill a
//! master and watch its replica take over, pause one node, bring one back
//! empty or from its snapshot.
//!
//! - [`nodes`]: the node processes, forming the cluster, reading its layout.
//! - Each node has the single server's hygiene (private folder, PDEATHSIG,
//!   ACL users with OS-random passwords; one pair for the whole cluster,
//!   since a cluster client uses one credential on every node). Replicas
//!   authenticate to their masters as `rig-admin`. The cluster bus (port +
//!   10000) has no authentication in Redis 7: it listens on loopback only.
//! - The cloud's data path is the `redis` crate's async cluster client
//!   (multiplexed: concurrent calls share one pipelined connection per
//!   node, and it follows MOVED redirections after a failover).
//! - What a fault lost is read from the nodes themselves: a killed master's
//!   sessions are listed (writes paused) before the SIGKILL, and after its
//!   replica has taken over, the sessions the replica does not have are the
//!   writes it had not received.

pub mod nodes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;
use rig_proto::SessionId;

use super::redis::server::CLOUD_USER;
use super::{
    CacheBackend, CacheError, Evicted, NodeOp, NodeReport, OpenCtx, PutAndGet, RestoreFrom, SessionCache, SessionRecord,
};
use crate::timeline::ClusterNode;
use nodes::Cluster;

/// `cache: { kind: redis-cluster, masters: 3, replicas: 1 }`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(try_from = "RawCfg")]
pub struct RedisClusterCfg {
    pub masters: u32,
    pub replicas: u32,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCfg {
    #[serde(default = "three")]
    masters: u32,
    #[serde(default)]
    replicas: u32,
}

fn three() -> u32 {
    3
}

impl TryFrom<RawCfg> for RedisClusterCfg {
    type Error = String;
    fn try_from(r: RawCfg) -> Result<Self, String> {
        if !(1..=16).contains(&r.masters) {
            return Err(format!("masters must be 1 to 16, not {}", r.masters));
        }
        if r.replicas > 2 {
            return Err(format!("replicas must be 0 to 2 per master, not {}", r.replicas));
        }
        if r.replicas > 0 && r.masters < 3 {
            return Err(format!(
                "a replica is promoted by a majority of masters: replicas need at least 3 masters, not {}",
                r.masters
            ));
        }
        Ok(RedisClusterCfg {
            masters: r.masters,
            replicas: r.replicas,
        })
    }
}

#[async_trait]
impl CacheBackend for RedisClusterCfg {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn virtual_clock(&self) -> bool {
        false
    }

    async fn open(&self, ctx: &OpenCtx<'_>) -> Result<Arc<dyn SessionCache>, CacheError> {
        Ok(Arc::new(
            ClusterCache::start_in(&ctx.dir.join("redis-cluster"), self, ctx.seed).await?,
        ))
    }
}

/// The data path fails fast, as with one server.
const DATA_TIMEOUT: Duration = Duration::from_millis(200);

use super::redis::key;

/// The hash slot a session's key lives in: CRC16 (XMODEM) of the key mod
/// 16384, as every cluster client computes it (rig's keys have no `{tag}`).
pub fn slot_of(id: SessionId) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(key(id).as_bytes()) % 16384
}

fn data_err(e: redis::RedisError) -> CacheError {
    super::redis::classify(e, DATA_TIMEOUT)
}

/// The rig's handle on its cluster.
pub struct ClusterCache {
    cluster: Cluster,
    /// Several cluster clients, a session always on the same one (so its
    /// GET and SET stay in order): one client's routing task tops out near
    /// 50k calls/s, well below what the nodes serve.
    conns: Vec<ClusterConnection>,
    rng: Mutex<ChaCha8Rng>,
    /// The layout as last read, for `cache.cluster` events.
    layout: Mutex<Vec<ClusterNode>>,
}

impl ClusterCache {
    pub async fn start_in(dir: &std::path::Path, cfg: &RedisClusterCfg, seed: u64) -> Result<ClusterCache, CacheError> {
        let cluster = Cluster::prepare(dir, cfg.masters, cfg.replicas)?;
        cluster.form().await?;
        let mut conns = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            conns.push(cluster_client(&cluster).await?);
        }
        let layout = cluster.layout().await?;
        Ok(ClusterCache {
            cluster,
            conns,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0x4ed2)),
            layout: Mutex::new(layout),
        })
    }

    /// The data-path URLs of every node (with the password: never log them).
    pub fn cloud_urls(&self) -> Vec<String> {
        self.cluster.cloud_urls()
    }

    /// The pids of every node process that runs.
    pub fn pids(&self) -> Vec<u32> {
        self.cluster.pids()
    }

    async fn refresh_layout(&self) {
        match self.cluster.layout().await {
            Ok(l) => *self.layout.lock().unwrap_or_else(|p| p.into_inner()) = l,
            Err(e) => tracing::warn!("cannot read the cluster's layout: {e}"),
        }
    }

    /// Sessions on every master, by key.
    async fn all_sessions(&self) -> Result<BTreeMap<String, (u32, Option<Evicted>)>, CacheError> {
        let mut all = BTreeMap::new();
        for n in self.cluster.live_masters().await {
            for (k, ev) in self.cluster.sessions_on(n).await? {
                all.insert(k, (n, ev));
            }
        }
        Ok(all)
    }
}

/// Cluster clients per cache (see [`ClusterCache::conns`]).
const CLIENTS: usize = 4;

impl ClusterCache {
    fn conn(&self, id: SessionId) -> ClusterConnection {
        self.conns[(id % self.conns.len() as u64) as usize].clone()
    }

    /// `pipe` (of `count` commands on keys of one part) sent to the master
    /// serving `id`'s slot; each command's answer, or `None` if the node
    /// redirects (the pipeline is not followed to the new master).
    async fn on_part_of(
        &self,
        id: SessionId,
        pipe: redis::Pipeline,
        count: usize,
    ) -> Result<Option<Vec<redis::Value>>, CacheError> {
        use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot_of(id), SlotAddr::Master));
        match self.conn(id).route_pipeline(pipe, 0, count, route).await {
            Ok(values) => Ok(Some(values)),
            Err(e) if e.redirect_node().is_some() => Ok(None),
            Err(e) => Err(data_err(e)),
        }
    }
}

async fn cluster_client(cluster: &Cluster) -> Result<ClusterConnection, CacheError> {
    let client = redis::cluster::ClusterClientBuilder::new(cluster.node_urls())
        .username(CLOUD_USER)
        .password(cluster.cloud_password())
        .connection_timeout(DATA_TIMEOUT)
        .response_timeout(DATA_TIMEOUT)
        .retries(2)
        .min_retry_wait(10)
        .max_retry_wait(100)
        .build()?;
    client.get_async_connection().await.map_err(data_err)
}

#[async_trait]
impl SessionCache for ClusterCache {
    fn backend(&self) -> &'static str {
        "redis-cluster"
    }

    fn remote(&self) -> bool {
        true
    }

    fn on_death(&self, f: super::DeathCallback) {
        self.cluster.on_death(f);
    }

    fn nodes(&self) -> u32 {
        self.cluster.len()
    }

    fn topology(&self) -> Option<Vec<ClusterNode>> {
        Some(self.layout.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn part_of(&self, id: SessionId) -> usize {
        self.cluster.range_of(slot_of(id))
    }

    async fn get(&self, id: SessionId) -> Result<Option<SessionRecord>, CacheError> {
        let v: Option<String> = self.conn(id).get(key(id)).await.map_err(data_err)?;
        match v {
            None => Ok(None),
            Some(json) => Ok(Some(serde_json::from_str(&json)?)),
        }
    }

    async fn put(&self, rec: &SessionRecord, ttl: Duration) -> Result<(), CacheError> {
        let json = serde_json::to_string(rec)?;
        let ms = ttl.as_millis().max(1) as u64;
        let _: () = self
            .conn(rec.session_id)
            .pset_ex(key(rec.session_id), json, ms)
            .await
            .map_err(data_err)?;
        Ok(())
    }

    async fn get_many(&self, ids: &[SessionId]) -> Result<Vec<Option<SessionRecord>>, CacheError> {
        self.put_and_get_many(&[], Duration::ZERO, ids).await.1
    }

    async fn put_many(&self, recs: &[SessionRecord], ttl: Duration) -> Result<(), CacheError> {
        self.put_and_get_many(recs, ttl, &[]).await.0
    }

    /// One pipeline per part (a slot range, which one master serves
    /// whole), its writes then its reads, the parts concurrently. A part
    /// whose node redirects (its slots moved in a failover the client has
    /// not seen yet), or a command its node refuses, is done again key by
    /// key, each following its redirect.
    async fn put_and_get_many(&self, recs: &[SessionRecord], ttl: Duration, ids: &[SessionId]) -> PutAndGet {
        let ms = ttl.as_millis().max(1) as u64;
        // Per part: the positions in `recs` it writes and in `ids` it reads.
        let mut parts: BTreeMap<usize, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        for (i, rec) in recs.iter().enumerate() {
            parts.entry(self.part_of(rec.session_id)).or_default().0.push(i);
        }
        for (i, &id) in ids.iter().enumerate() {
            parts.entry(self.part_of(id)).or_default().1.push(i);
        }
        let mut pipes = Vec::with_capacity(parts.len());
        for (writes, reads) in parts.values() {
            let mut pipe = redis::pipe();
            for &i in writes {
                match serde_json::to_string(&recs[i]) {
                    Ok(json) => pipe.pset_ex(key(recs[i].session_id), json, ms),
                    Err(e) => return super::unencodable(e),
                };
            }
            for &i in reads {
                pipe.get(key(ids[i]));
            }
            let first = writes
                .first()
                .map(|&i| recs[i].session_id)
                .unwrap_or_else(|| ids[reads[0]]);
            pipes.push(self.on_part_of(first, pipe, writes.len() + reads.len()));
        }
        let answers = match futures::future::try_join_all(pipes).await {
            Ok(a) => a,
            Err(e) => return (Err(e.again()), Err(e)),
        };
        let (mut put, mut got) = (Ok(()), Ok(vec![None; ids.len()]));
        for ((writes, reads), values) in parts.values().zip(answers) {
            // `None`: the node redirected, and every command is done again.
            let mut values = values.map(Vec::into_iter);
            let mut next = || values.as_mut().and_then(Iterator::next);
            for &i in writes {
                let refused = !matches!(next(), Some(v) if !matches!(v, redis::Value::ServerError(_)));
                if refused
                    && put.is_ok()
                    && let Err(e) = self.put(&recs[i], ttl).await
                {
                    put = Err(e);
                }
            }
            for &i in reads {
                let answer = next();
                let Ok(out) = got.as_mut() else { continue };
                let rec = match answer {
                    None | Some(redis::Value::ServerError(_)) => self.get(ids[i]).await,
                    Some(v) => match redis::from_redis_value::<Option<String>>(v) {
                        Ok(json) => json
                            .map(|j| serde_json::from_str(&j))
                            .transpose()
                            .map_err(CacheError::from),
                        Err(e) => Err(CacheError::Backend(format!("unexpected answer to GET: {e}"))),
                    },
                };
                match rec {
                    Ok(rec) => out[i] = rec,
                    Err(e) => got = Err(e),
                }
            }
        }
        (put, got)
    }

    async fn delete(&self, id: SessionId) -> Result<(), CacheError> {
        let _: () = self.conn(id).del(key(id)).await.map_err(data_err)?;
        Ok(())
    }

    async fn kill(&self) -> Result<(), CacheError> {
        // No node answers now; the last layout still says where each
        // session lived, which is what the events of the crash report.
        self.cluster.kill_all()?;
        Ok(())
    }

    async fn start(&self) -> Result<(), CacheError> {
        self.cluster.start_all(&RestoreFrom::Empty).await?;
        self.refresh_layout().await;
        Ok(())
    }

    async fn snapshot(&self, name: &str) -> Result<u64, CacheError> {
        let n = self.cluster.snapshot(name).await?;
        Ok(n)
    }

    async fn restore(&self, from: &RestoreFrom) -> Result<u64, CacheError> {
        self.cluster.check_snapshot(None, from)?;
        self.cluster.kill_all()?;
        self.cluster.start_all(from).await?;
        self.refresh_layout().await;
        Ok(self.all_sessions().await?.len() as u64)
    }

    async fn flush(&self) -> Result<u64, CacheError> {
        let n = self.all_sessions().await?.len() as u64;
        self.cluster.flush_masters().await?;
        Ok(n)
    }

    async fn evict(&self, fraction: f64) -> Result<Vec<Evicted>, CacheError> {
        let all = self.all_sessions().await?;
        let mut keys: Vec<(&String, u32)> = all.iter().map(|(k, (n, _))| (k, *n)).collect();
        let n = ((keys.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        keys.shuffle(&mut *self.rng.lock().unwrap_or_else(|p| p.into_inner()));
        keys.truncate(n);
        keys.sort();
        let mut out = Vec::new();
        for (k, node) in keys {
            if self.cluster.get_del(node, k).await?
                && let Some((_, Some(ev))) = all.get(k)
            {
                out.push(ev.clone());
            }
        }
        Ok(out)
    }

    async fn pause(&self, d: Duration) -> Result<(), CacheError> {
        for n in 1..=self.cluster.len() {
            self.cluster.pause(n, d).await?;
        }
        Ok(())
    }

    async fn node(&self, node: u32, op: &NodeOp) -> Result<NodeReport, CacheError> {
        if node == 0 || node > self.cluster.len() {
            return Err(CacheError::Backend(format!(
                "the cluster has nodes 1 to {}, not {node}",
                self.cluster.len()
            )));
        }
        let report = match op {
            NodeOp::Kill => self.cluster.kill_node(node).await?,
            NodeOp::Start => self.cluster.start_node(node, &RestoreFrom::Empty).await?,
            NodeOp::Restore(from) => {
                self.cluster.check_snapshot(Some(node), from)?;
                self.cluster.start_node(node, from).await?
            }
            NodeOp::Pause(d) => {
                self.cluster.pause(node, *d).await?;
                self.cluster.describe(node, 0).await
            }
        };
        self.refresh_layout().await;
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
