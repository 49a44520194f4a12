//! Every shell command in README.md and docs/ runs as a new user types it:
//! from a fresh copy of the repository as the working directory, with
//! default paths (relative `--out` included), one code block at a time in
//! one bash session, each line's exit code checked.
//!
//! - A line's expected exit code is 0 unless its comment says `exits N`.
//! - `cargo run --release -- ARGS` and `./target/release/rig ARGS` run as the
//!   built `rig ARGS`; `cargo build` is what built it.
//! - Commands that need the bench's hardware (`run`, `power`, `flash`,
//!   `reset`, `console` against a bench with non-simulated devices) are
//!   `rig check`ed against the files they name instead, and the devices and
//!   fixtures they name must exist and fit.
//! - `sudo` lines administer the bench Pi and are only listed.
//! - The README's test command must be exactly what `.ci/run` runs.
//!
//! Shell commands live in ```sh blocks; syntax summaries with placeholders
//! in ```text blocks.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// One command line of a document.
#[derive(Debug, Clone)]
struct DocLine {
    file: String,
    line: usize,
    /// The command without its trailing comment.
    cmd: String,
    comment: String,
}

#[derive(Debug, Clone)]
struct Block {
    file: String,
    line: usize,
    lines: Vec<DocLine>,
}

/// The command part and the comment part of a shell line (a `#` after
/// whitespace, outside quotes).
fn split_comment(s: &str) -> (String, String) {
    let mut quote: Option<char> = None;
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && (i == 0 || chars[i - 1].is_whitespace()) => {
                let cmd: String = chars[..i].iter().collect();
                let comment: String = chars[i + 1..].iter().collect();
                return (cmd.trim().to_owned(), comment.trim().to_owned());
            }
            None => {}
        }
    }
    (s.trim().to_owned(), String::new())
}

fn documents() -> Vec<PathBuf> {
    let mut docs = vec![repo().join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// Shell blocks, and the rig commands of CI job examples (YAML blocks).
fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for doc in documents() {
        let name = doc.strip_prefix(repo()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&doc).unwrap();
        let mut fence: Option<(String, usize, Vec<DocLine>)> = None;
        let mut pending = String::new();
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim_start();
            if let Some(lang) = t.strip_prefix("```") {
                match fence.take() {
                    None => fence = Some((lang.trim().to_owned(), i + 1, Vec::new())),
                    Some((lang, start, lines)) => {
                        if !lines.is_empty() && matches!(lang.as_str(), "sh" | "bash" | "yaml") {
                            out.push(Block {
                                file: name.clone(),
                                line: start,
                                lines,
                            });
                        }
                    }
                }
                continue;
            }
            let Some((lang, _, lines)) = fence.as_mut() else {
                continue;
            };
            let cmd_text = match lang.as_str() {
                "sh" | "bash" => raw.to_owned(),
                // A CI job's steps: `- run: CMD` (GitHub) or `- CMD` (GitLab).
                "yaml" => {
                    let item = t.strip_prefix("- ").unwrap_or(t);
                    let item = item.strip_prefix("run: ").unwrap_or(item);
                    if item.starts_with("./target/release/rig ") || item.starts_with("rig ") {
                        item.to_owned()
                    } else {
                        continue;
                    }
                }
                _ => continue,
            };
            let (cmd, comment) = split_comment(&cmd_text);
            if let Some(head) = cmd.strip_suffix('\\') {
                pending += head;
                pending += " ";
                continue;
            }
            let cmd = format!("{pending}{cmd}").trim().to_owned();
            pending.clear();
            if cmd.is_empty() {
                continue;
            }
            lines.push(DocLine {
                file: name.clone(),
                line: i + 1,
                cmd,
                comment,
            });
        }
    }
    out
}

/// Splits a simple command line into words (quotes removed).
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in cmd.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                any = true;
            }
            None if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            None => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The arguments of a rig invocation, if the line is one.
