//! Simulated boards: the fake that plays real hardware for a whole bench.
//!
//! A [`SimBoard`] has a power input, flash memory, retained RAM, a console and
//! a datagram socket. Whatever fixture is in its flash decides how it behaves
//! ([`firmware`]); it speaks the real protocol to the cloud and prints log
//! lines on its console. It implements the same driver traits as hardware
//! ([`SimPower`], [`SimFlasher`], [`SimReset`], [`SimConsole`]) and never
//! writes to the timeline: the rig observes it from outside, as it would a
//! real board, and nothing here decides a verdict.
//!
//! Retained RAM (holding the session) survives a soft reset and is cleared by
//! power loss and by flashing a new image.

pub mod firmware;
mod kind;
pub(crate) mod pty;

pub use kind::{Sim, SimCfg, SimConsoleKind};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rig_proto::Psk;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use crate::cloud::transport::Datagram;
use crate::drivers::{Console, DriverError, Flasher, Power, Reset};
use crate::fixture::Fixture;

/// A session as firmware keeps it in retained RAM: the protocol's session
/// (keys and counters) and the firmware's own bookkeeping.
#[derive(Debug, Clone)]
pub struct DeviceSession {
    pub session: rig_proto::client::Session,
    /// Connects since the last authenticated reply from the cloud.
    pub unanswered_uses: u32,
}

/// Survives soft reset and sleep; lost on power off.
#[derive(Debug, Clone, Default)]
pub struct Retained {
    pub session: Option<DeviceSession>,
}

/// Why firmware is (re)starting; printed on the console at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootReason {
    PowerOn,
    SoftReset,
    Flashed,
}

impl BootReason {
    fn as_str(self) -> &'static str {
        match self {
            BootReason::PowerOn => "power-on",
            BootReason::SoftReset => "soft-reset",
            BootReason::Flashed => "flash",
        }
    }
}

struct State {
    powered: bool,
    flash: Option<Arc<Fixture>>,
    retained: Retained,
    task: Option<JoinHandle<()>>,
    rng: ChaCha8Rng,
}

pub(crate) struct Inner {
    pub(crate) id: String,
    pub(crate) psk: Psk,
    pub(crate) cloud: SocketAddr,
    pub(crate) socket: Arc<dyn Datagram>,
    pub(crate) time_scale: f64,
    console_out: ConsoleOut,
    state: Mutex<State>,
}

/// Where a board's UART goes.
enum ConsoleOut {
    /// An in-process channel (virtual clock).
    Channel(mpsc::UnboundedSender<Vec<u8>>),
    /// A pseudo-terminal that exists while the board has power.
    Pty {
        link: PathBuf,
        live: Mutex<Option<pty::PtyLink>>,
        input: mpsc::UnboundedSender<Vec<u8>>,
    },
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one console line, as firmware's logger would.
    pub(crate) fn println(&self, boot: Instant, category: &str, level: &str, msg: &str) {
        let ms = boot.elapsed().as_millis();
        let line = format!("{ms:010} [{category}] {level}: {msg}\r\n");
        self.console_write_owned(line.into_bytes());
    }

    /// [`Self::console_write`] of bytes the caller gives up: on the virtual
    /// bench they are sent as they are (a fleet writes millions of lines).
    fn console_write_owned(&self, data: Vec<u8>) {
        match &self.console_out {
            ConsoleOut::Channel(tx) => {
                let _ = tx.send(data);
            }
            ConsoleOut::Pty { .. } => self.console_write(&data),
        }
    }

