//! The per-mailbox protocol:
//!
//! 1. assess: read both userdb entries; done already, conflicting, or pending;
//! 2. bulk pass: copy the content while the mailbox is live;
//! 3. freeze: the source entry refuses logins (`nologin`), stays resolvable;
//! 4. delta pass with verification;
//! 5. switch: target entry written (or the shared entry rewritten);
//! 6. drop the "partial copy" marker from the target Maildir.
//!
//! A failure after the freeze thaws the source entry again, so a failed
//! mailbox keeps its old login and gets no target entry. Every step is
//! idempotent, so re-running a job completes whatever was left.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::copy::TargetFolder;
use crate::job::{Job, LocalPart, Mode};
use crate::maildir;
use crate::maildir::Layout;
use crate::maildir::names::NameEncoding;
use crate::report::{MailboxReport, MailboxStatus};
use crate::safe_fs::Dir;
use crate::userdb::passwd_file::{self, Change, Entry, PasswdFile};
use crate::userdb::{Account, SourceDb};

use super::folders::{self, FolderScan, MailboxSync, OWNER_MARKER, Pass, SyncContext};
use super::{MailboxError, RunError, open_root};

/// The mail location written for every migrated user.
const TARGET_MAIL: &str = "userdb_mail=maildir:~/Maildir";

/// Everything a job needs that does not change per mailbox.
pub struct Env<'a> {
    pub cfg: &'a Config,
    pub job: &'a Job,
    pub source: SourceDb,
    pub source_db: PathBuf,
    pub target_db: PathBuf,
    pub in_place: bool,
    source_root: Dir,
    source_root_path: PathBuf,
    pub(crate) target_root: Dir,
    target_root_path: PathBuf,
}

