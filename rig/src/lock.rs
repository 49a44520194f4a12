//! The bench lock: two CI jobs must never drive one bench at once.
//!
//! One lock file per bench (`$RIG_LOCK_DIR/<bench>.lock`, default
//! `/tmp/rig-locks`), held with `flock(2)` for as long as the rig runs and
//! holding who has it (pid, host, plan, start time). The kernel releases a
//! flock when its holder dies, however it dies, so a lock is never stuck; a
//! file whose holder text is still there but whose flock is free was left by
//! a crashed run, and is taken over with a warning.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Who holds a bench.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub plan: String,
    pub started: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} running {} since {}",
            self.pid, self.host, self.plan, self.started
        )
    }
}

impl Holder {
    pub fn me(plan: &str) -> Holder {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            plan: plan.to_owned(),
            started: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("bench `{bench}` is in use by {holder}; wait for it with --wait-lock DURATION")]
    Held { bench: String, holder: Holder },
    #[error("bench lock {path}: {message}")]
    Io { path: String, message: String },
}

/// A held bench lock; released (and its file cleared) when dropped.
pub struct BenchLock {
    file: File,
    pub path: PathBuf,
    /// The holder a crashed run left behind, if the lock was taken over.
    pub took_over: Option<Holder>,
}

pub fn lock_dir() -> PathBuf {
    std::env::var_os("RIG_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/rig-locks"))
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Takes the lock of `bench` in `dir`, waiting up to `wait` if it is held.
pub fn acquire(dir: &Path, bench: &str, me: &Holder, wait: Option<Duration>) -> Result<BenchLock, LockError> {
    let safe: String = bench
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}.lock"));
    let io = |e: std::io::Error| LockError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        if try_flock(&file).map_err(io)? {
            break;
        }
        match deadline {
            Some(d) if Instant::now() < d => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let holder = read_holder(&mut file).unwrap_or(Holder {
                    pid: 0,
                    host: "?".into(),
                    plan: "?".into(),
                    started: "?".into(),
                });
                return Err(LockError::Held {
                    bench: bench.to_owned(),
                    holder,
                });
            }
        }
    }
    let took_over = read_holder(&mut file);
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let text = serde_json::to_string(me).map_err(|e| io(e.into()))?;
    file.write_all(text.as_bytes()).and_then(|_| file.flush()).map_err(io)?;
    Ok(BenchLock { file, path, took_over })
}

impl Drop for BenchLock {
    fn drop(&mut self) {
        // A clean release leaves an empty file: only a crash leaves a holder.
        let _ = self.file.set_len(0);
        // SAFETY: unlocking our own descriptor (closing would too).
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_holders_details_or_waits() {
        let dir = tempfile::tempdir().unwrap();
        let a = Holder::me("plan-a.yaml");
        let lock = acquire(dir.path(), "bench-a", &a, None).unwrap();
        assert!(lock.took_over.is_none());
        let b = Holder {
            plan: "plan-b.yaml".into(),
            ..Holder::me("x")
        };
        match acquire(dir.path(), "bench-a", &b, None) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, a),
            other => panic!("expected Held, got {:?}", other.map(|_| ())),
        }
        let msg = acquire(dir.path(), "bench-a", &b, Some(Duration::from_millis(200)))
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("plan-a.yaml") && msg.contains("--wait-lock"), "{msg}");
        // Another bench is independent.
        let _other = acquire(dir.path(), "bench-b", &b, None).unwrap();
        // Waiting succeeds once the holder lets go.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(lock);
        });
        let got = acquire(dir.path(), "bench-a", &b, Some(Duration::from_secs(5))).unwrap();
        assert!(got.took_over.is_none(), "a clean release leaves no holder behind");
        t.join().unwrap();
    }

    #[test]
    fn a_lock_left_by_a_dead_run_is_taken_over_with_its_details() {
        let dir = tempfile::tempdir().unwrap();
        let dead = Holder {
            pid: 999_999,
            host: "bench-pi".into(),
            plan: "crashed.yaml".into(),
            started: "2026-11-23T00:00:00Z".into(),
        };
        std::fs::write(dir.path().join("bench-a.lock"), serde_json::to_string(&dead).unwrap()).unwrap();
        let lock = acquire(dir.path(), "bench-a", &Holder::me("p"), None).unwrap();
        assert_eq!(lock.took_over, Some(dead));
    }
}
