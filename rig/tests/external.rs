//! The rig in front of an external cloud: `rig cloud serve` started as a
//! child process standing in for a team's cloud, the boards of the
//! real-clock simulated bench reaching it through the rig's relay, the
//! session cache a redis-server the rig runs and breaks. Needs
//! `redis-server` on PATH (.ci/run installs it).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn external_bench() -> String {
    repo().join("bench/external-cloud.yaml").to_str().unwrap().to_owned()
}

fn test_plan(name: &str) -> String {
    repo().join("rig/tests/plans").join(name).to_str().unwrap().to_owned()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
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
#[test]
fn the_headline_plan_gives_its_four_verdicts_through_the_relay_to_an_external_cloud() {
    let r = run(&[
        plan("session-cache-crash.yaml").to_str().unwrap(),
        "--bench",
        &external_bench(),
        "--set",
        "outage=2s",
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let s = r.summary();
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
    let evs = r.events();
    let dir = r.run_dir();
    for (index, c) in s["cells"].as_array().unwrap().iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let cell_dir = dir.join(format!("cell-{}", index + 1));
        let journals = cloud_journals(&cell_dir);
        // The durable cells restart the cloud with their mitigation.
        let want = if name.contains("durable") { 2 } else { 1 };
        assert_eq!(journals.len(), want, "{name}: {journals:?}");
        let theirs: Vec<Value> = journals.iter().flat_map(|j| lines(j)).collect();
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
#[test]
fn devices_reconnect_by_themselves_after_a_network_partition_heals() {
    let r = run(&[
        plan("network-partition.yaml").to_str().unwrap(),
        "--bench",
        &external_bench(),
        "--set",
        "partition=15s",
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
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
    let html = std::fs::read_to_string(r.run_dir().join("signoff.html")).unwrap();
    assert!(
        html.contains("network partition (15s)"),
        "the sign-off timeline shows the partition"
    );
    assert!(html.contains("network partition healed"));
}

/// Waits for `path` to hold a line for which `f` is true.
fn wait_for_line(path: &Path, within: Duration, f: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = lines(path).into_iter().find(|v| f(v)) {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// SIGKILL of the team's cloud while the plan runs is a rig fault (exit 3)
/// that names the process and quotes its last lines; the rig still tears
/// down and leaves a readable report.
#[test]
fn killing_the_external_cloud_mid_run_is_a_rig_fault_naming_it() {
    let out = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(rig_bin())
        .args([
            "run",
            &test_plan("external-long.yaml"),
            "--bench",
            &external_bench(),
            "--out",
        ])
        .arg(out.path())
        .current_dir(repo())
        .env("CI", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let journal = loop {
        let found = std::fs::read_dir(out.path())
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path().join("events.jsonl"));
        if let Some(j) = found.filter(|j| j.exists()) {
            break j;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let proc =
        wait_for_line(&journal, Duration::from_secs(60), |v| v["kind"] == "cloud.process").expect("cloud.process");
    wait_for_line(&journal, Duration::from_secs(60), |v| v["kind"] == "cloud.connected").expect("a device connected");
    let pid = proc["pid"].as_i64().unwrap() as libc::pid_t;
    // SAFETY: signals the cloud process the rig reported.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the rig did not end after its cloud died");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains(&format!("(pid {pid}) was killed by signal 9 (SIGKILL) during the run")),
        "{stdout}"
    );
    assert!(stdout.contains("cloud serve --bench"), "names the process: {stdout}");
    assert!(
        stdout.contains("its last lines:") && stdout.contains("connected via"),
        "{stdout}"
    );
    let evs = lines(&journal);
    let fault = evs.iter().find(|e| e["kind"] == "rig.fault").expect("rig.fault");
    assert!(fault["message"].as_str().unwrap().contains("SIGKILL"));
    // Teardown ran: the boards were switched off after the fault.
    let at = evs.iter().position(|e| e["kind"] == "rig.fault").unwrap();
    assert!(evs[at..].iter().any(|e| e["kind"] == "power.off"));
}

/// A cloud that never says it is ready fails the setup once its
/// `ready_timeout` is up, with what it did write; one that exits at start
/// says how, at once.
#[test]
fn a_cloud_that_never_becomes_ready_or_exits_at_start_fails_the_setup_clearly() {
    let t = Instant::now();
    let r = run(&[
        &test_plan("external-long.yaml"),
        "--bench",
        &test_plan("external-never-ready.yaml"),
    ]);
    let took = t.elapsed();
    assert_eq!(r.code(), 3, "{}", r.stdout());
    let out = r.stdout();
    assert!(
        out.contains("did not become ready within 1.5s (waited for a log line matching `serving`)"),
        "{out}"
    );
    assert!(
        out.contains("| starting the cloud") && out.contains("| waiting for a license server"),
        "{out}"
    );
    assert!(took < Duration::from_secs(20), "bounded by its timeout: {took:?}");

    let r = run(&[
        &test_plan("external-long.yaml"),
        "--bench",
        &test_plan("external-exits.yaml"),
    ]);
    assert_eq!(r.code(), 3, "{}", r.stdout());
    let out = r.stdout();
    assert!(out.contains("exited with status 3 before it was ready"), "{out}");
    assert!(out.contains("| cannot bind: permission denied"), "{out}");
}

/// What cannot work is said before anything runs, with file, line and
/// column: a network fault on a bench without a relay, a cache password on
/// a command line, a mitigation the cloud's command cannot take.
#[test]
fn network_steps_and_external_clouds_are_checked_before_a_run() {
    let (_d, p) = temp_file(
        "net.yaml",
        "name: net\nfixture: sleepy-1.2\ndevices: all\nsteps:\n  - network: { partition: 1m }\n",
    );
    let out = rig(&["check", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("net.yaml:5:"), "{err}");
    assert!(err.contains("acts on the relay in front of an external cloud"), "{err}");

    let (_d2, b) = temp_file(
        "leaky.yaml",
        "name: leaky\nclock: real\ncloud:\n  cache: { kind: redis }\n  external:\n    command: [cloud, --redis, '{cache_url}']\ndevices:\n  - { id: d1, board: sim }\n",
    );
    let out = rig(&[
        "check",
        plan("recovery-smoke.yaml").to_str().unwrap(),
        "--bench",
        b.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("leaky.yaml:6:"), "{err}");
    assert!(err.contains("readable by every local user"), "{err}");

    let (_d3, b) = temp_file(
        "fixed.yaml",
        "name: fixed\nclock: real\ncloud:\n  cache: { kind: redis }\n  external:\n    command: [cloud]\ndevices:\n  - { id: sleepy-01, board: sim, tags: [sleepy] }\n",
    );
    let out = rig(&[
        "check",
        plan("session-cache-crash.yaml").to_str().unwrap(),
        "--bench",
        b.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot switch to mitigation `durable`"), "{err}");
}
