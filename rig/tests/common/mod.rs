//! Shared helpers so each integration test reads like a story: run the
//! binary on a plan, read what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root (plans, fixtures and benches live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("rig/ has a parent")
        .to_path_buf()
}

pub fn plan(name: &str) -> PathBuf {
    repo().join("test-plans").join(name)
}

/// A finished `rig` invocation.
pub struct Run {
    pub out: Output,
    pub dir: tempfile::TempDir,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().expect("exited normally")
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    /// The single run folder this invocation created.
    pub fn run_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("out dir exists")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "one run folder: {dirs:?}\nstderr: {}", self.stderr());
        dirs.pop().expect("one")
    }
    pub fn summary(&self) -> Value {
        let text = std::fs::read_to_string(self.run_dir().join("summary.json")).expect("summary.json");
        serde_json::from_str(&text).expect("summary.json is JSON")
    }
    pub fn events(&self) -> Vec<Value> {
        read_events(&self.run_dir())
    }
}

pub fn read_events(dir: &Path) -> Vec<Value> {
    assert!(dir.join("events.jsonl").exists(), "events.jsonl in {}", dir.display());
    journal_lines(&dir.join("events.jsonl"))
}

/// The events of a journal at `path` (after its header line); none if it
/// is not there (yet).
pub fn journal_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// The `rig` binary under test. `RIG_TEST_BIN` runs the same tests against
/// another build (how a regression test is shown to fail on an old main).
pub fn rig_bin() -> PathBuf {
    std::env::var_os("RIG_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rig")))
}

pub fn rig(args: &[&str]) -> Output {
    Command::new(rig_bin())
        .args(args)
        .current_dir(repo())
        .env("CI", "1")
        .output()
        .expect("rig runs")
}

/// `rig run` with its own output folder.
pub fn run(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", dir.path().to_str().expect("utf-8 temp path")]);
    Run { out: rig(&all), dir }
}

/// Writes `text` to a temp file named `name` and returns both.
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write temp file");
    (dir, path)
}

/// Cells of a summary by name.
pub fn cell<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cell {name} in {summary}"))
}

/// Recovery facts of the last expect_recovery step of a cell, per device.
pub fn recovery(cell: &Value) -> Vec<Value> {
    let checks = cell["checks"].as_array().expect("checks");
    let last = checks
        .iter()
        .filter(|c| !c["facts"].is_null())
        .map(|c| c["step"].as_u64().unwrap())
        .max();
    checks
        .iter()
        .filter(|c| Some(c["step"].as_u64().unwrap()) == last)
        .cloned()
        .collect()
}
