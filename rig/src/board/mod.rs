//! Board kinds: what a bench device *is*, and so where its power, console,
//! flash and reset come from.
//!
//! - [`sim`]: a simulated board inside the rig (the firmware model of a
//!   fixture's `behaviour:`), on the virtual clock or the real one.
//! - [`qemu`]: an emulated Cortex-M board running a real firmware image,
//!   one `qemu-system-arm` process per device.
//! - [`hardware`]: a real board on the bench, driven by the backends of its
//!   `power:`, `console:`, `flash:` and `reset:` sections.
//!
//! A kind is one folder implementing [`BoardKind`] plus one line in
//! [`KINDS`]. A device's kind is its `kind:` if given, else the first kind
//! in [`KINDS`] that claims its `board:` name (`board: sim` is a simulated
//! board; any other name is hardware).

pub mod hardware;
pub mod qemu;
pub mod sim;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::bench::{Bench, Clock, Device};
use crate::cloud::transport::{Datagram, MemNet};
use crate::drivers::console::serial::SerialCfg;
use crate::drivers::flash::FlashCfg;
use crate::drivers::power::PowerCfg;
use crate::drivers::reset::ResetCfg;
use crate::drivers::{Check, DriverError, Power};
use crate::runner::device::DeviceHandle;
use crate::timeline::Timeline;

/// Every board kind, in the order they claim `board:` names. One line each.
pub static KINDS: &[&dyn BoardKind] = &[&sim::Sim, &qemu::Qemu, &hardware::Hardware];

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static dyn BoardKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

/// The kind of a device without `kind:`: the first that claims its board.
pub fn kind_for_board(board: &str) -> &'static dyn BoardKind {
    KINDS
        .iter()
        .copied()
        .find(|k| k.claims(board))
        .unwrap_or(&hardware::Hardware)
}

/// The driver sections of a device entry (used by the kinds that drive
/// real hardware; the others refuse them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drivers {
    pub power: Option<PowerCfg>,
    pub console: Option<SerialCfg>,
    pub flash: Option<FlashCfg>,
    pub reset: Option<ResetCfg>,
}

impl Drivers {
    /// The names of the sections that are present.
    pub fn present(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.power.is_some() {
            v.push("power");
        }
        if self.console.is_some() {
            v.push("console");
        }
        if self.flash.is_some() {
            v.push("flash");
        }
        if self.reset.is_some() {
            v.push("reset");
        }
        v
    }
}

/// Why a device cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cannot bind its network socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("`{device}` is a {kind} board; it exists only inside `rig run`")]
    NotHandsOn { device: String, kind: &'static str },
}

/// How boards reach the cloud: an in-process network on the virtual clock
/// (time must stay under the runtime's control), real UDP sockets on
/// loopback on the real clock (the path a real bench uses).
pub enum Network {
    Mem(MemNet),
    Udp,
}

/// Address of the cloud on the in-process network.
pub const SIM_CLOUD: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 5684);

fn mem_board_addr(i: usize) -> SocketAddr {
    // 127.0.x.y for the first 63,500 boards (what runs have always used),
    // then 127.a.b.c: a fleet of a million boards still has one address each.
    const FIRST: usize = 254 * 250;
    let ip = if i < FIRST {
        std::net::Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
    } else {
        let j = i - FIRST;
        std::net::Ipv4Addr::new(
            127,
            1 + (j / 62_500) as u8,
            ((j / 250) % 250) as u8,
            1 + (j % 250) as u8,
        )
    };
    SocketAddr::new(std::net::IpAddr::V4(ip), 40_000)
}

/// A non-blocking UDP socket for the runtime.
pub fn udp(addr: &str) -> std::io::Result<tokio::net::UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(std_sock)
}

impl Network {
    pub fn for_bench(bench: &Bench) -> Network {
        match bench.clock {
            Clock::Virtual => Network::Mem(MemNet::new(bench.cloud.latency.0)),
            Clock::Real => Network::Udp,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Network::Mem(_) => "in-process network",
            Network::Udp => "UDP",
        }
    }

