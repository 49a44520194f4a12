//! `junit.xml`: one testsuite per plan × matrix cell, one testcase per
//! device × check, written with `quick-xml` (which escapes every value).
//!
//! A suite's `time` is the cell's wall-clock seconds and a testcase's the
//! wall-clock seconds of its step; plan time (virtual on a virtual-clock
//! bench), seed, bench, clock, verdict, variables and fixtures are suite
//! properties. In a negative-control cell a failing check is a passing
//! testcase whose output says "fails as expected" and carries the failure
//! text, and an extra `negative control` testcase fails if nothing in the
//! cell failed.

use std::io::Write;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event as Xml};

use super::evidence::Evidence;
use super::summary::{CellSummary, CellVerdict, Summary};
use crate::units::fmt_clock;

/// Console lines shown before a failing check.
const EXCERPT_LINES: usize = super::evidence::TAIL;

pub fn render(summary: &Summary, evidence: &Evidence) -> Vec<u8> {
    render_runs(&[(summary, evidence)], false)
}

/// What a testcase says beyond passing.
enum Outcome {
    Pass,
    Failure { kind: String, message: String },
    Error { kind: String, message: String },
}

struct Case {
    name: String,
    secs: f64,
    outcome: Outcome,
    out: Option<String>,
}

struct Suite {
    name: String,
    timestamp: String,
    secs: f64,
    properties: Vec<(String, String)>,
    out: String,
    cases: Vec<Case>,
}

impl Suite {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }
}

/// One JUnit file for several runs (`rig report merge`); with `prefix`, each
/// testsuite is named after its run so cells of different benches stay apart.
pub fn render_runs(runs: &[(&Summary, &Evidence)], prefix: bool) -> Vec<u8> {
    let mut suites = Vec::new();
    for (summary, evidence) in runs {
        for cell in &summary.cells {
            let mut ts = suite(summary, cell, evidence);
            if prefix {
                ts.name = format!("{}/{}", summary.run_id, ts.name);
            }
            suites.push(ts);
        }
    }
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_all(&mut w, &suites).expect("writing XML to memory cannot fail");
    let mut out = w.into_inner();
    out.push(b'\n');
    out
}

fn secs(x: f64) -> String {
    format!("{x:.3}")
}

