//! A simulated board's UART as a pseudo-terminal, so the rig reads it through
//! the same serial driver it uses for hardware.
//!
//! The board holds the master side while it has power, like a USB CDC
//! console that exists only while the board is powered: power on creates a
//! new pty and points a stable symlink (`<run>/cell-N/consoles/<id>`) at its
//! slave; power off closes the master, so a reader sees the link break, and
//! removes the symlink, so reopening by path fails with `NotFound` until the
//! board is powered again.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serialport::{SerialPort, TTYPort};
use tokio::sync::mpsc;

/// The board's end of a live pty.
pub(crate) struct PtyLink {
    master: TTYPort,
    // Held so the slave exists even before the rig opens it, as a USB
    // device node exists before a host opens it.
    _slave: TTYPort,
    link: PathBuf,
    stop: Arc<AtomicBool>,
}

/// Puts a tty in raw mode: no echo, no line editing, no `\n` translation.
pub(crate) fn make_raw(port: &impl AsRawFd) -> std::io::Result<()> {
    let fd = port.as_raw_fd();
    // SAFETY: plain termios calls on a file descriptor we own; the struct is
    // fully initialised by tcgetattr before use.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl PtyLink {
    /// Creates the pty, points `link` at its slave and forwards bytes the
    /// rig writes to `input`.
    pub(crate) fn open(link: &Path, input: mpsc::UnboundedSender<Vec<u8>>) -> std::io::Result<PtyLink> {
        let (mut master, slave) = TTYPort::pair().map_err(std::io::Error::other)?;
        make_raw(&slave)?;

        let name = slave
            .name()
            .ok_or_else(|| std::io::Error::other("pty slave has no name"))?;
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&name, link)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = master.try_clone_native().map_err(std::io::Error::other)?;
        reader
            .set_timeout(Duration::from_millis(100))
            .map_err(std::io::Error::other)?;
        // Writes must not stall the board's runtime if nobody reads.
        master
            .set_timeout(Duration::from_millis(5))
            .map_err(std::io::Error::other)?;
        let stop_r = stop.clone();
        std::thread::Builder::new().name("sim-uart-rx".into()).spawn(move || {
            let mut buf = [0u8; 256];
            // The clone keeps the master open: stop when power goes.
            while !stop_r.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        if input.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        Ok(PtyLink {
            master,
            _slave: slave,
            link: link.to_owned(),
            stop,
        })
    }

    /// Writes console output. A full buffer (nobody reading) drops bytes, as a
    /// UART does; the board never blocks on its console.
    pub(crate) fn write(&mut self, data: &[u8]) {
        let _ = self.master.write_all(data);
    }
}

impl Drop for PtyLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.link);
    }
}
