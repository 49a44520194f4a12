//! Fleets: declared in a bench file, journaled compactly, judged the same
//! way, and shown as a fleet in the sign-off.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

fn fleet_bench(count: u32, journal: &str) -> String {
    format!(
        "name: fleet-test\nclock: virtual\ncloud: {{ cache: {{ kind: memory }}, latency: 60ms, mitigation: drop }}\njournal: {journal}\ndevices:\n  - {{ id: \"dev-{{:04}}\", count: {count}, board: sim, tags: [sleepy] }}\n  - {{ id: odd-one, board: sim, tags: [other] }}\n"
    )
}

/// The fleet plan, shortened: the same steps with a 2-hour tail.
fn fleet_args<'a>(bench: &'a str) -> Vec<&'a str> {
    vec![
        "test-plans/fleet-cache-crash.yaml",
        "--bench",
        bench,
        "--set",
        "after=2h",
        "--set",
        "outage=20m",
        "--set",
        "wakes=10",
        "--seed",
        "11",
    ]
}

/// Per device: (recovered, wakes, bytes) of the fleet plan's recovery check.
fn facts(summary: &Value) -> BTreeMap<String, (bool, u64, u64)> {
    recovery(&summary["cells"][0])
        .iter()
        .map(|c| {
            let f = &c["facts"];
            (
                c["device"].as_str().unwrap().to_owned(),
                (
                    f["recovered"].as_bool().unwrap(),
                    f["wakes"].as_u64().unwrap(),
                    f["bytes"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn a_declared_fleet_runs_compressed_and_its_signoff_shows_the_fleet() {
    let (_b, bench) = temp_file(
        "fleet.yaml",
        &fleet_bench(40, "{ console_lines: false, datagrams: per_exchange, compress: true }"),
    );
    let r = run(&fleet_args(bench.to_str().unwrap()));
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let dir = r.run_dir();
    assert!(dir.join("events.jsonl.zst").exists(), "compressed journal");
    assert!(!dir.join("events.jsonl").exists(), "and no plain one");
    assert!(
        !dir.join("cell-1/durable-keys.jsonl").exists(),
        "no durable key store for a cell that never uses `durable`"
    );
    let summary = r.summary();
    let f = facts(&summary);
    let judged: Vec<&str> = f.keys().map(String::as_str).collect();
    assert_eq!(
        judged.len(),
        40,
        "only the tagged fleet is judged, not odd-one: {judged:?}"
    );
    assert_eq!((judged[0], judged[39]), ("dev-0001", "dev-0040"));
    assert!(f.values().all(|(ok, _, bytes)| *ok && *bytes > 0), "{f:?}");

    let html = std::fs::read_to_string(dir.join("signoff.html")).unwrap();
    assert!(html.contains("Fleet: 40 of 40 devices recovered after"), "fleet view");
    assert!(html.contains("Reconnect storm:"), "storm");
    assert!(html.contains("Data per device:"), "bytes per day");
    let md = std::fs::read_to_string(dir.join("signoff.md")).unwrap();
    assert!(md.contains("fleet:** 40/40 recovered"), "{md}");

    // `rig report` reads the compressed journal back to the same verdicts.
    let before = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    let rep = rig(&["report", dir.to_str().unwrap()]);
    assert_eq!(rep.status.code(), Some(0), "{}", String::from_utf8_lossy(&rep.stderr));
    let after: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let before: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(facts(&after), facts(&before));
}

#[test]
fn folded_exchanges_count_the_bytes_each_datagram_would() {
    // Same seed, same fleet: one journal with a line per datagram, one with
    // an event per exchange. The devices behave the same, so every device's
    // recovery facts (bytes included) and every verdict must be equal.
    let (_a, each) = temp_file("each.yaml", &fleet_bench(12, "{ datagrams: each }"));
    let (_b, folded) = temp_file("folded.yaml", &fleet_bench(12, "{ datagrams: per_exchange }"));
    let a = run(&fleet_args(each.to_str().unwrap()));
    let b = run(&fleet_args(folded.to_str().unwrap()));
    assert_eq!((a.code(), b.code()), (0, 0), "{}\n{}", a.stderr(), b.stderr());
    let kinds = |r: &Run| {
        let mut k: BTreeMap<String, u64> = BTreeMap::new();
        for e in r.events() {
            *k.entry(e["kind"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        k
    };
    let (ka, kb) = (kinds(&a), kinds(&b));
    assert!(
        ka.contains_key("cloud.rx") && !ka.contains_key("cloud.exchange"),
        "{ka:?}"
    );
    assert!(
        kb.contains_key("cloud.exchange") && !kb.contains_key("cloud.rx"),
        "{kb:?}"
    );
    assert_eq!(
        kb["cloud.exchange"], ka["cloud.rx"],
        "one exchange per datagram received"
    );
    let fa = facts(&a.summary());
    assert_eq!(fa, facts(&b.summary()));
    assert!(
        fa.values().all(|(_, _, bytes)| *bytes > 1000),
        "real byte counts: {fa:?}"
    );
    let total = |r: &Run| -> u64 {
        r.events()
            .iter()
            .map(|e| match e["kind"].as_str().unwrap() {
                "cloud.rx" | "cloud.tx" => e["bytes"].as_u64().unwrap(),
                "cloud.exchange" => e["rx"].as_u64().unwrap() + e["tx"].as_u64().unwrap(),
                _ => 0,
            })
            .sum()
    };
    assert_eq!(total(&a), total(&b), "every byte of the run");
}

#[test]
fn a_bench_without_console_lines_refuses_a_plan_that_waits_for_console_text() {
    let (_b, bench) = temp_file("fleet.yaml", &fleet_bench(3, "{ console_lines: false }"));
    let (_p, plan) = temp_file(
        "console-wait.yaml",
        "name: console-wait\nfixture: sleepy-1.2\ndevices: { tags: [sleepy] }\ntimeout: 1h\nsetup:\n  - power: on\n  - flash: sleepy-1.2\nsteps:\n  - wait_for: { console: 'wake', timeout: 30m }\n",
    );
    let out = rig(&["check", plan.to_str().unwrap(), "--bench", bench.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("console-wait.yaml:9:"), "names the line: {err}");
    assert!(err.contains("does not journal console lines"), "{err}");
    // The same plan is fine where console lines are journaled.
    let ok = rig(&["check", plan.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn fleet_declarations_that_cannot_work_are_refused_with_their_line() {
    for (entry, says) in [
        (
            "{ id: dev, count: 3, board: sim }",
            "needs one `{}` or `{:0N}` placeholder",
        ),
        ("{ id: \"dev-{:03}\", count: 0, board: sim }", "count must be 1 to"),
        (
            "{ id: \"dev-{:03}\", count: 2000000, board: sim }",
            "count must be 1 to",
        ),
        (
            "{ id: \"dev-{:03}\", count: 2, board: sim, key: \"00\" }",
            "cannot share one `key:`",
        ),
        ("{ id: \"dev-{}-{}\", count: 2, board: sim }", "placeholder"),
    ] {
        let text = format!("name: b\ndevices:\n  - {entry}\n  - {{ id: dev-001, board: sim }}\n");
        let (_d, bench) = temp_file("bench.yaml", &text);
        let out = rig(&[
            "check",
            "test-plans/recovery-smoke.yaml",
            "--bench",
            bench.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{entry}: {err}");
        assert!(err.contains("bench.yaml:3:"), "{entry}: names the line: {err}");
        assert!(err.contains(says), "{entry}: {err}");
    }
    // Two fleets whose ids overlap: a duplicate, named.
    let (_d, bench) = temp_file(
        "bench.yaml",
        "name: b\ndevices:\n  - { id: \"dev-{:03}\", count: 5, board: sim }\n  - { id: \"dev-{:03}\", count: 5, first: 5, board: sim }\n",
    );
    let out = rig(&[
        "check",
        "test-plans/recovery-smoke.yaml",
        "--bench",
        bench.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("duplicate device id `dev-005`"), "{err}");
}
