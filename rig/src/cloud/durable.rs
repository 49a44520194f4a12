//! The durable key store behind the `durable` mitigation: every session the
//! cloud creates or advances is written through to it, and it survives
//! anything done to the session cache.
//!
//! Here it is a map owned by the cloud. A production cloud would use a
//! replicated database (the point is only that it is not the cache that
//! crashed); what matters to the bench is that it is independent of the
//! cache's lifetime.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rig_proto::SessionId;

use crate::cache::SessionRecord;

#[derive(Clone, Default)]
pub struct DurableKeys {
    inner: Arc<Mutex<BTreeMap<SessionId, SessionRecord>>>,
}

impl DurableKeys {
    pub fn new() -> DurableKeys {
        DurableKeys::default()
    }

    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    pub fn put(&self, rec: &SessionRecord) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.session_id, rec.clone());
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