    /// The cloud's socket and the address boards send to.
    pub fn cloud_socket(&self, listen: Option<&str>) -> std::io::Result<(Arc<dyn Datagram>, SocketAddr)> {
        match self {
            Network::Mem(net) => Ok((Arc::new(net.bind(SIM_CLOUD)?), SIM_CLOUD)),
            Network::Udp => {
                let s = crate::cloud::transport::cloud_udp(listen.unwrap_or("127.0.0.1:0"))?;
                let mut addr = s.local_addr()?;
                if addr.ip().is_unspecified() {
                    // Listening on all interfaces; local boards use loopback.
                    addr.set_ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                }
                Ok((Arc::new(s), addr))
            }
        }
    }

    /// The network socket of the `i`-th board.
    pub fn board_socket(&self, i: usize) -> std::io::Result<Arc<dyn Datagram>> {
        match self {
            Network::Mem(net) => Ok(Arc::new(net.bind(mem_board_addr(i))?)),
            Network::Udp => Ok(Arc::new(udp("127.0.0.1:0")?)),
        }
    }
}

/// What a kind may use to build a device for a run.
pub struct BuildEnv<'a> {
    pub bench: &'a Bench,
    pub timeline: &'a Timeline,
    pub seed: u64,
    /// The cell's folder (ptys' stable links, emulator files, ...).
    pub cell_dir: &'a Path,
    pub network: &'a Network,
    pub cloud_addr: SocketAddr,
    /// The device's position on the bench.
    pub index: usize,
}

/// A device built for a run: the handle the runner drives, and whatever
/// must live as long as the cell (a simulated board, an emulator).
pub struct Built {
    pub handle: DeviceHandle,
    pub keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// A kind of board.
pub trait BoardKind: std::fmt::Debug + Send + Sync {
    /// The `kind:` name (`sim`, `hardware`).
    fn name(&self) -> &'static str;

    /// Whether a device with this `board:` name and no `kind:` is of this kind.
    fn claims(&self, board: &str) -> bool;

    /// Whether a device of this kind may do without `key:` (the simulation
    /// derives one per device id).
    fn derives_key(&self) -> bool {
        false
    }

    /// Whether it can run on `clock`.
    fn runs_on(&self, clock: Clock) -> bool;

    /// Whether it is physical hardware: a run on it takes the bench lock.
    fn physical(&self) -> bool;

    /// What is wrong with a device entry of this kind (its driver
    /// sections): one message per problem, reported at the device's line.
    fn validate(&self, id: &str, board: &str, drivers: &Drivers) -> Vec<String>;

    /// What the device uses that another device must not (relay lines,
    /// console ports), with the role it plays.
    fn claims_resources(&self, _d: &Device) -> Vec<(String, &'static str)> {
        Vec::new()
    }

    /// Why `f` cannot be flashed onto `d` (checked with the plan, so a
    /// missing image is a usage error before anything runs).
    fn check_fixture(&self, _d: &Device, _f: &crate::fixture::Fixture) -> Option<String> {
        None
    }

    /// What `rig doctor` checks for the device.
    fn checks(&self, _d: &Device) -> Vec<Check> {
        Vec::new()
    }

    /// Builds the device for a run (inside the cell's runtime).
    fn build(&self, d: &Device, env: &BuildEnv<'_>) -> Result<Built, BoardError>;

    /// Builds the device for `rig console|reset|flash`, without a power
    /// driver: those leave the supply as it is.
    fn hands_on(&self, d: &Device, _bench: &Bench, _timeline: &Timeline) -> Result<DeviceHandle, BoardError> {
        Err(BoardError::NotHandsOn {
            device: d.id.clone(),
            kind: self.name(),
        })
    }

    /// The power driver alone, for `rig power`, opened at `initially_on`.
    fn power(&self, d: &Device, _bench: &Bench, _initially_on: bool) -> Result<Box<dyn Power>, BoardError> {
        Err(BoardError::NotHandsOn {
            device: d.id.clone(),
            kind: self.name(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_board_of_a_large_fleet_has_its_own_address_and_none_is_the_clouds() {
        let n = crate::bench::MAX_DEVICES as usize;
        let mut seen = std::collections::HashSet::with_capacity(n);
        for i in 0..n {
            let a = super::mem_board_addr(i);
            assert_ne!(a.ip(), super::SIM_CLOUD.ip(), "board {i}");
            assert!(seen.insert(a), "board {i} shares {a}");
        }
        // The addresses runs have always used stay the same.
        assert_eq!(super::mem_board_addr(0).to_string(), "127.0.1.1:40000");
        assert_eq!(super::mem_board_addr(251).to_string(), "127.0.2.2:40000");
    }
}
