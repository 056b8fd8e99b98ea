//! The one rule for optional real parts (Dovecot, the SQL servers, root,
//! system tools, the unpacked Courier): a test that needs a missing part is
//! skipped with a loud banner locally, and fails when `CI=true` (`.ci/run`
//! installs and starts everything, so nothing may be skipped there).
//!
//! `require!(Need::Dovecot, Need::Root)` returns early from the test;
//! [`available`] answers for a part of a test; [`skip`] is the rule itself,
//! for parts found missing only by trying (mounting a filesystem, say).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::dovecot;

/// Where `fixtures/courier/check.py` unpacks Courier's packages.
pub const COURIER_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/courier-root/root");

/// An optional part of the machine a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0 (chown, chattr, mounts, Dovecot serving other uids).
    Root,
    /// `dovecot` and `doveadm`.
    Dovecot,
    /// Dovecot's POP3 server.
    Pop3,
    /// PostgreSQL on 127.0.0.1:5432 (trust) and its `psql` client.
    Postgres,
    /// MariaDB on 127.0.0.1:3306 (root, no password) and its `mysql` client.
    Mariadb,
    /// `systemd-analyze`.
    SystemdAnalyze,
    /// `gdbmtool`, to read Courier's `userdb.dat`.
    Gdbmtool,
    /// Courier's binaries, unpacked by `fixtures/courier/check.py`.
    Courier,
    /// `groff`, to render the man pages.
    Groff,
    /// `promtool`, to check the daemon's metrics file.
    Promtool,
}

impl Need {
    fn present(self) -> bool {
        match self {
            Need::Root => nix::unistd::geteuid().is_root(),
            Need::Dovecot => dovecot::dovecot_available(),
            Need::Pop3 => dovecot::pop3_available(),
            Need::Postgres => listening(5432) && tool_runs("psql"),
            Need::Mariadb => listening(3306) && tool_runs("mysql"),
            Need::SystemdAnalyze => tool_runs("systemd-analyze"),
            Need::Gdbmtool => tool_runs("gdbmtool"),
            Need::Groff => tool_runs("groff"),
            Need::Promtool => tool_runs("promtool"),
            Need::Courier => ["usr/bin/imapd", "usr/sbin/makeuserdb"]
                .iter()
                .all(|f| Path::new(COURIER_ROOT).join(f).exists()),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::Dovecot => {
                "Dovecot: /usr/sbin/dovecot and /usr/bin/doveadm (apt-get install dovecot-imapd)"
            }
            Need::Pop3 => "Dovecot's POP3 server (apt-get install dovecot-pop3d)",
            Need::Postgres => "PostgreSQL on 127.0.0.1:5432 with psql",
            Need::Mariadb => "MariaDB on 127.0.0.1:3306 with mysql",
            Need::SystemdAnalyze => "systemd-analyze (apt-get install systemd)",
            Need::Gdbmtool => "gdbmtool (apt-get install gdbmtool)",
            Need::Groff => "groff (apt-get install groff-base)",
            Need::Promtool => "promtool (apt-get install prometheus)",
            Need::Courier => {
                "the unpacked Courier: run python3 fixtures/courier/check.py --against fixtures/courier/store"
            }
        }
    }
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn tool_runs(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

/// `true` when `need` is here; otherwise [`skip`]s (a failure on CI).
pub fn available(need: Need) -> bool {
    need.present() || {
        skip(&format!("needs {}", need.what()));
        false
    }
}

/// The rule: a loud SKIPPED banner on stderr, or a panic when `CI=true`.
pub fn skip(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    let msg = format!("{test} {why}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!!! SKIPPED: {msg}\n{bar}\n");
}

/// Returns from the calling test unless every listed [`Need`] is
/// [`available`].
macro_rules! require {
    ($($need:expr),+ $(,)?) => {
        $(
            if !$crate::common::require::available($need) {
                return;
            }
        )+
    };
}
pub(crate) use require;
