//! `rig doctor`: what this machine can see of a bench — serial ports, GPIO,
//! the programs the rig runs — and, given a bench file, which configured
//! device resources are missing.

use std::fmt::Write as _;
use std::path::Path;

use crate::bench::Bench;

/// One line of the inventory.
#[derive(Debug, Clone)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

/// What the machine offers, whatever the bench.
pub fn machine() -> Vec<Finding> {
    let mut out = Vec::new();
    match serialport::available_ports() {
        Ok(ports) if ports.is_empty() => out.push(Finding {
            ok: true,
            what: "serial ports".into(),
            detail: "none found".into(),
        }),
        Ok(ports) => {
            for p in ports {
                let detail = match p.port_type {
                    serialport::SerialPortType::UsbPort(u) => format!(
                        "USB {:04x}:{:04x}{}{}",
                        u.vid,
                        u.pid,
                        u.serial_number.map(|s| format!(" serial {s}")).unwrap_or_default(),
                        u.product.map(|s| format!(" ({s})")).unwrap_or_default()
                    ),
                    other => format!("{other:?}"),
                };
                out.push(Finding {
                    ok: true,
                    what: format!("serial port {}", p.port_name),
                    detail,
                });
            }
        }
        Err(e) => out.push(Finding {
            ok: false,
            what: "serial ports".into(),
            detail: format!("cannot list: {e}"),
        }),
    }
    if let Ok(entries) = std::fs::read_dir("/dev/serial/by-id") {
        for e in entries.flatten() {
            out.push(Finding {
                ok: true,
                what: format!("stable path {}", e.path().display()),
                detail: std::fs::read_link(e.path())
                    .map(|t| format!("-> {}", t.display()))
                    .unwrap_or_default(),
            });
        }
    }
    let gpio = crate::drivers::power::gpio::availability();
    out.push(Finding {
        ok: gpio.ok(),
        what: "GPIO".into(),
        detail: gpio.detail(),
    });
    let probes = crate::drivers::flash::probe_rs::list();
    if probes.is_empty() {
        out.push(Finding {
            ok: true,
            what: "debug probes".into(),
            detail: "none attached".into(),
        });
    }
    for p in probes {
        out.push(Finding {
            ok: true,
            what: "debug probe".into(),
            detail: p,
        });
    }
    for (program, why) in [
        ("redis-server", "the redis session cache (Debian package redis-server)"),
        ("chromium", "the sign-off browser test (Debian package chromium)"),
    ] {
        out.push(match crate::drivers::on_path(program) {
            Some(p) => Finding {
                ok: true,
                what: program.into(),
                detail: p,
            },
            None => Finding {
                ok: false,
                what: program.into(),
                detail: format!("not on PATH; needed for {why}"),
            },
        });
    }
    out
}

/// Which of a bench's configured resources are missing here: each
/// device's board kind says what it needs, each backend whether it is here.
pub fn bench(b: &Bench) -> Vec<Finding> {
    b.devices
        .iter()
        .flat_map(|d| d.kind.checks(d))
        .map(|c| Finding {
            ok: c.availability.ok(),
            what: c.what,
            detail: c.availability.detail(),
        })
        .collect()
}

pub fn render(title: &str, findings: &[Finding]) -> String {
    let mut s = format!("{title}\n");
    for f in findings {
        let _ = writeln!(
            s,
            "  {} {:<48} {}",
            if f.ok { "ok  " } else { "MISS" },
            f.what,
            f.detail
        );
    }
    s
}

/// `rig doctor [--bench FILE]`: exit 3 when a bench resource is missing.
pub fn command(bench_file: Option<&Path>) -> Result<crate::report::Overall, crate::cli::CliError> {
    print!("{}", render("this machine:", &machine()));
    let Some(path) = bench_file else {
        return Ok(crate::report::Overall::Passed);
    };
    let b = Bench::load(path)?;
    let findings = bench(&b);
    print!(
        "{}",
        render(&format!("bench `{}` ({}):", b.name, path.display()), &findings)
    );
    let missing = findings.iter().filter(|f| !f.ok).count();
    if missing == 0 {
        println!("everything bench `{}` needs is here", b.name);
        Ok(crate::report::Overall::Passed)
    } else {
        Err(crate::cli::CliError::Fault(format!(
            "{missing} resource{} of bench `{}` missing",
            if missing == 1 { "" } else { "s" },
            b.name
        )))
    }
}
