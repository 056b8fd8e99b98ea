//! `check`: the preflight. It looks at everything a job and the daemon
//! will need (userdbs, mail roots, the new tree's owner, the freeze
//! command, the e-mail relay, the SQL schemas, the spool) and writes
//! nothing: permissions are asked with access(2) and the file modes, the
//! O_TMPFILE probe makes an unnamed file that vanishes when closed, SQL
//! statements are prepared and never run. Each check is one [`Line`]: OK,
//! WARN (works, but look at it) or FAIL (a job or the daemon would fail),
//! with the fix. The daemon logs the same lines when it starts.

use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};
use serde::Serialize;

use crate::config::{Config, Userdb};
use crate::dovecot::Doveadm;
use crate::job::Domain;
use crate::migrate::ownership;
use crate::queue::{Queue, QueueError, QueueSettings};
use crate::safe_fs::{Dir, Owner};
use crate::shown::bytes_human;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub status: Status,
    /// What was checked: a config key (`source.userdb`) or `spool`, `smtp`.
    pub check: &'static str,
    /// What was found.
    pub found: String,
    /// What to do (WARN and FAIL only).
    pub fix: Option<String>,
}

impl Line {
    fn ok(check: &'static str, found: impl Into<String>) -> Line {
        Line {
            status: Status::Ok,
            check,
            found: found.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Line::ok(check, found)
        }
    }

    fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            status: Status::Fail,
            ..Line::warn(check, found, fix)
        }
    }
}

/// Every line, and the worst status among them.
#[derive(Debug, Serialize)]
pub struct Checks {
    pub status: Status,
    pub checks: Vec<Line>,
}

impl Checks {
    fn of(checks: Vec<Line>) -> Checks {
        Checks {
            status: checks.iter().map(|l| l.status).max().unwrap_or(Status::Ok),
            checks,
        }
    }

    /// The configuration cannot be loaded: nothing else can be checked.
    pub fn unusable_config(problem: &str) -> Checks {
        Checks::of(vec![Line::fail(
            "config",
            problem,
            "correct the file (see maildir-migrate.toml(5)), or name another with --config",
        )])
    }

    /// One log event per line, at the level its status calls for.
    pub fn log(&self) {
        for l in &self.checks {
            let fix = l.fix.as_deref().unwrap_or("");
            match l.status {
                Status::Ok => tracing::info!(check = l.check, "check OK: {}", l.found),
                Status::Warn => tracing::warn!(check = l.check, fix, "check WARN: {}", l.found),
                Status::Fail => tracing::error!(check = l.check, fix, "check FAIL: {}", l.found),
            }
        }
    }
}

/// Runs every check of a loaded configuration; with `domain`, also the
/// room on the target for that domain and its own userdb files.
pub fn run(cfg: &Config, config_path: &Path, domain: Option<&Domain>) -> Checks {
    let mut lines = vec![Line::ok(
        "config",
        format!("{} loads", config_path.display()),
    )];
    let auth = dovecot_auth(cfg);
    lines.push(auth.line.clone());
    lines.push(userdb_line(
        "source.userdb",
        &cfg.source.userdb,
        domain,
        &auth,
        false,
    ));
    lines.push(userdb_line(
        "target.userdb",
        &cfg.target.userdb,
        domain,
        &auth,
        true,
    ));
    lines.extend(mail_roots(cfg));
    if let Some(d) = domain {
        lines.extend(domain_lines(cfg, d));
    }
    lines.push(owner_line(cfg.target.owner));
    lines.push(freeze_line(&cfg.cutover.freeze_command));
    lines.push(match crate::notify::probe(&cfg.notify) {
        Ok(found) => Line::ok("notify", found),
        Err(e) => Line::fail(
            "notify",
            e.to_string(),
            "start the relay or correct notify.smtp / starttls / ca_file / username",
        ),
    });
    lines.push(spool_line(&cfg.spool_dir));
    if let Some(q) = &cfg.queue {
        lines.push(queue_line(q));
    }
    Checks::of(lines)
}

