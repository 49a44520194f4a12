//! Bench hardware through its seams on this machine (no Pi here): the bench
//! lock, `rig doctor`, `rig power` with a command driver, and clear exit-3
//! errors for hardware that is not present.

mod common;

use std::time::Duration;

use common::*;

fn rig_env(args: &[&str], lock_dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args(args)
        .current_dir(repo())
        .env("CI", "1")
        .env("RIG_LOCK_DIR", lock_dir)
        .output()
        .unwrap()
}

const LOCKED_SIM: &str = "name: locked-sim\nlock: true\ndevices:\n  - { id: sleepy-01, board: sim, tags: [sleepy] }\n";

#[test]
fn a_second_run_on_a_locked_bench_exits_3_naming_the_holder_or_waits() {
    let locks = tempfile::tempdir().unwrap();
    let (_b, bench) = temp_file("bench.yaml", LOCKED_SIM);
    let out = tempfile::tempdir().unwrap();
    let plan = plan("recovery-smoke.yaml");
    let args = |wait: Option<&str>| {
        let mut a = vec![
            "run",
            plan.to_str().unwrap(),
            "--bench",
            bench.to_str().unwrap(),
            "--seed",
            "1",
            "--out",
        ];
        a.push(out.path().to_str().unwrap());
        if let Some(w) = wait {
            a.extend(["--wait-lock", w]);
        }
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let holder = rig::lock::Holder {
        pid: 4242,
        host: "ci-runner-7".into(),
        plan: "nightly-soak.yaml".into(),
        started: "2026-11-23T20:00:00Z".into(),
    };
    let lock = rig::lock::acquire(locks.path(), "locked-sim", &holder, None).unwrap();
    let a = args(None);
    let o = rig_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), locks.path());
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bench `locked-sim` is in use by pid 4242 on ci-runner-7 running nightly-soak.yaml"),
        "{err}"
    );
    // With --wait-lock it waits for the holder to finish.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(lock);
    });
    let a = args(Some("30s"));
    let o = rig_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), locks.path());
    t.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_stale_lock_is_taken_over_with_a_warning() {
    let locks = tempfile::tempdir().unwrap();
    std::fs::write(
        locks.path().join("locked-sim.holder"),
        r#"{"pid":999999,"host":"pi","plan":"crashed.yaml","started":"2026-11-22T00:00:00Z"}"#,
    )
    .unwrap();
    let (_b, bench) = temp_file("bench.yaml", LOCKED_SIM);
    let out = tempfile::tempdir().unwrap();
    let o = rig_env(
        &[
            "run",
            plan("recovery-smoke.yaml").to_str().unwrap(),
            "--bench",
            bench.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ],
        locks.path(),
    );
    assert_eq!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("left locked by a run that ended without releasing it (pid 999999"),
        "{err}"
    );
    assert!(!locks.path().join("locked-sim.holder").exists(), "released cleanly");
}

#[test]
fn doctor_lists_this_machine_and_what_a_pi_bench_misses() {
    let locks = tempfile::tempdir().unwrap();
    let o = rig_env(&["doctor"], locks.path());
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("GPIO") && out.contains("redis-server"), "{out}");
    let o = rig_env(&["doctor", "--bench", "bench/pi-example.yaml"], locks.path());
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("MISS boron-01: console /dev/serial/by-id/"), "{out}");
}

#[test]
fn a_gpio_bench_off_a_pi_is_a_clear_exit_3() {
    let locks = tempfile::tempdir().unwrap();
    let (_d, plan) = temp_file("p.yaml", "name: p\nsetup:\n  - power: on\n");
    let out = tempfile::tempdir().unwrap();
    let o = rig_env(
        &[
            "run",
            plan.to_str().unwrap(),
            "--bench",
            "bench/pi-example.yaml",
            "--fixtures",
            "firmware-fixtures",
            "--out",
            out.path().to_str().unwrap(),
        ],
        locks.path(),
    );
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        all.contains("GPIO is not available") && all.contains("not a Raspberry Pi"),
        "{all}"
    );
}

