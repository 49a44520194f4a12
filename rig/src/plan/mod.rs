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

pub mod resolve;
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
use crate::units::Dur;
pub use resolve::{Action, Expect, PowerAction, Step, Target};
pub use step::StepRaw;

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
    pub setup: Vec<Spanned<StepRaw>>,
    #[serde(default)]
    pub steps: Vec<Spanned<StepRaw>>,
    #[serde(default)]
    pub teardown: Vec<Spanned<StepRaw>>,
}

/// One matrix cell of a plan, ready to run: its steps resolved.
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
    pub setup: Vec<Step>,
    pub steps: Vec<Step>,
    pub teardown: Vec<Step>,
}

impl Cell {
    /// Whether a step of the cell switches the cloud to the `durable`
    /// mitigation, so the durable key store must be written from the start.
    pub fn uses_durable(&self) -> bool {
        fn any(steps: &[Step]) -> bool {
            steps.iter().any(|s| match &s.action {
                Action::Cloud(m) => *m == crate::cloud::Mitigation::Durable,
                Action::Repeat { steps, .. } => any(steps),
                _ => false,
            })
        }
        any(&self.setup) || any(&self.steps) || any(&self.teardown)
    }
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
pub fn parse_set(s: &str) -> Result<(String, String), BadSet> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(BadSet(s.to_owned())),
    }
}

/// A `--set` that is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected KEY=VALUE, found `{0}`")]
pub struct BadSet(pub String);

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
            Ok(c) => cells.push(Cell {
                name,
                vars: cell_vars,
                expect_failure,
                devices: c.devices,
                timeout: c.timeout,
                setup: c.setup,
                steps: c.steps,
                teardown: c.teardown,
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

/// A cell's content once resolved.
struct Parsed {
    devices: Vec<String>,
    timeout: Duration,
    setup: Vec<Step>,
    steps: Vec<Step>,
    teardown: Vec<Step>,
}

fn parse_cell(
    ctx: &Ctx<'_>,
    cell_vars: &BTreeMap<String, String>,
    bench: &Bench,
    fixtures: &Fixtures,
) -> Result<Parsed, Vec<Diagnostic>> {
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
    let rctx = resolve::Ctx {
        fixtures,
        devices: &devices,
        bench,
        at: &at,
    };
    if let Some(f) = &spec.fixture {
        resolve::fixture(&f.value, &f.referenced, &rctx, &mut errors);
    }
    let timeout = spec.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |t| t.value.0);
    let mut seen = resolve::Seen::new(
        timeout,
        format!("plan's timeout of {}", crate::units::fmt_duration(timeout)),
    );
    let setup = resolve::resolve(&spec.setup, &mut seen, &rctx, &mut errors);
    let steps = resolve::resolve(&spec.steps, &mut seen, &rctx, &mut errors);
    // Teardown has its own budget, whatever is left of the plan's.
    seen.phase(
        TEARDOWN_BUDGET,
        format!("teardown's budget of {}", crate::units::fmt_duration(TEARDOWN_BUDGET)),
    );
    let teardown = resolve::resolve(&spec.teardown, &mut seen, &rctx, &mut errors);
    if errors.is_empty() {
        Ok(Parsed {
            devices,
            timeout,
            setup,
            steps,
            teardown,
        })
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
