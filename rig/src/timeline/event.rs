//! Event types: the envelope, every kind of observation, the facts checks
//! attach, and [`EventTag`], the fieldless name of a kind that plans and
//! checks compare instead of strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Declares [`EventTag`] (one fieldless variant per [`EventKind`] variant,
/// with the name plans and the journal use) and [`EventKind::tag`].
macro_rules! event_tags {
    ($($variant:ident = $name:literal,)*) => {
        /// The kind of an event without its fields: what plans name
        /// (`wait_for: { event: cloud.connected }`) and checks compare.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventTag {
            $($variant,)*
        }

        impl EventTag {
            /// Every tag, in declaration order.
            pub const ALL: &[EventTag] = &[$(EventTag::$variant,)*];

            /// The name in plans and in `events.jsonl` (`cloud.connected`).
            pub fn name(self) -> &'static str {
                match self {
                    $(EventTag::$variant => $name,)*
                }
            }
        }

        impl EventKind {
            pub fn tag(&self) -> EventTag {
                match self {
                    $(EventKind::$variant { .. } => EventTag::$variant,)*
                }
            }

            pub fn name(&self) -> &'static str {
                self.tag().name()
            }
        }
    };
}

impl EventKind {
    /// The text of a console line, for the consumers that quote consoles.
    pub fn console_line(&self) -> Option<&str> {
        match self {
            EventKind::ConsoleLine { line, .. } => Some(line),
            EventKind::CellStart { .. }
            | EventKind::CellEnd { .. }
            | EventKind::RigFault { .. }
            | EventKind::PowerOn { .. }
            | EventKind::PowerOff { .. }
            | EventKind::ResetSoft
            | EventKind::FlashStart { .. }
            | EventKind::FlashDone { .. }
            | EventKind::ConsoleGap { .. }
            | EventKind::DeviceBoot
            | EventKind::DeviceReset { .. }
            | EventKind::DeviceWake { .. }
            | EventKind::DeviceSleep { .. }
            | EventKind::CloudConfig { .. }
            | EventKind::CloudHandshake { .. }
            | EventKind::CloudResumed { .. }
            | EventKind::CloudConnected { .. }
            | EventKind::CloudResumeUnknown { .. }
            | EventKind::CloudPublish { .. }
            | EventKind::CloudRx { .. }
            | EventKind::CloudTx { .. }
            | EventKind::CloudExchange { .. }
            | EventKind::CloudInvalid { .. }
            | EventKind::CloudReplayAccepted { .. }
            | EventKind::CacheKill { .. }
            | EventKind::CacheDied { .. }
            | EventKind::CacheStart { .. }
            | EventKind::CacheRestore { .. }
            | EventKind::CacheSnapshot { .. }
            | EventKind::CacheFlush { .. }
            | EventKind::CacheEvict { .. }
            | EventKind::CachePause { .. }
            | EventKind::CacheResume
            | EventKind::CacheError { .. }
            | EventKind::CacheCluster { .. }
            | EventKind::CacheNodeKill { .. }
            | EventKind::CacheNodeStart { .. }
            | EventKind::CacheNodePause { .. }
            | EventKind::CacheNodeResume { .. }
            | EventKind::CloudProcess { .. }
            | EventKind::CloudLog { .. }
            | EventKind::NetworkFault { .. }
            | EventKind::NetworkHealed { .. }
            | EventKind::PlanMark { .. }
            | EventKind::PlanStep { .. }
            | EventKind::CheckPass { .. }
            | EventKind::CheckFail { .. } => None,
        }
    }
}

/// No kind of that name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind `{0}`")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for EventTag {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventTag::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

impl std::fmt::Display for EventTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl EventTag {
    /// Kinds that are not about one device; checks on them are evaluated
    /// once for the bench rather than per device.
    pub fn is_deviceless(self) -> bool {
        let n = self.name();
        n.starts_with("cache.") || n.starts_with("plan.") || n.starts_with("cell.") || n == "cloud.config"
    }
}

/// Name and version of the stored format; bump the version on breaking changes.
pub const FORMAT: &str = "rig.events";
/// 2: `cloud.exchange` events, `shard` in the header, zstd journals.
pub const FORMAT_VERSION: u32 = 2;

/// Who observed an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Runner,
    Power,
    Flash,
    Reset,
    Console,
    Cloud,
    Cache,
    Check,
}

/// How the cloud authenticated a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectVia {
    Handshake,
    Resume,
}

