//! The simulated bench on real OS interfaces: UDP on loopback, consoles on
//! pseudo-terminals through the serial driver, and a real redis-server that
//! the rig SIGKILLs and restarts. Needs `redis-server` on PATH (.ci/run
//! installs Debian's package). The headline plan on this bench is the
//! README's command, run as typed by `docs.rs`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn sim_real() -> String {
    repo().join("bench/sim-real.yaml").to_str().unwrap().to_owned()
}

fn test_plan(name: &str) -> String {
    repo().join("rig/tests/plans").join(name).to_str().unwrap().to_owned()
}

fn pid_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A power cycle removes each board's pty and brings a new one up behind the
/// same path: the console driver records the gap between the power-off and
/// the first line of the new boot, for every board.
#[test]
fn a_power_cycle_makes_a_console_gap_on_every_pty_board() {
    let r = run(&[
        &test_plan("power-cycle-console.yaml"),
        "--bench",
        &test_plan("pty-bench.yaml"),
        "--seed",
        "4",
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    let seq = |e: &Value| e["seq"].as_u64().unwrap();
    let mark = evs
        .iter()
        .find(|e| e["kind"] == "plan.mark" && e["name"] == "cycle")
        .map(seq)
        .unwrap();
    for dev in ["pty-01", "pty-02", "pty-03"] {
        let of = |e: &&Value| e["device"] == dev && seq(e) > mark;
        let off = evs
            .iter()
            .filter(of)
            .find(|e| e["kind"] == "power.off")
            .expect("power.off");
        let on = evs
            .iter()
            .filter(of)
            .find(|e| e["kind"] == "power.on")
            .expect("power.on");
        let boot = evs
            .iter()
            .filter(of)
            .find(|e| e["kind"] == "device.boot" && seq(e) > seq(on))
            .expect("the board booted again");
        let gaps: Vec<&Value> = evs
            .iter()
            .filter(of)
            .filter(|e| e["kind"] == "console.gap" && seq(e) > seq(off) && seq(e) < seq(boot))
            .collect();
        assert_eq!(
            gaps.len(),
            1,
            "{dev}: one gap between power-off and the new boot: {gaps:?}"
        );
        let ms = gaps[0]["ms"].as_u64().unwrap();
        let span = boot["t_ms"].as_u64().unwrap() - off["t_ms"].as_u64().unwrap();
        assert!(
            ms <= span + 1,
            "{dev}: the gap ({ms} ms) lies inside the power cycle ({span} ms)"
        );
        // Lines before and after the cycle came through the same path.
        assert!(
            evs.iter()
                .any(|e| e["device"] == dev && e["kind"] == "console.line" && seq(e) < seq(off))
        );
        assert!(
            evs.iter()
                .any(|e| e["device"] == dev && e["kind"] == "console.line" && seq(e) > seq(boot))
        );
    }
}

#[test]
fn a_stale_snapshot_restore_on_redis_is_seen_by_the_checks() {
    let r = run(&[
        &test_plan("redis-stale-snapshot.yaml"),
        "--bench",
        &sim_real(),
        "--seed",
        "2",
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let evs = r.events();
    let restore = evs.iter().find(|e| e["kind"] == "cache.restore").unwrap();
    assert_eq!(restore["from"], "before");
    assert_eq!(restore["sessions"], 8, "the 8 old sessions are back: {restore}");
    let s = r.summary();
    for c in recovery(&s["cells"][0]) {
        assert!(
            c["facts"]["unknown_resumes"].as_u64().unwrap() >= 1,
            "the new session was unknown: {c}"
        );
        assert_eq!(c["facts"]["via"], "handshake", "{c}");
    }
    for kind in [
        "cache.snapshot",
        "cache.pause",
        "cache.resume",
        "cache.evict",
        "cache.flush",
    ] {
        assert!(evs.iter().any(|e| e["kind"] == kind), "{kind}");
    }
}

#[test]
fn sigkill_of_the_rig_leaves_no_redis_server_and_an_intact_timeline() {
    let out = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args([
            "run",
            &test_plan("wait-long-redis.yaml"),
            "--bench",
            &sim_real(),
            "--out",
        ])
        .arg(out.path())
        .current_dir(repo())
        .env("CI", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let events = || -> Option<std::path::PathBuf> {
        let dir = std::fs::read_dir(out.path()).ok()?.next()?.ok()?.path();
        Some(dir.join("events.jsonl"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let redis_pid = loop {
        let pid = events().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["kind"] == "cache.start")
                .and_then(|e| e["pid"].as_u64())
        });
        let waiting = events()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|t| t.contains("\"step\":\"wait 2m\""));
        if let (Some(pid), true) = (pid, waiting) {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "the run never got going");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(pid_alive(redis_pid));
    child.kill().unwrap(); // SIGKILL: no handler, no teardown
    child.wait().unwrap();
    let gone_by = std::time::Instant::now() + Duration::from_secs(5);
    while pid_alive(redis_pid) {
        assert!(
            std::time::Instant::now() < gone_by,
            "redis-server {redis_pid} outlived the rig"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Everything journaled before the kill is readable.
    let (header, evs) = rig::timeline::read_jsonl(&events().unwrap()).expect("events.jsonl is intact");
    assert_eq!(header.format, "rig.events");
    assert!(evs.iter().any(|e| e.kind.name() == "plan.step"));
    // And `rig report` says the run is incomplete: exit 3.
    let dir = events().unwrap().parent().unwrap().to_path_buf();
    let rep = rig(&["report", dir.to_str().unwrap()]);
    assert_eq!(rep.status.code(), Some(3));
}

/// Sends `hello` and waits for the cloud's HELLO_VERIFY; returns its size.
async fn answered(client: &tokio::net::UdpSocket, hello: &[u8], addr: SocketAddr, buf: &mut [u8]) -> usize {
    client.send_to(hello, addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (n, _) = client.recv_from(buf).await.unwrap();
            if let Ok(rig_proto::Frame::HelloVerify(_)) = rig_proto::Frame::decode(&buf[..n]) {
                return n;
            }
        }
    })
    .await
    .expect("the cloud answered the hello after the garbage")
}

#[tokio::test]
async fn the_udp_cloud_survives_garbage_and_still_answers() {
    use rand::{Rng, RngExt, SeedableRng};

    let timeline = rig::timeline::Timeline::in_memory();
    let handle = rig::cloud::CloudHandle::new(rig::cloud::Mitigation::Drop, timeline.clone());
    let keys = [("d".to_string(), rig_proto::Psk([1; 32]))].into_iter().collect();
    let server = rig::cloud::Server::new(
        rig::cloud::CloudConfig::new(keys, 1),
        Arc::new(rig::cache::memory::MemoryCache::new(1)),
        rig::cloud::durable::DurableKeys::new(),
        handle,
        timeline.clone(),
    );
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = sock.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(rig::cloud::serve(Arc::new(sock), server, async {
        let _ = rx.await;
    }));
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hello = rig_proto::Frame::ClientHello(rig_proto::ClientHello {
        device_id: "d".into(),
        client_nonce: [7; 16],
        cookie: None,
        padding: 0,
    })
    .encode();
    // A hello the cloud must answer: sent after every few garbage datagrams
    // and waited for, so the cloud has read everything before it (UDP keeps
    // order on loopback) and a socket buffer never overflows. That makes the
    // count of refused datagrams exact, not a matter of scheduling.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut buf = [0u8; 64];
    let mut sent = 0u64;
    for i in 0..3000 {
        let len = match i % 3 {
            0 => rng.random_range(0..8),
            1 => rng.random_range(8..600),
            _ => rng.random_range(4000..9000), // oversized
        };
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        if i % 5 == 0 && len > 4 {
            d[..4].copy_from_slice(&[b'R', b'G', 1, 0x10]);
        }
        client.send_to(&d, addr).await.unwrap();
        sent += 1;
        if i % 5 == 4 {
            answered(&client, &hello, addr, &mut buf).await;
        }
    }
    // Garbage first, then the reply to the hello: the cloud did not stall.
    assert_eq!(answered(&client, &hello, addr, &mut buf).await, 20);
    tx.send(()).unwrap();
    task.await.unwrap();
    // Every garbage datagram was read, counted and refused; none was trusted.
    // The journal holds a handful of aggregated refusals, not 3,000 events.
    let evs = timeline.snapshot();
    let (events, counted): (u64, u64) = evs.iter().fold((0, 0), |(n, c), e| match &e.kind {
        rig::timeline::EventKind::CloudInvalid { count, .. } => (n + 1, c + count),
        _ => (n, c),
    });
    assert_eq!(counted, sent, "each garbage datagram is counted once");
    assert!(
        events < 100,
        "aggregated per source, reason and second: {events} events"
    );
    assert!(
        evs.iter()
            .all(|e| !matches!(e.kind.name(), "cloud.handshake" | "cloud.connected"))
    );
}

#[test]
fn rig_cloud_serve_answers_over_udp_and_journals_until_ctrl_c() {
    let out = tempfile::tempdir().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args(["cloud", "serve", "--listen", &listen, "--out"])
        .arg(out.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let hello = rig_proto::Frame::ClientHello(rig_proto::ClientHello {
        device_id: "sleepy-01".into(),
        client_nonce: [1; 16],
        cookie: None,
        padding: 120,
    })
    .encode();
    let mut buf = [0u8; 64];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let n = loop {
        client.send_to(&hello, &listen).unwrap();
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            break n;
        }
        assert!(std::time::Instant::now() < deadline, "the cloud never answered");
    };
    assert!(matches!(
        rig_proto::Frame::decode(&buf[..n]),
        Ok(rig_proto::Frame::HelloVerify(_))
    ));
    // Hands-on cache commands reach the serving cloud.
    let cloud_dir = out.path().to_str().unwrap();
    for cmd in [
        &["snapshot", "s1"][..],
        &["kill"],
        &["restore", "s1"],
        &["evict", "0.5"],
    ] {
        let mut args = vec!["cache"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--cloud", cloud_dir]);
        let o = rig(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(rig(&["cache", "explode", "--cloud", cloud_dir]).status.code(), Some(2));
    assert_eq!(
        rig(&["cache", "restore", "nope", "--cloud", cloud_dir]).status.code(),
        Some(3)
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let result = child.wait_with_output().unwrap();
    assert_eq!(
        result.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let (_, evs) = rig::timeline::read_jsonl(&out.path().join("events.jsonl")).unwrap();
    assert!(
        evs.iter()
            .any(|e| e.kind.name() == "cloud.rx" && e.device.as_deref() == Some("sleepy-01"))
    );
    let kinds: Vec<&str> = evs
        .iter()
        .map(|e| e.kind.name())
        .filter(|k| k.starts_with("cache."))
        .collect();
    assert_eq!(kinds, ["cache.snapshot", "cache.kill", "cache.restore", "cache.evict"]);
}
