//! The per-mailbox protocol:
//!
//! 1. assess: resolve the mailbox against its source entry (its exact
//!    name, owner and home), read the target's; done already,
//!    conflicting, or pending — and refuse early what could not finish;
//! 2. bulk pass: copy the content while the mailbox is live;
//! 3. freeze: the source entry refuses logins (`nologin`), stays resolvable;
//! 4. final pass with verification, the manifest, owner and modes of the
//!    whole target asserted;
//! 5. switch: target entry written (or the shared entry rewritten), then
//!    both userdbs read back (a writer that ignores our lock may have
//!    undone the freeze);
//! 6. drop the "partial copy" marker from the target Maildir.
//!
//! A failure (or a panic) before the switch thaws the source entry again,
//! so a failed mailbox keeps its old login and gets no target entry.
//! Every step is idempotent, so re-running a job completes whatever was
//! left.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::classify::SkippedFolders;
use crate::config::Config;
use crate::config::Userdb;
use crate::copy::TargetFolder;
use crate::job::{Job, LocalPart, Mode};
use crate::maildir;
use crate::maildir::Layout;
use crate::maildir::names::NameEncoding;
use crate::report::{MailboxReport, MailboxStatus};
use crate::safe_fs::{Dir, Owner};
use crate::userdb::passwd_file::{self, Entry, PasswdFile};
use crate::userdb::sql::{self, MailboxRow, SqlSettings};
use crate::userdb::{Account, SourceDb};

use super::folders::{self, FolderScan, MailboxSync, OWNER_MARKER, Pass, SyncContext};
use super::server;
use super::switch::{self, NewLogin};
use super::{MailboxError, Named, RunError, manifest, open_root, ownership};

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

/// One mailbox resolved against its source entry: named exactly as the
/// source spells it, with the owner and home its target gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part as the source spells it (paths, `%n`).
    pub local: LocalPart,
    /// `local@domain` as the source spells it (reports, target keys).
    pub user: String,
    pub source_key: String,
    pub target_key: String,
    /// The uid/gid the new entry names; everything in the target is theirs.
    pub owner: Owner,
    /// The home, relative to the target mail root.
    pub home_rel: PathBuf,
}

