//! Emulated boards: each device is one `qemu-system-arm` process running a
//! real firmware image (default machine `mps2-an385`, a Cortex-M3).
//!
//! - **Power** is the process's lifetime. `on` starts QEMU paused (`-S`),
//!   attaches the console and the modem link, then continues it over QMP,
//!   so not one byte of early output is lost; `off` is SIGKILL. QEMU dies
//!   with the rig (`PR_SET_PDEATHSIG`) and sits in its own process group, so
//!   a Ctrl-C reaches the rig, which tears down in order.
//! - **Flash** writes the image into the board's flash file. Like a debug
//!   probe, the flash step then resets the board into it (bench
//!   `qemu: { flash_resets: false }` leaves a running board alone: the new
//!   image takes effect at its next reset or power-on, as real flash does).
//! - **Console**: UART0 on a pty, read through the serial driver by the
//!   stable link `<cell>/qemu/<id>/console`, which exists only while the
//!   board has power (a USB CDC console). QEMU's chardev log
//!   (`console.log` beside it) is the lossless record.
//! - **Soft reset** is QMP `system_reset`: RAM survives, so the firmware's
//!   retained session does. A reset that must bring in a newly flashed image
//!   restarts the process instead (QEMU reloads its image only at start);
//!   the new image discards retained RAM anyway. (So after a flash the board
//!   is a new process: `power.off` names the pid it kills, which can differ
//!   from the one `power.on` named.) Resets the firmware makes
//!   itself (SYSRESETREQ) arrive as QMP `RESET` events: `device.reset`.
//! - **Network**: UART1 is a socket chardev carrying SLIP-framed datagrams
//!   ([`slip`]); the rig relays them over the board's own UDP socket, so
//!   the cloud sees one address per board and counts the protocol's bytes.

pub mod fixture;
pub mod provision;
pub mod qmp;
pub mod slip;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rig_proto::Psk;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{BoardError, BoardKind, BuildEnv, Built, Drivers};
use crate::bench::{Clock, Device};
use crate::cloud::transport::Datagram;
use crate::drivers::console::serial::SerialConsole;
use crate::drivers::console::{self, PatternSlot};
use crate::drivers::{Availability, Check, DriverError, Flasher, Power, Reset};
use crate::fixture::Fixture;
use crate::runner::device::DeviceHandle;
use crate::timeline::{EventKind, Source, Timeline};

/// The bench file's `qemu:` section (all optional).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuCfg {
    #[serde(default = "default_binary")]
    pub binary: String,
    /// Overrides the fixtures' `machine:`.
    #[serde(default)]
    pub machine: Option<String>,
    /// Whether the flash step resets the board into the new image.
    #[serde(default = "yes")]
    pub flash_resets: bool,
    /// More QEMU arguments for every board (`-icount`, `-d`, ...).
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl Default for QemuCfg {
    fn default() -> QemuCfg {
        QemuCfg {
            binary: default_binary(),
            machine: None,
            flash_resets: true,
            extra_args: Vec::new(),
        }
    }
}

fn default_binary() -> String {
    "qemu-system-arm".into()
}
fn yes() -> bool {
    true
}

/// The default machine: UART0 at 0x40004000 (console), UART1 at 0x40005000 (modem).
pub const DEFAULT_MACHINE: &str = "mps2-an385";
/// The Debian package that has the emulator.
const QEMU_PACKAGE: &str = "qemu-system-arm";

