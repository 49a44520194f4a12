//! The team's cloud as a child process: started in its own process group
//! (so teardown stops whatever it forked) with `PR_SET_PDEATHSIG` (so it
//! dies with the rig, even by SIGKILL), its stdout and stderr journaled line
//! by line as `cloud.log` and kept in `cloud-N.log` in the cell folder, and
//! watched: a cloud that exits while the rig still needs it is a rig fault
//! naming the process and its last lines.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

use super::config::Ready;
use super::logs::Patterns;
use crate::timeline::{EventKind, Source, Timeline};

/// Longest log line kept whole; a longer one is cut (a cloud that never
/// writes a newline cannot grow the rig's memory).
pub const MAX_LOG_LINE: usize = 8 * 1024;
/// Lines quoted when the cloud fails.
const TAIL: usize = 10;
/// How long a stopped cloud has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Spawn<'a> {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_dir: &'a Path,
    /// Which start of the cell's cloud this is (names its log file).
    pub n: u32,
    pub ready: &'a Ready,
    pub ready_timeout: Duration,
    pub upstream: SocketAddr,
    /// Whether the cloud serves TCP on `upstream` (then a port accepting
    /// connections is ready too).
    pub tcp: bool,
    pub timeline: &'a Timeline,
    pub patterns: Arc<Patterns>,
}

type Tail = Arc<Mutex<VecDeque<String>>>;

fn quote(tail: &Tail) -> String {
    let t = tail.lock().unwrap_or_else(|p| p.into_inner());
    if t.is_empty() {
        return "it wrote nothing".into();
    }
    let lines: Vec<String> = t.iter().map(|l| format!("  | {l}")).collect();
    format!("its last lines:\n{}", lines.join("\n"))
}

/// A started cloud process.
pub struct CloudProcess {
    pid: u32,
    command: String,
    stopping: Arc<AtomicBool>,
    /// The monitor has waited for it: its pid may belong to another process now.
    reaped: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    monitor: tokio::task::JoinHandle<()>,
}

