//! Running a job: the per-mailbox protocol (`mailbox`) over every mailbox
//! the job names, with folder content handled by `folders`.

pub mod assess;
mod courier;
pub mod env;
pub mod folders;
pub mod mailbox;
pub(crate) mod manifest;
pub(crate) mod ownership;
pub(crate) mod server;
pub mod sweep;
mod switch;
pub mod verify;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

use crate::config::Config;
use crate::copy::{CopyError, Mismatch, Workers};
use crate::job::{Domain, Job, LocalPart};
use crate::maildir::names::NameError;
use crate::progress::Progress;
use crate::report::{MailboxReport, MailboxStatus, Report, now_rfc3339};
use crate::safe_fs::Dir;
use crate::throttle::{Limiter, Limits, Throttle};
use crate::userdb::passwd_file::UserdbError;

pub use env::Env;
use folders::SyncContext;

/// Why one mailbox could not be migrated. The job goes on with the others.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("{}: {source}", crate::shown::path(path))]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Userdb(#[from] UserdbError),
    #[error(transparent)]
    Sql(#[from] crate::userdb::sql::SqlError),
    /// The connection broke around the commit of the new login: it may be
    /// live, so the old one stays refused (two working logins would be
    /// worse than none until the job runs again).
    #[error(
        "{0}; the new login may or may not have been written, so the old login stays refused until the job runs again"
    )]
    SwitchUnknown(crate::userdb::sql::SqlError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("no entry for {user} in {db}")]
    NotInSource { user: String, db: String },
    #[error("{0}")]
    Conflict(String),
    #[error("source Maildir: {0}")]
    Location(String),
    #[error("{}: {err}", crate::shown::path(dir))]
    FolderName { dir: PathBuf, err: NameError },
    #[error("folders {first:?} and {second:?} both decode to {name:?}")]
    NameConflict {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "{} exists and was not created by maildir-migrate; not writing into it",
        crate::shown::path(path)
    )]
    TargetNotOurs { path: PathBuf },
    #[error("verification of folder {folder:?} failed: {mismatch}")]
    Verify { folder: String, mismatch: Mismatch },
    #[error("folder {folder:?} keeps changing while being copied; try again later")]
    Unstable { folder: String },
    #[error(
        "{}: {} still to copy, but only {} free on the target filesystem",
        crate::shown::path(path),
        crate::shown::bytes_human(*need),
        crate::shown::bytes_human(*free)
    )]
    NoRoom { path: PathBuf, need: u64, free: u64 },
    /// The new server, asked before the login went live, disagrees.
    #[error("the new Dovecot does not serve the mailbox as copied: {0}")]
    NewServer(String),
    /// The old server, asked after the freeze, would still serve it.
    #[error("{0}; the old login is given back")]
    OldServer(String),
}

impl From<crate::userdb::TargetError> for MailboxError {
    fn from(e: crate::userdb::TargetError) -> MailboxError {
        use crate::userdb::TargetError as T;
        match e {
            T::Userdb(e) => MailboxError::Userdb(e),
            T::Sql(e) => MailboxError::Sql(e),
            T::MayHaveCommitted(e) => MailboxError::SwitchUnknown(e),
            T::Conflict(why) => MailboxError::Conflict(why),
            T::NotFound { user, db } => MailboxError::NotInSource { user, db },
        }
    }
}

