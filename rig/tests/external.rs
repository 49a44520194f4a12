//! The rig in front of an external cloud: how it fails. (The README's
//! commands on bench/external-cloud.yaml, the headline plan and a
//! partition, are run as typed and checked by docs.rs.) Needs
//! `redis-server` on PATH (.ci/run installs it).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn external_bench() -> String {
    repo().join("bench/external-cloud.yaml").to_str().unwrap().to_owned()
}

fn test_plan(name: &str) -> String {
    repo().join("rig/tests/plans").join(name).to_str().unwrap().to_owned()
}

/// Waits for `path` to hold a line for which `f` is true.
fn wait_for_line(path: &Path, within: Duration, f: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = journal_lines(path).into_iter().find(|v| f(v)) {
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
    let evs = journal_lines(&journal);
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

/// Attached to a cloud the rig did not start and that tells it nothing:
/// the boards' consoles say when they are connected (the fixture's
/// `connected:` pattern), and a partition on the relay is recovered from.
#[test]
fn attached_to_a_running_cloud_connection_state_comes_from_the_consoles() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bench_text = format!(
        "name: attached\nclock: real\nsim: {{ time_scale: 0.005, console: pty }}\ncloud:\n  cache: {{ kind: memory }}\n  external: {{ attach: \"127.0.0.1:{port}\" }}\ndevices:\n  - {{ id: sleepy-01, board: sim, tags: [sleepy] }}\n  - {{ id: sleepy-02, board: sim, tags: [sleepy] }}\n"
    );
    let (dir, bench) = temp_file("attached.yaml", &bench_text);
    // The cloud someone else runs: it knows the boards' keys from the same bench.
    let mut cloud = std::process::Command::new(rig_bin())
        .args([
            "cloud",
            "serve",
            "--bench",
            bench.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--out")
        .arg(dir.path().join("cloud"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while benchmark_bound(port) == 0 {
        assert!(Instant::now() < deadline, "rig cloud serve did not bind {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = run(&[
        plan("network-partition.yaml").to_str().unwrap(),
        "--bench",
        bench.to_str().unwrap(),
        "--set",
        "fixture=sleepy-1.2",
        "--set",
        "partition=10s",
    ]);
    let _ = cloud.kill();
    let _ = cloud.wait();
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    let connects: Vec<&Value> = evs.iter().filter(|e| e["kind"] == "cloud.connected").collect();
    assert!(connects.len() >= 4, "{}", connects.len());
    assert!(connects.iter().all(|e| e["source"] == "console"), "from the consoles");
    assert!(
        !evs.iter().any(|e| e["kind"] == "cloud.process"),
        "the rig started no cloud"
    );
    assert!(evs.iter().any(|e| e["kind"] == "network.healed"));
}

/// How many UDP sockets are bound to `port` (from /proc/net/udp).
fn benchmark_bound(port: u16) -> usize {
    let want = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").ends_with(&want))
        })
        .count()
}
