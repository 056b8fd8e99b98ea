//! Runs the real `maildir-migrate daemon` for tests, with a systemd-style
//! notify socket so readiness and STATUS= lines are what systemd would see.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fixture::BIN;

pub struct DaemonProc {
    child: Option<Child>,
    log: PathBuf,
    _socket_dir: tempfile::TempDir,
    /// Every line received on the notify socket (READY=1, STATUS=…,
    /// WATCHDOG=1). Read by a thread, like systemd does: a full socket
    /// would block the daemon's sends.
    notices: Arc<Mutex<Vec<String>>>,
}

impl DaemonProc {
    /// Starts the daemon and waits for READY=1.
    pub fn start(config: &Path, log: &Path) -> DaemonProc {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config).arg("daemon");
        DaemonProc::start_command(cmd, log)
    }

    /// Starts a daemon command line (a unit's `ExecStart=`, say) as systemd
    /// would, and waits for READY=1.
    pub fn start_command(mut cmd: Command, log: &Path) -> DaemonProc {
        let socket_dir = tempfile::tempdir().unwrap();
        let socket_path = socket_dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let notices = Arc::new(Mutex::new(Vec::new()));
        {
            let notices = Arc::clone(&notices);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.recv(&mut buf) {
                    let mut v = notices.lock().unwrap();
                    for line in String::from_utf8_lossy(&buf[..n]).lines() {
                        v.push(line.to_string());
                    }
                }
            });
        }
        let child = cmd
            .env("MAILDIR_MIGRATE_LOG", "info")
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "2000000")
            .env("WATCHDOG_PID", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(append(log))
            .spawn()
            .unwrap();
        let mut d = DaemonProc {
            child: Some(child),
            log: log.to_path_buf(),
            _socket_dir: socket_dir,
            notices,
        };
        d.wait_notice("READY=1", Duration::from_secs(20));
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().unwrap().clone()
    }

    /// Waits until a notice starting with `prefix` has arrived.
    pub fn wait_notice(&mut self, prefix: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.notices().iter().any(|n| n.starts_with(prefix)) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited ({status}) before {prefix}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix} from the daemon within {timeout:?}; got {:?}\n{}",
                self.notices(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the process to exit; returns its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status, start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("daemon did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited within `timeout`.
    pub fn wait_exit_or_none(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status and the time it took to stop.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drops a job file the way a control panel would: temp name, rename.
pub fn drop_job(incoming: &Path, id: &str, json: &str) -> PathBuf {
    drop_job_with(incoming, id, json, |_| {})
}

/// Like `drop_job`, with `prepare` (chmod, chown) run on the temp file
/// before the rename, so the daemon never sees it half-prepared.
pub fn drop_job_with(
    incoming: &Path,
    id: &str,
    json: &str,
    prepare: impl FnOnce(&Path),
) -> PathBuf {
    let tmp = incoming.join(format!(".{id}.tmp"));
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(json.as_bytes()).unwrap();
    f.sync_all().unwrap();
    prepare(&tmp);
    let dest = incoming.join(format!("{id}.json"));
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

/// Reads a finished job's record.
pub fn record(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