/// Failures of an emulated board.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "{binary} is not installed (not found on PATH): install Debian's `{QEMU_PACKAGE}` package (apt-get install {QEMU_PACKAGE})"
    )]
    NotInstalled { binary: String },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited at start ({status}); its log {log}: {tail}")]
    ExitedAtStart { status: String, log: String, tail: String },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Image(String),
    #[error("fixture `{0}` has no `qemu:` section: it cannot run on an emulated board")]
    NoQemuSection(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// QEMU's option syntax: a comma in a value is written twice.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// What a board never flashed runs: initial SP, reset vector, then
/// `wfi; b.n wfi` (Thumb) at 0x8.
const BLANK_IMAGE: [u8; 12] = [0x00, 0x10, 0x00, 0x20, 0x09, 0x00, 0x00, 0x00, 0x30, 0xbf, 0xfd, 0xe7];

/// What the flash holds: the fixture and the image bytes' SHA-256.
#[derive(Clone)]
struct Flashed {
    fixture: Arc<Fixture>,
    sha256: String,
}

/// A running QEMU and what is attached to it.
struct Running {
    pid: u32,
    qmp: qmp::Qmp,
    /// Holds the pty's slave open so QEMU's writes are kept in the pty
    /// until the console driver reads them (QEMU drops output to a pty
    /// nobody has open).
    _holder: std::fs::File,
    relay: JoinHandle<()>,
    /// Tells the watcher to kill the process (a power-off, not a crash).
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    /// Resolves when the process is gone.
    gone: Option<tokio::sync::oneshot::Receiver<()>>,
    exited: Arc<std::sync::atomic::AtomicBool>,
    /// The image it started with.
    image: Option<String>,
}

impl Running {
    fn alive(&self) -> bool {
        !self.exited.load(Ordering::SeqCst)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.relay.abort();
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }
}

/// Owns the QEMU process: kills it when told, and reports it to the runner
/// (a rig fault that ends the cell) if it exits on its own (a crash, a fatal
/// lockup): the board is gone and the run must not be judged as if the
/// firmware had gone quiet.
fn watch(
    mut child: tokio::process::Child,
    id: String,
    log: PathBuf,
    timeline: Timeline,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = exited.clone();
    let pid = child.id().unwrap_or(0);
    tokio::spawn(async move {
        tokio::select! {
            _ = kill_rx => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                timeline.board_failed(format!(
                    "{id}: the emulator (pid {pid}) exited on its own ({status}); its log {}: {}",
                    log.display(),
                    tail(&log)
                ));
            }
        }
        flag.store(true, Ordering::SeqCst);
        let _ = gone_tx.send(());
    });
    (kill_tx, gone_rx, exited)
}

/// One emulated board.
pub struct QemuBoard {
    id: String,
    psk: Psk,
    cfg: QemuCfg,
    /// `<cell>/qemu/<id>`: flash, provisioning page, console log, QEMU's log.
    dir: PathBuf,
    /// A private short folder for the Unix sockets (a socket path must fit
    /// in 108 bytes; run folders can be deeper than that).
    socks: tempfile::TempDir,
    console_link: PathBuf,
    net: Arc<dyn Datagram>,
    cloud: SocketAddr,
    timeline: Timeline,
    state: tokio::sync::Mutex<State>,
    pid: AtomicU32,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    flashed: Option<Flashed>,
}

impl QemuBoard {
    fn flash_file(&self) -> PathBuf {
        self.dir.join("flash.bin")
    }

    fn machine(&self, f: Option<&Flashed>) -> String {
        self.cfg
            .machine
            .clone()
            .or_else(|| f.and_then(|f| f.fixture.qemu.as_ref()?.machine.clone()))
            .unwrap_or_else(|| DEFAULT_MACHINE.into())
    }