/// The job queue answers, with the schema this build needs.
fn queue_line(settings: &QueueSettings) -> Line {
    match Queue::connect(settings).and_then(|mut q| q.check_schema()) {
        Ok(()) => Line::ok(
            "queue",
            format!("{}: schema {} is current", settings.url, settings.schema.as_str()),
        ),
        Err(e @ QueueError::Version { .. }) => Line::fail(
            "queue",
            e.to_string(),
            "run `maildir-migrate queue init` as the database owner",
        ),
        Err(e) => Line::fail(
            "queue",
            e.to_string(),
            "start PostgreSQL or correct queue.url / password_file; `queue init --daemon-role` grants the daemon's role",
        ),
    }
}

/// Who the new Dovecot's auth process reads the userdb as.
#[derive(Debug, Clone)]
struct Auth {
    /// `None`: unknown (the line says why).
    who: Option<(String, Owner)>,
    line: Line,
}

/// The user of `service auth` from the new Dovecot's configuration
/// (`[verify] doveadm` with its config, else the host's doveadm).
fn dovecot_auth(cfg: &Config) -> Auth {
    let doveadm = cfg.verify.doveadm.clone().unwrap_or_else(|| Doveadm {
        bin: PathBuf::from("/usr/bin/doveadm"),
        config: None,
    });
    let unknown = |found: String| Auth {
        who: None,
        line: Line::warn(
            "dovecot.auth",
            found,
            "make sure the new Dovecot's auth process can read the target userdb",
        ),
    };
    if !doveadm.bin.exists() {
        return unknown(format!(
            "no {}: cannot tell which user Dovecot's auth runs as",
            doveadm.bin.display()
        ));
    }
    let name = match doveadm.setting("service/auth/user") {
        Ok(n) => n,
        Err(e) => return unknown(e),
    };
    match nix::unistd::User::from_name(&name) {
        Ok(Some(u)) => {
            let owner = Owner {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            };
            Auth {
                line: Line::ok(
                    "dovecot.auth",
                    format!(
                        "Dovecot's auth runs as {name} (uid {} gid {})",
                        owner.uid, owner.gid
                    ),
                ),
                who: Some((name, owner)),
            }
        }
        _ => unknown(format!(
            "Dovecot's auth user {name:?} is not a user on this host"
        )),
    }
}

/// A side's userdb: a file (per domain only with `--domain`) or a database.
fn userdb_line(
    check: &'static str,
    db: &Userdb,
    domain: Option<&Domain>,
    auth: &Auth,
    target: bool,
) -> Line {
    let path = match (db, domain) {
        (Userdb::Sql(s), _) => {
            return match crate::userdb::sql::with_retry(s, |db| db.check_queries()) {
                Ok(()) => Line::ok(check, format!("{}: connected; every query prepares", s.url)),
                Err(e) => Line::fail(
                    check,
                    e.to_string(),
                    "start the database, create the missing table or column, or correct the queries",
                ),
            };
        }
        (Userdb::File(p), Some(d)) => p.for_domain(d),
        (Userdb::File(p), None) if p.per_domain() => {
            return Line::ok(
                check,
                "one file per domain (%d): give --domain D to check one",
            );
        }
        (Userdb::File(p), None) => p.for_domain(&Domain::parse("d.example").expect("valid")),
    };
    let line = userdb_file(check, &path, target);
    match (&auth.who, line.status, std::fs::metadata(&path)) {
        (Some((name, who)), Status::Ok, Ok(meta)) => {
            auth_reads(check, &path, &meta, (name, *who), target)
        }
        _ => line,
    }
}

/// A userdb file the daemon reads and rewrites (a temporary file and a
/// lock file beside it). A target file that does not exist yet is created.
fn userdb_file(check: &'static str, path: &Path, target: bool) -> Line {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut found = format!("{shown}: readable and writable");
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && target => {
            found = format!(
                "{shown} does not exist yet; it is created with the source userdb's owner and mode"
            );
        }
        Err(e) => {
            return Line::fail(
                check,
                format!("{shown}: {e}"),
                format!("create it or correct {check}"),
            );
        }
        Ok(_) if access(path, AccessFlags::R_OK | AccessFlags::W_OK).is_err() => {
            return Line::fail(
                check,
                format!("{shown} is not readable and writable by this user"),
                format!("run as the daemon's user (root), or chmod u+rw {shown}"),
            );
        }
        Ok(_) => {}
    }
    match access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) => Line::ok(check, found),
        Err(e) => Line::fail(
            check,
            format!(
                "{}: the daemon cannot create files there ({e})",
                dir.display()
            ),
            "the rewrite puts a temporary file and a lock file beside the userdb: make the directory writable",
        ),
    }
}