/// What the cloud did with a record for a session its cache did not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownAction {
    /// Silently dropped: the incident's behaviour.
    Dropped,
    /// Answered with "session unknown".
    Rejected,
    /// Found in the durable key store and put back in the cache.
    Healed,
}

/// What a `cell.start` says about the cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellStart {
    pub plan: String,
    /// The plan file and its SHA-256, so a sign-off names what ran.
    #[serde(default)]
    pub plan_path: String,
    #[serde(default)]
    pub plan_sha256: String,
    /// The cell's name, e.g. `fixture=sleepy-1.1 mitigation=drop`.
    pub name: String,
    pub vars: BTreeMap<String, String>,
    pub expect_failure: bool,
    pub seed: u64,
    pub bench: String,
    pub clock: String,
}

/// One node of a cluster session cache, as a `cache.cluster` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The node's number in plans (`cache: {kill: {node: 2}}`), from 1.
    pub node: u32,
    pub port: u16,
    /// `master` or `replica`.
    pub role: String,
    /// The node a replica replicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<u32>,
    /// Hash slots a master serves, e.g. `0-5460`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub slots: String,
}

/// What a `cache.node_kill` says: the node, what it held, and which
/// sessions are gone with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKill {
    pub node: u32,
    pub role: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub slots: String,
    /// Sessions the node held when it was killed.
    pub held: u64,
    /// The replica that took over its slots, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<u32>,
    /// Sessions no node has any more: all it held, or, after a replica took
    /// over, the writes that replica had not received.
    pub lost: u64,
    /// Those sessions, and the device each belonged to (same order; a
    /// device may appear twice, with an older session next to its current one).
    pub sessions: Vec<String>,
    pub devices: Vec<String>,
}

/// What a `cache.node_start` says: one node back, and from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStart {
    pub node: u32,
    /// `empty` or a snapshot's name.
    pub from: String,
    pub role: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub slots: String,
    /// Sessions it holds once back.
    pub sessions: u64,
}

