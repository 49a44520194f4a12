//! The bench lock: two CI jobs must never drive one bench at once.
//!
//! One lock file per bench (`<dir>/<bench>.lock`), held with `flock(2)` for
//! as long as the rig runs, and beside it `<bench>.holder` saying who has it
//! (pid, host, plan, start time). The kernel releases a flock when its holder
//! dies, however it dies, so a lock is never stuck; a holder file whose lock
//! is free was left by a crashed run, and is taken over with a warning.
//!
//! The folder: `RIG_LOCK_DIR`, else the bench file's `lock_dir:` (a folder of
//! the bench users' group when several accounts share a bench), else a
//! private per-user folder (`$XDG_RUNTIME_DIR/rig-locks`, or
//! `/tmp/rig-locks-<uid>`, created 0700). A folder owned by another user or
//! writable by everyone is refused, the lock file is opened without
//! following links and never truncated, and the holder file is replaced by
//! rename: a planted `x.lock -> /etc/shadow` changes nothing.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

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
    #[error("bench lock: {0}")]
    Fs(#[from] FsError),
    #[error("bench lock {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A held bench lock; released (and its holder file removed) when dropped.
pub struct BenchLock {
    file: File,
    pub path: PathBuf,
    holder_path: PathBuf,
    /// The holder a crashed run left behind, if the lock was taken over.
    pub took_over: Option<Holder>,
}

/// The lock folder: `RIG_LOCK_DIR`, else `configured` (the bench's
/// `lock_dir:`), else this user's private default.
pub fn lock_dir_for(configured: Option<&Path>) -> PathBuf {
    if let Some(d) = std::env::var_os("RIG_LOCK_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = configured {
        return d.to_owned();
    }
    default_dir()
}

pub fn lock_dir() -> PathBuf {
    lock_dir_for(None)
}

fn default_dir() -> PathBuf {
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && fsutil::check_dir(&run).is_ok()
    {
        return run.join("rig-locks");
    }
    std::env::temp_dir().join(format!("rig-locks-{}", fsutil::euid()))
}

/// The part of a bench name used in file names.
fn file_stem(bench: &str) -> String {
    bench
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn read_holder(path: &Path) -> Option<Holder> {
    let bytes = fsutil::read_bounded(path, 4096).ok()?;
    serde_json::from_slice(&bytes).ok()
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
    // Created private if missing; an existing folder must be trustworthy.
    fsutil::ensure_dir(dir, 0o700)?;
    let stem = file_stem(bench);
    let path = dir.join(format!("{stem}.lock"));
    let holder_path = dir.join(format!("{stem}.holder"));
    // Group-writable in a group-shared folder, so another account can lock it too.
    let file = fsutil::open_rw_nofollow(&path, 0o660)?;
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let got = try_flock(&file).map_err(|source| LockError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if got {
            break;
        }
        match deadline {
            Some(d) if Instant::now() < d => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let holder = read_holder(&holder_path).unwrap_or(Holder {
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
    let took_over = read_holder(&holder_path);
    let text = serde_json::to_vec(me).map_err(|e| LockError::Io {
        path: holder_path.display().to_string(),
        source: e.into(),
    })?;
    fsutil::write_atomic(&holder_path, &text, 0o644)?;
    Ok(BenchLock {
        file,
        path,
        holder_path,
        took_over,
    })
}

impl Drop for BenchLock {
    fn drop(&mut self) {
        // A clean release leaves no holder: only a crash does.
        let _ = std::fs::remove_file(&self.holder_path);
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
        std::fs::write(dir.path().join("bench-a.holder"), serde_json::to_string(&dead).unwrap()).unwrap();
        let lock = acquire(dir.path(), "bench-a", &Holder::me("p"), None).unwrap();
        assert_eq!(lock.took_over, Some(dead));
    }

    /// Finding 1 of the security issue: a user who created the lock folder
    /// first planted `bench.lock -> a root file`, and the next locked run
    /// truncated that file.
    #[test]
    fn a_planted_lock_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, "root:secret\n").unwrap();
        std::os::unix::fs::symlink(&victim, locks.join("bench-a.lock")).unwrap();
        let e = acquire(&locks, "bench-a", &Holder::me("p"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink(&victim, locks.join("bench-b.holder")).unwrap();
        let l = acquire(&locks, "bench-b", &Holder::me("p"), None).unwrap();
        drop(l);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
    }

    #[test]
    fn a_lock_folder_others_can_write_or_own_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = acquire(&open, "b", &Holder::me("p"), None).err().unwrap().to_string();
        assert!(e.contains("writable by other users"), "{e}");
        if crate::fsutil::euid() == 0 {
            // As root (CI): a folder another user made is refused too.
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = acquire(&theirs, "b", &Holder::me("p"), None).err().unwrap().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
        // A missing folder is created private.
        let fresh = dir.path().join("fresh");
        let _l = acquire(&fresh, "b", &Holder::me("p"), None).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
