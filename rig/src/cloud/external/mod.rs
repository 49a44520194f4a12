//! An external cloud: a team's own device cloud in front of the rig's
//! session cache, reached by the boards through the rig's relay.
//!
//! - [`config`]: `cloud: { external: ... }` in a bench file, checked when the
//!   bench is loaded (command templates, readiness, log patterns).
//! - [`process`]: the cloud as a child process (started, watched, journaled
//!   and stopped by the rig), or an address it attaches to.
//! - [`relay`]: one UDP relay per board between the board and the cloud,
//!   counting each board's bytes and injecting network faults; [`tcp`]:
//!   the same for TCP connections (`tcp: true`).
//! - [`logs`]: connection state read from the cloud's log lines, for a
//!   protocol the rig cannot decrypt.
//!
//! The rig keeps the session cache: a `redis` cache it starts, kills and
//! restores as for the built-in cloud, whose URL it hands to the team's
//! cloud in the environment (`{cache_url}`).

pub mod config;
pub mod logs;
pub mod process;
pub mod relay;
pub mod tcp;

pub use config::ExternalCfg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cloud::Mitigation;
use crate::timeline::{EventKind, Source, Timeline};

/// Why an external cloud could not be brought up (a rig fault, exit 3).
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("{0}")]
    Start(String),
}

/// A loopback port, free for UDP and TCP, for the cloud to serve on. It is
/// released before the cloud binds it, so it is picked *below* the kernel's
/// ephemeral range: a port handed out there (to a board's socket, a
/// redis-server's client) could be taken again in between, which a test
/// run with many boards did.
fn listen_port() -> Result<u16, String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low);
    for _ in 0..200 {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).map_err(|e| format!("no OS randomness for a port: {e}"))?;
        let port = from + u16::from_le_bytes(b) % (to - from);
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            return Ok(port);
        }
    }
    Err(format!("no free loopback port for the external cloud in {from}-{to}"))
}

/// What the rig needs to start a cell's external cloud.
pub struct Setup<'a> {
    pub cfg: &'a ExternalCfg,
    /// The bench file, for `{bench}` (absolute).
    pub bench_path: PathBuf,
    /// The cell's folder; each start of the cloud gets `cloud-N/` in it.
    pub cell_dir: &'a Path,
    /// The rig's cache's data-path URL (with its password), if any.
    pub cache_url: Option<String>,
    pub seed: u64,
    pub timeline: &'a Timeline,
    pub patterns: Arc<logs::Patterns>,
}

/// A running external cloud: the process (if the rig started it), the
/// address the relays forward to, and how to restart it with another
/// mitigation.
pub struct ExternalCloud {
    cfg: ExternalCfg,
    bench_path: PathBuf,
    cell_dir: PathBuf,
    cache_url: Option<String>,
    seed: u64,
    timeline: Timeline,
    patterns: Arc<logs::Patterns>,
    upstream: SocketAddr,
    mitigation: Mitigation,
    starts: u32,
    process: Option<process::CloudProcess>,
}

impl ExternalCloud {
    /// Starts the team's cloud (or finds the one to attach to) and waits
    /// until it is ready.
    pub async fn start(s: Setup<'_>, mitigation: Mitigation) -> Result<ExternalCloud, ExternalError> {
        let upstream = match &s.cfg.attach {
            Some(a) => config::resolve(a).map_err(ExternalError::Start)?,
            None => SocketAddr::from(([127, 0, 0, 1], listen_port().map_err(ExternalError::Start)?)),
        };
        let mut cloud = ExternalCloud {
            cfg: s.cfg.clone(),
            bench_path: s.bench_path,
            cell_dir: s.cell_dir.to_owned(),
            cache_url: s.cache_url,
            seed: s.seed,
            timeline: s.timeline.clone(),
            patterns: s.patterns,
            upstream,
            mitigation,
            starts: 0,
            process: None,
        };
        cloud.spawn().await?;
        Ok(cloud)
    }

    /// Where the relays send the boards' datagrams.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    async fn spawn(&mut self) -> Result<(), ExternalError> {
        let Some(command) = &self.cfg.command else {
            return Ok(());
        };
        self.starts += 1;
        let dir = self.cell_dir.join(format!("cloud-{}", self.starts));
        // Its own state, private: it may keep session keys there.
        crate::fsutil::ensure_dir(&dir, 0o700)
            .map_err(|e| ExternalError::Start(format!("cannot create {}: {e}", dir.display())))?;
        let vars = config::Vars {
            rig: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "rig".into()),
            bench: self.bench_path.display().to_string(),
            listen: self.upstream,
            dir: dir.display().to_string(),
            mitigation: self.mitigation.to_string(),
            seed: self.seed,
            cache_url: self.cache_url.clone(),
        };
        let argv = command
            .iter()
            .map(|w| config::expand(w, &vars, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ExternalError::Start)?;
        let env = self
            .cfg
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), config::expand(v, &vars, true)?)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(ExternalError::Start)?;
        let p = process::CloudProcess::spawn(process::Spawn {
            argv,
            env,
            log_dir: &self.cell_dir,
            n: self.starts,
            ready: &self.cfg.ready,
            ready_timeout: self.cfg.ready_timeout.0,
            upstream: self.upstream,
            tcp: self.cfg.tcp,
            timeline: &self.timeline,
            patterns: self.patterns.clone(),
        })
        .await
        .map_err(ExternalError::Start)?;
        self.timeline.emit(
            None,
            Source::Cloud,
            EventKind::CloudProcess {
                pid: p.pid(),
                command: p.command().to_owned(),
                upstream: self.upstream.to_string(),
            },
        );
        self.process = Some(p);
        Ok(())
    }

    /// A plan's `cloud: { mitigation }`: an external cloud's configuration
    /// is its command line, so a new mitigation restarts it with
    /// `{mitigation}` substituted. A cloud whose command does not take one
    /// (or one the rig attached to) cannot change it.
    pub async fn set_mitigation(&mut self, m: Mitigation) -> Result<(), String> {
        if m == self.mitigation {
            // Recorded as by the built-in cloud: the sign-off lists the
            // mitigations a cell ran with.
            self.config_event(m);
            return Ok(());
        }
        if !self.cfg.takes_mitigation() {
            return Err(format!(
                "the external cloud cannot switch to mitigation `{m}`: its command has no `{{mitigation}}` (it runs with `{}`)",
                self.mitigation
            ));
        }
        self.mitigation = m;
        if let Some(p) = self.process.take() {
            p.stop().await;
        }
        self.spawn().await.map_err(|e| e.to_string())?;
        self.config_event(m);
        Ok(())
    }

    fn config_event(&self, m: Mitigation) {
        self.timeline.emit(
            None,
            Source::Cloud,
            EventKind::CloudConfig {
                mitigation: m.to_string(),
            },
        );
    }

    /// Stops the process the rig started (SIGTERM, then SIGKILL).
    pub async fn stop(mut self) {
        if let Some(p) = self.process.take() {
            p.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clouds_port_is_below_the_ephemeral_range_and_free() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        for _ in 0..20 {
            let p = super::listen_port().unwrap();
            assert!(p < low && p >= 1024, "{p}");
            std::net::UdpSocket::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
