//! Bench files: which devices a bench has, how each is powered, flashed and
//! watched, and how its cloud and session cache are set up (DESIGN §5).
//!
//! This module parses and validates; building drivers from a bench is the
//! runner's job (`runner::world`). With no `--bench`, the built-in simulated
//! bench (`bench/sim.yaml`, compiled in) is used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rig_proto::Psk;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::board::sim::SimConsoleKind;
use crate::board::{self, BoardKind, Drivers};
use crate::cloud::Mitigation;
use crate::diag::{Diagnostic, yaml_error};
use crate::drivers::console::serial::SerialCfg;
use crate::drivers::flash::FlashCfg;
use crate::drivers::power::PowerCfg;
use crate::drivers::reset::ResetCfg;
use crate::units::Dur;

/// The built-in simulated bench.
pub const BUILTIN_SIM: &str = include_str!("../../bench/sim.yaml");
pub const BUILTIN_SIM_NAME: &str = "<built-in sim bench>";

/// Which clock drives a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// Tokio's paused clock: deterministic for a seed, much faster than real time.
    Virtual,
    /// Wall-clock time, as on real hardware.
    Real,
}

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Clock::Virtual => "virtual",
            Clock::Real => "real",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    #[default]
    Off,
}

/// Where the built-in cloud keeps its replay window (the highest record
/// counter accepted per session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplayWindow {
    /// Also in the cloud process, which a cache restore cannot roll back.
    #[default]
    Process,
    /// Only in the session cache: a restore reopens the window (the hole a
    /// cloud has when it keeps replay state only in its cache).
    Cache,
}

/// How the cloud journals datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Datagrams {
    /// A `cloud.rx` per datagram received and a `cloud.tx` per reply.
    #[default]
    Each,
    /// One `cloud.exchange` per datagram with its replies' bytes folded in.
    PerExchange,
}

fn yes() -> bool {
    true
}

/// What the run journals (`journal:` in a bench file). A fleet bench keeps
/// its journal small with `{ console_lines: false, datagrams: per_exchange }`;
/// checks and the sign-off work the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalCfg {
    /// Journal every console line; false keeps only what lines stand for
    /// (device.boot, device.wake, device.sleep, device.reset), so plans
    /// that wait for console text are refused on such a bench.
    #[serde(default = "yes")]
    pub console_lines: bool,
    #[serde(default)]
    pub datagrams: Datagrams,
    /// Write `events.jsonl.zst` (zstd) instead of `events.jsonl`; `rig
    /// report` reads either, `zstdcat` turns it back into JSON Lines.
    #[serde(default)]
    pub compress: bool,
}

