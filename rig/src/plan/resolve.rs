//! Validation that produces what the runner executes: each raw step of a
//! cell becomes a resolved [`Step`] (regexes compiled, fixtures found, event
//! names as [`EventTag`]s, marks and snapshots known to be set earlier,
//! durations known to fit the plan's timeout), or a diagnostic. The runner
//! never re-checks a plan.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde_saphyr::{Location, Spanned};

use super::step::{self, StepRaw};
use crate::bench::Bench;
use crate::cache::{CacheCommand, RestoreFrom};
use crate::checks::RecoveryArgs;
use crate::cloud::Mitigation;
use crate::diag::Diagnostic;
use crate::fixture::{Fixture, Fixtures};
use crate::timeline::EventTag;
use crate::units::fmt_duration;

pub use step::PowerAction;

/// What a waiting step waits for.
#[derive(Debug, Clone)]
pub enum Target {
    Event(EventTag),
    Console(Regex),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Event(t) => t.name().to_owned(),
            Target::Console(re) => format!("console line matching /{}/", re.as_str()),
        }
    }
}

/// `expect:`, resolved.
#[derive(Debug, Clone)]
pub struct Expect {
    pub tag: EventTag,
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub after: Option<String>,
    pub within: Option<Duration>,
}

/// A step as the runner executes it.
#[derive(Debug, Clone)]
pub enum Action {
    Power(PowerAction),
    Reset,
    Flash(Arc<Fixture>),
    ConsoleSend(String),
    WaitFor {
        target: Target,
        timeout: Option<Duration>,
    },
    Wait(Duration),
    SleepCycles {
        n: u32,
        timeout: Option<Duration>,
    },
    Mark(String),
    Cache(CacheCommand),
    Cloud(Mitigation),
    Network {
        fault: crate::cloud::external::relay::FaultKind,
        lasts: Duration,
        devices: Option<Vec<String>>,
    },
    Expect(Expect),
    ExpectRecovery(RecoveryArgs),
    Repeat {
        times: u32,
        steps: Vec<Step>,
    },
}

/// One resolved step and how progress, events and reports name it.
#[derive(Debug, Clone)]
pub struct Step {
    pub action: Action,
    pub desc: String,
}

impl Action {
    /// Steps that watch the plan's timeout themselves, so their checks are
    /// recorded before they stop; every other step is cut off by the runner.
    pub fn bounds_itself(&self) -> bool {
        matches!(
            self,
            Action::WaitFor { .. }
                | Action::SleepCycles { .. }
                | Action::ExpectRecovery(_)
                | Action::Wait(_)
                | Action::Expect(_)
        )
    }
}

/// What the steps before the current one have set up, and how much plan
/// time they take at least.
pub(super) struct Seen {
    pub marks: Vec<String>,
    pub snapshots: Vec<String>,
    /// Plan time the steps so far take at least (waits, power-cycle off times).
    pub elapsed: Duration,
    /// The phase's budget: the plan's timeout, or teardown's own.
    pub budget: Duration,
    pub budget_name: String,
    /// Whether the budget error was already reported in this phase.
    pub over: bool,
}

impl Seen {
    pub fn new(budget: Duration, budget_name: String) -> Seen {
        Seen {
            marks: Vec::new(),
            snapshots: Vec::new(),
            elapsed: Duration::ZERO,
            budget,
            budget_name,
            over: false,
        }
    }

    /// A new phase with its own budget; marks and snapshots carry over.
    pub fn phase(&mut self, budget: Duration, budget_name: String) {
        self.elapsed = Duration::ZERO;
        self.budget = budget;
        self.budget_name = budget_name;
        self.over = false;
    }

    fn spend(&mut self, d: Duration, loc: &Location, ctx: &Ctx<'_>, errors: &mut Vec<Diagnostic>) {
        self.elapsed = self.elapsed.saturating_add(d);
        if self.elapsed > self.budget && !self.over {
            self.over = true;
            errors.push((ctx.at)(
                loc,
                format!(
                    "this step cannot finish within the {}: the steps up to and including it take at least {}",
                    self.budget_name,
                    fmt_duration(self.elapsed)
                ),
            ));
        }
    }
}