impl<'a> Env<'a> {
    pub fn open(cfg: &'a Config, job: &'a Job) -> Result<Env<'a>, RunError> {
        let (source_root, source_root_path) = open_root("source.mail_root", &cfg.source.mail_root)?;
        let (target_root, target_root_path) = open_root("target.mail_root", &cfg.target.mail_root)?;
        let source = cfg.source_db(&job.domain);
        let source_db = source.path().to_path_buf();
        if let Err(e) = std::fs::metadata(&source_db) {
            return Err(RunError::Userdb(
                if e.kind() == std::io::ErrorKind::NotFound {
                    passwd_file::UserdbError::Missing { path: source_db }
                } else {
                    passwd_file::UserdbError::Io {
                        path: source_db,
                        source: e,
                    }
                },
            ));
        }
        Ok(Env {
            cfg,
            job,
            target_db: cfg.target.userdb.for_domain(&job.domain),
            in_place: cfg.in_place(&job.domain),
            source,
            source_db,
            source_root,
            source_root_path,
            target_root,
            target_root_path,
        })
    }

    pub(crate) fn source_key(&self, local: &LocalPart) -> String {
        self.cfg.source.userdb.key(local, &self.job.domain)
    }

    pub(crate) fn target_key(&self, local: &LocalPart) -> String {
        self.cfg.target.userdb.key(local, &self.job.domain)
    }

    /// `userdb_mail=…`; folder names stored in UTF-8 need Dovecot told so.
    fn target_mail(&self) -> String {
        let mut m = TARGET_MAIL.to_string();
        if self.cfg.target.layout == Layout::Fs {
            m.push_str(":LAYOUT=fs");
        }
        if self.cfg.target.folder_names == NameEncoding::Utf8 {
            m.push_str(":UTF-8");
        }
        m
    }

    pub(crate) fn home_rel(&self, local: &LocalPart) -> Result<PathBuf, MailboxError> {
        self.cfg
            .target
            .home
            .expand(local, &self.job.domain)
            .map_err(MailboxError::Conflict)
    }

    /// The home as Dovecot will see it (the configured root, not the
    /// symlink-resolved one).
    fn home_for_userdb(&self, local: &LocalPart) -> Result<String, MailboxError> {
        Ok(self
            .cfg
            .target
            .mail_root
            .join(self.home_rel(local)?)
            .to_string_lossy()
            .into_owned())
    }

    fn not_in_source(&self, local: &LocalPart) -> MailboxError {
        MailboxError::NotInSource {
            user: self.source_key(local),
            path: self.source_db.clone(),
        }
    }

    pub(crate) fn account(&self, local: &LocalPart) -> Result<Account, MailboxError> {
        self.source
            .account(&self.source_key(local))?
            .ok_or_else(|| self.not_in_source(local))
    }

    /// The shared passwd-file entry (in-place mode only).
    pub(crate) fn passwd_entry(&self, local: &LocalPart) -> Result<Entry, MailboxError> {
        match PasswdFile::load(&self.source_db)?.find(&self.source_key(local))? {
            Some((_, e)) => Ok(e),
            None => Err(self.not_in_source(local)),
        }
    }

    /// The entry written to a separate target userdb: the hash unchanged
    /// but explicitly prefixed, the new home, and the source's other
    /// fields (quota rules, passdb fields such as a disabled login).
    pub(crate) fn target_entry(
        &self,
        src: &Account,
        local: &LocalPart,
    ) -> Result<Entry, MailboxError> {
        let owner = self.cfg.target.owner;
        let mut extra = vec![self.target_mail()];
        extra.extend(src.extra.iter().cloned());
        Ok(Entry {
            user: self.target_key(local),
            password: src.hash.value.clone(),
            uid: owner.map_or(src.uid.clone(), |o| o.uid.to_string()),
            gid: owner.map_or(src.gid.clone(), |o| o.gid.to_string()),
            gecos: String::new(),
            home: self.home_for_userdb(local)?,
            shell: String::new(),
            extra,
        })
    }

    /// The shared entry rewritten to the new location, hash untouched.
    fn switched_in_place(&self, current: &Entry, local: &LocalPart) -> Result<Entry, MailboxError> {
        let mut e = current.thawed();
        if let Some(o) = self.cfg.target.owner {
            e.uid = o.uid.to_string();
            e.gid = o.gid.to_string();
        }
        e.home = self.home_for_userdb(local)?;
        let mut extra = vec![self.target_mail()];
        extra.extend(e.extra_without_location().cloned());
        e.extra = extra;
        Ok(e)
    }

    /// The source Maildir, opened without following any symlink below the
    /// source mail root. `Ok(None)`: it does not exist (never used).
    pub(crate) fn open_source_maildir(
        &self,
        account: &Account,
        local: &LocalPart,
    ) -> Result<(PathBuf, Option<Dir>), MailboxError> {
        let path = maildir::maildir_path(
            self.cfg.source.layout,
            account.mail.as_deref(),
            &account.home,
            &self.source_key(local),
            local.as_str(),
            self.job.domain.as_str(),
        )
        .map_err(MailboxError::Location)?;
        let rel = [&self.cfg.source.mail_root, &self.source_root_path]
            .iter()
            .find_map(|root| path.strip_prefix(root).ok())
            .ok_or_else(|| {
                MailboxError::Location(format!(
                    "{} is outside source.mail_root {}",
                    path.display(),
                    self.cfg.source.mail_root.display()
                ))
            })?;
        let resolved = self.source_root_path.join(rel);
        match self.source_root.open_beneath(rel) {
            Ok(d) => Ok((resolved, Some(d))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((resolved, None)),
            Err(e)
                if e.raw_os_error() == Some(nix::libc::ELOOP)
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
            {
                Err(MailboxError::Location(format!(
                    "{} is or passes through a symlink or a non-directory; refusing to follow it",
                    path.display()
                )))
            }
            Err(e) => Err(MailboxError::io(&path, e)),
        }
    }
}

/// Where a mailbox stands before this run touches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending,
    AlreadyMigrated,
    Conflict(String),
}

