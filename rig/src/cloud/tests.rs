//! Protocol tests of the cloud on raw datagrams: handshakes, resumes, every
//! mitigation, and forged, replayed and malformed input.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rig_proto::client::{Handshake, Progress, Session};
use rig_proto::frame::FLAG_RESUME;
use rig_proto::{
    ClientFinished, ClientHello, Direction, Frame, Inner, InnerKind, Psk, SessionId, SessionKeys, Transcript,
};

use super::durable::DurableKeys;
use super::server::{CloudConfig, Outcome, Server, serve};
use super::transport::{Datagram, MemNet};
use super::{CloudHandle, Mitigation};
use crate::cache::SessionCache;
use crate::cache::memory::MemoryCache;
use crate::timeline::{ConnectVia, EventKind, Timeline, UnknownAction};

pub(super) const A: &str = "dev-a";
pub(super) const B: &str = "dev-b";

pub(super) fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 40000))
}

pub(super) struct Rig {
    pub(super) server: Server,
    pub(super) cache: MemoryCache,
    durable: DurableKeys,
    handle: CloudHandle,
    pub(super) timeline: Timeline,
}

fn rig(m: Mitigation) -> Rig {
    let cache = MemoryCache::new(1);
    rig_on(m, cache.clone(), Arc::new(cache))
}

/// A cloud on `backend`, which keeps its sessions in `cache`.
pub(super) fn rig_on(m: Mitigation, cache: MemoryCache, backend: Arc<dyn SessionCache>) -> Rig {
    let timeline = Timeline::in_memory();
    let durable = DurableKeys::new();
    let handle = CloudHandle::new(m, timeline.clone());
    let keys = BTreeMap::from([(A.to_owned(), Psk::derive_for(A)), (B.to_owned(), Psk::derive_for(B))]);
    let server = Server::new(
        CloudConfig::new(keys, 7),
        backend,
        durable.clone(),
        handle.clone(),
        timeline.clone(),
    );
    Rig {
        server,
        cache,
        durable,
        handle,
        timeline,
    }
}

fn names(o: &Outcome) -> Vec<&'static str> {
    o.events.iter().map(|e| e.name()).collect()
}

fn only_reply(o: &Outcome) -> &Frame {
    assert_eq!(o.replies.len(), 1, "{:?}", o.replies);
    &o.replies[0]
}

/// A device's side of a session, as firmware keeps it.
pub(super) struct Dev {
    pub(super) id: SessionId,
    keys: SessionKeys,
    pub(super) tx: u64,
}

impl Dev {
    /// The next record, sealed by the device-side state machine.
    pub(super) fn record(&mut self, flags: u8, kind: InnerKind, msg_id: u16) -> Vec<u8> {
        let mut s = Session {
            id: self.id,
            keys: self.keys.clone(),
            tx_counter: self.tx,
            rx_counter: 0,
        };
        let inner = Inner {
            kind,
            msg_id,
            payload: b"sensors/temp\0{}".to_vec(),
        };
        let frame = s.seal(flags, &inner).encode();
        self.tx = s.tx_counter;
        frame
    }
}

/// A full handshake of `device` from `from`, flight by flight through the
/// device-side state machine, checking what the cloud answers at each one.
/// Returns the device's session and its finished flight (for replays).
pub(super) async fn handshake(r: &mut Rig, device: &str, from: SocketAddr) -> (Dev, Vec<u8>) {
    let nonce = [device.len() as u8; 16];
    let mut hs = Handshake::new(device, Psk::derive_for(device), nonce, 120);
    let o = r.server.handle(&hs.flight().encode(), from).await;
    assert!(matches!(only_reply(&o), Frame::HelloVerify(_)), "expected hello verify");
    assert_eq!(hs.on_frame(only_reply(&o).clone()), Progress::Next);
    let o = r.server.handle(&hs.flight().encode(), from).await;
    assert!(matches!(only_reply(&o), Frame::ServerHello(_)), "expected server hello");
    // The state machine refuses a server hello whose MAC is wrong: the
    // cloud proves it knows the PSK.
    assert_eq!(
        hs.on_frame(only_reply(&o).clone()),
        Progress::Next,
        "cloud proves it knows the PSK"
    );
    let finished = hs.flight().encode();
    let o = r.server.handle(&finished, from).await;
    let Progress::Done(session) = hs.on_frame(only_reply(&o).clone()) else {
        panic!("expected a valid server finished: {:?}", o.replies)
    };
    assert_eq!(names(&o), ["cloud.handshake", "cloud.connected"]);
    assert_eq!(o.device.as_deref(), Some(device));
    (
        Dev {
            id: session.id,
            keys: session.keys,
            tx: 0,
        },
        finished,
    )
}

fn open_reply(dev: &Dev, o: &Outcome) -> Inner {
    let Frame::Record(rec) = only_reply(o) else {
        panic!("expected a record, got {:?}", o.replies)
    };
    rec.open(&dev.keys, Direction::ToDevice)
        .expect("reply authenticates under the session key")
}

