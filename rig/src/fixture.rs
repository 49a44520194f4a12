//! Firmware fixtures: one folder each under `firmware-fixtures/`, described by
//! `fixture.yaml`.
//!
//! A fixture names a firmware build, the boards it runs on, how its console
//! announces boot, wake and sleep, and (for simulated boards) the behaviour
//! the simulator runs in place of a binary image. Its content hash is what
//! reports cite so a sign-off names exactly what was tested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, yaml_error};
use crate::units::Dur;

/// Compiled console patterns of a fixture.
#[derive(Debug, Clone)]
pub struct Patterns {
    pub boot: Regex,
    /// May capture `reason`.
    pub wake: Regex,
    /// May capture `secs`.
    pub sleep: Regex,
    /// The firmware says it is connected to its cloud; may capture `via`
    /// (containing `resum` for a resumed session) and `session`. Read only
    /// in front of an external cloud, whose protocol the rig cannot see.
    pub connected: Option<Regex>,
    /// All of the above in one automaton (boot, wake, sleep, connected):
    /// most console lines match none, and one pass over a line says so
    /// where four searches did (a fleet's console lines are millions).
    /// None if the set would not compile: each pattern is then searched
    /// on its own.
    any: Option<regex::RegexSet>,
}

impl Patterns {
    pub fn new(boot: Regex, wake: Regex, sleep: Regex, connected: Option<Regex>) -> Patterns {
        let sources = [&boot, &wake, &sleep]
            .into_iter()
            .chain(connected.as_ref())
            .map(Regex::as_str);
        // Each pattern compiled within the limits on its own; the set holds
        // at most four of them.
        let any = regex::RegexSetBuilder::new(sources)
            .size_limit(4 * crate::diag::MAX_REGEX_COMPILED)
            .dfa_size_limit(4 * crate::diag::MAX_REGEX_COMPILED)
            .build()
            .ok();
        Patterns {
            boot,
            wake,
            sleep,
            connected,
            any,
        }
    }

    /// Which of boot, wake, sleep and connected (in that order) `line`
    /// matches.
    pub fn matching(&self, line: &str) -> [bool; 4] {
        match &self.any {
            Some(set) => {
                let m = set.matches(line);
                [
                    m.matched(0),
                    m.matched(1),
                    m.matched(2),
                    self.connected.is_some() && m.matched(3),
                ]
            }
            None => [
                self.boot.is_match(line),
                self.wake.is_match(line),
                self.sleep.is_match(line),
                self.connected.as_ref().is_some_and(|c| c.is_match(line)),
            ],
        }
    }
}

/// What firmware does with a session whose resume went unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionPolicy {
    /// Keep it and resume again on the next wake, forever (1.1.x, buggy).
    Keep,
    /// Discard it after this many connects without an authenticated reply
    /// (1.2.x, the shipped fix).
    ExpireAfterUses(u32),
    /// Fall back to a full handshake in the same wake (ideal).
    FallbackNow,
}

impl std::fmt::Display for SessionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionPolicy::Keep => f.write_str("keep"),
            SessionPolicy::ExpireAfterUses(n) => write!(f, "expire_after_uses: {n}"),
            SessionPolicy::FallbackNow => f.write_str("fallback_now"),
        }
    }
}

/// A `[min, max]` duration range drawn uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Range(pub Dur, pub Dur);

/// Behaviour of the firmware on a simulated board (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    pub session_policy: SessionPolicy,
    #[serde(default)]
    pub honours_session_unknown: bool,
    pub sleep_interval: Dur,
    #[serde(default)]
    pub sleep_jitter: Dur,
    /// Network attach after a wake from sleep.
    pub attach_time: Range,
    /// Network attach after a boot.
    pub boot_attach_time: Range,
    /// How long the device stays awake after attaching, at most.
    pub awake_window: Dur,
    /// With `fallback_now`: how long to wait for a resume answer.
    #[serde(default = "default_resume_timeout")]
    pub resume_timeout: Dur,
    /// Confirmable message retransmit intervals (CoAP-like).
    pub retransmit: Vec<Dur>,
    /// A confirmable unanswered this long after its first send clears the session.
    pub give_up_after: Dur,
    /// Handshake flight retransmit intervals.
    pub handshake_retransmit: Vec<Dur>,
    #[serde(default = "default_topic")]
    pub publish_topic: String,
    #[serde(default = "default_publish_bytes")]
    pub publish_bytes: u16,
}

impl Behaviour {
    /// Every duration multiplied by `f`: a real-clock simulated bench runs
    /// 15-minute sleep cycles in seconds while keeping their proportions.
    pub fn scaled(&self, f: f64) -> Behaviour {
        if f == 1.0 {
            return self.clone();
        }
        let d = |x: Dur| Dur(x.0.mul_f64(f));
        let r = |x: Range| Range(d(x.0), d(x.1));
        Behaviour {
            sleep_interval: d(self.sleep_interval),
            sleep_jitter: d(self.sleep_jitter),
            attach_time: r(self.attach_time),
            boot_attach_time: r(self.boot_attach_time),
            awake_window: d(self.awake_window),
            resume_timeout: d(self.resume_timeout),
            retransmit: self.retransmit.iter().copied().map(d).collect(),
            give_up_after: d(self.give_up_after),
            handshake_retransmit: self.handshake_retransmit.iter().copied().map(d).collect(),
            ..self.clone()
        }
    }
}

