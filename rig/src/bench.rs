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

use crate::cloud::Mitigation;
use crate::diag::{Diagnostic, yaml_error};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheCfg {
    #[serde(default)]
    pub kind: CacheKind,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudCfg {
    /// Where a UDP cloud listens (real-clock benches).
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub cache: CacheCfg,
    /// One-way network latency between simulated boards and the cloud.
    #[serde(default = "default_latency")]
    pub latency: Dur,
    /// Mitigation until a plan step sets one.
    #[serde(default)]
    pub mitigation: Mitigation,
    #[serde(default)]
    pub replay_window: ReplayWindow,
}

fn default_latency() -> Dur {
    Dur(Duration::from_millis(60))
}

impl Default for CloudCfg {
    fn default() -> Self {
        CloudCfg {
            listen: None,
            cache: CacheCfg::default(),
            latency: default_latency(),
            mitigation: Mitigation::Drop,
            replay_window: ReplayWindow::Process,
        }
    }
}

/// How a device's supply is switched.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PowerCfg {
    Sim,
    Gpio {
        pin: u8,
        #[serde(default)]
        active_low: bool,
        #[serde(default)]
        settle: Option<Dur>,
    },
    SerialRelay {
        port: String,
        channel: u8,
    },
    Command(CommandPowerCfg),
}

/// `on`/`off` command templates. Parsed by hand because YAML 1.1 reads a
/// bare `on:` or `off:` key as a boolean.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandPowerCfg {
    pub on: String,
    pub off: String,
}

impl<'de> Deserialize<'de> for CommandPowerCfg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key(String);
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct KV;
                impl serde::de::Visitor<'_> for KV {
                    type Value = Key;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("`on` or `off`")
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                        Ok(Key(v.to_owned()))
                    }
                    fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                        Ok(Key(if v { "on" } else { "off" }.to_owned()))
                    }
                }
                d.deserialize_any(KV)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CommandPowerCfg;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`on:` and `off:` command templates")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<CommandPowerCfg, A::Error> {
                let (mut on, mut off) = (None, None);
                while let Some(Key(k)) = map.next_key::<Key>()? {
                    match k.as_str() {
                        "on" => on = Some(map.next_value::<String>()?),
                        "off" => off = Some(map.next_value::<String>()?),
                        other => return Err(serde::de::Error::unknown_field(other, &["on", "off"])),
                    }
                }
                Ok(CommandPowerCfg {
                    on: on.ok_or_else(|| serde::de::Error::missing_field("on"))?,
                    off: off.ok_or_else(|| serde::de::Error::missing_field("off"))?,
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    #[default]
    Serial,
    Sim,
}

/// How a device's console is read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleCfg {
    #[serde(default)]
    pub kind: ConsoleKind,
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub baud: Option<u32>,
}

/// How a device is flashed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FlashCfg {
    Sim,
    ProbeRs { probe: String, chip: String },
    Command { command: String },
}

/// How a device is soft-reset (its core restarted, retained RAM kept).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ResetCfg {
    /// Pulse a GPIO line wired to the board's reset pin.
    Gpio {
        pin: u8,
        #[serde(default = "yes")]
        active_low: bool,
        #[serde(default = "default_pulse")]
        pulse: Dur,
    },
    /// Type a command on the board's console.
    Console {
        #[serde(default = "default_reset_command")]
        command: String,
    },
    /// Core reset through the debug probe.
    ProbeRs,
}