#[tokio::test(start_paused = true)]
async fn handshake_then_resume_ping_and_publish() {
    let mut r = rig(Mitigation::Drop);
    let (mut dev, _) = handshake(&mut r, A, peer(1)).await;
    assert_eq!(r.cache.len(), 1);
    let o = r
        .server
        .handle(&dev.record(FLAG_RESUME, InnerKind::Ping, 1), peer(1))
        .await;
    assert_eq!(names(&o), ["cloud.resumed", "cloud.connected"]);
    assert!(matches!(
        o.events[1],
        EventKind::CloudConnected {
            via: ConnectVia::Resume,
            ..
        }
    ));
    let pong = open_reply(&dev, &o);
    assert_eq!((pong.kind, pong.msg_id), (InnerKind::Pong, 1));
    let o = r.server.handle(&dev.record(0, InnerKind::Publish, 2), peer(1)).await;
    assert_eq!(names(&o), ["cloud.publish"]);
    assert!(matches!(&o.events[0], EventKind::CloudPublish { topic, .. } if topic == "sensors/temp"));
    assert_eq!(open_reply(&dev, &o).kind, InnerKind::Ack);
    let stored = r.cache.get(dev.id).await.unwrap().unwrap();
    assert_eq!((stored.rx_counter, stored.tx_counter), (2, 2));
}

