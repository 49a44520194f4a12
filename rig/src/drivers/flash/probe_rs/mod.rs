//! Flashing over SWD with the probe-rs library (not its CLI).
//!
//! A probe is chosen by a `VID:PID[:SERIAL]` selector, the chip by name, the
//! image format by the file's extension (`.elf`/none: ELF, `.hex`: Intel
//! HEX, `.bin`: raw binary at the start of flash). The write is verified
//! and the core reset to run the new image. probe-rs is blocking, so all of
//! it runs on a blocking thread; its progress events become a percentage
//! (an indicatif bar on a terminal, lines in CI).

use std::path::Path;

use async_trait::async_trait;
use probe_rs::flashing::{
    BinLoader, BinOptions, DownloadOptions, ElfLoader, ElfOptions, FlashProgress, HexLoader, ProgressEvent,
};
use probe_rs::probe::list::Lister;
use probe_rs::probe::{DebugProbeSelector, Probe};
use probe_rs::{Permissions, Session};
use serde::Deserialize;

use crate::drivers::{Availability, Check, DriverError, Flasher, Reset};
use crate::fixture::Fixture;

/// `flash: { kind: probe-rs, probe: "VID:PID[:SERIAL]", chip: nRF52840_xxAA }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRsCfg {
    pub probe: String,
    pub chip: String,
}

impl super::FlashBackend for ProbeRsCfg {
    fn open(&self, _device: &str) -> Result<Box<dyn Flasher>, DriverError> {
        Ok(Box::new(ProbeRsFlasher::new(&self.probe, &self.chip)?))
    }

    fn check(&self, device: &str) -> Check {
        let availability = match open_probe(&self.probe) {
            Ok(_) => Availability::Found("attached".into()),
            Err(ProbeError::Open {
                source: probe_rs::probe::DebugProbeError::Usb(ref e),
                ..
            }) if e.kind() == std::io::ErrorKind::PermissionDenied => Availability::NoPermission {
                detail: format!("no permission on probe {}", self.probe),
                fix: "install probe-rs' udev rules (https://probe.rs/docs/getting-started/probe-setup/) and replug"
                    .into(),
            },
            Err(e) => Availability::NotFound(e.to_string()),
        };
        Check {
            what: format!("{device}: probe-rs probe {} ({})", self.probe, self.chip),
            availability,
        }
    }
}

