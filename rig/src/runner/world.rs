//! Builds what a matrix cell runs against from a bench file: the session
//! cache, the cloud and one [`DeviceHandle`] per bench device (built by the
//! device's board kind). Each cell gets a fresh world, so nothing leaks from
//! one cell into the next.

use std::path::Path;
use std::time::Duration;

use super::device::DeviceHandle;
use crate::bench::{Bench, Clock, PowerState, ReplayWindow};
use crate::board::{BoardError, BuildEnv, Network};
use crate::cache::{Cache, CacheError, OpenCtx};
use crate::cloud::durable::DurableKeys;
use crate::cloud::external::relay::Relay;
use crate::cloud::external::{self, ExternalCloud};
use crate::cloud::{CloudConfig, CloudHandle, RunningCloud, Secrets};
use crate::timeline::Timeline;

/// The address the relay's ports are opened on: the host of `cloud.listen`
/// (loopback by default).
fn relay_host(listen: Option<&str>) -> std::net::IpAddr {
    use std::net::ToSocketAddrs as _;
    listen
        .and_then(|l| l.to_socket_addrs().ok()?.next())
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// A bench that cannot be brought up: a rig or infrastructure fault (exit 3).
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("device {device}: {source}")]
    Device {
        device: String,
        #[source]
        source: BoardError,
    },
    #[error("cannot create the cell folder: {0}")]
    Folder(#[from] crate::fsutil::FsError),
    #[error("session cache: {0}")]
    Cache(#[from] CacheError),
    #[error("durable key store: {0}")]
    Durable(#[source] std::io::Error),
    #[error("cannot open the cloud's socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{0}")]
    External(#[from] crate::cloud::external::ExternalError),
    #[error("cannot open the relay to the external cloud: {0}")]
    Relay(#[source] std::io::Error),
}

/// Everything a cell runs against.
pub struct World {
    pub devices: Vec<DeviceHandle>,
    by_id: std::collections::HashMap<String, usize>,
    pub cache: Cache,
    cloud: CloudHandle,
    pub safe_state: PowerState,
    running: Option<RunningCloud>,
    /// A team's cloud (`cloud: { external }`) and the relay in front of it.
    external: Option<tokio::sync::Mutex<ExternalCloud>>,
    relay: Option<Relay>,
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl World {
    /// Must run inside the cell's runtime (tasks are spawned on it). `dir`
    /// holds the cell's files: the cache server's data and snapshots, the
    /// durable key store, consoles' stable links.
    /// The durable key store is written only if the bench starts with the
    /// `durable` mitigation or `uses_durable` (a step switches to it).
    pub async fn build(
        bench: &Bench,
        seed: u64,
        timeline: &Timeline,
        dir: &Path,
        uses_durable: bool,
    ) -> Result<World, WorldError> {
        crate::fsutil::ensure_dir(dir, 0o755)?;
        let cache = crate::cache::open(&bench.cloud.cache, &OpenCtx { dir, seed }).await?;
        let net = Network::for_bench(bench);
        let (mut running, mut external, mut relay) = (None, None, None);
        let (admin, handle, cloud_addr) = match &bench.cloud.external {
            Some(x) => {
                // A cloud that does not log its connects leaves the boards'
                // consoles to say so.
                timeline.set_connects_from_console(x.log.connected.is_none());
                let admin = crate::cloud::admin_cache(&cache, timeline);
                let ids = bench.devices.iter().map(|d| d.id.clone());
                let ext = ExternalCloud::start(
                    external::Setup {
                        cfg: x,
                        bench_path: std::path::absolute(&bench.source).unwrap_or_else(|_| bench.source.clone().into()),
                        cell_dir: dir,
                        cache_url: cache.cloud_url(),
                        seed,
                        timeline,
                        patterns: std::sync::Arc::new(external::logs::Patterns::new(&x.log, ids)),
                    },
                    bench.cloud.mitigation,
                )
                .await?;
                let host = relay_host(bench.cloud.listen.as_deref());
                let ports: Vec<(String, u16)> = bench
                    .devices
                    .iter()
                    .map(|d| (d.id.clone(), d.cloud_port.unwrap_or(0)))
                    .collect();
                let r = Relay::open(host, &ports, ext.upstream(), x.tcp, timeline, seed)
                    .await
                    .map_err(WorldError::Relay)?;
                tracing::info!(
                    "external cloud at {}, relayed for {} boards",
                    ext.upstream(),
                    ports.len()
                );
                let upstream = ext.upstream();
                external = Some(tokio::sync::Mutex::new(ext));
                relay = Some(r);
                (
                    admin,
                    CloudHandle::new(bench.cloud.mitigation, timeline.clone()),
                    upstream,
                )
            }
            None => {
                timeline.set_connects_from_console(false);
                let durable = if uses_durable || bench.cloud.mitigation == crate::cloud::Mitigation::Durable {
                    DurableKeys::with_file(&dir.join("durable-keys.jsonl")).map_err(WorldError::Durable)?
                } else {
                    DurableKeys::off()
                };
                let keys = bench.devices.iter().map(|d| (d.id.clone(), d.key.clone())).collect();
                let (socket, cloud_addr) = net
                    .cloud_socket(bench.cloud.listen.as_deref())
                    .map_err(WorldError::Socket)?;
                tracing::info!("cloud listening on {cloud_addr} ({})", net.name());
                // A cloud on a real socket is reachable by every local user: its
                // secrets come from the OS. Only the in-process network of the
                // virtual clock uses the seed, so a seed reproduces a run.
                let secrets = match bench.clock {
                    Clock::Virtual => Secrets::Seeded(seed),
                    Clock::Real => Secrets::Os,
                };
                let mut cfg = CloudConfig::with_secrets(keys, secrets);
                cfg.replay_floor = bench.cloud.replay_window == ReplayWindow::Process;
                cfg.per_exchange = bench.journal.datagrams == crate::bench::Datagrams::PerExchange;
                // One receive loop keeps the virtual clock deterministic; on a real
                // socket, workers overlap their cache round trips.
                if bench.clock == Clock::Real {
                    cfg.workers = crate::cloud::real_clock_workers();
                }
                let r = crate::cloud::start(socket, cfg, cache, durable, bench.cloud.mitigation, timeline);
                let out = (r.cache.clone(), r.handle.clone(), cloud_addr);
                running = Some(r);
                out
            }
        };

        let mut devices = Vec::new();
        let mut keep = Vec::new();
        for d in &bench.devices {
            let index = d.index;
            let env = BuildEnv {
                bench,
                timeline,
                seed,
                cell_dir: dir,
                network: &net,
                cloud_addr: relay.as_ref().and_then(|r| r.addr(&d.id)).unwrap_or(cloud_addr),
                index,
            };
            let built = d.kind.build(d, &env).map_err(|source| WorldError::Device {
                device: d.id.clone(),
                source,
            })?;
            devices.push(built.handle);
            keep.extend(built.keep);
        }
        let by_id = devices.iter().enumerate().map(|(i, d)| (d.id.clone(), i)).collect();
        Ok(World {
            by_id,
            devices,
            cache: admin,
            cloud: handle,
            safe_state: bench.safe_state,
            running,
            external,
            relay,
            _keep: keep,
        })
    }

    pub fn device(&self, id: &str) -> Option<&DeviceHandle> {
        // An index, not a scan: fleet plans look devices up per step.
        self.by_id.get(id).map(|&i| &self.devices[i])
    }

    /// Drives every device to the bench's safe power state. Returns the
    /// failures (device, error); the caller decides how loud to be.
    pub async fn enforce_safe_state(&self) -> Vec<(String, String)> {
        let on = self.safe_state == PowerState::On;
        let results = futures::future::join_all(self.devices.iter().map(|d| d.power(on))).await;
        self.devices
            .iter()
            .zip(results)
            .filter_map(|(d, r)| r.err().map(|e| (d.id.clone(), e.to_string())))
            .collect()
    }

    /// A plan's `cloud: { mitigation }`.
    pub async fn set_mitigation(&self, m: crate::cloud::Mitigation) -> Result<(), String> {
        match &self.external {
            Some(x) => x.lock().await.set_mitigation(m).await,
            None => {
                self.cloud.set_mitigation(m);
                Ok(())
            }
        }
    }

    /// A plan's `network:` step; `None` where no relay stands between the
    /// boards and the cloud (checked when the plan is validated).
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// Stops the cloud; the boards stop when the world is dropped.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        // The boards are off: let what they sent last reach the cloud, then
        // stop the cloud before the relay, so the relay counts every
        // datagram the cloud sent.
        if let Some(r) = &self.relay {
            r.quiesce(Duration::from_millis(250), Duration::from_secs(3)).await;
        }
        if let Some(x) = self.external.take() {
            x.into_inner().stop().await;
        }
        if let Some(r) = self.relay.take() {
            r.close().await;
        }
    }
}
