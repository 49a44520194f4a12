//! Hands-on bench work on one hardware device: `rig power`, `rig flash`,
//! `rig reset`, `rig console`. Each takes the bench lock; only `rig power`
//! touches the supply (console, reset and flash leave a powered board
//! powered and an unpowered one unpowered).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CliError, inputs, run::take_lock};
use crate::bench::{Bench, Device};
use crate::report::Overall;
use crate::runner::device::DeviceHandle;
use crate::timeline::{EventKind, Timeline};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    Cycle,
}

/// Loads `bench` and finds hardware device `device` in it.
pub fn bench_device(bench: &Path, device: &str) -> Result<(Bench, usize), CliError> {
    let b = Bench::load(bench)?;
    let Some(i) = b.devices.iter().position(|d| d.id == device) else {
        return Err(CliError::Usage(format!(
            "no device `{device}` on bench `{}` (devices: {})",
            b.name,
            b.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>().join(", ")
        )));
    };
    if !b.devices[i].kind.physical() {
        return Err(CliError::Usage(format!(
            "`{device}` is a {} board; it exists only inside `rig run`",
            b.devices[i].kind.name()
        )));
    }
    Ok((b, i))
}

fn done(device: &str, msg: String) -> Result<Overall, CliError> {
    eprintln!("{device}: {msg}");
    Ok(Overall::Passed)
}

fn fault(device: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Fault(format!("{device}: {e}"))
}

/// Builds `device` of `bench` (without a power driver) under the bench lock
/// and runs `f` on it, on runtime `rt`.
fn with_device<F, Fut>(
    rt: tokio::runtime::Runtime,
    bench: &Path,
    device: &str,
    wait_lock: Option<Duration>,
    what: &str,
    f: F,
) -> Result<Overall, CliError>
where
    F: FnOnce(DeviceHandle, Timeline) -> Fut,
    Fut: std::future::Future<Output = Result<String, CliError>>,
{
    let (b, i) = bench_device(bench, device)?;
    let _lock = take_lock(&b, &format!("rig {what} {device}"), wait_lock)?;
    let msg = rt.block_on(async {
        let tl = Timeline::in_memory().retain_last(8192);
        let d = &b.devices[i];
        let dev = d.kind.hands_on(d, &b, &tl).map_err(|e| fault(device, e))?;
        f(dev, tl).await
    })?;
    done(device, msg)
}

/// `rig power DEVICE on|off|cycle`.
pub fn power(
    device: &str,
    action: PowerAction,
    bench: &Path,
    off_for: Duration,
    wait_lock: Option<Duration>,
) -> Result<Overall, CliError> {
    let (b, i) = bench_device(bench, device)?;
    let _lock = take_lock(&b, &format!("rig power {device}"), wait_lock)?;
    let rt = super::runtime()?;
    let d: &Device = &b.devices[i];
    // The driver opens at the state asked for: `on` never passes through off.
    let initial = match action {
        PowerAction::On => true,
        PowerAction::Off | PowerAction::Cycle => false,
    };
    let msg = rt.block_on(async {
        let power = d.kind.power(d, &b, initial).map_err(|e| fault(device, e))?;
        match action {
            PowerAction::On => power.set(true).await,
            PowerAction::Off => power.set(false).await,
            PowerAction::Cycle => match power.set(false).await {
                Ok(()) => {
                    tokio::time::sleep(off_for).await;
                    power.set(true).await
                }
                Err(e) => Err(e),
            },
        }
        .map_err(|e| fault(device, e))?;
        let what = match action {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycled",
        };
        Ok::<_, CliError>(format!("power {what} ({})", power.describe()))
    })?;
    done(device, msg)
}

/// `rig flash DEVICE FIXTURE`.
pub fn flash(
    device: &str,
    fixture: &str,
    bench: &Path,
    fixtures: Option<&PathBuf>,
    wait_lock: Option<Duration>,
) -> Result<Overall, CliError> {
    // Every usage error before the lock is taken or a driver opened.
    let all = inputs::fixtures(fixtures.map(PathBuf::as_path), None)?;
    let fx = all
        .get(fixture)
        .ok_or_else(|| CliError::Usage(format!("unknown fixture `{fixture}` (available: {})", all.names())))?;
    let (b, i) = bench_device(bench, device)?;
    let board = &b.devices[i].board;
    if !fx.boards.contains(board) {
        return Err(CliError::Usage(format!(
            "fixture `{fixture}` is built for boards [{}], but device `{device}` is a `{board}`",
            fx.boards.join(", ")
        )));
    }
    with_device(
        super::runtime()?,
        bench,
        device,
        wait_lock,
        "flash",
        |dev, _| async move {
            dev.flash(&fx).await.map_err(|e| fault(device, e))?;
            Ok(format!(
                "flashed {} {} (sha256 {}) with {}",
                fx.name,
                fx.version,
                fx.sha256,
                dev.describe_flasher()
            ))
        },
    )
}

/// `rig reset DEVICE`.
pub fn reset(device: &str, bench: &Path, wait_lock: Option<Duration>) -> Result<Overall, CliError> {
    with_device(
        super::runtime()?,
        bench,
        device,
        wait_lock,
        "reset",
        |dev, _| async move {
            dev.soft_reset().await.map_err(|e| fault(device, e))?;
            Ok("soft reset".to_string())
        },
    )
}

/// Events printed at once by `rig console`.
const PRINT_BATCH: usize = 256;

/// Console lines and gaps among `events`, written to stdout in one go;
/// `skipped` events fell out of memory before they could be printed.
fn print_console(events: &[crate::timeline::Event], skipped: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    if skipped > 0 {
        writeln!(
            out,
            "--- {skipped} console events not shown: the terminal fell behind ---"
        )?;
    }
    for e in events {
        match &e.kind {
            EventKind::ConsoleLine { line, .. } => writeln!(out, "{line}")?,
            EventKind::ConsoleGap { ms } => writeln!(out, "--- console link gap of {ms} ms ---")?,
            _ => {}
        }
    }
    out.flush()
}

/// `rig console DEVICE [--send LINE] [--for D]`: prints the console until
/// `duration` passes or Ctrl-C/SIGTERM.
pub fn console(
    device: &str,
    bench: &Path,
    send: Option<String>,
    duration: Option<Duration>,
    wait_lock: Option<Duration>,
) -> Result<Overall, CliError> {
    // One thread for the line task and the printer (the port has its own):
    // on two workers, every batch was a wakeup of the other thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Fault(format!("cannot start the async runtime: {e}")))?;
    with_device(rt, bench, device, wait_lock, "console", |dev, tl| async move {
        let mut interrupt = crate::signals::Interrupt::new();
        if let Some(line) = send {
            dev.console_send_confirmed(&line).await.map_err(|e| fault(device, e))?;
        }
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut next = 0;
        loop {
            let batch = tokio::select! {
                b = tl.next_batch(&mut next, PRINT_BATCH, deadline) => b,
                _ = interrupt.recv() => None,
            };
            let Some((events, skipped)) = batch else { break };
            // Out of the timeline's lock, one write per batch: a flood costs
            // a syscall per batch, not per line, and a slow terminal delays
            // only the printing.
            if print_console(&events, skipped).is_err() {
                // Stdout closed (`rig console … | head`): nothing to show it on.
                break;
            }
        }
        Ok("console closed".to_string())
    })
}
