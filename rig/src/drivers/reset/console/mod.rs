//! Soft reset by a command typed on the board's console (`reset` on most
//! firmware shells).

use async_trait::async_trait;
use serde::Deserialize;

use crate::drivers::console::ConsoleSender;
use crate::drivers::{Availability, Check, DriverError, Reset};

/// `reset: { kind: console, command: "system reset" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleResetCfg {
    #[serde(default = "default_command")]
    pub command: String,
}

fn default_command() -> String {
    "reset".into()
}

impl super::ResetBackend for ConsoleResetCfg {
    fn open(&self, ctx: &super::ResetCtx<'_>) -> Result<Box<dyn Reset>, DriverError> {
        Ok(Box::new(ConsoleReset::new(ctx.console.clone(), &self.command)))
    }

    fn check(&self, device: &str) -> Check {
        Check {
            what: format!("{device}: reset by typing `{}` on the console", self.command),
            availability: Availability::Found("needs the console".into()),
        }
    }
}

pub struct ConsoleReset {
    tx: ConsoleSender,
    command: String,
}

impl ConsoleReset {
    pub fn new(tx: ConsoleSender, command: &str) -> ConsoleReset {
        ConsoleReset {
            tx,
            command: command.to_owned(),
        }
    }
}

#[async_trait]
impl Reset for ConsoleReset {
    async fn soft_reset(&self) -> Result<(), DriverError> {
        // Confirmed: a reset is done when the command reached the board.
        self.tx.send_confirmed(format!("{}\n", self.command).into_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Recorder(Arc<Mutex<Vec<u8>>>);
    #[async_trait]
    impl crate::drivers::Console for Recorder {
        async fn read(&mut self, _: &mut [u8]) -> Result<usize, DriverError> {
            std::future::pending().await
        }
        async fn write(&mut self, data: &[u8]) -> Result<(), DriverError> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_console_reset_types_its_command_and_waits_for_the_write() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let h = crate::drivers::console::watch(
            "d".into(),
            Box::new(Recorder(written.clone())),
            crate::timeline::Timeline::in_memory(),
            Arc::new(Mutex::new(None)),
        );
        ConsoleReset::new(h.sender(), "system reset")
            .soft_reset()
            .await
            .unwrap();
        assert_eq!(
            *written.lock().unwrap(),
            b"system reset\n",
            "written before soft_reset returned"
        );
    }
}
