//! The cluster's node processes: ports, forming the cluster, reading its
//! layout, and the per-node operations faults are made of.
//!
//! Nodes are numbered from 1 in plans: masters first (`1..=masters`), then
//! the replicas, master by master (with one replica each, node `masters + i`
//! replicates node `i`). The numbers stay with the processes when roles
//! change: after node 1 is killed and its replica, node 4, took over, node 4
//! is a master and node 1, once back, its replica.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::super::redis::manager;
use super::super::redis::server::{ADMIN_USER, Credentials, RedisServer, ServerOpts};
use super::super::{CacheError, DeathCallback, Evicted, NodeReport, RestoreFrom, SessionRecord};
use crate::timeline::ClusterNode;

/// Administrative calls to one node: short, since polling a stopped node
/// must not hold a fault step for long.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long forming the cluster, a failover or a node's return may take.
const SETTLE: Duration = Duration::from_secs(30);
const SLOTS: u32 = 16384;

/// Node timeout of the cluster bus: a master unreachable this long is failed
/// over. Long enough that a loaded CI box does not fail one over by itself.
const NODE_TIMEOUT_MS: u32 = 2000;

struct Node {
    number: u32,
    server: RedisServer,
    admin: ConnectionManager,
}

pub struct Cluster {
    masters: u32,
    replicas: u32,
    creds: Credentials,
    nodes: Vec<Node>,
    /// Slot range of each original master, in order.
    ranges: Vec<(u16, u16)>,
    /// Cluster node ids by node number − 1 (kept across restarts in nodes.conf).
    ids: Mutex<Vec<String>>,
}

fn admin_err(e: redis::RedisError) -> CacheError {
    super::super::redis::classify(e, ADMIN_TIMEOUT)
}

/// A loopback port whose cluster-bus port (+10000) is free too.
fn free_node_port(taken: &BTreeSet<u16>) -> Result<u16, CacheError> {
    for _ in 0..200 {
        let p = super::super::redis::server::free_port().map_err(CacheError::io("no free loopback port"))?;
        if p >= 55535 || taken.contains(&p) || taken.contains(&(p + 10000)) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return Ok(p);
        }
    }
    Err(CacheError::Backend(
        "no free loopback port pair (PORT and PORT+10000) for a cluster node".into(),
    ))
}

/// Slot ranges as redis-cli splits them: equal parts, the last takes the rest.
pub fn split_slots(masters: u32) -> Vec<(u16, u16)> {
    let per = SLOTS / masters;
    (0..masters)
        .map(|i| {
            let lo = i * per;
            let hi = if i + 1 == masters { SLOTS - 1 } else { lo + per - 1 };
            (lo as u16, hi as u16)
        })
        .collect()
}

fn ranges_text(r: &[(u16, u16)]) -> String {
    r.iter()
        .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    port: u16,
    master: bool,
    failed: bool,
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeLine {
                port,
                master: flags.contains(&"master"),
                failed: flags.iter().any(|x| *x == "fail" || *x == "fail?"),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            })
        })
        .collect()
}

impl Cluster {
    /// Prepares (does not start) every node in its own folder under `dir`.
    pub fn prepare(dir: &Path, masters: u32, replicas: u32) -> Result<Cluster, CacheError> {
        crate::fsutil::ensure_dir(dir, 0o700)?;
        let creds = Credentials::generate()?;
        let total = masters * (1 + replicas);
        let mut taken = BTreeSet::new();
        let mut nodes = Vec::new();
        for number in 1..=total {
            let port = free_node_port(&taken)?;
            taken.insert(port);
            taken.insert(port + 10000);
            let opts = ServerOpts {
                args: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT_MS.to_string(),
                    // One node's slots lost must not stop the others: that
                    // is the partial outage under test.
                    "--cluster-require-full-coverage",
                    "no",
                    // A replica that fell behind may still take over (and
                    // lose what it had not received): the fault under test.
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
                cloud_acl: " +cluster|slots +cluster|shards +cluster|nodes +readonly +asking".into(),
                conf: format!("masteruser {ADMIN_USER}\nmasterauth {}\n", creds.admin_password()),
            };
            let server = RedisServer::prepare_with(&dir.join(format!("node-{number}")), port, creds.clone(), opts)?;
            let admin = manager(&server.admin_url(), ADMIN_TIMEOUT)?;
            nodes.push(Node { number, server, admin });
        }
        Ok(Cluster {
            masters,
            replicas,
            creds,
            nodes,
            ranges: split_slots(masters),
            ids: Mutex::new(Vec::new()),
        })
    }