/// Every kind of observation. Consumers match on this exhaustively, so a new
/// kind cannot be silently ignored by a check or a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum EventKind {
    /// Boxed: the largest kind would otherwise set the size of every event
    /// a fleet run holds.
    #[serde(rename = "cell.start")]
    CellStart(Box<CellStart>),
    #[serde(rename = "cell.end")]
    CellEnd { outcome: CellOutcome },
    #[serde(rename = "rig.fault")]
    RigFault {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<usize>,
        message: String,
    },
    /// `pid`: the process that is the board, for boards that are
    /// processes (an emulator); absent for relays.
    #[serde(rename = "power.on")]
    PowerOn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "power.off")]
    PowerOff {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "reset.soft")]
    ResetSoft,
    #[serde(rename = "flash.start")]
    FlashStart { fixture: String },
    #[serde(rename = "flash.done")]
    FlashDone {
        fixture: String,
        version: String,
        sha256: String,
        ms: u64,
    },
    #[serde(rename = "console.line")]
    ConsoleLine {
        line: String,
        /// The line was cut by a gap in the console link.
        #[serde(default, skip_serializing_if = "is_false")]
        partial: bool,
    },
    #[serde(rename = "console.gap")]
    ConsoleGap { ms: u64 },
    #[serde(rename = "device.boot")]
    DeviceBoot,
    /// A reset the board did itself (SYSRESETREQ, a watchdog), as its
    /// emulator or debug probe reports it; `reason` in the reporter's words.
    #[serde(rename = "device.reset")]
    DeviceReset { reason: String },
    #[serde(rename = "device.wake")]
    DeviceWake {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename = "device.sleep")]
    DeviceSleep {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secs: Option<u64>,
    },
    #[serde(rename = "cloud.config")]
    CloudConfig { mitigation: String },
    #[serde(rename = "cloud.handshake")]
    CloudHandshake { session: String },
    #[serde(rename = "cloud.resumed")]
    CloudResumed { session: String },
    #[serde(rename = "cloud.connected")]
    CloudConnected { via: ConnectVia, session: String },
    #[serde(rename = "cloud.resume_unknown")]
    CloudResumeUnknown {
        session: String,
        action: UnknownAction,
        /// The record was flagged as the first after a wake (a resume
        /// attempt) rather than a later record of the same wake.
        resume: bool,
    },
    #[serde(rename = "cloud.publish")]
    CloudPublish { session: String, topic: String },
    #[serde(rename = "cloud.rx")]
    CloudRx { bytes: u64, msg: String, peer: String },
    #[serde(rename = "cloud.tx")]
    CloudTx { bytes: u64, msg: String, peer: String },
    /// One datagram the cloud received and the replies it sent, folded into
    /// one event (`journal: { datagrams: per_exchange }`, for fleets): the
    /// bytes of `cloud.rx` and `cloud.tx` without a line for each. Emitted
    /// after what handling the datagram caused (a connect, say).
    #[serde(rename = "cloud.exchange")]
    CloudExchange { msg: String, rx: u64, tx: u64 },
    /// Datagrams the cloud refused: malformed, forged, replayed or
    /// unexpected. Aggregated per source and reason over a second, so a
    /// flood is a few events, not one per datagram.
    #[serde(rename = "cloud.invalid")]
    CloudInvalid {
        reason: String,
        peer: String,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u64,
        /// Bytes of those datagrams not attributed to a device.
        #[serde(default, skip_serializing_if = "is_zero")]
        bytes: u64,
    },
    /// A record the cloud accepted although its counter was not above the
    /// highest it had accepted for that session before (a replay that got
    /// through, as after a restore when the replay window lives only in the
    /// restorable cache).
    #[serde(rename = "cloud.replay_accepted")]
    CloudReplayAccepted {
        session: String,
        counter: u64,
        highest: u64,
    },
    /// `pid`: the server process that was killed (gone when this is recorded).
    #[serde(rename = "cache.kill")]
    CacheKill {
        backend: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "cache.start")]
    CacheStart {
        backend: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "cache.restore")]
    CacheRestore {
        from: String,
        sessions: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    #[serde(rename = "cache.snapshot")]
    CacheSnapshot { name: String, sessions: u64 },
    #[serde(rename = "cache.flush")]
    CacheFlush { sessions: u64 },
    #[serde(rename = "cache.evict")]
    CacheEvict {
        fraction: f64,
        sessions: Vec<String>,
        devices: Vec<String>,
    },
    #[serde(rename = "cache.pause")]
    CachePause { ms: u64 },
    #[serde(rename = "cache.resume")]
    CacheResume,
    #[serde(rename = "cache.error")]
    CacheError { op: String, error: String },
    /// The layout of a cluster cache: at start and after every node fault.
    #[serde(rename = "cache.cluster")]
    CacheCluster { nodes: Vec<ClusterNode> },
    #[serde(rename = "cache.node_kill")]
    CacheNodeKill(Box<NodeKill>),
    #[serde(rename = "cache.node_start")]
    CacheNodeStart(Box<NodeStart>),
    /// One node stopped (SIGSTOP) for `ms`, its data kept.
    #[serde(rename = "cache.node_pause")]
    CacheNodePause { node: u32, ms: u64 },
    #[serde(rename = "cache.node_resume")]
    CacheNodeResume { node: u32 },
    /// The cache's server died without the rig killing it.
    #[serde(rename = "cache.died")]
    CacheDied { backend: String, pid: u32, how: String },
    /// An external cloud the rig started is serving (`cloud: { external }`):
    /// its process, the command line it was started with (no secrets: those
    /// go in its environment) and the address the relay forwards to.
    #[serde(rename = "cloud.process")]
    CloudProcess {
        pid: u32,
        command: String,
        upstream: String,
    },
    /// A line an external cloud wrote on `stream` (`stdout`, `stderr`).
    #[serde(rename = "cloud.log")]
    CloudLog { stream: String, line: String },
    /// A fault on the relay path between boards and the cloud began: for
    /// `ms`, `partition` drops every datagram, `loss` a seeded random
    /// fraction, `delay` holds each one `delay_ms`.
    #[serde(rename = "network.fault")]
    NetworkFault {
        fault: String,
        ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        devices: Vec<String>,
    },
    /// The fault ended: datagrams it dropped and delayed, both ways.
    #[serde(rename = "network.healed")]
    NetworkHealed { fault: String, dropped: u64, delayed: u64 },
    #[serde(rename = "plan.mark")]
    PlanMark { name: String },
    #[serde(rename = "plan.step")]
    PlanStep { index: usize, phase: String, step: String },
    #[serde(rename = "check.pass")]
    CheckPass {
        step: usize,
        check: String,
        detail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<Box<RecoveryFacts>>,
    },
    #[serde(rename = "check.fail")]
    CheckFail {
        step: usize,
        check: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<Box<RecoveryFacts>>,
    },
}

