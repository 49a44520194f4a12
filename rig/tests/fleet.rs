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
fn fleet_args(bench: &str) -> Vec<&str> {
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
        !dir.join("console/dev-0001.log").exists(),
        "no console logs where no console line was journaled"
    );
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

/// `rig check` of a plan against a bench file with `text`: exit code, stderr.
fn check_bench(text: &str) -> (Option<i32>, String) {
    let (_d, bench) = temp_file("bench.yaml", text);
    let out = rig(&[
        "check",
        "test-plans/recovery-smoke.yaml",
        "--bench",
        bench.to_str().unwrap(),
    ]);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
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
        let (code, err) = check_bench(&text);
        assert_eq!(code, Some(2), "{entry}: {err}");
        assert!(err.contains("bench.yaml:3:"), "{entry}: names the line: {err}");
        assert!(err.contains(says), "{entry}: {err}");
    }
    // Two fleets whose ids overlap: a duplicate, named.
    let (code, err) = check_bench(
        "name: b\ndevices:\n  - { id: \"dev-{:03}\", count: 5, board: sim }\n  - { id: \"dev-{:03}\", count: 5, first: 5, board: sim }\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("duplicate device id `dev-005`"), "{err}");
}

/// Per device: the plan times of its wakes before `until`.
fn wakes_before(events: &[Value], until: u64) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events {
        if e["kind"] == "device.wake" && e["t_ms"].as_u64().unwrap() < until {
            out.entry(e["device"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["t_ms"].as_u64().unwrap());
        }
    }
    out
}

fn mark_t(events: &[Value]) -> u64 {
    events
        .iter()
        .find(|e| e["kind"] == "plan.mark")
        .and_then(|e| e["t_ms"].as_u64())
        .expect("a mark")
}

