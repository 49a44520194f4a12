//! `rig cache ...`: one command line sent to a serving cloud's admin socket
//! (`<cloud dir>/admin.sock`), one reply line back (`ok` or `error: ...`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use super::CliError;
use crate::report::Overall;

/// Sends `line` to the cloud serving from `cloud` and says what it answered.
pub fn send(line: &str, cloud: &Path) -> Result<Overall, CliError> {
    // Parsed here too, so a typo is a usage error even with no cloud running.
    line.parse::<crate::cache::CacheCommand>()?;
    let sock = crate::serve::admin_socket(cloud);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).map_err(|e| {
        CliError::Fault(format!(
            "no cloud serving at {} ({e}); start one with `rig cloud serve --out {}`",
            sock.display(),
            cloud.display()
        ))
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| CliError::Fault(format!("cache {line}: {e}")))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| CliError::Fault(format!("cache {line}: {e}")))?;
    let reply = reply.trim();
    if reply == "ok" {
        println!("cache {line}: ok");
        Ok(Overall::Passed)
    } else if let Some(usage) = reply.strip_prefix("usage: ") {
        Err(CliError::Usage(usage.to_owned()))
    } else if reply.is_empty() {
        Err(CliError::Fault(format!(
            "cache {line}: the cloud closed the connection without answering"
        )))
    } else {
        Err(CliError::Fault(format!(
            "cache {line}: {}",
            reply.strip_prefix("error: ").unwrap_or(reply)
        )))
    }
}