/// Whether Dovecot's auth (`name`, `who`) can reach and read the file. The
/// old server already reads the source: there a wrong guess of its user
/// is worth a look, not a refusal.
fn auth_reads(
    check: &'static str,
    path: &Path,
    meta: &std::fs::Metadata,
    (name, who): (&str, Owner),
    target: bool,
) -> Line {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    let groups = ownership::groups_of(who);
    let readable =
        ownership::check_reachable(dir, Path::new("x"), who).and_then(
            |()| match ownership::permits(meta, who.uid, &groups, 0o4) {
                true => Ok(()),
                false => Err(format!("{shown} cannot be read by {name}")),
            },
        );
    let Err(e) = readable else {
        return Line::ok(
            check,
            format!("{shown}: readable and writable; Dovecot's auth ({name}) can read it"),
        );
    };
    let found = format!("{e} (Dovecot's auth runs as {name})");
    let fix = format!("e.g. chgrp {name} {shown} && chmod g+r {shown}");
    if target {
        Line::fail(check, found, fix)
    } else {
        Line::warn(check, found, fix)
    }
}

/// Both mail roots: directories the daemon can read (source) and write
/// (target); the target's filesystem, O_TMPFILE and reflinks.
fn mail_roots(cfg: &Config) -> Vec<Line> {
    let source = &cfg.source.mail_root;
    let target = &cfg.target.mail_root;
    let mut lines = vec![
        root_line(
            "source.mail_root",
            source,
            AccessFlags::R_OK | AccessFlags::X_OK,
        ),
        root_line(
            "target.mail_root",
            target,
            AccessFlags::W_OK | AccessFlags::X_OK,
        ),
    ];
    if lines.iter().any(|l| l.status == Status::Fail) {
        return lines;
    }
    lines.push(
        match Dir::open_root(target).and_then(|d| d.create_anonymous(0o600)) {
            Ok(Some(_unnamed)) => {
                Line::ok("copy", format!("O_TMPFILE works in {}", target.display()))
            }
            Ok(None) => Line::warn(
                "copy",
                format!(
                    "{} refuses O_TMPFILE: messages are staged under names in tmp/",
                    target.display()
                ),
                "nothing to do; a filesystem with O_TMPFILE (ext4, XFS, btrfs) copies faster",
            ),
            Err(e) => Line::fail(
                "copy",
                format!("{}: O_TMPFILE: {e}", target.display()),
                "make the target mail root writable",
            ),
        },
    );
    lines.push(Line::ok("copy", reflink(source, target)));
    lines
}

fn root_line(check: &'static str, root: &Path, need: AccessFlags) -> Line {
    let shown = root.display();
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => match access(root, need) {
            Ok(()) => Line::ok(check, format!("{shown} ({})", fs_name(root))),
            Err(e) => Line::fail(
                check,
                format!("{shown}: {e}"),
                "run as the daemon's user (root)",
            ),
        },
        Ok(_) => Line::fail(
            check,
            format!("{shown} is not a directory"),
            format!("correct {check}"),
        ),
        Err(e) => Line::fail(
            check,
            format!("{shown}: {e}"),
            format!("create it (mkdir -p {shown}) or correct {check}"),
        ),
    }
}

/// Whether `copy_file_range` can share extents: one filesystem for both
/// roots, of a kind that can (XFS only when made with reflink=1, which
/// only an ioctl would tell).
fn reflink(source: &Path, target: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    if dev(source) != dev(target) {
        return "no reflink: the mail roots are on different filesystems (every message is copied)"
            .into();
    }
    match fs_name(target) {
        "btrfs" | "bcachefs" => "reflink: one filesystem, copies share the source's extents".into(),
        "xfs" => {
            "reflink unknown: XFS shares extents only when made with reflink=1 (xfs_info)".into()
        }
        other => format!("no reflink on {other}: every message is copied"),
    }
}