impl Mailbox {
    pub fn maildir_rel(&self) -> PathBuf {
        self.home_rel.join("Maildir")
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
    pub(crate) target_root_path: PathBuf,
}

impl<'a> Env<'a> {
    pub fn open(cfg: &'a Config, job: &'a Job) -> Result<Env<'a>, RunError> {
        let (source_root, source_root_path) = open_root("source.mail_root", &cfg.source.mail_root)?;
        let (target_root, target_root_path) = open_root("target.mail_root", &cfg.target.mail_root)?;
        let source = cfg.source_db(&job.domain);
        source
            .check_reachable()
            .map_err(|e| RunError::userdb("source.userdb", e))?;
        let target = match (&cfg.target.userdb, cfg.in_place(&job.domain)) {
            (Userdb::File(p), false) => {
                let path = p.for_domain(&job.domain);
                check_target_file(&path)?;
                Placement::PasswdFile(path)
            }
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

    /// Reads the source entry of `named` and settles the mailbox's exact
    /// name (a case-insensitive database finds `MIXED` for `mixed`), its
    /// owner and its home.
    pub(crate) fn resolve(&self, named: &Named) -> Result<(Mailbox, Account), MailboxError> {
        let account =
            self.source
                .account(&named.source_key)?
                .ok_or_else(|| MailboxError::NotInSource {
                    user: named.source_key.clone(),
                    db: self.source.describe(),
                })?;
        let domain = &self.job.domain;
        let (local, user) = if self.cfg.source.userdb.per_domain() {
            (named.local.clone(), format!("{}@{domain}", named.local))
        } else {
            let (l, d) = account.key.rsplit_once('@').ok_or_else(|| {
                MailboxError::Conflict(format!(
                    "source entry {:?} is not an address",
                    crate::shown::text(&account.key)
                ))
            })?;
            if !d.eq_ignore_ascii_case(domain.as_str()) {
                return Err(MailboxError::Conflict(format!(
                    "source entry {:?} belongs to another domain than {domain}",
                    crate::shown::text(&account.key)
                )));
            }
            let local = LocalPart::parse(l).map_err(MailboxError::Conflict)?;
            (local, account.key.clone())
        };
        let target_key = match &self.cfg.target.userdb {
            Userdb::File(p) if p.per_domain() => local.to_string(),
            _ => user.clone(),
        };
        let home_rel = self
            .cfg
            .target
            .home
            .expand(&local, domain)
            .map_err(MailboxError::Conflict)?;
        let owner = self.owner_for(&account)?;
        let mailbox = Mailbox {
            local,
            user,
            source_key: account.key.clone(),
            target_key,
            owner,
            home_rel,
        };
        Ok((mailbox, account))
    }

    /// The uid/gid of the new entry: the configured ones, else the source
    /// entry's. This run must be able to give files to them.
    fn owner_for(&self, account: &Account) -> Result<Owner, MailboxError> {
        let owner = match self.cfg.target.owner {
            Some(o) => o,
            None => Owner {
                uid: id_of(&account.uid, "uid", |n| {
                    nix::unistd::User::from_name(n).map(|u| u.map(|u| u.uid.as_raw()))
                })?,
                gid: id_of(&account.gid, "gid", |n| {
                    nix::unistd::Group::from_name(n).map(|g| g.map(|g| g.gid.as_raw()))
                })?,
            },
        };
        let me = nix::unistd::geteuid();
        if !me.is_root() && owner.uid != me.as_raw() {
            return Err(MailboxError::Conflict(format!(
                "the new entry names uid {}, but this run (uid {me}) cannot give files to another user; run as root or set target.uid/gid",
                owner.uid
            )));
        }
        Ok(owner)
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

    /// The home as Dovecot will see it (the configured root, not the
    /// symlink-resolved one).
    fn home_for_userdb(&self, mb: &Mailbox) -> String {
        self.cfg
            .target
            .mail_root
            .join(&mb.home_rel)
            .to_string_lossy()
            .into_owned()
    }

    /// The home the new server should report for the user; `None` for an
    /// SQL target, whose home the new server's own query builds.
    pub(crate) fn home_served(&self, mb: &Mailbox) -> Option<String> {
        match self.target {
            Placement::PasswdFile(_) | Placement::PasswdFileInPlace(_) => {
                Some(self.home_for_userdb(mb))
            }
            Placement::Sql(_) | Placement::SqlInPlace(_) => None,
        }
    }

    /// An SQL row's `maildir` for the new Maildir, relative to the target
    /// mail root (the row names the Maildir itself).
    pub(crate) fn target_maildir_rel(&self, mb: &Mailbox) -> String {
        format!("{}/Maildir/", mb.home_rel.to_string_lossy())
    }

    /// The row written to a separate SQL target: the carried hash (with
    /// its `{SCHEME}` prefix), the new maildir, the quota in bytes.
    pub(crate) fn target_row(
        &self,
        src: &Account,
        mb: &Mailbox,
    ) -> Result<MailboxRow, MailboxError> {
        Ok(MailboxRow {
            username: mb.target_key.clone(),
            password: src.hash.value.clone(),
            name: src.name.clone(),
            maildir: self.target_maildir_rel(mb),
            quota_bytes: quota_bytes(&src.extra).map_err(MailboxError::Conflict)?,
            local_part: mb.local.to_string(),
            domain: self.job.domain.to_string(),
            active: src.active,
        })
    }

    /// What verify compares in the target's login: the hash and the
    /// location (passwd-file: home; SQL: maildir), expected and actual.
    pub(crate) fn target_login(
        &self,
        src: &Account,
        mb: &Mailbox,
    ) -> Result<(Login, Option<Login>), MailboxError> {
        Ok(match &self.target {
            Placement::PasswdFile(path) => {
                let e = self.target_entry(src, mb);
                let actual = PasswdFile::load(path)?.find(&e.user)?.map(|(_, a)| a);
                (Login::of_entry(&e), actual.as_ref().map(Login::of_entry))
            }
            Placement::PasswdFileInPlace(_) => {
                let current = self.passwd_entry(mb)?;
                let e = self.switched_in_place(&current, mb);
                (Login::of_entry(&e), Some(Login::of_entry(&current)))
            }
            Placement::Sql(s) => {
                let r = self.target_row(src, mb)?;
                let actual = sql::with_retry(s, |db| db.mailbox(&r.username))?;
                (Login::of_row(&r), actual.as_ref().map(Login::of_row))
            }
            Placement::SqlInPlace(s) => {
                let expected = Login {
                    password: src.hash.value.clone(),
                    location: self.target_maildir_rel(mb),
                };
                let actual = sql::with_retry(s, |db| db.mailbox(&mb.source_key))?;
                (expected, actual.as_ref().map(Login::of_row))
            }
        })
    }

    /// The shared passwd-file entry (in-place mode only).
    pub(crate) fn passwd_entry(&self, mb: &Mailbox) -> Result<Entry, MailboxError> {
        let path = match &self.target {
            Placement::PasswdFileInPlace(p) => p,
            _ => {
                return Err(MailboxError::Conflict(
                    "not a passwd-file rewritten in place".into(),
                ));
            }
        };
        match PasswdFile::load(path)?.find(&mb.source_key)? {
            Some((_, e)) => Ok(e),
            None => Err(MailboxError::NotInSource {
                user: mb.source_key.clone(),
                db: path.display().to_string(),
            }),
        }
    }

    /// The entry written to a separate target userdb: the hash unchanged
    /// but explicitly prefixed, the new home, the source's uid/gid (or the
    /// configured ones) and its other fields (quota rules, passdb fields
    /// such as a disabled login).
    pub(crate) fn target_entry(&self, src: &Account, mb: &Mailbox) -> Entry {
        let owner = self.cfg.target.owner;
        let mut extra = vec![self.target_mail()];
        extra.extend(src.extra.iter().cloned());
        Entry {
            user: mb.target_key.clone(),
            password: src.hash.value.clone(),
            uid: owner.map_or(src.uid.clone(), |o| o.uid.to_string()),
            gid: owner.map_or(src.gid.clone(), |o| o.gid.to_string()),
            gecos: String::new(),
            home: self.home_for_userdb(mb),
            shell: String::new(),
            extra,
        }
    }

    /// The shared entry rewritten to the new location, hash untouched.
    pub(crate) fn switched_in_place(&self, current: &Entry, mb: &Mailbox) -> Entry {
        let mut e = current.thawed();
        if let Some(o) = self.cfg.target.owner {
            e.uid = o.uid.to_string();
            e.gid = o.gid.to_string();
        }
        e.home = self.home_for_userdb(mb);
        let mut extra = vec![self.target_mail()];
        extra.extend(e.extra_without_location().cloned());
        e.extra = extra;
        e
    }

    /// The source Maildir named by the source entry, opened without
    /// following any symlink below the source mail root.
    pub(crate) fn open_source_maildir(
        &self,
        account: &Account,
        mb: &Mailbox,
    ) -> Result<OldMaildir, MailboxError> {
        let path = maildir::maildir_path(
            self.cfg.source.layout,
            account.mail.as_deref(),
            &account.home,
            &mb.source_key,
            mb.local.as_str(),
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
            })?
            .to_path_buf();
        self.open_old_maildir(&rel)
    }

    /// The old Maildir at `rel` below the source mail root. `dir: None`:
    /// it does not exist (never used).
    pub(crate) fn open_old_maildir(&self, rel: &Path) -> Result<OldMaildir, MailboxError> {
        let path = self.source_root_path.join(rel);
        let dir = match self.source_root.open_beneath(rel) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e)
                if e.raw_os_error() == Some(nix::libc::ELOOP)
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
            {
                return Err(MailboxError::Location(format!(
                    "{} is or passes through a symlink or a non-directory; refusing to follow it",
                    crate::shown::path(&path)
                )));
            }
            Err(e) => return Err(MailboxError::io(&path, e)),
        };
        Ok(OldMaildir {
            path,
            rel: rel.to_path_buf(),
            dir,
        })
    }