fn yes() -> bool {
    true
}
fn default_pulse() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_reset_command() -> String {
    "reset".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceRaw {
    id: Spanned<String>,
    board: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    power: Option<PowerCfg>,
    #[serde(default)]
    console: Option<ConsoleCfg>,
    #[serde(default)]
    flash: Option<FlashCfg>,
    #[serde(default)]
    reset: Option<ResetCfg>,
    #[serde(default)]
    key: Option<Spanned<String>>,
}

/// Settings of simulated boards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimCfg {
    /// Multiplies every duration of a fixture's behaviour (sleep interval,
    /// attach time, retransmits...). 0.005 turns 15-minute cycles into 4.5 s.
    #[serde(default = "one")]
    pub time_scale: f64,
    /// `channel` (in-process) or `pty`: each board's console on a
    /// pseudo-terminal, read through the serial driver used for hardware.
    #[serde(default)]
    pub console: SimConsoleKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SimConsoleKind {
    #[default]
    Channel,
    Pty,
}

fn one() -> f64 {
    1.0
}

impl Default for SimCfg {
    fn default() -> Self {
        SimCfg {
            time_scale: 1.0,
            console: SimConsoleKind::Channel,
        }
    }
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
struct CacheRaw {
    #[serde(default)]
    kind: Option<Spanned<CacheKind>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudRaw {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    cache: Option<CacheRaw>,
    #[serde(default)]
    latency: Option<Dur>,
    #[serde(default)]
    mitigation: Option<Mitigation>,
    #[serde(default)]
    replay_window: ReplayWindow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchRaw {
    name: Spanned<String>,
    #[serde(default)]
    clock: Option<Spanned<Clock>>,
    #[serde(default)]
    sim: Option<SimRaw>,
    #[serde(default)]
    cloud: Option<CloudRaw>,
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
    pub tags: Vec<String>,
    pub power: PowerCfg,
    pub console: ConsoleCfg,
    pub flash: FlashCfg,
    pub reset: Option<ResetCfg>,
    pub key: Psk,
    pub is_sim: bool,
}

/// A validated bench.
#[derive(Debug, Clone)]
pub struct Bench {
    pub name: String,
    /// Where it came from (a path or [`BUILTIN_SIM_NAME`]).
    pub source: String,
    pub clock: Clock,
    pub sim: SimCfg,
    pub cloud: CloudCfg,
    pub safe_state: PowerState,
    pub devices: Vec<Device>,
    /// Whether runs must hold the bench lock (any hardware, or `lock: true`).
    pub lock: bool,
    /// `lock_dir:` from the bench file.
    pub lock_dir: Option<PathBuf>,
}

impl Bench {
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
        let mut seen = BTreeSet::new();
        let mut devices = Vec::new();
        // Where each device is declared, for messages about two of them.
        let mut lines: Vec<serde_saphyr::Location> = Vec::new();
        if raw.devices.value.is_empty() {
            errors.push(at(&raw.devices.referenced, "a bench needs at least one device".into()));
        }
        for d in raw.devices.value {
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
            let is_sim = d.board == "sim";
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
                None if is_sim => Psk::derive_for(&id),
                None => {
                    errors.push(at(
                        &d.id.referenced,
                        format!("device `{id}` needs `key:` (64 hex digits), the pre-shared key the cloud authenticates it with"),
                    ));
                    continue;
                }
            };
            let sim_default = |what: &str, errors: &mut Vec<Diagnostic>| {
                if !is_sim {
                    errors.push(at(
                        &d.id.referenced,
                        format!("device `{id}` (board `{}`) needs a `{what}:` section", d.board),
                    ));
                }
            };
            let power = d.power.clone().unwrap_or_else(|| {
                sim_default("power", &mut errors);
                PowerCfg::Sim
            });
            let console = d.console.clone().unwrap_or_else(|| {
                sim_default("console", &mut errors);
                ConsoleCfg {
                    kind: ConsoleKind::Sim,
                    port: None,
                    baud: None,
                }
            });
            let flash = d.flash.clone().unwrap_or_else(|| {
                sim_default("flash", &mut errors);
                FlashCfg::Sim
            });
            if console.kind == ConsoleKind::Serial && console.port.is_none() {
                errors.push(at(
                    &d.id.referenced,
                    format!("device `{id}`: a serial console needs `port:` (a /dev/serial/by-id/... path is stable across re-plugging)"),
                ));
            }
            lines.push(d.id.referenced);
            devices.push(Device {
                id,
                board: d.board,
                tags: d.tags,
                power,
                console,
                flash,
                reset: d.reset,
                key: key.clone(),
                is_sim,
            });
        }
        errors.extend(reject_shared_resources(&devices, &lines, path, text));
        let all_sim = devices.iter().all(|d| d.is_sim);
        let clock = match &raw.clock {
            Some(c) if c.value == Clock::Virtual && !all_sim => {
                errors.push(at(
                    &c.referenced,
                    "`clock: virtual` needs every device to be simulated (board: sim); real hardware runs on the real clock".into(),
                ));
                Clock::Real
            }
            Some(c) => c.value,
            None if all_sim => Clock::Virtual,
            None => Clock::Real,
        };
        let sim_raw = raw.sim.unwrap_or(SimRaw {
            time_scale: None,
            console: None,
        });
        let sim = SimCfg {
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
        });
        let cache_kind = cloud_raw.cache.as_ref().and_then(|c| c.kind.clone());
        if let Some(k) = &cache_kind
            && clock == Clock::Virtual
            && k.value == CacheKind::Redis
        {
            errors.push(at(
                &k.referenced,
                "`cache: { kind: redis }` needs `clock: real`: a real redis-server cannot follow a virtual clock"
                    .into(),
            ));
        }
        let cloud = CloudCfg {
            listen: cloud_raw.listen,
            cache: CacheCfg {
                kind: cache_kind.map_or(CacheKind::Memory, |k| k.value),
            },
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
            cloud,
            safe_state: raw.safe_state,
            lock: raw.lock || !all_sim,
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
        let mut mine: Vec<(String, &'static str)> = Vec::new();
        match &d.power {
            PowerCfg::Gpio { pin, .. } => mine.push((format!("GPIO {pin}"), "power relay")),
            PowerCfg::SerialRelay { port, channel } => mine.push((
                format!("channel {channel} of relay module {}", port_id(port)),
                "power relay",
            )),
            PowerCfg::Command(_) | PowerCfg::Sim => {}
        }
        if let Some(ResetCfg::Gpio { pin, .. }) = &d.reset {
            mine.push((format!("GPIO {pin}"), "reset line"));
        }
        if let Some(port) = &d.console.port {
            mine.push((format!("serial port {}", port_id(port)), "console"));
        }
        if !d.is_sim {
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
fn port_id(port: &str) -> String {
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
                .all(|d| d.is_sim && d.tags.contains(&"sleepy".to_string()))
        );
        assert_eq!(b.clock, Clock::Virtual);
        assert_eq!(b.cloud.cache.kind, CacheKind::Memory);
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
            b.devices[0].power,
            PowerCfg::Gpio {
                pin: 17,
                active_low: true,
                settle: None
            }
        );
        assert_eq!(b.cloud.cache.kind, CacheKind::Redis);
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