/// The filesystem type of `path`, from statfs(2)'s magic number.
fn fs_name(path: &Path) -> &'static str {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => fs_type_name(s.filesystem_type().0 as u64),
        Err(_) => "unknown filesystem",
    }
}

/// Magic numbers of statfs(2) (linux/magic.h) for the filesystems a mail
/// store is likely to be on.
fn fs_type_name(magic: u64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x9123_683E => "btrfs",
        0x5846_5342 => "xfs",
        0xCA45_1A4E => "bcachefs",
        0x2FC1_2FC1 => "zfs",
        0x0102_1994 => "tmpfs",
        0x6969 => "nfs",
        0xFF53_4D42 | 0xFE53_4D42 => "cifs",
        0x794C_7630 => "overlayfs",
        0xF2F5_2010 => "f2fs",
        0x6573_5546 => "fuse",
        _ => "another filesystem",
    }
}

/// The room on the target's filesystem against what `plan` would copy.
fn domain_lines(cfg: &Config, domain: &Domain) -> Vec<Line> {
    let plan = match crate::plan::plan(cfg, domain.clone(), None) {
        Ok(p) => p,
        Err(e) => {
            return vec![Line::fail(
                "domain.plan",
                format!("domain {domain}: {e}"),
                "see `plan --domain`",
            )];
        }
    };
    vec![plan_line(&plan, domain), free_space(cfg, domain, &plan)]
}

/// What `plan` expects of the domain's mailboxes: a mailbox that would
/// fail (or a problem of the whole job) is a FAIL, named.
fn plan_line(plan: &crate::plan::Plan, domain: &Domain) -> Line {
    use crate::plan::PlanStatus;
    const CHECK: &str = "domain.plan";
    let failing: Vec<_> = plan
        .mailboxes
        .iter()
        .filter(|m| matches!(m.status, PlanStatus::Error | PlanStatus::Conflict))
        .collect();
    let fix = format!("see `maildir-migrate plan --domain {domain}`");
    if let Some(problem) = plan.problems.first() {
        return Line::fail(CHECK, format!("domain {domain}: {problem}"), fix);
    }
    match failing.first() {
        None => Line::ok(
            CHECK,
            format!(
                "domain {domain}: {} mailboxes, {} messages",
                plan.mailboxes.len(),
                plan.messages
            ),
        ),
        Some(first) => Line::fail(
            CHECK,
            format!(
                "domain {domain}: {} of {} mailboxes would fail, first {}: {}",
                failing.len(),
                plan.mailboxes.len(),
                first.user,
                first.problems.first().map_or("", String::as_str)
            ),
            fix,
        ),
    }
}

/// The room on the target against what the domain still needs.
fn free_space(cfg: &Config, domain: &Domain, plan: &crate::plan::Plan) -> Line {
    const CHECK: &str = "target.free_space";
    let root = &cfg.target.mail_root;
    match Dir::open_root(root).and_then(|d| d.available_bytes()) {
        Ok(free) if free >= plan.bytes => Line::ok(
            CHECK,
            format!(
                "domain {domain} has {} still to copy, {} free on {}",
                bytes_human(plan.bytes),
                bytes_human(free),
                root.display()
            ),
        ),
        Ok(free) => Line::fail(
            CHECK,
            format!(
                "domain {domain} has {} still to copy, only {} free on {}",
                bytes_human(plan.bytes),
                bytes_human(free),
                root.display()
            ),
            "free space or grow the filesystem before the job",
        ),
        Err(e) => Line::fail(
            CHECK,
            format!("{}: {e}", root.display()),
            "correct target.mail_root",
        ),
    }
}