/// Failures of flashing and resetting through a debug probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe selector `{selector}`: {source} (expected VID:PID or VID:PID:SERIAL, e.g. 0d28:0204:ABC123)")]
    Selector {
        selector: String,
        // probe-rs does not export the parse error's type.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("debug probe {selector}: {source} ({attached})")]
    Open {
        selector: String,
        attached: String,
        #[source]
        source: probe_rs::probe::DebugProbeError,
    },
    #[error("cannot attach to chip `{chip}`: {source} (chip names as `probe-rs chip list` prints them)")]
    Attach {
        chip: String,
        #[source]
        source: probe_rs::Error,
    },
    #[error("image {0} is missing")]
    ImageMissing(String),
    #[error("fixture {0} has no `image:` to flash")]
    NoImage(String),
    #[error("flashing {image}: {causes}")]
    Flash { image: String, causes: String },
    #[error("core 0 of {chip}: {source}")]
    Core {
        chip: String,
        #[source]
        source: probe_rs::Error,
    },
    #[error("reset of {chip}: {source}")]
    Reset {
        chip: String,
        #[source]
        source: probe_rs::Error,
    },
    #[error("probe task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Parses a `VID:PID[:SERIAL]` probe selector with a message that says what is expected.
pub fn selector(s: &str) -> Result<DebugProbeSelector, ProbeError> {
    s.parse::<DebugProbeSelector>().map_err(|e| ProbeError::Selector {
        selector: s.to_owned(),
        source: Box::new(e),
    })
}

/// Opens the selected probe, naming what is attached when it is not there.
pub fn open_probe(sel: &str) -> Result<Probe, ProbeError> {
    let parsed = selector(sel)?;
    let lister = Lister::new();
    lister.open(parsed).map_err(|source| {
        let attached: Vec<String> = lister.list_all().iter().map(|p| format!("{p}")).collect();
        let attached = if attached.is_empty() {
            "no probes are attached".to_string()
        } else {
            format!("attached: {}", attached.join("; "))
        };
        ProbeError::Open {
            selector: sel.to_owned(),
            attached,
            source,
        }
    })
}

/// Attaches to `chip` through `probe`.
pub fn attach(probe: Probe, chip: &str) -> Result<Session, ProbeError> {
    probe
        .attach(chip, Permissions::default())
        .map_err(|source| ProbeError::Attach {
            chip: chip.to_owned(),
            source,
        })
}

/// Writes `image` through `session`, reporting percent done.
pub fn download(session: &mut Session, image: &Path, verify: bool, progress: impl FnMut(u8)) -> Result<(), ProbeError> {
    download_with(session, image, verify, false, progress)
}

/// [`download`], optionally as a dry run (everything but the writes).
pub fn download_with(
    session: &mut Session,
    image: &Path,
    verify: bool,
    dry_run: bool,
    mut progress: impl FnMut(u8),
) -> Result<(), ProbeError> {
    if !image.is_file() {
        return Err(ProbeError::ImageMissing(image.display().to_string()));
    }
    let (mut total, mut done) = (0u64, 0u64);
    let mut options = DownloadOptions::default();
    options.verify = verify;
    options.dry_run = dry_run;
    options.progress = FlashProgress::new(move |e| match e {
        ProgressEvent::AddProgressBar { total: Some(t), .. } => total += t,
        ProgressEvent::Progress { size, .. } => {
            done += size;
            if let Some(pct) = (done * 100).checked_div(total) {
                progress(pct.min(100) as u8);
            }
        }
        _ => {}
    });
    let ext = image
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let r = match ext.as_str() {
        "hex" | "ihex" => probe_rs::flashing::download_file_with_options(session, image, HexLoader, options),
        "bin" => {
            // A raw binary carries no address: it goes to the start of flash.
            let base = session.target().memory_map.iter().find_map(|r| match r {
                probe_rs::config::MemoryRegion::Nvm(n) if !n.is_alias => Some(n.range.start),
                _ => None,
            });
            let bin = BinOptions {
                base_address: base,
                skip: 0,
            };
            probe_rs::flashing::download_file_with_options(session, image, BinLoader(bin), options)
        }
        _ => probe_rs::flashing::download_file_with_options(session, image, ElfLoader(ElfOptions::default()), options),
    };
    r.map_err(|e| ProbeError::Flash {
        image: image.display().to_string(),
        causes: chain(&e),
    })
}

/// An error with its causes: probe-rs's top-level messages are generic.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// A board flashed and reset through its own debug probe.
pub struct ProbeRsFlasher {
    probe: String,
    chip: String,
}

impl ProbeRsFlasher {
    pub fn new(probe: &str, chip: &str) -> Result<ProbeRsFlasher, ProbeError> {
        selector(probe)?;
        Ok(ProbeRsFlasher {
            probe: probe.to_owned(),
            chip: chip.to_owned(),
        })
    }
}

fn flash_blocking(probe: &str, chip: &str, image: &Path) -> Result<(), ProbeError> {
    let mut session = attach(open_probe(probe)?, chip)?;
    // An indicatif bar on a terminal, a line per 10 % in CI logs.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let b = indicatif::ProgressBar::new(100);
        b.set_message(format!("flashing via {probe}"));
        b
    });
    let mut last = 0u8;
    download(&mut session, image, true, |pct| match &bar {
        Some(b) => b.set_position(u64::from(pct)),
        None if pct >= last.saturating_add(10) || (pct == 100 && last != 100) => {
            last = pct;
            eprintln!("  flash {probe}: {pct}%");
        }
        None => {}
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut core = session.core(0).map_err(|source| ProbeError::Core {
        chip: chip.to_owned(),
        source,
    })?;
    core.reset().map_err(|source| ProbeError::Reset {
        chip: chip.to_owned(),
        source,
    })
}

#[async_trait]
impl Flasher for ProbeRsFlasher {
    async fn flash(&self, fixture: &Fixture) -> Result<Option<String>, DriverError> {
        let image = fixture
            .image
            .clone()
            .ok_or_else(|| ProbeError::NoImage(fixture.name.clone()))?;
        let (probe, chip) = (self.probe.clone(), self.chip.clone());
        tokio::task::spawn_blocking(move || flash_blocking(&probe, &chip, &image))
            .await
            .map_err(ProbeError::from)??;
        Ok(None)
    }

    fn describe(&self) -> String {
        format!("probe-rs {} via probe {}", self.chip, self.probe)
    }
}

/// A core reset through the debug probe (retained RAM survives).
pub struct ProbeRsReset {
    pub probe: String,
    pub chip: String,
}

#[async_trait]
impl Reset for ProbeRsReset {
    async fn soft_reset(&self) -> Result<(), DriverError> {
        let (probe, chip) = (self.probe.clone(), self.chip.clone());
        tokio::task::spawn_blocking(move || {
            let mut session = attach(open_probe(&probe)?, &chip)?;
            let mut core = session.core(0).map_err(|source| ProbeError::Core {
                chip: chip.clone(),
                source,
            })?;
            core.reset().map_err(|source| ProbeError::Reset { chip, source })
        })
        .await
        .map_err(ProbeError::from)?
        .map_err(DriverError::from)
    }
}

/// Debug probes attached to this machine, for `rig doctor`.
pub fn list() -> Vec<String> {
    Lister::new().list_all().iter().map(|p| format!("{p}")).collect()
}

#[cfg(test)]
mod tests {
    use probe_rs::probe::fake_probe::FakeProbe;

    use super::*;

    #[test]
    fn selectors_parse_or_say_what_is_expected() {
        assert!(selector("0d28:0204:ABC123").is_ok());
        assert!(selector("0d28:0204").is_ok());
        let e = selector("not-a-probe").unwrap_err().to_string();
        assert!(e.contains("expected VID:PID"), "{e}");
    }

    #[test]
    fn a_missing_probe_is_named_with_what_is_attached() {
        let e = open_probe("1234:5678:NOPE").unwrap_err().to_string();
        assert!(e.contains("debug probe 1234:5678:NOPE"), "{e}");
        assert!(e.contains("attached"), "{e}");
    }

    #[test]
    fn attach_through_a_fake_probe_works_and_an_unknown_chip_is_named() {
        let probe = FakeProbe::with_mocked_core().into_probe();
        let Err(e) = attach(probe, "no-such-chip-9000") else {
            panic!("an unknown chip must not attach");
        };
        let e = e.to_string();
        assert!(e.contains("cannot attach to chip `no-such-chip-9000`"), "{e}");
        // A real target's attach sequence runs against the mocked core.
        // (Targets with vendor-specific access ports, like the nRF52, ask
        // the fake probe for registers it does not model.)
        let probe = FakeProbe::with_mocked_core().into_probe();
        let session = attach(probe, "STM32F407VGTx").expect("attach through the fake probe");
        assert_eq!(session.target().name, "STM32F407VGTx");
    }

    #[test]
    fn a_missing_image_is_reported_before_touching_the_target() {
        let probe = FakeProbe::with_mocked_core().into_probe();
        let mut session = attach(probe, "STM32F407VGTx").expect("attach through the fake probe");
        let e = download(&mut session, Path::new("/no/such/firmware.elf"), true, |_| {}).unwrap_err();
        assert!(e.to_string().contains("image /no/such/firmware.elf is missing"), "{e}");
        assert!(ProbeRsFlasher::new("garbage", "nRF52840_xxAA").is_err());
    }

    #[test]
    fn a_dry_run_flash_through_the_fake_probe_loads_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fw.bin");
        std::fs::write(&image, vec![0xA5u8; 4096]).unwrap();
        let probe = FakeProbe::with_mocked_core().into_probe();
        let mut session = attach(probe, "STM32F407VGTx").expect("attach through the fake probe");
        download_with(&mut session, &image, false, true, |_| {})
            .expect("dry run of a 4 KiB image at the start of flash");
    }
}
