//! `maildir-migrate demo`: copies the bundled demo host into a scratch
//! directory and runs its jobs there, so the first command of the README
//! performs a real migration without root and without touching tracked
//! files.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::{Failure, exit, run_files};
use crate::report::JobStatus;

/// Marks a directory as made by `demo`, so re-running may replace it.
const STAMP: &str = ".maildir-migrate-demo";
/// Placeholder in the demo userdb for the scratch directory's path.
const ROOT_PLACEHOLDER: &str = "@DEMO_ROOT@";
/// Placeholder for the demo users' uid and gid: the new tree belongs to
/// the uid an entry names, and only root may give files to another uid.
const OWNER_PLACEHOLDER: &str = "@DEMO_UID@:@DEMO_GID@";

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

    let mut jobs: Vec<_> = std::fs::read_dir(dir.join("jobs"))
        .map_err(io(&dir.join("jobs")))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    jobs.sort();
    let mut all_done = true;
    for job in &jobs {
        println!("\n== {}", job.display());
        let report = run_files(&dir.join("config.toml"), job)?;
        all_done &= report.status == JobStatus::Done;
    }
    println!(
        "\nThe demo host was migrated in {d}:\n  \
         old store     {d}/oldmail  (untouched, Trash/Spam/Contacts stay here)\n  \
         new store     {d}/newmail\n  \
         old userdb    {d}/users.old  (migrated users now carry `nologin`)\n  \
         new userdb    {d}/users.new  (same hashes, explicit {{SCHEME}} prefixes)\n\
         Re-running a job is safe; every mailbox then reports \"already migrated\":\n  \
         cargo run --release -- run --config {d}/config.toml {d}/jobs/novak-stavby.json",
        d = dir.display()
    );
    Ok(if all_done { exit::OK } else { exit::PARTIAL })
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
