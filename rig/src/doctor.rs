//! `rig doctor`: what this machine can see of a bench — serial ports, GPIO,
//! the programs the rig runs — and, given a bench file, which configured
//! device resources are missing.

use std::fmt::Write as _;
use std::path::Path;

use crate::bench::{Bench, ConsoleKind, FlashCfg, PowerCfg};

/// One line of the inventory.
#[derive(Debug, Clone)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

fn on_path(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn gpio() -> Result<(), String> {
    rppal::gpio::Gpio::new().map(|_| ()).map_err(|e| match e {
        rppal::gpio::Error::UnknownModel => "not a Raspberry Pi (rppal: Unknown Raspberry Pi model)".into(),
        rppal::gpio::Error::PermissionDenied(p) => format!("no permission on {p}: add the user to the `gpio` group"),
        other => other.to_string(),
    })
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
    out.push(match gpio() {
        Ok(()) => Finding {
            ok: true,
            what: "GPIO".into(),
            detail: "available".into(),
        },
        Err(e) => Finding {
            ok: false,
            what: "GPIO".into(),
            detail: e,
        },
    });
    let probes = crate::drivers::probe::list();
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
        out.push(match on_path(program) {
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

/// Which of a bench's configured resources are missing here.
pub fn bench(b: &Bench) -> Vec<Finding> {
    let mut out = Vec::new();
    let gpio_state = gpio();
    for d in b.devices.iter().filter(|d| !d.is_sim) {
        let mut check = |ok: bool, what: String, detail: String| out.push(Finding { ok, what, detail });
        match &d.power {
            PowerCfg::Gpio { pin, active_low, .. } => check(
                gpio_state.is_ok(),
                format!(
                    "{}: power relay on GPIO {pin}{}",
                    d.id,
                    if *active_low { " (active low)" } else { "" }
                ),
                gpio_state.clone().err().unwrap_or_else(|| "GPIO available".into()),
            ),
            PowerCfg::SerialRelay { port, channel } => check(
                Path::new(port).exists(),
                format!("{}: serial relay {port} channel {channel}", d.id),
                if Path::new(port).exists() {
                    "present".into()
                } else {
                    "missing".into()
                },
            ),
            PowerCfg::Command(c) => {
                let prog = c.on.split_whitespace().next().unwrap_or("");
                let found = on_path(prog);
                check(
                    found.is_some(),
                    format!("{}: power command `{prog}`", d.id),
                    found.unwrap_or_else(|| "not on PATH".into()),
                )
            }
            PowerCfg::Sim => {}
        }
        if d.console.kind == ConsoleKind::Serial {
            let port = d.console.port.clone().unwrap_or_default();
            let exists = Path::new(&port).exists();
            check(
                exists,
                format!("{}: console {port}", d.id),
                if exists {
                    "present".into()
                } else {
                    "missing (board unplugged or unpowered?)".into()
                },
            );
        }
        match &d.flash {
            FlashCfg::ProbeRs { probe, chip } => {
                let r = crate::drivers::probe::open_probe(probe);
                check(
                    r.is_ok(),
                    format!("{}: probe-rs probe {probe} ({chip})", d.id),
                    r.err().map_or_else(|| "attached".into(), |e| e.to_string()),
                )
            }
            FlashCfg::Command { command } => {
                let prog = command.split_whitespace().next().unwrap_or("");
                let found = on_path(prog);
                check(
                    found.is_some(),
                    format!("{}: flash command `{prog}`", d.id),
                    found.unwrap_or_else(|| "not on PATH".into()),
                )
            }
            FlashCfg::Sim => {}
        }
    }
    out
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
