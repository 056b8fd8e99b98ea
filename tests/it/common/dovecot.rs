//! Private Dovecot 2.3 instances for integration tests.
//!
//! [`Dovecot::start`] writes its own `dovecot.conf` into a directory of the
//! test (it never reads `/etc/dovecot`), runs `dovecot -F -c <conf>` as a
//! child process on a free port of 127.0.0.1 and stops it again on drop, so
//! several instances (parallel tests, an "old" and a "new" server) can run at
//! once. Users come from a passwd-file that serves as passdb and userdb:
//!
//! ```text
//! user@example.cz:{SHA512-CRYPT}$6$...:5000:5000::/abs/home::userdb_mail=maildir:~/Maildir
//! ```
//!
//! # Running as root (the normal case, and CI)
//!
//! Dovecot runs its processes as different users: `auth` (which reads the
//! passwd-file) as `dovecot`, `imap-login` as `dovenull`, and each `imap`
//! process as the uid/gid of the mail user from the passwd-file (e.g. 5000,
//! which needs no `/etc/passwd` or `/etc/group` entry). Therefore:
//!
//! * the passwd-file must be readable by user `dovecot`: `root:dovecot 0640`
//!   (what [`write_passwd_file`] makes); `root:root 0600` fails with
//!   `auth: Error: passwd-file ...: open(...) failed: Permission denied
//!   (euid=108(dovecot) ... missing +r perm`, and Dovecot answers
//!   `NO [UNAVAILABLE] Temporary authentication failure`;
//! * every directory above it, the instance directory and the homes must be
//!   traversable (`o+x`) by `dovecot` and by the mail uids (a 0700 directory
//!   above the passwd-file gives `missing +x perm: <dir>`); [`Dovecot::start`]
//!   makes its own `dir` at least 0755 and panics early, with the reason,
//!   when user `dovecot` could not read the passwd-file;
//! * the home directory must be owned by the mail uid (Dovecot creates
//!   `~/Maildir` itself);
//! * uid/gid 5000 work with Dovecot's defaults (`first_valid_uid = 500`,
//!   `last_valid_uid = 0` = unlimited, no `mail_privileged_group` needed);
//!   the config sets `first_valid_uid = 1` so that uids below 500 work too
//!   (with 500, login answers `OK Logged in, but initialization failed.` and
//!   the log says `Mail access for users with UID 300 not permitted`). uid 0
//!   is refused by passwd-file itself (`invalid UID '0'`).
//!
//! # Stopping
//!
//! Drop sends SIGTERM to the master and waits for it and every process of the
//! instance; this takes about 1 s. The master waits for open IMAP sessions,
//! so log out or drop clients first (declare them after the `Dovecot`);
//! an open session makes the stop take about 6 s. A test process killed with
//! SIGKILL cannot clean up; `pgrep -af dovecot-mmt` lists leftovers.
//!
//! # Running as another user
//!
//! Without root nothing can change uid, so the instance runs every process as
//! the current user: `default_internal_user`, `default_internal_group` and
//! `default_login_user` are set to the current user/group, chroot is turned
//! off for the services that chroot by default, and the userdb gets
//! `override_fields = uid=<me> gid=<my gid>` so the uids in the passwd-file
//! (5000...) are replaced by the current ones (`doveadm user` then reports the
//! current uid too). Homes must then belong to the current user; the
//! passwd-file may be 0600.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const DOVECOT_BIN: &str = "/usr/sbin/dovecot";
pub const DOVEADM_BIN: &str = "/usr/bin/doveadm";

/// How long [`Dovecot::start`] waits for the IMAP greeting.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the master gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// base_dir holds unix sockets (sun_path is 108 bytes); a longer base_dir is
/// moved to a short directory under /tmp.
const MAX_BASE_DIR_LEN: usize = 70;

static INSTANCE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Dovecot's POP3 server (Debian: dovecot-pop3d).
pub fn pop3_available() -> bool {
    Path::new("/usr/lib/dovecot/pop3").exists()
}

/// Are `dovecot` and `doveadm` installed?
pub fn dovecot_available() -> bool {
    Path::new(DOVECOT_BIN).is_file() && Path::new(DOVEADM_BIN).is_file()
}

/// Effective uid and gid of this process (from /proc/self/status).
pub fn current_uid_gid() -> (u32, u32) {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1)) // real, *effective*, saved, fs
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("Uid:"), field("Gid:"))
}

