//! Power through shell commands, for hubs (`uhubctl`), PDUs and anything
//! else with a CLI. `{device}` in a template is replaced by the device id.
//! A command that fails or hangs is an error carrying its exit status and
//! the tail of its output.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::drivers::shell::{self, run};
use crate::drivers::{Availability, Check, DriverError, Power};

pub use shell::{CommandError, DEFAULT_TIMEOUT};

/// `power: { kind: command, on: "...", off: "..." }`. Parsed by hand
/// because YAML 1.1 reads a bare `on:` or `off:` key as a boolean.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCfg {
    pub on: String,
    pub off: String,
}

impl<'de> Deserialize<'de> for CommandCfg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key(String);
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct KV;
                impl serde::de::Visitor<'_> for KV {
                    type Value = Key;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("`on` or `off`")
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                        Ok(Key(v.to_owned()))
                    }
                    fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                        Ok(Key(if v { "on" } else { "off" }.to_owned()))
                    }
                }
                d.deserialize_any(KV)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CommandCfg;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`on:` and `off:` command templates")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<CommandCfg, A::Error> {
                let (mut on, mut off) = (None, None);
                while let Some(Key(k)) = map.next_key::<Key>()? {
                    match k.as_str() {
                        "on" => on = Some(map.next_value::<String>()?),
                        "off" => off = Some(map.next_value::<String>()?),
                        other => return Err(serde::de::Error::unknown_field(other, &["on", "off"])),
                    }
                }
                Ok(CommandCfg {
                    on: on.ok_or_else(|| serde::de::Error::missing_field("on"))?,
                    off: off.ok_or_else(|| serde::de::Error::missing_field("off"))?,
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl super::PowerBackend for CommandCfg {
    fn open(&self, device: &str, _safe_on: bool, _initially_on: bool) -> Result<Box<dyn Power>, DriverError> {
        Ok(Box::new(CommandPower::new(
            device,
            &self.on,
            &self.off,
            DEFAULT_TIMEOUT,
        )))
    }

    fn check(&self, device: &str) -> Check {
        let prog = shell::program(&self.on);
        Check {
            what: format!("{device}: power command `{prog}`"),
            availability: Availability::of_program(prog),
        }
    }
}

pub struct CommandPower {
    on: String,
    off: String,
    timeout: Duration,
}

impl CommandPower {
    pub fn new(device: &str, on: &str, off: &str, timeout: Duration) -> CommandPower {
        CommandPower {
            on: on.replace("{device}", device),
            off: off.replace("{device}", device),
            timeout,
        }
    }
}

#[async_trait]
impl Power for CommandPower {
    async fn set(&self, on: bool) -> Result<(), DriverError> {
        run(if on { &self.on } else { &self.off }, self.timeout)
            .await
            .map(|_| ())
            .map_err(DriverError::from)
    }

    fn describe(&self) -> String {
        format!("commands `{}` / `{}`", self.on, self.off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_the_right_template_with_the_device_substituted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let p = CommandPower::new(
            "boron-01",
            &format!("echo on {{device}} >> {}", log.display()),
            &format!("echo off {{device}} >> {}", log.display()),
            DEFAULT_TIMEOUT,
        );
        p.set(true).await.unwrap();
        p.set(false).await.unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "on boron-01\noff boron-01\n");
    }

    #[tokio::test]
    async fn failures_and_hangs_are_errors_with_output() {
        let p = CommandPower::new("d", "echo relay stuck >&2; exit 3", "true", DEFAULT_TIMEOUT);
        let e = p.set(true).await.unwrap_err().to_string();
        assert!(e.contains("exit status: 3") && e.contains("relay stuck"), "{e}");
        let p = CommandPower::new("d", "sleep 5", "true", Duration::from_millis(100));
        let e = p.set(true).await.unwrap_err().to_string();
        assert!(e.contains("did not finish"), "{e}");
    }
}