    /// Whether the new Dovecot, which looks up the login as typed (or
    /// lower-cased, with its default `auth_username_format = %Lu`), finds
    /// `key` in the target userdb.
    fn target_finds(&self, key: &str) -> Result<bool, MailboxError> {
        if !self.cfg.target.lowercase_logins || key.to_lowercase() == key {
            return Ok(true);
        }
        Ok(match &self.target {
            // A passwd-file compares bytes.
            Placement::PasswdFile(_) | Placement::PasswdFileInPlace(_) => false,
            Placement::Sql(s) | Placement::SqlInPlace(s) => {
                sql::with_retry(s, |db| db.folds_case())?
            }
        })
    }
}

/// A source Maildir: where it is (for messages) and, if it exists, open.
pub(crate) struct OldMaildir {
    pub path: PathBuf,
    /// Below the source mail root (kept in the manifest).
    pub rel: PathBuf,
    pub dir: Option<Dir>,
}

/// A numeric uid/gid field, or a name the system resolves; never 0.
fn id_of(
    field: &str,
    what: &str,
    by_name: impl Fn(&str) -> nix::Result<Option<u32>>,
) -> Result<u32, MailboxError> {
    let id = match field.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) if field.is_empty() => None,
        Err(_) => by_name(field).ok().flatten(),
    };
    match id {
        Some(0) => Err(MailboxError::Conflict(format!(
            "the source entry's {what} is 0, which Dovecot refuses; set target.uid/gid"
        ))),
        Some(n) => Ok(n),
        None => Err(MailboxError::Conflict(format!(
            "the source entry's {what} {:?} is not a number or a known name; set target.uid/gid",
            crate::shown::text(field)
        ))),
    }
}

