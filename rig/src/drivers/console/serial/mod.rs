//! The serial console driver, for hardware (`/dev/serial/by-id/...`) and for
//! simulated boards on pseudo-terminals alike.
//!
//! A board's USB console vanishes when the board loses power and comes back
//! (possibly as another `/dev/ttyACM*`) when it is powered again. The driver
//! therefore owns a dedicated thread (serialport is blocking) that opens the
//! port *by path*, reads with a short timeout, and on any failure — `EIO` or
//! `BrokenPipe` from a read, `NotFound` on reopen — reports the link gone and
//! keeps retrying until the path opens again. Writes are queued to the same
//! thread, so reading and writing never contend for the port.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::drivers::{Availability, Check, Console, DriverError};

/// `console: { port: /dev/serial/by-id/..., baud: 115200 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialCfg {
    /// Use the stable `/dev/serial/by-id/...` path: `/dev/ttyACM0` changes
    /// when a board re-enumerates.
    pub port: String,
    #[serde(default)]
    pub baud: Option<u32>,
}

impl SerialCfg {
    pub fn baud(&self) -> u32 {
        self.baud.unwrap_or(115_200)
    }

    pub fn check(&self, device: &str) -> Check {
        Check {
            what: format!("{device}: console {}", self.port),
            availability: Availability::of_path(&self.port, "present"),
        }
    }
}

/// Failures of a serial console.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("console thread for {0} ended")]
    ThreadEnded(String),
    #[error("console {path}: write failed: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("console {0} is not open (board unplugged or unpowered?)")]
    NotOpen(String),
    #[error("console reader has stopped")]
    ReaderStopped,
}

/// How often a vanished port is looked for again.
const REOPEN_EVERY: Duration = Duration::from_millis(50);
/// Read timeout; also the longest a queued write waits.
const POLL: Duration = Duration::from_millis(50);
/// Chunks read but not yet taken by the console's reader. When it falls
/// behind, the port thread waits and the board's output backs up in the
/// kernel's tty buffer, instead of in this process without bound (an
/// unbounded queue grew `rig console` by ~400 bytes per line of a flood).
/// One: every chunk queued here is latency in a flood (`rig bench console`:
/// 4 chunks of 16 KiB gave a p99 of 3.2–3.9 ms, 1 gave 2.3–3.0 ms).
const QUEUED_CHUNKS: usize = 1;

enum Chunk {
    Data(Vec<u8>),
    Gone,
}

