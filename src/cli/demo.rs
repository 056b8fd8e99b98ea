//! `maildir-migrate demo`: copies the bundled demo host into a scratch
//! directory and runs the daemon on it, so the first command of the README
//! shows the main job (submit, wait, status, completion e-mails) on a real
//! migration, without root and without touching tracked files.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::{Failure, exit, load_config, print_report, print_status, spool_failure, submit};
use crate::job::RawJob;
use crate::spool::{JobRecord, Notification, Place, RecordStatus, Spool};

/// Marks a directory as made by `demo`, so re-running may replace it.
const STAMP: &str = ".maildir-migrate-demo";
/// Placeholder in the demo userdb for the scratch directory's path.
const ROOT_PLACEHOLDER: &str = "@DEMO_ROOT@";
/// Placeholder for the demo users' uid and gid: the new tree belongs to
/// the uid an entry names, and only root may give files to another uid.
const OWNER_PLACEHOLDER: &str = "@DEMO_UID@:@DEMO_GID@";
/// The demo takes seconds; this only bounds a daemon that hangs.
const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Failure + '_ {
    move |e| Failure(exit::IOERR, format!("{}: {e}", path.display()))
}

pub(super) fn run(dir: &Path, fixtures: &Path) -> Result<u8, Failure> {
    // Both defaults are relative to the current directory: a packaged
    // binary knows no source tree.
    if !fixtures.join("config.toml").is_file() {
        return Err(Failure(
            exit::NOINPUT,
            format!(
                "{}: no demo host there (run from the repository root, or give --fixtures DIR)",
                fixtures.display()
            ),
        ));
    }
    if dir.exists() {
        if !dir.join(STAMP).exists() {
            return Err(Failure(
                exit::USAGE,
                format!(
                    "{} exists and was not made by `demo`; refusing to replace it",
                    dir.display()
                ),
            ));
        }
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    copy_host(fixtures, dir)?;
    std::fs::write(dir.join(STAMP), b"").map_err(io(dir))?;

    let config = dir.join("config.toml");
    let cfg = load_config(Some(config.clone()))?;
    let mut daemon = DemoDaemon::start(&config)?;
    let spool = daemon.wait_for_spool(&cfg.spool_dir)?;
    outln!("== submit");
    let mut ids = Vec::new();
    for job in job_files(dir)? {
        ids.push(submit_file(&config, &job)?);
    }
    let records = daemon.wait_for_records(&spool, &ids)?;
    for r in &records {
        outln!("\n== job {} (from {}/spool/done/)", r.id, dir.display());
        if let Some(report) = &r.report {
            print_report(report, false);
        }
        if let Some(e) = &r.error {
            outln!("error: {e}");
        }
    }
    outln!("\n== status");
    print_status(
        &crate::status::gather(&spool, 10).map_err(spool_failure)?,
        false,
    );
    daemon.stop()?;
    outln!(
        "\nA daemon migrated the demo host in {d} and has stopped:\n  \
         old store     {d}/oldmail  (untouched, Trash/Spam/Contacts stay here)\n  \
         new store     {d}/newmail\n  \
         old userdb    {d}/users.old  (migrated users now carry `nologin`)\n  \
         new userdb    {d}/users.new  (same hashes, explicit {{SCHEME}} prefixes)\n  \
         job records   {d}/spool/done/*.report.json  (report, verification, e-mail outcome)\n  \
         e-mails       {d}/outbox/*.eml  (the bilingual completion e-mails, [notify] outbox_dir)\n\
         The queue as `status` shows it:\n  \
         cargo run --release -- status --config {d}/config.toml\n\
         Re-running a job is safe; every mailbox then reports \"already migrated\":\n  \
         cargo run --release -- run --config {d}/config.toml {d}/jobs/novak-stavby.json",
        d = dir.display(),
    );
    let all_done = records.iter().all(|r| r.status == RecordStatus::Done);
    Ok(if all_done { exit::OK } else { exit::PARTIAL })
}

/// The demo host's job files, in name order.
fn job_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let jobs = dir.join("jobs");
    let mut files: Vec<_> = std::fs::read_dir(&jobs)
        .map_err(io(&jobs))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Queues a job file through `submit`, under its stem as the id.
fn submit_file(config: &Path, job: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(job).map_err(io(job))?;
    let raw: RawJob = serde_json::from_str(&text)
        .map_err(|e| Failure(exit::DATAERR, format!("{}: {e}", job.display())))?;
    let id = job
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    submit(Some(config.to_path_buf()), raw, Some(id.clone()), None)?;
    Ok(id)
}

/// `maildir-migrate daemon` as a child process on the demo configuration;
/// stopped with SIGTERM, also when the demo fails half-way.
struct DemoDaemon(Child);

impl DemoDaemon {
    fn start(config: &Path) -> Result<DemoDaemon, Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| Failure(exit::IOERR, format!("cannot find this program: {e}")))?;
        // Not a systemd service, even when the demo runs under one.
        Command::new(&exe)
            .arg("--config")
            .arg(config)
            .arg("daemon")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map(DemoDaemon)
            .map_err(io(&exe))
    }

    /// Waits until `check` gives a value, failing when the daemon exits
    /// or `WAIT` passes.
    fn wait<T>(&mut self, what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T, Failure> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = check() {
                return Ok(v);
            }
            if let Ok(Some(status)) = self.0.try_wait() {
                return Err(Failure(
                    exit::IOERR,
                    format!("the demo daemon exited ({status}) before {what}"),
                ));
            }
            if Instant::now() >= deadline {
                return Err(Failure(
                    exit::TEMPFAIL,
                    format!("no {what} after {}s", WAIT.as_secs()),
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The spool, once the daemon has made it and holds its lock.
    fn wait_for_spool(&mut self, path: &Path) -> Result<Spool, Failure> {
        self.wait("spool held by the daemon", || {
            Spool::open(path)
                .ok()
                .filter(|s| s.running_daemon().is_some())
        })
    }

    /// The records of `ids`, once each job is filed and its e-mail written.
    fn wait_for_records(
        &mut self,
        spool: &Spool,
        ids: &[String],
    ) -> Result<Vec<JobRecord>, Failure> {
        self.wait("record of every job with its e-mail", || {
            let mut filed = Vec::new();
            for place in [Place::Done, Place::Failed] {
                filed.extend(spool.records(place).ok()?);
            }
            ids.iter()
                .map(|id| {
                    filed
                        .iter()
                        .find(|r| {
                            &r.id == id && !matches!(r.notification, Some(Notification::Pending(_)))
                        })
                        .cloned()
                })
                .collect()
        })
    }

    /// SIGTERM, then the daemon's own clean stop.
    fn stop(&mut self) -> Result<(), Failure> {
        let status = self.terminate().map_err(|e| Failure(exit::IOERR, e))?;
        if !status.success() {
            return Err(Failure(
                exit::IOERR,
                format!("the demo daemon did not stop cleanly ({status})"),
            ));
        }
        Ok(())
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus, String> {
        if let Ok(Some(status)) = self.0.try_wait() {
            return Ok(status);
        }
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| format!("cannot stop the demo daemon: {e}"))?;
        self.0
            .wait()
            .map_err(|e| format!("cannot stop the demo daemon: {e}"))
    }
}

impl Drop for DemoDaemon {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Copies the fixture tree, fills in the root placeholder, restores the
/// directories git cannot keep (empty cur/new/tmp) and each message's
/// mtime (its INTERNALDATE) from the delivery time at the start of its name.
fn copy_host(from: &Path, to: &Path) -> Result<(), Failure> {
    let root = std::path::absolute(to).map_err(io(to))?;
    for entry in walkdir::WalkDir::new(from).sort_by_file_name() {
        let entry = entry.map_err(|e| Failure(exit::IOERR, e.to_string()))?;
        let rel = entry
            .path()
            .strip_prefix(from)
            .expect("below the walk root");
        let dest = to.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dest).map_err(io(&dest))?;
            let name = entry.file_name().as_bytes();
            if name == b"Maildir"
                || (name.starts_with(b".") && rel.parent().is_some_and(|p| p.ends_with("Maildir")))
            {
                for sub in ["cur", "new", "tmp"] {
                    std::fs::create_dir_all(dest.join(sub)).map_err(io(&dest))?;
                }
            }
        } else if ft.is_file() {
            let data = std::fs::read(entry.path()).map_err(io(entry.path()))?;
            if rel.starts_with("users.old") {
                let text = String::from_utf8_lossy(&data)
                    .replace(ROOT_PLACEHOLDER, &root.to_string_lossy())
                    .replace(OWNER_PLACEHOLDER, &demo_owner());
                std::fs::write(&dest, text).map_err(io(&dest))?;
            } else {
                std::fs::write(&dest, data).map_err(io(&dest))?;
            }
            let in_maildir = rel
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|p| p == "cur" || p == "new");
            if in_maildir {
                set_mtime_from_name(&dest)?;
            }
        }
    }
    Ok(())
}

/// The demo mail users' uid and gid: whoever runs the demo, or for root
/// (whom Dovecot would refuse) an ordinary uid.
fn demo_owner() -> String {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    if uid.is_root() {
        "1000:1000".into()
    } else {
        format!("{uid}:{gid}")
    }
}

fn set_mtime_from_name(path: &Path) -> Result<(), Failure> {
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    let digits: Vec<u8> = name
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    let Some(secs) = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    else {
        return Ok(());
    };
    let t = TimeSpec::new(secs, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io(path)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packaged binary run outside the source tree says where it looked
    /// and which flag to give, before it touches `--dir`.
    #[test]
    fn no_demo_host_names_the_path_and_the_flag() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("demo");
        let Err(Failure(code, msg)) = run(&dir, &t.path().join("nowhere")) else {
            panic!("a missing demo host must fail");
        };
        assert_eq!(code, exit::NOINPUT);
        assert!(
            msg.contains("nowhere") && msg.contains("--fixtures"),
            "{msg}"
        );
        assert!(!dir.exists());
    }
}
