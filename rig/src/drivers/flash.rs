//! The command flash driver (dfu-util, vendor CLIs); probe-rs flashing is
//! in [`super::probe`].

use std::time::Duration;

use async_trait::async_trait;

use super::power::command::run;
use super::{DriverError, FlashReport, Flasher};
use crate::fixture::Fixture;

/// Flashing through a shell command: `{image}`, `{fixture}` and `{device}`
/// are substituted.
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

    pub fn command_for(&self, fixture: &Fixture) -> Result<String, DriverError> {
        let image = fixture.image.as_ref().ok_or_else(|| {
            DriverError::Io(format!(
                "fixture {} has no `image:` to flash onto {}",
                fixture.name, self.device
            ))
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
    async fn flash(&self, fixture: &Fixture) -> Result<FlashReport, DriverError> {
        let cmd = self.command_for(fixture)?;
        run(&cmd, self.timeout).await?;
        Ok(FlashReport { bytes: fixture.size })
    }

    fn describe(&self) -> String {
        format!("command `{}`", self.template)
    }
}