/// A handshake flood from one device (a firmware bug, or a load test) must
/// not grow the cloud: it keeps a session per device, not per handshake.
#[tokio::test(start_paused = true)]
async fn a_device_that_handshakes_again_and_again_leaves_one_session_in_the_cloud() {
    use crate::cache::{Cache, RestoreFrom};
    let mut r = rig(Mitigation::Durable);
    let admin = Cache::new(Arc::new(r.cache.clone()), r.timeline.clone());
    let ping = async |r: &mut Rig, dev: &mut Dev, msg_id: u16| {
        let o = r
            .server
            .handle(&dev.record(FLAG_RESUME, InnerKind::Ping, msg_id), peer(1))
            .await;
        (o.replies.len(), names(&o), o.events)
    };
    let (mut first, _) = handshake(&mut r, A, peer(1)).await;
    assert_eq!(ping(&mut r, &mut first, 1).await.0, 1);
    // Handshakes the device never goes on to use (as if it never received
    // the finished flight): the session it holds stays valid, and only the
    // latest of them is kept.
    for _ in 0..500 {
        handshake(&mut r, A, peer(1)).await;
    }
    assert_eq!(r.cache.len(), 2, "the held session and the latest handshake's");
    assert!(
        r.server.held() < 150,
        "{} entries of state for one device",
        r.server.held()
    );
    assert_eq!(r.durable.len(), 2);
    assert_eq!(ping(&mut r, &mut first, 2).await.0, 1, "the held session still resumes");
    admin.snapshot("before").await.unwrap();
    // The device uses a new session: the one it held is gone for good.
    let (mut second, _) = handshake(&mut r, A, peer(1)).await;
    assert_eq!(ping(&mut r, &mut second, 1).await.0, 1);
    assert_eq!(r.cache.len(), 1);
    assert_eq!(r.durable.len(), 1);
    assert!(r.cache.get(first.id).await.unwrap().is_none());
    // Even brought back by an old snapshot, the replaced session is refused,
    // though its replay floor is forgotten.
    admin.restore(&RestoreFrom::Snapshot("before".into())).await.unwrap();
    let (replies, _, events) = ping(&mut r, &mut first, 3).await;
    assert_eq!(replies, 0);
    assert!(
        matches!(&events[..], [EventKind::CloudInvalid { reason, .. }] if reason.contains("replaced")),
        "{events:?}"
    );
    // The session the device holds carries on (healed from the durable
    // store: the snapshot predates it).
    let (replies, names, _) = ping(&mut r, &mut second, 2).await;
    assert_eq!((replies, names.contains(&"cloud.resumed")), (1, true), "{names:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hello_without_a_valid_cookie_costs_no_state_and_gets_a_small_answer() {
    let mut r = rig(Mitigation::Drop);
    let hello = |cookie| {
        Frame::ClientHello(ClientHello {
            device_id: A.into(),
            client_nonce: [9; 16],
            cookie,
            padding: 120,
        })
        .encode()
    };
    let o = r.server.handle(&hello(None), peer(1)).await;
    let Frame::HelloVerify(hv) = only_reply(&o).clone() else {
        panic!()
    };
    assert_eq!(Frame::HelloVerify(hv.clone()).encode().len(), 20, "no amplification");
    // The cookie is bound to the address it was sent to: a spoofer at
    // another address echoing it gets another cookie, not a certificate.
    let o = r.server.handle(&hello(Some(hv.cookie)), peer(2)).await;
    assert!(matches!(only_reply(&o), Frame::HelloVerify(_)));
    let o = r.server.handle(&hello(Some([0; 16])), peer(1)).await;
    assert!(matches!(only_reply(&o), Frame::HelloVerify(_)));
    assert!(r.server.pending_len() == 0, "nothing remembered before a valid cookie");
    let o = r.server.handle(&hello(Some(hv.cookie)), peer(1)).await;
    assert!(matches!(only_reply(&o), Frame::ServerHello(_)));
    assert_eq!(r.server.pending_len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hello_from_a_device_without_a_key_is_dropped() {
    let mut r = rig(Mitigation::Drop);
    let hello = Frame::ClientHello(ClientHello {
        device_id: "stranger".into(),
        client_nonce: [1; 16],
        cookie: None,
        padding: 0,
    });
    let o = r.server.handle(&hello.encode(), peer(9)).await;
    assert!(o.replies.is_empty());
    assert_eq!(names(&o), ["cloud.invalid"]);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_record_is_rejected_and_changes_nothing() {
    let mut r = rig(Mitigation::Drop);
    let (mut dev, _) = handshake(&mut r, A, peer(1)).await;
    let rec = dev.record(FLAG_RESUME, InnerKind::Ping, 1);
    assert!(!r.server.handle(&rec, peer(1)).await.replies.is_empty());
    let before = r.cache.get(dev.id).await.unwrap();
    let o = r.server.handle(&rec, peer(1)).await;
    assert!(o.replies.is_empty());
    assert!(matches!(&o.events[..], [EventKind::CloudInvalid { reason, .. }] if reason.contains("replayed")));
    assert_eq!(r.cache.get(dev.id).await.unwrap(), before);
    // Also from another address (an attacker replaying captured traffic).
    let o = r.server.handle(&rec, peer(7)).await;
    assert!(o.replies.is_empty());
    assert_eq!(r.cache.get(dev.id).await.unwrap(), before);
}

#[tokio::test(start_paused = true)]
async fn forged_records_never_touch_a_session_even_with_a_real_session_id() {
    let mut r = rig(Mitigation::Durable);
    let (dev_a, _) = handshake(&mut r, A, peer(1)).await;
    let (mut dev_b, _) = handshake(&mut r, B, peer(2)).await;
    let before = r.cache.get(dev_a.id).await.unwrap();
    // Device B seals a record with its own keys but A's session id.
    let mut forged = Dev {
        id: dev_a.id,
        keys: dev_b.keys.clone(),
        tx: 100,
    };
    let o = r
        .server
        .handle(&forged.record(FLAG_RESUME, InnerKind::Ping, 1), peer(2))
        .await;
    assert!(o.replies.is_empty());
    assert!(matches!(&o.events[..], [EventKind::CloudInvalid { reason, .. }] if reason.contains("authentication")));
    // A flipped byte in a genuine record.
    let mut rec = dev_b.record(0, InnerKind::Ping, 2);
    let n = rec.len();
    rec[n - 20] ^= 1;
    assert!(r.server.handle(&rec, peer(2)).await.replies.is_empty());
    assert_eq!(r.cache.get(dev_a.id).await.unwrap(), before, "A's session untouched");
    assert_eq!(r.cache.get(dev_b.id).await.unwrap().unwrap().rx_counter, 0);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_or_forged_finished_creates_no_session() {
    let mut r = rig(Mitigation::Drop);
    let (_, finished) = handshake(&mut r, A, peer(1)).await;
    assert_eq!(r.cache.len(), 1);
    let o = r.server.handle(&finished, peer(1)).await;
    assert!(o.replies.is_empty());
    assert!(matches!(&o.events[..], [EventKind::CloudInvalid { reason, .. }] if reason.contains("pending")));
    assert_eq!(r.cache.len(), 1, "replay created nothing");
    assert_eq!(r.durable.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_bad_finished_mac_keeps_the_real_handshake_pending() {
    let mut r = rig(Mitigation::Drop);
    let nonce = [3; 16];
    let hello = |cookie| {
        Frame::ClientHello(ClientHello {
            device_id: A.into(),
            client_nonce: nonce,
            cookie,
            padding: 0,
        })
        .encode()
    };
    let Frame::HelloVerify(hv) = only_reply(&r.server.handle(&hello(None), peer(1)).await).clone() else {
        panic!()
    };
    let Frame::ServerHello(sh) = only_reply(&r.server.handle(&hello(Some(hv.cookie)), peer(1)).await).clone() else {
        panic!()
    };
    let forged = Frame::ClientFinished(ClientFinished {
        session_id: sh.session_id,
        cert: vec![],
        mac: [0; 16],
    });
    let o = r.server.handle(&forged.encode(), peer(6)).await;
    assert!(o.replies.is_empty());
    assert_eq!(r.cache.len(), 0);
    let keys = SessionKeys::derive(&Psk::derive_for(A), A, &nonce, &sh.server_nonce, sh.session_id);
    let t = Transcript {
        client_nonce: nonce,
        server_nonce: sh.server_nonce,
        session_id: sh.session_id,
    };
    let real = Frame::ClientFinished(ClientFinished {
        session_id: sh.session_id,
        cert: vec![],
        mac: t.client_finished_mac(&keys, &[]),
    });
    let o = r.server.handle(&real.encode(), peer(1)).await;
    assert!(matches!(only_reply(&o), Frame::ServerFinished(_)));
    assert_eq!(r.cache.len(), 1);
}

async fn after_cache_loss(m: Mitigation) -> (Rig, Dev, Outcome) {
    let mut r = rig(m);
    let (mut dev, _) = handshake(&mut r, A, peer(1)).await;
    r.cache.kill().await.unwrap();
    r.cache.start().await.unwrap();
    let o = r
        .server
        .handle(&dev.record(FLAG_RESUME, InnerKind::Ping, 1), peer(1))
        .await;
    (r, dev, o)
}

#[tokio::test(start_paused = true)]
async fn mitigation_drop_stays_silent_on_an_unknown_session() {
    let (r, _, o) = after_cache_loss(Mitigation::Drop).await;
    assert!(o.replies.is_empty());
    assert!(matches!(
        &o.events[..],
        [EventKind::CloudResumeUnknown {
            action: UnknownAction::Dropped,
            resume: true,
            ..
        }]
    ));
    assert_eq!(
        o.device.as_deref(),
        Some(A),
        "bytes still attributed to the device by address"
    );
    assert!(r.cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn mitigation_reject_answers_session_unknown_echoing_the_counter() {
    let (_, dev, o) = after_cache_loss(Mitigation::Reject).await;
    let Frame::SessionUnknown(su) = only_reply(&o) else {
        panic!()
    };
    assert_eq!((su.session_id, su.counter), (dev.id, dev.tx));
    assert!(matches!(
        &o.events[..],
        [EventKind::CloudResumeUnknown {
            action: UnknownAction::Rejected,
            ..
        }]
    ));
}

#[tokio::test(start_paused = true)]
async fn mitigation_durable_heals_the_cache_and_resumes() {
    let (r, dev, o) = after_cache_loss(Mitigation::Durable).await;
    assert_eq!(names(&o), ["cloud.resume_unknown", "cloud.resumed", "cloud.connected"]);
    assert!(matches!(
        o.events[0],
        EventKind::CloudResumeUnknown {
            action: UnknownAction::Healed,
            ..
        }
    ));
    assert_eq!(open_reply(&dev, &o).kind, InnerKind::Pong);
    assert!(r.cache.get(dev.id).await.unwrap().is_some(), "cache healed");
}

#[tokio::test(start_paused = true)]
async fn the_mitigation_can_change_between_datagrams() {
    let (mut r, mut dev, o) = after_cache_loss(Mitigation::Drop).await;
    assert!(o.replies.is_empty());
    r.handle.set_mitigation(Mitigation::Durable);
    let o = r
        .server
        .handle(&dev.record(FLAG_RESUME, InnerKind::Ping, 2), peer(1))
        .await;
    assert_eq!(open_reply(&dev, &o).kind, InnerKind::Pong);
    assert!(r.timeline.snapshot().iter().any(|e| e.kind.name() == "cloud.config"));
}

#[tokio::test(start_paused = true)]
async fn a_dead_cache_is_a_miss_with_a_cache_error_and_durable_still_heals() {
    let mut r = rig(Mitigation::Durable);
    let (mut dev, _) = handshake(&mut r, A, peer(1)).await;
    r.cache.kill().await.unwrap();
    let o = r
        .server
        .handle(&dev.record(FLAG_RESUME, InnerKind::Ping, 1), peer(1))
        .await;
    assert_eq!(
        names(&o),
        [
            "cache.error",
            "cloud.resume_unknown",
            "cloud.resumed",
            "cloud.connected",
            "cache.error"
        ]
    );
    assert_eq!(open_reply(&dev, &o).kind, InnerKind::Pong);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_cache_costs_one_bounded_timeout_then_fails_fast() {
    let mut r = rig(Mitigation::Drop);
    let (mut dev, _) = handshake(&mut r, A, peer(1)).await;
    r.cache.pause(Duration::from_secs(3600)).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let o = r
        .server
        .handle(&dev.record(FLAG_RESUME, InnerKind::Ping, 1), peer(1))
        .await;
    assert_eq!(t0.elapsed(), Duration::from_millis(250), "bounded by the cache timeout");
    assert!(matches!(&o.events[0], EventKind::CacheError { error, .. } if error.contains("did not answer")));
    let t1 = tokio::time::Instant::now();
    let o = r
        .server
        .handle(&dev.record(FLAG_RESUME, InnerKind::Ping, 2), peer(1))
        .await;
    assert_eq!(t1.elapsed(), Duration::ZERO, "circuit open: no second wait");
    assert!(matches!(&o.events[0], EventKind::CacheError { error, .. } if error.contains("circuit open")));
}

#[tokio::test(start_paused = true)]
async fn random_and_mutated_datagrams_never_panic_or_create_sessions() {
    let mut r = rig(Mitigation::Durable);
    let (mut dev, finished) = handshake(&mut r, A, peer(1)).await;
    let good = dev.record(FLAG_RESUME, InnerKind::Ping, 1);
    // Used once for real, so a mutation that happens to restore it is a replay.
    assert!(!r.server.handle(&good, peer(1)).await.replies.is_empty());
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let seeds = [good, finished];
    for i in 0..20_000 {
        let data: Vec<u8> = if i % 2 == 0 {
            let len = rng.random_range(0..300);
            let mut d = vec![0u8; len];
            rng.fill_bytes(&mut d);
            if len >= 4 && i % 4 == 0 {
                // Valid envelope, random body: exercises every decoder.
                d[..3].copy_from_slice(b"RG\x01");
                d[3] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x11][rng.random_range(0..7)];
            }
            d
        } else {
            let mut d = seeds[(i / 2) % 2].clone();
            let flips = rng.random_range(1..4);
            for _ in 0..flips {
                let at = rng.random_range(0..d.len());
                d[at] ^= 1 << rng.random_range(0..8);
            }
            d
        };
        let o = r.server.handle(&data, peer(3)).await;
        assert!(
            o.events
                .iter()
                .all(|e| !matches!(e.name(), "cloud.handshake" | "cloud.connected")),
            "garbage authenticated: {data:?}"
        );
    }
    assert_eq!(r.cache.len(), 1);
    assert_eq!(r.cache.get(dev.id).await.unwrap().unwrap().rx_counter, 1);
}

#[tokio::test(start_paused = true)]
async fn serve_counts_bytes_per_datagram_and_device_and_stops_on_shutdown() {
    let r = rig(Mitigation::Drop);
    let timeline = r.timeline.clone();
    let net = MemNet::new(Duration::from_millis(10));
    let cloud_addr = SocketAddr::from(([127, 0, 0, 1], 5684));
    let sock: Arc<dyn Datagram> = Arc::new(net.bind(cloud_addr).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(sock, r.server, async {
        let _ = rx.await;
    }));
    let device = net.bind(peer(1)).unwrap();
    let hello = Frame::ClientHello(ClientHello {
        device_id: A.into(),
        client_nonce: [1; 16],
        cookie: None,
        padding: 120,
    })
    .encode();
    device.send_to(&hello, cloud_addr).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = device.recv_from(&mut buf).await.unwrap();
    assert_eq!(n, 20);
    device.send_to(b"junk", cloud_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(()).unwrap();
    task.await.unwrap();
    let evs = timeline.snapshot();
    let io: Vec<(&str, u64, Option<&str>)> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CloudRx { bytes, .. } => Some(("rx", *bytes, e.device.as_deref())),
            EventKind::CloudTx { bytes, .. } => Some(("tx", *bytes, e.device.as_deref())),
            _ => None,
        })
        .collect();
    // 153 bytes for "sleepy-01"; this device id is 4 characters shorter.
    assert_eq!(io, [("rx", 149, Some(A)), ("tx", 20, Some(A))]);
    // Junk from no known device is counted in the aggregated refusal, bytes included.
    let refused: Vec<(u64, u64)> = evs
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CloudInvalid { count, bytes, .. } => Some((*count, *bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [(1, 4)]);
}

/// The hello/cookie/server-hello half of a handshake; returns what the
/// device needs to finish it.
async fn half_handshake(r: &mut Rig, device: &str, nonce: [u8; 16], from: SocketAddr) -> rig_proto::ServerHello {
    let hello = |cookie| {
        Frame::ClientHello(ClientHello {
            device_id: device.into(),
            client_nonce: nonce,
            cookie,
            padding: 120,
        })
        .encode()
    };
    let o = r.server.handle(&hello(None), from).await;
    let Frame::HelloVerify(hv) = only_reply(&o) else {
        panic!("expected hello verify")
    };
    let o = r.server.handle(&hello(Some(hv.cookie)), from).await;
    let Frame::ServerHello(sh) = only_reply(&o).clone() else {
        panic!("expected server hello: {:?}", o.events)
    };
    sh
}

/// Security finding 3: 4,200 cookied hellos evicted a legitimate pending
/// handshake. A full table now refuses new hellos instead, and one source
/// address holds only a few pending handshakes.
#[tokio::test(start_paused = true)]
async fn a_hello_flood_cannot_evict_a_legitimate_pending_handshake() {
    let mut r = rig(Mitigation::Drop);
    let legit = SocketAddr::from(([10, 0, 0, 1], 40000));
    let nonce = [9u8; 16];
    let sh = half_handshake(&mut r, A, nonce, legit).await;
    let mut refused = 0;
    for i in 0..4200u32 {
        let from = SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 40000 + (i % 7) as u16));
        let mut n = [0u8; 16];
        n[..4].copy_from_slice(&i.to_be_bytes());
        let hello = |cookie| {
            Frame::ClientHello(ClientHello {
                device_id: A.into(),
                client_nonce: n,
                cookie,
                padding: 0,
            })
            .encode()
        };
        let o = r.server.handle(&hello(None), from).await;
        let Frame::HelloVerify(hv) = only_reply(&o) else {
            panic!()
        };
        let o = r.server.handle(&hello(Some(hv.cookie)), from).await;
        if o.replies.is_empty() {
            refused += 1;
        }
    }
    assert!(r.server.pending_len() <= 4096, "bounded: {}", r.server.pending_len());
    assert!(
        refused >= 4200 - 4096,
        "the flood beyond the bound was refused: {refused}"
    );
    // The device that was first still finishes its handshake.
    let keys = SessionKeys::derive(&Psk::derive_for(A), A, &nonce, &sh.server_nonce, sh.session_id);
    let t = Transcript {
        client_nonce: nonce,
        server_nonce: sh.server_nonce,
        session_id: sh.session_id,
    };
    let cert = vec![1u8; 100];
    let finished = Frame::ClientFinished(ClientFinished {
        session_id: sh.session_id,
        mac: t.client_finished_mac(&keys, &cert),
        cert,
    })
    .encode();
    let o = r.server.handle(&finished, legit).await;
    assert!(matches!(only_reply(&o), Frame::ServerFinished(_)), "{:?}", o.events);

    // One address may not hold more than a few pending handshakes.
    let mut r = rig(Mitigation::Drop);
    let one = SocketAddr::from(([10, 2, 0, 1], 40000));
    for i in 0..16u8 {
        half_handshake(&mut r, A, [i; 16], one).await;
    }
    let hello = |cookie| {
        Frame::ClientHello(ClientHello {
            device_id: A.into(),
            client_nonce: [99; 16],
            cookie,
            padding: 0,
        })
        .encode()
    };
    let o = r.server.handle(&hello(None), one).await;
    let Frame::HelloVerify(hv) = only_reply(&o) else {
        panic!()
    };
    let o = r.server.handle(&hello(Some(hv.cookie)), one).await;
    assert!(o.replies.is_empty());
    assert!(matches!(&o.events[..], [EventKind::CloudInvalid { reason, .. }] if reason.contains("from this address")));
}

/// Security finding 3: with a fixed seed every `rig cloud serve` had the
/// same cookie secret, so cookies (and the 63x amplification they unlock)
/// could be computed offline. OS secrets differ per cloud; the seeded one
/// stays reproducible for the virtual clock.
#[tokio::test(start_paused = true)]
async fn clouds_on_os_secrets_give_different_cookies_seeded_ones_the_same() {
    use super::server::Secrets;
    let cookie = |secrets: Secrets| async move {
        let timeline = Timeline::in_memory();
        let keys = BTreeMap::from([(A.to_owned(), Psk::derive_for(A))]);
        let mut server = Server::new(
            CloudConfig::with_secrets(keys, secrets),
            Arc::new(MemoryCache::new(1)),
            DurableKeys::new(),
            CloudHandle::new(Mitigation::Drop, timeline.clone()),
            timeline,
        );
        let hello = Frame::ClientHello(ClientHello {
            device_id: A.into(),
            client_nonce: [3; 16],
            cookie: None,
            padding: 0,
        })
        .encode();
        let o = server.handle(&hello, peer(5)).await;
        match only_reply(&o) {
            Frame::HelloVerify(hv) => hv.cookie,
            other => panic!("{other:?}"),
        }
    };
    assert_ne!(cookie(Secrets::Os).await, cookie(Secrets::Os).await);
    assert_eq!(cookie(Secrets::Seeded(1)).await, cookie(Secrets::Seeded(1)).await);
    // The cookie the old fixed seed gave is no use against an OS-secret cloud.
    let offline = cookie(Secrets::Seeded(1)).await;
    let timeline = Timeline::in_memory();
    let keys = BTreeMap::from([(A.to_owned(), Psk::derive_for(A))]);
    let mut server = Server::new(
        CloudConfig::with_secrets(keys, Secrets::Os),
        Arc::new(MemoryCache::new(1)),
        DurableKeys::new(),
        CloudHandle::new(Mitigation::Drop, timeline.clone()),
        timeline,
    );
    let spoofed = Frame::ClientHello(ClientHello {
        device_id: A.into(),
        client_nonce: [3; 16],
        cookie: Some(offline),
        padding: 0,
    })
    .encode();
    let o = server.handle(&spoofed, peer(5)).await;
    let answer = only_reply(&o).encode().len();
    assert_eq!(answer, 20, "a hello verify, not a 3 KB server hello");
    assert!(answer < spoofed.len(), "no amplification");
}

#[tokio::test(start_paused = true)]
async fn the_cookie_secret_rotates_and_the_previous_one_stays_valid_for_a_period() {
    let mut r = rig(Mitigation::Drop);
    let hello = |cookie| {
        Frame::ClientHello(ClientHello {
            device_id: A.into(),
            client_nonce: [4; 16],
            cookie,
            padding: 0,
        })
        .encode()
    };
    let o = r.server.handle(&hello(None), peer(1)).await;
    let Frame::HelloVerify(old) = only_reply(&o).clone() else {
        panic!()
    };
    tokio::time::advance(Duration::from_secs(601)).await;
    let o = r.server.handle(&hello(None), peer(1)).await;
    let Frame::HelloVerify(new) = only_reply(&o).clone() else {
        panic!()
    };
    assert_ne!(old.cookie, new.cookie, "a new secret after the rotation period");
    let o = r.server.handle(&hello(Some(old.cookie)), peer(1)).await;
    assert!(
        matches!(only_reply(&o), Frame::ServerHello(_)),
        "the previous secret still works"
    );
    tokio::time::advance(Duration::from_secs(601)).await;
    let o = r.server.handle(&hello(Some(old.cookie)), peer(1)).await;
    assert!(
        matches!(only_reply(&o), Frame::HelloVerify(_)),
        "but not two rotations later"
    );
}

/// Security finding 8: after `cache restore SNAPSHOT` a captured publish was
/// accepted a second time (the replay counter went back with the snapshot).
#[tokio::test(start_paused = true)]
async fn a_replay_after_a_snapshot_restore_is_rejected_or_reported_when_unprotected() {
    use crate::cache::{Cache, RestoreFrom};
    for protected in [true, false] {
        let timeline = Timeline::in_memory();
        let cache = MemoryCache::new(1);
        let keys = BTreeMap::from([(A.to_owned(), Psk::derive_for(A))]);
        let mut cfg = CloudConfig::new(keys, 7);
        cfg.replay_floor = protected;
        let handle = CloudHandle::new(Mitigation::Drop, timeline.clone());
        let mut r = Rig {
            server: Server::new(
                cfg,
                Arc::new(cache.clone()),
                DurableKeys::new(),
                handle.clone(),
                timeline.clone(),
            ),
            cache: cache.clone(),
            durable: DurableKeys::new(),
            handle,
            timeline: timeline.clone(),
        };
        let admin = Cache::new(Arc::new(cache.clone()), timeline.clone());
        let (mut dev, _) = handshake(&mut r, A, peer(1)).await;
        let first = dev.record(0, InnerKind::Publish, 1);
        assert_eq!(names(&r.server.handle(&first, peer(1)).await), ["cloud.publish"]);
        admin.snapshot("before").await.unwrap();
        let captured = dev.record(0, InnerKind::Publish, 2);
        assert_eq!(names(&r.server.handle(&captured, peer(1)).await), ["cloud.publish"]);
        admin.restore(&RestoreFrom::Snapshot("before".into())).await.unwrap();
        let o = r.server.handle(&captured, peer(1)).await;
        if protected {
            assert!(o.replies.is_empty(), "the replay is not acknowledged");
            assert!(
                matches!(&o.events[..], [EventKind::CloudInvalid { reason, .. }] if reason.contains("replayed")),
                "{:?}",
                o.events
            );
        } else {
            assert!(
                names(&o).contains(&"cloud.replay_accepted"),
                "the hole is shown: {:?}",
                o.events
            );
        }
        // The device's next real record is accepted either way.
        let next = dev.record(0, InnerKind::Publish, 3);
        assert_eq!(names(&r.server.handle(&next, peer(1)).await), ["cloud.publish"]);
    }
}

/// A device on its own UDP socket, for the sharded cloud on real loopback.
struct UdpDev {
    sock: tokio::net::UdpSocket,
    session: Option<Session>,
}

impl UdpDev {
    async fn ask(&self, bytes: &[u8], cloud: SocketAddr) -> Option<Frame> {
        self.sock.send_to(bytes, cloud).await.unwrap();
        let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
        let (n, _) = tokio::time::timeout(Duration::from_millis(500), self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        Frame::decode(&buf[..n]).ok()
    }

    /// With `rebind`, the finished flight leaves from a new source port.
    async fn handshake_rebinding(&mut self, id: &str, cloud: SocketAddr, rebind: bool) {
        let mut hs = Handshake::new(id, Psk::derive_for(id), [3; 16], 120);
        loop {
            let flight = hs.flight();
            if rebind && matches!(flight, Frame::ClientFinished(_)) {
                self.sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            }
            let answer = self.ask(&flight.encode(), cloud).await.expect("an answer");
            match hs.on_frame(answer) {
                Progress::Next => {}
                Progress::Done(s) => return self.session = Some(s),
                other => panic!("{id}: handshake failed: {other:?}"),
            }
        }
    }

    /// A resume ping; returns the datagram sent and whether a pong came.
    async fn resume(&mut self, cloud: SocketAddr) -> (Vec<u8>, bool) {
        let s = self.session.as_mut().unwrap();
        let ping = Inner {
            kind: InnerKind::Ping,
            msg_id: 1,
            payload: vec![],
        };
        let sent = s.seal(FLAG_RESUME, &ping).encode();
        let pong = match self.ask(&sent, cloud).await {
            Some(Frame::Record(r)) => self.session.as_mut().unwrap().open(&r).is_some(),
            _ => false,
        };
        (sent, pong)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_cloud_keeps_every_session_on_its_worker_and_still_refuses_replays() {
    // One reader handing datagrams out (a socket without siblings).
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sessions_stay_on_their_workers(sock, false, 4, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_sibling_sockets_forward_a_session_that_arrives_at_the_wrong_one() {
    // Each worker on a socket of its own; the finished flight and every
    // resume from a new source port (a NAT rebinding), so the kernel lands
    // many of them on a worker that does not hold the pending handshake or
    // own the session: answered only if forwarded to the one that does.
    let sock = super::transport::cloud_udp("127.0.0.1:0").unwrap();
    sessions_stay_on_their_workers(sock, true, 4, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_read_all_sockets_of_a_group_as_large_as_a_reconnect_burst_needs() {
    // What a burst meets before any worker reads is the sum of the group's
    // receive buffers: a few workers still read many sockets, every one of
    // them (the kernel lands the devices' ports on all of them).
    let sock = super::transport::cloud_udp("127.0.0.1:0").unwrap();
    sessions_stay_on_their_workers(sock, true, 2, 16).await;
}

async fn sessions_stay_on_their_workers(sock: tokio::net::UdpSocket, rebind: bool, workers: usize, sockets: usize) {
    let ids: Vec<String> = (0..24).map(|i| format!("shard-dev-{i:02}")).collect();
    let keys = ids.iter().map(|id| (id.clone(), Psk::derive_for(id))).collect();
    let timeline = Timeline::in_memory();
    let cache = MemoryCache::new(1);
    let mut cfg = CloudConfig::with_secrets(keys, super::Secrets::Os);
    cfg.workers = workers;
    // All devices share 127.0.0.1.
    cfg.max_pending_per_ip = 64;
    let cloud = sock.local_addr().unwrap();
    let running = super::start(
        Arc::new(sock),
        cfg,
        Arc::new(cache.clone()),
        DurableKeys::off(),
        Mitigation::Drop,
        &timeline,
    );
    // Formed before the cloud runs: a group still growing moves sources
    // between sockets.
    assert_eq!(
        crate::benchmark::storm::sockets_on(cloud.port()),
        Some(sockets),
        "sockets of the cloud's group"
    );
    // All devices at once: their handshakes and resumes interleave across
    // the workers.
    let tasks: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            tokio::spawn(async move {
                let mut d = UdpDev {
                    sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
                    session: None,
                };
                d.handshake_rebinding(&id, cloud, rebind).await;
                let mut first = None;
                for _ in 0..5 {
                    if rebind {
                        d.sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    }
                    let (sent, pong) = d.resume(cloud).await;
                    assert!(pong, "{id}: a resume was not answered");
                    first.get_or_insert(sent);
                }
                // The first resume again, byte for byte: a replay.
                let replayed = d.ask(&first.unwrap(), cloud).await;
                (d.session.unwrap().id, replayed.is_none())
            })
        })
        .collect();
    let mut shards = std::collections::BTreeSet::new();
    for t in tasks {
        let (session, refused) = t.await.unwrap();
        assert!(refused, "a replayed resume was answered");
        shards.insert(session % workers as u64);
    }
    running.stop().await;
    assert!(shards.len() > 1, "sessions spread over the workers: {shards:?}");
    assert_eq!(cache.len(), ids.len());
    for id in &ids {
        let rec = cache
            .get(
                timeline
                    .snapshot()
                    .iter()
                    .find_map(|e| match (&e.kind, e.device.as_deref()) {
                        (EventKind::CloudHandshake { session }, Some(d)) if d == id => {
                            u64::from_str_radix(session, 16).ok()
                        }
                        _ => None,
                    })
                    .unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.rx_counter, 5, "{id}: five resumes stored, the replay not");
    }
    let replays = timeline
        .snapshot()
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::CloudInvalid { reason, .. } if reason.starts_with("replayed record")))
        .count();
    assert!(replays >= 1, "the refused replays are journaled");
}

#[tokio::test]
async fn a_second_cloud_on_the_same_address_is_refused_not_joined_to_the_first_ones_group() {
    // The workers' sockets share a port through SO_REUSEPORT; a second
    // cloud (or anything else) binding that port must fail as it did before,
    // not quietly take half of the first cloud's devices.
    let first = super::transport::cloud_udp("127.0.0.1:0").unwrap();
    let at = first.local_addr().unwrap().to_string();
    let second = super::transport::cloud_udp(&at);
    assert_eq!(second.unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
    // Its own workers still join: the group is the first cloud's.
    assert!(
        super::transport::Datagram::sibling(&first)
            .expect("a udp socket has siblings")
            .is_ok()
    );

    let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = plain.local_addr().unwrap().to_string();
    assert_eq!(
        super::transport::cloud_udp(&taken).unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse
    );
    drop(first);
    // Once the first cloud is gone the address is free again.
    assert!(super::transport::cloud_udp(&at).is_ok());
}
