//! The Debian package on this machine: what `dpkg -i` puts where, the unit
//! enabled but not started, an upgrade to a rebuilt package in the middle
//! of a job, and what `dpkg -r` and `--purge` leave. Runs as root when
//! `MAILDIR_MIGRATE_DEBS` names two packages (`OLD.deb:NEW.deb`, made by
//! `debian/build`; `.ci/run` does it); it installs and purges the package
//! `maildir-migrate` on the machine.

use crate::common;
use crate::daemon::{LARGE, interrupted_job_completes_exactly_once, large_host};

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::daemon::DaemonProc;
use common::fixture::Host;
use common::require::{Need, require};

const PACKAGE: &str = "maildir-migrate";
const UNIT: &str = "/usr/lib/systemd/system/maildir-migrate.service";
const CONFIG: &str = "/etc/maildir-migrate/config.toml";
const SPOOL: &str = "/var/spool/maildir-migrate";

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(program: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&run(program, args).stdout).into_owned()
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", PACKAGE])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("install ok installed ")
        .map(str::to_string)
}

/// `MAILDIR_MIGRATE_DEBS` as (old, new), both existing files.
fn packages() -> Option<(PathBuf, PathBuf)> {
    let var = std::env::var("MAILDIR_MIGRATE_DEBS").ok()?;
    let (old, new) = var.split_once(':')?;
    let (old, new) = (PathBuf::from(old), PathBuf::from(new));
    (old.is_file() && new.is_file()).then_some((old, new))
}

/// Purges the package and a spool the test made, also when it fails.
struct Cleanup {
    spool_was_there: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
        if !self.spool_was_there {
            let _ = fs::remove_dir_all(SPOOL);
        }
    }
}

#[test]
fn the_package_installs_upgrades_mid_job_and_purges() {
    require!(Need::Root, Need::SystemdAnalyze);
    let Some((old_deb, new_deb)) = packages() else {
        common::require::skip(
            "needs MAILDIR_MIGRATE_DEBS=OLD.deb:NEW.deb (two builds by debian/build, as in .ci/run)",
        );
        return;
    };
    assert_eq!(installed_version(), None, "{PACKAGE} is installed already");
    let _cleanup = Cleanup {
        spool_was_there: Path::new(SPOOL).exists(),
    };

    run("dpkg", &["-i", old_deb.to_str().unwrap()]);
    let first = installed_version().expect("installed");
    installed_files_are_in_place();
    enabled_but_not_started();

    upgrade_mid_job(&new_deb, &first);

    removal_keeps_config_and_spool_and_purge_only_the_config();
}

fn installed_files_are_in_place() {
    let version = stdout("/usr/bin/maildir-migrate", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("maildir-migrate {}", env!("CARGO_PKG_VERSION"))
    );
    for (section, page) in [
        ("1", "maildir-migrate"),
        ("1", "maildir-migrate-daemon"),
        ("5", "maildir-migrate.toml"),
    ] {
        let path = stdout("man", &["-w", section, page]);
        assert!(
            path.trim().starts_with("/usr/share/man/man"),
            "{page}({section}): {path}"
        );
    }
    let verify = run("systemd-analyze", &["verify", UNIT]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {said}"
    );
    let conffiles = stdout("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    let names: Vec<&str> = conffiles
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, [CONFIG], "{conffiles}");
    for (path, shows) in [
        (
            "/usr/share/bash-completion/completions/maildir-migrate",
            "maildir-migrate",
        ),
        (
            "/usr/share/zsh/vendor-completions/_maildir-migrate",
            "#compdef maildir-migrate",
        ),
        (
            "/usr/share/fish/vendor_completions.d/maildir-migrate.fish",
            "complete -c maildir-migrate",
        ),
        ("/usr/lib/maildir-migrate/courier-kick", "#!"),
    ] {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(text.contains(shows), "{path}: {text}");
    }
    let docs = stdout("dpkg", &["-L", PACKAGE]);
    for doc in ["README.md", "changelog.Debian.gz", "copyright"] {
        let path = format!("/usr/share/doc/{PACKAGE}/{doc}");
        assert!(docs.lines().any(|l| l == path), "{path} missing:\n{docs}");
    }
    let spool = fs::metadata(SPOOL).unwrap();
    assert!(spool.is_dir());
    assert_eq!((spool.uid(), spool.mode() & 0o7777), (0, 0o750));
    let config = fs::metadata(CONFIG).unwrap();
    assert_eq!(config.permissions().mode() & 0o7777, 0o640);
}

