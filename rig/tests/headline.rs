//! The headline plan end to end on the built-in simulated bench: the four
//! verdicts the release sign-off rests on, the negative control included.

mod common;

use common::*;
use quick_xml::events::Event as Xml;
use serde_json::Value;

#[test]
fn the_headline_plan_passes_with_the_negative_control_failing_as_expected() {
    let r = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "7"]);
    assert_eq!(r.code(), 0, "stdout:\n{}\nstderr:\n{}", r.stdout(), r.stderr());
    let s = r.summary();
    assert_eq!(s["seed"], 7);
    assert_eq!(s["cells"].as_array().unwrap().len(), 4);

    // 1.1 x drop: every device stuck in the loop, diagnosed as such.
    let neg = cell(&s, "fixture=sleepy-1.1 mitigation=drop");
    assert_eq!(neg["verdict"], "failed_as_expected");
    let rec = recovery(neg);
    assert_eq!(rec.len(), 8);
    for c in &rec {
        assert_eq!(c["passed"], false);
        let text = c["text"].as_str().unwrap();
        assert!(
            text.contains("no cloud session within 4 wake cycles after 'crash'"),
            "{text}"
        );
        assert!(text.contains("endless session-resume loop"), "{text}");
        assert_eq!(c["facts"]["handshakes"], 0);
    }

    // 1.2 x drop: every device recovers by its own handshake within 4 wakes.
    let fix = cell(&s, "fixture=sleepy-1.2 mitigation=drop");
    assert_eq!(fix["verdict"], "passed");
    for c in recovery(fix) {
        let f = &c["facts"];
        assert_eq!(f["recovered"], true, "{c}");
        assert!(f["wakes"].as_u64().unwrap() <= 4, "{c}");
        assert!(f["bytes"].as_u64().unwrap() < 16 * 1024, "{c}");
        assert_eq!(f["handshakes"], 1, "exactly one full handshake: {c}");
        assert_eq!(f["via"], "handshake");
        assert_eq!(f["power_cycled"], false);
    }

    // durable: both firmwares resume at the first wake after the crash.
    for name in [
        "fixture=sleepy-1.1 mitigation=durable",
        "fixture=sleepy-1.2 mitigation=durable",
    ] {
        let c = cell(&s, name);
        assert_eq!(c["verdict"], "passed", "{name}");
        for d in recovery(c) {
            assert_eq!(d["facts"]["wakes"], 1, "{name}: {d}");
            assert_eq!(d["facts"]["via"], "resume", "{name}: {d}");
        }
    }

    // The verdict table names every cell.
    let out = r.stdout();
    assert!(out.contains("FAILED as expected (negative control)"), "{out}");
    assert_eq!(out.matches("session-cache-crash [fixture=").count(), 5, "{out}");
    assert!(r.stderr().contains("seed 7"), "seed printed");

    // One console log per device.
    for i in 1..=8 {
        let log = std::fs::read_to_string(r.run_dir().join(format!("console/sleepy-0{i}.log"))).unwrap();
        assert!(log.contains("resuming session"), "sleepy-0{i}");
    }

    junit_is_valid_with_the_right_counts(&r);
}

fn junit_is_valid_with_the_right_counts(r: &Run) {
    let xml = std::fs::read_to_string(r.run_dir().join("junit.xml")).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut suites, mut cases, mut failures_attr, mut failure_elems, mut declared_tests) = (0, 0, 0u64, 0, 0u64);
    loop {
        match reader.read_event().expect("well-formed XML") {
            Xml::Start(e) | Xml::Empty(e) => match e.name().as_ref() {
                b"testsuite" => {
                    suites += 1;
                    for a in e.attributes() {
                        let a = a.unwrap();
                        let v: u64 = String::from_utf8_lossy(&a.value).parse().unwrap_or(0);
                        match a.key.as_ref() {
                            b"tests" => declared_tests += v,
                            b"failures" => failures_attr += v,
                            _ => {}
                        }
                    }
                }
                b"testcase" => cases += 1,
                b"failure" => failure_elems += 1,
                _ => {}
            },
            Xml::Eof => break,
            _ => {}
        }
    }
    assert_eq!(suites, 4, "one testsuite per cell");
    assert_eq!(declared_tests, cases, "tests attributes match testcases");
    // Per cell: 8 devices x (wait_for, sleep_cycles, expect, expect_recovery),
    // plus the negative control's own testcase.
    assert_eq!(cases, 4 * 32 + 1);
    assert_eq!(failures_attr, 0, "every cell behaved as the plan expects");
    assert_eq!(failure_elems, 0);
    assert!(
        xml.contains("fails as expected: sleepy-01: no cloud session"),
        "negative control carries the text"
    );
}

