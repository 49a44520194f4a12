//! Builds what a matrix cell runs against from a bench file: the session
//! cache, the cloud and one [`DeviceHandle`] per bench device. Each cell gets
//! a fresh world, so nothing leaks from one cell into the next.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::device::DeviceHandle;
use crate::bench::{Bench, CacheKind, Clock, ConsoleKind, FlashCfg, PowerCfg, PowerState, ResetCfg, SimConsoleKind};
use crate::cache::memory::MemoryCache;
use crate::cache::redis::RedisCache;
use crate::cache::{Cache, SessionCache};
use crate::cloud::durable::DurableKeys;
use crate::cloud::transport::{Datagram, MemNet};
use crate::cloud::{CloudConfig, CloudHandle, Server, serve};
use crate::drivers::Console;
use crate::drivers::console;
use crate::drivers::serial::SerialConsole;
use crate::sim::{SimBoard, SimFlasher, SimPower, SimReset};
use crate::timeline::{EventKind, Source, Timeline};

/// A bench that cannot be brought up: a rig or infrastructure fault (exit 3).
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("device {device}: {what}")]
    Device { device: String, what: String },
    #[error("{0}")]
    Cloud(String),
}

/// Everything a cell runs against.
pub struct World {
    pub devices: Vec<DeviceHandle>,
    pub cache: Cache,
    pub cloud: CloudHandle,
    pub safe_state: PowerState,
    cloud_task: Option<JoinHandle<()>>,
    shutdown: Option<oneshot::Sender<()>>,
    _boards: Vec<SimBoard>,
}

/// Address of the cloud on the in-process network.
const SIM_CLOUD: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 5684);

fn sim_board_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            0,
            1 + (i / 250) as u8,
            1 + (i % 250) as u8,
        )),
        40_000,
    )
}

/// How simulated boards reach the cloud: an in-process network on the
/// virtual clock (time must stay under the runtime's control), real UDP
/// sockets on loopback on the real clock (the same path a real bench uses).
enum Network {
    Mem(MemNet),
    Udp,
}

fn udp(addr: &str) -> std::io::Result<tokio::net::UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(std_sock)
}

impl Network {
    fn for_bench(bench: &Bench) -> Network {
        match bench.clock {
            Clock::Virtual => Network::Mem(MemNet::new(bench.cloud.latency.0)),
            Clock::Real => Network::Udp,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Network::Mem(_) => "in-process network",
            Network::Udp => "UDP",
        }
    }

    /// The cloud's socket and the address boards send to.
    fn cloud_socket(&self, listen: Option<&str>) -> Result<(Arc<dyn Datagram>, SocketAddr), String> {
        match self {
            Network::Mem(net) => {
                let s = net
                    .bind(SIM_CLOUD)
                    .map_err(|e| format!("cannot bind the cloud on the simulated network: {e}"))?;
                Ok((Arc::new(s), SIM_CLOUD))
            }
            Network::Udp => {
                let listen = listen.unwrap_or("127.0.0.1:0");
                let s = udp(listen).map_err(|e| format!("cannot listen on UDP {listen}: {e}"))?;
                let mut addr = s.local_addr().map_err(|e| e.to_string())?;
                if addr.ip().is_unspecified() {
                    // Listening on all interfaces; local boards use loopback.
                    addr.set_ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                }
                Ok((Arc::new(s), addr))
            }
        }
    }

    fn board_socket(&self, i: usize) -> Result<Arc<dyn Datagram>, String> {
        match self {
            Network::Mem(net) => net
                .bind(sim_board_addr(i))
                .map(|s| Arc::new(s) as Arc<dyn Datagram>)
                .map_err(|e| format!("cannot bind its simulated modem: {e}")),
            Network::Udp => udp("127.0.0.1:0")
                .map(|s| Arc::new(s) as Arc<dyn Datagram>)
                .map_err(|e| format!("cannot bind its UDP socket: {e}")),
        }
    }
}