#[test]
fn shards_run_each_device_as_the_whole_fleet_would_and_merge_into_one_signoff() {
    let (_b, bench) = temp_file("fleet.yaml", &fleet_bench(30, "{ datagrams: per_exchange }"));
    let b = bench.to_str().unwrap();
    let whole = run(&fleet_args(b));
    assert_eq!(whole.code(), 0, "{}", whole.stderr());
    let out = tempfile::tempdir().unwrap();
    let outs = out.path().to_str().unwrap();
    for k in 1..=3 {
        let mut args = vec!["run".to_string()];
        args.extend(fleet_args(b).iter().map(|s| s.to_string()));
        args.extend(["--shard".into(), format!("{k}/3"), "--out".into(), outs.into()]);
        let o = rig(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            o.status.code(),
            Some(0),
            "shard {k}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut slices: Vec<std::path::PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    slices.sort();
    assert_eq!(slices.len(), 3);

    // Each device behaves as on the whole bench until the plan's crash,
    // whose time depends on which devices a slice waited for.
    let all = whole.events();
    let whole_wakes = wakes_before(&all, mark_t(&all));
    let mut judged = BTreeMap::new();
    for s in &slices {
        let evs = read_events(s);
        let mine = wakes_before(&evs, mark_t(&evs).min(mark_t(&all)));
        assert!(!mine.is_empty());
        for (d, w) in &mine {
            let theirs = &whole_wakes[d];
            assert_eq!(&theirs[..w.len()], &w[..], "{d}: same wakes as in the whole run");
        }
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(s.join("summary.json")).unwrap()).unwrap();
        judged.extend(facts(&summary));
    }
    let whole_facts = facts(&whole.summary());
    assert_eq!(
        judged.keys().collect::<Vec<_>>(),
        whole_facts.keys().collect::<Vec<_>>(),
        "the slices judge every device once"
    );

    let merged = out.path().join("merged");
    let mut args = vec!["report", "merge"];
    let slice_args: Vec<&str> = slices.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(&slice_args);
    args.extend(["--out", merged.to_str().unwrap()]);
    let o = rig(&args);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(merged.join("signoff.md")).unwrap();
    assert!(md.contains("fleet:** 30/30 recovered"), "one fleet sign-off: {md}");
    assert!(md.contains("(+2 shards joined)"), "{md}");
    let cases = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().matches("<testcase").count();
    assert_eq!(
        cases(&merged.join("junit.xml")),
        cases(&whole.run_dir().join("junit.xml")),
        "as many test cases as the whole run"
    );

    // The same slices run side by side in one process (`--jobs 3`): each
    // slice folder is the shard's run, and the run's own reports join them.
    let sliced = tempfile::tempdir().unwrap();
    let mut args = vec!["run".to_string()];
    args.extend(fleet_args(b).iter().map(|s| s.to_string()));
    args.extend([
        "--jobs".into(),
        "3".into(),
        "--out".into(),
        sliced.path().to_str().unwrap().into(),
    ]);
    let o = rig(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let dirs: Vec<_> = std::fs::read_dir(sliced.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one run folder: {dirs:?}");
    let run_dir = &dirs[0];
    for (k, shard) in slices.iter().enumerate() {
        let slice = run_dir.join(format!("slices/{}", k + 1));
        assert_eq!(
            read_events(&slice)
                .iter()
                .filter(|e| e["device"].is_string())
                .map(|e| (e["device"].clone(), e["t_ms"].clone(), e["kind"].clone()))
                .collect::<Vec<_>>(),
            read_events(shard)
                .iter()
                .filter(|e| e["device"].is_string())
                .map(|e| (e["device"].clone(), e["t_ms"].clone(), e["kind"].clone()))
                .collect::<Vec<_>>(),
            "slice {} runs as shard {}/3 does",
            k + 1,
            k + 1
        );
        let first = format!("dev-{:04}", k * 10 + 1);
        let log = std::fs::read_to_string(slice.join(format!("console/{first}.log"))).unwrap();
        assert!(
            log.contains("--- rig: power on ---") && log.contains("wake"),
            "{first}: {log}"
        );
    }
    assert!(!run_dir.join("events.jsonl").exists(), "the journals are the slices'");
    let joined: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(facts(&joined), judged, "every device judged as on its shard");
    assert!(
        joined["run_id"].as_str().unwrap().ends_with("(3 slices joined)"),
        "{}",
        joined["run_id"]
    );
    let md = std::fs::read_to_string(run_dir.join("signoff.md")).unwrap();
    assert!(md.contains("fleet:** 30/30 recovered"), "one fleet sign-off: {md}");
    assert_eq!(
        cases(&run_dir.join("junit.xml")),
        cases(&whole.run_dir().join("junit.xml"))
    );
    // `rig report` reads the slices back to the same verdicts and facts.
    std::fs::remove_file(run_dir.join("summary.json")).unwrap();
    let o = rig(&["report", run_dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let again: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(facts(&again), judged);
    assert_eq!(again["cells"][0]["checks"], joined["cells"][0]["checks"]);
    assert_eq!(again["cells"][0]["devices"], joined["cells"][0]["devices"]);

    // A slice missing is said; a slice given twice is refused.
    let o = rig(&[
        "report",
        "merge",
        slice_args[0],
        slice_args[1],
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("shard 3/3 of bench `fleet-test` (seed 11) is missing"));
    let o = rig(&[
        "report",
        "merge",
        slice_args[0],
        slice_args[0],
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is given twice"));
}

#[test]
fn a_shard_needs_a_seed_and_a_slice_that_exists() {
    let (_b, bench) = temp_file("fleet.yaml", &fleet_bench(2, "{}"));
    let b = bench.to_str().unwrap();
    for (args, says) in [
        (vec!["--shard", "1/2"], "--shard needs --seed"),
        (vec!["--shard", "3/2", "--seed", "1"], "K must be 1 to N"),
        (vec!["--shard", "5/9", "--seed", "1"], "is empty"),
        (vec!["--jobs", "0"], "--jobs must be at least 1"),
        (
            vec!["--jobs", "2", "--shard", "1/2", "--seed", "1"],
            "do not go together",
        ),
        (vec!["--jobs", "4"], "has 3 devices, fewer than the slices"),
    ] {
        let mut all = vec!["run", "test-plans/fleet-cache-crash.yaml", "--bench", b];
        all.extend(args);
        let o = rig(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {err}");
        assert!(err.contains(says), "{all:?}: {err}");
    }
    // Only the virtual clock runs slices side by side.
    let (_r, real) = temp_file(
        "real.yaml",
        &fleet_bench(2, "{}").replace("clock: virtual", "clock: real"),
    );
    let o = rig(&[
        "run",
        "test-plans/fleet-cache-crash.yaml",
        "--bench",
        real.to_str().unwrap(),
        "--jobs",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("runs on the real clock"), "{err}");
}