#[test]
fn rig_power_drives_a_command_relay_and_refuses_simulated_boards() {
    let locks = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("relay.log");
    let bench = dir.path().join("bench.yaml");
    std::fs::write(
        &bench,
        format!(
            "name: hub\ndevices:\n  - id: board-1\n    board: boron\n    power: {{ kind: command, on: 'echo on {{device}} >> {0}', off: 'echo off {{device}} >> {0}' }}\n    console: {{ port: /dev/null }}\n    flash: {{ kind: command, command: 'true {{image}}' }}\n    key: '{1}'\n",
            log.display(),
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let o = rig_env(
        &[
            "power",
            "board-1",
            "cycle",
            "--off-for",
            "10ms",
            "--bench",
            bench.to_str().unwrap(),
        ],
        locks.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "off board-1\non board-1\n");
    let o = rig_env(
        &["power", "nope", "on", "--bench", bench.to_str().unwrap()],
        locks.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    let o = rig_env(&["power", "sleepy-01", "on", "--bench", "bench/sim.yaml"], locks.path());
    assert_eq!(o.status.code(), Some(2));
}

/// A hardware board stood in for by a pty: its console is real serial I/O.
#[test]
fn hands_on_console_reset_and_flash_on_a_pty_board() {
    use serialport::{SerialPort, TTYPort};
    use std::io::{Read, Write};

    let locks = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut board, slave) = TTYPort::pair().unwrap();
    board.set_timeout(Duration::from_secs(10)).unwrap();
    let flashed = dir.path().join("flashed");
    let bench = dir.path().join("bench.yaml");
    std::fs::write(
        &bench,
        format!(
            "name: pty-bench\ndevices:\n  - id: board-1\n    board: boron\n    power: {{ kind: command, on: 'true', off: 'true' }}\n    console: {{ port: {port} }}\n    flash: {{ kind: command, command: 'cp {{image}} {out}' }}\n    reset: {{ kind: console, command: 'system reset' }}\n    key: '{key}'\n",
            port = slave.name().unwrap(),
            out = flashed.display(),
            key = "cd".repeat(32)
        ),
    )
    .unwrap();
    // A fixture with a real image for the command flasher.
    let fx = dir.path().join("fixtures/board-fw");
    std::fs::create_dir_all(&fx).unwrap();
    std::fs::write(fx.join("fw.bin"), b"\x7fELF-ish firmware image").unwrap();
    std::fs::write(
        fx.join("fixture.yaml"),
        "name: board-fw\nversion: 3.0.0\nboards: [boron]\nimage: fw.bin\nconsole: { boot: 'boot', wake: 'wake', sleep: 'sleep' }\n",
    )
    .unwrap();

    let b = bench.to_str().unwrap();
    let o = rig_env(
        &[
            "flash",
            "board-1",
            "board-fw",
            "--bench",
            b,
            "--fixtures",
            dir.path().join("fixtures").to_str().unwrap(),
        ],
        locks.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&flashed).unwrap(), b"\x7fELF-ish firmware image");
    assert!(String::from_utf8_lossy(&o.stderr).contains("flashed board-fw 3.0.0 (sha256 "));

    let o = rig_env(&["reset", "board-1", "--bench", b], locks.path());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let mut got = [0u8; 13];
    board.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"system reset\n");

    // No time window: the console runs until the line it must print has
    // been printed, then Ctrl-C ends it (exit 0).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args(["console", "board-1", "--bench", b, "--send", "status"])
        .env("RIG_LOCK_DIR", locks.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = [0u8; 7];
    board.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"status\n");
    board.write_all(b"0000001234 [app] INFO: session 0123 ok\r\n").unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "0000001234 [app] INFO: session 0123 ok\n");
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    drop(slave);
}