/// A serial console reopened by path whenever it comes back.
type PendingWrite = (Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

pub struct SerialConsole {
    rx: mpsc::Receiver<Chunk>,
    tx_write: std_mpsc::Sender<PendingWrite>,
    pending: Vec<u8>,
    path: PathBuf,
    received: Arc<AtomicU64>,
}

impl SerialConsole {
    /// Starts watching `path`. The port need not exist yet.
    pub fn open(path: &Path, baud: u32) -> SerialConsole {
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let (tx_write, rx_write) = std_mpsc::channel::<PendingWrite>();
        let p = path.to_owned();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("console {}", path.display()))
            .spawn(move || pump(&p, baud, &tx, &rx_write, &counter));
        if let Err(e) = spawned {
            tracing::error!("cannot start the console thread for {}: {e}", path.display());
        }
        SerialConsole {
            rx,
            tx_write,
            pending: Vec::new(),
            path: path.to_owned(),
            received,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes read from the port so far (over every link), counted by the
    /// port thread as it reads them.
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }
}

/// The port thread: open, read, write, and on failure start over. Ends when
/// the `SerialConsole` is dropped.
fn pump(
    path: &Path,
    baud: u32,
    tx: &mpsc::Sender<Chunk>,
    writes: &std_mpsc::Receiver<PendingWrite>,
    received: &AtomicU64,
) {
    let mut reported_gone = false;
    // A flood is read in chunks of many lines: each chunk costs a wakeup of
    // the console task, which a chunk per line made most of the flood's
    // cost. Not larger: a chunk held here and one queued are latency (16 KiB
    // chunks gave `rig bench console` a p99 of 2.2-2.4 ms, 4 KiB 1.6-2.1).
    let mut buf = vec![0u8; 4 * 1024];
    loop {
        let port = serialport::new(path.to_string_lossy(), baud)
            .timeout(POLL)
            .open_native();
        let mut port = match port {
            Ok(p) => p,
            Err(_) => {
                // Usually NotFound (unplugged, unpowered) or a permission
                // problem; either way the path is retried.
                if !reported_gone {
                    reported_gone = true;
                    if tx.blocking_send(Chunk::Gone).is_err() {
                        return;
                    }
                }
                if matches!(writes.try_recv(), Err(std_mpsc::TryRecvError::Disconnected)) {
                    return;
                }
                std::thread::sleep(REOPEN_EVERY);
                continue;
            }
        };
        // Exclusive access would lock out `rig console` on the same board.
        let _ = port.set_exclusive(false);
        loop {
            match writes.try_recv() {
                Ok((data, ack)) => {
                    let r = port.write_all(&data).and_then(|_| port.flush());
                    let _ = ack.send(r);
                }
                Err(std_mpsc::TryRecvError::Disconnected) => return,
                Err(std_mpsc::TryRecvError::Empty) => {}
            }
            match port.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    reported_gone = false;
                    received.fetch_add(n as u64, Ordering::Relaxed);
                    if tx.blocking_send(Chunk::Data(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    // EIO or BrokenPipe: the other end went away.
                    if !reported_gone && tx.blocking_send(Chunk::Gone).is_err() {
                        return;
                    }
                    reported_gone = true;
                    break;
                }
            }
        }
        drop(port);
        std::thread::sleep(REOPEN_EVERY);
    }
}

#[async_trait]
impl Console for SerialConsole {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, DriverError> {
        if self.pending.is_empty() {
            // Between chunks, let whatever consumes the lines run: in a flood
            // the next chunk is always ready, and on one thread the reader
            // would otherwise run until tokio's budget (128 chunks) runs out.
            tokio::task::yield_now().await;
            match self.rx.recv().await {
                Some(Chunk::Data(d)) => self.pending = d,
                Some(Chunk::Gone) => return Err(DriverError::LinkGone),
                None => return Err(SerialError::ThreadEnded(self.path.display().to_string()).into()),
            }
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    /// Completes when the bytes are written; fails if the port stays absent.
    async fn write(&mut self, data: &[u8]) -> Result<(), DriverError> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx_write
            .send((data.to_vec(), ack))
            .map_err(|_| SerialError::ThreadEnded(self.path.display().to_string()))?;
        let path = self.path.display().to_string();
        match tokio::time::timeout(Duration::from_secs(5), done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(SerialError::Write { path, source }.into()),
            Ok(Err(_)) => Err(SerialError::ThreadEnded(path).into()),
            Err(_) => Err(SerialError::NotOpen(path).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serialport::{SerialPort, TTYPort};

    use super::*;
    use crate::drivers::console::{PatternSlot, watch};
    use crate::timeline::{EventKind, Timeline};

    /// A pty whose slave is reachable at `link`, as a powered board's is.
    fn plug(link: &Path) -> (TTYPort, TTYPort) {
        let (master, slave) = TTYPort::pair().unwrap();
        crate::board::sim::pty::make_raw(&slave).unwrap();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(slave.name().unwrap(), link).unwrap();
        (master, slave)
    }

    async fn wait_for_line(tl: &Timeline, text: &str) {
        let found = tl
            .wait(
                0,
                Some(Duration::from_secs(10)),
                |e| matches!(&e.kind, EventKind::ConsoleLine { line, .. } if line == text),
            )
            .await;
        assert!(found, "line {text:?} never arrived");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reattaches_by_path_after_the_pty_vanishes_mid_line() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("console");
        let (mut m1, s1) = plug(&link);
        let tl = Timeline::in_memory();
        let slot: PatternSlot = Arc::new(Mutex::new(None));
        let console = SerialConsole::open(&link, 115_200);
        let received = console.received();
        let _h = watch("dev".into(), Box::new(console), tl.clone(), slot);
        m1.write_all(b"before\r\n").unwrap();
        wait_for_line(&tl, "before").await;

        // Power goes mid-line: the pty and its path vanish. First wait until
        // the driver has read the half line, or the hangup could discard it
        // unread.
        let before = received.load(Ordering::Relaxed);
        m1.write_all(b"cut mid-li").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::Relaxed) < before + 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "the driver never read the half line"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::remove_file(&link).unwrap();
        drop(m1);
        drop(s1);
        // Once the half line is out as a partial line, the driver has noticed
        // the link is gone and the gap is running: hold it for 400 ms.
        let found = tl
            .wait(0, Some(Duration::from_secs(10)), |e| {
                matches!(&e.kind, EventKind::ConsoleLine { partial: true, .. })
            })
            .await;
        assert!(found, "the half line was never emitted as partial");
        tokio::time::sleep(Duration::from_millis(400)).await;

        // Power is back: a new pty (another /dev/pts/N) behind the same path.
        let (mut m2, _s2) = plug(&link);
        for i in 0..20 {
            m2.write_all(format!("after {i}\r\n").as_bytes()).unwrap();
        }
        wait_for_line(&tl, "after 19").await;

        let evs = tl.snapshot();
        let lines: Vec<(String, bool)> = evs
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ConsoleLine { line, partial } => Some((line.clone(), *partial)),
                _ => None,
            })
            .collect();
        let mut expected = vec![("before".to_string(), false), ("cut mid-li".to_string(), true)];
        expected.extend((0..20).map(|i| (format!("after {i}"), false)));
        assert_eq!(
            lines, expected,
            "the partial line is kept and marked, and nothing after reattaching is lost"
        );
        let gap = evs
            .iter()
            .find_map(|e| match e.kind {
                EventKind::ConsoleGap { ms } => Some((e.seq, ms)),
                _ => None,
            })
            .expect("a console.gap event");
        assert!(gap.1 >= 400, "the gap lasted as long as the pty was gone: {} ms", gap.1);
        let first_after = evs
            .iter()
            .find(|e| matches!(&e.kind, EventKind::ConsoleLine { line, .. } if line == "after 0"))
            .unwrap();
        assert!(gap.0 < first_after.seq, "the gap is recorded where it happened");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_reach_the_board() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("console");
        let (mut master, _slave) = plug(&link);
        let mut console = SerialConsole::open(&link, 115_200);
        console.write(b"status\n").await.unwrap();
        master.set_timeout(Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; 7];
        master.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"status\n");
    }
}