fn default_resume_timeout() -> Dur {
    Dur(Duration::from_secs(8))
}
fn default_topic() -> String {
    "sensors/temp".into()
}
fn default_publish_bytes() -> u16 {
    48
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleRaw {
    boot: Spanned<String>,
    wake: Spanned<String>,
    sleep: Spanned<String>,
    #[serde(default)]
    connected: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureRaw {
    name: Spanned<String>,
    version: String,
    #[serde(default)]
    description: String,
    boards: Vec<String>,
    #[serde(default)]
    image: Option<PathBuf>,
    console: ConsoleRaw,
    #[serde(default)]
    behaviour: Option<Behaviour>,
    #[serde(default)]
    qemu: Option<Spanned<crate::board::qemu::fixture::QemuFixture>>,
}

/// A loaded fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub version: String,
    pub description: String,
    pub boards: Vec<String>,
    pub dir: PathBuf,
    /// Absolute path of the image, for boards that flash a real binary.
    pub image: Option<PathBuf>,
    pub patterns: Arc<Patterns>,
    pub behaviour: Option<Behaviour>,
    /// How an emulated board boots it (`qemu:`); its image is relative to [`Fixture::dir`].
    pub qemu: Option<crate::board::qemu::fixture::QemuFixture>,
    /// SHA-256 over fixture.yaml and the image, hex.
    pub sha256: String,
    /// Bytes a flash writes (the image, or the description for sim boards).
    pub size: u64,
}

/// All fixtures of a folder, by name.
#[derive(Debug, Clone, Default)]
pub struct Fixtures {
    pub dir: PathBuf,
    pub by_name: BTreeMap<String, Arc<Fixture>>,
}

impl Fixtures {
    pub fn get(&self, name: &str) -> Option<Arc<Fixture>> {
        self.by_name.get(name).cloned()
    }

    pub fn names(&self) -> String {
        if self.by_name.is_empty() {
            format!("none found in {}", self.dir.display())
        } else {
            self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// Loads every `*/fixture.yaml` under `dir`; reports every bad one.
    pub fn load(dir: &Path) -> Result<Fixtures, Vec<Diagnostic>> {
        let mut out = Fixtures {
            dir: dir.to_owned(),
            by_name: BTreeMap::new(),
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(vec![Diagnostic::file(
                    dir,
                    format!("cannot read the fixtures folder: {e}"),
                )]);
            }
        };
        let mut errors = Vec::new();
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("fixture.yaml"))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            match load_one(&path) {
                Ok(f) => {
                    out.by_name.insert(f.name.clone(), Arc::new(f));
                }
                Err(d) => errors.extend(d),
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

fn load_one(path: &Path) -> Result<Fixture, Vec<Diagnostic>> {
    let text = crate::diag::read_text(path, "fixture").map_err(|e| vec![e])?;
    parse(path, &text)
}

/// Parses and validates `fixture.yaml` text found at `path` (its folder
/// names the fixture and holds its image).
pub fn parse(path: &Path, text: &str) -> Result<Fixture, Vec<Diagnostic>> {
    let text = text.to_owned();
    let raw: FixtureRaw = serde_saphyr::from_str(&text).map_err(|e| vec![yaml_error(path, &text, &e)])?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
    let folder = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut errors = Vec::new();
    if raw.name.value != folder {
        errors.push(Diagnostic::at_loc(
            path,
            &text,
            &raw.name.referenced,
            format!(
                "fixture name `{}` must match its folder name `{folder}`",
                raw.name.value
            ),
        ));
    }
    let re = |what: &str, pat: &Spanned<String>, errors: &mut Vec<Diagnostic>| match crate::diag::regex(&pat.value) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(Diagnostic::at_loc(
                path,
                &text,
                &pat.referenced,
                format!("console.{what} is not a usable regex: {e}"),
            ));
            None
        }
    };
    let boot = re("boot", &raw.console.boot, &mut errors);
    let wake = re("wake", &raw.console.wake, &mut errors);
    let sleep = re("sleep", &raw.console.sleep, &mut errors);
    let connected = raw.console.connected.as_ref().map(|c| re("connected", c, &mut errors));
    if raw.boards.iter().any(|b| b == "sim") && raw.behaviour.is_none() {
        errors.push(Diagnostic::file(
            path,
            "a fixture for board `sim` needs a `behaviour:` section",
        ));
    }
    if raw.boards.iter().any(|b| b == "qemu") && raw.qemu.is_none() {
        errors.push(Diagnostic::file(
            path,
            "a fixture for board `qemu` needs a `qemu:` section naming its image",
        ));
    }
    if let Some(q) = &raw.qemu {
        for p in q.value.problems() {
            errors.push(Diagnostic::at_loc(path, &text, &q.referenced, p));
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    let mut size = text.len() as u64;
    let image = raw.image.as_ref().map(|p| dir.join(p));
    if let Some(img) = &image {
        match std::fs::read(img) {
            Ok(bytes) => {
                hasher.update(&bytes);
                size = bytes.len() as u64;
            }
            Err(e) => errors.push(Diagnostic::file(path, format!("image {}: {e}", img.display()))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let digest = hasher.finalize();
    let sha256 = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Fixture {
        name: raw.name.value,
        version: raw.version,
        description: raw.description,
        boards: raw.boards,
        dir,
        image,
        patterns: Arc::new(Patterns::new(
            boot.expect("checked above"),
            wake.expect("checked above"),
            sleep.expect("checked above"),
            connected.map(|c| c.expect("checked above")),
        )),
        behaviour: raw.behaviour,
        qemu: raw.qemu.map(|q| q.value),
        sha256,
        size,
    })
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds `firmware-fixtures/` beside or above `start` (a plan's folder), then
/// in the current directory.
pub fn find_dir(start: &Path) -> Option<PathBuf> {
    let mut cur = Some(start);
    while let Some(d) = cur {
        let cand = d.join("firmware-fixtures");
        if cand.is_dir() {
            return Some(cand);
        }
        cur = d.parent();
    }
    let cwd = PathBuf::from("firmware-fixtures");
    cwd.is_dir().then_some(cwd)
}