/// A separate passwd-file target must be a regular file (or not exist yet)
/// in an existing directory.
fn check_target_file(path: &Path) -> Result<(), RunError> {
    let bad = |problem: String| RunError::Config {
        key: "target.userdb",
        problem: format!("{}: {problem}", path.display()),
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(bad("is not a regular file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match path.parent().map(std::fs::metadata) {
                Some(Ok(m)) if m.is_dir() => Ok(()),
                _ => Err(bad("its directory does not exist".into())),
            }
        }
        Err(e) => Err(bad(e.to_string())),
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
        format!(
            "quota rule {:?} cannot be written to the SQL target's quota column",
            crate::shown::text(rule)
        )
    })
}

/// Where a mailbox stands before this run touches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending,
    AlreadyMigrated,
    /// Rewritten in place to the new Maildir, refusing logins: a run
    /// stopped between staging the new login and enabling it.
    Staged,
    Conflict(String),
}

/// A read-only look at one mailbox (shared by `run`, `plan`, `verify`
/// and `sweep`).
pub struct Assessment {
    pub mailbox: Mailbox,
    pub source: Account,
    pub state: State,
    /// The scheme recognised for the carried hash (`None`: empty field).
    pub scheme: Option<String>,
}

/// Resolves `named` and says where it stands. What could not be finished
/// (an entry the freeze could not write back, a name the new Dovecot
/// would not find) is an error here, before anything is copied or locked.
pub fn assess(env: &Env<'_>, named: &Named) -> Result<Assessment, MailboxError> {
    let (mb, source) = env.resolve(named)?;
    let scheme = source.hash.scheme.clone();
    if !env.target_finds(&mb.target_key)? {
        return Err(MailboxError::Conflict(format!(
            "the new Dovecot looks up {:?} (auth_username_format %Lu), and {} compares names case-sensitively, so it would never find {:?}; rename the account in the source first (or set target.auth_username_format = \"%u\" if the new Dovecot keeps the case)",
            mb.target_key.to_lowercase(),
            env.target.describe(),
            mb.target_key
        )));
    }
    let mut a = Assessment {
        mailbox: mb,
        source,
        state: State::Pending,
        scheme,
    };
    a.state = state_of(env, &a)?;
    Ok(a)
}

/// Where the mailbox stands, from its new login (and, where there are two
/// logins, whether the old one is refused).
fn state_of(env: &Env<'_>, a: &Assessment) -> Result<State, MailboxError> {
    if let Placement::PasswdFile(_) = &env.target {
        let expected = env.target_entry(&a.source, &a.mailbox);
        passwd_file::check_writable(&expected).map_err(MailboxError::Conflict)?;
    }
    let in_place = env.target.in_place();
    Ok(match switch::login(env, a)? {
        NewLogin::Live if in_place || a.source.refuses_login => State::AlreadyMigrated,
        // Resumed where a run stopped between staging and enabling: the
        // entry rewritten in place no longer names the old Maildir.
        NewLogin::Staged if in_place => State::Staged,
        NewLogin::Other => State::Conflict(format!(
            "{} already has a different entry for {}; not overwriting it",
            env.target.describe(),
            a.mailbox.target_key
        )),
        NewLogin::Live | NewLogin::Staged | NewLogin::Absent => {
            env.source.check_freezable(&a.mailbox.source_key)?;
            State::Pending
        }
    })
}