    #[allow(clippy::len_without_is_empty)] // a cluster has at least one node
    pub fn len(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn node(&self, n: u32) -> &Node {
        &self.nodes[(n - 1) as usize]
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.server.port))
            .collect()
    }

    pub fn cloud_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.server.cloud_url()).collect()
    }

    pub fn cloud_password(&self) -> &str {
        self.creds.cloud_password()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.server.pid()).collect()
    }

    pub fn on_death(&self, f: DeathCallback) {
        for n in &self.nodes {
            n.server.on_death(f.clone());
        }
    }

    /// Which original master's range `slot` is in.
    pub fn range_of(&self, slot: u16) -> usize {
        self.ranges
            .iter()
            .position(|(lo, hi)| (*lo..=*hi).contains(&slot))
            .unwrap_or(0)
    }

    /// The master a replica node was set up to replicate.
    fn initial_master(&self, n: u32) -> Option<u32> {
        (n > self.masters).then(|| (n - self.masters - 1) / self.replicas.max(1) + 1)
    }

    async fn cmd<T: redis::FromRedisValue>(&self, n: u32, cmd: &redis::Cmd) -> Result<T, CacheError> {
        let mut c = self.node(n).admin.clone();
        cmd.query_async(&mut c).await.map_err(admin_err)
    }

    async fn wait_ping(&self, n: u32) -> Result<(), CacheError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.cmd::<String>(n, &redis::cmd("PING")).await.is_ok() {
                return Ok(());
            }
            let node = self.node(n);
            if let Some(status) = node.server.exited() {
                return Err(CacheError::Backend(format!(
                    "cluster node {n} (redis-server) exited at start ({status}); see {}",
                    node.server.log_path().display()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(CacheError::Backend(format!(
                    "cluster node {n} did not answer within 10 s of starting"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts every node and makes them one cluster: slots to the masters,
    /// every node introduced to the first, replicas to their masters; then
    /// waits until every node says the cluster is ok.
    pub async fn form(&self) -> Result<(), CacheError> {
        for n in &self.nodes {
            n.server.spawn(false)?;
        }
        for n in 1..=self.len() {
            self.wait_ping(n).await?;
        }
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            let m = i as u32 + 1;
            let _: () = self
                .cmd(m, redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(*lo).arg(*hi))
                .await?;
            // Distinct epochs up front, as redis-cli does, so no two masters
            // start a failover election from the same one.
            let _: () = self
                .cmd(m, redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(m))
                .await?;
        }
        let first = self.node(1).server.port;
        for n in 2..=self.len() {
            let _: () = self
                .cmd(n, redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(first))
                .await?;
        }
        let mut ids = Vec::new();
        for n in 1..=self.len() {
            ids.push(self.cmd::<String>(n, redis::cmd("CLUSTER").arg("MYID")).await?);
        }
        *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = ids.clone();
        // A replica can only be assigned once it knows its master.
        self.settle("every node to know every other", |c| {
            Box::pin(async move {
                for n in 1..=c.len() {
                    let text: String = c.cmd(n, redis::cmd("CLUSTER").arg("NODES")).await?;
                    let lines = parse_nodes(&text);
                    if lines.len() != c.nodes.len() || text.contains("handshake") || text.contains("noaddr") {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
        })
        .await?;
        for n in 1..=self.len() {
            if let Some(m) = self.initial_master(n) {
                let _: () = self
                    .cmd(n, redis::cmd("CLUSTER").arg("REPLICATE").arg(&ids[(m - 1) as usize]))
                    .await?;
            }
        }
        self.wait_ok().await
    }

    /// Polls `check` until it says true, for at most [`SETTLE`].
    async fn settle<F>(&self, what: &str, check: F) -> Result<(), CacheError>
    where
        F: for<'a> Fn(
            &'a Cluster,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, CacheError>> + Send + 'a>>,
    {
        let deadline = tokio::time::Instant::now() + SETTLE;
        let mut last = String::new();
        loop {
            match check(self).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = format!(" (last error: {e})"),
            }
            if tokio::time::Instant::now() > deadline {
                return Err(CacheError::Backend(format!(
                    "the cluster did not settle within {} s waiting for {what}{last}",
                    SETTLE.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn running(&self, n: u32) -> bool {
        self.node(n).server.pid().is_some()
    }

    /// Waits until every running node reports `cluster_state:ok` and every
    /// running replica's link to its master is up.
    pub async fn wait_ok(&self) -> Result<(), CacheError> {
        self.settle("cluster_state:ok on every running node", |c| {
            Box::pin(async move {
                for n in (1..=c.len()).filter(|n| c.running(*n)) {
                    let info: String = c.cmd(n, redis::cmd("CLUSTER").arg("INFO")).await?;
                    if !info.contains("cluster_state:ok") {
                        return Ok(false);
                    }
                    let repl: String = c.cmd(n, redis::cmd("INFO").arg("replication")).await?;
                    if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
        })
        .await
    }

    /// The layout as the first running node that answers sees it.
    pub async fn layout(&self) -> Result<Vec<ClusterNode>, CacheError> {
        let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let number_of = |id: &str| ids.iter().position(|x| x == id).map(|i| i as u32 + 1);
        let mut last = CacheError::Down("no cluster node is running".into());
        for n in (1..=self.len()).filter(|n| self.running(*n)) {
            let text: String = match self.cmd(n, redis::cmd("CLUSTER").arg("NODES")).await {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let lines = parse_nodes(&text);
            return Ok(self
                .nodes
                .iter()
                .map(|node| {
                    let line = lines.iter().find(|l| l.port == node.server.port);
                    let up = node.server.pid().is_some() && !line.is_some_and(|l| l.failed);
                    let role = match line {
                        _ if !up => "down",
                        Some(l) if l.master => "master",
                        Some(_) => "replica",
                        None => "down",
                    };
                    ClusterNode {
                        node: node.number,
                        port: node.server.port,
                        role: role.into(),
                        master: line.and_then(|l| l.master_id.as_deref()).and_then(number_of),
                        slots: line.map(|l| ranges_text(&l.slots)).unwrap_or_default(),
                    }
                })
                .collect());
        }
        Err(last)
    }

    /// Running masters, by the cluster's own account.
    pub async fn live_masters(&self) -> Vec<u32> {
        self.layout()
            .await
            .map(|l| l.iter().filter(|n| n.role == "master").map(|n| n.node).collect())
            .unwrap_or_default()
    }

    /// Every session key on node `n`, with the session and device it holds.
    pub async fn sessions_on(&self, n: u32) -> Result<Vec<(String, Option<Evicted>)>, CacheError> {
        let mut c = self.node(n).admin.clone();
        let keys = super::super::redis::scan_sessions(&mut c, ADMIN_TIMEOUT).await?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.get(k);
            }
            let values: Vec<Option<String>> = pipe.query_async(&mut c).await.map_err(admin_err)?;
            for (k, v) in chunk.iter().zip(values) {
                let ev = v
                    .and_then(|j| serde_json::from_str::<SessionRecord>(&j).ok())
                    .map(Evicted::of);
                out.push((k.clone(), ev));
            }
        }
        Ok(out)
    }

    pub async fn get_del(&self, n: u32, key: &str) -> Result<bool, CacheError> {
        let v: Option<String> = self.cmd(n, redis::cmd("GETDEL").arg(key)).await?;
        Ok(v.is_some())
    }

    pub fn kill_all(&self) -> Result<(), CacheError> {
        for n in &self.nodes {
            n.server.kill_now();
        }
        Ok(())
    }

    fn snapshot_path(&self, n: u32, name: &str) -> PathBuf {
        self.node(n).server.dir.join("snapshots").join(format!("{name}.rdb"))
    }

    /// A restore that cannot happen must not take anything down first.
    pub fn check_snapshot(&self, node: Option<u32>, from: &RestoreFrom) -> Result<(), CacheError> {
        let RestoreFrom::Snapshot(name) = from else {
            return Ok(());
        };
        let nodes: Vec<u32> = match node {
            Some(n) => vec![n],
            None => (1..=self.len()).collect(),
        };
        if nodes.iter().all(|n| self.snapshot_path(*n, name).exists()) {
            return Ok(());
        }
        let mut names: Vec<String> = std::fs::read_dir(self.node(nodes[0]).server.dir.join("snapshots"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rdb").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Err(CacheError::NoSnapshot(
            name.clone(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        ))
    }

    fn spawn_from(&self, n: u32, from: &RestoreFrom) -> Result<(), CacheError> {
        let node = self.node(n);
        node.server.kill_now();
        match from {
            RestoreFrom::Empty => node.server.spawn(false)?,
            RestoreFrom::Snapshot(name) => {
                std::fs::copy(self.snapshot_path(n, name), node.server.dump())
                    .map_err(CacheError::io(format!("cannot restore snapshot `{name}` on node {n}")))?;
                node.server.spawn(true)?
            }
        };
        Ok(())
    }

    /// Every node back (each keeps its place from its nodes.conf).
    pub async fn start_all(&self, from: &RestoreFrom) -> Result<(), CacheError> {
        for n in 1..=self.len() {
            self.spawn_from(n, from)?;
        }
        for n in 1..=self.len() {
            self.wait_ping(n).await?;
        }
        self.wait_ok().await
    }

    /// SAVE on every running node, kept under `name`; returns the sessions
    /// the masters hold.
    pub async fn snapshot(&self, name: &str) -> Result<u64, CacheError> {
        let mut total = 0;
        let masters = self.live_masters().await;
        for n in (1..=self.len()).filter(|n| self.running(*n)) {
            let _: () = self.cmd(n, &redis::cmd("SAVE")).await?;
            std::fs::copy(self.node(n).server.dump(), self.snapshot_path(n, name))
                .map_err(CacheError::io(format!("cannot keep snapshot `{name}` of node {n}")))?;
            if masters.contains(&n) {
                total += self.cmd::<u64>(n, &redis::cmd("DBSIZE")).await?;
            }
        }
        Ok(total)
    }

    pub async fn flush_masters(&self) -> Result<(), CacheError> {
        for n in self.live_masters().await {
            let _: () = self.cmd(n, &redis::cmd("FLUSHALL")).await?;
        }
        Ok(())
    }

    /// SIGSTOP node `n` now and SIGCONT it after `d`. A paused replica's
    /// master also drops its replication link at once, as a master does when
    /// a replica stops answering (`repl-timeout`): without that, the kernel
    /// would keep buffering the stream into the stopped process's socket and
    /// it would miss nothing. From then on writes reach the master only.
    pub async fn pause(&self, n: u32, d: Duration) -> Result<(), CacheError> {
        let master = self
            .layout()
            .await
            .ok()
            .and_then(|l| l.into_iter().find(|x| x.node == n))
            .filter(|x| x.role == "replica")
            .and_then(|x| x.master)
            .filter(|m| self.running(*m));
        let server = self.node(n).server.clone();
        server.signal(libc::SIGSTOP)?;
        if let Some(m) = master {
            // Other replicas of that master reconnect at once (a partial resync).
            let _: Result<u64, _> = self
                .cmd(m, redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"))
                .await;
        }
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if let Err(e) = server.signal(libc::SIGCONT) {
                tracing::warn!("cannot resume cluster node {n} after pause: {e}");
            }
        });
        Ok(())
    }

    /// What node `n` is now, for a report.
    pub async fn describe(&self, n: u32, sessions: u64) -> NodeReport {
        let layout = self.layout().await.unwrap_or_default();
        let me = layout.iter().find(|x| x.node == n);
        NodeReport {
            node: n,
            role: me.map_or("down".into(), |m| m.role.clone()),
            port: self.node(n).server.port,
            pid: self.node(n).server.pid(),
            slots: me.map(|m| m.slots.clone()).unwrap_or_default(),
            sessions,
            promoted: None,
            lost: Vec::new(),
        }
    }

    /// SIGKILLs node `n`. A master's writes are paused first and its
    /// sessions listed; if it has a replica, waits for one to take over and
    /// reports the sessions that replica does not have.
    pub async fn kill_node(&self, n: u32) -> Result<NodeReport, CacheError> {
        if !self.running(n) {
            return Err(CacheError::Down(format!("cluster node {n} is not running")));
        }
        let layout = self.layout().await?;
        let me = layout
            .iter()
            .find(|x| x.node == n)
            .cloned()
            .ok_or_else(|| CacheError::Backend(format!("node {n} is not in the cluster's layout")))?;
        let pid = self.node(n).server.pid();
        if me.role != "master" {
            let held: u64 = self.cmd(n, &redis::cmd("DBSIZE")).await.unwrap_or(0);
            self.node(n).server.kill_now();
            return Ok(NodeReport {
                node: n,
                role: me.role,
                port: me.port,
                pid,
                slots: String::new(),
                sessions: held,
                promoted: None,
                lost: Vec::new(),
            });
        }
        // No write may land between the listing and the kill.
        let _: Result<(), _> = self
            .cmd(n, redis::cmd("CLIENT").arg("PAUSE").arg(10_000).arg("WRITE"))
            .await;
        let held = self.sessions_on(n).await?;
        let replicas: Vec<u32> = layout
            .iter()
            .filter(|x| x.master == Some(n) && x.role == "replica")
            .map(|x| x.node)
            .collect();
        self.node(n).server.kill_now();
        let mut promoted = None;
        let mut lost: Vec<Evicted> = held.iter().filter_map(|(_, e)| e.clone()).collect();
        if !replicas.is_empty() {
            let p = self.wait_promotion(n, &replicas).await?;
            self.wait_ok().await?;
            // Every node must know of the promotion before the layout is read
            // (gossip takes a moment): the event must say what clients see.
            let port = self.node(p).server.port;
            self.settle(&format!("every node to see node {p} as a master"), move |c| {
                Box::pin(async move {
                    for m in (1..=c.len()).filter(|m| c.running(*m)) {
                        let text: String = c.cmd(m, redis::cmd("CLUSTER").arg("NODES")).await?;
                        if !parse_nodes(&text).iter().any(|l| l.port == port && l.master) {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })
            })
            .await?;
            let kept: BTreeSet<String> = self.sessions_on(p).await?.into_iter().map(|(k, _)| k).collect();
            lost = held
                .iter()
                .filter(|(k, _)| !kept.contains(k))
                .filter_map(|(_, e)| e.clone())
                .collect();
            promoted = Some(p);
        }
        lost.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(NodeReport {
            node: n,
            role: me.role,
            port: me.port,
            pid,
            slots: me.slots,
            sessions: held.len() as u64,
            promoted,
            lost,
        })
    }

    /// Waits until one of `replicas` says it is a master.
    async fn wait_promotion(&self, killed: u32, replicas: &[u32]) -> Result<u32, CacheError> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            for r in replicas {
                let role: Result<Vec<redis::Value>, _> = self.cmd(*r, &redis::cmd("ROLE")).await;
                if let Ok(v) = role
                    && let Some(redis::Value::BulkString(b)) = v.first()
                    && b == b"master"
                {
                    return Ok(*r);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(CacheError::Backend(format!(
                    "node {killed} was killed but none of its replicas ({}) took over within {} s",
                    replicas.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                    SETTLE.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Node `n` back (restarted if it runs), empty or from its snapshot;
    /// waits until the cluster is ok with it.
    pub async fn start_node(&self, n: u32, from: &RestoreFrom) -> Result<NodeReport, CacheError> {
        self.spawn_from(n, from)?;
        self.wait_ping(n).await?;
        self.wait_ok().await?;
        let sessions: u64 = self.cmd(n, &redis::cmd("DBSIZE")).await?;
        Ok(self.describe(n, sessions).await)
    }
}

/// Node numbers by the slot range each serves in `layout` (for reports).
pub fn owners(layout: &[ClusterNode]) -> BTreeMap<(u16, u16), u32> {
    let mut out = BTreeMap::new();
    for n in layout.iter().filter(|n| n.role == "master") {
        for r in n.slots.split(',').filter(|s| !s.is_empty()) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                out.insert((a, b), n.node);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_split_like_redis_cli() {
        assert_eq!(split_slots(3), vec![(0, 5460), (5461, 10921), (10922, 16383)]);
        assert_eq!(split_slots(1), vec![(0, 16383)]);
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master,fail - 0 0 2 connected 5461-10921 [5462->-c3]
c3 127.0.0.1:7004@17004,host slave a1 0 0 1 connected
";
        let l = parse_nodes(text);
        assert_eq!(l.len(), 3);
        assert!(l[0].master && !l[0].failed && l[0].slots == vec![(0, 5460)]);
        assert!(l[1].failed && l[1].slots == vec![(5461, 10921)]);
        assert_eq!(
            (l[2].port, l[2].master, l[2].master_id.as_deref()),
            (7004, false, Some("a1"))
        );
    }
}
