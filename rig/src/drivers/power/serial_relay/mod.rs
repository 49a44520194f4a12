//! CH340-based USB serial relay modules ("LCUS-1/2/4"): 9600 baud, one
//! 4-byte frame per switch: `A0 <channel> <state> <checksum>`, channels from
//! 1, state 1 = on / 0 = off, checksum the low byte of the sum of the other
//! three. The modules do not answer, so a frame is all there is to check.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::safe::{self, Registration};
use crate::drivers::{Availability, Check, DriverError, Power};

/// `power: { kind: serial-relay, port: /dev/serial/by-id/..., channel: 1 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialRelayCfg {
    pub port: String,
    /// From 1.
    pub channel: u8,
}

/// Failures of serial relay modules.
#[derive(Debug, thiserror::Error)]
pub enum SerialRelayError {
    #[error("serial relay channels are numbered from 1")]
    Channel,
    #[error("relay module {port}: {source}")]
    Open {
        port: String,
        #[source]
        source: serialport::Error,
    },
    #[error("relay module {port}: write failed: {source}")]
    Write {
        port: String,
        #[source]
        source: std::io::Error,
    },
    #[error("relay task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl super::PowerBackend for SerialRelayCfg {
    fn open(&self, _device: &str, safe_on: bool, _initially_on: bool) -> Result<Box<dyn Power>, DriverError> {
        Ok(Box::new(SerialRelayPower::new(
            self.port.clone().into(),
            self.channel,
            safe_on,
        )?))
    }

    fn check(&self, device: &str) -> Check {
        Check {
            what: format!("{device}: serial relay {} channel {}", self.port, self.channel),
            availability: Availability::of_path(&self.port, "present"),
        }
    }

    fn claims(&self) -> Vec<(String, &'static str)> {
        vec![(
            format!(
                "channel {} of relay module {}",
                self.channel,
                crate::bench::port_id(&self.port)
            ),
            "power relay",
        )]
    }
}

/// The frame that switches `channel` on or off.
pub fn frame(channel: u8, on: bool) -> [u8; 4] {
    let state = u8::from(on);
    [0xA0, channel, state, 0xA0u8.wrapping_add(channel).wrapping_add(state)]
}

/// One channel of a serial relay module.
pub struct SerialRelayPower {
    port: PathBuf,
    channel: u8,
    // Opened per switch: the module's port may be re-enumerated between
    // uses, and holding it would lock out `rig power` from another shell.
    lock: Arc<Mutex<()>>,
    _safe: Registration,
}

fn send(port: &Path, data: &[u8]) -> Result<(), SerialRelayError> {
    let mut p = serialport::new(port.to_string_lossy(), 9600)
        .timeout(Duration::from_millis(500))
        .open()
        .map_err(|source| SerialRelayError::Open {
            port: port.display().to_string(),
            source,
        })?;
    p.write_all(data)
        .and_then(|_| p.flush())
        .map_err(|source| SerialRelayError::Write {
            port: port.display().to_string(),
            source,
        })
}

impl SerialRelayPower {
    pub fn new(port: PathBuf, channel: u8, safe_on: bool) -> Result<SerialRelayPower, SerialRelayError> {
        if channel == 0 {
            return Err(SerialRelayError::Channel);
        }
        let lock = Arc::new(Mutex::new(()));
        let (p, l) = (port.clone(), lock.clone());
        let registration = safe::register(move || {
            if let Ok(_g) = l.try_lock() {
                let _ = send(&p, &frame(channel, safe_on));
            }
        });
        Ok(SerialRelayPower {
            port,
            channel,
            lock,
            _safe: registration,
        })
    }
}

#[async_trait]
impl Power for SerialRelayPower {
    async fn set(&self, on: bool) -> Result<(), DriverError> {
        let (port, channel, lock) = (self.port.clone(), self.channel, self.lock.clone());
        // serialport is blocking: keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || {
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            send(&port, &frame(channel, on))
        })
        .await
        .map_err(SerialRelayError::from)?
        .map_err(DriverError::from)
    }

    fn describe(&self) -> String {
        format!("serial relay {} channel {}", self.port.display(), self.channel)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serialport::{SerialPort, TTYPort};

    use super::*;

    #[test]
    fn frames_carry_channel_state_and_checksum() {
        assert_eq!(frame(1, true), [0xA0, 0x01, 0x01, 0xA2]);
        assert_eq!(frame(1, false), [0xA0, 0x01, 0x00, 0xA1]);
        assert_eq!(frame(4, true), [0xA0, 0x04, 0x01, 0xA5]);
    }

    /// A pty plays the module: it reads what the driver sends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_driver_sends_exactly_the_module_frames() {
        let (mut module, slave) = TTYPort::pair().unwrap();
        crate::board::sim::pty::make_raw(&slave).unwrap();
        module.set_timeout(Duration::from_secs(5)).unwrap();
        let path = PathBuf::from(slave.name().unwrap());
        let relay = SerialRelayPower::new(path, 3, false).unwrap();
        relay.set(true).await.unwrap();
        relay.set(false).await.unwrap();
        let mut got = [0u8; 8];
        module.read_exact(&mut got).unwrap();
        assert_eq!(got, [0xA0, 3, 1, 0xA4, 0xA0, 3, 0, 0xA3]);
        assert!(SerialRelayPower::new(PathBuf::from("/dev/null"), 0, false).is_err());
    }

    #[tokio::test]
    async fn a_missing_module_names_its_port() {
        let relay = SerialRelayPower::new(PathBuf::from("/dev/serial/by-id/no-such-relay"), 1, false).unwrap();
        let e = relay.set(true).await.unwrap_err();
        assert!(e.to_string().contains("no-such-relay"), "{e}");
    }
}
