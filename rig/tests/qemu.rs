//! Emulated boards (bench kind `qemu`): real firmware images from
//! `firmware-fixtures/sleepy-c` in `qemu-system-arm` processes, consoles
//! on ptys through the serial driver, datagrams over UART1. Needs
//! qemu-system-arm and gcc-arm-none-eabi (.ci/run installs both). The
//! headline plan on this bench is the README's "Virtual boards" command,
//! run as typed by `docs.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Builds the images once per test binary (make is idempotent; one build
/// tree must not be written by two makes at once).
fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = std::process::Command::new("make")
            .arg("-C")
            .arg(repo().join("firmware-fixtures/sleepy-c"))
            .output()
            .expect("make runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    });
}

fn qemu_bench() -> String {
    repo().join("bench/qemu.yaml").to_str().unwrap().to_owned()
}

fn test_plan(name: &str) -> String {
    repo().join("rig/tests/plans").join(name).to_str().unwrap().to_owned()
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// `qemu-system-arm` processes whose parent is `parent`.
fn qemu_children_of(parent: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else { continue };
        let comm = &stat[stat.find('(').unwrap_or(0) + 1..close];
        let ppid: Option<u32> = stat[close + 2..].split(' ').nth(1).and_then(|p| p.parse().ok());
        if comm.starts_with("qemu-system") && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn of<'a>(evs: &'a [Value], dev: &str, kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["device"] == dev && e["kind"] == kind).collect()
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

/// After a soft reset (QMP system_reset) the image finds its session in
/// retained RAM and keeps resuming it; after a power cycle (the process
/// killed and started again) it has none and does a full handshake.
#[test]
fn on_qemu_a_soft_reset_keeps_the_stale_session_and_a_power_cycle_clears_it() {
    images();
    // With the redis cache this time: the bench's cache kinds all work here.
    let bench = std::fs::read_to_string(qemu_bench())
        .unwrap()
        .replace("cache: { kind: memory }", "cache: { kind: redis }");
    assert!(bench.contains("kind: redis"));
    let (_dir, bench_path) = temp_file("qemu-redis.yaml", &bench);
    let r = run(&[
        repo()
            .join("test-plans/soft-reset-vs-power-cycle.yaml")
            .to_str()
            .unwrap(),
        "--bench",
        bench_path.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    assert!(
        evs.iter()
            .any(|e| e["kind"] == "cache.kill" && e["pid"].as_u64().is_some()),
        "a real redis-server"
    );
    // QEMU's own log of the console byte stream is the lossless record:
    // every line the rig journaled is in it, in order.
    let log = std::fs::read_to_string(r.run_dir().join("cell-1/qemu/vboard-01/console.log")).unwrap();
    let mut rest = log.as_str();
    for e in evs
        .iter()
        .filter(|e| e["device"] == "vboard-01" && e["kind"] == "console.line")
    {
        let line = e["line"].as_str().unwrap();
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} not in console.log after its predecessor"));
        rest = &rest[at + line.len()..];
    }
    for dev in ["vboard-01", "vboard-02", "vboard-03", "vboard-04"] {
        // The reboot's console lines can land before the reset.soft event
        // (the reset is done when QEMU answers); the mark comes before both.
        let reset = evs
            .iter()
            .find(|e| e["kind"] == "plan.mark" && e["name"] == "soft-reset")
            .expect("the soft-reset mark");
        let lines: Vec<&str> = evs
            .iter()
            .filter(|e| e["device"] == dev && e["kind"] == "console.line" && seq(e) > seq(reset))
            .map(|e| e["line"].as_str().unwrap())
            .collect();
        let banner = lines.iter().position(|l| l.contains("booting")).expect("it rebooted");
        assert!(lines[banner].contains("reset reason: soft-reset"), "{}", lines[banner]);
        assert!(
            lines[banner + 1].contains("retained session"),
            "{dev}: {:?}",
            &lines[banner..banner + 3]
        );
        // Power: the process is the board. (The flash step restarted it
        // into the image, so power.on's pid is the blank board's.)
        let ons = of(&evs, dev, "power.on");
        let offs = of(&evs, dev, "power.off");
        assert!(ons[0]["pid"].as_u64().is_some(), "power.on names the pid");
        let cycled_off = offs
            .iter()
            .find(|e| seq(e) > seq(reset) && e["pid"].as_u64().is_some())
            .expect("the power cycle named the process it killed");
        let first = cycled_off["pid"].as_u64().unwrap();
        let again = ons.iter().find(|e| seq(e) > seq(cycled_off)).expect("powered on again");
        assert_ne!(again["pid"].as_u64().unwrap(), first, "a new process");
        assert!(!pid_alive(first));
        let hs_after = evs
            .iter()
            .filter(|e| e["device"] == dev && e["kind"] == "cloud.handshake" && seq(e) > seq(again))
            .count();
        assert_eq!(hs_after, 1, "{dev}: one full handshake after the power cycle");
    }
}

/// With `flash_resets: false` a flash only writes the flash file: the
/// running image goes on until the board resets, and the hash reported is
/// the image file's SHA-256. A reset the firmware makes itself is recorded.
#[test]
fn on_qemu_a_new_image_takes_effect_at_the_next_reset() {
    images();
    let bench = std::fs::read_to_string(qemu_bench())
        .unwrap()
        .replace("flash_resets: true", "flash_resets: false");
    assert!(bench.contains("flash_resets: false"));
    let (_dir, bench_path) = temp_file("qemu-noreset.yaml", &bench);
    let r = run(&[
        &test_plan("qemu-flash-running.yaml"),
        "--bench",
        bench_path.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    let image = |name: &str| -> String {
        let bytes = std::fs::read(repo().join(format!("firmware-fixtures/sleepy-c/build/{name}.bin"))).unwrap();
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    for dev in ["vboard-01", "vboard-02"] {
        let done = of(&evs, dev, "flash.done");
        assert_eq!(done[0]["sha256"], image("sleepy-1.1"), "{}", done[0]);
        assert_eq!(done[1]["sha256"], image("sleepy-1.2"), "{}", done[1]);
        let boots: Vec<String> = evs
            .iter()
            .filter(|e| e["device"] == dev && e["kind"] == "console.line")
            .filter_map(|e| e["line"].as_str())
            .filter(|l| l.contains("booting"))
            .map(str::to_owned)
            .collect();
        assert_eq!(boots.len(), 3, "{dev}: {boots:?}");
        assert!(
            boots[2].contains("sleepy-1.2 v1.2.1 booting (reset reason: soft-reset)"),
            "{}",
            boots[2]
        );
        assert!(boots[0].contains("sleepy-1.1 v1.1.4"), "{}", boots[0]);
        // The new image does not trust the old one's retained RAM.
        assert!(
            boots[1].contains("sleepy-1.2 v1.2.1 booting (reset reason: "),
            "{}",
            boots[1]
        );
        let after_reset = evs
            .iter()
            .filter(|e| e["device"] == dev && e["kind"] == "cloud.handshake" && seq(e) > seq(done[1]))
            .count();
        assert_eq!(after_reset, 1, "{dev}: the new image starts with a full handshake");
        // The reset the firmware asked for itself, as QEMU reported it.
        let own = of(&evs, dev, "device.reset");
        assert_eq!(own.len(), 1, "{dev}: {own:?}");
        assert_eq!(own[0]["reason"], "guest-reset", "{}", own[0]);
    }
}

/// Starts a run that waits 2 minutes on two boards; returns once they run,
/// with the pids of the rig's qemu children.
fn start_waiting_run(out: &Path) -> (std::process::Child, Vec<u64>, PathBuf) {
    images();
    #[allow(clippy::zombie_processes)] // the callers kill and wait for it
    let child = std::process::Command::new(rig_bin())
        .args([
            "run",
            &test_plan("qemu-wait-long.yaml"),
            "--bench",
            &qemu_bench(),
            "--out",
        ])
        .arg(out)
        .current_dir(repo())
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let events = || -> Option<PathBuf> {
        let dir = std::fs::read_dir(out).ok()?.next()?.ok()?.path();
        Some(dir.join("events.jsonl"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = events()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        if text.contains("\"step\":\"wait 2m\"") {
            let pids = qemu_children_of(child.id());
            return (child, pids, events().unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "the run never got going:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gone_within(pids: &[u64], within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if pids.iter().all(|p| !pid_alive(*p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sigkill_of_the_rig_leaves_no_qemu_process() {
    let out = tempfile::tempdir().unwrap();
    let (mut child, pids, _) = start_waiting_run(out.path());
    assert_eq!(pids.len(), 2, "two boards powered: {pids:?}");
    let rig_pid = child.id();
    let live = qemu_children_of(rig_pid);
    assert!(
        pids.iter().all(|p| live.contains(p)),
        "the boards are the rig's children: {pids:?} {live:?}"
    );
    child.kill().unwrap(); // SIGKILL: no handler, no teardown
    child.wait().unwrap();
    assert!(
        gone_within(&pids, Duration::from_secs(5)),
        "qemu outlived a SIGKILLed rig: {pids:?}"
    );
}

#[test]
fn sigint_of_the_rig_tears_down_and_exits_3_with_no_qemu_left() {
    let out = tempfile::tempdir().unwrap();
    let (mut child, pids, events) = start_waiting_run(out.path());
    assert_eq!(pids.len(), 2);
    // What a board keeps on disk is this user's alone: the provisioning
    // page holds its key, and nobody else may write into its console.
    use std::os::unix::fs::PermissionsExt;
    let board = events.parent().unwrap().join("cell-1/qemu/vboard-01");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&board), 0o700, "board folder");
    for f in ["provision.bin", "flash.bin", "console.log", "qemu.log"] {
        assert_eq!(mode(&board.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&board.join("console")), 0o600, "the console pty behind the link");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(gone_within(&pids, Duration::from_secs(5)), "{pids:?}");
    let text = std::fs::read_to_string(events).unwrap();
    let evs: Vec<Value> = text
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for pid in &pids {
        assert!(
            evs.iter()
                .any(|e| e["kind"] == "power.off" && e["pid"].as_u64() == Some(*pid)),
            "teardown powered off {pid}"
        );
    }
    assert!(
        evs.iter()
            .any(|e| e["kind"] == "cell.end" && e["outcome"] == "interrupted")
    );
}

#[test]
fn rig_doctor_names_the_packages_of_a_missing_emulator_and_toolchain() {
    let out = std::process::Command::new(rig_bin())
        .args(["doctor", "--bench", &qemu_bench()])
        .current_dir(repo())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("apt-get install qemu-system-arm"), "{text}");
    assert!(
        text.contains("apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi"),
        "{text}"
    );
}

/// Images are built, not shipped: a plan that needs one that is not there
/// is refused before anything runs, with the command that builds it.
#[test]
fn a_missing_image_is_a_usage_error_naming_the_make_command() {
    let fixtures = tempfile::tempdir().unwrap();
    for name in ["sleepy-1.1", "sleepy-1.2", "sleepy-ideal"] {
        let dst = fixtures.path().join(name);
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(
            repo().join("firmware-fixtures").join(name).join("fixture.yaml"),
            dst.join("fixture.yaml"),
        )
        .unwrap();
    }
    let out = rig(&[
        "check",
        repo().join("test-plans/session-cache-crash.yaml").to_str().unwrap(),
        "--bench",
        &qemu_bench(),
        "--fixtures",
        fixtures.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is not built; build it with `make -C firmware-fixtures/sleepy-c`"),
        "{err}"
    );
    assert!(
        err.contains("session-cache-crash.yaml:21:12"),
        "points at the flash step: {err}"
    );
    // The same fixtures are fine for the simulated bench, which needs no image.
    let sim = rig(&[
        "check",
        repo().join("test-plans/session-cache-crash.yaml").to_str().unwrap(),
        "--fixtures",
        fixtures.path().to_str().unwrap(),
    ]);
    assert_eq!(sim.status.code(), Some(0), "{}", String::from_utf8_lossy(&sim.stderr));
}

/// A board that dies on its own (here: its emulator killed by someone else)
/// ends the cell at once as a rig fault naming the device, instead of the
/// plan waiting on a board that is gone and judging the silence.
#[test]
fn an_emulator_that_dies_mid_run_is_a_rig_fault_naming_the_device() {
    let out = tempfile::tempdir().unwrap();
    let (mut child, pids, events) = start_waiting_run(out.path());
    // SAFETY: kill(2) on a qemu process the rig started for this test.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the 2-minute wait was cut short"
    );
    assert!(gone_within(&pids, Duration::from_secs(5)), "{pids:?}");
    let text = std::fs::read_to_string(events).unwrap();
    let fault = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["kind"] == "rig.fault")
        .expect("a rig.fault event");
    let msg = fault["message"].as_str().unwrap();
    assert!(msg.contains(&format!("(pid {}) exited on its own", pids[0])), "{msg}");
    assert!(msg.starts_with("vboard-0"), "names the device: {msg}");
}
