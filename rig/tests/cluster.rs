//! The Redis Cluster session cache: a real six- or three-node cluster of
//! redis-server child processes, broken node by node, in front of the
//! real-clock simulated boards.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn bench(name: &str) -> String {
    repo().join("bench").join(name).to_str().unwrap().to_owned()
}

fn test_plan(name: &str) -> String {
    repo().join("rig/tests/plans").join(name).to_str().unwrap().to_owned()
}

/// The devices whose current session a `cache.node_kill` lists, as the
/// check must see them: each device's last session before the kill.
fn lost_by_kill(evs: &[Value], cell: u64) -> (Value, BTreeSet<String>) {
    let mut current: std::collections::HashMap<String, String> = Default::default();
    for e in evs.iter().filter(|e| e["cell"] == cell) {
        if matches!(
            e["kind"].as_str(),
            Some("cloud.handshake" | "cloud.resumed" | "cloud.connected")
        ) {
            current.insert(
                e["device"].as_str().unwrap().into(),
                e["session"].as_str().unwrap().into(),
            );
        }
        if e["kind"] == "cache.node_kill" {
            let sessions = e["sessions"].as_array().unwrap();
            let devices = e["devices"].as_array().unwrap();
            let lost = sessions
                .iter()
                .zip(devices)
                .filter(|(s, d)| current.get(d.as_str().unwrap()).map(String::as_str) == s.as_str())
                .map(|(_, d)| d.as_str().unwrap().to_owned())
                .collect();
            return (e.clone(), lost);
        }
    }
    panic!("no cache.node_kill in cell {cell}");
}

fn by_device(rec: &[Value]) -> std::collections::BTreeMap<String, Value> {
    rec.iter()
        .map(|c| (c["device"].as_str().unwrap().to_owned(), c.clone()))
        .collect()
}

