//! The rig as a hostile local user and a hostile peer see it (issue 10): one
//! regression test per finding, each named after what was possible.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `rig cloud serve ARGS --out DIR` (under `umask`, if given) once its admin
/// socket answers.
fn serve(dir: &Path, umask: Option<&str>, args: &[&str]) -> Guard {
    let mut cmd = match umask {
        Some(m) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("umask {m}; exec \"$0\" \"$@\"")).arg(rig_bin());
            c
        }
        None => Command::new(rig_bin()),
    };
    let mut child = cmd
        .args(["cloud", "serve", "--out"])
        .arg(dir)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = dir.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.as_mut().unwrap().read_to_string(&mut err).unwrap();
            panic!("rig cloud serve exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    Guard(Some(child))
}

/// Stops a serving cloud when a test fails half way (no orphan servers).
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stop(mut g: Guard) -> std::process::Output {
    let child = g.0.take().unwrap();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn cache_cmd(dir: &Path, cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["cache"];
    args.extend_from_slice(cmd);
    args.push("--cloud");
    args.push(dir.to_str().unwrap());
    rig(&args)
}

/// Finding 1: a planted `bench.lock -> root file` in a lock folder another
/// user created first made the next locked run truncate that file.
#[test]
fn a_planted_lock_symlink_is_refused_and_the_file_behind_it_kept() {
    let d = tempfile::tempdir().unwrap();
    let locks = d.path().join("locks");
    std::fs::create_dir(&locks).unwrap();
    let victim = d.path().join("shadow");
    std::fs::write(&victim, "root:$6$secret\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&victim, locks.join("locked-sim.lock")).unwrap();
    let (_b, bench) = temp_file(
        "bench.yaml",
        "name: locked-sim\nlock: true\ndevices:\n  - { id: sleepy-01, board: sim, tags: [sleepy] }\n",
    );
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(rig_bin())
        .args(["run", "test-plans/recovery-smoke.yaml", "--bench"])
        .arg(&bench)
        .arg("--out")
        .arg(out.path())
        .current_dir(repo())
        .env("CI", "1")
        .env("RIG_LOCK_DIR", &locks)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is a symbolic link; refusing to follow it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:$6$secret\n");
    // A lock folder anyone can write to is refused as well.
    let open = d.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = Command::new(rig_bin())
        .args(["run", "test-plans/recovery-smoke.yaml", "--bench"])
        .arg(&bench)
        .arg("--out")
        .arg(out.path())
        .current_dir(repo())
        .env("CI", "1")
        .env("RIG_LOCK_DIR", &open)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("writable by other users"), "{}", stderr(&o));
}

/// Finding 2: a second `rig cloud serve` on one folder truncated the first's
/// journal (2,003 NUL bytes later) and took over its admin socket.
#[test]
fn a_second_cloud_on_the_same_folder_is_refused_and_the_journal_kept() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cloud");
    let first = serve(&dir, None, &["--listen", "127.0.0.1:0"]);
    let o = Command::new(rig_bin())
        .args(["cloud", "serve", "--listen", "127.0.0.1:0", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "is in use by another `rig cloud serve` (pid {}",
            first.0.as_ref().unwrap().id()
        )),
        "{}",
        stderr(&o)
    );
    // The first still owns its socket and its journal.
    assert_eq!(cache_cmd(&dir, &["flush"]).status.code(), Some(0));
    assert_eq!(stop(first).status.code(), Some(0));
    let journal = std::fs::read(dir.join("events.jsonl")).unwrap();
    assert!(!journal.contains(&0u8), "no NUL bytes");
    let (_, evs) = rig::timeline::read_jsonl(&dir.join("events.jsonl")).unwrap();
    assert!(evs.iter().any(|e| e.kind.name() == "cache.flush"));
    // A later cloud keeps the earlier journal beside its own.
    let again = serve(&dir, None, &["--listen", "127.0.0.1:0"]);
    assert_eq!(stop(again).status.code(), Some(0));
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("events-") && n.ends_with(".jsonl"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let (_, old) = rig::timeline::read_jsonl(&dir.join(&kept[0])).unwrap();
    assert!(
        old.iter().any(|e| e.kind.name() == "cache.flush"),
        "the first journal, intact"
    );
}

