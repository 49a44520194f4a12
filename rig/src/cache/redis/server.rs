//! One `redis-server` child process the rig owns: its folder, its
//! credentials, its lifetime.
//!
//! - Loopback only, on a free port, in a private folder (0700; the RDB
//!   files hold every session's keys and are written under umask 077).
//! - No default user: two ACL users with passwords from the OS RNG, written
//!   to a 0600 config file (never on a command line, which every local user
//!   can read in /proc): `rig-cloud`, the cloud's data path, may only read
//!   and write session keys; `rig-admin`, the rig's own operations, may do
//!   anything but SHUTDOWN, CONFIG, DEBUG, MODULE, ACL and replication
//!   commands. A local user without the passwords gets NOAUTH.
//! - Dies with the rig: `PR_SET_PDEATHSIG` makes the kernel SIGKILL it if the
//!   rig dies, even by SIGKILL. (The signal follows the *thread* that spawned
//!   the child; the rig spawns from its long-lived main thread.)
//! - A death the rig did not cause (OOM killer, another user's signal) is
//!   noticed by a watcher and reported through the death callback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::super::CacheError;

/// Called with (pid, how it ended) when the server dies on its own.
pub type DeathCallback = Arc<dyn Fn(u32, String) + Send + Sync>;

/// The data-path user (sessions only).
pub const CLOUD_USER: &str = "rig-cloud";
/// The rig's administrative user.
pub const ADMIN_USER: &str = "rig-admin";