#[test]
fn pinning_the_buggy_firmware_on_a_plan_without_a_matrix_fails_with_exit_1() {
    let p = plan("recovery-smoke.yaml");
    let good = run(&[p.to_str().unwrap(), "--seed", "5"]);
    assert_eq!(good.code(), 0, "{}", good.stdout());
    let bad = run(&[
        p.to_str().unwrap(),
        "--seed",
        "5",
        "--set",
        "fixture=sleepy-1.1",
        "--set",
        "mitigation=drop",
    ]);
    assert_eq!(bad.code(), 1, "{}", bad.stdout());
    let out = bad.stdout();
    assert!(out.contains("recovery-smoke [default]"), "{out}");
    assert!(out.contains("endless session-resume loop"), "{out}");
    // The JUnit file says so too, with a console excerpt.
    let xml = std::fs::read_to_string(bad.run_dir().join("junit.xml")).unwrap();
    assert!(xml.contains("<failure"), "{xml}");
    assert!(xml.contains("console of sleepy-01, last 15 lines"), "{xml}");
}

#[test]
fn pinning_both_axes_of_the_headline_matrix_runs_only_that_cell() {
    let r = run(&[
        plan("session-cache-crash.yaml").to_str().unwrap(),
        "--seed",
        "5",
        "--set",
        "fixture=sleepy-1.1",
        "--set",
        "mitigation=drop",
    ]);
    // The one remaining cell is the negative control, and it fails as it must.
    assert_eq!(r.code(), 0, "{}", r.stdout());
    let s = r.summary();
    assert_eq!(s["cells"].as_array().unwrap().len(), 1);
    assert_eq!(s["cells"][0]["verdict"], "failed_as_expected");
}

/// Per device: the sequence of (time, event) without wall-clock stamps.
fn per_device(events: &[Value]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    for e in events {
        if let Some(d) = e["device"].as_str() {
            let mut e = e.clone();
            let o = e.as_object_mut().unwrap();
            o.remove("wall");
            o.remove("seq");
            out.entry(d.to_owned())
                .or_default()
                .push(serde_json::to_string(&e).unwrap());
        }
    }
    out
}

#[test]
fn the_same_seed_gives_the_same_events_per_device_and_another_seed_does_not() {
    let p = plan("recovery-smoke.yaml");
    let a = run(&[p.to_str().unwrap(), "--seed", "11"]);
    let b = run(&[p.to_str().unwrap(), "--seed", "11"]);
    let c = run(&[p.to_str().unwrap(), "--seed", "12"]);
    let (ea, eb, ec) = (
        per_device(&a.events()),
        per_device(&b.events()),
        per_device(&c.events()),
    );
    assert_eq!(ea.len(), 8);
    assert!(ea["sleepy-01"].len() > 50, "a real sequence, not a trivial one");
    assert_eq!(ea, eb, "same seed, same events");
    assert_ne!(ea, ec, "another seed changes jitter, nonces and timings");
}