/// The old Maildir of an assessed mailbox: the one its source entry names,
/// or, once an in-place switch has rewritten that entry, the one the
/// switch recorded in the manifest.
pub(crate) fn old_maildir(env: &Env<'_>, a: &Assessment) -> Result<OldMaildir, MailboxError> {
    let switched = matches!(a.state, State::AlreadyMigrated | State::Staged);
    if !(env.target.in_place() && switched) {
        return env.open_source_maildir(&a.source, &a.mailbox);
    }
    let md = env
        .target_root
        .open_beneath(&a.mailbox.maildir_rel())
        .map_err(|e| MailboxError::io(&env.target_root_path.join(a.mailbox.maildir_rel()), e))?;
    match manifest::load(&md)?.and_then(|m| m.source) {
        Some(rel) => env.open_old_maildir(&rel),
        None => Err(MailboxError::Location(
            "switched in place, and no manifest records where the old Maildir was".into(),
        )),
    }
}

/// Read-only scan of the source folders (for `plan`).
pub fn scan_source(
    env: &Env<'_>,
    a: &Assessment,
) -> Result<(PathBuf, Option<(Dir, FolderScan)>), MailboxError> {
    let old = env.open_source_maildir(&a.source, &a.mailbox)?;
    let scanned = match old.dir {
        Some(d) => {
            let s = folders::scan(&d, &env.cfg.migration.classifier, env.cfg.source.layout)?;
            Some((d, s))
        }
        None => None,
    };
    Ok((old.path, scanned))
}