/// A read-only look at one mailbox (shared by `run` and `plan`).
pub struct Assessment {
    pub source: Account,
    pub state: State,
    /// The scheme recognised for the carried hash (`None`: empty field).
    pub scheme: Option<String>,
}

pub fn assess(env: &Env<'_>, local: &LocalPart) -> Result<Assessment, MailboxError> {
    let source = env.account(local)?;
    let scheme = source.hash.scheme.clone();
    let state = if env.in_place {
        let current = env.passwd_entry(local)?;
        let switched = env.switched_in_place(&current, local)?;
        passwd_file::check_writable(&switched).map_err(MailboxError::Conflict)?;
        if switched == current {
            State::AlreadyMigrated
        } else {
            State::Pending
        }
    } else {
        let expected = env.target_entry(&source, local)?;
        passwd_file::check_writable(&expected).map_err(MailboxError::Conflict)?;
        match PasswdFile::load(&env.target_db)?.find(&expected.user)? {
            Some((_, e)) if e == expected && source.refuses_login => State::AlreadyMigrated,
            Some((_, e)) if e == expected => State::Pending,
            Some((line, _)) => State::Conflict(format!(
                "{} line {line} already has a different entry for {}; not overwriting it",
                env.target_db.display(),
                expected.user
            )),
            None => State::Pending,
        }
    };
    Ok(Assessment {
        source,
        state,
        scheme,
    })
}

/// Read-only scan of the source folders (for `plan`).
pub fn scan_source(
    env: &Env<'_>,
    a: &Assessment,
    local: &LocalPart,
) -> Result<(PathBuf, Option<(Dir, FolderScan)>), MailboxError> {
    let (path, dir) = env.open_source_maildir(&a.source, local)?;
    let scanned = match dir {
        Some(d) => {
            let s = folders::scan(&d, &env.cfg.migration.classifier, env.cfg.source.layout)?;
            Some((d, s))
        }
        None => None,
    };
    Ok((path, scanned))
}

