//! The command flash backend (dfu-util, vendor CLIs): `{image}`, `{fixture}`
//! and `{device}` are substituted into the template.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::drivers::shell::{self, run};
use crate::drivers::{Availability, Check, DriverError, Flasher};
use crate::fixture::Fixture;

/// `flash: { kind: command, command: "dfu-util -D {image}" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandFlashCfg {
    pub command: String,
}

impl super::FlashBackend for CommandFlashCfg {
    fn open(&self, device: &str) -> Result<Box<dyn Flasher>, DriverError> {
        Ok(Box::new(CommandFlasher::new(device, &self.command)))
    }

    fn check(&self, device: &str) -> Check {
        let prog = shell::program(&self.command);
        Check {
            what: format!("{device}: flash command `{prog}`"),
            availability: Availability::of_program(prog),
        }
    }
}

/// Flashing through a shell command.
pub struct CommandFlasher {
    device: String,
    template: String,
    timeout: Duration,
}

impl CommandFlasher {
    pub fn new(device: &str, template: &str) -> CommandFlasher {
        CommandFlasher {
            device: device.to_owned(),
            template: template.to_owned(),
            timeout: Duration::from_secs(600),
        }
    }

    /// The command line for `fixture`; a fixture without an image has
    /// nothing to flash.
    pub fn command_for(&self, fixture: &Fixture) -> Result<String, DriverError> {
        let image = fixture.image.as_ref().ok_or_else(|| DriverError::Unsupported {
            driver: "command flash",
            what: format!(
                "flashing fixture {} (it has no `image:`) onto {}",
                fixture.name, self.device
            ),
        })?;
        Ok(self
            .template
            .replace("{image}", &image.display().to_string())
            .replace("{fixture}", &fixture.name)
            .replace("{device}", &self.device))
    }
}

#[async_trait]
impl Flasher for CommandFlasher {
    async fn flash(&self, fixture: &Fixture) -> Result<Option<String>, DriverError> {
        let cmd = self.command_for(fixture)?;
        run(&cmd, self.timeout).await?;
        Ok(None)
    }

    fn describe(&self) -> String {
        format!("command `{}`", self.template)
    }
}