#[test]
fn a_simulated_day_of_fifteen_minute_cycles_runs_on_the_virtual_clock() {
    let started = std::time::Instant::now();
    let r = run(&[plan("soak-day.yaml").to_str().unwrap(), "--seed", "1"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let s = r.summary();
    let plan_ms = s["cells"][0]["plan_ms"].as_u64().unwrap();
    assert!(plan_ms >= 24 * 3600 * 1000, "a full day of plan time: {plan_ms}");
    // Reported, not asserted: timing belongs in benchmarks on a shared machine.
    eprintln!(
        "simulated {} h in {:?} of wall time",
        plan_ms / 3_600_000,
        started.elapsed()
    );
}

#[test]
fn rig_report_re_renders_the_same_verdicts_from_events_jsonl() {
    let r = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "3"]);
    assert_eq!(r.code(), 0);
    let dir = r.run_dir();
    let before = r.summary();
    // `rig run` keeps the summary as events are emitted and renders the
    // rest from a filtered read of the journal; `rig report` reads the
    // journal twice: the same bytes either way.
    let files = [
        "summary.json",
        "junit.xml",
        "signoff.html",
        "signoff.md",
        "console/sleepy-01.log",
    ];
    let written: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    std::fs::remove_file(dir.join("junit.xml")).unwrap();
    let out = rig(&["report", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r.summary(), before, "identical summary from the timeline alone");
    for (f, w) in files.iter().zip(&written) {
        assert!(std::fs::read(dir.join(f)).unwrap() == *w, "{f} re-rendered differently");
    }
}

#[test]
fn the_soft_reset_plan_shows_only_a_power_cycle_clears_the_loop() {
    let r = run(&[plan("soft-reset-vs-power-cycle.yaml").to_str().unwrap(), "--seed", "2"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    let s = r.summary();
    let checks = s["cells"][0]["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["passed"] == true));
    // After the soft reset the devices still resumed the stale session.
    let evs = r.events();
    let reset_seq = evs.iter().find(|e| e["kind"] == "reset.soft").unwrap()["seq"]
        .as_u64()
        .unwrap();
    let stale = evs
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > reset_seq && e["kind"] == "cloud.resume_unknown")
        .count();
    assert!(stale >= 16, "every device kept resuming after the soft reset: {stale}");
}

/// The headline plan's whole timeline for seed 7, without wall-clock
/// stamps and without the plan's path (absolute here, so it names the
/// checkout folder and differs between machines), as a SHA-256 over its canonical JSON lines: a refactor that
/// changes one event (its time, its order, a field) changes this. When the
/// timeline changes on purpose, say why in the commit and update the digest.
#[test]
fn the_headline_timeline_for_seed_7_is_the_stored_one() {
    use sha2::{Digest, Sha256};
    let r = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "7"]);
    assert_eq!(r.code(), 0);
    let mut h = Sha256::new();
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    let evs = r.events();
    for e in &evs {
        let mut e = e.clone();
        e.as_object_mut().unwrap().remove("wall");
        e.as_object_mut().unwrap().remove("plan_path");
        *kinds.entry(e["kind"].as_str().unwrap().to_owned()).or_default() += 1;
        h.update(serde_json::to_string(&e).unwrap().as_bytes());
        h.update(b"\n");
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    eprintln!("{} events: {kinds:?}\ndigest {digest}", evs.len());
    assert_eq!(digest, EXPECTED_HEADLINE_DIGEST, "{} events: {kinds:?}", evs.len());
}

const EXPECTED_HEADLINE_DIGEST: &str = "31264488378e705200d4f847164a0ca7f6f3ede11a94a233c31e8b6cfb6d6096";

/// The check events (verdict, text and recovery facts) of a plan run, as a
/// SHA-256 over their canonical JSON without wall-clock stamps.
fn checks_digest(args: &[&str]) -> (i32, String, usize) {
    use sha2::{Digest, Sha256};
    let r = run(args);
    let mut h = Sha256::new();
    let mut n = 0;
    for e in r.events() {
        let kind = e["kind"].as_str().unwrap_or_default();
        if !kind.starts_with("check.") {
            continue;
        }
        let mut e = e.clone();
        e.as_object_mut().unwrap().remove("wall");
        h.update(serde_json::to_string(&e).unwrap().as_bytes());
        h.update(b"\n");
        n += 1;
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (r.code(), digest, n)
}

/// Checks follow the timeline live and read the cell's index, not the
/// events held in memory (`rig run` keeps only the last few thousand). On
/// these seeds the check events (verdicts, texts, recovery facts) are the
/// ones the rig that read every check from the whole timeline in memory
/// gave, event for event (commit 3b42299, compared when this test was
/// written): the soak day (counts since the cell began), the soft-reset
/// plan (counts after marks, recovery after a power cycle) and the headline
/// with a 10-minute outage.
#[test]
fn streaming_checks_give_the_verdicts_the_in_memory_timeline_gave() {
    let (soak, soft, headline) = (
        plan("soak-day.yaml"),
        plan("soft-reset-vs-power-cycle.yaml"),
        plan("session-cache-crash.yaml"),
    );
    let cases: [(&[&str], i32, &str); 3] = [
        (&[soak.to_str().unwrap(), "--seed", "3"], SOAK_CODE, SOAK_CHECKS),
        (
            &[soft.to_str().unwrap(), "--seed", "5"],
            SOFT_RESET_CODE,
            SOFT_RESET_CHECKS,
        ),
        (
            &[headline.to_str().unwrap(), "--seed", "11", "--set", "outage=10m"],
            HEADLINE_CODE,
            HEADLINE_CHECKS,
        ),
    ];
    for (args, code, want) in cases {
        let (got_code, digest, n) = checks_digest(args);
        eprintln!("{args:?}: exit {got_code}, {n} check events, digest {digest}");
        assert_eq!((got_code, digest.as_str()), (code, want), "{args:?}: {n} check events");
    }
}

const SOAK_CODE: i32 = 0;
const SOAK_CHECKS: &str = "7c935119ce5f7e8543c5a4fd619104814c72614eb0a7f05f50a4edfae68ceb66";
const SOFT_RESET_CODE: i32 = 0;
const SOFT_RESET_CHECKS: &str = "827d50b9c8b25be011d6a94fd7e387148ff6f2224f15d754de5f49201571f1ef";
const HEADLINE_CODE: i32 = 0;
const HEADLINE_CHECKS: &str = "333a9344d4ef61ed2e29f032f496d6aa39c72700118041383534f8dd83bc13f3";

/// The reports `rig run` writes (from a read of the journal that skips the
/// lines no report needs) are those rendered from every event in memory.
#[test]
fn reports_from_the_filtered_journal_are_those_of_every_event() {
    let r = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "4"]);
    assert_eq!(r.code(), 0);
    let dir = r.run_dir();
    let (header, events) = rig::timeline::read_jsonl(&dir.join("events.jsonl")).unwrap();
    let all = tempfile::tempdir().unwrap();
    rig::report::write_all(all.path(), &header, &events).unwrap();
    for f in [
        "summary.json",
        "junit.xml",
        "signoff.html",
        "signoff.md",
        "console/sleepy-03.log",
    ] {
        let (a, b) = (
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(all.path().join(f)).unwrap(),
        );
        assert!(a == b, "{f} differs");
    }
}

/// The journal without what differs from run to run (wall times, the run's
/// name and start), line by line.
fn comparable(dir: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).expect("events.jsonl");
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("JSON");
            let o = v.as_object_mut().expect("an object");
            for k in ["wall", "run_id", "started"] {
                o.remove(k);
            }
            v
        })
        .collect()
}

