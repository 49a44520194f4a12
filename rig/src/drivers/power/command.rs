//! Power through shell commands, for hubs (`uhubctl`), PDUs and anything
//! else with a CLI. `{device}` in a template is replaced by the device id.
//! A command that fails or hangs is an error carrying its exit status and
//! the tail of its output.

use std::time::Duration;

use async_trait::async_trait;

use crate::drivers::{DriverError, Power};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `sh -c command`, bounded by `timeout`.
pub async fn run(command: &str, timeout: Duration) -> Result<String, DriverError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(timeout, child).await {
        Err(_) => {
            return Err(DriverError::Io(format!(
                "`{command}` did not finish within {timeout:?}"
            )));
        }
        Ok(Err(e)) => return Err(DriverError::Io(format!("cannot run `{command}`: {e}"))),
        Ok(Ok(o)) => o,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(DriverError::Io(format!(
            "`{command}` failed ({}): {}",
            out.status,
            tail.join(" | ")
        )))
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