pub fn running_as_root() -> bool {
    current_uid_gid().0 == 0
}

/// The fields of the first line of a colon-separated database file
/// (/etc/passwd, /etc/group) that `pred` accepts.
fn db_lookup(file: &str, pred: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && pred(f))
        .map(|f| f.into_iter().map(str::to_owned).collect())
}

/// uid and gid of a system user (e.g. `dovecot`).
pub fn system_user(name: &str) -> Option<(u32, u32)> {
    let f = db_lookup("/etc/passwd", |f| f[0] == name)?;
    Some((f[2].parse().ok()?, f.get(3)?.parse().ok()?))
}

fn user_name(uid: u32) -> Option<String> {
    db_lookup("/etc/passwd", |f| f[2] == uid.to_string()).map(|f| f[0].clone())
}

fn group_name(gid: u32) -> Option<String> {
    db_lookup("/etc/group", |f| f[2] == gid.to_string()).map(|f| f[0].clone())
}

fn group_gid(name: &str) -> Option<u32> {
    db_lookup("/etc/group", |f| f[0] == name)?[2].parse().ok()
}

/// Hashes `password` with `doveadm pw -s SCHEME` (password on stdin, never on
/// the command line) and returns the `{SCHEME}...` string. The hash is
/// checked with `doveadm pw -t` before it is returned.
///
/// Careful with `doveadm pw`: it asks for the password twice, and when the
/// two lines differ (e.g. only one line on stdin) it prints
/// `Error: Passwords don't match!` on stderr but still exits 0 and prints a
/// hash of the *empty* password. Passwords containing CR or LF cannot be
/// given this way and panic.
pub fn hash_password(scheme: &str, password: &str) -> String {
    assert!(
        !password.contains(['\n', '\r']),
        "hash_password: a password with CR/LF cannot be passed to doveadm pw on stdin"
    );
    let out = run_with_stdin(
        Command::new(DOVEADM_BIN).args(["-O", "pw", "-s", scheme]),
        format!("{password}\n{password}\n").as_bytes(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(
        out.status.success() && stderr.is_empty() && stdout.starts_with(&format!("{{{scheme}}}")),
        "doveadm pw -s {scheme} failed ({}): stdout {stdout:?}, stderr {stderr:?}",
        out.status
    );
    assert!(
        verify_hash(&stdout, password),
        "doveadm pw -t does not verify the new {scheme} hash"
    );
    stdout
}

/// `doveadm pw -t`: does Dovecot verify `password` against `hash`
/// (`{SCHEME}…`, or bare `$1$`)? The password goes on stdin.
pub fn verify_hash(hash: &str, password: &str) -> bool {
    let check = run_with_stdin(
        Command::new(DOVEADM_BIN).args(["-O", "pw", "-t", hash]),
        format!("{password}\n").as_bytes(),
    );
    check.status.success() && String::from_utf8_lossy(&check.stdout).contains("(verified)")
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to doveadm");
    child.wait_with_output().expect("wait for doveadm")
}

/// A scratch directory every Dovecot process can traverse: under the
/// system temp dir (the checkout may sit below a 0700 home), mode 0755.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .expect("scratch dir");
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).expect("chmod scratch dir");
    t
}

/// One passwd-file line: `user:hash:uid:gid::home::userdb_mail=maildir:~/Maildir`.
pub fn passwd_line(user: &str, hash: &str, uid: u32, gid: u32, home: &Path) -> String {
    format!(
        "{user}:{hash}:{uid}:{gid}::{}::userdb_mail=maildir:~/Maildir",
        home.display()
    )
}

/// Writes a passwd-file readable by Dovecot's auth process: as root
/// `root:dovecot 0640`, otherwise 0600 (everything runs as the current user).
pub fn write_passwd_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    if running_as_root() {
        let gid = group_gid("dovecot").expect("group dovecot missing (is dovecot-core installed?)");
        std::os::unix::fs::chown(path, Some(0), Some(gid)).expect("chown passwd-file");
        fs::set_permissions(path, fs::Permissions::from_mode(0o640)).expect("chmod passwd-file");
    } else {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod passwd-file");
    }
}

