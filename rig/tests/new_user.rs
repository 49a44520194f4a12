//! What a new bench engineer hit in the first hour (issue 9), one regression
//! test per finding, each named after what broke.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn rig_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(rig_bin())
        .args(args)
        .current_dir(dir)
        .env("CI", "1")
        .output()
        .unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `rig cloud serve ARGS` in `dir`, once its admin socket answers.
fn serve_in(dir: &Path, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(rig_bin())
        .args(["cloud", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sock = dir.join("reports/cloud/admin.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("rig cloud serve exited ({status}): {err}");
        }
        assert!(std::time::Instant::now() < deadline, "never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn interrupt(child: std::process::Child) -> std::process::Output {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn fixtures_arg() -> String {
    repo().join("firmware-fixtures").display().to_string()
}

/// Point 1: redis-server got a relative `--dir` and a log path joined onto it, and
/// could not open its log: every real-IO run with the default `--out` failed.
#[test]
fn redis_starts_with_a_relative_out_folder() {
    let cwd = tempfile::tempdir().unwrap();
    let serve = serve_in(cwd.path(), &["--cache", "redis"]);
    assert!(cwd.path().join("reports/cloud/redis/redis.log").is_file());
    let o = rig_in(cwd.path(), &["cache", "flush"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(interrupt(serve).status.code(), Some(0));
}

/// Point 2: The CI job of docs/bench-setup.md flashed sim fixtures onto borons.
#[test]
fn the_documented_ci_job_passes_rig_check_on_the_pi_bench() {
    let o = rig(&[
        "check",
        "test-plans/session-cache-crash-boron.yaml",
        "--bench",
        "bench/pi-example.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok (4 cells, bench pi-bench-a)"), "{}", stdout(&o));
}

/// Point 3: `rig console` (and reset, flash) opened the relay at its safe level,
/// switching a board powered on by hand off.
#[test]
fn hands_on_console_reset_and_flash_leave_a_powered_board_on() {
    let gpio = tempfile::tempdir().unwrap();
    let locks = tempfile::tempdir().unwrap();
    let pin = gpio.path().join("gpio5");
    let hands_on = |args: &[&str]| {
        Command::new(rig_bin())
            .args(args)
            .current_dir(repo())
            .env("CI", "1")
            .env("RIG_FAKE_GPIO_DIR", gpio.path())
            .env("RIG_LOCK_DIR", locks.path())
            .output()
            .unwrap()
    };
    let b = "bench/pi-example.yaml";
    // Every level the relay pin was ever driven to (active low: on is 0).
    let levels = || std::fs::read_to_string(&pin).unwrap_or_default();
    let o = hands_on(&["power", "boron-01", "on", "--bench", b]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        levels().lines().all(|l| l == "0") && !levels().is_empty(),
        "switched on without passing through off: {:?}",
        levels()
    );
    let o = hands_on(&["console", "boron-01", "--bench", b, "--for", "300ms"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let _ = hands_on(&["reset", "boron-01", "--bench", b]);
    let _ = hands_on(&["flash", "boron-01", "boron-example-1.2", "--bench", b]);
    assert!(
        levels().lines().all(|l| l == "0"),
        "console, reset and flash left the board on: {:?}",
        levels()
    );
    let o = hands_on(&["power", "boron-01", "off", "--bench", b]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        levels().lines().last(),
        Some("1"),
        "and `rig power off` switches it off"
    );
}

/// Point 4: A fixture name that does not exist was a rig fault (3).
#[test]
fn flashing_an_unknown_fixture_is_a_usage_error() {
    let o = rig(&[
        "flash",
        "boron-01",
        "no-such-fixture",
        "--bench",
        "bench/pi-example.yaml",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unknown fixture `no-such-fixture`"),
        "{}",
        stderr(&o)
    );
    // A fixture for other boards is one too.
    let o = rig(&["flash", "boron-01", "sleepy-1.2", "--bench", "bench/pi-example.yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("built for boards [sim, qemu]"), "{}", stderr(&o));
}

const TWO_BORONS: &str = "name: two
devices:
  - id: a
    board: boron
    power: { kind: gpio, pin: 17 }
    console: { port: /dev/serial/by-id/a }
    flash: { kind: command, command: 'true' }
    key: '1111111111111111111111111111111111111111111111111111111111111111'
  - id: b
    board: boron
    power: { kind: gpio, pin: 18 }
    console: { port: /dev/serial/by-id/b }
    flash: { kind: command, command: 'true' }
    key: '2222222222222222222222222222222222222222222222222222222222222222'
";

/// Point 5: Two devices sharing a relay pin, a console or a key passed `rig check`.
#[test]
fn a_bench_whose_devices_share_a_pin_a_console_or_a_key_is_refused() {
    for (from, to, what) in [
        ("pin: 18", "pin: 17", "GPIO 17"),
        (
            "/dev/serial/by-id/b",
            "/dev/serial/by-id/a",
            "serial port /dev/serial/by-id/a",
        ),
        (&"2".repeat(64), &"1".repeat(64), "key 11111111"),
    ] {
        let (_d, bench) = temp_file("bench.yaml", &TWO_BORONS.replacen(from, to, 1));
        let (_p, plan) = temp_file("p.yaml", "name: p\nsteps:\n  - wait: 1s\n");
        let o = rig(&[
            "check",
            plan.to_str().unwrap(),
            "--bench",
            bench.to_str().unwrap(),
            "--fixtures",
            &fixtures_arg(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("bench.yaml:9:9: error: device `b` uses"), "{err}");
        assert!(err.contains(what), "{what}: {err}");
        assert!(err.contains("device `a` (line 3) already uses it"), "{err}");
    }
    let (_d, bench) = temp_file("bench.yaml", TWO_BORONS);
    let o = rig(&["check", "--bench", bench.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Point 6: A plan's name became a path: `../../escape` wrote outside the run folder.
#[test]
fn a_plan_name_that_is_a_path_is_refused() {
    let (_d, plan) = temp_file("p.yaml", "name: ../../escape\nsteps:\n  - wait: 1s\n");
    let o = rig(&["check", plan.to_str().unwrap(), "--fixtures", &fixtures_arg()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("p.yaml:1:7: error: plan name `../../escape`"),
        "{}",
        stderr(&o)
    );
}

/// Point 7: A plan that ran into its timeout said "FAILED" and nothing else.
#[test]
fn a_plan_that_runs_out_of_time_says_where() {
    let (_d, plan) = temp_file(
        "slow.yaml",
        "name: slow\ntimeout: 1h\nsetup:\n  - power: on\n  - flash: sleepy-1.2\nsteps:\n  - sleep_cycles: 100\n",
    );
    let r = run(&[plan.to_str().unwrap(), "--fixtures", &fixtures_arg(), "--seed", "1"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let want = "timed out after 1h in step 3 (sleep_cycles 100)";
    assert!(r.stdout().contains(want), "{}", r.stdout());
    let s = r.summary();
    assert!(
        s["cells"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["passed"] == false && c["text"] == want),
        "{s}"
    );
    let xml = std::fs::read_to_string(r.run_dir().join("junit.xml")).unwrap();
    assert!(xml.contains(&format!("type=\"plan\" message=\"{want}\"")), "{xml}");
}

/// Point 8: A power cycle's off time ignored the plan's timeout (PASSED after
/// 262,800 h of plan time), and `rig check` did not notice.
#[test]
fn every_step_honours_the_plan_timeout() {
    let (_d, plan) = temp_file(
        "p.yaml",
        "name: p\ntimeout: 12h\nsteps:\n  - power: { cycle: { off_for: 99999999999h } }\n",
    );
    let o = rig(&["check", plan.to_str().unwrap(), "--fixtures", &fixtures_arg()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("p.yaml:4:5: error: this step cannot finish within the plan's timeout of 12h"),
        "{}",
        stderr(&o)
    );
    // One that fits on paper but not after the cycles before it.
    let (_d, plan) = temp_file(
        "q.yaml",
        "name: q\ntimeout: 20m\nsetup:\n  - power: on\n  - flash: sleepy-1.2\nsteps:\n  - sleep_cycles: 2\n  - power: { cycle: { off_for: 10m } }\n",
    );
    let r = run(&[plan.to_str().unwrap(), "--fixtures", &fixtures_arg(), "--seed", "1"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(
        r.stdout()
            .contains("timed out after 20m in step 4 (power cycle (off for 10m))"),
        "{}",
        r.stdout()
    );
    let plan_ms = r.summary()["cells"][0]["plan_ms"].as_u64().unwrap();
    assert!(plan_ms <= 20 * 60 * 1000 + 1000, "stopped at the timeout: {plan_ms} ms");
}

/// Point 9: `rig cache restore NAME` with no such snapshot killed redis first; and
/// a plan restoring a snapshot nothing takes passed `rig check`.
#[test]
fn a_restore_of_a_missing_snapshot_leaves_the_cache_running() {
    let cwd = tempfile::tempdir().unwrap();
    let serve = serve_in(cwd.path(), &["--cache", "redis"]);
    let o = rig_in(cwd.path(), &["cache", "restore", "nightly"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no snapshot named `nightly`"), "{}", stderr(&o));
    // The server is the one that started, and it still answers.
    let o = rig_in(cwd.path(), &["cache", "flush"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(interrupt(serve).status.code(), Some(0));
    let (_, evs) = rig::timeline::read_jsonl(&cwd.path().join("reports/cloud/events.jsonl")).unwrap();
    let kinds: Vec<&str> = evs
        .iter()
        .map(|e| e.kind.name())
        .filter(|k| k.starts_with("cache."))
        .collect();
    assert_eq!(kinds, ["cache.start", "cache.flush"], "no kill, no restart");

    let (_d, plan) = temp_file(
        "p.yaml",
        "name: p\nsteps:\n  - cache: { snapshot: weekly }\n  - cache: { restore: nightly }\n",
    );
    let o = rig(&["check", plan.to_str().unwrap(), "--fixtures", &fixtures_arg()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("p.yaml:4:5: error: `restore: nightly` names a snapshot that no earlier step takes (snapshots taken before this step: weekly)"),
        "{}",
        stderr(&o)
    );
}

/// Point 10: An interrupted run's sign-off read "SIGN-OFF FAILED", blaming the
/// firmware for a bench problem; a journal holding only its header was 0.
#[test]
fn an_interrupted_run_has_no_verdict_and_an_empty_journal_is_exit_3() {
    let out = tempfile::tempdir().unwrap();
    let child = Command::new(rig_bin())
        .args([
            "run",
            "rig/tests/plans/wait-long.yaml",
            "--bench",
            "rig/tests/plans/real-clock-bench.yaml",
            "--out",
        ])
        .arg(out.path())
        .current_dir(repo())
        .env("CI", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let dir = loop {
        let dir = std::fs::read_dir(out.path())
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path());
        if let Some(d) = &dir
            && std::fs::read_to_string(d.join("events.jsonl")).is_ok_and(|t| t.contains("\"step\":\"wait 1m\""))
        {
            break d.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the run never reached its wait");
        std::thread::sleep(Duration::from_millis(20));
    };
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).contains("NO VERDICT"), "{}", stdout(&o));
    let html = std::fs::read_to_string(dir.join("signoff.html")).unwrap();
    assert!(html.contains("<h1>NO VERDICT</h1>"), "the headline says so");
    assert!(!html.contains("SIGN-OFF FAILED"));
    assert!(html.contains("infrastructure, not firmware"));
    let md = std::fs::read_to_string(dir.join("signoff.md")).unwrap();
    assert!(md.starts_with("# rig sign-off: NO VERDICT"), "{md}");

    // A journal with its header and nothing else judged nothing.
    let empty = tempfile::tempdir().unwrap();
    let header = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    std::fs::write(
        empty.path().join("events.jsonl"),
        format!("{}\n", header.lines().next().unwrap()),
    )
    .unwrap();
    let o = rig(&["report", empty.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(stdout(&o).contains("NO VERDICT"), "{}", stdout(&o));
}

/// Point 11: `rig cloud serve` ignored SIGTERM (exit 143, a stale admin.sock).
#[test]
fn cloud_serve_stops_cleanly_on_sigterm() {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(rig_bin())
        .args(["cloud", "serve", "--listen", "127.0.0.1:0", "--out"])
        .arg(out.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sock = out.path().join("admin.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(std::time::Instant::now() < deadline, "never served");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(!sock.exists(), "admin.sock removed");
}

/// Point 12: On a full disk the run went on to the end, printing a "cannot write
/// events.jsonl" line per event (11,000 of them).
#[test]
fn a_full_disk_stops_the_run_at_the_first_failed_write() {
    let mnt = tempfile::tempdir().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k rig-full {m} && exec {rig} run test-plans/session-cache-crash.yaml --seed 7 --out {m}",
        m = mnt.path().display(),
        rig = rig_bin().display()
    );
    // A tmpfs of 64 KiB in a private mount namespace: a real ENOSPC.
    let o = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .current_dir(repo())
        .env("CI", "1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(
        !err.contains("unshare: "),
        "this test needs `unshare -rm` (user and mount namespaces) for a small full filesystem: {err}"
    );
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(err.matches("events.jsonl").count(), 1, "one clear message:\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("[1/4]") && !err.contains("[2/4]"),
        "stopped in the first cell:\n{err}"
    );
    assert!(err.contains("after teardown and the safe power state"), "{err}");
    // What was left behind stayed inside the namespace's mount; nothing here.
    assert_eq!(std::fs::read_dir(mnt.path()).unwrap().count(), 0);
}

/// Point 12b: The report writer leaves no temp file when a write fails.
#[test]
fn a_failed_report_write_leaves_no_temp_file() {
    let mnt = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let r = run(&[plan("recovery-smoke.yaml").to_str().unwrap(), "--seed", "1"]);
    let events = r.run_dir().join("events.jsonl");
    std::fs::copy(&events, src.path().join("events.jsonl")).unwrap();
    // The journal fits; the reports do not.
    let script = format!(
        "mount -t tmpfs -o size=200k rig-full {m} && cp {s}/events.jsonl {m}/ ; {rig} report {m}; echo rc=$?; ls -A {m}",
        m = mnt.path().display(),
        s = src.path().display(),
        rig = rig_bin().display()
    );
    let o = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(out.contains("rc=3"), "{out}{}", stderr(&o));
    assert!(!out.contains(".tmp"), "no temp files left: {out}");
}

/// Point 13: `rig bench --seconds 1e20` panicked; `--clients 100000000` aborted.
#[test]
fn rig_bench_refuses_absurd_arguments() {
    for args in [
        &["bench", "--seconds", "1e20"][..],
        &["bench", "--seconds", "NaN"],
        &["bench", "--seconds", "0"],
        &["bench", "--clients", "100000000"],
        &["bench", "--clients", "0"],
    ] {
        let o = rig(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("error: --"), "{args:?}: {}", stderr(&o));
    }
}

/// Point 14: Errors that lost their position: invalid UTF-8, bench-level rules,
/// a fixture's name, an over-large regex, an unclosed `{`.
#[test]
fn every_input_error_names_file_line_and_column() {
    let check = |file: &str, args: &[&str]| {
        let o = rig(args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(file), "expected `{file}` in:\n{err}");
        err
    };
    // Invalid UTF-8 in a plan, at the byte.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.yaml");
    std::fs::write(&p, b"name: p\nsteps:\n  - wait: 1s \xff\n").unwrap();
    let err = check(
        "p.yaml:3:14: error: expected UTF-8 text, found the byte 0xff",
        &["check", p.to_str().unwrap()],
    );
    assert!(err.contains("3 |"), "{err}");
    // ... and in a bench file.
    let b = d.path().join("b.yaml");
    std::fs::write(&b, b"name: b\ndevices:\n  - { id: s\xc3, board: sim }\n").unwrap();
    check(
        "b.yaml:3:12: error: expected UTF-8",
        &["check", "--bench", b.to_str().unwrap()],
    );
    // A bench-level rule points at the setting that breaks it.
    std::fs::write(
        &b,
        "name: b\nclock: virtual\nsim: { console: pty }\ndevices:\n  - { id: s, board: sim }\n",
    )
    .unwrap();
    check(
        "b.yaml:3:17: error: `sim: { console: pty }` needs `clock: real`",
        &["check", "--bench", b.to_str().unwrap()],
    );
    // A fixture whose name is not its folder, and a regex too big to compile.
    let fx = d.path().join("fixtures/good-name");
    std::fs::create_dir_all(&fx).unwrap();
    std::fs::write(
        fx.join("fixture.yaml"),
        "name: other-name\nversion: 1\nboards: [boron]\nconsole:\n  boot: '(a{1000}){1000}'\n  wake: 'w'\n  sleep: 's'\n",
    )
    .unwrap();
    let fixtures = d.path().join("fixtures");
    let err = check(
        "fixture.yaml:1:7: error: fixture name `other-name` must match its folder name `good-name`",
        &["check", p.to_str().unwrap(), "--fixtures", fixtures.to_str().unwrap()],
    );
    assert!(
        err.contains("fixture.yaml:5:9: error: console.boot is not a usable regex"),
        "{err}"
    );
    // A plan's console regex too.
    std::fs::write(
        &p,
        "name: p\nsetup:\n  - power: on\nsteps:\n  - wait_for: { console: '(a{1000}){1000}' }\n",
    )
    .unwrap();
    check(
        "p.yaml:5:26: error: console pattern is not a usable regex",
        &["check", p.to_str().unwrap(), "--fixtures", &fixtures_arg()],
    );
    // An unclosed `{` points at the brace, not at where the parser gave up.
    std::fs::write(
        &p,
        "name: p\nsetup:\n  - power: { cycle: { off_for: 2s }\n  - wait: 1s\n\nsteps:\n  - wait: 2s\n",
    )
    .unwrap();
    check(
        "p.yaml:3:12: error: `{` opened here is never closed",
        &["check", p.to_str().unwrap(), "--fixtures", &fixtures_arg()],
    );
}

/// Point 15: No completions, no man page, JUnit suites all said time="0.0", and the
/// sign-off repeated one diagnosis per device.
#[test]
fn completions_man_page_junit_times_and_grouped_diagnoses() {
    for shell in ["bash", "zsh", "fish"] {
        let o = rig(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0));
        assert!(stdout(&o).contains("cloud"), "{shell} completion names subcommands");
    }
    let o = rig(&["man"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).starts_with(".ie") || stdout(&o).contains(".TH rig"),
        "{}",
        stdout(&o)
    );

    let r = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "7"]);
    assert_eq!(r.code(), 0);
    let s = r.summary();
    let xml = std::fs::read_to_string(r.run_dir().join("junit.xml")).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut suites: Vec<(f64, Option<f64>)> = Vec::new();
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                let attr = |k: &[u8]| {
                    e.attributes()
                        .map(|a| a.unwrap())
                        .find(|a| a.key.as_ref() == k)
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                };
                match e.name().as_ref() {
                    b"testsuite" => suites.push((attr(b"time").unwrap().parse().unwrap(), None)),
                    b"property" if attr(b"name").as_deref() == Some("plan_time_s") => {
                        suites.last_mut().unwrap().1 = Some(attr(b"value").unwrap().parse().unwrap());
                    }
                    _ => {}
                }
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(suites.len(), 4);
    for (i, (wall, plan_s)) in suites.iter().enumerate() {
        let c = &s["cells"][i];
        let want_wall = c["wall_ms"].as_u64().unwrap() as f64 / 1000.0;
        assert!(
            (wall - want_wall).abs() < 0.002,
            "suite time is the cell's wall time: {wall} vs {want_wall}"
        );
        let want_plan = c["plan_ms"].as_u64().unwrap() as f64 / 1000.0;
        assert_eq!(*plan_s, Some(want_plan), "plan time as a property");
        assert!(want_plan > 3600.0, "hours of plan time, not wall time");
    }
    let html = std::fs::read_to_string(r.run_dir().join("signoff.html")).unwrap();
    assert_eq!(
        html.matches("8 devices: sleepy-01, sleepy-02").count(),
        1,
        "the negative control's one diagnosis, shown once for all eight"
    );
    assert_eq!(
        html.matches("looks like an endless session-resume loop").count(),
        1,
        "one diagnosis, not eight"
    );
    let _: Value = s;
}