impl MailboxError {
    pub fn io(path: &Path, source: io::Error) -> MailboxError {
        MailboxError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What stops a whole job before any mailbox is touched.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what} {}: {source}", crate::shown::path(path))]
    Root {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Userdb(UserdbError),
    /// What the configuration points at cannot be used.
    #[error("{key}: {problem}")]
    Config { key: &'static str, problem: String },
    /// A whole-domain job for a domain the source does not know (a typo?).
    #[error("no mailboxes of {domain} in the source userdb ({db})")]
    NoMailboxes { domain: String, db: String },
    #[error("cannot start the copy threads: {0}")]
    Pool(String),
    /// A stop was requested; every mailbox is complete or was rolled back
    /// to its old login, and a rerun resumes.
    #[error("interrupted by a stop request; run the job again to resume")]
    Interrupted,
}

impl RunError {
    /// A userdb that is not there or not a file is the configuration's
    /// fault: say which key names it.
    pub fn userdb(key: &'static str, e: UserdbError) -> RunError {
        match e {
            UserdbError::Missing { .. }
            | UserdbError::Symlink { .. }
            | UserdbError::NotAFile { .. } => RunError::Config {
                key,
                problem: e.to_string(),
            },
            e => RunError::Userdb(e),
        }
    }
}

/// One mailbox a job covers, as selected: its local part and its key in
/// the source userdb (exactly as the source spells it, where the source
/// listed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub local: LocalPart,
    pub source_key: String,
}

impl Named {
    /// The address as the source spells it (as far as the selection knows).
    pub fn user(&self, domain: &Domain) -> String {
        if self.source_key.contains('@') {
            self.source_key.clone()
        } else {
            format!("{}@{domain}", self.local)
        }
    }
}

/// One mailbox the job covers, or a userdb name that is not usable.
pub type Selected = Result<Named, (String, String)>;

/// The mailboxes a job covers: the job's list, else every entry of the
/// domain in the source userdb (in file order). A whole-domain job that
/// finds none is an error: a typo must not report success.
pub fn select_mailboxes(env: &Env<'_>) -> Result<Vec<Selected>, RunError> {
    let domain = &env.scope.domain;
    if let Some(list) = &env.scope.mailboxes {
        return Ok(list
            .iter()
            .map(|local| {
                Ok(Named {
                    local: local.clone(),
                    source_key: env.cfg.source.userdb.key(local, domain),
                })
            })
            .collect());
    }
    let users = env
        .source
        .users(domain.as_str())
        .map_err(RunError::Userdb)?;
    let listed_by_domain = env.source.lists_by_domain();
    let selected = domain_users(
        users,
        domain,
        env.cfg.source.userdb.per_domain(),
        listed_by_domain,
    );
    if selected.is_empty() {
        return Err(RunError::NoMailboxes {
            domain: domain.to_string(),
            db: env.source.describe(),
        });
    }
    Ok(selected)
}

/// A user and what happened to its mailbox (the error as text).
pub(crate) type PerMailbox<T> = (String, Result<T, String>);

/// Runs `f` for every mailbox a read-only command covers and pairs each
/// user with the outcome (a name that cannot be used is an error too).
pub(crate) fn each_mailbox<T>(
    env: &Env<'_>,
    mut f: impl FnMut(&Named) -> Result<T, MailboxError>,
) -> Result<Vec<PerMailbox<T>>, RunError> {
    Ok(select_mailboxes(env)?
        .into_iter()
        .map(|sel| match sel {
            Ok(named) => (
                named.user(&env.scope.domain),
                f(&named).map_err(|e| e.to_string()),
            ),
            Err((user, why)) => (user, Err(why)),
        })
        .collect())
}

/// The domain's entries among `users`. The domain matches in any case; a
/// name the database listed for the domain that names another domain is
/// an error, never silently left out.
fn domain_users(
    users: Vec<String>,
    domain: &Domain,
    per_domain: bool,
    listed_by_domain: bool,
) -> Vec<Selected> {
    let mut out: Vec<Selected> = Vec::new();
    for user in users {
        let local = match user.rsplit_once('@') {
            Some((l, d)) if d.eq_ignore_ascii_case(domain.as_str()) => l,
            None if per_domain => &user,
            _ if listed_by_domain => {
                let why = format!(
                    "listed for {domain}, but {:?} is not an address of {domain}",
                    crate::shown::text(&user)
                );
                out.push(Err((crate::shown::text(&user), why)));
                continue;
            }
            _ => continue,
        };
        let sel = LocalPart::parse(local)
            .map(|local| Named {
                local,
                source_key: user.clone(),
            })
            .map_err(|e| (format!("{}@{domain}", crate::shown::text(local)), e));
        if !out.contains(&sel) {
            out.push(sel);
        }
    }
    out
}

/// Runs a job and returns its report. When `stop` is set, files in flight
/// finish, the current mailbox is rolled back and `Interrupted` returned.
/// Each mailbox copies under the limits `limiter` has when it starts.
/// `resumed`: mailboxes an interrupted run of this job already finished
/// (the daemon's checkpoint); they are not touched again and keep their
/// reports.
pub fn run_job(
    cfg: &Config,
    job: &Job,
    progress: &dyn Progress,
    stop: &AtomicBool,
    limiter: &Limiter,
    resumed: &[MailboxReport],
) -> Result<Report, RunError> {
    let started = now_rfc3339();
    let env = Env::open(cfg, job.scope())?;
    // Before a cutover: clients must see the same folder names.
    if job.cutover {
        same_namespaces(cfg)?;
    }
    let selected = select_mailboxes(&env)?;
    let pool = copy_pool(cfg.migration.threads)?;
    let ctx = SyncContext {
        classifier: &cfg.migration.classifier,
        copy: cfg.copy_options(),
        workers: Workers {
            pool: &pool,
            progress,
            stop,
            throttle: None,
        },
        names: cfg.target.folder_names,
        layout: cfg.target.layout,
        skipped: cfg.migration.skipped_folders,
    };
    info!(job = job.id.as_str(), domain = %job.domain, mode = %job.mode, mailboxes = selected.len(), "job started");
    progress.job_started(selected.len());
    let mut reports = Vec::with_capacity(selected.len());
    let mut switched = Vec::new();
    let mut limits = None;
    for sel in selected {
        if stop.load(Ordering::Relaxed) {
            info!(job = job.id.as_str(), "job interrupted");
            return Err(RunError::Interrupted);
        }
        let report = match sel {
            Ok(named) => {
                let user = named.user(&job.domain);
                let throttle = throttle_for(limiter, &mut limits, job, &user);
                let ctx = ctx.with_throttle(throttle.as_deref());
                let r = migrate_one(&env, job, &ctx, &named, resumed);
                if r.status == MailboxStatus::Done {
                    switched.push((reports.len(), named));
                }
                r
            }
            Err((user, why)) => MailboxReport::failed(user, why),
        };
        log_mailbox(&report);
        reports.push(report);
    }
    // The last mailbox may have been rolled back by the stop.
    if stop.load(Ordering::Relaxed) {
        info!(job = job.id.as_str(), "job interrupted");
        return Err(RunError::Interrupted);
    }
    read_back_switched(&env, switched, &mut reports);
    let mut report = Report::finish(
        job.id.as_str().to_string(),
        job.domain.to_string(),
        job.mode,
        reports,
        started,
    );
    if job.cutover && cfg.cutover.freeze_command.is_empty() {
        let w = "no [cutover] freeze_command: IMAP/POP3 sessions open on the old server at the freeze were not ended, and what such a session changed after the final pass stays in the old store (the sweep moves new mail only)";
        warn!(job = job.id.as_str(), "{w}");
        report.warnings.push(w.into());
    }
    info!(job = job.id.as_str(), status = ?report.status, "job finished");
    Ok(report)
}

fn copy_pool(threads: usize) -> Result<rayon::ThreadPool, RunError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("copy-{i}"))
        .build()
        .map_err(|e| RunError::Pool(e.to_string()))
}