/// Whether the target Maildir could be claimed, without creating it.
pub fn target_status(
    env: &Env<'_>,
    local: &LocalPart,
) -> Result<(PathBuf, Option<bool>), MailboxError> {
    let rel = env.home_rel(local)?.join("Maildir");
    let shown = env.cfg.target.mail_root.join(&rel);
    match env.target_root.open_beneath(&rel) {
        Ok(md) => Ok((shown, Some(folders::claimable(&md)?))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((shown, None)),
        Err(e) => Err(MailboxError::io(&shown, e)),
    }
}

/// Migrates one mailbox and reports the outcome; never panics on bad data.
pub fn migrate(env: &Env<'_>, ctx: &SyncContext<'_>, local: &LocalPart) -> MailboxReport {
    let mut report = MailboxReport::new(format!("{local}@{}", env.job.domain));
    match run(env, ctx, local) {
        Ok((status, content)) => {
            report.status = status;
            if let Some(c) = content {
                report.messages = c.sync.messages;
                report.bytes = c.sync.bytes;
                report.folders = c.sync.folders;
                report.uids_preserved = c.sync.uids_preserved;
                report.freeze_ms = c.sync.freeze_ms;
                report.warnings = c.sync.warnings;
                report.skipped_folders = c.skipped;
            } else {
                report.uids_preserved = true;
            }
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

struct Content {
    sync: MailboxSync,
    skipped: Vec<crate::report::SkippedFolder>,
}

fn run(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    local: &LocalPart,
) -> Result<(MailboxStatus, Option<Content>), MailboxError> {
    let a = assess(env, local)?;
    let rel_home = env.home_rel(local)?;
    match &a.state {
        State::AlreadyMigrated => {
            // A crash after the switch may have left the marker behind.
            if let Ok(md) = env.target_root.open_beneath(&rel_home.join("Maildir")) {
                md.unlink_if_exists(OWNER_MARKER)
                    .map_err(|e| MailboxError::io(&md.child_path(OWNER_MARKER), e))?;
            }
            return Ok((MailboxStatus::AlreadyMigrated, None));
        }
        // Not thawed: if an earlier run froze the entry, the target entry
        // may be live, and two working logins are worse than none.
        State::Conflict(why) => return Err(MailboxError::Conflict(why.clone())),
        State::Pending => {}
    }
    let (md, content) = match copy_and_switch(env, ctx, local, &a, &rel_home) {
        Ok(Outcome::Presynced) => return Ok((MailboxStatus::Presynced, None)),
        Ok(Outcome::Switched(md, content)) => (md, content),
        // Not switched: the old login comes back (a no-op if never frozen).
        Err(e) => {
            return Err(match thaw(env, local) {
                Ok(()) => e,
                Err(t) => MailboxError::Conflict(format!(
                    "{e}; then restoring the old login failed too: {t}"
                )),
            });
        }
    };
    // Switched: the new entry is live; whatever happens now, no thaw.
    md.unlink_if_exists(OWNER_MARKER)
        .map_err(|e| MailboxError::io(&md.child_path(OWNER_MARKER), e))?;
    if ctx.copy.fsync {
        md.sync().map_err(|e| MailboxError::io(md.path(), e))?;
    }
    Ok((MailboxStatus::Done, content))
}

/// Steps 2-5: claim the target, bulk pass, freeze, final pass with
/// verification, switch. Returns the target Maildir and what was copied.
/// Where `copy_and_switch` stopped.
enum Outcome {
    /// A pre-sync job: copied, both logins untouched, marker kept.
    Presynced,
    /// The target Maildir and what was copied.
    Switched(Dir, Option<Content>),
}

fn copy_and_switch(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    local: &LocalPart,
    a: &Assessment,
    rel_home: &Path,
) -> Result<Outcome, MailboxError> {
    let source = match env.job.mode {
        Mode::Move => Some(env.open_source_maildir(&a.source, local)?),
        Mode::Recreate => None,
    };
    let target_md_path = env.target_root_path.join(rel_home).join("Maildir");
    if let Some((src_path, _)) = &source
        && (src_path.starts_with(&target_md_path) || target_md_path.starts_with(src_path))
    {
        return Err(MailboxError::Conflict(format!(
            "source Maildir {} and target Maildir {} overlap",
            src_path.display(),
            target_md_path.display()
        )));
    }
    let owner = env.cfg.target.owner;
    let home = env
        .target_root
        .ensure_beneath(rel_home, 0o700, owner)
        .map_err(|e| MailboxError::io(&env.target_root_path.join(rel_home), e))?;
    let marker = format!(
        "job {}\nuser {local}@{}\n",
        env.job.id.as_str(),
        env.job.domain
    );
    let md = folders::claim_target(&home, owner, &marker, ctx.copy.fsync)?;

    let src_dir = source.as_ref().and_then(|(_, d)| d.as_ref());
    match src_dir {
        Some(src) => {
            // Bulk pass, then delta passes while the mailbox is live, so
            // the frozen final pass has little left to do.
            let cut = &env.cfg.cutover;
            let mut passes = 0;
            loop {
                let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
                let changes = folders::sync_mailbox(ctx, src, &md, &scan, Pass::Bulk)?.changes;
                if changes <= cut.delta_threshold || passes >= cut.max_delta_passes {
                    break;
                }
                passes += 1;
            }
        }
        None => {
            TargetFolder::open(
                md.reopen().map_err(|e| MailboxError::io(md.path(), e))?,
                owner,
            )?;
        }
    }

    if !env.job.cutover {
        return Ok(Outcome::Presynced);
    }
    freeze(env, local)?;
    let frozen_at = std::time::Instant::now();
    let after_freeze = freeze_command(env, local);
    if !env.cfg.cutover.freeze_grace.is_zero() {
        std::thread::sleep(env.cfg.cutover.freeze_grace);
    }
    let mut content = match src_dir {
        Some(src) => {
            let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
            let sync = folders::sync_mailbox(ctx, src, &md, &scan, Pass::Final)?;
            super::sweep::write_manifest(&md, &sync, &ctx.attrs())?;
            Some(Content {
                sync,
                skipped: scan.skipped,
            })
        }
        None if env.job.mode == Mode::Move => Some(Content {
            sync: MailboxSync {
                uids_preserved: true,
                warnings: vec![
                    "the source Maildir does not exist; migrated as an empty mailbox".into(),
                ],
                ..MailboxSync::default()
            },
            skipped: Vec::new(),
        }),
        None => None,
    };
    switch(env, local)?;
    if let Some(c) = &mut content {
        c.sync.warnings.extend(after_freeze);
        c.sync.freeze_ms = Some(frozen_at.elapsed().as_millis() as u64);
    }
    Ok(Outcome::Switched(md, content))
}

/// Runs `[cutover] freeze_command` for the user (no shell). Its failure is
/// reported, not fatal: the login is already refused.
fn freeze_command(env: &Env<'_>, local: &LocalPart) -> Vec<String> {
    let Some(argv) = env.cfg.cutover.command_for(local, &env.job.domain) else {
        return Vec::new();
    };
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Vec::new(),
        Ok(o) => vec![format!(
            "freeze command {:?} failed ({}): {}",
            argv[0],
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )],
        Err(e) => vec![format!("freeze command {:?} could not run: {e}", argv[0])],
    }
}

/// Rewrites the shared passwd-file entry with `f` (under the userdb
/// lock); no-op when `f` returns the entry unchanged.
fn rewrite_in_place(
    env: &Env<'_>,
    local: &LocalPart,
    f: impl FnOnce(&Entry) -> Result<Entry, MailboxError>,
) -> Result<(), MailboxError> {
    let key = env.source_key(local);
    passwd_file::edit(
        &env.source_db,
        None,
        env.cfg.migration.fsync,
        |file: &PasswdFile| {
            let Some((_, current)) = file.find(&key)? else {
                return Err(MailboxError::NotInSource {
                    user: key.clone(),
                    path: env.source_db.clone(),
                });
            };
            let new = f(&current)?;
            if new == current {
                return Ok(None);
            }
            let line = passwd_file::check_writable(&new).map_err(MailboxError::Conflict)?;
            Ok(Some(Change::Replace {
                user: key.clone(),
                line,
            }))
        },
    )
    .map(drop)
}

fn freeze(env: &Env<'_>, local: &LocalPart) -> Result<(), MailboxError> {
    Ok(env
        .source
        .freeze(&env.source_key(local), env.cfg.migration.fsync)?)
}

fn thaw(env: &Env<'_>, local: &LocalPart) -> Result<(), MailboxError> {
    Ok(env
        .source
        .thaw(&env.source_key(local), env.cfg.migration.fsync)?)
}

fn switch(env: &Env<'_>, local: &LocalPart) -> Result<(), MailboxError> {
    if env.in_place {
        return rewrite_in_place(env, local, |e| env.switched_in_place(e, local));
    }
    let expected = env.target_entry(&env.account(local)?, local)?;
    let line = passwd_file::check_writable(&expected).map_err(MailboxError::Conflict)?;
    let like: &Path = &env.source_db;
    passwd_file::edit(
        &env.target_db,
        Some(like),
        env.cfg.migration.fsync,
        |file: &PasswdFile| match file.find(&expected.user)? {
            Some((_, e)) if e == expected => Ok(None),
            Some((no, _)) => Err(MailboxError::Conflict(format!(
                "{} line {no} already has a different entry for {}; not overwriting it",
                env.target_db.display(),
                expected.user
            ))),
            None => Ok(Some(Change::Append(line))),
        },
    )
    .map(drop)
}
