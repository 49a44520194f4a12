//! The release sign-off: what a release manager reads, rendered from the
//! timeline, re-rendered by `rig report`, merged across runs, and loaded in
//! a real browser.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A self-contained page: no scripts, no external resources.
fn assert_self_contained(html: &str) {
    assert!(!html.contains("<script"), "no scripts");
    for attr in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(attr), "nothing fetched: {attr}");
    }
}

#[test]
fn the_headline_signoff_shows_verdict_matrix_timelines_and_the_negative_control() {
    let r = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "7"]);
    assert_eq!(r.code(), 0);
    let dir = r.run_dir();
    let html = read(&dir, "signoff.html");
    assert_self_contained(&html);
    let verdict_at = html.find("SIGN-OFF PASSED").expect("verdict");
    assert!(
        verdict_at < html.find("What was tested").unwrap(),
        "the verdict comes first"
    );
    // What was tested: plan hash, seed, fixtures with hashes, mitigations.
    let s = r.summary();
    let plan_hash = s["cells"][0]["plan_sha256"].as_str().unwrap();
    assert_eq!(plan_hash.len(), 64);
    assert!(html.contains(&plan_hash[..16]), "plan hash shown");
    for f in s["cells"][0]["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .chain(s["cells"][2]["fixtures"].as_array().unwrap())
    {
        assert!(html.contains(&f["sha256"].as_str().unwrap()[..16]), "fixture hash {f}");
    }
    assert!(html.contains("drop, durable"));
    // The matrix: four cells, the negative control labelled.
    assert_eq!(html.matches("<section class=\"cell\">").count(), 4);
    assert!(html.contains("FAILED as expected (negative control)"));
    assert!(html.contains("Negative control: this combination reproduces the bug and must fail."));
    // One timeline per device per cell, with kills and marks, and recoveries.
    assert_eq!(html.matches("aria-label=\"timeline of sleepy-").count(), 4 * 8);
    assert!(html.contains(">mark crash<") && html.contains(">cache killed<"));
    assert_eq!(
        html.matches("stroke=\"#7b1fa2\"").count(),
        3 * 8,
        "recovery point marked in the three passing cells"
    );
    // The loop diagnosis with a console excerpt, and the bytes plot.
    assert!(html.contains("endless session-resume loop"));
    assert!(html.contains("console of sleepy-01 before the check"));
    assert!(html.contains("Cumulative bytes on the air per device"));
    assert!(html.len() < 2_000_000, "{} bytes", html.len());

    let md = read(&dir, "signoff.md");
    assert!(md.starts_with("# rig sign-off: PASSED"));
    assert!(md.contains("| session-cache-crash [fixture=sleepy-1.1 mitigation=drop] (negative control) | FAILED as expected (negative control) | 0/8 |"), "{md}");
    assert!(
        md.contains("| session-cache-crash [fixture=sleepy-1.2 mitigation=drop] | PASSED | 8/8 | 4 |"),
        "{md}"
    );

    // `rig report` reproduces the same sign-off from events.jsonl alone.
    std::fs::remove_file(dir.join("signoff.html")).unwrap();
    let out = rig(&["report", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let again = read(&dir, "signoff.html");
    assert_eq!(again, html, "re-rendered identically");
}

#[test]
fn a_failing_firmware_fails_the_signoff_naming_devices_and_why() {
    let r = run(&[
        plan("recovery-smoke.yaml").to_str().unwrap(),
        "--seed",
        "3",
        "--set",
        "fixture=sleepy-1.1",
    ]);
    assert_eq!(r.code(), 1);
    let html = read(&r.run_dir(), "signoff.html");
    assert!(html.contains("SIGN-OFF FAILED"));
    let head = &html[..html.find("What was tested").unwrap()];
    assert!(
        head.contains("devices sleepy-01, sleepy-02"),
        "failing devices in the first screen"
    );
    assert!(head.contains("endless session-resume loop"), "and why");
    assert!(read(&r.run_dir(), "signoff.md").starts_with("# rig sign-off: FAILED"));
}

#[test]
fn merging_two_runs_gives_one_junit_with_both_and_one_signoff() {
    let a = run(&[plan("recovery-smoke.yaml").to_str().unwrap(), "--seed", "1"]);
    let b = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "2"]);
    let out = tempfile::tempdir().unwrap();
    let res = rig(&[
        "report",
        "merge",
        a.run_dir().to_str().unwrap(),
        b.run_dir().to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(res.status.code(), Some(0), "{}", String::from_utf8_lossy(&res.stderr));
    let junit = read(out.path(), "junit.xml");
    assert_eq!(junit.matches("<testsuite ").count(), 1 + 4, "both runs' testsuites");
    let a_id = a.summary()["run_id"].as_str().unwrap().to_owned();
    assert!(junit.contains(&format!("name=\"{a_id}/recovery-smoke[default]\"")));
    let html = read(out.path(), "signoff.html");
    assert!(html.contains("SIGN-OFF PASSED"));
    assert_eq!(html.matches("<section class=\"cell\">").count(), 5);
    assert_self_contained(&html);
}

/// Loads `page` in headless Chromium with no network, checks the browser
/// reported no error, writes a screenshot to `shot` and returns the DOM.
fn load_in_chromium(page: &Path, shot: &Path, height: u32) -> String {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        // .ci/run installs Debian's chromium; say so loudly where it is missing.
        panic!("chromium is not installed: apt-get install chromium (CI does this)");
    };
    let _ = std::fs::remove_file(shot);
    let profile = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| {
        let mut c = std::process::Command::new(chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Any attempt to reach the network fails loudly.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()));
        c
    };
    let dom = base(&["--dump-dom", "--virtual-time-budget=2000"]).output().unwrap();
    assert!(dom.status.success(), "{}", String::from_utf8_lossy(&dom.stderr));
    let log = String::from_utf8_lossy(&dom.stderr);
    for bad in ["Uncaught", "net::ERR_", "Failed to load resource"] {
        assert!(!log.contains(bad), "browser reported {bad}:\n{log}");
    }
    let shot_run = base(&[&format!("--window-size=1280,{height}")])
        .arg(format!("--screenshot={}", shot.display()))
        .output()
        .unwrap();
    assert!(shot_run.status.success());
    let png = std::fs::read(shot).expect("screenshot written under reports/");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

#[test]
fn the_signoff_loads_in_headless_chromium_from_disk_without_network() {
    let r = run(&[plan("session-cache-crash.yaml").to_str().unwrap(), "--seed", "7"]);
    let page = r.run_dir().join("signoff.html");
    let dom_text = load_in_chromium(&page, &repo().join("reports").join("signoff-screenshot.png"), 2400);
    assert!(dom_text.contains("SIGN-OFF PASSED"), "the page rendered its verdict");
    assert!(dom_text.matches("<svg").count() >= 4 * 8);
}

#[test]
fn a_fleet_signoff_loads_in_chromium_with_its_fleet_view_and_stays_small() {
    // The shipped 10,000-device bench, through the real runner (a few hours
    // of plan time: about 20 s here).
    let r = run(&[
        plan("fleet-cache-crash.yaml").to_str().unwrap(),
        "--bench",
        repo().join("bench/fleet-10k.yaml").to_str().unwrap(),
        "--set",
        "after=1h",
        "--set",
        "wakes=8",
        "--seed",
        "3",
    ]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let page = r.run_dir().join("signoff.html");
    let size = std::fs::metadata(&page).unwrap().len();
    eprintln!("10,000-device fleet sign-off: {size} bytes");
    assert!(size < 2_000_000, "a fleet sign-off under 2 MB: {size} bytes");
    let dom = load_in_chromium(
        &page,
        &repo().join("reports").join("fleet-signoff-screenshot.png"),
        3000,
    );
    assert!(
        dom.contains("Fleet: 10000 of 10000 devices recovered"),
        "the fleet view rendered"
    );
    assert!(dom.contains("handshakes/min"), "the storm chart rendered");
    assert!(
        dom.matches("<tr>").count() < 150,
        "the recovery table shows the drawn devices, not all 10,000"
    );
}

/// A synthetic 1,000-device cell: what a fleet-sized sign-off must render.
#[test]
fn a_thousand_device_signoff_stays_small() {
    use rig::timeline::{ConnectVia, EventKind, Header, RecoveryFacts, Source, Timeline};
    let tl = Timeline::in_memory();
    tl.emit(
        None,
        Source::Runner,
        EventKind::CellStart(Box::new(rig::timeline::CellStart {
            plan: "fleet".into(),
            plan_path: "fleet.yaml".into(),
            plan_sha256: "ab".repeat(32),
            name: "default".into(),
            vars: Default::default(),
            expect_failure: false,
            seed: 1,
            bench: "sim".into(),
            clock: "virtual".into(),
        })),
    );
    for i in 0..1000 {
        let d = format!("dev-{i:04}");
        tl.emit_device(&d, Source::Power, EventKind::PowerOn { pid: None });
        for w in 0..20 {
            tl.emit_device(&d, Source::Console, EventKind::DeviceWake { reason: None });
            tl.emit_device(
                &d,
                Source::Cloud,
                EventKind::CloudRx {
                    bytes: 84,
                    msg: "record_resume".into(),
                    peer: "p".into(),
                },
            );
            tl.emit_device(
                &d,
                Source::Cloud,
                EventKind::CloudResumed {
                    session: format!("{w}"),
                },
            );
            tl.emit_device(&d, Source::Console, EventKind::DeviceSleep { secs: Some(900) });
        }
        let failed = i % 100 == 0;
        let facts = RecoveryFacts {
            mark: "crash".into(),
            recovered: !failed,
            via: (!failed).then_some(ConnectVia::Handshake),
            wakes: 1 + (i % 4) as u32,
            ..Default::default()
        };
        let kind = if failed {
            EventKind::CheckFail {
                step: 1,
                check: "expect_recovery".into(),
                message: format!("{d}: no cloud session"),
                facts: Some(Box::new(facts)),
            }
        } else {
            EventKind::CheckPass {
                step: 1,
                check: "expect_recovery".into(),
                detail: "ok".into(),
                facts: Some(Box::new(facts)),
            }
        };
        tl.emit(Some(&d), Source::Check, kind);
    }
    tl.emit(
        None,
        Source::Runner,
        EventKind::CellEnd {
            outcome: rig::timeline::CellOutcome::Completed,
        },
    );
    let header = Header {
        format: "rig.events".into(),
        version: 1,
        run_id: "fleet".into(),
        rig_version: "0".into(),
        seed: 1,
        bench: "sim".into(),
        plans: vec![],
        started: time::OffsetDateTime::now_utc(),
        shard: None,
        console_lines: true,
    };
    let events = tl.snapshot();
    let started = std::time::Instant::now();
    let summary = rig::report::summarize(&header, &events);
    let evidence = rig::report::evidence::Evidence::of(&summary, &events);
    let run = [rig::report::signoff::Run {
        header: &header,
        evidence: &evidence,
        summary: &summary,
    }];
    let html = rig::report::signoff::html(&run);
    let took = started.elapsed();
    // Timing is reported, not asserted (shared machines); size is deterministic.
    eprintln!("1,000-device sign-off: {} bytes in {took:?}", html.len());
    assert!(html.len() < 3_000_000, "{} bytes", html.len());
    assert_eq!(
        html.matches("aria-label=\"timeline of dev-").count(),
        10 + 8,
        "failures and a sample drawn"
    );
    assert!(html.contains("Distributions over all devices"));
    let _ = Duration::ZERO;
}

#[test]
fn a_journal_of_format_version_1_is_re_rendered_to_the_verdicts_it_had() {
    // Written by rig at 39a3882 (format version 1, before cloud.exchange,
    // shards and compressed journals): `rig run test-plans/recovery-smoke.yaml
    // --seed 3`, with the summary.json that run wrote beside it.
    let src = repo().join("rig/tests/journals/v1-recovery-smoke");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("events.jsonl"), dir.path().join("events.jsonl")).unwrap();
    let out = rig(&["report", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let now = read(&dir.path().join("summary.json"));
    let then = read(&src.join("expected-summary.json"));
    assert_eq!(now["version"], 1, "the journal's own version is reported");
    let cells = |s: &serde_json::Value| {
        s["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].clone(),
                    c["verdict"].clone(),
                    c["checks"].clone(),
                    c["devices"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(!cells(&then).is_empty());
    assert_eq!(
        cells(&now),
        cells(&then),
        "same cells, verdicts, checks and recovery facts"
    );
}
