//! Running a shell command template for a driver, bounded in time, with
//! what it printed kept for the error message. The `command` power and
//! flash backends both use it.

use std::time::Duration;

/// A command that failed, hung or could not start.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{command}` did not finish within {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {tail}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        tail: String,
    },
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `sh -c command`, bounded by `timeout`; returns what it printed.
pub async fn run(command: &str, timeout: Duration) -> Result<String, CommandError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(timeout, child).await {
        Err(_) => {
            return Err(CommandError::Timeout {
                command: command.into(),
                after: timeout,
            });
        }
        Ok(Err(source)) => {
            return Err(CommandError::Spawn {
                command: command.into(),
                source,
            });
        }
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
        Err(CommandError::Failed {
            command: command.into(),
            status: out.status,
            tail: tail(&text, 5),
        })
    }
}

/// The program a template runs (its first word), for `rig doctor`.
pub fn program(template: &str) -> &str {
    template.split_whitespace().next().unwrap_or("")
}

/// The last `n` lines of `text`, joined with ` | ` (for one-line messages).
pub fn tail(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.reverse();
    lines.join(" | ")
}