/// What resolution checks against.
pub(super) struct Ctx<'a> {
    pub fixtures: &'a Fixtures,
    pub devices: &'a [String],
    pub bench: &'a Bench,
    pub at: &'a dyn Fn(&Location, String) -> Diagnostic,
}

/// Resolves `steps`, collecting every error.
pub(super) fn resolve(
    steps: &[Spanned<StepRaw>],
    seen: &mut Seen,
    ctx: &Ctx<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Step> {
    let mut out = Vec::new();
    for s in steps {
        let loc = &s.referenced;
        let desc = s.value.describe();
        let at = ctx.at;
        let action = match &s.value {
            StepRaw::Power(a) => {
                if let PowerAction::Cycle { off_for } = a {
                    seen.spend(off_for.0, loc, ctx, errors);
                }
                Some(Action::Power(a.clone()))
            }
            StepRaw::Reset(step::ResetKind::Soft) => Some(Action::Reset),
            StepRaw::Flash(f) => fixture(&f.value, &f.referenced, ctx, errors).map(Action::Flash),
            StepRaw::Console(c) => Some(Action::ConsoleSend(c.send.clone())),
            StepRaw::Wait(d) => {
                seen.spend(d.0, loc, ctx, errors);
                Some(Action::Wait(d.0))
            }
            StepRaw::Mark(m) => {
                if m.value.trim().is_empty() {
                    errors.push(at(&m.referenced, "a mark needs a name".into()));
                }
                seen.marks.push(m.value.clone());
                Some(Action::Mark(m.value.clone()))
            }
            StepRaw::WaitFor(w) => {
                let target = match (&w.event, &w.console) {
                    (Some(e), None) => event_tag(&e.value, &e.referenced, ctx, errors).map(Target::Event),
                    (None, Some(c)) if !ctx.bench.journal.console_lines => {
                        errors.push(at(
                            &c.referenced,
                            format!(
                                "bench `{}` does not journal console lines (`journal: {{ console_lines: false }}`): wait for an event instead",
                                ctx.bench.name
                            ),
                        ));
                        None
                    }
                    (None, Some(c)) => match crate::diag::regex(&c.value) {
                        Ok(re) => Some(Target::Console(re)),
                        Err(e) => {
                            errors.push(at(&c.referenced, format!("console pattern is not a usable regex: {e}")));
                            None
                        }
                    },
                    _ => {
                        errors.push(at(loc, "wait_for needs exactly one of `event:` or `console:`".into()));
                        None
                    }
                };
                target.map(|target| Action::WaitFor {
                    target,
                    timeout: w.timeout.map(|t| t.0),
                })
            }
            StepRaw::SleepCycles(n) if n.n() == 0 => {
                errors.push(at(loc, "sleep_cycles needs at least 1".into()));
                None
            }
            StepRaw::SleepCycles(n) => Some(Action::SleepCycles {
                n: n.n(),
                timeout: n.timeout().map(|t| t.0),
            }),
            StepRaw::Expect(e) => {
                let tag = event_tag(&e.event.value, &e.event.referenced, ctx, errors);
                if let Some(a) = &e.after {
                    reject_unset_mark(&a.value, &a.referenced, &seen.marks, ctx, errors);
                }
                let mut ok = true;
                if let (Some(lo), Some(hi)) = (e.min, e.max)
                    && lo > hi
                {
                    errors.push(at(loc, format!("expect: min {lo} is greater than max {hi}")));
                    ok = false;
                }
                if e.within.is_some() && e.after.is_none() {
                    errors.push(at(loc, "expect: `within` counts from a mark; add `after: MARK`".into()));
                    ok = false;
                }
                tag.filter(|_| ok).map(|tag| {
                    Action::Expect(Expect {
                        tag,
                        min: e.min,
                        max: e.max,
                        after: e.after.as_ref().map(|a| a.value.clone()),
                        within: e.within.map(|w| w.0),
                    })
                })
            }
            StepRaw::ExpectRecovery(r) => {
                let mark_ok = reject_unset_mark(&r.after.value, &r.after.referenced, &seen.marks, ctx, errors);
                if r.within_cycles == Some(0) {
                    errors.push(at(loc, "expect_recovery: within_cycles must be at least 1".into()));
                }
                (mark_ok && r.within_cycles != Some(0)).then(|| {
                    Action::ExpectRecovery(RecoveryArgs {
                        mark: r.after.value.clone(),
                        within_cycles: r.within_cycles,
                        within: r.within,
                        no_power_cycle: r.no_power_cycle,
                        max_bytes: r.max_bytes.map(|b| b.0),
                        exact_loss: r.exact_loss,
                    })
                })
            }
            StepRaw::Cache(cmd) => {
                match cmd {
                    CacheCommand::Snapshot(name) => seen.snapshots.push(name.clone()),
                    CacheCommand::Restore(RestoreFrom::Snapshot(name)) if !seen.snapshots.contains(name) => {
                        let known = if seen.snapshots.is_empty() {
                            "no snapshot is taken before this step".to_owned()
                        } else {
                            format!("snapshots taken before this step: {}", seen.snapshots.join(", "))
                        };
                        errors.push(at(
                            loc,
                            format!("`restore: {name}` names a snapshot that no earlier step takes ({known}); `restore: empty` restarts the cache empty"),
                        ));
                    }
                    CacheCommand::Node(n, op) => {
                        let nodes = match &ctx.bench.cloud.cache {
                            crate::cache::CacheCfg::RedisCluster(c) => c.masters * (1 + c.replicas),
                            _ => 0,
                        };
                        if nodes == 0 {
                            errors.push(at(
                                loc,
                                format!(
                                    "`{op}` of node {n}: bench `{}` has no cluster cache (node operations need `cache: {{ kind: redis-cluster }}`)",
                                    ctx.bench.name
                                ),
                            ));
                        } else if *n > nodes {
                            errors.push(at(
                                loc,
                                format!("node {n}: bench `{}`'s cluster has nodes 1 to {nodes}", ctx.bench.name),
                            ));
                        }
                        if let crate::cache::NodeOp::Restore(RestoreFrom::Snapshot(name)) = op
                            && !seen.snapshots.contains(name)
                        {
                            errors.push(at(
                                loc,
                                format!("`restore` of node {n} names snapshot `{name}` that no earlier step takes"),
                            ));
                        }
                    }
                    _ => {}
                }
                Some(Action::Cache(cmd.clone()))
            }
            StepRaw::Cloud(c) => {
                if let Some(x) = &ctx.bench.cloud.external
                    && !x.takes_mitigation()
                    && c.mitigation != ctx.bench.cloud.mitigation
                {
                    errors.push(at(
                        loc,
                        format!(
                            "bench `{}`'s external cloud cannot switch to mitigation `{}`: its command has no `{{mitigation}}`",
                            ctx.bench.name, c.mitigation
                        ),
                    ));
                }
                Some(Action::Cloud(c.mitigation))
            }
            StepRaw::Network(n) => network_step(n, loc, ctx, errors),
            StepRaw::Repeat(r) => {
                if r.times == 0 {
                    errors.push(at(loc, "repeat: times must be at least 1".into()));
                }
                let before = seen.elapsed;
                let steps = resolve(&r.steps, seen, ctx, errors);
                let once = seen.elapsed.saturating_sub(before);
                seen.elapsed = before;
                seen.spend(once.saturating_mul(r.times.max(1)), loc, ctx, errors);
                Some(Action::Repeat { times: r.times, steps })
            }
            StepRaw::Run(c) => {
                errors.push(at(
                    &c.referenced,
                    "`run:` steps are not supported yet: on a virtual-clock bench a shell command would let plan time jump while it runs".into(),
                ));
                None
            }
        };
        if let Some(action) = action {
            out.push(Step { action, desc });
        }
    }
    out
}

fn event_tag(name: &str, loc: &Location, ctx: &Ctx<'_>, errors: &mut Vec<Diagnostic>) -> Option<EventTag> {
    match name.parse::<EventTag>() {
        Ok(t) => Some(t),
        Err(_) => {
            let near: Vec<&str> = EventTag::ALL
                .iter()
                .map(|t| t.name())
                .filter(|k| k.split('.').next() == name.split('.').next())
                .collect();
            let hint = if near.is_empty() {
                format!(
                    "event kinds are: {}",
                    EventTag::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                )
            } else {
                format!("did you mean one of: {}", near.join(", "))
            };
            errors.push((ctx.at)(loc, format!("unknown event kind `{name}`; {hint}")));
            None
        }
    }
}

fn reject_unset_mark(
    name: &str,
    loc: &Location,
    marks: &[String],
    ctx: &Ctx<'_>,
    errors: &mut Vec<Diagnostic>,
) -> bool {
    if marks.iter().any(|m| m == name) {
        return true;
    }
    let known = if marks.is_empty() {
        "no mark is set before this step".to_owned()
    } else {
        format!("marks set before this step: {}", marks.join(", "))
    };
    errors.push((ctx.at)(
        loc,
        format!("`after: {name}` names a mark that no earlier step sets ({known})"),
    ));
    false
}

/// The fixture named `name`, which must fit every selected device's board.
pub(super) fn fixture(name: &str, loc: &Location, ctx: &Ctx<'_>, errors: &mut Vec<Diagnostic>) -> Option<Arc<Fixture>> {
    let Some(f) = ctx.fixtures.get(name) else {
        errors.push((ctx.at)(
            loc,
            format!("unknown fixture `{name}` (available: {})", ctx.fixtures.names()),
        ));
        return None;
    };
    for d in ctx.bench.devices.iter().filter(|d| ctx.devices.contains(&d.id)) {
        if !f.boards.contains(&d.board) {
            errors.push((ctx.at)(
                loc,
                format!(
                    "fixture `{name}` is built for boards [{}], but device `{}` is a `{}`",
                    f.boards.join(", "),
                    d.id,
                    d.board
                ),
            ));
            return None;
        }
        if let Some(why) = d.kind.check_fixture(d, &f) {
            errors.push((ctx.at)(loc, why));
            return None;
        }
    }
    Some(f)
}

/// `network:`, checked: one fault, a duration, known devices, and a relay
/// for it to act on.
fn network_step(
    n: &super::step::NetworkStep,
    loc: &Location,
    ctx: &Ctx<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Action> {
    use crate::cloud::external::relay::FaultKind;
    let at = |m: String| (ctx.at)(loc, m);
    let mut ok = true;
    if ctx.bench.cloud.external.is_none() {
        errors.push(at(format!(
            "`network:` acts on the relay in front of an external cloud, and bench `{}`'s cloud is built in (see `cloud: {{ external }}` in docs/bench-setup.md)",
            ctx.bench.name
        )));
        ok = false;
    }
    let fault = match (n.partition, n.loss, n.delay) {
        (Some(d), None, None) => {
            if n.for_.is_some() {
                errors.push(at("`partition:` is its own duration: drop `for:`".into()));
                ok = false;
            }
            Some((FaultKind::Partition, d.0))
        }
        (None, Some(p), None) => {
            if !(p > 0.0 && p <= 1.0) {
                errors.push(at(format!("`loss:` is a fraction in (0, 1], found {p}")));
                ok = false;
            }
            n.for_.map(|d| (FaultKind::Loss(p), d.0))
        }
        (None, None, Some(d)) => n.for_.map(|f| (FaultKind::Delay(d.0), f.0)),
        _ => {
            errors.push(at(
                "`network:` takes one of `partition: DURATION`, `loss: FRACTION` or `delay: DURATION`".into(),
            ));
            return None;
        }
    };
    let Some((fault, lasts)) = fault else {
        errors.push(at("`loss:` and `delay:` need `for: DURATION`".into()));
        return None;
    };
    if lasts.is_zero() {
        errors.push(at("a network fault must last longer than 0 s".into()));
        ok = false;
    }
    if let Some(ds) = &n.devices {
        for d in ds {
            if !ctx.bench.devices.iter().any(|b| &b.id == d) {
                errors.push(at(format!("device `{d}` is not on bench `{}`", ctx.bench.name)));
                ok = false;
            }
        }
    }
    ok.then(|| Action::Network {
        fault,
        lasts,
        devices: n.devices.clone(),
    })
}
