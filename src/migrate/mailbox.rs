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
use crate::config::Userdb;
use crate::copy::TargetFolder;
use crate::job::{Job, LocalPart, Mode};
use crate::maildir;
use crate::maildir::Layout;
use crate::maildir::names::NameEncoding;
use crate::report::{MailboxReport, MailboxStatus};
use crate::safe_fs::Dir;
use crate::userdb::passwd_file::{self, Change, Entry, PasswdFile};
use crate::userdb::sql::{self, MailboxRow, SqlSettings};
use crate::userdb::{Account, SourceDb};

use super::folders::{self, FolderScan, MailboxSync, OWNER_MARKER, Pass, SyncContext};
use super::{MailboxError, RunError, open_root};

/// The mail location written for every migrated user.
const TARGET_MAIL: &str = "userdb_mail=maildir:~/Maildir";

/// Where a migrated mailbox's login is written.
#[derive(Debug, Clone)]
pub enum Placement {
    /// A new entry in a separate passwd-file.
    PasswdFile(PathBuf),
    /// The source passwd-file's entry, rewritten to the new home.
    PasswdFileInPlace(PathBuf),
    /// A new row in a separate SQL database.
    Sql(Box<SqlSettings>),
    /// The source SQL row, given the new `maildir`.
    SqlInPlace(Box<SqlSettings>),
}

impl Placement {
    pub fn in_place(&self) -> bool {
        matches!(
            self,
            Placement::PasswdFileInPlace(_) | Placement::SqlInPlace(_)
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Placement::PasswdFile(p) | Placement::PasswdFileInPlace(p) => p.display().to_string(),
            Placement::Sql(s) | Placement::SqlInPlace(s) => s.url.to_string(),
        }
    }
}

/// Everything a job needs that does not change per mailbox.
pub struct Env<'a> {
    pub cfg: &'a Config,
    pub job: &'a Job,
    pub source: SourceDb,
    pub target: Placement,
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
        source.check_reachable().map_err(RunError::Userdb)?;
        let target = match (&cfg.target.userdb, cfg.in_place(&job.domain)) {
            (Userdb::File(p), false) => Placement::PasswdFile(p.for_domain(&job.domain)),
            (Userdb::File(p), true) => Placement::PasswdFileInPlace(p.for_domain(&job.domain)),
            (Userdb::Sql(s), false) => {
                sql::with_retry(s, |_| Ok(())).map_err(|e| RunError::Userdb(e.into()))?;
                Placement::Sql(s.clone())
            }
            (Userdb::Sql(s), true) => Placement::SqlInPlace(s.clone()),
        };
        Ok(Env {
            cfg,
            job,
            target,
            source,
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
            db: self.source.describe(),
        }
    }

    /// An SQL row's `maildir` for the new Maildir, relative to the target
    /// mail root (the row names the Maildir itself).
    fn target_maildir_rel(&self, local: &LocalPart) -> Result<String, MailboxError> {
        Ok(format!(
            "{}/Maildir/",
            self.home_rel(local)?.to_string_lossy()
        ))
    }

    /// The row written to a separate SQL target: the carried hash (with
    /// its `{SCHEME}` prefix), the new maildir, the quota in bytes.
    pub(crate) fn target_row(
        &self,
        src: &Account,
        local: &LocalPart,
    ) -> Result<MailboxRow, MailboxError> {
        Ok(MailboxRow {
            username: self.target_key(local),
            password: src.hash.value.clone(),
            name: src.name.clone(),
            maildir: self.target_maildir_rel(local)?,
            quota_bytes: quota_bytes(&src.extra).map_err(MailboxError::Conflict)?,
            local_part: local.to_string(),
            domain: self.job.domain.to_string(),
            active: src.active,
        })
    }

    /// What verify compares in the target's login: the hash and the
    /// location (passwd-file: home; SQL: maildir), expected and actual.
    pub(crate) fn target_login(
        &self,
        src: &Account,
        local: &LocalPart,
    ) -> Result<(Login, Option<Login>), MailboxError> {
        Ok(match &self.target {
            Placement::PasswdFile(path) => {
                let e = self.target_entry(src, local)?;
                let actual = PasswdFile::load(path)?.find(&e.user)?.map(|(_, a)| a);
                (Login::of_entry(&e), actual.as_ref().map(Login::of_entry))
            }
            Placement::PasswdFileInPlace(_) => {
                let current = self.passwd_entry(local)?;
                let e = self.switched_in_place(&current, local)?;
                (Login::of_entry(&e), Some(Login::of_entry(&current)))
            }
            Placement::Sql(s) => {
                let r = self.target_row(src, local)?;
                let actual = sql::with_retry(s, |db| db.mailbox(&r.username))?;
                (Login::of_row(&r), actual.as_ref().map(Login::of_row))
            }
            Placement::SqlInPlace(s) => {
                let expected = Login {
                    password: src.hash.value.clone(),
                    location: self.target_maildir_rel(local)?,
                };
                let key = self.source_key(local);
                let actual = sql::with_retry(s, |db| db.mailbox(&key))?;
                (expected, actual.as_ref().map(Login::of_row))
            }
        })
    }

    pub(crate) fn account(&self, local: &LocalPart) -> Result<Account, MailboxError> {
        self.source
            .account(&self.source_key(local))?
            .ok_or_else(|| self.not_in_source(local))
    }

    /// The shared passwd-file entry (in-place mode only).
    pub(crate) fn passwd_entry(&self, local: &LocalPart) -> Result<Entry, MailboxError> {
        let path = match &self.target {
            Placement::PasswdFileInPlace(p) => p,
            _ => {
                return Err(MailboxError::Conflict(
                    "not a passwd-file rewritten in place".into(),
                ));
            }
        };
        match PasswdFile::load(path)?.find(&self.source_key(local))? {
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
                    crate::shown::path(&path),
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
                    crate::shown::path(&path)
                )))
            }
            Err(e) => Err(MailboxError::io(&path, e)),
        }
    }
}