fn rig_args(cmd: &str) -> Option<Vec<String>> {
    let w = words(cmd);
    let w: Vec<String> = w
        .into_iter()
        .take_while(|x| !matches!(x.as_str(), ">" | "|" | "&" | "&&"))
        .collect();
    match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["cargo", "run", "--release", "--", ..] => Some(w[4..].to_vec()),
        ["./target/release/rig", ..] | ["rig", ..] => Some(w[1..].to_vec()),
        _ => None,
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// What the harness does with a line.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Run exactly as written; expect this exit code.
    Run(i32),
    /// Needs the bench's hardware: run this check instead (exit 0).
    CheckInstead(String),
    /// Not run here, and why.
    Listed(&'static str),
}

const HANDS_ON: &[&str] = &["run", "power", "flash", "reset", "console"];

fn is_hardware_bench(path: &Path) -> bool {
    rig::bench::Bench::load(path).is_ok_and(|b| b.devices.iter().any(|d| d.kind.physical()))
}

fn expected_exit(comment: &str) -> i32 {
    let w: Vec<&str> = comment.split_whitespace().collect();
    w.windows(2)
        .find(|p| p[0] == "exits")
        .and_then(|p| p[1].trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or(0)
}

fn plan_for(l: &DocLine, clone: &Path) -> Plan {
    let cmd = l.cmd.as_str();
    if cmd.starts_with("sudo ") {
        return Plan::Listed("administers the bench Pi (root)");
    }
    if cmd.starts_with("cargo build") {
        return Plan::Listed("builds rig: the suite runs the binary it built");
    }
    if cmd.starts_with("cargo test") {
        let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
        let ci_test = ci.lines().rev().find(|x| x.starts_with("cargo test")).unwrap();
        assert_eq!(
            cmd, ci_test,
            "{}:{}: the README's test command is what .ci/run runs",
            l.file, l.line
        );
        return Plan::Listed("the test suite itself (.ci/run runs exactly this)");
    }
    if let Some(args) = rig_args(cmd)
        && let Some(sub) = args.first()
        && HANDS_ON.contains(&sub.as_str())
        && let Some(bench) = flag(&args, "--bench")
        && is_hardware_bench(&clone.join(bench))
    {
        return Plan::CheckInstead(hardware_check(l, &args, clone));
    }
    Plan::Run(expected_exit(&l.comment))
}

/// The `rig check` standing in for a hardware-only command, after checking
/// with the library that the device (and fixture) it names exist and fit.
fn hardware_check(l: &DocLine, args: &[String], clone: &Path) -> String {
    let bench_file = flag(args, "--bench").unwrap();
    let bench = rig::bench::Bench::load(&clone.join(bench_file)).unwrap();
    let at = format!("{}:{}", l.file, l.line);
    match args[0].as_str() {
        "run" => {
            let plans: Vec<&str> = args[1..]
                .iter()
                .map(String::as_str)
                .take_while(|a| !a.starts_with("--"))
                .collect();
            assert!(!plans.is_empty(), "{at}: a run names a plan");
            // `--set` pins a matrix axis (a hardware fixture): checked too.
            let sets: String = args
                .windows(2)
                .filter(|w| w[0] == "--set")
                .map(|w| format!(" --set {}", w[1]))
                .collect();
            format!("rig check {} --bench {bench_file}{sets}", plans.join(" "))
        }
        sub => {
            let device = &args[1];
            let dev = bench
                .devices
                .iter()
                .find(|d| &d.id == device)
                .unwrap_or_else(|| panic!("{at}: bench {bench_file} has no device `{device}`"));
            if sub == "flash" {
                let fixtures = rig::fixture::Fixtures::load(&clone.join("firmware-fixtures")).unwrap();
                let fx = fixtures
                    .get(&args[2])
                    .unwrap_or_else(|| panic!("{at}: no fixture `{}` ({})", args[2], fixtures.names()));
                assert!(
                    fx.boards.contains(&dev.board),
                    "{at}: `{}` is not for `{}`",
                    fx.name,
                    dev.board
                );
                assert!(fx.image.is_some(), "{at}: a hardware fixture needs `image:`");
            }
            format!("rig check --bench {bench_file}")
        }
    }
}

/// A fresh copy of the repository's files (tracked and not ignored), as a
/// clone would have them: no target/, no reports of earlier runs.
fn fresh_clone() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(repo())
        .output();
    let files: Vec<PathBuf> = match out {
        Ok(o) if o.status.success() => o
            .stdout
            .split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| PathBuf::from(std::str::from_utf8(f).unwrap()))
            .collect(),
        // Not a git checkout (a source tarball): everything but build output.
        _ => walk(&repo(), Path::new("")),
    };
    for rel in &files {
        let rel = rel.as_path();
        let src = repo().join(rel);
        if !src.is_file() {
            continue; // deleted in the work tree
        }
        let dst = dir.path().join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
    }
    dir
}

