//! The durable key store behind the `durable` mitigation: every session the
//! cloud creates or advances is written through to it, and it survives
//! anything done to the session cache.
//!
//! On the bench it is an append-only JSON Lines file in the cell's folder
//! (last record per session wins), read back when the store is opened, and
//! an in-memory index. A production cloud would use a replicated database
//! (PostgreSQL, DynamoDB, ...): the point is only that it is not the cache
//! that crashed and shares none of its failure modes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rig_proto::SessionId;

use crate::cache::SessionRecord;

#[derive(Default)]
struct Inner {
    index: BTreeMap<SessionId, SessionRecord>,
    file: Option<BufWriter<File>>,
    /// A store nothing can read from: the cell never uses `durable`, so
    /// writing every session through (752 MB in a 10,000-device day) buys
    /// nothing.
    off: bool,
}

/// A tombstone line: `{"forget": <session id>}`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Forget {
    forget: SessionId,
}

impl Inner {
    /// Appends `line` to the file and flushes it. After a failure the file
    /// is not written again (a full disk would fail every time).
    fn append(&mut self, line: &impl serde::Serialize) -> std::io::Result<()> {
        let Some(f) = self.file.as_mut() else { return Ok(()) };
        let res = serde_json::to_writer(&mut *f, line)
            .map_err(std::io::Error::from)
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.flush());
        if res.is_err() {
            self.file = None;
        }
        res
    }
}

#[derive(Clone, Default)]
pub struct DurableKeys {
    inner: Arc<Mutex<Inner>>,
}

impl DurableKeys {
    /// A store kept in memory only (unit tests).
    pub fn new() -> DurableKeys {
        DurableKeys::default()
    }

    /// A store that keeps nothing, for a cell whose mitigation is never
    /// `durable`.
    pub fn off() -> DurableKeys {
        DurableKeys {
            inner: Arc::new(Mutex::new(Inner {
                off: true,
                ..Inner::default()
            })),
        }
    }

    /// A store persisted to `path`, loading what an earlier cloud wrote.
    pub fn with_file(path: &Path) -> std::io::Result<DurableKeys> {
        let mut index = BTreeMap::new();
        if let Ok(f) = crate::fsutil::open_read_nofollow(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                // A torn last line (killed mid-write) is skipped.
                if let Ok(rec) = serde_json::from_str::<SessionRecord>(&line) {
                    index.insert(rec.session_id, rec);
                } else if let Ok(Forget { forget }) = serde_json::from_str::<Forget>(&line) {
                    index.remove(&forget);
                }
            }
        }
        // Session keys in the clear: readable by this user only.
        let file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)?
        };
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(DurableKeys {
            inner: Arc::new(Mutex::new(Inner {
                index,
                file: Some(BufWriter::new(file)),
                off: false,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        self.lock().index.get(&id).cloned()
    }

    /// Writes through to the file before returning, so a session the cloud
    /// acknowledged is durable.
    /// The store keeps the record in memory whatever happens; a failed write
    /// is returned once and the file is not written again (a full disk would
    /// fail every time).
    pub fn put(&self, rec: &SessionRecord) -> std::io::Result<()> {
        let mut inner = self.lock();
        if inner.off {
            return Ok(());
        }
        inner.index.insert(rec.session_id, rec.clone());
        inner.append(rec)
    }

    /// Drops a session its device has replaced, so the store holds one
    /// session per device however many handshakes it makes. The file gets
    /// a tombstone line, so reopening it does not bring the session back.
    pub fn forget(&self, id: SessionId) -> std::io::Result<()> {
        let mut inner = self.lock();
        if inner.off || inner.index.remove(&id).is_none() {
            return Ok(());
        }
        inner.append(&Forget { forget: id })
    }

    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rig_proto::{Psk, SessionKeys};

    #[test]
    fn records_survive_reopening_and_the_last_write_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.jsonl");
        let keys = SessionKeys::derive(&Psk([1; 32]), "d", &[1; 16], &[2; 16], 5);
        let mut rec = SessionRecord::new(5, "d", &keys);
        let store = DurableKeys::with_file(&path).unwrap();
        store.put(&rec).unwrap();
        rec.rx_counter = 9;
        store.put(&rec).unwrap();
        drop(store);
        let reopened = DurableKeys::with_file(&path).unwrap();
        assert_eq!(reopened.get(5), Some(rec));
        assert_eq!(reopened.len(), 1);
    }

    #[test]
    fn a_forgotten_session_stays_forgotten_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.jsonl");
        let keys = SessionKeys::derive(&Psk([1; 32]), "d", &[1; 16], &[2; 16], 5);
        let store = DurableKeys::with_file(&path).unwrap();
        store.put(&SessionRecord::new(5, "d", &keys)).unwrap();
        store.put(&SessionRecord::new(6, "d", &keys)).unwrap();
        store.forget(5).unwrap();
        assert_eq!(store.get(5), None);
        drop(store);
        let reopened = DurableKeys::with_file(&path).unwrap();
        assert_eq!(reopened.get(5), None);
        assert!(reopened.get(6).is_some());
        assert_eq!(reopened.len(), 1);
    }

    #[test]
    fn a_store_that_is_off_keeps_nothing() {
        let keys = SessionKeys::derive(&Psk([1; 32]), "d", &[1; 16], &[2; 16], 5);
        let store = DurableKeys::off();
        store.put(&SessionRecord::new(5, "d", &keys)).unwrap();
        assert_eq!(store.get(5), None);
        assert!(store.is_empty());
    }
}
