//! Test plans: parsing, variables and matrices, and validation against a
//! bench and its fixtures (DESIGN §4).
//!
//! Parsing runs in passes, each collecting every error it finds:
//! 1. the header (name, vars, matrix, expect_failure) from the text with
//!    `${...}` blanked out, so values can be known before substitution;
//! 2. per matrix cell, substitution and a typed parse with unknown keys
//!    rejected;
//! 3. small named checks (`reject_unknown_fixture`, `reject_unset_mark`, …)
//!    and resolution of the device selection against the bench.
//!
//! Every error is a [`Diagnostic`] on the original text: file, line, column.

pub mod step;
pub mod vars;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};

use crate::bench::Bench;
use crate::diag::{Diagnostic, yaml_error};
use crate::fixture::Fixtures;
use crate::timeline::KIND_NAMES;
use crate::units::Dur;
pub use step::Step;

/// Plans without `timeout:` stop after this much plan time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A plan expands to at most this many matrix cells (counted before
/// anything is expanded: 12 axes of 10 values must not take the memory).
pub const MAX_CELLS: usize = 1024;
/// Longest variable value (from the plan or `--set`).
pub const MAX_VALUE_LEN: usize = 4096;

/// Teardown gets this much time even after the plan's timeout.
pub const TEARDOWN_BUDGET: Duration = Duration::from_secs(10 * 60);

/// A YAML scalar of any type, kept as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Which bench devices a plan acts on.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "expected `all`, a list of device ids, or `{tags: [TAG, ...]}`"
)]
pub enum DeviceSel {
    Word(String),
    List(Vec<String>),
    Tags { tags: Vec<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    fixture: Option<Spanned<String>>,
    #[serde(default, rename = "devices")]
    _devices: IgnoredAny,
    #[serde(default)]
    vars: IndexMap<String, Spanned<Scalar>>,
    #[serde(default)]
    matrix: IndexMap<String, Spanned<Vec<Spanned<Scalar>>>>,
    #[serde(default)]
    expect_failure: Vec<Spanned<IndexMap<String, Scalar>>>,
    #[serde(default, rename = "timeout")]
    _timeout: IgnoredAny,
    #[serde(default, rename = "setup")]
    _setup: IgnoredAny,
    #[serde(default, rename = "steps")]
    _steps: IgnoredAny,
    #[serde(default, rename = "teardown")]
    _teardown: IgnoredAny,
}

/// A plan's typed content for one cell (after substitution).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub fixture: Option<Spanned<String>>,
    #[serde(default)]
    pub devices: Option<Spanned<DeviceSel>>,
    #[serde(default, rename = "vars")]
    _vars: IgnoredAny,
    #[serde(default, rename = "matrix")]
    _matrix: IgnoredAny,
    #[serde(default, rename = "expect_failure")]
    _expect_failure: IgnoredAny,
    #[serde(default)]
    pub timeout: Option<Spanned<Dur>>,
    #[serde(default)]
    pub setup: Vec<Spanned<Step>>,
    #[serde(default)]
    pub steps: Vec<Spanned<Step>>,
    #[serde(default)]
    pub teardown: Vec<Spanned<Step>>,
}

/// One matrix cell of a plan, ready to run.
#[derive(Debug, Clone)]
pub struct Cell {
    /// `fixture=sleepy-1.1 mitigation=drop`, or `default` without a matrix.
    pub name: String,
    pub vars: BTreeMap<String, String>,
    /// A negative control: this cell must fail.
    pub expect_failure: bool,
    /// Selected device ids, in bench order.
    pub devices: Vec<String>,
    pub timeout: Duration,
    pub spec: Spec,
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    /// SHA-256 of the plan file, hex.
    pub sha256: String,
    pub cells: Vec<Cell>,
}

/// `--set key=value`, parsed.
pub fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, found `{s}`")),
    }
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn at(&self, loc: &Location, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::at_loc(self.path, self.text, loc, msg)
    }
}

/// Loads, expands and validates a plan against `bench` and `fixtures`.
pub fn load(
    path: &Path,
    bench: &Bench,
    fixtures: &Fixtures,
    sets: &[(String, String)],
) -> Result<Plan, Vec<Diagnostic>> {
    let text = crate::diag::read_text(path, "plan").map_err(|e| vec![e])?;
    parse(path, &text, bench, fixtures, sets)
}