impl Default for JournalCfg {
    fn default() -> Self {
        JournalCfg {
            console_lines: true,
            datagrams: Datagrams::Each,
            compress: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudCfg {
    /// Where a UDP cloud listens (real-clock benches).
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub cache: crate::cache::CacheCfg,
    /// One-way network latency between simulated boards and the cloud.
    #[serde(default = "default_latency")]
    pub latency: Dur,
    /// Mitigation until a plan step sets one.
    #[serde(default)]
    pub mitigation: Mitigation,
    #[serde(default)]
    pub replay_window: ReplayWindow,
    /// A team's own cloud in place of the built-in one, behind the relay.
    #[serde(default)]
    pub external: Option<crate::cloud::external::ExternalCfg>,
}

fn default_latency() -> Dur {
    Dur(Duration::from_millis(60))
}

impl Default for CloudCfg {
    fn default() -> Self {
        CloudCfg {
            listen: None,
            cache: crate::cache::CacheCfg::default(),
            latency: default_latency(),
            mitigation: Mitigation::Drop,
            replay_window: ReplayWindow::Process,
            external: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRaw {
    id: Spanned<String>,
    board: String,
    /// The board kind (`sim`, `hardware`); by default from `board:`.
    #[serde(default)]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    power: Option<PowerCfg>,
    #[serde(default)]
    console: Option<SerialCfg>,
    #[serde(default)]
    flash: Option<FlashCfg>,
    #[serde(default)]
    reset: Option<ResetCfg>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    /// A fleet: this entry stands for `count` devices whose ids come from
    /// the `id` template (`dev-{:05}` → dev-00001, dev-00002, ...).
    #[serde(default)]
    count: Option<Spanned<u32>>,
    /// The number of the fleet's first device (default 1).
    #[serde(default)]
    first: Option<u32>,
    /// The relay port this board sends to, in front of an external cloud
    /// (default: a free one, which simulated boards are told).
    #[serde(default)]
    cloud_port: Option<u16>,
}

/// Most devices one bench may declare: a fleet is simulated in one process,
/// and a typo (`count: 10000000`) must be an error, not an exhausted box.
pub const MAX_DEVICES: u64 = 1_000_000;

/// An id template: the text around one `{}` or `{:0N}` placeholder.
struct IdTemplate {
    before: String,
    width: usize,
    after: String,
}

impl IdTemplate {
    fn parse(t: &str) -> Option<IdTemplate> {
        let open = t.find('{')?;
        let close = open + t[open..].find('}')?;
        let spec = &t[open + 1..close];
        let width = match spec {
            "" => 0,
            _ => spec.strip_prefix(":0")?.parse().ok().filter(|w| *w <= 12)?,
        };
        let after = &t[close + 1..];
        if after.contains(['{', '}']) || t[..open].contains('}') {
            return None;
        }
        Some(IdTemplate {
            before: t[..open].to_owned(),
            width,
            after: after.to_owned(),
        })
    }

    fn id(&self, n: u64) -> String {
        format!("{}{n:0w$}{}", self.before, self.after, w = self.width)
    }
}

/// Expands a fleet entry into one entry per device (a plain entry is kept).
fn expand(
    d: DeviceRaw,
    errors: &mut Vec<Diagnostic>,
    at: &dyn Fn(&serde_saphyr::Location, String) -> Diagnostic,
) -> Vec<DeviceRaw> {
    let Some(count) = d.count.clone() else {
        return vec![d];
    };
    let Some(template) = IdTemplate::parse(&d.id.value) else {
        errors.push(at(
            &d.id.referenced,
            format!(
                "a fleet's id `{}` needs one `{{}}` or `{{:0N}}` placeholder for the device number (e.g. `dev-{{:05}}`)",
                d.id.value
            ),
        ));
        return Vec::new();
    };
    if count.value == 0 || u64::from(count.value) > MAX_DEVICES {
        errors.push(at(
            &count.referenced,
            format!("a fleet's count must be 1 to {MAX_DEVICES}, found {}", count.value),
        ));
        return Vec::new();
    }
    if let Some(k) = &d.key {
        errors.push(at(
            &k.referenced,
            "a fleet cannot share one `key:`: each device's key is derived from its id".into(),
        ));
        return Vec::new();
    }
    if d.cloud_port.is_some() {
        errors.push(at(
            &d.id.referenced,
            "a fleet cannot share one `cloud_port:`: each board needs a relay port of its own".into(),
        ));
        return Vec::new();
    }
    let first = u64::from(d.first.unwrap_or(1));
    (first..first + u64::from(count.value))
        .map(|n| DeviceRaw {
            id: Spanned {
                value: template.id(n),
                referenced: d.id.referenced,
                defined: d.id.defined,
            },
            count: None,
            first: None,
            ..d.clone()
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimRaw {
    #[serde(default)]
    time_scale: Option<Spanned<f64>>,
    #[serde(default)]
    console: Option<Spanned<SimConsoleKind>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudRaw {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    cache: Option<Spanned<crate::cache::CacheCfg>>,
    #[serde(default)]
    latency: Option<Dur>,
    #[serde(default)]
    mitigation: Option<Mitigation>,
    #[serde(default)]
    replay_window: ReplayWindow,
    #[serde(default)]
    external: Option<Spanned<crate::cloud::external::ExternalCfg>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchRaw {
    name: Spanned<String>,
    #[serde(default)]
    clock: Option<Spanned<Clock>>,
    #[serde(default)]
    sim: Option<SimRaw>,
    /// Settings of the emulated boards (`board: qemu`).
    #[serde(default)]
    qemu: Option<crate::board::qemu::QemuCfg>,
    #[serde(default)]
    cloud: Option<CloudRaw>,
    #[serde(default)]
    journal: JournalCfg,
    #[serde(default)]
    safe_state: PowerState,
    /// Take the bench lock even if every device is simulated.
    #[serde(default)]
    lock: bool,
    /// Where the bench's lock lives: a folder of the bench users' group
    /// when several accounts drive one bench (default: a private folder).
    #[serde(default)]
    lock_dir: Option<PathBuf>,
    devices: Spanned<Vec<DeviceRaw>>,
}

/// A name that becomes part of a path (run folders, lock files): letters,
/// digits, `-`, `_` and `.`, not starting with a dot.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A validated bench device.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub board: String,
    /// What it is, and so how it is built.
    pub kind: &'static dyn BoardKind,
    pub tags: Vec<String>,
    pub key: Psk,
    /// Its driver sections (hardware).
    pub drivers: Drivers,
    /// Its position on the whole bench, kept by a shard: what its network
    /// address is derived from, so a slice runs each device as the whole
    /// bench would.
    pub index: usize,
    /// Its relay port in front of an external cloud (`cloud_port:`).
    pub cloud_port: Option<u16>,
}

/// `--shard K/N`: the K-th of N contiguous slices of a bench's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("expected K/N (e.g. 2/8), found `{s}`"))?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| format!("`{k}` is not a shard number"))?,
            n.trim().parse().map_err(|_| format!("`{n}` is not a shard count"))?,
        );
        if n == 0 || k == 0 || k > n {
            return Err(format!("shard {k}/{n}: K must be 1 to N"));
        }
        Ok(Shard { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl Shard {
    /// The bench positions of this slice: as even as N slices can be.
    pub fn range(&self, devices: usize) -> std::ops::Range<usize> {
        let at = |i: usize| devices * i / self.n;
        at(self.k - 1)..at(self.k)
    }
}

/// A validated bench.
#[derive(Debug, Clone)]
pub struct Bench {
    pub name: String,
    /// Where it came from (a path or [`BUILTIN_SIM_NAME`]).
    pub source: String,
    pub clock: Clock,
    pub sim: crate::board::sim::SimCfg,
    pub qemu: crate::board::qemu::QemuCfg,
    pub cloud: CloudCfg,
    pub journal: JournalCfg,
    pub safe_state: PowerState,
    pub devices: Vec<Device>,
    /// Whether runs must hold the bench lock (any hardware, or `lock: true`).
    pub lock: bool,
    /// `lock_dir:` from the bench file.
    pub lock_dir: Option<PathBuf>,
}

impl Bench {
    /// Only the devices of `shard`; the same ids, keys and per-device
    /// randomness as on the whole bench (a board's RNG is seeded from the
    /// run's seed and its id, its address from its bench position).
    pub fn into_shard(mut self, shard: Shard) -> Result<Bench, String> {
        let r = shard.range(self.devices.len());
        if r.is_empty() {
            return Err(format!(
                "shard {shard} of bench `{}` is empty: it has {} devices",
                self.name,
                self.devices.len()
            ));
        }
        self.devices = self.devices.drain(r).collect();
        Ok(self)
    }

    pub fn builtin_sim() -> Bench {
        Bench::parse(Path::new(BUILTIN_SIM_NAME), BUILTIN_SIM).expect("the built-in sim bench is valid (tested)")
    }

    pub fn load(path: &Path) -> Result<Bench, Vec<Diagnostic>> {
        let text = crate::diag::read_text(path, "bench file").map_err(|e| vec![e])?;
        Bench::parse(path, &text)
    }

    pub fn load_or_builtin(path: Option<&PathBuf>) -> Result<Bench, Vec<Diagnostic>> {
        match path {
            Some(p) => Bench::load(p),
            None => Ok(Bench::builtin_sim()),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Bench, Vec<Diagnostic>> {
        let raw: BenchRaw = serde_saphyr::from_str(text).map_err(|e| vec![yaml_error(path, text, &e)])?;
        let at = |loc: &serde_saphyr::Location, msg: String| Diagnostic::at_loc(path, text, loc, msg);
        let mut errors = Vec::new();
        if !is_safe_name(&raw.name.value) {
            errors.push(at(
                &raw.name.referenced,
                format!(
                    "bench name `{}` must be letters, digits, `-`, `_` or `.` (it names lock files and reports)",
                    raw.name.value
                ),
            ));
        }
        let external_cloud = raw.cloud.as_ref().is_some_and(|c| c.external.is_some());
        let mut seen = BTreeSet::new();
        let mut devices = Vec::new();
        // Where each device is declared, for messages about two of them.
        let mut lines: Vec<serde_saphyr::Location> = Vec::new();
        if raw.devices.value.is_empty() {
            errors.push(at(&raw.devices.referenced, "a bench needs at least one device".into()));
        }
        let mut entries = Vec::new();
        for d in raw.devices.value {
            entries.extend(expand(d, &mut errors, &at));
        }
        if entries.len() as u64 > MAX_DEVICES {
            errors.push(at(
                &raw.devices.referenced,
                format!("{} devices: a bench holds at most {MAX_DEVICES}", entries.len()),
            ));
            entries.clear();
        }
        for d in entries {
            let id = d.id.value.clone();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                errors.push(at(
                    &d.id.referenced,
                    format!("device id `{id}` must be non-empty letters, digits, `-` or `_`"),
                ));
            }
            if !seen.insert(id.clone()) {
                errors.push(at(&d.id.referenced, format!("duplicate device id `{id}`")));
            }
            let kind = match &d.kind {
                None => board::kind_for_board(&d.board),
                Some(k) => match board::kind(&k.value) {
                    Some(kind) => kind,
                    None => {
                        errors.push(at(
                            &k.referenced,
                            format!(
                                "unknown board kind `{}` (kinds: {})",
                                k.value,
                                board::KINDS.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                        continue;
                    }
                },
            };
            let key = match &d.key {
                Some(k) => match Psk::from_hex(&k.value) {
                    Some(psk) => psk,
                    None => {
                        errors.push(at(
                            &k.referenced,
                            "expected the device key as 64 hex digits (32 bytes)".into(),
                        ));
                        continue;
                    }
                },
                // Behind an external cloud the boards' keys are that
                // cloud's business: the rig never authenticates them.
                None if kind.derives_key() || external_cloud => Psk::derive_for(&id),
                None => {
                    errors.push(at(
                        &d.id.referenced,
                        format!("device `{id}` needs `key:` (64 hex digits), the pre-shared key the cloud authenticates it with"),
                    ));
                    continue;
                }
            };
            let drivers = Drivers {
                power: d.power,
                console: d.console,
                flash: d.flash,
                reset: d.reset,
            };
            for problem in kind.validate(&id, &d.board, &drivers) {
                errors.push(at(&d.id.referenced, problem));
            }
            lines.push(d.id.referenced);
            devices.push(Device {
                index: devices.len(),
                id,
                board: d.board,
                kind,
                tags: d.tags,
                key,
                drivers,
                cloud_port: d.cloud_port,
            });
        }
        errors.extend(reject_shared_resources(&devices, &lines, path, text));
        let clock = match &raw.clock {
            Some(c) => {
                if let Some(d) = devices.iter().find(|d| !d.kind.runs_on(c.value)) {
                    errors.push(at(
                        &c.referenced,
                        format!(
                            "`clock: {}` cannot drive device `{}` (a {} board){}",
                            c.value,
                            d.id,
                            d.kind.name(),
                            if c.value == Clock::Virtual {
                                "; real hardware runs on the real clock"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                c.value
            }
            None if devices.iter().all(|d| d.kind.runs_on(Clock::Virtual)) => Clock::Virtual,
            None => Clock::Real,
        };
        let sim_raw = raw.sim.unwrap_or(SimRaw {
            time_scale: None,
            console: None,
        });
        let sim = crate::board::sim::SimCfg {
            time_scale: sim_raw.time_scale.as_ref().map_or(1.0, |t| t.value),
            console: sim_raw.console.as_ref().map_or(SimConsoleKind::Channel, |c| c.value),
        };
        if let Some(c) = &sim_raw.console
            && clock == Clock::Virtual
            && c.value == SimConsoleKind::Pty
        {
            errors.push(at(
                &c.referenced,
                "`sim: { console: pty }` needs `clock: real`: pseudo-terminals are read in real time".into(),
            ));
        }
        if let Some(t) = &sim_raw.time_scale
            && !(t.value.is_finite() && t.value > 0.0 && t.value <= 1.0)
        {
            errors.push(at(
                &t.referenced,
                format!("sim.time_scale must be in (0, 1], found {}", t.value),
            ));
        }
        let cloud_raw = raw.cloud.unwrap_or(CloudRaw {
            listen: None,
            cache: None,
            latency: None,
            mitigation: None,
            replay_window: ReplayWindow::Process,
            external: None,
        });
        if let Some(c) = &cloud_raw.cache
            && clock == Clock::Virtual
            && !c.value.backend().virtual_clock()
        {
            errors.push(at(
                &c.referenced,
                format!(
                    "`cache: {{ kind: {} }}` needs `clock: real`: a real server cannot follow a virtual clock",
                    c.value.backend().name()
                ),
            ));
        }
        if let Some(c) = &cloud_raw.cache
            && let crate::cache::CacheCfg::Redis(r) = &c.value
        {
            for problem in r.problems() {
                errors.push(at(&c.referenced, problem));
            }
        }
        let cache_kind = cloud_raw.cache.as_ref().map_or("memory", |c| c.value.backend().name());
        if let Some(x) = &cloud_raw.external {
            for problem in x.value.problems(clock == Clock::Real, cache_kind) {
                errors.push(at(&x.referenced, problem));
            }
        } else if let Some((d, loc)) = devices.iter().zip(&lines).find(|(d, _)| d.cloud_port.is_some()) {
            errors.push(at(
                loc,
                format!("device `{}`: `cloud_port:` is a port of the relay in front of an external cloud, and this bench's cloud is built in", d.id),
            ));
        }
        let cloud = CloudCfg {
            external: cloud_raw.external.map(|x| x.value),
            listen: cloud_raw.listen,
            cache: cloud_raw.cache.map(|c| c.value).unwrap_or_default(),
            latency: cloud_raw.latency.unwrap_or_else(default_latency),
            mitigation: cloud_raw.mitigation.unwrap_or_default(),
            replay_window: cloud_raw.replay_window,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Bench {
            name: raw.name.value,
            source: path.display().to_string(),
            clock,
            sim,
            qemu: raw.qemu.clone().unwrap_or_default(),
            cloud,
            journal: raw.journal,
            safe_state: raw.safe_state,
            lock: raw.lock || devices.iter().any(|d| d.kind.physical()),
            lock_dir: raw.lock_dir,
            devices,
        })
    }
}

/// Two devices must not share a relay channel, a reset line, a console port
/// or a key: the rig would switch, read or authenticate the wrong board.
fn reject_shared_resources(
    devices: &[Device],
    lines: &[serde_saphyr::Location],
    path: &Path,
    text: &str,
) -> Vec<Diagnostic> {
    let mut claims: std::collections::BTreeMap<String, (usize, &'static str)> = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let mut mine = d.kind.claims_resources(d);
        if !d.kind.derives_key() {
            mine.push((format!("key {}…", &hex(&d.key.0)[..8]), "key"));
        }
        for (res, role) in mine {
            match claims.get(&res) {
                Some((j, other_role)) if *j != i => {
                    let other = &devices[*j];
                    errors.push(Diagnostic::at_loc(
                        path,
                        text,
                        &lines[i],
                        format!(
                            "device `{}` uses {res} as its {role}, but device `{}` (line {}) already uses it as its {other_role}",
                            d.id,
                            other.id,
                            lines[*j].line()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    claims.insert(res, (i, role));
                }
            }
        }
    }
    errors
}

/// A port as the kernel sees it: two paths to one device (a by-id link and
/// its /dev/ttyACM0) are the same port.
pub fn port_id(port: &str) -> String {
    std::fs::canonicalize(port).map_or_else(|_| port.to_owned(), |p| p.display().to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sim_bench_has_eight_sleepy_boards_on_the_virtual_clock() {
        let b = Bench::builtin_sim();
        assert_eq!(b.devices.len(), 8);
        assert!(
            b.devices
                .iter()
                .all(|d| d.kind.name() == "sim" && d.tags.contains(&"sleepy".to_string()))
        );
        assert_eq!(b.clock, Clock::Virtual);
        assert_eq!(b.cloud.cache.backend().name(), "memory");
        let keys: BTreeSet<_> = b.devices.iter().map(|d| d.key.0).collect();
        assert_eq!(keys.len(), 8, "distinct keys");
    }

    #[test]
    fn hardware_bench_parses_per_design_example() {
        let text = r#"
name: bench-a
cloud: { listen: "0.0.0.0:5684", cache: { kind: redis } }
safe_state: off
devices:
  - id: boron-01
    board: boron
    tags: [sleepy, cellular]
    power:   { kind: gpio, pin: 17, active_low: true }
    console: { port: /dev/serial/by-id/usb-Particle_Boron-if00, baud: 115200 }
    flash:   { kind: probe-rs, probe: "0d28:0204:ABC123", chip: nRF52840_xxAA }
    key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
"#;
        let b = Bench::parse(Path::new("b.yaml"), text).unwrap();
        assert_eq!(b.clock, Clock::Real);
        assert_eq!(
            b.devices[0].drivers.power,
            Some(PowerCfg::Gpio(crate::drivers::power::gpio::GpioCfg {
                pin: 17,
                active_low: true,
                settle: None
            }))
        );
        assert_eq!(b.cloud.cache.backend().name(), "redis");
    }

    #[test]
    fn bad_benches_point_at_the_problem() {
        let text = "name: x\ndevices:\n  - id: a\n    board: boron\n    key: nothex\n";
        let errs = Bench::parse(Path::new("b.yaml"), text).unwrap_err();
        assert_eq!((errs[0].line, errs[0].col), (5, 10), "{}", errs[0]);
        assert!(errs[0].message.contains("64 hex digits"));

        let text = "name: x\ndevices:\n  - id: a\n    board: sim\n  - id: a\n    board: sim\n";
        let errs = Bench::parse(Path::new("b.yaml"), text).unwrap_err();
        assert_eq!(errs[0].line, 5);
        assert!(errs[0].message.contains("duplicate device id `a`"));

        let text = "name: x\ndevices:\n  - id: a\n    board: sim\n    colour: red\n";
        let errs = Bench::parse(Path::new("b.yaml"), text).unwrap_err();
        assert_eq!(errs[0].line, 5, "{}", errs[0]);
        assert!(errs[0].message.contains("colour"), "{}", errs[0]);
    }
}