fn write_all<W: Write>(w: &mut Writer<W>, suites: &[Suite]) -> std::io::Result<()> {
    w.write_event(Xml::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
    let tests: usize = suites.iter().map(|s| s.cases.len()).sum();
    let failures: usize = suites
        .iter()
        .map(|s| s.count(|o| matches!(o, Outcome::Failure { .. })))
        .sum();
    let errors: usize = suites
        .iter()
        .map(|s| s.count(|o| matches!(o, Outcome::Error { .. })))
        .sum();
    let total: f64 = suites.iter().map(|s| s.secs).sum();
    let root = BytesStart::new("testsuites").with_attributes([
        ("name", "rig"),
        ("tests", tests.to_string().as_str()),
        ("failures", failures.to_string().as_str()),
        ("errors", errors.to_string().as_str()),
        ("time", secs(total).as_str()),
    ]);
    w.write_event(Xml::Start(root))?;
    for (id, s) in suites.iter().enumerate() {
        let start = BytesStart::new("testsuite").with_attributes([
            ("id", id.to_string().as_str()),
            ("name", s.name.as_str()),
            ("tests", s.cases.len().to_string().as_str()),
            (
                "failures",
                s.count(|o| matches!(o, Outcome::Failure { .. })).to_string().as_str(),
            ),
            (
                "errors",
                s.count(|o| matches!(o, Outcome::Error { .. })).to_string().as_str(),
            ),
            ("skipped", "0"),
            ("timestamp", s.timestamp.as_str()),
            ("time", secs(s.secs).as_str()),
        ]);
        w.write_event(Xml::Start(start))?;
        w.write_event(Xml::Start(BytesStart::new("properties")))?;
        for (k, v) in &s.properties {
            w.write_event(Xml::Empty(
                BytesStart::new("property").with_attributes([("name", k.as_str()), ("value", v.as_str())]),
            ))?;
        }
        w.write_event(Xml::End(BytesEnd::new("properties")))?;
        for c in &s.cases {
            let start = BytesStart::new("testcase").with_attributes([
                ("name", c.name.as_str()),
                ("classname", s.name.as_str()),
                ("time", secs(c.secs).as_str()),
            ]);
            let body = !matches!(c.outcome, Outcome::Pass) || c.out.is_some();
            if !body {
                w.write_event(Xml::Empty(start))?;
                continue;
            }
            w.write_event(Xml::Start(start))?;
            match &c.outcome {
                Outcome::Pass => {}
                Outcome::Failure { kind, message } | Outcome::Error { kind, message } => {
                    let tag = if matches!(c.outcome, Outcome::Failure { .. }) {
                        "failure"
                    } else {
                        "error"
                    };
                    w.write_event(Xml::Start(
                        BytesStart::new(tag).with_attributes([("type", kind.as_str()), ("message", message.as_str())]),
                    ))?;
                    w.write_event(Xml::Text(BytesText::new(message)))?;
                    w.write_event(Xml::End(BytesEnd::new(tag)))?;
                }
            }
            if let Some(out) = &c.out {
                text_element(w, "system-out", out)?;
            }
            w.write_event(Xml::End(BytesEnd::new("testcase")))?;
        }
        text_element(w, "system-out", &s.out)?;
        w.write_event(Xml::End(BytesEnd::new("testsuite")))?;
    }
    w.write_event(Xml::End(BytesEnd::new("testsuites")))?;
    Ok(())
}

fn text_element<W: Write>(w: &mut Writer<W>, tag: &str, text: &str) -> std::io::Result<()> {
    w.write_event(Xml::Start(BytesStart::new(tag)))?;
    w.write_event(Xml::Text(BytesText::new(text)))?;
    w.write_event(Xml::End(BytesEnd::new(tag)))?;
    Ok(())
}

fn suite(summary: &Summary, cell: &CellSummary, evidence: &Evidence) -> Suite {
    let name = format!("{}[{}]", cell.plan, cell.name);
    let mut properties = vec![
        ("seed".to_string(), summary.seed.to_string()),
        ("bench".into(), summary.bench.clone()),
        ("clock".into(), cell.clock.clone()),
        ("plan_time_s".into(), secs(cell.plan_ms as f64 / 1000.0)),
        ("verdict".into(), cell.verdict.label().to_string()),
        ("negative_control".into(), cell.expect_failure.to_string()),
    ];
    for (k, v) in &cell.vars {
        properties.push((format!("var.{k}"), v.clone()));
    }
    for f in &cell.fixtures {
        properties.push((
            format!("fixture.{}", f.name),
            format!("{} sha256:{}", f.version, f.sha256),
        ));
    }
    let mut out = format!(
        "seed: {}\nbench: {}\nclock: {}\nverdict: {}\nvars: {}\n",
        summary.seed,
        summary.bench,
        cell.clock,
        cell.verdict.label(),
        cell.vars
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for f in &cell.fixtures {
        out += &format!("fixture: {} {} sha256:{}\n", f.name, f.version, f.sha256);
    }
    let mut cases = Vec::new();
    for c in &cell.checks {
        let device = c.device.as_deref().unwrap_or("bench");
        let case_name = format!("{:02} {} [{device}]", c.step, c.check);
        let case = if c.passed {
            Case {
                name: case_name,
                secs: c.wall_s,
                outcome: Outcome::Pass,
                out: None,
            }
        } else if cell.expect_failure {
            Case {
                name: case_name,
                secs: c.wall_s,
                outcome: Outcome::Pass,
                out: Some(format!("fails as expected: {}\n", c.text)),
            }
        } else {
            Case {
                name: case_name,
                secs: c.wall_s,
                outcome: Outcome::Failure {
                    kind: c.check.split(' ').next().unwrap_or("check").to_owned(),
                    message: c.text.clone(),
                },
                out: Some(excerpt(evidence, cell.index, c.device.as_deref(), c.seq)),
            }
        };
        cases.push(case);
    }
    if cell.expect_failure {
        let name = "negative control".to_string();
        cases.push(match cell.verdict {
            CellVerdict::UnexpectedlyPassed => Case {
                name,
                secs: 0.0,
                outcome: Outcome::Failure {
                    kind: "negative_control".into(),
                    message: "this cell must fail (it runs the known-bad combination) but every check passed: the rig can no longer detect the bug".into(),
                },
                out: None,
            },
            _ => {
                let first = cell.failed_checks().next().map(|c| c.text.clone()).unwrap_or_default();
                Case {
                    name,
                    secs: 0.0,
                    outcome: Outcome::Pass,
                    out: Some(format!("fails as expected: {first}\n")),
                }
            }
        });
    }
    for f in &cell.faults {
        cases.push(Case {
            name: "rig".into(),
            secs: 0.0,
            outcome: Outcome::Error {
                kind: "rig_fault".into(),
                message: f.clone(),
            },
            out: None,
        });
    }
    if matches!(cell.verdict, CellVerdict::Interrupted | CellVerdict::Incomplete) {
        cases.push(Case {
            name: "rig".into(),
            secs: 0.0,
            outcome: Outcome::Error {
                kind: "incomplete".into(),
                message: "the run was interrupted before this cell finished: no verdict".into(),
            },
            out: None,
        });
    }
    Suite {
        name,
        timestamp: summary
            .started
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        secs: cell.wall_ms as f64 / 1000.0,
        properties,
        out,
        cases,
    }
}

/// The last console lines of `device` before event `seq`.
fn excerpt(evidence: &Evidence, cell: u32, device: Option<&str>, seq: u64) -> String {
    let Some(device) = device else { return String::new() };
    let lines: Vec<String> = evidence
        .console_tail(cell, device, seq, EXCERPT_LINES)
        .into_iter()
        .map(|(t, l)| format!("[{}] {l}", fmt_clock(t)))
        .collect();
    format!(
        "console of {device}, last {} lines:\n{}\n",
        lines.len(),
        lines.join("\n")
    )
}