impl CloudProcess {
    /// Starts it and waits until it is ready (or says why it is not).
    pub async fn spawn(s: Spawn<'_>) -> Result<CloudProcess, String> {
        let command = s.argv.join(" ");
        let mut cmd = tokio::process::Command::new(&s.argv[0]);
        cmd.args(&s.argv[1..])
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl, setpgid and umask are async-signal-safe and touch no
        // memory of the parent; this runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::umask(0o077);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("cannot start the external cloud: `{}` is not found", s.argv[0])
            } else {
                format!("cannot start the external cloud `{command}`: {e}")
            }
        })?;
        let pid = child.id().unwrap_or(0);
        let log_path = s.log_dir.join(format!("cloud-{}.log", s.n));
        // Its output may hold what it was given: private, and never a planted link.
        let log = crate::fsutil::create_new(&log_path, 0o600)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log = Arc::new(Mutex::new(std::io::BufWriter::new(log)));
        let tail: Tail = Arc::default();
        let ready_re = match s.ready {
            Ready::Log(re) => Some(regex::Regex::new(re).map_err(|e| format!("`ready: {{ log }}`: {e}"))?),
            Ready::Port => None,
        };
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let ready_tx = Arc::new(ready_tx);
        let mut pumps = Vec::new();
        let streams: [(&'static str, Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>); 2] = [
            ("stdout", child.stdout.take().map(|r| Box::new(r) as _)),
            ("stderr", child.stderr.take().map(|r| Box::new(r) as _)),
        ];
        for (stream, reader) in streams {
            let Some(reader) = reader else { continue };
            let p = Pump {
                stream,
                timeline: s.timeline.clone(),
                patterns: s.patterns.clone(),
                log: log.clone(),
                tail: tail.clone(),
                ready_re: ready_re.clone(),
                ready: ready_tx.clone(),
            };
            pumps.push(tokio::spawn(p.run(reader)));
        }
        // Not watched until it is ready: an exit before that is the setup's
        // error, said once by the readiness wait below.
        let stopping = Arc::new(AtomicBool::new(true));
        let reaped = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (exit_tx, mut exit_rx) = watch::channel::<Option<String>>(None);
        let monitor = {
            let stopping = stopping.clone();
            let reaped = reaped.clone();
            let timeline = s.timeline.clone();
            let tail = tail.clone();
            let command = command.clone();
            tokio::spawn(async move {
                let status = tokio::select! {
                    st = child.wait() => st,
                    _ = stop_rx => {
                        signal_group(pid, libc::SIGTERM);
                        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                            Ok(st) => st,
                            Err(_) => {
                                signal_group(pid, libc::SIGKILL);
                                child.wait().await
                            }
                        }
                    }
                };
                reaped.store(true, Ordering::SeqCst);
                // Its last words are read before anyone quotes them.
                for p in pumps {
                    let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
                }
                let how = match status {
                    Ok(st) => describe(st),
                    Err(e) => format!("cannot be waited for: {e}"),
                };
                if !stopping.load(Ordering::SeqCst) {
                    timeline.board_failed(format!(
                        "the external cloud `{command}` (pid {pid}) {how} during the run; {}",
                        quote(&tail)
                    ));
                }
                let _ = exit_tx.send(Some(how));
            })
        };
        let process = CloudProcess {
            pid,
            command: command.clone(),
            stopping,
            reaped,
            stop: Some(stop_tx),
            monitor,
        };
        // Ready: the port is bound or the line was written, whichever the
        // bench asked for, before the timeout and before it exits.
        let deadline = tokio::time::Instant::now() + s.ready_timeout;
        let port = s.upstream.port();
        loop {
            let ready = match s.ready {
                Ready::Log(_) => *ready_rx.borrow_and_update(),
                Ready::Port => {
                    crate::benchmark::storm::sockets_on(port).unwrap_or(0) > 0
                        || (s.tcp
                            && std::net::TcpStream::connect_timeout(&s.upstream, Duration::from_millis(100)).is_ok())
                }
            };
            if ready {
                process.stopping.store(false, Ordering::SeqCst);
                // It may have exited between the check and the flag.
                if exit_rx.borrow_and_update().is_none() {
                    return Ok(process);
                }
                process.stopping.store(true, Ordering::SeqCst);
                break;
            }
            if exit_rx.borrow_and_update().is_some() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let waited = match s.ready {
                    Ready::Log(re) => format!("for a log line matching `{re}`"),
                    Ready::Port if s.tcp => format!("for UDP port {port} to be bound or TCP port {port} to accept"),
                    Ready::Port => format!("for UDP port {port} to be bound"),
                };
                process.stop().await;
                return Err(format!(
                    "the external cloud `{command}` did not become ready within {} (waited {waited}); it was stopped; {}",
                    crate::units::fmt_duration(s.ready_timeout),
                    quote(&tail)
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = ready_rx.changed() => {}
                _ = exit_rx.changed() => {}
            }
        }
        // It exited before it was ready: not a fault of the run, a setup
        // that cannot work.
        let how = exit_rx.borrow().clone().unwrap_or_default();
        process.stop().await;
        Err(format!(
            "the external cloud `{command}` {how} before it was ready; {}",
            quote(&tail)
        ))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// Stops it (SIGTERM to its group, SIGKILL after a grace period) and
    /// waits until it has exited.
    pub async fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.monitor).await;
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        // Not stopped (a cell torn down by its runtime): no fault to report,
        // and `kill_on_drop` ends the child with the monitor task.
        self.stopping.store(true, Ordering::SeqCst);
        if self.stop.is_some() && !self.reaped.load(Ordering::SeqCst) {
            signal_group(self.pid, libc::SIGKILL);
        }
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the process group the
    // child leads (it called setpgid(0, 0)); no memory is involved.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s} ({})", signal_name(s)),
        _ => format!("ended ({st})"),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// Copies one of the cloud's streams into the journal, its log file and
/// the patterns, a line at a time.
struct Pump {
    stream: &'static str,
    timeline: Timeline,
    patterns: Arc<Patterns>,
    log: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
    tail: Tail,
    ready_re: Option<regex::Regex>,
    ready: Arc<watch::Sender<bool>>,
}

impl Pump {
    async fn run(self, mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>) {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                self.line(&line[..line.len() - 1]);
            }
            if pending.len() > MAX_LOG_LINE {
                let line: Vec<u8> = std::mem::take(&mut pending);
                self.line(&line[..MAX_LOG_LINE]);
            }
        }
        if !pending.is_empty() {
            self.line(&pending);
        }
        let _ = self.log.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }

    fn line(&self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let line = text.trim_end_matches('\r');
        {
            let mut f = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "[{}] {line}", self.stream);
            let _ = f.flush();
        }
        {
            let mut t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == TAIL {
                t.pop_front();
            }
            t.push_back(line.to_owned());
        }
        self.timeline.emit(
            None,
            Source::Cloud,
            EventKind::CloudLog {
                stream: self.stream.into(),
                line: line.to_owned(),
            },
        );
        self.patterns.feed(line, &self.timeline);
        if self.ready_re.as_ref().is_some_and(|re| re.is_match(line)) {
            self.ready.send_replace(true);
        }
    }
}