/// A login's hash and location, as verify compares them.
pub(crate) struct Login {
    pub password: String,
    /// passwd-file: the home; SQL: the maildir column.
    pub location: String,
}

impl Login {
    fn of_entry(e: &Entry) -> Login {
        Login {
            password: e.password.clone(),
            location: e.home.clone(),
        }
    }

    fn of_row(r: &MailboxRow) -> Login {
        Login {
            password: r.password.clone(),
            location: r.maildir.clone(),
        }
    }
}

/// The quota in bytes (0 = unlimited) of `userdb_quota_rule=*:bytes=N` or
/// `*:storage=N[k|M|G|T]` (Dovecot's storage unit is KiB); other rules
/// have no place in a `quota` column and are refused, not dropped.
fn quota_bytes(extra: &[String]) -> Result<u64, String> {
    let Some(rule) = extra
        .iter()
        .find_map(|f| f.strip_prefix("userdb_quota_rule="))
    else {
        return Ok(0);
    };
    let parse = |v: &str, unit: u64| {
        let (digits, mult) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            None => (v, unit),
            Some((i, _)) => (
                &v[..i],
                match &v[i..] {
                    "B" | "b" => 1,
                    "k" | "K" => 1 << 10,
                    "M" => 1 << 20,
                    "G" => 1 << 30,
                    "T" => 1 << 40,
                    _ => return None,
                },
            ),
        };
        digits.parse::<u64>().ok()?.checked_mul(mult)
    };
    let bytes = if let Some(v) = rule.strip_prefix("*:bytes=") {
        parse(v, 1)
    } else if let Some(v) = rule.strip_prefix("*:storage=") {
        parse(v, 1 << 10)
    } else {
        None
    };
    bytes.ok_or_else(|| {
        format!("quota rule {rule:?} cannot be written to the SQL target's quota column")
    })
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
    let state = match &env.target {
        Placement::PasswdFileInPlace(_) => {
            let current = env.passwd_entry(local)?;
            let switched = env.switched_in_place(&current, local)?;
            passwd_file::check_writable(&switched).map_err(MailboxError::Conflict)?;
            if switched == current {
                State::AlreadyMigrated
            } else {
                State::Pending
            }
        }
        Placement::PasswdFile(path) => {
            let expected = env.target_entry(&source, local)?;
            passwd_file::check_writable(&expected).map_err(MailboxError::Conflict)?;
            match PasswdFile::load(path)?.find(&expected.user)? {
                Some((_, e)) if e == expected && source.refuses_login => State::AlreadyMigrated,
                Some((_, e)) if e == expected => State::Pending,
                Some((line, _)) => State::Conflict(format!(
                    "{} line {line} already has a different entry for {}; not overwriting it",
                    path.display(),
                    expected.user
                )),
                None => State::Pending,
            }
        }
        Placement::SqlInPlace(_) => {
            if source.sql_maildir.as_deref() == Some(&env.target_maildir_rel(local)?)
                && !source.refuses_login
            {
                State::AlreadyMigrated
            } else {
                State::Pending
            }
        }
        Placement::Sql(s) => {
            let expected = env.target_row(&source, local)?;
            match sql::with_retry(s, |db| db.mailbox(&expected.username))? {
                Some(r) if r == expected && source.refuses_login => State::AlreadyMigrated,
                Some(r) if r == expected => State::Pending,
                Some(_) => State::Conflict(format!(
                    "{} already has a different row for {}; not overwriting it",
                    s.url, expected.username
                )),
                None => State::Pending,
            }
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
        Err(e @ MailboxError::SwitchUnknown(_)) => return Err(e),
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
            crate::shown::path(src_path),
            crate::shown::path(&target_md_path)
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
    switch(env, local, &a.source)?;
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
    path: &Path,
    local: &LocalPart,
    f: impl FnOnce(&Entry) -> Result<Entry, MailboxError>,
) -> Result<(), MailboxError> {
    let key = env.source_key(local);
    passwd_file::edit(path, None, env.cfg.migration.fsync, |file: &PasswdFile| {
        let Some((_, current)) = file.find(&key)? else {
            return Err(MailboxError::NotInSource {
                user: key.clone(),
                db: path.display().to_string(),
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
    })
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

/// A transient failure of the switch's transaction: it may have committed.
fn unknown(e: sql::SqlError) -> MailboxError {
    if e.is_transient() {
        MailboxError::SwitchUnknown(e)
    } else {
        e.into()
    }
}

fn switch(env: &Env<'_>, local: &LocalPart, source: &Account) -> Result<(), MailboxError> {
    let path = match &env.target {
        Placement::PasswdFileInPlace(path) => {
            return rewrite_in_place(env, path, local, |e| env.switched_in_place(e, local));
        }
        Placement::SqlInPlace(s) => {
            let key = env.source_key(local);
            let old = source.sql_maildir.clone().unwrap_or_default();
            let new = env.target_maildir_rel(local)?;
            sql::with_retry(s, |db| db.update_location(&key, &old, &new)).map_err(unknown)?;
            return Ok(());
        }
        Placement::Sql(s) => {
            let row = env.target_row(&env.account(local)?, local)?;
            sql::with_retry(s, |db| db.insert(&row)).map_err(unknown)?;
            return Ok(());
        }
        Placement::PasswdFile(path) => path,
    };
    let expected = env.target_entry(&env.account(local)?, local)?;
    let line = passwd_file::check_writable(&expected).map_err(MailboxError::Conflict)?;
    // A new file takes the source file's owner and mode.
    let like = match &env.source {
        SourceDb::PasswdFile { path, .. } | SourceDb::Courier { path, .. } => Some(path.as_path()),
        SourceDb::Sql { .. } => None,
    };
    passwd_file::edit(
        path,
        like,
        env.cfg.migration.fsync,
        |file: &PasswdFile| match file.find(&expected.user)? {
            Some((_, e)) if e == expected => Ok(None),
            Some((no, _)) => Err(MailboxError::Conflict(format!(
                "{} line {no} already has a different entry for {}; not overwriting it",
                path.display(),
                expected.user
            ))),
            None => Ok(Some(Change::Append(line))),
        },
    )
    .map(drop)
}