fn secret() -> Result<String, CacheError> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(|e| CacheError::Io {
        what: "no OS randomness for a redis password".into(),
        source: e.into(),
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A free TCP port on loopback (bound and released; redis takes it next).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

struct Proc {
    child: Option<Child>,
    on_death: Option<DeathCallback>,
}

/// The two users' passwords: one pair per server, or one pair shared by
/// every node of a cluster (its clients use one credential for all nodes).
#[derive(Clone)]
pub struct Credentials {
    cloud: String,
    admin: String,
}

impl Credentials {
    /// Fresh passwords from the OS RNG.
    pub fn generate() -> Result<Credentials, CacheError> {
        Ok(Credentials {
            cloud: secret()?,
            admin: secret()?,
        })
    }

    pub fn cloud_password(&self) -> &str {
        &self.cloud
    }

    /// For a replica's `masterauth` (written only to a 0600 config file).
    pub fn admin_password(&self) -> &str {
        &self.admin
    }
}

/// How one server is set up beyond the defaults.
#[derive(Clone, Default)]
pub struct ServerOpts {
    /// Extra command-line arguments (never secrets: /proc shows them).
    pub args: Vec<String>,
    /// Extra ACL rules for `rig-cloud` (a cluster client's topology queries).
    pub cloud_acl: String,
    /// Lines appended to the 0600 config file (a replica's `masterauth`).
    pub conf: String,
}

/// A redis-server child; cheap to clone.
#[derive(Clone)]
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    creds: Credentials,
    opts: ServerOpts,
    proc: Arc<Mutex<Proc>>,
}

impl RedisServer {
    /// Prepares (does not start) a server in `dir`, which is created private.
    pub fn prepare(dir: &Path, extra_args: &[&str]) -> Result<RedisServer, CacheError> {
        RedisServer::prepare_opts(
            dir,
            ServerOpts {
                args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
                ..ServerOpts::default()
            },
        )
    }

    /// [`RedisServer::prepare`] with options, on a free port with fresh credentials.
    pub fn prepare_opts(dir: &Path, opts: ServerOpts) -> Result<RedisServer, CacheError> {
        let port = free_port().map_err(CacheError::io("no free loopback port"))?;
        RedisServer::prepare_with(dir, port, Credentials::generate()?, opts)
    }

    /// [`RedisServer::prepare`] on a given port with given credentials.
    pub fn prepare_with(
        dir: &Path,
        port: u16,
        creds: Credentials,
        opts: ServerOpts,
    ) -> Result<RedisServer, CacheError> {
        crate::fsutil::ensure_dir(dir, 0o700)?;
        crate::fsutil::ensure_dir(&dir.join("snapshots"), 0o700)?;
        // redis-server changes into `--dir` before it opens `--logfile`: a
        // relative folder (the default `--out reports`) would be looked up
        // twice and the log could not be opened.
        let dir = std::path::absolute(dir).map_err(CacheError::io(format!("cannot resolve {}", dir.display())))?;
        Ok(RedisServer {
            port,
            dir,
            creds,
            opts,
            proc: Arc::new(Mutex::new(Proc {
                child: None,
                on_death: None,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The URL the cloud's data path connects with (holds a password: never log it).
    pub fn cloud_url(&self) -> String {
        format!("redis://{CLOUD_USER}:{}@127.0.0.1:{}/", self.creds.cloud, self.port)
    }

    /// The URL of the rig's administrative connection.
    pub fn admin_url(&self) -> String {
        format!("redis://{ADMIN_USER}:{}@127.0.0.1:{}/", self.creds.admin, self.port)
    }

    pub fn dump(&self) -> PathBuf {
        self.dir.join("dump.rdb")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.lock().child.as_ref().map(Child::id)
    }

    pub fn on_death(&self, f: DeathCallback) {
        self.lock().on_death = Some(f);
    }

    fn write_config(&self) -> Result<PathBuf, CacheError> {
        let conf = self.dir.join("redis.conf");
        let text = format!(
            "# Written by rig for one run; the passwords are from the OS RNG.\n\
             user default off\n\
             user {CLOUD_USER} on >{} ~rig:session:* resetchannels -@all +get +set +psetex +del +getdel +exists +ping +mget +pexpire{}\n\
             user {ADMIN_USER} on >{} ~* resetchannels +@all -shutdown -config -debug -module -acl -replicaof -slaveof -failover -monitor\n\
             {}",
            self.creds.cloud, self.opts.cloud_acl, self.creds.admin, self.opts.conf
        );
        crate::fsutil::write_atomic(&conf, text.as_bytes(), 0o600)?;
        Ok(conf)
    }

    /// Starts the server (loading `dump.rdb` if `keep_dump`); does not wait
    /// for it to answer (see [`RedisServer::exited`]).
    pub fn spawn(&self, keep_dump: bool) -> Result<u32, CacheError> {
        self.kill_now();
        if !keep_dump {
            let _ = std::fs::remove_file(self.dump());
        }
        let conf = self.write_config()?;
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl and umask are async-signal-safe and touch no memory
        // of the parent; this runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::umask(0o077);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CacheError::Backend(
                    "redis-server is not installed (not found on PATH): install Debian's `redis-server` package (apt-get install redis-server)".into(),
                )
            } else {
                CacheError::io("cannot start redis-server")(e)
            }
        })?;
        let pid = child.id();
        self.lock().child = Some(child);
        self.watch(pid);
        Ok(pid)
    }

    /// Watches `pid` until it is gone: if it is still our child then, it died
    /// on its own, and the death callback says so.
    fn watch(&self, pid: u32) {
        // Weak: the watcher must not keep the server alive once the rig let go.
        let proc = Arc::downgrade(&self.proc);
        let spawned = std::thread::Builder::new()
            .name(format!("redis {pid} watch"))
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                    let Some(proc) = proc.upgrade() else { return };
                    let mut p = proc.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(child) = p.child.as_mut() else { return };
                    if child.id() != pid {
                        return;
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        p.child = None;
                        let cb = p.on_death.clone();
                        drop(p);
                        if let Some(cb) = cb {
                            cb(pid, status.to_string());
                        }
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch redis-server {pid}: {e}");
        }
    }

    /// How the server ended, if it has (before the rig killed it).
    pub fn exited(&self) -> Option<String> {
        self.lock()
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .map(|s| s.to_string())
    }

    /// SIGKILL and reap; afterwards the pid no longer exists.
    pub fn kill_now(&self) {
        let child = self.lock().child.take();
        if let Some(mut c) = child {
            // SIGCONT first would be pointless: SIGKILL also ends a stopped process.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: libc::c_int) -> Result<(), CacheError> {
        let p = self.lock();
        let pid = p
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| CacheError::Down("redis-server is not running".into()))?;
        // SAFETY: plain kill(2) on our own child's pid, which is not reaped
        // while we hold the lock on it.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(CacheError::Backend(format!(
                "cannot signal redis-server: {}",
                std::io::Error::last_os_error()
            )))
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