fn walls(events: &[Value], cell: u64) -> (String, String) {
    let w: Vec<&str> = events
        .iter()
        .filter(|e| e["cell"].as_u64() == Some(cell))
        .filter_map(|e| e["wall"].as_str())
        .collect();
    (w[0].to_owned(), w[w.len() - 1].to_owned())
}

/// Matrix cells side by side (`--cell-jobs`, one per core by default) give
/// the journal, summary and sign-off of the cells run one after another,
/// seq for seq; only wall times differ, and they show the cells overlapped.
#[test]
fn matrix_cells_side_by_side_give_the_run_the_cells_give_one_after_another() {
    let p = plan("session-cache-crash.yaml");
    let one = run(&[p.to_str().unwrap(), "--seed", "7", "--cell-jobs", "1"]);
    let two = run(&[p.to_str().unwrap(), "--seed", "7", "--cell-jobs", "2"]);
    assert_eq!(one.code(), 0, "{}", one.stderr());
    assert_eq!(two.code(), 0, "{}", two.stderr());
    let (a, b) = (comparable(&one.run_dir()), comparable(&two.run_dir()));
    assert!(a.len() > 1000, "a real journal: {} lines", a.len());
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "line {i} differs");
    }
    let verdicts = |r: &Run| -> Vec<(String, String)> {
        r.summary()["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].to_string(), c["verdict"].to_string()))
            .collect()
    };
    assert_eq!(verdicts(&one), verdicts(&two));
    assert_eq!(verdicts(&two).len(), 4);
    let md = |r: &Run| std::fs::read_to_string(r.run_dir().join("signoff.md")).unwrap();
    assert_eq!(md(&one), md(&two));
    for r in [&one, &two] {
        for k in 1..=4 {
            let left = r.run_dir().join(format!("cell-{k}/cell-events.jsonl"));
            assert!(!left.exists(), "{} was copied in and removed", left.display());
        }
    }
    // In turn, cell 1 ended before cell 2 began; side by side, they ran at
    // once (RFC 3339 UTC times with nanoseconds compare as text).
    let (e1, e2) = (one.events(), two.events());
    assert!(walls(&e1, 0).1 < walls(&e1, 1).0, "one after another");
    assert!(
        walls(&e2, 1).0 < walls(&e2, 0).1,
        "cell 2 began before cell 1 ended: {:?} {:?}",
        walls(&e2, 0),
        walls(&e2, 1)
    );
}