/// Enabled (the install's symlink, made without a running systemd too) and
/// not started: no daemon holds the spool's lock.
fn enabled_but_not_started() {
    let link = "/etc/systemd/system/multi-user.target.wants/maildir-migrate.service";
    // deb-systemd-helper links to /lib/systemd/system, the same directory
    // as /usr/lib/systemd/system on a merged-/usr system.
    assert!(fs::read_link(link).is_ok(), "{link} is not a symlink");
    assert_eq!(
        fs::canonicalize(link).unwrap(),
        fs::canonicalize(UNIT).unwrap()
    );
    assert!(!Path::new(SPOOL).join("daemon.pid").exists());
    let pgrep = Command::new("pgrep")
        .args(["-f", "/usr/bin/maildir-migrate"])
        .output()
        .unwrap();
    assert!(!pgrep.status.success(), "a daemon is running after install");
}

/// The installed unit's command line.
fn exec_start() -> Command {
    let unit = fs::read_to_string(UNIT).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let mut argv = line.split_whitespace();
    let mut cmd = Command::new(argv.next().unwrap());
    cmd.args(argv);
    cmd
}

/// The host's config with absolute paths and the package's spool, as a
/// sysadmin would write it into the conffile; a freeze grace of 10 s per
/// mailbox keeps the job running while dpkg works.
fn host_config(h: &Host) -> String {
    let text = fs::read_to_string(&h.config).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.split_once(" = \"") {
            Some(("spool_dir", _)) => format!("spool_dir = \"{SPOOL}\""),
            Some((key @ ("userdb" | "mail_root"), rest)) if !rest.starts_with('/') => {
                let rel = rest.trim_end_matches('"');
                format!("{key} = \"{}\"", h.root.join(rel).display())
            }
            _ if line == "[cutover]" => format!("{line}\nfreeze_grace = 10"),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `dpkg -i` of the rebuilt package while the installed daemon (started
/// by the unit's ExecStart=) is in the middle of a large job. The old
/// daemon keeps running while dpkg replaces its files; then what the
/// postinst's `try-restart` makes systemd do (this machine's PID 1 is not
/// systemd, so the test does it): SIGTERM, which rolls the current mailbox
/// back to its old login, and the new binary from ExecStart=, which
/// resumes the job. The sysadmin's edited conffile survives the upgrade.
fn upgrade_mid_job(new_deb: &Path, first: &str) {
    let host = large_host(LARGE.0, LARGE.1);
    let config = host_config(&host.0);
    fs::write(&host.0.config, &config).unwrap();
    fs::write(CONFIG, &config).unwrap();
    let start = |log: &Path| DaemonProc::start_command(exec_start(), log);
    let spool = (host.0, PathBuf::from(SPOOL));
    interrupted_job_completes_exactly_once(spool, start, true, |d| {
        let upgrade = std::time::Instant::now();
        run("dpkg", &["-i", new_deb.to_str().unwrap()]);
        eprintln!("dpkg -i of the new package took {:?}", upgrade.elapsed());
        assert!(
            d.wait_exit_or_none(std::time::Duration::ZERO).is_none(),
            "the upgrade stopped the daemon"
        );
        let (code, took) = d.stop();
        eprintln!("SIGTERM to exit took {took:?}");
        assert_eq!(code.code(), Some(0), "{}", d.log());
        assert!(d.log().contains("job interrupted"), "{}", d.log());
    });
    let second = installed_version().expect("installed");
    assert_ne!(second, first, "the second package must be a newer version");
    assert_eq!(fs::read_to_string(CONFIG).unwrap(), config);
}

/// `dpkg -r` keeps the config and the spool; `--purge` removes the config,
/// and of the spool only what is empty: the job's records stay.
fn removal_keeps_config_and_spool_and_purge_only_the_config() {
    let records = ["done/big.json", "done/big.report.json"];
    run("dpkg", &["-r", PACKAGE]);
    assert!(!Path::new("/usr/bin/maildir-migrate").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(Path::new(CONFIG).exists());
    for r in records {
        assert!(Path::new(SPOOL).join(r).exists(), "{r}");
    }
    run("dpkg", &["--purge", PACKAGE]);
    assert!(!Path::new(CONFIG).exists());
    assert!(!Path::new("/etc/maildir-migrate").exists());
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/maildir-migrate.service").exists()
    );
    for r in records {
        assert!(Path::new(SPOOL).join(r).exists(), "{r}");
    }
    assert!(
        !Path::new(SPOOL).join("incoming").exists(),
        "empty queue dirs go"
    );
}
