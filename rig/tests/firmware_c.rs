//! The C firmware under `firmware-fixtures/sleepy-c`, built for the host:
//! its crypto against the RFC test vectors, its protocol against the Rust
//! cloud over UDP, and the ARM images' reproducibility. Needs a host C
//! compiler and make; the image test needs gcc-arm-none-eabi (.ci/run
//! installs both).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use rig::cache::memory::MemoryCache;
use rig::cloud::durable::DurableKeys;
use rig::cloud::{CloudConfig, Mitigation, Secrets};
use rig::timeline::{EventKind, Timeline};
use rig_proto::Psk;

fn src() -> PathBuf {
    repo().join("firmware-fixtures/sleepy-c")
}

/// `make` in the firmware folder, into `build` (a separate folder per
/// test, so tests running at once do not race on one build tree).
fn make(build: &Path, target: &str) {
    let out = Command::new("make")
        .arg("-C")
        .arg(src())
        .arg(format!("B={}", build.display()))
        .arg(target)
        .output()
        .expect("make runs");
    assert!(
        out.status.success(),
        "make {target} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_c_crypto_passes_the_rfc_vectors() {
    let build = tempfile::tempdir().unwrap();
    make(build.path(), "check");
    let out = Command::new(build.path().join("selftest")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for v in [
        "RFC 4231 case 1",
        "RFC 4231 case 6",
        "RFC 5869 case 1",
        "RFC 5869 case 3",
        "RFC 8439 2.4.2 ChaCha20",
        "RFC 8439 2.5.2 Poly1305",
        "RFC 8439 2.8.2 AEAD tag",
        "AEAD refuses a flipped tag bit",
    ] {
        assert!(text.contains(&format!("ok   {v}")), "{v} not passed:\n{text}");
    }
    assert!(text.contains("0 failures"), "{text}");
}

/// Starts the Rust cloud on loopback, runs the host build of the C
/// firmware against it, and returns the cloud's timeline and the
/// firmware's console.
fn c_client_against_rust_cloud(
    binary: &str,
    args: &[&str],
    device: &str,
    psk: &Psk,
) -> (Vec<rig::timeline::Event>, String) {
    let build = tempfile::tempdir().unwrap();
    make(build.path(), "host");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let timeline = Timeline::in_memory();
        let sock = rig::board::udp("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let keys = BTreeMap::from([(device.to_owned(), psk.clone())]);
        let cloud = rig::cloud::start(
            Arc::new(sock),
            CloudConfig::with_secrets(keys, Secrets::Os),
            Arc::new(MemoryCache::new(1)),
            DurableKeys::new(),
            Mitigation::Drop,
            &timeline,
        );
        let hex: String = psk.0.iter().map(|b| format!("{b:02x}")).collect();
        let mut full = vec![device.to_owned(), hex, addr.to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::process::Command::new(build.path().join(binary))
                .args(&full)
                .output(),
        )
        .await
        .expect("the C client finishes within 60 s")
        .unwrap();
        cloud.stop().await;
        let console = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{console}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (timeline.snapshot(), console)
    })
}

fn count(evs: &[rig::timeline::Event], f: impl Fn(&EventKind) -> bool) -> usize {
    evs.iter().filter(|e| f(&e.kind)).count()
}

/// Both directions of the protocol between the C client and the Rust
/// cloud: a full handshake (both sides' MACs), sealed records to the cloud
/// (it accepts and publishes them) and back (the firmware opens the pongs
/// and acks: every exchange ends acknowledged), and resumes across a soft
/// reset from "retained RAM".
#[test]
fn the_c_client_handshakes_and_resumes_with_the_rust_cloud() {
    let psk = Psk::derive_for("c-dev-01");
    // 3 wakes, a soft reset, 3 more wakes; 1 s sleeps.
    let (evs, console) = c_client_against_rust_cloud("sleepy-host", &["3", "1000", "1"], "c-dev-01", &psk);
    assert_eq!(
        count(&evs, |k| matches!(k, EventKind::CloudHandshake { .. })),
        1,
        "{console}"
    );
    assert_eq!(
        count(&evs, |k| matches!(k, EventKind::CloudResumed { .. })),
        5,
        "{console}"
    );
    assert_eq!(
        count(&evs, |k| matches!(k, EventKind::CloudPublish { .. })),
        6,
        "{console}"
    );
    assert_eq!(
        count(&evs, |k| matches!(k, EventKind::CloudInvalid { .. })),
        0,
        "{console}"
    );
    assert_eq!(console.matches("session resumed").count(), 5, "{console}");
    assert!(!console.contains("not acknowledged"), "every publish acked:\n{console}");
    assert!(console.contains("booting (reset reason: soft-reset)"), "{console}");
    assert!(
        console.contains("retained session"),
        "the session survived the reset:\n{console}"
    );
}

/// The negative control: a wrong key fails the handshake on both sides.
#[test]
fn the_c_client_with_the_wrong_key_gets_no_session() {
    let good = Psk::derive_for("c-dev-02");
    let build = tempfile::tempdir().unwrap();
    make(build.path(), "host");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (evs, console) = rt.block_on(async {
        let timeline = Timeline::in_memory();
        let sock = rig::board::udp("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let cloud = rig::cloud::start(
            Arc::new(sock),
            CloudConfig::with_secrets(BTreeMap::from([("c-dev-02".to_owned(), good)]), Secrets::Os),
            Arc::new(MemoryCache::new(1)),
            DurableKeys::new(),
            Mitigation::Drop,
            &timeline,
        );
        let wrong: String = "11".repeat(32);
        let out = tokio::process::Command::new(build.path().join("sleepy-host"))
            .args(["c-dev-02", &wrong, &addr.to_string(), "1", "1000"])
            .output()
            .await
            .unwrap();
        cloud.stop().await;
        (timeline.snapshot(), String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(count(&evs, |k| matches!(k, EventKind::CloudHandshake { .. })), 0);
    assert!(console.contains("handshake fails authentication"), "{console}");
}

/// Two builds of the images, in different folders, give the same bytes: the
/// SHA-256 a report cites names one image, whoever built it.
#[test]
fn the_firmware_images_build_reproducibly() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make(a.path(), "all");
    make(b.path(), "all");
    for img in ["sleepy-1.1.bin", "sleepy-1.2.bin", "sleepy-ideal.bin"] {
        let x = std::fs::read(a.path().join(img)).unwrap();
        let y = std::fs::read(b.path().join(img)).unwrap();
        assert!(x.len() > 4096, "{img} is a real image ({} bytes)", x.len());
        assert_eq!(x, y, "{img} differs between two builds");
    }
    let v11 = std::fs::read(a.path().join("sleepy-1.1.bin")).unwrap();
    let v12 = std::fs::read(a.path().join("sleepy-1.2.bin")).unwrap();
    assert_ne!(v11, v12, "the variants are different images");
}
