//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same entry points the fuzz targets call, so CI runs every input a fuzzer
//! found interesting without a fuzzer. `scripts/fuzz` runs the fuzzers.

mod common;

#[test]
fn every_fuzz_corpus_replays_without_a_panic() {
    let root = common::repo().join("fuzz/corpus");
    let mut total = 0;
    for target in rig::fuzzing::TARGETS {
        let dir = root.join(target);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| rig::fuzzing::run(target, &data));
            assert!(r.is_ok(), "{target}: {} panics", path.display());
            n += 1;
        }
        assert!(n > 0, "{target} has a seed corpus");
        total += n;
    }
    eprintln!("{total} corpus inputs replayed");
}