    fn console_write(&self, data: &[u8]) {
        match &self.console_out {
            // The rig's reader may be gone at shutdown; a board does not care.
            ConsoleOut::Channel(tx) => {
                let _ = tx.send(data.to_vec());
            }
            ConsoleOut::Pty { live, .. } => {
                if let Some(link) = live.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    link.write(data);
                }
            }
        }
    }

    /// Brings the UART's pty up or down with the board's power.
    fn console_power(&self, on: bool) {
        if let ConsoleOut::Pty { link, live, input } = &self.console_out {
            let mut live = live.lock().unwrap_or_else(|p| p.into_inner());
            *live = None;
            if on {
                match pty::PtyLink::open(link, input.clone()) {
                    Ok(l) => *live = Some(l),
                    Err(e) => tracing::error!("{}: cannot create the console pty: {e}", self.id),
                }
            }
        }
    }

    pub(crate) fn with_retained<R>(&self, f: impl FnOnce(&mut Retained) -> R) -> R {
        f(&mut self.lock().retained)
    }

    pub(crate) fn with_rng<R>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> R) -> R {
        f(&mut self.lock().rng)
    }
}

/// One simulated board. Cheap to clone.
#[derive(Clone)]
pub struct SimBoard {
    inner: Arc<Inner>,
}

impl SimBoard {
    /// A board with empty flash, unpowered, its console on an in-process
    /// channel. Returns it and its console.
    pub fn new(
        id: &str,
        psk: Psk,
        seed: u64,
        socket: Arc<dyn Datagram>,
        cloud: SocketAddr,
        time_scale: f64,
    ) -> (SimBoard, SimConsole) {
        let (tx, rx) = mpsc::unbounded_channel();
        let board = Self::build(id, psk, seed, socket, cloud, time_scale, ConsoleOut::Channel(tx));
        let console = SimConsole {
            rx,
            pending: Vec::new(),
            board: board.clone(),
        };
        (board, console)
    }