/// Runs a plan that powers `board-1` on and then waits a minute on a
/// one-device hardware bench whose `power:` section is `power`; once the run
/// is inside that wait and `powered_on()` says the relay is on, sends SIGINT
/// and returns the exit code. `env` adds variables (e.g. the fake GPIO folder).
fn interrupt_a_powered_run(
    dir: &std::path::Path,
    power: &str,
    env: &[(&str, &std::path::Path)],
    powered_on: impl Fn() -> bool,
) -> Option<i32> {
    let locks = tempfile::tempdir().unwrap();
    let bench = dir.join("bench.yaml");
    std::fs::write(
        &bench,
        format!(
            "name: hw-bench\nsafe_state: off\ndevices:\n  - id: board-1\n    board: boron\n    power: {power}\n    console: {{ port: {0}/no-console }}\n    flash: {{ kind: command, command: 'true' }}\n    key: '{1}'\n",
            dir.display(),
            "ef".repeat(32)
        ),
    )
    .unwrap();
    let plan = dir.join("plan.yaml");
    std::fs::write(&plan, "name: long\nsetup:\n  - power: on\nsteps:\n  - wait: 60s\n").unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rig"));
    cmd.args([
        "run",
        plan.to_str().unwrap(),
        "--bench",
        bench.to_str().unwrap(),
        "--fixtures",
    ])
    .arg(repo().join("firmware-fixtures"))
    .arg("--out")
    .arg(dir.join("out"))
    .env("CI", "1")
    .env("RIG_LOCK_DIR", locks.path())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let out = dir.join("out");
    let in_wait = || {
        std::fs::read_dir(&out)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("events.jsonl")).ok())
            .is_some_and(|t| t.contains("\"step\":\"wait 1m\""))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(in_wait() && powered_on()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the plan never switched the board on and reached its wait"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let result = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&result.stderr));
    result.status.code()
}

/// Ctrl-C in the middle of a plan: teardown and the safe state switch a real
/// driver (a command relay here) off before the rig exits.
#[test]
fn sigint_mid_run_switches_hardware_back_to_the_safe_state() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("relay.log");
    let power = format!(
        "{{ kind: command, on: 'echo on >> {0}', off: 'echo off >> {0}' }}",
        log.display()
    );
    let code = interrupt_a_powered_run(dir.path(), &power, &[], || {
        std::fs::read_to_string(&log).unwrap_or_default() == "off\non\n"
    });
    assert_eq!(code, Some(3));
    // Safe state at start, on by the plan, off again after the interrupt.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "off\non\noff\n");
}

/// The signal path through the GPIO seam: a fake pin (a file per line under
/// RIG_FAKE_GPIO_DIR) records every level the GPIO driver drives.
#[test]
fn sigint_mid_run_drives_an_active_low_gpio_relay_back_to_off() {
    let dir = tempfile::tempdir().unwrap();
    let gpio = dir.path().join("gpio");
    std::fs::create_dir_all(&gpio).unwrap();
    let pin = gpio.join("gpio17");
    // Opened at the safe level (off = high for active low), then the safe
    // state asserted again, then switched on (low) by the plan.
    let code = interrupt_a_powered_run(
        dir.path(),
        "{ kind: gpio, pin: 17, active_low: true }",
        &[("RIG_FAKE_GPIO_DIR", gpio.as_path())],
        || std::fs::read_to_string(&pin).unwrap_or_default().ends_with("0\n"),
    );
    assert_eq!(code, Some(3));
    let levels = std::fs::read_to_string(&pin).unwrap();
    assert!(levels.starts_with("1\n"), "opened at the safe level: {levels:?}");
    assert!(levels.ends_with("0\n1\n"), "on, then back off after SIGINT: {levels:?}");
}

/// `rig console` fed a flood on a pty: every line printed, in order (the
/// benchmark fails otherwise), and its memory does not grow with the lines
/// (an unbounded queue between the port thread and the printer used to
/// grow it by ~400 bytes per line whenever printing fell behind).
#[test]
fn rig_console_holds_bounded_memory_through_a_flood() {
    let locks = tempfile::tempdir().unwrap();
    let o = rig_env(&["bench", "console", "--lines", "300000"], locks.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let mib = |after: &str| -> f64 {
        let at = out.find(after).unwrap_or_else(|| panic!("no `{after}` in {out}"));
        let head = &out[..at];
        head[head.rfind([' ', ',']).unwrap() + 1..]
            .trim_end_matches(" MiB")
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let early = mib(" MiB after a tenth of the lines");
    let end = mib(" MiB at the end");
    assert!(early > 1.0 && end > 1.0, "resident memory was read: {out}");
    // 270,000 lines after the first sample: 400 bytes each would be 100 MiB.
    assert!(end - early < 16.0, "rig console grew from {early} to {end} MiB: {out}");
}