/// A plan of six long cells on a 300-device virtual-clock bench, started
/// with two cells side by side, writing under `dir/out`.
fn spawn_six_cells(dir: &std::path::Path) -> std::process::Child {
    let plan = dir.join("cells.yaml");
    std::fs::write(
        &plan,
        "name: cells\nfixture: sleepy-1.2\ndevices: { tags: [sleepy] }\nmatrix: { outage: [30m, 31m, 32m, 33m, 34m, 35m] }\ntimeout: 30d\nsetup:\n  - power: on\n  - flash: \"${fixture}\"\nsteps:\n  - cache: kill\n  - wait: \"${outage}\"\n  - cache: { restore: empty }\n  - wait: 2d\nteardown:\n  - power: off\n",
    )
    .unwrap();
    let bench = dir.join("bench.yaml");
    std::fs::write(
        &bench,
        "name: cells-fleet\nclock: virtual\ncloud: { cache: { kind: memory }, latency: 60ms, mitigation: drop }\njournal: { console_lines: false, datagrams: per_exchange }\nsafe_state: off\ndevices:\n  - { id: \"dev-{:04}\", count: 300, board: sim, tags: [sleepy] }\n",
    )
    .unwrap();
    std::process::Command::new(rig_bin())
        .args([
            "run",
            plan.to_str().unwrap(),
            "--seed",
            "5",
            "--cell-jobs",
            "2",
            "--bench",
        ])
        .arg(&bench)
        .arg("--fixtures")
        .arg(repo().join("firmware-fixtures"))
        .arg("--out")
        .arg(dir.join("out"))
        .env("CI", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The one run folder under `out`, once there.
fn run_folder(out: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(out).ok()?.next()?.ok().map(|e| e.path())
}

/// Waits (two minutes at most) until `ready`.
fn until(what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Ctrl-C while cells run side by side: every running cell stops with its
/// teardown, no new cell starts, and the cells that ran are in the run's
/// journal in order, the interrupted ones marked so: no verdict, exit 3.
#[test]
fn sigint_while_cells_run_side_by_side_leaves_the_cells_that_ran_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_six_cells(dir.path());
    let out = dir.path().join("out");
    let running = |k: usize| {
        run_folder(&out)
            .and_then(|d| std::fs::metadata(d.join(format!("cell-{k}/cell-events.jsonl"))).ok())
            .is_some_and(|m| m.len() > 100_000)
    };
    until("the two first cells running at once", || running(1) && running(2));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "no verdict: {stderr}");
    let run_dir = run_folder(&out).unwrap();
    let events = read_events(&run_dir);
    let ends: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["kind"] == "cell.end")
        .map(|e| (e["cell"].as_u64().unwrap(), e["outcome"].as_str().unwrap().to_owned()))
        .collect();
    assert!(
        ends.len() >= 2 && ends.len() < 6,
        "the cells that ran, not the ones after: {ends:?}"
    );
    assert_eq!(
        ends.iter().map(|e| e.0).collect::<Vec<_>>(),
        (0..ends.len() as u64).collect::<Vec<_>>(),
        "in cell order"
    );
    assert!(ends.iter().any(|e| e.1 == "interrupted"), "{ends:?}");
    // Each cell's events together, its teardown among them.
    let cells: Vec<u64> = events.iter().map(|e| e["cell"].as_u64().unwrap()).collect();
    assert!(cells.windows(2).all(|w| w[0] <= w[1]), "cell by cell");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "seqs follow each other"
    );
    let offs = events
        .iter()
        .filter(|e| e["kind"] == "power.off" && e["cell"].as_u64() == Some(1))
        .count();
    assert!(offs >= 600, "cell 2's safe state at start and end: {offs} power.off");
    for k in 1..=6 {
        assert!(!run_dir.join(format!("cell-{k}/cell-events.jsonl")).exists());
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["cells"].as_array().unwrap().len(), ends.len());
}

/// A SIGKILL while cells run side by side, after the first is in the run's
/// journal: the journal ends in the next cell, begun and unfinished, so
/// `rig report` gives no verdict (exit 3) rather than the verdict of the
/// cells that happened to be copied in.
#[test]
fn sigkill_while_cells_run_side_by_side_leaves_a_run_with_no_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_six_cells(dir.path());
    let out = dir.path().join("out");
    let journal = || run_folder(&out).map(|d| d.join("events.jsonl"));
    until("the first cell copied into the run's journal", || {
        journal().is_some_and(|j| std::fs::read_to_string(j).unwrap_or_default().contains("\"cell.end\""))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let run_dir = run_folder(&out).unwrap();
    let events = read_events(&run_dir);
    let starts = events.iter().filter(|e| e["kind"] == "cell.start").count();
    let ends = events.iter().filter(|e| e["kind"] == "cell.end").count();
    assert!((1..6).contains(&ends), "{ends} cells finished");
    assert_eq!(starts, ends + 1, "the journal ends in a cell begun and unfinished");
    let r = rig(&["report", run_dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("NO VERDICT"), "{stdout}");
}