    /// A board whose console is a pseudo-terminal reachable at `link` while
    /// it has power. Must be called inside a Tokio runtime.
    pub fn with_pty(
        id: &str,
        psk: Psk,
        seed: u64,
        socket: Arc<dyn Datagram>,
        cloud: SocketAddr,
        time_scale: f64,
        link: PathBuf,
    ) -> SimBoard {
        let (input, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let out = ConsoleOut::Pty {
            link,
            live: Mutex::new(None),
            input,
        };
        let board = Self::build(id, psk, seed, socket, cloud, time_scale, out);
        // Commands typed at the console arrive from the pty's reader thread.
        let weak = Arc::downgrade(&board.inner);
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                SimBoard { inner }.console_input(&data);
            }
        });
        board
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        id: &str,
        psk: Psk,
        seed: u64,
        socket: Arc<dyn Datagram>,
        cloud: SocketAddr,
        time_scale: f64,
        console_out: ConsoleOut,
    ) -> SimBoard {
        SimBoard {
            inner: Arc::new(Inner {
                id: id.to_owned(),
                psk,
                cloud,
                socket,
                time_scale,
                console_out,
                state: Mutex::new(State {
                    powered: false,
                    flash: None,
                    retained: Retained::default(),
                    task: None,
                    rng: ChaCha8Rng::seed_from_u64(seed ^ fnv(id)),
                }),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn is_powered(&self) -> bool {
        self.inner.lock().powered
    }

    /// The session in retained RAM (for tests).
    pub fn retained(&self) -> Retained {
        self.inner.lock().retained.clone()
    }

    fn stop_firmware(st: &mut State) {
        if let Some(t) = st.task.take() {
            t.abort();
        }
    }

    fn start_firmware(&self, st: &mut State, reason: BootReason) {
        Self::stop_firmware(st);
        let inner = self.inner.clone();
        let fixture = st.flash.clone();
        st.task = Some(tokio::spawn(async move {
            firmware::run(inner, fixture, reason).await;
        }));
    }

    fn power(&self, on: bool) {
        let mut st = self.inner.lock();
        if on == st.powered {
            return;
        }
        st.powered = on;
        if on {
            self.inner.console_power(true);
            self.start_firmware(&mut st, BootReason::PowerOn);
        } else {
            Self::stop_firmware(&mut st);
            self.inner.console_power(false);
            // Losing power is what clears retained RAM: the only cure for
            // the session-resume loop before the fix.
            st.retained = Retained::default();
        }
    }

    fn soft_reset(&self) -> Result<(), DriverError> {
        let mut st = self.inner.lock();
        if !st.powered {
            return Err(DriverError::NotPowered(format!(
                "{} cannot reset without power",
                self.inner.id
            )));
        }
        self.start_firmware(&mut st, BootReason::SoftReset);
        Ok(())
    }

    async fn flash(&self, fixture: &Fixture) -> Result<(), DriverError> {
        if fixture.behaviour.is_none() {
            return Err(DriverError::Unsupported {
                driver: "simulated board",
                what: format!("running fixture {} (it has no `behaviour:`)", fixture.name),
            });
        }
        {
            let mut st = self.inner.lock();
            if !st.powered {
                return Err(DriverError::NotPowered(format!(
                    "no SWD response from {}: the board has no power (power it on before flashing)",
                    self.inner.id
                )));
            }
            // The debugger halts the core while it writes.
            Self::stop_firmware(&mut st);
        }
        // Time an SWD write of this size takes at ~50 KiB/s, plus attach.
        let ms = 800 + fixture.size * 1000 / (50 * 1024);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let mut st = self.inner.lock();
        if !st.powered {
            return Err(DriverError::NotPowered(format!(
                "{} lost power while flashing",
                self.inner.id
            )));
        }
        st.flash = Some(Arc::new(fixture.clone()));
        // A new image does not trust the old image's retained RAM.
        st.retained = Retained::default();
        self.start_firmware(&mut st, BootReason::Flashed);
        Ok(())
    }

    fn console_input(&self, data: &[u8]) {
        let powered = self.inner.lock().powered;
        if !powered {
            return;
        }
        let text = String::from_utf8_lossy(data);
        for cmd in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let now = Instant::now();
            match cmd {
                "status" => {
                    let st = self.inner.lock();
                    let fw = st
                        .flash
                        .as_ref()
                        .map(|f| format!("{} {}", f.name, f.version))
                        .unwrap_or_else(|| "none".into());
                    let sess = match &st.retained.session {
                        Some(s) => format!("session {:016x} unanswered={}", s.session.id, s.unanswered_uses),
                        None => "no session".into(),
                    };
                    drop(st);
                    self.inner
                        .println(now, "shell", "INFO", &format!("firmware={fw} {sess}"));
                }
                "reset" => {
                    self.inner.println(now, "shell", "INFO", "resetting");
                    let _ = self.soft_reset();
                }
                other => self.inner.println(
                    now,
                    "shell",
                    "WARN",
                    &format!("unknown command `{other}` (try: status, reset)"),
                ),
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self.state.get_mut().ok().and_then(|s| s.task.take()) {
            t.abort();
        }
    }
}

/// Stable per-board seed mixing, independent of hash-map order or pointers.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The board's power input as a [`Power`] driver.
pub struct SimPower(pub SimBoard);

#[async_trait]
impl Power for SimPower {
    async fn set(&self, on: bool) -> Result<(), DriverError> {
        self.0.power(on);
        Ok(())
    }
    fn describe(&self) -> String {
        format!("simulated supply of {}", self.0.id())
    }
}

/// The board's debug port as a [`Flasher`].
pub struct SimFlasher(pub SimBoard);

#[async_trait]
impl Flasher for SimFlasher {
    async fn flash(&self, fixture: &Fixture) -> Result<Option<String>, DriverError> {
        self.0.flash(fixture).await.map(|()| None)
    }
    fn describe(&self) -> String {
        format!("simulated SWD port of {}", self.0.id())
    }
}

/// The board's reset line as a [`Reset`].
pub struct SimReset(pub SimBoard);

#[async_trait]
impl Reset for SimReset {
    async fn soft_reset(&self) -> Result<(), DriverError> {
        self.0.soft_reset()
    }
}

/// The board's UART as a [`Console`].
pub struct SimConsole {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Vec<u8>,
    board: SimBoard,
}

#[async_trait]
impl Console for SimConsole {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, DriverError> {
        if self.pending.is_empty() {
            match self.rx.recv().await {
                Some(data) => self.pending = data,
                None => return Err(DriverError::LinkGone),
            }
        }
        // A chunk longer than the caller's buffer is handed out over reads.
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), DriverError> {
        self.board.console_input(data);
        Ok(())
    }
}
