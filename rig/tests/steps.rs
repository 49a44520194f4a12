//! Step and check semantics end to end, pass and fail paths, and the exit
//! codes that separate "the firmware failed" (1) from "the bench broke" (3).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn test_plan(name: &str) -> String {
    repo()
        .join("rig/tests/plans")
        .join(name)
        .to_str()
        .expect("utf-8")
        .to_owned()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

fn failed_texts(cell: &Value) -> Vec<String> {
    cell["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn wait_for_fails_naming_the_device_and_quoting_its_console_then_teardown_runs() {
    let r = run(&[&test_plan("no-firmware.yaml"), "--seed", "1"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    let s = r.summary();
    let fails = failed_texts(&s["cells"][0]);
    assert_eq!(fails.len(), 1);
    assert!(
        fails[0].starts_with("sleepy-01: no cloud.connected within 5m (last console line: \"0000000000 [boot] ERROR: no valid application in flash"),
        "{}",
        fails[0]
    );
    let evs = r.events();
    let k = kinds(&evs);
    assert!(!k.contains(&"plan.mark"), "steps after a failed check are skipped");
    assert_eq!(s["cells"][0]["outcome"], "stopped");
    let teardown = evs
        .iter()
        .position(|e| e["kind"] == "plan.step" && e["phase"] == "teardown")
        .expect("teardown ran");
    assert!(evs[teardown..].iter().any(|e| e["kind"] == "power.off"));
}

#[test]
fn sleep_cycles_fails_when_boards_stop_waking() {
    let r = run(&[&test_plan("unpowered-sleep.yaml"), "--seed", "1"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    let fails = failed_texts(&r.summary()["cells"][0]);
    assert_eq!(fails.len(), 2, "{fails:?}");
    assert!(
        fails[0].starts_with("sleepy-01: completed 0 of 1 wake cycles within 1h"),
        "{}",
        fails[0]
    );
    assert!(
        fails[1].starts_with("sleepy-02: completed 0 of 1 wake cycles within 1h"),
        "{}",
        fails[1]
    );
}

#[test]
fn expect_checks_min_max_and_marks() {
    let r = run(&[&test_plan("expect-bounds.yaml"), "--seed", "1"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    let cell = &r.summary()["cells"][0];
    let checks = cell["checks"].as_array().unwrap();
    let passed: Vec<bool> = checks.iter().map(|c| c["passed"].as_bool().unwrap()).collect();
    // wait_for, min/max 1, flash.done, max 0 after the mark: pass; max 0 overall: fails.
    assert_eq!(passed, [true, true, true, true, false]);
    assert_eq!(
        checks[4]["text"],
        "sleepy-01: expected at most 0 cloud.handshake since the start of the cell, saw 1"
    );
}

#[test]
fn flashing_an_unpowered_board_is_a_bench_fault_exit_3_naming_device_and_step() {
    let r = run(&[&test_plan("flash-unpowered.yaml"), "--seed", "1"]);
    assert_eq!(r.code(), 3, "{}\n{}", r.stdout(), r.stderr());
    let s = r.summary();
    assert_eq!(s["cells"][0]["verdict"], "fault");
    let fault = s["cells"][0]["faults"][0].as_str().unwrap();
    assert!(
        fault.starts_with("sleepy-01: step 1 (flash sleepy-1.2): target not powered"),
        "{fault}"
    );
    assert!(r.stdout().contains("RIG FAULT"), "{}", r.stdout());
    let xml = std::fs::read_to_string(r.run_dir().join("junit.xml")).unwrap();
    assert!(xml.contains("<error") && xml.contains("rig_fault"), "{xml}");
}

#[test]
fn a_bench_with_hardware_this_build_cannot_drive_is_exit_3() {
    let bench = test_plan("hardware-bench.yaml");
    let (_d, plan) = temp_file("p.yaml", "name: p\nsetup:\n  - power: on\n");
    let r = run(&[
        plan.to_str().unwrap(),
        "--bench",
        &bench,
        "--fixtures",
        repo().join("firmware-fixtures").to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    let fault = r.summary()["cells"][0]["faults"][0].as_str().unwrap().to_owned();
    assert!(fault.contains("device boron-01"), "{fault}");
}

#[test]
fn the_plan_timeout_bounds_waiting_steps() {
    let r = run(&[&test_plan("plan-timeout.yaml"), "--seed", "1"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    let cell = &r.summary()["cells"][0];
    assert_eq!(cell["outcome"], "timeout");
    assert!(failed_texts(cell)[0].contains("no cloud.connected within 10m"));
    // Teardown got its own budget after the timeout.
    assert!(
        r.events()
            .iter()
            .any(|e| e["kind"] == "plan.step" && e["phase"] == "teardown")
    );
}

#[test]
fn console_commands_and_every_cache_operation_including_a_stale_restore() {
    let r = run(&[&test_plan("console-and-cache.yaml"), "--seed", "4"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    let k = kinds(&evs);
    for kind in [
        "cache.snapshot",
        "cache.restore",
        "cache.evict",
        "cache.pause",
        "cache.resume",
        "cache.flush",
    ] {
        assert!(k.contains(&kind), "{kind}");
    }
    let evict = evs.iter().find(|e| e["kind"] == "cache.evict").unwrap();
    // 8 stale sessions from the snapshot plus 8 new ones from recovery.
    assert_eq!(
        evict["sessions"].as_array().unwrap().len(),
        8,
        "half of 16 sessions: {evict}"
    );
    assert_eq!(evict["devices"].as_array().unwrap().len(), 8);
    let restore = evs.iter().find(|e| e["kind"] == "cache.restore").unwrap();
    assert_eq!(restore["from"], "before");
    assert_eq!(restore["sessions"], 8, "the snapshot's 8 old sessions are back");
    // After the stale restore every device recovered by a new handshake.
    let cell = &r.summary()["cells"][0];
    for c in recovery(cell) {
        assert_eq!(c["facts"]["via"], "handshake", "{c}");
        assert!(c["facts"]["unknown_resumes"].as_u64().unwrap() >= 1, "{c}");
    }
}

#[test]
fn a_soft_reset_keeps_the_session_in_retained_ram() {
    let r = run(&[&test_plan("reset-keeps-session.yaml"), "--seed", "1"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    let evs = r.events();
    let reset = evs.iter().position(|e| e["kind"] == "reset.soft").unwrap();
    assert!(
        evs[reset..]
            .iter()
            .any(|e| e["kind"] == "console.line" && e["line"].as_str().unwrap().contains("retained session"))
    );
}

#[test]
fn ctrl_c_runs_teardown_leaves_a_readable_report_and_exits_3() {
    let out = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args([
            "run",
            &test_plan("wait-long.yaml"),
            "--bench",
            &test_plan("real-clock-bench.yaml"),
            "--out",
        ])
        .arg(out.path())
        .env("CI", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the plan is inside its long wait, then interrupt.
    let events = || -> Option<PathBuf> {
        let dir = std::fs::read_dir(out.path()).ok()?.next()?.ok()?.path();
        Some(dir.join("events.jsonl"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting = events()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|t| t.contains("\"step\":\"wait 1m\""));
        if waiting {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached its wait step"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let result = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped promptly, not after the 60 s wait"
    );
    assert_eq!(
        result.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let dir = events().unwrap().parent().unwrap().to_path_buf();
    let evs = read_events(&dir);
    let end = evs.iter().find(|e| e["kind"] == "cell.end").expect("cell ended");
    assert_eq!(end["outcome"], "interrupted");
    let teardown = evs
        .iter()
        .position(|e| e["kind"] == "plan.step" && e["phase"] == "teardown")
        .expect("teardown ran");
    assert!(
        evs[teardown..]
            .iter()
            .any(|e| e["kind"] == "power.off" && e["device"] == "solo-01")
    );
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["cells"][0]["verdict"], "interrupted");
    assert_eq!(summary["exit_code"], 3);
}