/// What a mailbox that starts now takes its copy tokens from; the limits
/// are logged at the first mailbox and whenever a reload changed them.
fn throttle_for(
    limiter: &Limiter,
    logged: &mut Option<Limits>,
    job: &Job,
    user: &str,
) -> Option<Arc<Throttle>> {
    let (limits, throttle) = limiter.current();
    if *logged != Some(limits) {
        info!(job = job.id.as_str(), user, io_limit = %limits, "I/O limit from this mailbox on");
        *logged = Some(limits);
    }
    throttle
}

/// Refuses a cutover after which clients would see other folder names.
fn same_namespaces(cfg: &Config) -> Result<(), RunError> {
    match server::compare_namespaces(cfg) {
        server::Namespaces::Same => Ok(()),
        server::Namespaces::Unknown(why) => {
            info!("{why}");
            Ok(())
        }
        server::Namespaces::Differ(problem) => Err(RunError::Config {
            key: "verify.doveadm_config",
            problem,
        }),
    }
}

/// One selected mailbox migrated, or its report kept from the interrupted
/// run that finished it.
fn migrate_one(
    env: &Env<'_>,
    job: &Job,
    ctx: &SyncContext<'_>,
    named: &Named,
    resumed: &[MailboxReport],
) -> MailboxReport {
    let progress = ctx.workers.progress;
    let user = named.user(&job.domain);
    progress.mailbox_started(&user);
    let r = match resumed
        .iter()
        .find(|r| r.user == user && r.status == MailboxStatus::Done)
    {
        Some(done) => done.clone(),
        None => mailbox::migrate(env, job, ctx, named),
    };
    progress.mailbox_finished(&r);
    r
}