/// `[target] uid`/`gid`: the user and group this host knows by them.
fn owner_line(owner: Option<Owner>) -> Line {
    const CHECK: &str = "target.uid";
    let Some(o) = owner else {
        return Line::ok(
            CHECK,
            "unset: each mailbox keeps its source entry's uid/gid",
        );
    };
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(o.uid));
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(o.gid));
    match (user.ok().flatten(), group.ok().flatten()) {
        (Some(u), Some(g)) => Line::ok(
            CHECK,
            format!("uid {} is {}, gid {} is {}", o.uid, u.name, o.gid, g.name),
        ),
        (u, g) => {
            let mut unknown = Vec::new();
            if u.is_none() {
                unknown.push(format!("uid {} has no user here", o.uid));
            }
            if g.is_none() {
                unknown.push(format!("gid {} has no group here", o.gid));
            }
            Line::warn(
                CHECK,
                unknown.join("; "),
                "Dovecot takes bare numbers, but a typo gives the mail to a stranger: \
                 create the mail user (useradd) or correct target.uid/gid",
            )
        }
    }
}

/// `[cutover] freeze_command`: its program exists and may be executed.
fn freeze_line(command: &[String]) -> Line {
    const CHECK: &str = "cutover.freeze_command";
    let Some(program) = command.first() else {
        return Line::warn(
            CHECK,
            "unset: sessions open at the freeze keep changing the old store",
            "set it, e.g. [\"/usr/bin/doveadm\", \"kick\", \"%u\"]",
        );
    };
    let executable = std::fs::metadata(program)
        .map_err(|e| e.to_string())
        .and_then(|m| match m.is_file() {
            true => access(Path::new(program), AccessFlags::X_OK).map_err(|e| e.to_string()),
            false => Err("not a regular file".into()),
        });
    match executable {
        Ok(()) => Line::ok(CHECK, format!("{program} is executable")),
        Err(e) => Line::fail(
            CHECK,
            format!("{program}: {e}"),
            format!("install it, chmod +x {program}, or correct cutover.freeze_command"),
        ),
    }
}

/// The spool as the daemon would find it (run as the daemon's user).
fn spool_line(path: &Path) -> Line {
    match crate::spool::Spool::inspect(path) {
        Ok(true) => Line::ok(
            "spool",
            format!(
                "{}: owner and modes as the daemon needs them",
                path.display()
            ),
        ),
        Ok(false) => Line::ok(
            "spool",
            format!(
                "{} does not exist yet; the daemon creates it",
                path.display()
            ),
        ),
        Err(e) => {
            let text = e.to_string();
            let (found, fix) = text.split_once(" Fix: ").map_or(
                (text.as_str(), "make it the daemon's, writable by it alone"),
                |(f, x)| (f, x),
            );
            Line::fail("spool", found, fix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_line_decides() {
        let c = Checks::of(vec![Line::ok("a", "x"), Line::warn("b", "y", "z")]);
        assert_eq!(c.status, Status::Warn);
        let c = Checks::of(vec![Line::fail("a", "x", "f"), Line::warn("b", "y", "z")]);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(Checks::of(vec![]).status, Status::Ok);
        assert_eq!(Checks::unusable_config("bad").status, Status::Fail);
    }

    #[test]
    fn filesystems_by_magic() {
        assert_eq!(fs_type_name(0xEF53), "ext4");
        assert_eq!(fs_type_name(0x9123_683E), "btrfs");
        assert_eq!(fs_type_name(0x5846_5342), "xfs");
        assert_eq!(fs_type_name(1), "another filesystem");
    }

    #[test]
    fn a_missing_or_plain_freeze_program_fails() {
        assert_eq!(freeze_line(&[]).status, Status::Warn);
        assert_eq!(freeze_line(&["/bin/sh".into()]).status, Status::Ok);
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("kick");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let l = freeze_line(&[plain.display().to_string()]);
        assert_eq!(l.status, Status::Fail, "{l:?}");
        assert!(l.found.contains("Permission denied"), "{l:?}");
        assert_eq!(
            freeze_line(&["/nonexistent/kick".into()]).status,
            Status::Fail
        );
    }

    #[test]
    fn owner_lines() {
        assert_eq!(owner_line(None).status, Status::Ok);
        assert_eq!(
            owner_line(Some(Owner { uid: 0, gid: 0 })).status,
            Status::Ok
        );
        let l = owner_line(Some(Owner {
            uid: 4_000_000_000,
            gid: 4_000_000_000,
        }));
        assert_eq!(l.status, Status::Warn);
        assert_eq!(
            l.found,
            "uid 4000000000 has no user here; gid 4000000000 has no group here"
        );
    }
}
