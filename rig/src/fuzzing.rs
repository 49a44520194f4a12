//! Entry points for fuzzing: one function per input surface a hostile or
//! careless party controls. The fuzz targets in `fuzz/` call these, and the
//! ordinary test suite replays the committed corpora (`fuzz/corpus/<target>/`)
//! through them, so CI exercises every input a fuzzer ever found
//! interesting without running a fuzzer.
//!
//! Each function must never panic, whatever the bytes; where a surface has a
//! round trip (decode → encode), it is checked too.

use std::path::Path;
use std::sync::OnceLock;

use crate::bench::Bench;
use crate::fixture::Fixtures;

/// The fuzz targets, by name (the folder names under `fuzz/corpus/`).
pub const TARGETS: &[&str] = &[
    "plan_parser",
    "bench_parser",
    "fixture_parser",
    "proto_decode",
    "cloud_datagram",
    "console_lines",
    "journal_reader",
];

/// Runs the named target on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "plan_parser" => plan_parser(data),
        "bench_parser" => bench_parser(data),
        "fixture_parser" => fixture_parser(data),
        "proto_decode" => proto_decode(data),
        "cloud_datagram" => cloud_datagram(data),
        "console_lines" => console_lines(data),
        "journal_reader" => journal_reader(data),
        other => panic!("no fuzz target `{other}`"),
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

fn repo_fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-fixtures");
        Fixtures::load(&dir).unwrap_or_default()
    })
}

/// A plan as text, validated against the built-in bench and the fixtures.
pub fn plan_parser(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = crate::plan::parse(Path::new("fuzz.yaml"), t, &Bench::builtin_sim(), repo_fixtures(), &[]);
        let _ = crate::diag::unclosed_flow(t);
    }
}

/// A bench file as text.
pub fn bench_parser(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = Bench::parse(Path::new("fuzz-bench.yaml"), t);
    }
}

/// A fixture.yaml as text (in a scratch folder named like the fixture).
pub fn fixture_parser(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = crate::fixture::parse(Path::new("fuzz-fixture/fixture.yaml"), t);
    }
}

/// One datagram through the wire decoder; what decodes re-encodes to the
/// same bytes.
pub fn proto_decode(data: &[u8]) {
    if let Ok(frame) = rig_proto::Frame::decode(data) {
        assert_eq!(frame.encode(), data, "decode then encode is the identity");
    }
}

/// One datagram through the cloud's handler (memory cache, seeded secrets),
/// after a real handshake so records of a live session are reachable.
pub fn cloud_datagram(data: &[u8]) {
    use std::sync::Mutex;
    struct World {
        rt: tokio::runtime::Runtime,
        server: Mutex<crate::cloud::Server>,
    }
    static W: OnceLock<World> = OnceLock::new();
    let w = W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let server = rt.block_on(async {
            let timeline = crate::timeline::Timeline::in_memory().retain_last(0);
            let keys = [("fuzz-dev".to_string(), rig_proto::Psk::derive_for("fuzz-dev"))]
                .into_iter()
                .collect();
            crate::cloud::Server::new(
                crate::cloud::CloudConfig::new(keys, 1),
                std::sync::Arc::new(crate::cache::memory::MemoryCache::new(1)),
                crate::cloud::durable::DurableKeys::new(),
                crate::cloud::CloudHandle::new(crate::cloud::Mitigation::Reject, timeline.clone()),
                timeline,
            )
        });
        World {
            rt,
            server: Mutex::new(server),
        }
    });
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    let mut server = w.server.lock().unwrap_or_else(|p| p.into_inner());
    let out = w.rt.block_on(server.handle(data, peer));
    for reply in out.replies {
        assert!(reply.encode().len() <= rig_proto::MAX_DATAGRAM);
    }
}

/// Console bytes split into lines and classified by a fixture's patterns.
pub fn console_lines(data: &[u8]) {
    let mut a = crate::drivers::console::LineAssembler::default();
    let now = tokio::time::Instant::now();
    let patterns = repo_fixtures().by_name.values().next().map(|f| f.patterns.clone());
    // Split at an arbitrary point to exercise lines across chunks.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    for chunk in [&data[..cut], &data[cut..]] {
        a.push(chunk, now, |line, _| {
            if let Some(p) = &patterns {
                let _ = crate::drivers::console::classify(p, &line, true);
            }
        });
    }
    let _ = a.take_partial();
}

/// A stored `events.jsonl`.
pub fn journal_reader(data: &[u8]) {
    let _ = crate::timeline::read_jsonl_from(data);
}
