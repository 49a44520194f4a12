//! Bad input gets a clear error naming file, line and column, and `rig
//! check`/`rig run` exit 2 without running anything.

mod common;

use std::path::Path;

use common::*;
use rig::bench::Bench;
use rig::diag::Diagnostic;
use rig::fixture::Fixtures;

const GOOD: &str = r#"name: t
fixture: sleepy-1.2
devices: all
vars: { outage: 30s }
setup:
  - power: on
  - flash: "${fixture}"
steps:
  - mark: crash
  - cache: kill
  - wait: "${outage}"
  - cache: { restore: empty }
  - expect_recovery: { after: crash, within_cycles: 4, max_bytes: 16KiB }
"#;

fn errors_for(text: &str, sets: &[(&str, &str)]) -> Vec<Diagnostic> {
    let fixtures = Fixtures::load(&repo().join("firmware-fixtures")).expect("repo fixtures load");
    let sets: Vec<(String, String)> = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    match rig::plan::parse(Path::new("plan.yaml"), text, &Bench::builtin_sim(), &fixtures, &sets) {
        Ok(_) => Vec::new(),
        Err(e) => e,
    }
}

/// Replaces `from` by `to` in the good plan and returns the single error.
fn error_after(from: &str, to: &str) -> Diagnostic {
    assert!(GOOD.contains(from), "{from}");
    let errs = errors_for(&GOOD.replacen(from, to, 1), &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().expect("one")
}

fn at(d: &Diagnostic) -> (usize, usize) {
    (d.line, d.col)
}

#[test]
fn the_good_plan_is_good() {
    assert!(errors_for(GOOD, &[]).is_empty());
}

#[test]
fn yaml_syntax_error() {
    let d = error_after("  - mark: crash\n", "  - mark: [crash\n");
    assert!(d.line >= 9, "{d}");
    assert!(d.to_string().starts_with("plan.yaml:"), "{d}");
}

#[test]
fn unknown_key() {
    let d = error_after("devices: all\n", "devices: all\ncolour: red\n");
    assert_eq!(at(&d), (4, 1), "{d}");
    assert!(d.message.contains("colour"), "{d}");
}

#[test]
fn unknown_step() {
    let d = error_after("  - mark: crash", "  - smash: crash");
    assert_eq!(d.line, 9, "{d}");
    assert!(
        d.message.contains("smash") && d.message.contains("expect_recovery"),
        "{d}"
    );
}

#[test]
fn unknown_cache_operation() {
    let d = error_after("  - cache: kill", "  - cache: kil");
    assert_eq!(d.line, 10, "{d}");
    assert!(d.message.contains("kil"), "{d}");
}

#[test]
fn wrong_type() {
    let d = error_after("within_cycles: 4", "within_cycles: many");
    assert_eq!(at(&d), (13, 53), "{d}");
    assert_eq!(d.message, "expected a whole number, found `many`");
}

#[test]
fn bad_duration() {
    let d = error_after("vars: { outage: 30s }", "vars: { outage: 30 }");
    // Reported where the value is used, in terms of what was written there.
    assert_eq!(at(&d), (11, 11), "{d}");
    assert!(d.message.contains("bare number `30`"), "{d}");
    assert_eq!(d.source_line.as_deref(), Some(r#"  - wait: "${outage}""#));
}

#[test]
fn bad_byte_size() {
    let d = error_after("max_bytes: 16KiB", "max_bytes: lots");
    assert_eq!(d.line, 13, "{d}");
    assert!(d.message.contains("byte size"), "{d}");
}

#[test]
fn unknown_fixture() {
    let errs = errors_for(&GOOD.replace("fixture: sleepy-1.2", "fixture: sleepy-9.9"), &[]);
    // Where it is set and where the flash step uses it.
    assert_eq!(errs.iter().map(at).collect::<Vec<_>>(), [(2, 10), (7, 12)], "{errs:#?}");
    let d = &errs[0];
    assert!(d.message.contains("unknown fixture `sleepy-9.9`"), "{d}");
    assert!(d.message.contains("sleepy-1.1, sleepy-1.2, sleepy-ideal"), "{d}");
}

#[test]
fn after_names_a_mark_no_earlier_step_sets() {
    let d = error_after("after: crash", "after: krash");
    assert_eq!(at(&d), (13, 31), "{d}");
    assert!(
        d.message
            .contains("`after: krash` names a mark that no earlier step sets"),
        "{d}"
    );
    assert!(d.message.contains("marks set before this step: crash"), "{d}");
}

#[test]
fn a_mark_set_only_later_does_not_count() {
    let text = GOOD.replace("  - mark: crash\n", "").replace("teardown", "x") + "teardown:\n  - mark: crash\n";
    let errs = errors_for(&text, &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].message.contains("no mark is set before this step"));
}

#[test]
fn unknown_device_and_unknown_tag() {
    let d = error_after("devices: all", "devices: [sleepy-01, sleepy-99]");
    assert_eq!(d.line, 3, "{d}");
    assert!(d.message.contains("unknown device `sleepy-99` on bench `sim`"), "{d}");
    let d = error_after("devices: all", "devices: { tags: [wifi] }");
    assert_eq!(d.line, 3, "{d}");
    assert!(
        d.message
            .contains("no device on bench `sim` has all of the tags [wifi]"),
        "{d}"
    );
    assert!(d.message.contains("cellular, sleepy"), "{d}");
}

#[test]
fn unknown_event_kind() {
    let d = error_after(
        "  - mark: crash",
        "  - expect: { event: cloud.resume, min: 1 }\n  - mark: crash",
    );
    assert_eq!(at(&d), (9, 22), "{d}");
    assert!(d.message.contains("unknown event kind `cloud.resume`"), "{d}");
    assert!(d.message.contains("cloud.resumed"), "{d}");
}

#[test]
fn undefined_variable() {
    let d = error_after(r#"wait: "${outage}""#, r#"wait: "${outag}""#);
    assert_eq!(at(&d), (11, 12), "{d}");
    assert!(d.message.contains("undefined variable `outag`"), "{d}");
}

#[test]
fn set_of_an_unknown_variable() {
    let errs = errors_for(GOOD, &[("outgae", "1m")]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("no variable `outgae`"), "{}", errs[0]);
}

#[test]
fn a_bad_value_from_set_points_at_its_use() {
    let errs = errors_for(GOOD, &[("fixture", "sleepy-0.0")]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(at(&errs[0]), (7, 12), "the flash step that uses it: {}", errs[0]);
    assert!(errs[0].message.contains("unknown fixture `sleepy-0.0`"));
}

#[test]
fn matrix_errors_name_their_cell_and_every_error_is_reported() {
    let text = GOOD.replace(
        "vars: { outage: 30s }",
        "vars: { outage: 30s }\nmatrix: { fixture: [sleepy-1.2, sleepy-7] }",
    ) + "teardown:\n  - expect: { event: cloud.connected, after: nope }\n";
    let errs = errors_for(&text, &[]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.message.contains("unknown fixture `sleepy-7`")
            && e.message.contains("(in matrix cell fixture=sleepy-7)"))
    );
    assert!(
        errs.iter()
            .any(|e| e.message.contains("`after: nope`") && !e.message.contains("matrix cell"))
    );
}

#[test]
fn expect_failure_must_name_matrix_values() {
    let text = GOOD.replace(
        "vars: { outage: 30s }",
        "vars: { outage: 30s }\nmatrix: { fixture: [sleepy-1.2] }\nexpect_failure: [{ fixture: sleepy-1.1 }]",
    );
    let errs = errors_for(&text, &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].message.contains("not a value of matrix axis `fixture`"),
        "{}",
        errs[0]
    );
}

#[test]
fn rig_check_exits_2_and_prints_file_line_column_and_the_line() {
    let (_d, path) = temp_file("broken.yaml", &GOOD.replace("after: crash", "after: krash"));
    let out = rig(&[
        "check",
        path.to_str().unwrap(),
        "--fixtures",
        repo().join("firmware-fixtures").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml:13:31: error: `after: krash`"), "{err}");
    assert!(err.contains("13 |   - expect_recovery: { after: krash"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
}

#[test]
fn rig_check_accepts_every_shipped_plan() {
    for p in [
        "session-cache-crash.yaml",
        "recovery-smoke.yaml",
        "soak-day.yaml",
        "soft-reset-vs-power-cycle.yaml",
    ] {
        let out = rig(&["check", plan(p).to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn rig_run_on_a_malformed_plan_exits_2_and_creates_no_run() {
    let (_d, path) = temp_file("broken.yaml", "name: x\nsteps:\n  - wait: 30\n");
    let r = run(&[
        path.to_str().unwrap(),
        "--fixtures",
        repo().join("firmware-fixtures").to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("broken.yaml:3:11: error: expected a duration with a unit"),
        "{}",
        r.stderr()
    );
    assert_eq!(
        std::fs::read_dir(r.dir.path()).unwrap().count(),
        0,
        "nothing run, nothing written"
    );
}

#[test]
fn a_bad_bench_file_exits_2_with_its_location() {
    let (_d, bench) = temp_file("bench.yaml", "name: b\ndevices:\n  - id: x\n    board: boron\n");
    let out = rig(&[
        "check",
        plan("recovery-smoke.yaml").to_str().unwrap(),
        "--bench",
        bench.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bench.yaml:3:9: error: device `x` needs `key:`"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let out = rig(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rig(&["run", "x.yaml", "--set", "novalue"]);
    assert_eq!(out.status.code(), Some(2));
}