/// The power driver of a hardware device. A driver that must set its line
/// when it opens it (a GPIO pin becomes an output) sets it to `initial`: the
/// safe state for a run, the requested state for `rig power` (so switching
/// a powered board on does not first switch it off).
pub fn build_power(
    d: &crate::bench::Device,
    bench: &Bench,
    initial: Option<bool>,
) -> Result<Box<dyn crate::drivers::Power>, String> {
    use crate::drivers::power::{command::CommandPower, gpio::GpioPower, serial_relay::SerialRelayPower};
    let err = |s: String| s;
    let safe_on = bench.safe_state == PowerState::On;
    let power: Box<dyn crate::drivers::Power> = match &d.power {
        PowerCfg::Gpio {
            pin,
            active_low,
            settle,
        } => Box::new(
            GpioPower::open_at(
                *pin,
                *active_low,
                settle.map_or(Duration::ZERO, |s| s.0),
                safe_on,
                initial.unwrap_or(safe_on),
            )
            .map_err(|e| e.to_string())?,
        ),
        PowerCfg::SerialRelay { port, channel } => {
            Box::new(SerialRelayPower::new(port.into(), *channel, safe_on).map_err(|e| e.to_string())?)
        }
        PowerCfg::Command(c) => Box::new(CommandPower::new(
            &d.id,
            &c.on,
            &c.off,
            crate::drivers::power::command::DEFAULT_TIMEOUT,
        )),
        PowerCfg::Sim => {
            return Err(err(format!(
                "board `{}` is hardware; it cannot use simulated power",
                d.board
            )));
        }
    };
    Ok(power)
}

/// Builds a real bench device's drivers from its bench entry. Without
/// `with_power` the device has no power driver at all, so hands-on console,
/// reset and flash commands leave the board's supply exactly as it was.
pub fn hardware_device(
    d: &crate::bench::Device,
    bench: &Bench,
    timeline: &Timeline,
    with_power: bool,
) -> Result<DeviceHandle, WorldError> {
    use crate::drivers::flash::CommandFlasher;
    let err = |what: String| WorldError::Device {
        device: d.id.clone(),
        what,
    };
    let power = if with_power {
        Some(build_power(d, bench, None).map_err(err)?)
    } else {
        None
    };
    let flasher: Box<dyn crate::drivers::Flasher> = match &d.flash {
        FlashCfg::Command { command } => Box::new(CommandFlasher::new(&d.id, command)),
        FlashCfg::ProbeRs { probe, chip } => {
            Box::new(crate::drivers::probe::ProbeRsFlasher::new(probe, chip).map_err(|e| err(e.to_string()))?)
        }
        FlashCfg::Sim => {
            return Err(err(format!(
                "board `{}` is hardware; it cannot use a simulated flasher",
                d.board
            )));
        }
    };
    let port = d
        .console
        .port
        .clone()
        .ok_or_else(|| err("a hardware console needs `port:`".into()))?;
    let patterns: console::PatternSlot = Arc::new(Mutex::new(None));
    let console = console::watch(
        d.id.clone(),
        Box::new(SerialConsole::open(Path::new(&port), d.console.baud.unwrap_or(115_200))),
        timeline.clone(),
        patterns.clone(),
    );
    let reset: Option<Box<dyn crate::drivers::Reset>> = match &d.reset {
        None => None,
        Some(ResetCfg::Gpio { pin, active_low, pulse }) => Some(Box::new(
            crate::drivers::reset::GpioReset::open(*pin, *active_low, pulse.0).map_err(|e| err(e.to_string()))?,
        )),
        Some(ResetCfg::Console { command }) => Some(Box::new(crate::drivers::reset::ConsoleReset::new(
            console.sender(),
            command,
        ))),
        Some(ResetCfg::ProbeRs) => match &d.flash {
            FlashCfg::ProbeRs { probe, chip } => Some(Box::new(crate::drivers::probe::ProbeRsReset {
                probe: probe.clone(),
                chip: chip.clone(),
            })),
            _ => {
                return Err(err(
                    "`reset: { kind: probe-rs }` needs `flash: { kind: probe-rs, ... }` to name the probe and chip"
                        .into(),
                ));
            }
        },
    };
    Ok(DeviceHandle::new(
        d.id.clone(),
        power,
        flasher,
        reset,
        console,
        patterns,
        timeline.clone(),
    ))
}

