//! The step vocabulary of test plans (DESIGN §4), as serde types.
//!
//! A step is a one-key map (`- power: on`, `- cache: {restore: empty}`), so
//! [`StepRaw`] is an externally tagged enum: an unknown step name is a serde
//! error that already carries its line and column.

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::cache::CacheCommand;
use crate::cloud::Mitigation;
use crate::units::{Bytes, Dur, fmt_bytes};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepRaw {
    Power(PowerAction),
    Reset(ResetKind),
    Flash(Spanned<String>),
    Console(ConsoleStep),
    WaitFor(WaitFor),
    Wait(Dur),
    SleepCycles(SleepCycles),
    Mark(Spanned<String>),
    Cache(CacheCommand),
    Cloud(CloudStep),
    Network(NetworkStep),
    Expect(Expect),
    ExpectRecovery(ExpectRecovery),
    Repeat(Repeat),
    Run(Spanned<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PowerRaw")]
pub enum PowerAction {
    On,
    Off,
    Cycle { off_for: Dur },
}

#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "expected `on`, `off`, `cycle` or `{cycle: {off_for: DURATION}}`"
)]
enum PowerRaw {
    // YAML 1.1 reads a bare `on`/`off` as a boolean.
    Bool(bool),
    Word(String),
    Cycle { cycle: CycleOpts },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CycleOpts {
    off_for: Dur,
}

const DEFAULT_OFF_FOR: Dur = Dur(std::time::Duration::from_secs(2));

/// A `power:` value that is not an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `on`, `off` or `cycle`, found `{0}`")]
pub struct BadPowerAction(pub String);

impl TryFrom<PowerRaw> for PowerAction {
    type Error = BadPowerAction;
    fn try_from(r: PowerRaw) -> Result<Self, BadPowerAction> {
        match r {
            PowerRaw::Bool(true) => Ok(PowerAction::On),
            PowerRaw::Bool(false) => Ok(PowerAction::Off),
            PowerRaw::Word(w) => match w.as_str() {
                "on" => Ok(PowerAction::On),
                "off" => Ok(PowerAction::Off),
                "cycle" => Ok(PowerAction::Cycle {
                    off_for: DEFAULT_OFF_FOR,
                }),
                other => Err(BadPowerAction(other.to_owned())),
            },
            PowerRaw::Cycle { cycle } => Ok(PowerAction::Cycle { off_for: cycle.off_for }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetKind {
    Soft,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleStep {
    pub send: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitFor {
    #[serde(default)]
    pub event: Option<Spanned<String>>,
    /// A regex matched against console lines.
    #[serde(default)]
    pub console: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone)]
pub enum SleepCycles {
    N(u32),
    Opts { n: u32, timeout: Option<Dur> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepCyclesOpts {
    n: u32,
    #[serde(default)]
    timeout: Option<Dur>,
}

// By hand rather than `untagged`: an untagged enum buffers its input, which
// hides the YAML parser's scalar typing and locations from the map form.
impl<'de> Deserialize<'de> for SleepCycles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SleepCycles;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of wake cycles, or `{n: N, timeout: DURATION}`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SleepCycles, E> {
                u32::try_from(v)
                    .map(SleepCycles::N)
                    .map_err(|_| E::custom("too many wake cycles"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SleepCycles, E> {
                u32::try_from(v)
                    .map(SleepCycles::N)
                    .map_err(|_| E::custom(format!("expected a positive number of wake cycles, found {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SleepCycles, E> {
                v.trim()
                    .parse()
                    .map(SleepCycles::N)
                    .map_err(|_| E::custom(format!("expected a number of wake cycles, found `{v}`")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SleepCycles, A::Error> {
                let o = SleepCyclesOpts::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SleepCycles::Opts {
                    n: o.n,
                    timeout: o.timeout,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl SleepCycles {
    pub fn n(&self) -> u32 {
        match self {
            SleepCycles::N(n) | SleepCycles::Opts { n, .. } => *n,
        }
    }
    pub fn timeout(&self) -> Option<Dur> {
        match self {
            SleepCycles::N(_) => None,
            SleepCycles::Opts { timeout, .. } => *timeout,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudStep {
    pub mitigation: Mitigation,
}

/// `network: { partition: 10m }`, `{ loss: 0.3, for: 5m }`,
/// `{ delay: 2s, for: 5m }`, optionally for some `devices:` only: a fault
/// on the relay between the boards and an external cloud. The step starts
/// it and goes on; it heals by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkStep {
    #[serde(default)]
    pub partition: Option<Dur>,
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub delay: Option<Dur>,
    #[serde(default, rename = "for")]
    pub for_: Option<Dur>,
    #[serde(default)]
    pub devices: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub event: Spanned<String>,
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
    #[serde(default)]
    pub after: Option<Spanned<String>>,
    #[serde(default)]
    pub within: Option<Dur>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRecovery {
    pub after: Spanned<String>,
    #[serde(default)]
    pub within_cycles: Option<u32>,
    #[serde(default)]
    pub within: Option<Dur>,
    #[serde(default = "yes")]
    pub no_power_cycle: bool,
    #[serde(default)]
    pub max_bytes: Option<Bytes>,
    /// Devices whose session a cache fault after the mark lost must come
    /// back by a full handshake, every other device by resuming, with none.
    #[serde(default)]
    pub exact_loss: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    pub times: u32,
    pub steps: Vec<Spanned<StepRaw>>,
}

impl StepRaw {
    /// The step's name as written in a plan.
    pub fn name(&self) -> &'static str {
        match self {
            StepRaw::Power(_) => "power",
            StepRaw::Reset(_) => "reset",
            StepRaw::Flash(_) => "flash",
            StepRaw::Console(_) => "console",
            StepRaw::WaitFor(_) => "wait_for",
            StepRaw::Wait(_) => "wait",
            StepRaw::SleepCycles(_) => "sleep_cycles",
            StepRaw::Mark(_) => "mark",
            StepRaw::Cache(_) => "cache",
            StepRaw::Cloud(_) => "cloud",
            StepRaw::Network(_) => "network",
            StepRaw::Expect(_) => "expect",
            StepRaw::ExpectRecovery(_) => "expect_recovery",
            StepRaw::Repeat(_) => "repeat",
            StepRaw::Run(_) => "run",
        }
    }

    /// One line for progress output, events and reports.
    pub fn describe(&self) -> String {
        match self {
            StepRaw::Power(PowerAction::On) => "power on".into(),
            StepRaw::Power(PowerAction::Off) => "power off".into(),
            StepRaw::Power(PowerAction::Cycle { off_for }) => format!("power cycle (off for {off_for})"),
            StepRaw::Reset(ResetKind::Soft) => "reset soft".into(),
            StepRaw::Flash(f) => format!("flash {}", f.value),
            StepRaw::Console(c) => format!("console send {:?}", c.send),
            StepRaw::WaitFor(w) => {
                let what = match (&w.event, &w.console) {
                    (Some(e), _) => e.value.clone(),
                    (None, Some(c)) => format!("console /{}/", c.value),
                    (None, None) => "?".into(),
                };
                match w.timeout {
                    Some(t) => format!("wait_for {what} (timeout {t})"),
                    None => format!("wait_for {what}"),
                }
            }
            StepRaw::Wait(d) => format!("wait {d}"),
            StepRaw::SleepCycles(s) => format!("sleep_cycles {}", s.n()),
            StepRaw::Mark(m) => format!("mark {}", m.value),
            StepRaw::Cache(cmd) => format!("cache {cmd}"),
            StepRaw::Cloud(c) => format!("cloud mitigation {}", c.mitigation),
            StepRaw::Network(n) => {
                let what = match (n.partition, n.loss, n.delay) {
                    (Some(d), _, _) => format!("network partition for {d}"),
                    (None, Some(p), _) => format!(
                        "network loss {p} for {}",
                        n.for_.map(|d| d.to_string()).unwrap_or_default()
                    ),
                    (None, None, Some(d)) => format!(
                        "network delay {d} for {}",
                        n.for_.map(|d| d.to_string()).unwrap_or_default()
                    ),
                    _ => "network ?".into(),
                };
                match &n.devices {
                    Some(d) => format!("{what} on {}", d.join(", ")),
                    None => what,
                }
            }
            StepRaw::Expect(e) => {
                let mut s = format!("expect {}", e.event.value);
                if let Some(m) = e.min {
                    s += &format!(" min {m}");
                }
                if let Some(m) = e.max {
                    s += &format!(" max {m}");
                }
                if let Some(a) = &e.after {
                    s += &format!(" after {}", a.value);
                }
                if let Some(w) = e.within {
                    s += &format!(" within {w}");
                }
                s
            }
            StepRaw::ExpectRecovery(r) => {
                let mut s = format!("expect_recovery after {}", r.after.value);
                if let Some(c) = r.within_cycles {
                    s += &format!(" within {c} cycles");
                }
                if let Some(w) = r.within {
                    s += &format!(" within {w}");
                }
                if r.no_power_cycle {
                    s += ", no power cycle";
                }
                if let Some(b) = r.max_bytes {
                    s += &format!(", max {}", fmt_bytes(b.0));
                }
                if r.exact_loss {
                    s += ", handshakes exactly where sessions were lost";
                }
                s
            }
            StepRaw::Repeat(r) => format!("repeat {} times ({} steps)", r.times, r.steps.len()),
            StepRaw::Run(c) => format!("run {:?}", c.value),
        }
    }
}