/// Can uid/gid read `path` (and traverse every directory above it)?
/// Ignores supplementary groups; good enough for a helpful early panic.
fn accessible_by(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let allowed = |p: &Path, bit: u32| -> Result<(), String> {
        let md = fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mode = md.mode();
        let ok = if md.uid() == uid {
            mode & (bit << 6) != 0
        } else if md.gid() == gid {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} (owner {}:{}, mode {:o}) is not {} for uid {uid} gid {gid}",
                p.display(),
                md.uid(),
                md.gid(),
                mode & 0o7777,
                if bit == 4 { "readable" } else { "traversable" }
            ))
        }
    };
    if uid == 0 {
        return Ok(());
    }
    for dir in path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        allowed(dir, 1)?;
    }
    allowed(path, 4)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Pids of the live processes of one instance: Dovecot titles them
/// `dovecot-<instance_name>/<service>` (the master itself is not included).
pub fn instance_pids(instance: &str) -> Vec<u32> {
    let prefix = format!("dovecot-{instance}/");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_instance_process(*pid, &prefix))
        .collect()
}

fn is_instance_process(pid: u32, prefix: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(prefix.as_bytes()))
        && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
}

fn signal(pid: u32, sig: &str) {
    let kill = ["/usr/bin/kill", "/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("kill");
    let _ = Command::new(kill)
        .args(["-s", sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Where a private Dovecot finds its users.
pub enum Auth {
    PasswdFile(PathBuf),
    /// A PostfixAdmin-style SQL passdb and userdb: Dovecot's `driver` and
    /// `connect`, the SQL expression of the home (the Maildir), the uid.
    Sql {
        driver: &'static str,
        connect: String,
        home: String,
        uid: u32,
    },
}

/// A running private Dovecot; stopped (and waited for) on drop.
pub struct Dovecot {
    child: Option<Child>,
    dir: PathBuf,
    conf: PathBuf,
    base_dir: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    port: u16,
    /// POP3 listener, when Dovecot's pop3 is installed (dovecot-pop3d).
    pop3_port: Option<u16>,
    instance: String,
    /// Short base_dir under /tmp when `dir` is too deep for socket paths.
    _short_base: Option<tempfile::TempDir>,
}

impl Dovecot {
    /// Starts a private Dovecot serving IMAP on 127.0.0.1 (free port) for
    /// the users of `passwd_file`, with everything it writes (config,
    /// `run/` base_dir, `state/`, `dovecot.log`, `dovecot.stderr`) in `dir`.
    /// `dir` is created if needed; one instance per `dir`. Waits up to 20 s
    /// for the IMAP greeting; panics with the Dovecot log when it does not
    /// come. A port taken meanwhile by someone else is retried (3 attempts).
    ///
    /// See the module docs for the permissions the passwd-file and the
    /// directories need.
    pub fn start(dir: &Path, passwd_file: &Path) -> Dovecot {
        Dovecot::start_with(dir, Auth::PasswdFile(passwd_file.to_path_buf()))
    }

    /// Like `start`, with the users in `auth`.
    pub fn start_with(dir: &Path, auth: Auth) -> Dovecot {
        Dovecot::start_configured(dir, auth, "")
    }

    /// Like `start_with`, with `extra` appended to the configuration (a
    /// section named again merges with the first: `namespace inbox { … }`
    /// changes the inbox namespace).
    pub fn start_configured(dir: &Path, auth: Auth, extra: &str) -> Dovecot {
        assert!(
            dovecot_available(),
            "Dovecot is not installed (use require!(Need::Dovecot) first)"
        );
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let dir = fs::canonicalize(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let auth = match auth {
            Auth::PasswdFile(p) => Auth::PasswdFile(
                fs::canonicalize(&p).unwrap_or_else(|e| panic!("passwd-file {}: {e}", p.display())),
            ),
            sql => sql,
        };
        let root = running_as_root();

        // Mail and auth processes run as other users: they must get through `dir`.
        let mode = fs::metadata(&dir).expect("stat dir").mode();
        if root && mode & 0o011 != 0o011 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod dir");
        }
        if root {
            let (uid, gid) =
                system_user("dovecot").expect("user dovecot missing (install dovecot-core)");
            if let Auth::PasswdFile(passwd_file) = &auth
                && let Err(e) = accessible_by(passwd_file, uid, gid)
            {
                panic!(
                    "Dovecot's auth process (user dovecot) cannot read the passwd-file: {e}.\n\
                     It needs root:dovecot 0640 (see write_passwd_file) and o+x on every \
                     directory above it."
                );
            }
            if let Err(e) = accessible_by(&dir.join("."), 5000, 5000) {
                eprintln!("WARNING: mail processes (uid 5000) may not reach base_dir: {e}");
            }
        }
        let pid_file = dir.join("run/master.pid");
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "{} is already used by a running Dovecot (pid {pid})",
                dir.display()
            );
        }

        let instance = format!(
            "mmt{}x{}",
            std::process::id(),
            INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut short_base = None;
        let mut base_dir = dir.join("run");
        if base_dir.as_os_str().len() > MAX_BASE_DIR_LEN {
            let t = tempfile::Builder::new()
                .prefix("dovecot-")
                .tempdir_in("/tmp")
                .expect("short base_dir under /tmp");
            fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
            base_dir = t.path().join("run");
            short_base = Some(t);
        }

        let mut last_failure = String::new();
        for attempt in 1..=3 {
            let _ = fs::remove_dir_all(&base_dir); // stale sockets of a failed attempt
            let port = free_port();
            let mut dc = Dovecot {
                child: None,
                conf: dir.join("dovecot.conf"),
                log_path: dir.join("dovecot.log"),
                stderr_path: dir.join("dovecot.stderr"),
                dir: dir.clone(),
                base_dir: base_dir.clone(),
                port,
                pop3_port: pop3_available().then(free_port),
                instance: instance.clone(),
                _short_base: None,
            };
            fs::write(&dc.conf, dc.config_text(&auth, root) + extra).expect("write dovecot.conf");
            let _ = fs::remove_file(&dc.log_path);
            let stderr = fs::File::create(&dc.stderr_path).expect("create dovecot.stderr");
            let child = Command::new(DOVECOT_BIN)
                .arg("-F")
                .arg("-c")
                .arg(&dc.conf)
                .env("TZ", "UTC") // INTERNALDATEs come back in the server's zone
                .stdin(Stdio::null())
                .stdout(stderr.try_clone().expect("dup"))
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {DOVECOT_BIN}: {e}"));
            dc.child = Some(child);
            match dc.wait_ready() {
                Ok(()) => {
                    dc._short_base = short_base;
                    return dc;
                }
                Err(why) => {
                    let log = dc.log();
                    let stderr = read_lossy(&dc.stderr_path);
                    last_failure = format!(
                        "{why}\n--- {} ---\n{log}\n--- {} ---\n{stderr}",
                        dc.log_path.display(),
                        dc.stderr_path.display()
                    );
                    drop(dc); // stops whatever did start
                    let port_taken = log.contains("Address already in use")
                        || stderr.contains("Address already in use");
                    if !port_taken {
                        break;
                    }
                    eprintln!(
                        "dovecot: port {port} was taken meanwhile (attempt {attempt}), retrying"
                    );
                }
            }
        }
        panic!("Dovecot did not start: {last_failure}");
    }

    fn config_text(&self, auth: &Auth, root: bool) -> String {
        let dir = self.dir.display();
        let (passdb, userdb) = match auth {
            Auth::PasswdFile(p) => (
                format!(
                    "  driver = passwd-file\n  args = scheme=CRYPT username_format=%u {}\n",
                    p.display()
                ),
                format!(
                    "  driver = passwd-file\n  args = username_format=%u {}\n",
                    p.display()
                ),
            ),
            Auth::Sql {
                driver,
                connect,
                home,
                uid,
            } => {
                let ext = self.dir.join("dovecot-sql.conf.ext");
                // PostfixAdmin's documented queries; the row's maildir is
                // the Maildir itself, so mail lives in the home.
                fs::write(
                    &ext,
                    format!(
                        "driver = {driver}\nconnect = {connect}\ndefault_pass_scheme = CRYPT\n\
                         password_query = SELECT username AS user, password FROM mailbox WHERE username = '%u' AND active = '1'\n\
                         user_query = SELECT {home} AS home, 'maildir:~/' AS mail, {uid} AS uid, {uid} AS gid FROM mailbox WHERE username = '%u' AND active = '1'\n"
                    ),
                )
                .expect("write dovecot-sql.conf.ext");
                let args = format!("  driver = sql\n  args = {}\n", ext.display());
                (args.clone(), args)
            }
        };
        let mut c = format!(
            r#"# Private test instance written by tests/it/common/dovecot.rs.
# Deliberately self-contained: /etc/dovecot/conf.d is not included.
instance_name = {instance}
base_dir = {base_dir}
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap{pop3_protocol}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
# Tests log in wrongly on purpose; do not make the next login wait.
# auth_failure_delay: 2 s per failed login by default. The anvil "auth
# penalty" then delays *every* following login from 127.0.0.1 (2, 4, 8 s...);
# the auth process silently disables it when the anvil-auth-penalty socket
# does not exist, so the listener is moved to another name.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    path = anvil-auth-penalty-disabled
  }}
}}
# Mail uids such as 5000 need no /etc/passwd entry. The default
# first_valid_uid = 500 refuses lower uids ("Logged in, but initialization
# failed"); allow every uid but root.
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
passdb {{
{passdb}}}
userdb {{
{userdb}{override}}}
namespace inbox {{
  separator = /
  prefix =
  inbox = yes
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
{chroot}}}
{pop3_service}"#,
            instance = self.instance,
            base_dir = self.base_dir.display(),
            port = self.port,
            pop3_protocol = if self.pop3_port.is_some() { " pop3" } else { "" },
            pop3_service = match self.pop3_port {
                Some(p) => format!(
                    "service pop3-login {{\n  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {p}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n{}}}\n",
                    if root { "" } else { "  chroot =\n" }
                ),
                None => String::new(),
            },
            override = if root {
                String::new()
            } else {
                let (uid, gid) = current_uid_gid();
                format!("  override_fields = uid={uid} gid={gid}\n")
            },
            chroot = if root { "" } else { "  chroot =\n" },
        );
        if root {
            c.push_str("default_internal_user = dovecot\ndefault_login_user = dovenull\n");
        } else {
            let (uid, gid) = current_uid_gid();
            let user =
                user_name(uid).unwrap_or_else(|| panic!("uid {uid} has no /etc/passwd entry"));
            let group =
                group_name(gid).unwrap_or_else(|| panic!("gid {gid} has no /etc/group entry"));
            c.push_str(&format!(
                "# Not root: every process runs as the current user, no chroot.\n\
                 default_internal_user = {user}\n\
                 default_internal_group = {group}\n\
                 default_login_user = {user}\n"
            ));
            // Services that chroot by default (imap-login is handled above);
            // a second `service anvil` block merges with the first one.
            for service in [
                "anvil",
                "imap-urlauth-login",
                "ipc",
                "old-stats",
                "aggregator",
            ] {
                c.push_str(&format!("service {service} {{\n  chroot =\n}}\n"));
            }
        }
        c
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = String::from("no connection attempt");
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("dovecot exited early with {status}"));
            }
            match TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_secs(1),
            ) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut line = String::new();
                    match BufReader::new(stream).read_line(&mut line) {
                        Ok(_) if line.starts_with("* OK") => return Ok(()),
                        Ok(_) => last_err = format!("unexpected greeting {line:?}"),
                        Err(e) => last_err = format!("reading greeting: {e}"),
                    }
                }
                Err(e) => last_err = format!("connect: {e}"),
            }
            sleep(Duration::from_millis(50));
        }
        Err(format!(
            "no IMAP greeting on 127.0.0.1:{} within {START_TIMEOUT:?} ({last_err})",
            self.port
        ))
    }

    /// The POP3 port; `None` without dovecot-pop3d.
    pub fn pop3_port(&self) -> Option<u16> {
        self.pop3_port
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// The `instance_name` (unique per instance and test process).
    pub fn instance_name(&self) -> &str {
        &self.instance
    }

    /// `doveadm -c <conf> args...`.
    pub fn doveadm(&self, args: &[&str]) -> Output {
        Command::new(DOVEADM_BIN)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run doveadm {args:?}: {e}"))
    }

    /// `doveadm user <user>` exits 0 (67 = no such user, 75 = lookup failed).
    pub fn user_exists(&self, user: &str) -> bool {
        self.doveadm(&["user", user]).status.success()
    }

    /// The Dovecot log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Stops the instance now (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let prefix = format!("dovecot-{}/", self.instance);
        let mut pids = instance_pids(&self.instance);
        if matches!(child.try_wait(), Ok(None)) {
            // Not `doveadm stop`: it polls until the master pid is gone, but
            // the master stays a zombie until we reap it, so it always waits
            // its full 3 s timeout.
            signal(child.id(), "TERM");
            // The master waits for open IMAP sessions to end; don't hang.
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "dovecot {}: master did not stop in time, killing it",
                    self.instance
                );
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        // Children normally exit with the master; make sure of it.
        pids.extend(instance_pids(&self.instance));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            pids.retain(|&pid| is_instance_process(pid, &prefix));
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for &pid in &pids {
                    signal(pid, "KILL");
                }
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.shutdown();
    }
}