/// Files under `root/rel`, relative to `root`, without target/, .git/ and
/// run output.
fn walk(root: &Path, rel: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        let skip = ["target", ".git"].iter().any(|s| r == Path::new(s))
            || (r.starts_with("reports") && r != Path::new("reports/README.md") && r != Path::new("reports"));
        if skip {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(root, &r));
        } else {
            out.push(r);
        }
    }
    out
}

/// A folder holding `rig`, the binary under test, for PATH.
fn bin_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(rig_bin(), d.path().join("rig")).unwrap();
    d
}

/// Runs `blocks` in `clone`, each in one bash session; panics naming every
/// line whose exit code is not the expected one.
fn run_blocks(blocks: &[Block], clone: &Path) {
    let bin = bin_dir();
    let locks = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for b in blocks {
        let mut script = String::from(
            "cargo() { if [ \"$1 $2 $3\" = 'run --release --' ]; then shift 3; rig \"$@\"; else echo \"cargo $* is not run by the docs test\" >&2; return 99; fi; }\n",
        );
        let mut expected = Vec::new();
        for (i, l) in b.lines.iter().enumerate() {
            let (line, want) = match plan_for(l, clone) {
                Plan::Run(code) => (l.cmd.replacen("./target/release/rig ", "rig ", 1), code),
                Plan::CheckInstead(check) => (check, 0),
                Plan::Listed(_) => (":".into(), 0),
            };
            script += &format!(
                "echo '>>> {}:{}: {}' >&2\n{line}\necho \"{i} $?\" >&3\n",
                l.file,
                l.line,
                line.replace('\'', "'\\''")
            );
            expected.push((l, line, want));
        }
        let rc_file = clone.join(".doc-rc");
        let log = clone.join(".doc-log");
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 3>{}; {script}", rc_file.display()))
            .current_dir(clone)
            .env(
                "PATH",
                format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap()),
            )
            .env("CI", "1")
            .env("RIG_LOCK_DIR", locks.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(clone.join(".doc-err")).unwrap())
            .status()
            .unwrap();
        let rcs = std::fs::read_to_string(&rc_file).unwrap_or_default();
        let got: Vec<i32> = rcs.lines().filter_map(|l| l.split(' ').nth(1)?.parse().ok()).collect();
        for (i, (l, line, want)) in expected.iter().enumerate() {
            let g = got.get(i).copied();
            eprintln!("{}:{}: {line} -> {g:?}", l.file, l.line);
            if g != Some(*want) {
                failures.push(format!(
                    "{}:{}: `{line}` exited {g:?}, the docs say {want}",
                    l.file, l.line
                ));
            }
        }
        if !failures.is_empty() {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            let err = std::fs::read_to_string(clone.join(".doc-err")).unwrap_or_default();
            panic!(
                "block at {}:{} ({status}):\n{}\n--- stdout ---\n{out}\n--- stderr ---\n{err}",
                b.file,
                b.line,
                failures.join("\n")
            );
        }
    }
}

/// Blocks that run the real-clock bench over UDP, ptys and redis (minutes).
fn is_real_io(b: &Block) -> bool {
    b.lines.iter().any(|l| l.cmd.contains("bench/sim-real.yaml"))
}

/// Blocks that run a bench with an external cloud (`rig cloud serve` as a
/// child, minutes).
fn is_external(b: &Block) -> bool {
    b.lines.iter().any(|l| l.cmd.contains("bench/external-cloud.yaml"))
}

/// The README's commands on bench/external-cloud.yaml, as typed in a fresh
/// clone: the headline plan's four verdicts through the relay to `rig cloud
/// serve` run as an outside process, with byte totals equal to that cloud's
/// own; then a partition that the devices recover from.
#[test]
fn the_readme_external_cloud_commands_give_the_headline_verdicts_and_a_healed_partition() {
    let clone = fresh_clone();
    let blocks: Vec<Block> = blocks().into_iter().filter(is_external).collect();
    assert!(!blocks.is_empty(), "the README documents the external-cloud bench");
    run_blocks(&blocks, clone.path());
    let runs: Vec<PathBuf> = std::fs::read_dir(clone.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let named = |end: &str| {
        runs.iter()
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(end))
            .unwrap_or_else(|| panic!("a {end} run under ./reports: {runs:?}"))
    };
    headline_through_the_relay(named("session-cache-crash"));
    partition_through_the_relay(named("network-partition"));
}

/// Blocks that run the emulated boards (QEMU processes, minutes).
fn is_qemu(b: &Block) -> bool {
    b.lines.iter().any(|l| l.cmd.contains("bench/qemu.yaml"))
}