fn log_mailbox(report: &MailboxReport) {
    match &report.error {
        Some(e) => warn!(user = %report.user, "mailbox failed: {e}"),
        None => {
            info!(user = %report.user, status = ?report.status, messages = report.messages, bytes = report.bytes, "mailbox finished")
        }
    }
    for w in &report.warnings {
        warn!(user = %report.user, "{w}");
    }
}

/// A writer that ignores the userdb's lock may have undone an earlier
/// mailbox's switch while later ones ran: each switched mailbox (at its
/// index in `reports`) is read back once more.
fn read_back_switched(env: &Env<'_>, switched: Vec<(usize, Named)>, reports: &mut [MailboxReport]) {
    for (i, named) in switched {
        let w = assess::assess(env, &named)
            .and_then(|a| switch::read_back(env, &a))
            .unwrap_or_else(|e| vec![format!("reading the userdbs back failed: {e}")]);
        for w in &w {
            warn!(user = %reports[i].user, "{w}");
        }
        reports[i].warnings.extend(w);
    }
}

/// Opens a configured mail root (the administrator's path may contain
/// symlinks; nothing below it may).
pub(crate) fn open_root(what: &'static str, path: &Path) -> Result<(Dir, PathBuf), RunError> {
    let err = |source| RunError::Root {
        what,
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(err)?;
    let dir = Dir::open_root(&canonical).map_err(err)?;
    Ok((dir, canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Progress;
    use crate::userdb::passwd_file::PasswdFile;
    use std::sync::atomic::AtomicUsize;

    fn shown(list: Vec<Selected>) -> Vec<String> {
        list.into_iter()
            .map(|s| match s {
                Ok(n) => format!("{} {}", n.local, n.source_key),
                Err((u, _)) => format!("bad {u}"),
            })
            .collect()
    }

    #[test]
    fn domain_users_from_shared_and_per_domain_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("u");
        std::fs::write(
            &p,
            "a@x.cz:p\nb@y.cz:p\n../e@x.cz:p\nc@x.cz:p\na@x.cz:q\nMixed@X.CZ:p\n",
        )
        .unwrap();
        let f = PasswdFile::load(&p).unwrap();
        let d = Domain::parse("x.cz").unwrap();
        assert_eq!(
            shown(domain_users(f.users(), &d, false, false)),
            ["a a@x.cz", "bad ../e@x.cz", "c c@x.cz", "Mixed Mixed@X.CZ"]
        );
        std::fs::write(&p, "a:p\nb@x.cz:p\nz@y.cz:p\n").unwrap();
        let f = PasswdFile::load(&p).unwrap();
        assert_eq!(
            shown(domain_users(f.users(), &d, true, false)),
            ["a a", "b b@x.cz"]
        );
    }

    /// Panics on the second message copied, after writing a late message
    /// into the source the first time (so that the second copy happens in
    /// the frozen final pass).
    struct PanicAfterFreeze {
        copied: AtomicUsize,
        late: PathBuf,
    }

    impl Progress for PanicAfterFreeze {
        fn message_copied(&self, _bytes: u64) {
            if self.copied.fetch_add(1, Ordering::SeqCst) == 0 {
                std::fs::write(&self.late, b"Subject: late\n\nx\n").unwrap();
            } else {
                panic!("injected after the freeze");
            }
        }
    }

    /// A panic after the freeze fails only that mailbox and gives its old
    /// login back; the job goes on with the next one.
    #[test]
    fn a_panic_after_the_freeze_fails_only_its_mailbox_with_its_old_login_back() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // Dovecot refuses uid 0; a non-root run can only own its files.
        let owner = match nix::unistd::geteuid().as_raw() {
            0 => crate::safe_fs::Owner {
                uid: 4242,
                gid: 4242,
            },
            me => crate::safe_fs::Owner {
                uid: me,
                gid: nix::unistd::getegid().as_raw(),
            },
        };
        let mut users = String::new();
        for u in ["a", "b"] {
            let md = root.join(format!("old/x.cz/{u}/Maildir"));
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(md.join(sub)).unwrap();
            }
            std::fs::write(md.join("cur/1.m:2,S"), b"Subject: one\n\nx\n").unwrap();
            users.push_str(&format!(
                "{u}@x.cz:{{PLAIN}}p:{uid}:{gid}::{}::\n",
                root.join(format!("old/x.cz/{u}")).display(),
                uid = owner.uid,
                gid = owner.gid
            ));
        }
        std::fs::write(root.join("users.old"), &users).unwrap();
        std::fs::create_dir_all(root.join("new")).unwrap();
        let cfg = Config::parse(
            &root.join("c.toml"),
            "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"old\"\n\
             [target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"new\"\n\
             [migration]\nfsync = false\n",
        )
        .unwrap();
        let job = Job::parse(
            Path::new("j.json"),
            "j",
            r#"{"domain": "x.cz", "mode": "move", "mailboxes": ["a"]}"#,
        )
        .unwrap();
        let progress = PanicAfterFreeze {
            copied: AtomicUsize::new(0),
            late: root.join("old/x.cz/a/Maildir/new/2.late"),
        };
        let stop = AtomicBool::new(false);
        let limiter = Limiter::new(cfg.migration.limits);
        let report = run_job(&cfg, &job, &progress, &stop, &limiter, &[]).unwrap();
        let a = &report.mailboxes[0];
        assert_eq!(a.status, MailboxStatus::Failed, "{a:?}");
        assert!(a.error.as_deref().unwrap().contains("panic"), "{a:?}");
        let old = std::fs::read_to_string(root.join("users.old")).unwrap();
        assert!(!old.contains("nologin"), "the old login is back: {old}");
        let new = std::fs::read_to_string(root.join("users.new")).unwrap_or_default();
        assert!(!new.contains("a@x.cz"), "no new login: {new}");
    }

    /// A database lists rows by their domain column: a row of the domain
    /// whose username names another domain is reported, never dropped.
    #[test]
    fn a_listed_row_of_another_domain_is_an_error() {
        let d = Domain::parse("x.cz").unwrap();
        let users = vec!["a@x.cz".to_string(), "alias@y.cz".to_string()];
        let got = shown(domain_users(users, &d, false, true));
        assert_eq!(got, ["a a@x.cz", "bad alias@y.cz"]);
    }
}