/// What `expect_recovery` measured for one device, carried on its check
/// event so reports need not re-derive it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecoveryFacts {
    pub mark: String,
    /// When the mark was set, in cell milliseconds.
    #[serde(default)]
    pub mark_t_ms: u64,
    pub recovered: bool,
    /// How the cloud session came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<ConnectVia>,
    /// Wake cycles counted from the mark to recovery (or to the decision).
    pub wakes: u32,
    /// Milliseconds from the mark to recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Bytes both ways from the mark to recovery inclusive (or to the decision).
    pub bytes: u64,
    pub handshakes: u32,
    /// Resume records the cloud did not know the session of.
    pub unknown_resumes: u32,
    pub power_cycled: bool,
    /// The cluster node the device's session lived on at the mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// Whether a cache fault after the mark lost the session (`exact_loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<bool>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a matrix cell's execution ended (not its verdict: that is derived
/// from check events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellOutcome {
    /// Every step ran (checks may still have failed).
    Completed,
    /// A check failed and the remaining steps were skipped.
    Stopped,
    /// The plan's timeout expired.
    Timeout,
    /// A rig or bench fault ended the cell.
    Fault,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

event_tags! {
    CellStart = "cell.start",
    CellEnd = "cell.end",
    RigFault = "rig.fault",
    PowerOn = "power.on",
    PowerOff = "power.off",
    ResetSoft = "reset.soft",
    FlashStart = "flash.start",
    FlashDone = "flash.done",
    ConsoleLine = "console.line",
    ConsoleGap = "console.gap",
    DeviceBoot = "device.boot",
    DeviceReset = "device.reset",
    DeviceWake = "device.wake",
    DeviceSleep = "device.sleep",
    CloudConfig = "cloud.config",
    CloudHandshake = "cloud.handshake",
    CloudResumed = "cloud.resumed",
    CloudConnected = "cloud.connected",
    CloudResumeUnknown = "cloud.resume_unknown",
    CloudPublish = "cloud.publish",
    CloudRx = "cloud.rx",
    CloudTx = "cloud.tx",
    CloudExchange = "cloud.exchange",
    CloudInvalid = "cloud.invalid",
    CloudReplayAccepted = "cloud.replay_accepted",
    CacheKill = "cache.kill",
    CacheStart = "cache.start",
    CacheRestore = "cache.restore",
    CacheSnapshot = "cache.snapshot",
    CacheFlush = "cache.flush",
    CacheEvict = "cache.evict",
    CachePause = "cache.pause",
    CacheResume = "cache.resume",
    CacheError = "cache.error",
    CacheCluster = "cache.cluster",
    CacheNodeKill = "cache.node_kill",
    CacheNodeStart = "cache.node_start",
    CacheNodePause = "cache.node_pause",
    CacheNodeResume = "cache.node_resume",
    CacheDied = "cache.died",
    CloudProcess = "cloud.process",
    CloudLog = "cloud.log",
    NetworkFault = "network.fault",
    NetworkHealed = "network.healed",
    PlanMark = "plan.mark",
    PlanStep = "plan.step",
    CheckPass = "check.pass",
    CheckFail = "check.fail",
}

/// One observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the run's timeline, over all cells.
    pub seq: u64,
    /// Index of the matrix cell (0 for a plan without a matrix).
    pub cell: u32,
    /// Milliseconds since the cell started, on the bench's clock (virtual on
    /// a virtual-clock bench).
    pub t_ms: u64,
    /// Wall-clock time the event was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub wall: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub source: Source,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn is(&self, device: &str) -> bool {
        self.device.as_deref() == Some(device)
    }

    /// An event for unit tests of checks and queries: cell 0, epoch wall time.
    #[cfg(test)]
    pub fn at(seq: u64, t_ms: u64, device: &str, source: Source, kind: EventKind) -> Event {
        Event {
            seq,
            cell: 0,
            t_ms,
            wall: OffsetDateTime::UNIX_EPOCH,
            device: Some(device.into()),
            source,
            kind,
        }
    }
}

/// The first line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub run_id: String,
    pub rig_version: String,
    pub seed: u64,
    pub bench: String,
    pub plans: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// `K/N` when the run simulated one slice of a fleet (`rig run --shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Whether the bench journaled its console lines (`journal: {
    /// console_lines: false }` on a fleet bench keeps only the events they
    /// stand for); absent in journals from before it could be turned off.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub console_lines: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}
