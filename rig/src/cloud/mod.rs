//! The local device cloud: a datagram server that authenticates devices,
//! keeps their sessions in the session cache and counts every byte.
//!
//! # Layout
//! - [`transport`]: the datagram seam (UDP socket or in-process network).
//! - [`server`]: the protocol state machine: cookies, handshakes, records,
//!   what to do with a record for a session the cache does not know.
//! - [`durable`]: the durable key store behind the `durable` mitigation.
//! - [`shards`]: several workers on one socket, sessions partitioned by id.
//!
//! The wire format lives in the `rig-proto` crate and `docs/protocol.md`.

pub mod durable;
pub mod external;
pub mod server;
pub mod shards;
pub mod transport;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::timeline::{EventKind, Source, Timeline};

pub use server::{CloudConfig, Secrets, Server, serve};

/// Workers of a real-clock cloud: one per core (2 to 16). More do not
/// overlap more cache round trips than bursts already do, and each one more
/// costs wakeups and shrinks every worker's bursts (`rig bench`, 2 cores:
/// Redis 2 workers 39 % of the echo floor, 16 workers 33 %). The reconnect
/// burst is absorbed by the group's sockets, however few workers read them
/// (`shards::SOCKETS`), which a single receive loop (1 worker) has not: at
/// least 2.
pub fn real_clock_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 16)
}

/// What the cloud does with a record for a session its cache does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mitigation {
    /// Drop it silently: the behaviour during the incident.
    #[default]
    Drop,
    /// Answer "session unknown"; only firmware that honours it benefits.
    Reject,
    /// Look the session up in the durable key store and heal the cache, so
    /// even unmodified firmware resumes.
    Durable,
}

impl fmt::Display for Mitigation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mitigation::Drop => "drop",
            Mitigation::Reject => "reject",
            Mitigation::Durable => "durable",
        })
    }
}

/// The runner's handle on a running cloud: its settings can change between
/// plan steps.
#[derive(Clone)]
pub struct CloudHandle {
    mitigation: Arc<Mutex<Mitigation>>,
    timeline: Timeline,
}

impl CloudHandle {
    pub fn new(initial: Mitigation, timeline: Timeline) -> CloudHandle {
        CloudHandle {
            mitigation: Arc::new(Mutex::new(initial)),
            timeline,
        }
    }

    pub fn mitigation(&self) -> Mitigation {
        *self.mitigation.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_mitigation(&self, m: Mitigation) {
        *self.mitigation.lock().unwrap_or_else(|p| p.into_inner()) = m;
        self.timeline.emit(
            None,
            Source::Cloud,
            EventKind::CloudConfig {
                mitigation: m.to_string(),
            },
        );
    }
}

/// A cloud serving on a socket, and how to stop it.
pub struct RunningCloud {
    pub handle: CloudHandle,
    /// Its administrative handle on the session cache.
    pub cache: crate::cache::Cache,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl RunningCloud {
    /// Stops serving and waits (bounded) for the receive loop to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The rig's administrative handle on a cloud's cache: a cache that is a
/// server process is announced with a `cache.start` naming its pid, a
/// cluster with its layout.
pub fn admin_cache(cache: &Arc<dyn crate::cache::SessionCache>, timeline: &Timeline) -> crate::cache::Cache {
    if let Some(pid) = cache.pid() {
        timeline.emit(
            None,
            Source::Cache,
            EventKind::CacheStart {
                backend: cache.backend().into(),
                pid: Some(pid),
            },
        );
    }
    let admin = crate::cache::Cache::new(cache.clone(), timeline.clone());
    admin.announce_topology();
    admin
}

/// Starts the cloud on `socket` with `cache` behind it: the one way `rig
/// run`, `rig cloud serve` and `rig bench` bring a cloud up. A cache that is
/// a server process is announced with a `cache.start` naming its pid.
pub fn start(
    socket: Arc<dyn transport::Datagram>,
    cfg: CloudConfig,
    cache: Arc<dyn crate::cache::SessionCache>,
    durable: durable::DurableKeys,
    mitigation: Mitigation,
    timeline: &Timeline,
) -> RunningCloud {
    let admin = admin_cache(&cache, timeline);
    let handle = CloudHandle::new(mitigation, timeline.clone());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = rx.await;
    };
    let task = if cfg.workers > 1 {
        let servers = Server::sharded(cfg, cache, durable, handle.clone(), timeline.clone());
        let sockets = shards::group(socket, servers.len());
        tokio::spawn(shards::serve(sockets, servers, stopped))
    } else {
        let server = Server::new(cfg, cache, durable, handle.clone(), timeline.clone());
        tokio::spawn(serve(socket, server, stopped))
    };
    RunningCloud {
        handle,
        cache: admin,
        task,
        stop,
    }
}
