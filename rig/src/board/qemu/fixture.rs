//! A fixture's `qemu:` section: which image QEMU boots and how, and the
//! firmware parameters the rig hands our firmware through its provisioning
//! page. A team's own image needs only `image:` (and `machine:`, `load:`,
//! the UART numbers if they differ); `provision:` is for firmware that reads
//! the rig's provisioning page (ours, under `firmware-fixtures/sleepy-c/`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::units::Dur;

/// An address in the guest: `0x003ff000` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub u64);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(v) => Ok(Addr(v)),
            Raw::Text(s) => {
                let t = s.trim();
                let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
                    None => t.replace('_', "").parse(),
                };
                v.map(Addr)
                    .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an address (0x... or a number)")))
            }
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// How QEMU loads the image: `-kernel` (the default: an ELF or a raw image
/// at address 0 for M-profile), `-bios`, or `-device loader` at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    #[default]
    Kernel,
    Bios,
    Loader(Addr),
}

/// Firmware timings, in the firmware's own units (real seconds).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub sleep_interval: Dur,
    #[serde(default)]
    pub sleep_jitter: Dur,
    pub awake_window: Dur,
    #[serde(default = "default_attach")]
    pub attach_time: Dur,
    #[serde(default = "default_resume_timeout")]
    pub resume_timeout: Dur,
    /// First confirmable retransmit; the next ones double it (4 in all).
    #[serde(default = "default_retransmit")]
    pub retransmit: Dur,
    #[serde(default = "default_give_up")]
    pub give_up_after: Dur,
    /// First handshake flight retransmit; the next one doubles it.
    #[serde(default = "default_hs_retransmit")]
    pub handshake_retransmit: Dur,
}

fn ms(v: u64) -> Dur {
    Dur(std::time::Duration::from_millis(v))
}
fn default_attach() -> Dur {
    ms(100)
}
fn default_resume_timeout() -> Dur {
    ms(1_000)
}
fn default_retransmit() -> Dur {
    ms(300)
}
fn default_give_up() -> Dur {
    ms(8_000)
}
fn default_hs_retransmit() -> Dur {
    ms(300)
}

/// `qemu:` in fixture.yaml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuFixture {
    /// The image, relative to the fixture's folder.
    pub image: PathBuf,
    /// The command that builds the image, named when it is missing.
    #[serde(default)]
    pub build: Option<String>,
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub load: Load,
    /// Which of the machine's UARTs is the console (`-serial` order).
    #[serde(default)]
    pub console_uart: u8,
    /// Which UART carries the modem link (SLIP-framed datagrams).
    #[serde(default = "default_modem_uart")]
    pub modem_uart: u8,
    /// Where the rig loads the provisioning page (device id, key, entropy,
    /// `params`); absent for firmware that does not read one.
    #[serde(default)]
    pub provision: Option<Addr>,
    #[serde(default)]
    pub params: Option<Params>,
}

fn default_modem_uart() -> u8 {
    1
}

impl QemuFixture {
    /// Problems with the section itself (not with the image's presence,
    /// which is checked when a plan uses it: images are built, not shipped).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.console_uart == self.modem_uart {
            out.push(format!(
                "qemu.console_uart and qemu.modem_uart are both UART{}",
                self.console_uart
            ));
        }
        if self.console_uart > 7 || self.modem_uart > 7 {
            out.push("qemu UART numbers go from 0 to 7".into());
        }
        if self.provision.is_some() != self.params.is_some() {
            out.push("qemu.provision and qemu.params go together: the params travel in the provisioning page".into());
        }
        out
    }

    /// Why the image cannot be flashed, if it cannot (`dir`: the fixture's folder).
    pub fn missing_image(&self, name: &str, dir: &std::path::Path) -> Option<String> {
        let path = dir.join(&self.image);
        if path.is_file() {
            return None;
        }
        // `sleepy-1.2/../sleepy-c/build/x.bin` reads better without the detour.
        let mut shown = PathBuf::new();
        for c in path.components() {
            match c {
                std::path::Component::ParentDir if shown.file_name().is_some() => {
                    shown.pop();
                }
                c => shown.push(c),
            }
        }
        let path = shown;
        let build = self
            .build
            .as_ref()
            .map_or_else(String::new, |b| format!("; build it with `{b}`"));
        Some(format!(
            "fixture `{name}`: image {} is not built{build}",
            path.display()
        ))
    }
}