#[test]
fn the_docs_have_commands_and_each_is_run_or_checked() {
    let clone = fresh_clone();
    let all = blocks();
    let lines: Vec<&DocLine> = all.iter().flat_map(|b| &b.lines).collect();
    assert!(lines.len() >= 20, "{} commands found", lines.len());
    let mut listed = Vec::new();
    for l in &lines {
        if let Plan::Listed(why) = plan_for(l, clone.path()) {
            listed.push(format!("{}:{}: {} ({why})", l.file, l.line, l.cmd));
        }
        // A placeholder is not a command: syntax belongs in ```text blocks.
        for w in words(&l.cmd) {
            assert!(
                !(w.len() > 2 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')),
                "{}:{}: `{}` has a placeholder ({w}); use a ```text block for syntax",
                l.file,
                l.line,
                l.cmd
            );
        }
    }
    eprintln!("not run here:\n  {}", listed.join("\n  "));
    assert!(
        listed.iter().all(|l| l.contains("sudo ") || l.contains("cargo ")),
        "only root administration and cargo itself are left unrun: {listed:#?}"
    );
}

#[test]
fn documented_commands_run_as_written_from_a_fresh_clone() {
    let clone = fresh_clone();
    let blocks: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| !is_real_io(b) && !is_qemu(b) && !is_external(b))
        .collect();
    run_blocks(&blocks, clone.path());
    // The headline command wrote its run folder under the default ./reports.
    let runs: Vec<PathBuf> = std::fs::read_dir(clone.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    assert!(
        runs.iter().any(|p| p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("session-cache-crash")),
        "{runs:?}"
    );
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The run folder under `<clone>/reports` and its summary, checked for the
/// headline plan's four verdicts and the negative control's diagnosis.
fn the_four_headline_verdicts(clone: &Path) -> (PathBuf, Value) {
    let dir = std::fs::read_dir(clone.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("events.jsonl").exists())
        .expect("a run folder under ./reports");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let verdicts: Vec<(&str, &str)> = s["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("fixture=sleepy-1.1 mitigation=drop", "failed_as_expected"),
            ("fixture=sleepy-1.1 mitigation=durable", "passed"),
            ("fixture=sleepy-1.2 mitigation=drop", "passed"),
            ("fixture=sleepy-1.2 mitigation=durable", "passed"),
        ]
    );
    for c in recovery(cell(&s, "fixture=sleepy-1.1 mitigation=drop")) {
        assert!(
            c["text"].as_str().unwrap().contains("endless session-resume loop"),
            "{c}"
        );
    }
    (dir, s)
}

/// The README's real-IO command, as typed (default `--out reports`, a
/// relative folder): the same four verdicts over UDP, ptys and a real
/// redis-server that is really killed and restarted.
#[test]
fn the_readme_real_io_command_gives_the_four_verdicts_over_udp_ptys_and_redis() {
    let clone = fresh_clone();
    let blocks: Vec<Block> = blocks().into_iter().filter(is_real_io).collect();
    assert!(!blocks.is_empty(), "the README documents the real-IO bench");
    run_blocks(&blocks, clone.path());
    let (dir, _) = the_four_headline_verdicts(clone.path());
    // The cache was a real process, really killed, and a new one started.
    let evs = read_events(&dir);
    for cell in 0..4 {
        let of = |k: &str| -> Vec<&Value> { evs.iter().filter(|e| e["cell"] == cell && e["kind"] == k).collect() };
        let killed = of("cache.kill")[0]["pid"].as_u64().expect("kill names the pid");
        let restored = of("cache.restore")[0]["pid"]
            .as_u64()
            .expect("restore names the new pid");
        assert_ne!(killed, restored);
        assert!(!pid_alive(killed), "pid {killed} is gone");
        // Every board's console came through its pseudo-terminal: the wakes
        // the checks counted are derived from console lines alone. (Whether
        // a cell also records a console.gap depends on whether the driver
        // looked at the path before a board's pty appeared: a race, not
        // behaviour. A power cycle makes a gap: see real_io.rs.)
        for i in 1..=8 {
            let dev = format!("sleepy-0{i}");
            assert!(
                evs.iter()
                    .any(|e| e["cell"] == cell && e["kind"] == "console.line" && e["device"] == dev.as_str()),
                "cell {cell}: console lines of {dev}"
            );
        }
        assert!(of("device.wake").len() >= 8 * 4);
    }
    assert!(
        evs.iter()
            .any(|e| e["kind"] == "cloud.rx" && e["peer"].as_str().unwrap().starts_with("127.0.0.1:"))
    );
    // redis ran in the run folder, relative path and all: its log is there.
    assert!(dir.join("cell-1/redis/redis.log").is_file());
}

/// The README's virtual-boards commands, as typed in a fresh clone (the
/// images built there by its `make` line): the same four verdicts from
/// real firmware images in QEMU processes, with the same diagnoses.
#[test]
fn the_readme_virtual_boards_command_gives_the_four_verdicts_on_qemu() {
    let clone = fresh_clone();
    let blocks: Vec<Block> = blocks().into_iter().filter(is_qemu).collect();
    assert!(!blocks.is_empty(), "the README documents the virtual boards");
    run_blocks(&blocks, clone.path());
    assert!(
        clone
            .path()
            .join("firmware-fixtures/sleepy-c/build/sleepy-1.2.bin")
            .is_file()
    );
    let (dir, s) = the_four_headline_verdicts(clone.path());
    let evs = read_events(&dir);
    let drop12 = cell(&s, "fixture=sleepy-1.2 mitigation=drop");
    for c in recovery(drop12) {
        assert_eq!(c["facts"]["via"], "handshake", "{c}");
        assert_eq!(c["facts"]["handshakes"], 1, "exactly one full handshake: {c}");
        // The image expires its session after 3 unanswered resumes and
        // handshakes on the next wake: the 4th after the crash. A board
        // that was awake when the cache died (the boards' phases on the real
        // clock decide) spent its first attempt in that wake, which is not
        // one after the mark: then it is the 3rd counted.
        let d = c["device"].as_str().unwrap();
        let mark_t = c["facts"]["mark_t_ms"].as_u64().unwrap();
        let after_mark: Vec<&Value> = evs
            .iter()
            .filter(|e| e["cell"] == drop12["index"] && e["device"] == d)
            .filter(|e| e["t_ms"].as_u64().unwrap() >= mark_t)
            .collect();
        let first_wake = after_mark.iter().position(|e| e["kind"] == "device.wake").unwrap();
        let attempt_in_the_wake_at_the_mark = after_mark[..first_wake]
            .iter()
            .any(|e| e["kind"] == "cloud.resume_unknown" && e["resume"] == true);
        let wakes = if attempt_in_the_wake_at_the_mark { 3 } else { 4 };
        assert_eq!(
            c["facts"]["wakes"], wakes,
            "recovered on the 4th wake after the crash: {c}"
        );
    }
    for name in [
        "fixture=sleepy-1.1 mitigation=durable",
        "fixture=sleepy-1.2 mitigation=durable",
    ] {
        for c in recovery(cell(&s, name)) {
            assert_eq!(c["facts"]["via"], "resume", "{c}");
            assert_eq!(c["facts"]["wakes"], 1, "healed at the first wake: {c}");
        }
    }
    // The devices were processes running the images the fixtures name.
    let image = std::fs::read(clone.path().join("firmware-fixtures/sleepy-c/build/sleepy-1.2.bin")).unwrap();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&image)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert!(
        evs.iter()
            .any(|e| e["kind"] == "flash.done" && e["fixture"] == "sleepy-1.2" && e["sha256"] == sha.as_str())
    );
    let pids: Vec<u64> = evs
        .iter()
        .filter(|e| e["kind"] == "power.off")
        .filter_map(|e| e["pid"].as_u64())
        .collect();
    assert!(pids.len() >= 16, "every board of every cell was a process: {pids:?}");
    assert!(pids.iter().all(|p| !pid_alive(*p)), "no qemu left behind");
}