/// Finding 3 (the default address): the cloud listened on 0.0.0.0.
#[test]
fn the_cloud_listens_on_loopback_unless_told_otherwise() {
    let d = tempfile::tempdir().unwrap();
    let mut child = serve(d.path(), None, &[]);
    let mut err = String::new();
    let mut s = child.0.as_mut().unwrap().stderr.take().unwrap();
    let mut byte = [0u8; 1];
    while !err.contains('\n') {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        err.push(byte[0] as char);
    }
    assert!(err.contains("listening on udp://127.0.0.1:5684"), "{err}");
    assert_eq!(stop(child).status.code(), Some(0));
}

/// Redis speaks RESP; a command as a local user would send it with no password.
fn resp(port: u16, args: &[&str]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The port from the process title redis sets (`redis-server 127.0.0.1:PORT`).
fn redis_port(pid: u32) -> u16 {
    let title = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).into_owned();
    let title = title.trim_end_matches(['\0', ' ']);
    title
        .rsplit(':')
        .next()
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {title:?}"))
}

fn redis_pid(dir: &Path) -> u32 {
    let (_, evs) = rig::timeline::read_jsonl(&dir.join("events.jsonl")).unwrap();
    evs.iter()
        .find_map(|e| match &e.kind {
            rig::timeline::EventKind::CacheStart { pid: Some(p), .. } => Some(*p),
            _ => None,
        })
        .expect("cache.start names the redis pid")
}

/// Finding 4: the rig's redis answered every local user: GET read session
/// keys, SET planted a forged session, SHUTDOWN NOSAVE took it down unnoticed.
#[test]
fn the_session_cache_refuses_local_users_and_a_death_it_did_not_cause_is_recorded() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cloud");
    let cloud = serve(&dir, None, &["--listen", "127.0.0.1:0", "--cache", "redis"]);
    let pid = redis_pid(&dir);
    let port = redis_port(pid);
    for cmd in [
        &["GET", "rig:session:0000000000000001"][..],
        &["SET", "rig:session:0000000000000001", "{}"],
        &["SHUTDOWN", "NOSAVE"],
        &["CONFIG", "GET", "requirepass"],
    ] {
        let reply = resp(port, cmd);
        assert!(reply.starts_with("-NOAUTH"), "{cmd:?} -> {reply:?}");
    }
    // The passwords are nowhere a local user can read them.
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).into_owned();
    assert!(!cmdline.contains("rig-cloud on"), "{cmdline}");
    let conf = dir.join("redis/redis.conf");
    assert_eq!(mode(&conf), 0o600);
    assert_eq!(mode(&dir.join("redis")), 0o700);
    // Even the cloud's own user cannot shut it down or reconfigure it.
    let text = std::fs::read_to_string(&conf).unwrap();
    let pw = text
        .lines()
        .find(|l| l.starts_with("user rig-cloud"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with('>')))
        .unwrap()
        .trim_start_matches('>')
        .to_owned();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = format!("*3\r\n$4\r\nAUTH\r\n$9\r\nrig-cloud\r\n${}\r\n{pw}\r\n", pw.len());
    s.write_all(auth.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n");
    s.write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n").unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("-NOPERM"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Someone else kills the server: the rig notices, and says so.
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, evs) = rig::timeline::read_jsonl(&dir.join("events.jsonl")).unwrap();
        if let Some(e) = evs.iter().find(|e| e.kind.name() == "cache.died") {
            assert!(matches!(&e.kind, rig::timeline::EventKind::CacheDied { pid: p, .. } if *p == pid));
            break;
        }
        assert!(Instant::now() < deadline, "the death was never recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stop(cloud).status.code(), Some(0));
}