/// [`load`] on text already read.
pub fn parse(
    path: &Path,
    text: &str,
    bench: &Bench,
    fixtures: &Fixtures,
    sets: &[(String, String)],
) -> Result<Plan, Vec<Diagnostic>> {
    let ctx = Ctx { path, text };
    let blanked = vars::blank(text);
    let header: Header = serde_saphyr::from_str(&blanked).map_err(|e| vec![yaml_error(path, text, &e)])?;
    let mut errors = Vec::new();
    // The name becomes the run folder's name: no `/`, no `..`.
    if !crate::bench::is_safe_name(&header.name.value) {
        errors.push(ctx.at(
            &header.name.referenced,
            format!(
                "plan name `{}` must be letters, digits, `-`, `_` or `.` and not start with a dot (it names the run folder)",
                header.name.value
            ),
        ));
    }

    // Pass 1: variables and the matrix.
    let mut base = BTreeMap::new();
    for (k, v) in &header.vars {
        if v.value.0.contains("${") {
            errors.push(ctx.at(&v.referenced, format!("variable `{k}` cannot refer to other variables")));
        }
        base.insert(k.clone(), v.value.0.clone());
    }
    if let Some(f) = &header.fixture {
        base.entry("fixture".to_owned()).or_insert_with(|| f.value.clone());
    }
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    let mut cells: usize = 1;
    for (k, vals) in &header.matrix {
        if vals.value.is_empty() {
            errors.push(ctx.at(&vals.referenced, format!("matrix axis `{k}` has no values")));
        }
        let pinned = sets.iter().any(|(s, _)| s == k);
        let before = cells;
        cells = cells.saturating_mul(if pinned { 1 } else { vals.value.len().max(1) });
        if cells > MAX_CELLS && before <= MAX_CELLS {
            errors.push(ctx.at(
                &vals.referenced,
                format!("the matrix has more than {MAX_CELLS} cells with axis `{k}` (pin axes with --set, or split the plan)"),
            ));
        }
        axes.push((k.clone(), vals.value.iter().map(|v| v.value.0.clone()).collect()));
    }
    for (k, v) in &header.vars {
        if v.value.0.len() > MAX_VALUE_LEN {
            errors.push(ctx.at(
                &v.referenced,
                format!("variable `{k}` is longer than {MAX_VALUE_LEN} characters"),
            ));
        }
    }
    for (k, v) in sets {
        if v.len() > MAX_VALUE_LEN {
            errors.push(Diagnostic::file(
                path,
                format!("--set {k}=...: the value is longer than {MAX_VALUE_LEN} characters"),
            ));
        }
    }
    let known: BTreeSet<String> = base
        .keys()
        .cloned()
        .chain(axes.iter().map(|(k, _)| k.clone()))
        .chain(["fixture".to_owned()])
        .collect();
    for (k, v) in sets {
        if !known.contains(k) {
            errors.push(Diagnostic::file(
                path,
                format!(
                    "--set {k}={v}: this plan has no variable `{k}` (it has: {})",
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    for ef in &header.expect_failure {
        for (k, v) in &ef.value {
            match axes.iter().find(|(a, _)| a == k) {
                None => errors.push(ctx.at(
                    &ef.referenced,
                    format!("expect_failure names `{k}`, which is not a matrix axis"),
                )),
                Some((_, vals)) if !vals.contains(&v.0) => errors.push(ctx.at(
                    &ef.referenced,
                    format!(
                        "expect_failure: `{}` is not a value of matrix axis `{k}` ({})",
                        v.0,
                        vals.join(", ")
                    ),
                )),
                _ => {}
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Pins from --set narrow an axis to the given value.
    for (k, v) in sets {
        if let Some((_, vals)) = axes.iter_mut().find(|(a, _)| a == k) {
            *vals = vec![v.clone()];
        }
        base.insert(k.clone(), v.clone());
    }

    // Pass 2 and 3: every cell.
    let combos = cartesian(&axes);
    let mut cells = Vec::new();
    let mut cell_errors: Vec<(Diagnostic, String)> = Vec::new();
    for combo in &combos {
        let mut cell_vars = base.clone();
        for (k, v) in combo {
            cell_vars.insert(k.clone(), v.clone());
        }
        let name = if combo.is_empty() {
            "default".to_owned()
        } else {
            combo
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let expect_failure = header
            .expect_failure
            .iter()
            .any(|ef| ef.value.iter().all(|(k, v)| cell_vars.get(k) == Some(&v.0)));
        match parse_cell(&ctx, &cell_vars, bench, fixtures) {
            Ok((spec, devices, timeout)) => cells.push(Cell {
                name,
                vars: cell_vars,
                expect_failure,
                devices,
                timeout,
                spec,
            }),
            Err(es) => cell_errors.extend(es.into_iter().map(|e| (e, name.clone()))),
        }
    }
    if !cell_errors.is_empty() {
        return Err(merge_cell_errors(cell_errors, combos.len()));
    }
    Ok(Plan {
        name: header.name.value,
        description: header.description.unwrap_or_default(),
        path: path.to_owned(),
        sha256: hex(&Sha256::digest(text.as_bytes())),
        cells,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An error found in every cell is reported once; one found in only some
/// cells says which.
fn merge_cell_errors(errs: Vec<(Diagnostic, String)>, ncells: usize) -> Vec<Diagnostic> {
    let mut grouped: IndexMap<Diagnostic, Vec<String>> = IndexMap::new();
    for (d, cell) in errs {
        grouped.entry(d).or_default().push(cell);
    }
    grouped
        .into_iter()
        .map(|(mut d, cells)| {
            if ncells > 1 && cells.len() < ncells {
                d.message = format!("{} (in matrix cell {})", d.message, cells.join(", "));
            }
            d
        })
        .collect()
}

fn cartesian(axes: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out = vec![Vec::new()];
    for (k, vals) in axes {
        let mut next = Vec::new();
        for prefix in &out {
            for v in vals {
                let mut c = prefix.clone();
                c.push((k.clone(), v.clone()));
                next.push(c);
            }
        }
        out = next;
    }
    out
}

fn parse_cell(
    ctx: &Ctx<'_>,
    cell_vars: &BTreeMap<String, String>,
    bench: &Bench,
    fixtures: &Fixtures,
) -> Result<(Spec, Vec<String>, Duration), Vec<Diagnostic>> {
    let (sub, undefined) = vars::substitute(ctx.text, cell_vars);
    let mut errors: Vec<Diagnostic> = undefined
        .iter()
        .map(|u| {
            Diagnostic::at(
                ctx.path,
                ctx.text,
                u.line,
                u.col,
                format!(
                    "undefined variable `{}` (defined: {})",
                    u.name,
                    cell_vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
        .collect();
    if !errors.is_empty() {
        // Parsing text with holes in it would only add confusing errors.
        return Err(errors);
    }
    // Positions in the substituted text map back to what the engineer wrote.
    let at = |loc: &Location, msg: String| -> Diagnostic {
        let line = loc.line() as usize;
        let col = sub.orig_col(line, loc.column() as usize);
        Diagnostic::at(ctx.path, ctx.text, line, col, msg)
    };
    let spec: Spec = match serde_saphyr::from_str(&sub.text) {
        Ok(s) => s,
        Err(e) => {
            let d = yaml_error(ctx.path, &sub.text, &e);
            errors.push(if d.line > 0 {
                Diagnostic::at(ctx.path, ctx.text, d.line, sub.orig_col(d.line, d.col), d.message)
            } else {
                d
            });
            return Err(errors);
        }
    };

    let devices = resolve_devices(&spec, bench, &at, &mut errors);
    if let Some(f) = &spec.fixture {
        reject_unknown_fixture(&f.value, &f.referenced, fixtures, &devices, bench, &at, &mut errors);
    }
    let timeout = spec.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |t| t.value.0);
    let mut seen = Seen {
        marks: Vec::new(),
        snapshots: Vec::new(),
        elapsed: Duration::ZERO,
        budget: timeout,
        budget_name: format!("plan's timeout of {}", crate::units::fmt_duration(timeout)),
        over: false,
    };
    for steps in [&spec.setup, &spec.steps] {
        check_steps(steps, &mut seen, fixtures, &devices, bench, &at, &mut errors);
    }
    // Teardown has its own budget, whatever is left of the plan's.
    seen.elapsed = Duration::ZERO;
    seen.budget = TEARDOWN_BUDGET;
    seen.budget_name = format!("teardown's budget of {}", crate::units::fmt_duration(TEARDOWN_BUDGET));
    seen.over = false;
    check_steps(&spec.teardown, &mut seen, fixtures, &devices, bench, &at, &mut errors);
    if errors.is_empty() {
        Ok((spec, devices, timeout))
    } else {
        Err(errors)
    }
}

fn resolve_devices(
    spec: &Spec,
    bench: &Bench,
    at: &dyn Fn(&Location, String) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) -> Vec<String> {
    let all: Vec<String> = bench.devices.iter().map(|d| d.id.clone()).collect();
    let Some(sel) = &spec.devices else { return all };
    let loc = &sel.referenced;
    let ids = |errors: &mut Vec<Diagnostic>, wanted: &[String]| -> Vec<String> {
        for w in wanted {
            if !all.contains(w) {
                errors.push(at(
                    loc,
                    format!(
                        "unknown device `{w}` on bench `{}` (devices: {})",
                        bench.name,
                        all.join(", ")
                    ),
                ));
            }
        }
        all.iter().filter(|id| wanted.contains(id)).cloned().collect()
    };
    match &sel.value {
        DeviceSel::Word(w) if w == "all" => all,
        DeviceSel::Word(w) => ids(errors, std::slice::from_ref(w)),
        DeviceSel::List(l) => ids(errors, l),
        DeviceSel::Tags { tags } => {
            let chosen: Vec<String> = bench
                .devices
                .iter()
                .filter(|d| tags.iter().all(|t| d.tags.contains(t)))
                .map(|d| d.id.clone())
                .collect();
            if chosen.is_empty() {
                let known: BTreeSet<&String> = bench.devices.iter().flat_map(|d| &d.tags).collect();
                errors.push(at(
                    loc,
                    format!(
                        "no device on bench `{}` has all of the tags [{}] (tags on this bench: {})",
                        bench.name,
                        tags.join(", "),
                        known.into_iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            chosen
        }
    }
}

fn reject_unknown_fixture(
    name: &str,
    loc: &Location,
    fixtures: &Fixtures,
    devices: &[String],
    bench: &Bench,
    at: &dyn Fn(&Location, String) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) {
    let Some(f) = fixtures.get(name) else {
        errors.push(at(
            loc,
            format!("unknown fixture `{name}` (available: {})", fixtures.names()),
        ));
        return;
    };
    for d in bench.devices.iter().filter(|d| devices.contains(&d.id)) {
        if !f.boards.contains(&d.board) {
            errors.push(at(
                loc,
                format!(
                    "fixture `{name}` is built for boards [{}], but device `{}` is a `{}`",
                    f.boards.join(", "),
                    d.id,
                    d.board
                ),
            ));
            return;
        }
    }
}

/// What the steps before the current one have set up, and how much plan
/// time they take at least.
struct Seen {
    marks: Vec<String>,
    snapshots: Vec<String>,
    /// Plan time the steps so far take at least (waits, power-cycle off times).
    elapsed: Duration,
    /// The phase's budget: the plan's timeout, or teardown's own.
    budget: Duration,
    budget_name: String,
    /// Whether the budget error was already reported in this phase.
    over: bool,
}

impl Seen {
    fn spend(
        &mut self,
        d: Duration,
        loc: &Location,
        at: &dyn Fn(&Location, String) -> Diagnostic,
        errors: &mut Vec<Diagnostic>,
    ) {
        self.elapsed = self.elapsed.saturating_add(d);
        if self.elapsed > self.budget && !self.over {
            self.over = true;
            errors.push(at(
                loc,
                format!(
                    "this step cannot finish within the {}: the steps up to and including it take at least {}",
                    self.budget_name,
                    crate::units::fmt_duration(self.elapsed)
                ),
            ));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_steps(
    steps: &[Spanned<Step>],
    seen: &mut Seen,
    fixtures: &Fixtures,
    devices: &[String],
    bench: &Bench,
    at: &dyn Fn(&Location, String) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) {
    for s in steps {
        let loc = &s.referenced;
        match &s.value {
            Step::Flash(f) => reject_unknown_fixture(&f.value, &f.referenced, fixtures, devices, bench, at, errors),
            Step::Mark(m) => {
                if m.value.trim().is_empty() {
                    errors.push(at(&m.referenced, "a mark needs a name".into()));
                }
                seen.marks.push(m.value.clone());
            }
            Step::WaitFor(w) => match (&w.event, &w.console) {
                (Some(e), None) => reject_unknown_event(&e.value, &e.referenced, at, errors),
                (None, Some(c)) => {
                    if let Err(e) = crate::diag::regex(&c.value) {
                        errors.push(at(&c.referenced, format!("console pattern is not a usable regex: {e}")));
                    }
                }
                _ => errors.push(at(loc, "wait_for needs exactly one of `event:` or `console:`".into())),
            },
            Step::SleepCycles(n) if n.n() == 0 => errors.push(at(loc, "sleep_cycles needs at least 1".into())),
            Step::Expect(e) => {
                reject_unknown_event(&e.event.value, &e.event.referenced, at, errors);
                if let Some(a) = &e.after {
                    reject_unset_mark(&a.value, &a.referenced, &seen.marks, at, errors);
                }
                if let (Some(lo), Some(hi)) = (e.min, e.max)
                    && lo > hi
                {
                    errors.push(at(loc, format!("expect: min {lo} is greater than max {hi}")));
                }
                if e.within.is_some() && e.after.is_none() {
                    errors.push(at(loc, "expect: `within` counts from a mark; add `after: MARK`".into()));
                }
            }
            Step::ExpectRecovery(r) => {
                reject_unset_mark(&r.after.value, &r.after.referenced, &seen.marks, at, errors);
                if r.within_cycles == Some(0) {
                    errors.push(at(loc, "expect_recovery: within_cycles must be at least 1".into()));
                }
            }
            Step::Cache(step::CacheOp::Evict(e)) if !(0.0..=1.0).contains(&e.fraction) => {
                errors.push(at(loc, format!("cache evict: fraction must be between 0 and 1, found {}", e.fraction)));
            }
            Step::Cache(step::CacheOp::Snapshot(name)) => {
                if !crate::bench::is_safe_name(name) {
                    errors.push(at(
                        loc,
                        format!("snapshot name `{name}` must be letters, digits, `-`, `_` or `.`"),
                    ));
                }
                seen.snapshots.push(name.clone());
            }
            Step::Cache(step::CacheOp::Restore(name)) if name != "empty" && !seen.snapshots.contains(name) => {
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
            Step::Repeat(r) => {
                if r.times == 0 {
                    errors.push(at(loc, "repeat: times must be at least 1".into()));
                }
                let before = seen.elapsed;
                check_steps(&r.steps, seen, fixtures, devices, bench, at, errors);
                let once = seen.elapsed.saturating_sub(before);
                seen.elapsed = before;
                let total = once.saturating_mul(r.times.max(1));
                seen.spend(total, loc, at, errors);
            }
            Step::Run(c) => errors.push(at(
                &c.referenced,
                "`run:` steps are not supported yet: on a virtual-clock bench a shell command would let plan time jump while it runs".into(),
            )),
            Step::Wait(d) => seen.spend(d.0, loc, at, errors),
            Step::Power(step::PowerAction::Cycle { off_for }) => seen.spend(off_for.0, loc, at, errors),
            Step::Power(_)
            | Step::Reset(_)
            | Step::Console(_)
            | Step::SleepCycles(_)
            | Step::Cache(_)
            | Step::Cloud(_) => {}
        }
    }
}

fn reject_unknown_event(
    name: &str,
    loc: &Location,
    at: &dyn Fn(&Location, String) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) {
    if !KIND_NAMES.contains(&name) {
        let near: Vec<&str> = KIND_NAMES
            .iter()
            .copied()
            .filter(|k| k.split('.').next() == name.split('.').next())
            .collect();
        let hint = if near.is_empty() {
            format!("event kinds are: {}", KIND_NAMES.join(", "))
        } else {
            format!("did you mean one of: {}", near.join(", "))
        };
        errors.push(at(loc, format!("unknown event kind `{name}`; {hint}")));
    }
}

fn reject_unset_mark(
    name: &str,
    loc: &Location,
    marks: &[String],
    at: &dyn Fn(&Location, String) -> Diagnostic,
    errors: &mut Vec<Diagnostic>,
) {
    if !marks.iter().any(|m| m == name) {
        let known = if marks.is_empty() {
            "no mark is set before this step".to_owned()
        } else {
            format!("marks set before this step: {}", marks.join(", "))
        };
        errors.push(at(
            loc,
            format!("`after: {name}` names a mark that no earlier step sets ({known})"),
        ));
    }
}