/// (device, kind) → bytes of `cloud.rx`/`cloud.tx` events.
fn byte_totals<'a>(evs: impl Iterator<Item = &'a Value>) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for e in evs {
        let kind = e["kind"].as_str().unwrap_or_default();
        if (kind == "cloud.rx" || kind == "cloud.tx")
            && let Some(d) = e["device"].as_str()
        {
            *out.entry((d.to_owned(), kind.to_owned())).or_insert(0) += e["bytes"].as_u64().unwrap();
        }
    }
    out
}

/// The journals the external clouds of one cell wrote (one per start).
fn cloud_journals(cell_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(cell_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("cloud-"))
        .map(|p| p.join("events.jsonl"))
        .collect();
    out.sort();
    out
}

/// The headline plan, unchanged, against the built-in cloud run as an
/// outside process: the same four verdicts, and the bytes the relay counted
/// for each board are exactly the bytes that cloud counted for it (UDP: the
/// relay adds no framing).
fn headline_through_the_relay(dir: &Path) {
    let s: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let verdict = |name: &str| cell(&s, name)["verdict"].as_str().unwrap().to_owned();
    assert_eq!(
        verdict("fixture=sleepy-1.1 mitigation=drop"),
        "failed_as_expected",
        "{s}"
    );
    // Diagnosed from the cloud's log as on the built-in cloud: the loop.
    for c in recovery(cell(&s, "fixture=sleepy-1.1 mitigation=drop")) {
        let text = c["text"].as_str().unwrap();
        assert!(text.contains("endless session-resume loop"), "{text}");
    }
    for c in [
        "fixture=sleepy-1.1 mitigation=durable",
        "fixture=sleepy-1.2 mitigation=drop",
        "fixture=sleepy-1.2 mitigation=durable",
    ] {
        assert_eq!(verdict(c), "passed", "{c}: {s}");
    }
    // 1.2 with `drop` recovered by a full handshake after unanswered
    // resumes, both read from the cloud's log lines.
    for f in recovery(cell(&s, "fixture=sleepy-1.2 mitigation=drop")) {
        assert_eq!(f["facts"]["via"], "handshake", "{f}");
        assert!(f["facts"]["unknown_resumes"].as_u64().unwrap() >= 1, "{f}");
    }
    let evs = read_events(dir);
    for (index, c) in s["cells"].as_array().unwrap().iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let cell_dir = dir.join(format!("cell-{}", index + 1));
        let journals = cloud_journals(&cell_dir);
        // The durable cells restart the cloud with their mitigation.
        let want = if name.contains("durable") { 2 } else { 1 };
        assert_eq!(journals.len(), want, "{name}: {journals:?}");
        let theirs: Vec<Value> = journals.iter().flat_map(|j| journal_lines(j)).collect();
        let mine = byte_totals(evs.iter().filter(|e| e["cell"] == index as u64));
        assert_eq!(mine.len(), 8, "{name}: rx and tx for each of 4 boards: {mine:?}");
        assert_eq!(
            mine,
            byte_totals(theirs.iter()),
            "{name}: relay vs the cloud's own count"
        );
        let procs: Vec<&Value> = evs
            .iter()
            .filter(|e| e["cell"] == index as u64 && e["kind"] == "cloud.process")
            .collect();
        assert_eq!(procs.len(), want, "{name}");
        let command = procs[0]["command"].as_str().unwrap();
        assert!(command.contains("cloud serve"), "{command}");
        assert!(
            !command.contains("redis://"),
            "no cache password on a command line: {command}"
        );
        // Its output is journaled and kept, privately.
        let log = cell_dir.join("cloud-1.log");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("rig cloud: listening on udp://"), "{text}");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(evs.iter().any(|e| e["kind"] == "cloud.log"));
}