/// Findings 5 and 6: session keys in a 0644 file in every run folder, and
/// an admin socket whose mode came from the umask (0777 under umask 000).
#[test]
fn keys_and_the_admin_socket_are_private_whatever_the_umask() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cloud");
    let cloud = serve(&dir, Some("000"), &["--listen", "127.0.0.1:0"]);
    assert_eq!(mode(&dir), 0o700, "the cloud folder");
    assert_eq!(mode(&dir.join("admin.sock")) & 0o777, 0o600, "the admin socket");
    assert_eq!(mode(&dir.join("durable-keys.jsonl")), 0o600, "the durable key store");
    assert_eq!(stop(cloud).status.code(), Some(0));

    // A run under umask 000: nothing world-writable, keys private.
    let out = d.path().join("runs");
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(rig_bin())
        .args([
            "run",
            "test-plans/recovery-smoke.yaml",
            "--seed",
            "1",
            "--set",
            "mitigation=durable",
            "--out",
        ])
        .arg(&out)
        .current_dir(repo())
        .env("CI", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let run = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    assert_eq!(mode(&out) & 0o022, 0, "--out folder");
    assert_eq!(mode(&run) & 0o022, 0, "run folder");
    for f in ["events.jsonl", "summary.json", "junit.xml", "signoff.html"] {
        assert_eq!(mode(&run.join(f)) & 0o022, 0, "{f}");
    }
    assert_eq!(mode(&run.join("cell-1/durable-keys.jsonl")), 0o600);
    // No key material in the reports.
    let keys = std::fs::read_to_string(run.join("cell-1/durable-keys.jsonl")).unwrap();
    let c2s: Vec<u8> = serde_json::from_str::<serde_json::Value>(keys.lines().next().unwrap()).unwrap()["c2s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let hex: String = c2s.iter().map(|b| format!("{b:02x}")).collect();
    for f in [
        "events.jsonl",
        "summary.json",
        "junit.xml",
        "signoff.html",
        "signoff.md",
    ] {
        let text = std::fs::read_to_string(run.join(f)).unwrap();
        assert!(!text.contains(&hex), "{f} holds a session key");
    }
}

/// Finding 6: one connection at a time (an idle client blocked `rig cache
/// flush`), unbounded lines (150 MiB grew the server to 389 MB), and no check
/// of who connects.
#[test]
fn the_admin_socket_serves_clients_concurrently_with_bounded_lines_for_this_user_only() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cloud");
    let cloud = serve(&dir, None, &["--listen", "127.0.0.1:0"]);
    let sock = dir.join("admin.sock");
    let _idle = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let t = Instant::now();
    let o = cache_cmd(&dir, &["flush"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "an idle client does not block others"
    );
    // A line without end: the server stops reading after 4 KiB.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 64 * 1024 * 1024,
        "the server hung up instead of buffering {sent} bytes"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", cloud.0.as_ref().unwrap().id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss_kb < 100 * 1024, "the server stayed small: {rss_kb} kB");
    // Another user cannot connect (the folder is 0700; the server also
    // checks the peer's uid). Needs root to become another user.
    if rig::fsutil::euid() == 0 {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(rig_bin())
            .args(["cache", "kill", "--cloud"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    }
    assert_eq!(stop(cloud).status.code(), Some(0));
    let (_, evs) = rig::timeline::read_jsonl(&dir.join("events.jsonl")).unwrap();
    assert!(
        !evs.iter().any(|e| e.kind.name() == "cache.kill"),
        "nobody else killed the cache"
    );
}

/// Finding 7: a 1 KB plan of 12 matrix axes drove `rig check` to 3.9 GB, and
/// `rig check /dev/zero` read until memory ran out.
#[test]
fn small_inputs_cannot_exhaust_memory() {
    let mut plan = String::from("name: bomb\nmatrix:\n");
    for i in 0..12 {
        plan += &format!("  a{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n");
    }
    plan += "steps:\n  - wait: 1s\n";
    let (_d, p) = temp_file("bomb.yaml", &plan);
    let t = Instant::now();
    let o = rig(&["check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("bomb.yaml:6:7: error: the matrix has more than 1024 cells with axis `a3`"),
        "{}",
        stderr(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(20), "refused before expanding");
    let o = rig(&["check", "/dev/zero"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/dev/zero: error: cannot read plan: not a regular file"),
        "{}",
        stderr(&o)
    );
    let big = "#".repeat(2 * 1024 * 1024);
    let (_d2, p2) = temp_file("big.yaml", &big);
    let o = rig(&["check", p2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("larger than 1024 KiB"), "{}", stderr(&o));
}
