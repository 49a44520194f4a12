//! Loading what a command works on, the same way for every command: the
//! bench (a file or the built-in sim bench), the fixtures folder (given, or
//! found beside or above the first plan, or in the current directory), and
//! the plans validated against both.

use std::path::{Path, PathBuf};

use super::CliError;
use crate::bench::Bench;
use crate::diag::Diagnostic;
use crate::fixture::{self, Fixtures};
use crate::plan::{self, Plan};

/// Where to look for `firmware-fixtures/`: `explicit`, else beside or above
/// `near` (a plan's folder), else the current directory.
pub fn fixtures_dir(explicit: Option<&Path>, near: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = explicit {
        return Some(d.to_owned());
    }
    let start = near
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fixture::find_dir(start)
}

/// The fixtures a command needs, or an input error saying where it looked.
pub fn fixtures(explicit: Option<&Path>, near: Option<&Path>) -> Result<Fixtures, CliError> {
    let dir = fixtures_dir(explicit, near).ok_or_else(|| {
        let msg =
            "no firmware-fixtures/ folder beside or above the plan or in the current directory (use --fixtures DIR)";
        match near {
            Some(p) => CliError::Input(vec![Diagnostic::file(p, msg)]),
            None => CliError::Usage(msg.into()),
        }
    })?;
    Ok(Fixtures::load(&dir)?)
}

/// Bench, fixtures and plans, every error of every file collected.
pub fn load(
    plans: &[PathBuf],
    bench: Option<&Path>,
    fixtures_dir: Option<&Path>,
    sets: &[(String, String)],
) -> Result<(Bench, Fixtures, Vec<Plan>), CliError> {
    let bench = match bench {
        Some(p) => Bench::load(p)?,
        None => Bench::builtin_sim(),
    };
    load_against(bench, plans, fixtures_dir, sets)
}

/// [`load`] against a bench already loaded (a shard of one, say).
pub fn load_against(
    bench: Bench,
    plans: &[PathBuf],
    fixtures_dir: Option<&Path>,
    sets: &[(String, String)],
) -> Result<(Bench, Fixtures, Vec<Plan>), CliError> {
    let fixtures = fixtures(fixtures_dir, plans.first().map(PathBuf::as_path))?;
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for p in plans {
        match plan::load(p, &bench, &fixtures, sets) {
            Ok(plan) => loaded.push(plan),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok((bench, fixtures, loaded))
    } else {
        Err(CliError::Input(errors))
    }
}