impl World {
    /// Must run inside the cell's runtime (tasks are spawned on it). `dir`
    /// holds the cell's files: the Redis server's data and snapshots, and the
    /// durable key store.
    pub async fn build(bench: &Bench, seed: u64, timeline: &Timeline, dir: &Path) -> Result<World, WorldError> {
        crate::fsutil::ensure_dir(dir, 0o755)
            .map_err(|e| WorldError::Cloud(format!("cannot create the cell folder: {e}")))?;
        let backend: Arc<dyn SessionCache> = match bench.cloud.cache.kind {
            CacheKind::Memory => Arc::new(MemoryCache::new(seed)),
            CacheKind::Redis => {
                let redis = RedisCache::start_in(&dir.join("redis"), seed)
                    .await
                    .map_err(|e| WorldError::Cloud(format!("session cache: {e}")))?;
                timeline.emit(
                    None,
                    Source::Cache,
                    EventKind::CacheStart {
                        backend: "redis".into(),
                        pid: redis.server_pid(),
                    },
                );
                Arc::new(redis)
            }
        };
        let durable = DurableKeys::with_file(&dir.join("durable-keys.jsonl"))
            .map_err(|e| WorldError::Cloud(format!("durable key store: {e}")))?;
        let cache = Cache::new(backend.clone(), timeline.clone());
        let cloud = CloudHandle::new(bench.cloud.mitigation, timeline.clone());
        let keys = bench.devices.iter().map(|d| (d.id.clone(), d.key.clone())).collect();
        let net = Network::for_bench(bench);
        let (socket, cloud_addr) = net
            .cloud_socket(bench.cloud.listen.as_deref())
            .map_err(WorldError::Cloud)?;
        tracing::info!("cloud listening on {cloud_addr} ({})", net.name());
        // A cloud on a real socket is reachable by every local user: its
        // secrets come from the OS. Only the in-process network of the
        // virtual clock uses the seed, so a seed reproduces a run.
        let secrets = match bench.clock {
            Clock::Virtual => crate::cloud::server::Secrets::Seeded(seed),
            Clock::Real => crate::cloud::server::Secrets::Os,
        };
        let mut cfg = CloudConfig::with_secrets(keys, secrets);
        cfg.replay_floor = bench.cloud.replay_window == crate::bench::ReplayWindow::Process;
        let server = Server::new(cfg, backend, durable, cloud.clone(), timeline.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let cloud_task = tokio::spawn(serve(socket, server, async {
            let _ = rx.await;
        }));

        let mut devices = Vec::new();
        let mut boards = Vec::new();
        for (i, d) in bench.devices.iter().enumerate() {
            let unsupported = |what: String| WorldError::Device {
                device: d.id.clone(),
                what,
            };
            if !d.is_sim {
                devices.push(hardware_device(d, bench, timeline, true)?);
                continue;
            }
            if d.power != PowerCfg::Sim || d.flash != FlashCfg::Sim || d.console.kind != ConsoleKind::Sim {
                return Err(unsupported(
                    "a simulated board needs simulated power, flash and console (omit those sections)".into(),
                ));
            }
            let sock = net.board_socket(i).map_err(unsupported)?;
            let patterns: console::PatternSlot = Arc::new(Mutex::new(None));
            let (board, rig_console): (SimBoard, Box<dyn Console>) = match bench.sim.console {
                SimConsoleKind::Channel => {
                    let (b, c) = SimBoard::new(&d.id, d.key.clone(), seed, sock, cloud_addr, bench.sim.time_scale);
                    (b, Box::new(c))
                }
                SimConsoleKind::Pty => {
                    // A stable path in the run folder, like /dev/serial/by-id.
                    let link = dir.join("consoles").join(&d.id);
                    let b = SimBoard::with_pty(
                        &d.id,
                        d.key.clone(),
                        seed,
                        sock,
                        cloud_addr,
                        bench.sim.time_scale,
                        link.clone(),
                    );
                    (b, Box::new(SerialConsole::open(&link, 115_200)))
                }
            };
            let console = console::watch(d.id.clone(), rig_console, timeline.clone(), patterns.clone());
            devices.push(DeviceHandle::new(
                d.id.clone(),
                Some(Box::new(SimPower(board.clone()))),
                Box::new(SimFlasher(board.clone())),
                Some(Box::new(SimReset(board.clone()))),
                console,
                patterns,
                timeline.clone(),
            ));
            boards.push(board);
        }
        Ok(World {
            devices,
            cache,
            cloud,
            safe_state: bench.safe_state,
            cloud_task: Some(cloud_task),
            shutdown: Some(tx),
            _boards: boards,
        })
    }

    pub fn device(&self, id: &str) -> Option<&DeviceHandle> {
        self.devices.iter().find(|d| d.id == id)
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

    /// Stops the cloud; the boards stop when the world is dropped.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.cloud_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