/// Whether the target Maildir could be claimed, without creating it.
pub fn target_status(env: &Env<'_>, mb: &Mailbox) -> Result<(PathBuf, Option<bool>), MailboxError> {
    let rel = mb.maildir_rel();
    let shown = env.cfg.target.mail_root.join(&rel);
    match env.target_root.open_beneath(&rel) {
        Ok(md) => Ok((shown, Some(folders::claimable(&md, &mb.user)?))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((shown, None)),
        Err(e) => Err(MailboxError::io(&shown, e)),
    }
}

/// How far this run took a mailbox: what a failure (or a panic) must undo.
#[derive(Debug, Clone, Default)]
enum Stage {
    /// Not assessed, or in conflict: whatever an earlier run left stays
    /// (its new login may be live).
    #[default]
    Untouched,
    /// Pending and not switched: a failure gives the old login back (a
    /// no-op if it was never refused).
    Pending,
    /// The new login is written but refuses logins: a failure takes it
    /// back (as far as it can) and gives the old login back.
    Staged(Box<switch::Previous>),
    /// Enabling the new login: if that is cut short (a lost connection
    /// around the commit, a panic), it may be live.
    Enabling,
    /// The new login may be live: the old one must stay refused.
    Switched,
}

/// Migrates one mailbox and reports the outcome. Never panics on bad
/// data; a panic anywhere in it fails only this mailbox, with its old
/// login back unless the new one may already be live.
pub fn migrate(env: &Env<'_>, ctx: &SyncContext<'_>, named: &Named) -> MailboxReport {
    let mut report = MailboxReport::new(named.user(&env.job.domain));
    let stage = RefCell::new(Stage::Untouched);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(env, ctx, named, &stage, &mut report.user)
    }))
    .unwrap_or_else(|_| {
        Err(MailboxError::Conflict(
            "internal error (a panic); see the log".into(),
        ))
    });
    let outcome = outcome.map_err(|e| undo(env, &report.user, named, stage.take(), e));
    match outcome {
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

/// After a failure: a staged new login is taken back, and the old login
/// comes back (a no-op if this run never froze it), unless the new one may
/// be live.
fn undo(env: &Env<'_>, user: &str, named: &Named, stage: Stage, e: MailboxError) -> MailboxError {
    let failed_too = |what: &str, t: &dyn std::fmt::Display| {
        MailboxError::Conflict(format!("{e}; then {what} of {user} failed too: {t}"))
    };
    let previous = match stage {
        Stage::Pending => None,
        Stage::Staged(previous) => Some(*previous),
        Stage::Untouched | Stage::Enabling | Stage::Switched => return e,
    };
    let a = match assess(env, named) {
        Ok(a) => a,
        Err(t) => return failed_too("reading its entries again", &t),
    };
    if let Some(previous) = previous
        && let Err(t) = switch::unstage(env, &a, &previous)
    {
        return failed_too("taking the staged login back", &t);
    }
    match env
        .source
        .thaw(&a.mailbox.source_key, env.cfg.migration.fsync)
    {
        // The staged write's outcome no longer matters: it is taken back.
        Ok(()) => match e {
            MailboxError::SwitchUnknown(cause) => MailboxError::Sql(cause),
            e => e,
        },
        Err(t) => failed_too("restoring the old login", &t),
    }
}

struct Content {
    sync: MailboxSync,
    skipped: Vec<crate::report::SkippedFolder>,
}

fn run(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    named: &Named,
    stage: &RefCell<Stage>,
    user: &mut String,
) -> Result<(MailboxStatus, Option<Content>), MailboxError> {
    let a = assess(env, named)?;
    user.clone_from(&a.mailbox.user);
    let ctx = ctx.for_owner(a.mailbox.owner);
    let (md, content) = match &a.state {
        State::AlreadyMigrated => {
            // A crash after the switch may have left the marker behind.
            if let Ok(md) = env.target_root.open_beneath(&a.mailbox.maildir_rel()) {
                md.unlink_if_exists(OWNER_MARKER)
                    .map_err(|e| MailboxError::io(&md.child_path(OWNER_MARKER), e))?;
            }
            return Ok((MailboxStatus::AlreadyMigrated, None));
        }
        // Not thawed: if an earlier run froze the entry, the target entry
        // may be live, and two working logins are worse than none.
        State::Conflict(why) => return Err(MailboxError::Conflict(why.clone())),
        // An earlier run staged it in place and stopped: the copy is whole.
        State::Staged => {
            stage.replace(Stage::Staged(Box::default()));
            let md = env
                .target_root
                .open_beneath(&a.mailbox.maildir_rel())
                .map_err(|e| MailboxError::io(&a.mailbox.maildir_rel(), e))?;
            let warnings = go_live(env, &a, &md, stage)?;
            let mut sync = MailboxSync {
                uids_preserved: true,
                ..MailboxSync::default()
            };
            sync.warnings.extend(warnings);
            sync.warnings.push(
                "resumed after a run that stopped between staging and enabling the new login"
                    .into(),
            );
            let skipped = Vec::new();
            (md, Some(Content { sync, skipped }))
        }
        State::Pending => {
            stage.replace(Stage::Pending);
            match copy_and_switch(env, &ctx, &a, stage)? {
                Outcome::Presynced => return Ok((MailboxStatus::Presynced, None)),
                Outcome::Switched(md, content) => (md, content),
            }
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

/// Where `copy_and_switch` stopped.
enum Outcome {
    /// A pre-sync job: copied, both logins untouched, marker kept.
    Presynced,
    /// The target Maildir and what was copied.
    Switched(Dir, Option<Content>),
}

/// Steps 2-5: claim the target, bulk pass, freeze, final pass with
/// verification, owner and modes, switch, read back.
fn copy_and_switch(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    a: &Assessment,
    stage: &RefCell<Stage>,
) -> Result<Outcome, MailboxError> {
    let mb = &a.mailbox;
    let source = match env.job.mode {
        Mode::Move => Some(env.open_source_maildir(&a.source, mb)?),
        Mode::Recreate => None,
    };
    let target_md_path = env.target_root_path.join(mb.maildir_rel());
    if let Some(old) = &source
        && (old.path.starts_with(&target_md_path) || target_md_path.starts_with(&old.path))
    {
        return Err(MailboxError::Conflict(format!(
            "source Maildir {} and target Maildir {} overlap",
            crate::shown::path(&old.path),
            crate::shown::path(&target_md_path)
        )));
    }
    let home = ownership::ensure_home(&env.target_root, &env.target_root_path, mb)?;
    let claim = folders::claim_target(
        &home,
        mb.owner,
        env.job.id.as_str(),
        &mb.user,
        ctx.copy.fsync,
    )?;
    let md = claim.md;

    let src_dir = source.as_ref().and_then(|old| old.dir.as_ref());
    match src_dir {
        Some(src) => bulk_passes(env, ctx, src, &md, claim.first)?,
        None => {
            TargetFolder::open(
                md.reopen().map_err(|e| MailboxError::io(md.path(), e))?,
                Some(mb.owner),
            )?;
        }
    }

    if !env.job.cutover {
        return Ok(Outcome::Presynced);
    }
    env.source.freeze(&mb.source_key, env.cfg.migration.fsync)?;
    let frozen_at = std::time::Instant::now();
    let mut warnings = let_go_on_the_old_server(env, mb)?;
    if !env.cfg.cutover.freeze_grace.is_zero() {
        std::thread::sleep(env.cfg.cutover.freeze_grace);
    }
    let mut content = final_pass(env, ctx, a, source.as_ref(), &md)?;
    // Whatever an earlier run or a crash left: Dovecot, running as the
    // owner, must be able to read every part of it.
    ownership::repair(&home, mb.owner, !claim.owner_known)?;
    ownership::check_reachable(&env.target_root_path, &mb.maildir_rel(), mb.owner)
        .map_err(MailboxError::Conflict)?;
    // Staged before the write: a write cut short (a lost connection around
    // its commit, a panic) is taken back like a finished one.
    stage.replace(Stage::Staged(Box::new(switch::previous(env, a)?)));
    switch::stage(env, a)?;
    warnings.extend(go_live(env, a, &md, stage)?);
    if let Some(c) = &mut content {
        c.sync.warnings.extend(warnings);
        c.sync.freeze_ms = Some(frozen_at.elapsed().as_millis() as u64);
    }
    Ok(Outcome::Switched(md, content))
}

/// From a staged login: the new server gets it ready and agrees (when it
/// can be asked), the login goes live, and both userdbs are read back.
fn go_live(
    env: &Env<'_>,
    a: &Assessment,
    md: &Dir,
    stage: &RefCell<Stage>,
) -> Result<Vec<String>, MailboxError> {
    switch::ready_on_new_server(env, a, md)?;
    stage.replace(Stage::Enabling);
    match switch::enable(env, a) {
        Ok(()) => {
            stage.replace(Stage::Switched);
        }
        Err(e @ MailboxError::SwitchUnknown(_)) => return Err(e),
        // Still staged (as far as can be told): taken back on the way out.
        Err(e) => {
            if matches!(switch::login(env, a), Ok(NewLogin::Staged)) {
                stage.replace(Stage::Staged(Box::default()));
            }
            return Err(e);
        }
    }
    switch::read_back(env, a)
}

/// Step 4, frozen: the last changes copied and verified, the manifest
/// (with the old server's HIGHESTMODSEQ of each folder).
fn final_pass(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    a: &Assessment,
    source: Option<&OldMaildir>,
    md: &Dir,
) -> Result<Option<Content>, MailboxError> {
    let inbox_only = || {
        vec![manifest::Mailbox {
            name: None,
            old_modseq: None,
        }]
    };
    let (rel, content) = match source {
        Some(OldMaildir {
            dir: Some(src),
            rel,
            ..
        }) => {
            let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
            let mut sync = folders::sync_mailbox(ctx, src, md, &scan, Pass::Final)?;
            let mailboxes = old_modseqs(env, ctx, a, &scan, &mut sync.warnings);
            manifest::write(md, Some(rel), &sync, mailboxes, ctx.copy.fsync)?;
            let skipped = scan.skipped;
            return Ok(Some(Content { sync, skipped }));
        }
        Some(old) => (
            Some(old.rel.as_path()),
            Some(Content {
                sync: MailboxSync {
                    uids_preserved: true,
                    warnings: vec![
                        "the source Maildir does not exist; migrated as an empty mailbox".into(),
                    ],
                    ..MailboxSync::default()
                },
                skipped: Vec::new(),
            }),
        ),
        None => (None, None),
    };
    let empty = MailboxSync::default();
    manifest::write(md, rel, &empty, inbox_only(), ctx.copy.fsync)?;
    Ok(content)
}

/// Every folder the target will hold, with the HIGHESTMODSEQ the old
/// server gives it (read now, frozen, through `[source] doveadm`).
fn old_modseqs(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    a: &Assessment,
    scan: &FolderScan,
    warnings: &mut Vec<String>,
) -> Vec<manifest::Mailbox> {
    let kept = scan.copy.iter();
    let emptied = scan
        .skip
        .iter()
        .filter(|_| ctx.skipped == SkippedFolders::Empty);
    let folders: Vec<&folders::SourceFolder> = kept.chain(emptied).collect();
    let Some(doveadm) = &env.cfg.source.doveadm else {
        return folders
            .into_iter()
            .map(|f| manifest::Mailbox {
                name: f.name.clone(),
                old_modseq: None,
            })
            .collect();
    };
    let status = doveadm.namespace(env.cfg.source.layout).and_then(|ns| {
        let (status, complaint) =
            doveadm.status_readable(&a.mailbox.source_key, "highestmodseq")?;
        Ok((ns, status, complaint))
    });
    let (ns, status, complaint) = match status {
        Ok((ns, status, complaint)) => (Some(ns), status, complaint),
        Err(e) => (None, Default::default(), Some(e)),
    };
    let listed: Vec<manifest::Mailbox> = folders
        .into_iter()
        .map(|f| manifest::Mailbox {
            name: f.name.clone(),
            old_modseq: ns.as_ref().and_then(|ns| {
                status
                    .get(&ns.name(f.name.as_ref()))
                    .and_then(|fields| fields.get("highestmodseq")?.parse().ok())
            }),
        })
        .collect();
    let unknown: Vec<String> = listed
        .iter()
        .filter(|m| m.old_modseq.is_none())
        .map(|m| {
            crate::shown::text(&m.name.as_ref().map_or("INBOX".into(), |n| n.to_string()))
                .to_string()
        })
        .collect();
    if !unknown.is_empty() {
        warnings.push(format!(
            "HIGHESTMODSEQ not carried for {} (the old server does not report it{})",
            unknown.join(", "),
            complaint.map(|c| format!(": {c}")).unwrap_or_default()
        ));
    }
    listed
}

/// Step 2: the bulk pass, then delta passes while the mailbox is live, so
/// the frozen final pass has little left. The first run of a job that
/// writes into the target first makes sure the mailbox can be finished:
/// no message over the size limit, room on the target filesystem. (A
/// re-run, which has most of it already, skips that listing; its copy
/// still refuses an oversized file, and a full disk fails it cleanly.)
fn bulk_passes(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    src: &Dir,
    md: &Dir,
    first_claim: bool,
) -> Result<(), MailboxError> {
    let cut = &env.cfg.cutover;
    if first_claim {
        let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
        let max = env.cfg.migration.max_message_size;
        let need = folders::bytes_to_copy(ctx, src, md, &scan, max)?;
        ownership::check_room(md, need)?;
    }
    let mut passes = 0;
    loop {
        let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
        let changes = folders::sync_mailbox(ctx, src, md, &scan, Pass::Bulk)?.changes;
        if changes <= cut.delta_threshold || passes >= cut.max_delta_passes {
            return Ok(());
        }
        passes += 1;
    }
}

/// Step 4b: the old server lets go of the frozen mailbox. Asked through
/// `[source] doveadm`, it must refuse the login before the freeze command
/// runs (a client the command disconnects reconnects at once), and have no
/// session left after it; else the mailbox fails with its old login back.
fn let_go_on_the_old_server(env: &Env<'_>, mb: &Mailbox) -> Result<Vec<String>, MailboxError> {
    let old = env.cfg.source.doveadm.as_ref();
    if let Some(d) = old {
        server::wait_for_freeze(d, &mb.source_key, |p| env.source.freeze_seen(p))
            .map_err(MailboxError::OldServer)?;
    }
    let warnings = freeze_command(env, mb);
    if let Some(d) = old
        && !env.cfg.cutover.freeze_command.is_empty()
    {
        server::wait_for_sessions_to_end(d, &mb.source_key).map_err(MailboxError::OldServer)?;
    }
    Ok(warnings)
}

/// Runs `[cutover] freeze_command` for the user (no shell). Its failure is
/// reported, not fatal: the login is already refused.
fn freeze_command(env: &Env<'_>, mb: &Mailbox) -> Vec<String> {
    let Some(argv) = env.cfg.cutover.command_for(&mb.local, &env.job.domain) else {
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
            crate::shown::bytes(o.stderr.trim_ascii())
        )],
        Err(e) => vec![format!("freeze command {:?} could not run: {e}", argv[0])],
    }
}
