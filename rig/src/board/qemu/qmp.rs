//! A QMP client (QEMU Machine Protocol: one JSON object per line over a
//! Unix socket). Commands carry an `id` and are answered by it; events
//! (`RESET`, `STOP`, `SHUTDOWN`, ...) go to a callback. Small enough that a
//! crate would bring more than it saves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::QemuError;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected, negotiated QMP session.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiters: Waiters,
    next_id: std::sync::atomic::AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How long QEMU gets to answer one command.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

impl Qmp {
    /// Connects to `path`, reads the greeting and leaves capabilities
    /// negotiation mode. `on_event(name, data)` sees every event.
    pub async fn connect(path: &Path, on_event: impl Fn(&str, &Value) + Send + 'static) -> Result<Qmp, QemuError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| QemuError::Qmp(format!("cannot connect to {}: {e}", path.display())))?;
        let (rd, wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        let greeting = tokio::time::timeout(ANSWER_WITHIN, lines.next_line())
            .await
            .map_err(|_| QemuError::Qmp("no greeting within 10 s".into()))?
            .map_err(|e| QemuError::Qmp(format!("reading the greeting: {e}")))?
            .unwrap_or_default();
        if !greeting.contains("\"QMP\"") {
            return Err(QemuError::Qmp(format!("unexpected greeting: {greeting}")));
        }
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let w = waiters.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(name) = v.get("event").and_then(Value::as_str) {
                    on_event(name, v.get("data").unwrap_or(&Value::Null));
                } else if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    let waiter = w.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(wr),
            waiters,
            next_id: std::sync::atomic::AtomicU64::new(1),
            reader,
        };
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs one command; its `return` value, or its error as [`QemuError::Qmp`].
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QemuError> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let mut msg = json!({ "execute": command, "id": id });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .lock()
            .await
            .write_all(line.as_bytes())
            .await
            .map_err(|e| QemuError::Qmp(format!("{command}: {e}")))?;
        let answer = tokio::time::timeout(ANSWER_WITHIN, rx)
            .await
            .map_err(|_| QemuError::Qmp(format!("{command}: no answer within 10 s")))?
            .map_err(|_| QemuError::Qmp(format!("{command}: QEMU closed the monitor")))?;
        if let Some(err) = answer.get("error") {
            return Err(QemuError::Qmp(format!("{command}: {err}")));
        }
        Ok(answer.get("return").cloned().unwrap_or(Value::Null))
    }

    /// The host side of a chardev (`/dev/pts/N` for a pty).
    pub async fn chardev_path(&self, label: &str) -> Result<String, QemuError> {
        let list = self.execute("query-chardev", json!({})).await?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|c| c.get("label").and_then(Value::as_str) == Some(label))
            .and_then(|c| c.get("filename").and_then(Value::as_str))
            .and_then(|f| f.strip_prefix("pty:"))
            .map(str::to_owned)
            .ok_or_else(|| QemuError::Qmp(format!("no pty chardev `{label}` in query-chardev")))
    }
}