#[test]
fn losing_one_master_needs_a_handshake_from_exactly_its_devices() {
    let r = run(&[
        &plan("cluster-node-loss.yaml").to_string_lossy(),
        "--bench",
        &bench("sim-cluster.yaml"),
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    let s = r.summary();
    let layout = evs
        .iter()
        .find(|e| e["kind"] == "cache.cluster")
        .expect("cache.cluster");
    assert_eq!(layout["nodes"].as_array().unwrap().len(), 3, "{layout}");
    for (index, fixture) in [(0u64, "sleepy-1.1"), (1, "sleepy-1.2")] {
        let (kill, lost) = lost_by_kill(&evs, index);
        assert_eq!(kill["node"], 2);
        assert_eq!(kill["slots"], "5461-10921", "{kill}");
        assert!(kill["promoted"].is_null(), "no replica: {kill}");
        // 24 devices over 3 masters: some on node 2 and some elsewhere
        // (each misses with probability (2/3)^24 or (1/3)^24).
        assert!(!lost.is_empty() && lost.len() < 24, "{kill}");
        let c = cell(&s, &format!("fixture={fixture}"));
        let rec = by_device(&recovery(c));
        assert_eq!(rec.len(), 24);
        for (d, k) in &rec {
            let f = &k["facts"];
            let was_lost = lost.contains(d);
            assert_eq!(f["lost"], was_lost, "{k}");
            if !was_lost {
                assert_ne!(f["node"], 2, "a kept session was not on node 2: {k}");
            } else {
                assert_eq!(f["node"], 2, "{k}");
            }
            match (fixture, was_lost) {
                // The negative control: stuck in the resume loop.
                ("sleepy-1.1", true) => assert_eq!(k["passed"], false, "{k}"),
                (_, true) => {
                    assert_eq!(k["passed"], true, "{k}");
                    assert_eq!(f["via"], "handshake", "{k}");
                }
                (_, false) => {
                    assert_eq!(k["passed"], true, "{k}");
                    assert_eq!(f["via"], "resume", "{k}");
                    assert_eq!(f["handshakes"], 0, "{k}");
                }
            }
        }
    }
    let html = std::fs::read_to_string(r.run_dir().join("signoff.html")).unwrap();
    assert!(
        html.contains("session on node") && html.contains("LOST"),
        "the sign-off shows the nodes"
    );
}

#[test]
fn a_promoted_replica_loses_the_writes_it_had_not_received_and_only_those_devices_handshake() {
    let r = run(&[
        &test_plan("cluster-failover-lag.yaml"),
        "--bench",
        &bench("sim-cluster-replicas.yaml"),
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    let (kill, lost) = lost_by_kill(&evs, 0);
    assert_eq!(kill["node"], 1);
    assert_eq!(kill["promoted"], 4, "node 1's replica took over: {kill}");
    assert!(
        !lost.is_empty() && lost.len() < 24,
        "new sessions on node 1 were not replicated to the stalled node 4: {kill}"
    );
    let rec = by_device(&recovery(&r.summary()["cells"][0]));
    for (d, k) in &rec {
        let f = &k["facts"];
        assert_eq!(k["passed"], true, "{k}");
        let expect = if lost.contains(d) { "handshake" } else { "resume" };
        assert_eq!(f["via"], expect, "{d}: {k}");
    }
    // After the failover the layout says so.
    let after = evs.iter().rfind(|e| e["kind"] == "cache.cluster").unwrap();
    let n4 = after["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == 4)
        .unwrap();
    assert_eq!(n4["role"], "master", "{after}");
}

#[test]
fn node_faults_need_a_cluster_and_a_node_it_has() {
    let (_d, p) = temp_file(
        "node.yaml",
        "name: n\nfixture: sleepy-1.2\ndevices: all\nsteps:\n  - cache: { kill: { node: 7 } }\n",
    );
    let out = rig(&[
        "check",
        p.to_str().unwrap(),
        "--bench",
        &bench("sim-cluster-replicas.yaml"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nodes 1 to 6"), "{err}");
    let out = rig(&["check", p.to_str().unwrap(), "--bench", &bench("sim-real.yaml")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no cluster cache"), "{err}");
}

fn redis_children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            comm.ends_with("redis-server")
                && rest.split_whitespace().nth(1).and_then(|x| x.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes (it holds no port, no data).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn sigkill_of_the_rig_leaves_no_node_of_a_six_node_cluster() {
    let out = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args([
            "run",
            &test_plan("cluster-wait-long.yaml"),
            "--bench",
            &bench("sim-cluster-replicas.yaml"),
            "--out",
        ])
        .arg(out.path())
        .current_dir(repo())
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let nodes = loop {
        let waiting = std::fs::read_dir(out.path())
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("events.jsonl")).ok())
            .is_some_and(|t| t.contains("\"step\":\"wait 2m\""));
        let nodes = redis_children(child.id());
        if waiting && nodes.len() == 6 {
            break nodes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster never came up: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap(); // SIGKILL: no handler, no teardown
    child.wait().unwrap();
    let gone_by = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = nodes.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < gone_by,
            "redis-server nodes {left:?} outlived the rig by 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rig_cloud_serve_runs_on_a_cluster_and_stops_it() {
    let out = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args([
            "cloud",
            "serve",
            "--cache",
            "redis-cluster",
            "--listen",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let nodes = loop {
        let nodes = redis_children(child.id());
        if nodes.len() == 3 && out.path().join("admin.sock").exists() {
            break nodes;
        }
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the cluster cloud never came up: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let events = std::fs::read_to_string(out.path().join("events.jsonl")).unwrap();
    assert!(events.contains("\"kind\":\"cache.cluster\""), "{events}");
    let stop = rig(&["cloud", "stop", "--cloud", out.path().to_str().unwrap()]);
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    child.wait().unwrap();
    let gone_by = std::time::Instant::now() + Duration::from_secs(5);
    while nodes.iter().any(|p| alive(*p)) {
        assert!(std::time::Instant::now() < gone_by, "nodes outlived the cloud");
        std::thread::sleep(Duration::from_millis(20));
    }
}