/// A partition between the boards and the cloud: nothing gets through
/// while it lasts (the boards still spend bytes trying), and the 1.1 and
/// 1.2 firmware are back within four wakes of the heal. The sign-off shows
/// the partition on the timeline.
fn partition_through_the_relay(dir: &Path) {
    let evs = read_events(dir);
    for cell in 0..2u64 {
        let of_cell: Vec<&Value> = evs.iter().filter(|e| e["cell"] == cell).collect();
        let pos = |kind: &str| of_cell.iter().position(|e| e["kind"] == kind).unwrap();
        let (cut, healed) = (pos("network.fault"), pos("network.healed"));
        assert_eq!(of_cell[cut]["fault"], "partition");
        assert_eq!(of_cell[cut]["ms"], 15_000);
        assert_eq!(of_cell[cut]["devices"].as_array().unwrap().len(), 4);
        let during = &of_cell[cut..healed];
        assert!(
            !during.iter().any(|e| e["kind"] == "cloud.connected"),
            "cell {cell}: nothing connects through a partition"
        );
        assert!(
            during.iter().any(|e| e["kind"] == "cloud.rx"),
            "cell {cell}: the boards kept trying, and that is counted"
        );
        assert!(of_cell[healed]["dropped"].as_u64().unwrap() > 0, "{}", of_cell[healed]);
        assert!(
            of_cell[healed..].iter().any(|e| e["kind"] == "cloud.connected"),
            "cell {cell}: back after the heal"
        );
    }
    let html = std::fs::read_to_string(dir.join("signoff.html")).unwrap();
    assert!(
        html.contains("network partition (15s)"),
        "the sign-off timeline shows the partition"
    );
    assert!(html.contains("network partition healed"));
}