    /// Starts QEMU with what the flash holds; returns when the guest runs.
    async fn start(&self, st: &mut State) -> Result<(), QemuError> {
        let flashed = st.flashed.clone();
        let q = flashed.as_ref().and_then(|f| f.fixture.qemu.clone());
        let qmp_sock = self.socks.path().join("qmp.sock");
        let modem_sock = self.socks.path().join("modem.sock");
        let _ = std::fs::remove_file(&qmp_sock);
        let _ = std::fs::remove_file(&modem_sock);
        let modem = tokio::net::UnixListener::bind(&modem_sock).map_err(io("modem socket"))?;

        let (console_uart, modem_uart) = q.as_ref().map_or((0, 1), |q| (q.console_uart, q.modem_uart));
        let mut args: Vec<String> = vec![
            "-M".into(),
            self.machine(flashed.as_ref()),
            "-S".into(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-nic".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt_path(&qmp_sock)),
            "-chardev".into(),
            format!(
                "pty,id=con,logfile={},logappend=on",
                opt_path(&self.dir.join("console.log"))
            ),
            "-chardev".into(),
            format!("socket,id=modem,path={}", opt_path(&modem_sock)),
        ];
        for uart in 0..=console_uart.max(modem_uart) {
            args.push("-serial".into());
            args.push(if uart == console_uart {
                "chardev:con".into()
            } else if uart == modem_uart {
                "chardev:modem".into()
            } else {
                "null".into()
            });
        }
        if flashed.is_none() {
            // Nothing flashed: an idle loop. (Erased flash would lock the
            // core up, which QEMU treats as fatal and exits.)
            let blank = self.dir.join("blank.bin");
            crate::fsutil::write_atomic(&blank, &BLANK_IMAGE, 0o600).map_err(|e| QemuError::Io {
                what: "blank image".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            args.extend(["-kernel".into(), opt_path(&blank)]);
        }
        if let (Some(f), Some(q)) = (&flashed, &q) {
            let file = opt_path(&self.flash_file());
            match q.load {
                fixture::Load::Kernel => args.extend(["-kernel".into(), file]),
                fixture::Load::Bios => args.extend(["-bios".into(), file]),
                fixture::Load::Loader(a) => {
                    args.extend(["-device".into(), format!("loader,file={file},addr={a}")]);
                }
            }
            if let (Some(addr), Some(params)) = (q.provision, &q.params) {
                let mut entropy = [0u8; 32];
                getrandom::fill(&mut entropy).map_err(|e| QemuError::Io {
                    what: "OS random numbers".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let page = provision::page(&self.id, &self.psk, params, entropy);
                let path = self.dir.join("provision.bin");
                crate::fsutil::write_atomic(&path, &page, 0o600).map_err(|e| QemuError::Io {
                    what: "provisioning page".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                args.extend(["-device".into(), format!("loader,file={},addr={addr}", opt_path(&path))]);
            }
            tracing::debug!("{}: booting {} ({})", self.id, f.fixture.name, f.sha256);
        }
        args.extend(self.cfg.extra_args.iter().cloned());

        let log_path = self.dir.join("qemu.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&log_path)
            .map_err(io(format!("{}", log_path.display())))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.args(&args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io("qemu.log"))?)
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl, setpgid and umask are async-signal-safe and touch
        // only the child; this runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setpgid(0, 0);
                libc::umask(0o077);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                QemuError::NotInstalled {
                    binary: self.cfg.binary.clone(),
                }
            } else {
                QemuError::Spawn {
                    binary: self.cfg.binary.clone(),
                    source: e,
                }
            }
        })?;
        let pid = child.id().unwrap_or(0);

        // QMP comes up during QEMU's start; wait for the socket.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let qmp = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(QemuError::ExitedAtStart {
                    status: status.to_string(),
                    log: log_path.display().to_string(),
                    tail: tail(&log_path),
                });
            }
            if qmp_sock.exists() {
                let id = self.id.clone();
                let timeline = self.timeline.clone();
                match qmp::Qmp::connect(&qmp_sock, move |name, data| on_qmp_event(&timeline, &id, name, data)).await {
                    Ok(q) => break q,
                    Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(QemuError::Qmp(format!(
                    "no monitor socket after 15 s; see {}",
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), modem.accept())
            .await
            .map_err(|_| QemuError::Qmp("QEMU did not connect the modem UART within 10 s".into()))?
            .map_err(io("modem socket"))?;
        let relay = tokio::spawn(relay(stream, self.net.clone(), self.cloud));

        let pty = qmp.chardev_path("con").await?;
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&pty)
            .map_err(io(format!("console pty {pty}")))?;
        crate::board::sim::pty::make_raw(&holder).map_err(io(format!("console pty {pty}")))?;
        // The pty is created group-writable for `tty`; nobody else may
        // write lines into a console the rig derives events from.
        std::fs::set_permissions(&pty, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io(format!("console pty {pty}")))?;
        point_link(&self.console_link, Path::new(&pty)).map_err(io("console link"))?;
        qmp.execute("cont", json!({})).await?;
        self.pid.store(pid, Ordering::SeqCst);
        let (kill, gone, exited) = watch(child, self.id.clone(), log_path, self.timeline.clone());
        st.running = Some(Running {
            pid,
            qmp,
            _holder: holder,
            relay,
            kill: Some(kill),
            gone: Some(gone),
            exited,
            image: flashed.map(|f| f.sha256),
        });
        Ok(())
    }

    /// SIGKILL, like pulling the plug; the console link goes with it.
    async fn stop(&self, st: &mut State) {
        if let Some(mut r) = st.running.take() {
            let _ = std::fs::remove_file(&self.console_link);
            if let Some(k) = r.kill.take() {
                let _ = k.send(());
            }
            if let Some(gone) = r.gone.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), gone).await;
            }
            tracing::debug!("{}: qemu pid {} killed", self.id, r.pid);
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    async fn set_power(&self, on: bool) -> Result<(), QemuError> {
        let mut st = self.state.lock().await;
        let alive = st.running.as_ref().is_some_and(Running::alive);
        match (on, alive) {
            (true, true) => Ok(()),
            (true, false) => {
                self.stop(&mut st).await;
                self.start(&mut st).await
            }
            (false, _) => {
                self.stop(&mut st).await;
                Ok(())
            }
        }
    }

    async fn flash(&self, fixture: &Fixture) -> Result<String, QemuError> {
        let q = fixture
            .qemu
            .as_ref()
            .ok_or_else(|| QemuError::NoQemuSection(fixture.name.clone()))?;
        if let Some(why) = q.missing_image(&fixture.name, &fixture.dir) {
            return Err(QemuError::Image(why));
        }
        let path = fixture.dir.join(&q.image);
        let bytes = std::fs::read(&path).map_err(io(path.display().to_string()))?;
        let sha256 = crate::fixture::hex_sha256(&bytes);
        crate::fsutil::write_atomic(&self.flash_file(), &bytes, 0o600).map_err(|e| QemuError::Io {
            what: "flash file".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut st = self.state.lock().await;
        st.flashed = Some(Flashed {
            fixture: Arc::new(fixture.clone()),
            sha256: sha256.clone(),
        });
        if st.running.is_some() && self.cfg.flash_resets {
            self.stop(&mut st).await;
            self.start(&mut st).await?;
        }
        Ok(sha256)
    }

    async fn soft_reset(&self) -> Result<(), QemuError> {
        let mut st = self.state.lock().await;
        let flashed = st.flashed.as_ref().map(|f| f.sha256.clone());
        let Some(r) = st.running.as_ref() else {
            return Err(QemuError::Qmp("the board has no power".into()));
        };
        if r.image != flashed {
            // QEMU loads images only at start: a reset into a new image
            // is a new process.
            self.stop(&mut st).await;
            return self.start(&mut st).await;
        }
        r.qmp.execute("system_reset", json!({})).await.map(|_| ())
    }
}

/// QMP events worth a timeline entry: a reset the guest asked for.
fn on_qmp_event(timeline: &Timeline, id: &str, name: &str, data: &serde_json::Value) {
    if name == "RESET" && data.get("guest").and_then(serde_json::Value::as_bool) == Some(true) {
        let reason = data
            .get("reason")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("guest-reset")
            .to_owned();
        timeline.emit_device(id, Source::Reset, EventKind::DeviceReset { reason });
    }
}

/// The last lines of QEMU's log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Points `link` at `target`, replacing what was there (never following it).
fn point_link(link: &Path, target: &Path) -> std::io::Result<()> {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// Carries datagrams between the modem UART and the board's UDP socket
/// until QEMU closes the link.
async fn relay(stream: tokio::net::UnixStream, net: Arc<dyn Datagram>, cloud: SocketAddr) {
    let (mut rd, mut wr) = stream.into_split();
    let up = {
        let net = net.clone();
        async move {
            let mut dec = slip::Decoder::new(rig_proto::MAX_DATAGRAM);
            let mut buf = vec![0u8; 8192];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        for d in dec.feed(&buf[..n]) {
                            let _ = net.send_to(&d, cloud).await;
                        }
                    }
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; rig_proto::MAX_DATAGRAM];
        loop {
            match net.recv_from(&mut buf).await {
                Ok((n, from)) if from == cloud => {
                    if wr.write_all(&slip::encode(&buf[..n])).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

struct QemuPower(Arc<QemuBoard>);

#[async_trait]
impl Power for QemuPower {
    async fn set(&self, on: bool) -> Result<(), DriverError> {
        Ok(self.0.set_power(on).await?)
    }
    fn pid(&self) -> Option<u32> {
        match self.0.pid.load(Ordering::SeqCst) {
            0 => None,
            p => Some(p),
        }
    }
    fn describe(&self) -> String {
        format!("the {} process of {}", self.0.cfg.binary, self.0.id)
    }
}

struct QemuFlash(Arc<QemuBoard>);

#[async_trait]
impl Flasher for QemuFlash {
    async fn flash(&self, fixture: &Fixture) -> Result<Option<String>, DriverError> {
        Ok(Some(self.0.flash(fixture).await?))
    }
    fn describe(&self) -> String {
        format!("the flash file of {}", self.0.id)
    }
}

struct QemuReset(Arc<QemuBoard>);

#[async_trait]
impl Reset for QemuReset {
    async fn soft_reset(&self) -> Result<(), DriverError> {
        Ok(self.0.soft_reset().await?)
    }
}

/// The `qemu` board kind.
#[derive(Debug)]
pub struct Qemu;

impl BoardKind for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn claims(&self, board: &str) -> bool {
        board == "qemu"
    }

    fn derives_key(&self) -> bool {
        true
    }

    fn runs_on(&self, clock: Clock) -> bool {
        clock == Clock::Real
    }

    fn physical(&self) -> bool {
        false
    }

    fn validate(&self, id: &str, _board: &str, drivers: &Drivers) -> Vec<String> {
        drivers
            .present()
            .into_iter()
            .map(|s| format!("device `{id}` is an emulated board: its {s} is QEMU's, so it takes no `{s}:` section"))
            .collect()
    }

    fn check_fixture(&self, d: &Device, f: &Fixture) -> Option<String> {
        match &f.qemu {
            None => Some(format!(
                "fixture `{}` has no `qemu:` section, so it cannot run on emulated board `{}`",
                f.name, d.id
            )),
            Some(q) => q.missing_image(&f.name, &f.dir),
        }
    }

    fn checks(&self, d: &Device) -> Vec<Check> {
        let qemu = match Availability::of_program(QEMU_PACKAGE) {
            Availability::NotFound(_) => {
                Availability::NotFound(format!("not installed: apt-get install {QEMU_PACKAGE}"))
            }
            found => found,
        };
        let gcc = match Availability::of_program("arm-none-eabi-gcc") {
            Availability::NotFound(_) => Availability::NotFound(
                "not installed (needed to build the firmware images): apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi".into(),
            ),
            found => found,
        };
        vec![
            Check {
                what: format!("{}: emulator {QEMU_PACKAGE}", d.id),
                availability: qemu,
            },
            Check {
                what: format!("{}: firmware toolchain arm-none-eabi-gcc", d.id),
                availability: gcc,
            },
        ]
    }

    fn build(&self, d: &Device, env: &BuildEnv<'_>) -> Result<Built, BoardError> {
        // Absolute: QEMU runs in this folder, and a relative run folder
        // (the default `--out reports`) would be resolved against it.
        let cell_dir =
            std::path::absolute(env.cell_dir).map_err(|e| BoardError::Driver(io("cell folder")(e).into()))?;
        let dir = cell_dir.join("qemu").join(&d.id);
        crate::fsutil::ensure_dir(&cell_dir.join("qemu"), 0o700)
            .and_then(|_| crate::fsutil::ensure_dir(&dir, 0o700))
            .map_err(|e| {
                BoardError::Driver(
                    QemuError::Io {
                        what: format!("{}", dir.display()),
                        source: std::io::Error::other(e.to_string()),
                    }
                    .into(),
                )
            })?;
        let socks = tempfile::Builder::new()
            .prefix("rig-qemu-")
            .tempdir()
            .map_err(|e| BoardError::Driver(io("socket folder")(e).into()))?;
        let net = env.network.board_socket(env.index).map_err(BoardError::Socket)?;
        let board = Arc::new(QemuBoard {
            id: d.id.clone(),
            psk: d.key.clone(),
            cfg: env.bench.qemu.clone(),
            console_link: dir.join("console"),
            dir,
            socks,
            net,
            cloud: env.cloud_addr,
            timeline: env.timeline.clone(),
            state: tokio::sync::Mutex::new(State::default()),
            pid: AtomicU32::new(0),
        });
        let patterns: PatternSlot = Arc::new(std::sync::Mutex::new(None));
        let console = console::watch(
            d.id.clone(),
            Box::new(SerialConsole::open(&board.console_link, 115_200)),
            env.timeline.clone(),
            patterns.clone(),
        );
        let handle = DeviceHandle::new(
            d.id.clone(),
            Some(Box::new(QemuPower(board.clone()))),
            Box::new(QemuFlash(board.clone())),
            Some(Box::new(QemuReset(board.clone()))),
            console,
            patterns,
            env.timeline.clone(),
        );
        Ok(Built {
            handle,
            keep: Some(Box::new(board)),
        })
    }
}

impl Drop for QemuBoard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.console_link);
        // Running's own Drop kills the process.
        if let Ok(mut st) = self.state.try_lock() {
            st.running.take();
        }
    }
}
