//! The target side: where a migrated mailbox's new login is written, in
//! two moves (staged, refusing logins; then enabled), read back and, after
//! a failure, taken back. One type for every format and for both a
//! separate userdb and the source's own rewritten in place.

use std::path::{Path, PathBuf};

use crate::maildir::Layout;
use crate::maildir::names::NameEncoding;
use crate::safe_fs::Owner;

use super::passwd_file::{self, Change, Entry, PasswdFile, UserdbError};
use super::sql::{self, MailboxRow, SqlError, SqlSettings};
use super::{Account, Source};

/// The mail location written for every migrated user.
const TARGET_MAIL: &str = "userdb_mail=maildir:~/Maildir";

/// The target userdb of one domain.
#[derive(Debug, Clone)]
pub struct Target {
    db: TargetDb,
    /// The source's own userdb, whose entry is rewritten to the new home.
    in_place: bool,
    new: NewEntries,
}

/// Where the target's logins live.
#[derive(Debug, Clone)]
pub enum TargetDb {
    File(PathBuf),
    Sql(Box<SqlSettings>),
}

/// What every new login gets from the configuration.
#[derive(Debug, Clone)]
pub struct NewEntries {
    /// The target mail root as Dovecot sees it (not symlink-resolved).
    pub mail_root: PathBuf,
    /// The uid/gid of every new entry; `None`: the source entry's.
    pub owner: Option<Owner>,
    pub layout: Layout,
    pub folder_names: NameEncoding,
    /// Whether the new Dovecot lower-cases logins before its lookup.
    pub lowercase_logins: bool,
    pub fsync: bool,
}

/// One migrated mailbox, as its new login needs it.
#[derive(Debug, Clone, Copy)]
pub struct NewAccount<'a> {
    pub source: &'a Account,
    /// The key of the source entry (an in-place target rewrites it).
    pub source_key: &'a str,
    /// The key of the new login.
    pub target_key: &'a str,
    pub local: &'a str,
    pub domain: &'a str,
    /// The home, relative to the target mail root.
    pub home_rel: &'a Path,
}

/// Where a mailbox's new login stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewLogin {
    Absent,
    /// A separate userdb has another entry under that name.
    Other,
    /// Written, refusing logins.
    Staged,
    Live,
}

/// What staging replaced in a userdb rewritten in place, to put it back.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    entry: Option<Entry>,
    sql_maildir: Option<String>,
}

/// A login's hash and location, as verify compares them.
pub struct Login {
    pub password: String,
    /// passwd-file: the home; SQL: the maildir column.
    pub location: String,
}

/// Why a target operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Userdb(#[from] UserdbError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A transient failure of a transaction that may have committed.
    #[error("{0}")]
    MayHaveCommitted(SqlError),
    #[error("{0}")]
    Conflict(String),
    #[error("no entry for {user} in {db}")]
    NotFound { user: String, db: String },
}

/// Why the target cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum TargetUnusable {
    /// The configured file cannot be one (the problem, naming it).
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Userdb(UserdbError),
}

/// A transient failure of a transaction that may have committed.
fn unknown(e: SqlError) -> TargetError {
    if e.is_transient() {
        TargetError::MayHaveCommitted(e)
    } else {
        e.into()
    }
}

impl Target {
    pub fn new(db: TargetDb, in_place: bool, new: NewEntries) -> Target {
        Target { db, in_place, new }
    }

    /// Whether the source's own entry is rewritten (one login, not two).
    pub fn in_place(&self) -> bool {
        self.in_place
    }

    /// The file, or the database URL (without password).
    pub fn describe(&self) -> String {
        match &self.db {
            TargetDb::File(p) => p.display().to_string(),
            TargetDb::Sql(s) => s.url.to_string(),
        }
    }

    /// Fails when a separate target cannot be written at all (a file that
    /// cannot be one, no database connection), before any mailbox is
    /// touched.
    pub fn check_usable(&self) -> Result<(), TargetUnusable> {
        match (&self.db, self.in_place) {
            (_, true) => Ok(()),
            (TargetDb::File(path), false) => check_target_file(path).map_err(TargetUnusable::File),
            (TargetDb::Sql(s), false) => {
                sql::with_retry(s, |_| Ok(())).map_err(|e| TargetUnusable::Userdb(e.into()))
            }
        }
    }

    /// Whether the new Dovecot, which looks up the login as typed (or
    /// lower-cased, with its default `auth_username_format = %Lu`), finds
    /// `key` in the target userdb.
    pub fn finds(&self, key: &str) -> Result<bool, TargetError> {
        if !self.new.lowercase_logins || key.to_lowercase() == key {
            return Ok(true);
        }
        Ok(match &self.db {
            // A passwd-file compares bytes.
            TargetDb::File(_) => false,
            TargetDb::Sql(s) => sql::with_retry(s, |db| db.folds_case())?,
        })
    }

    /// Fails when the new entry of a separate passwd-file could not be
    /// written.
    pub fn check_writable(&self, a: &NewAccount<'_>) -> Result<(), TargetError> {
        if let (TargetDb::File(_), false) = (&self.db, self.in_place) {
            passwd_file::check_writable(&self.entry(a)).map_err(TargetError::Conflict)?;
        }
        Ok(())
    }

    /// The home the new server should report for the user; `None` for an
    /// SQL target, whose home the new server's own query builds.
    pub fn home_served(&self, a: &NewAccount<'_>) -> Option<String> {
        match &self.db {
            TargetDb::File(_) => Some(self.home(a)),
            TargetDb::Sql(_) => None,
        }
    }

    /// Where the new login stands, as the target userdb says now (an SQL
    /// row rewritten in place is read through `source`).
    pub fn login(&self, source: &Source, a: &NewAccount<'_>) -> Result<NewLogin, TargetError> {
        let of = |exists: bool, live: bool, staged: bool| match (live, staged, exists) {
            (true, _, _) => NewLogin::Live,
            (_, true, _) => NewLogin::Staged,
            (_, _, true) => NewLogin::Other,
            _ => NewLogin::Absent,
        };
        Ok(match (&self.db, self.in_place) {
            (TargetDb::File(path), false) => {
                let expected = self.entry(a);
                let found = PasswdFile::load(path)?
                    .find(&expected.user)?
                    .map(|(_, e)| e);
                of(
                    found.is_some(),
                    found.as_ref() == Some(&expected),
                    found == Some(expected.frozen()),
                )
            }
            (TargetDb::File(path), true) => {
                let current = shared_entry(path, a)?;
                let live = self.switched_in_place(&current, a);
                of(false, current == live, current == live.frozen())
            }
            (TargetDb::Sql(s), false) => {
                let expected = self.row(a)?;
                let found = sql::with_retry(s, |db| db.mailbox(&expected.username))?;
                let unlocked = found.as_ref().map(|r| MailboxRow {
                    password: sql::strip_lock(&r.password).to_string(),
                    ..r.clone()
                });
                let locked = found.as_ref().is_some_and(sql::is_locked);
                let same = unlocked.as_ref() == Some(&expected);
                of(found.is_some(), same && !locked, same && locked)
            }
            (TargetDb::Sql(_), true) => {
                let row = source.account(a.source_key)?;
                let new = maildir_rel(a);
                let here = row
                    .as_ref()
                    .is_some_and(|r| r.sql_maildir.as_deref() == Some(&new));
                let locked = row.is_some_and(|r| r.refuses_login);
                of(false, here && !locked, here && locked)
            }
        })
    }

    /// What verify compares in the target's login: the hash and the
    /// location (passwd-file: home; SQL: maildir), expected and actual.
    pub fn logins(&self, a: &NewAccount<'_>) -> Result<(Login, Option<Login>), TargetError> {
        Ok(match (&self.db, self.in_place) {
            (TargetDb::File(path), false) => {
                let e = self.entry(a);
                let actual = PasswdFile::load(path)?.find(&e.user)?.map(|(_, a)| a);
                (Login::of_entry(&e), actual.as_ref().map(Login::of_entry))
            }
            (TargetDb::File(path), true) => {
                let current = shared_entry(path, a)?;
                let e = self.switched_in_place(&current, a);
                (Login::of_entry(&e), Some(Login::of_entry(&current)))
            }
            (TargetDb::Sql(s), false) => {
                let r = self.row(a)?;
                let actual = sql::with_retry(s, |db| db.mailbox(&r.username))?;
                (Login::of_row(&r), actual.as_ref().map(Login::of_row))
            }
            (TargetDb::Sql(s), true) => {
                let expected = Login {
                    password: a.source.hash.value.clone(),
                    location: maildir_rel(a),
                };
                let actual = sql::with_retry(s, |db| db.mailbox(a.source_key))?;
                (expected, actual.as_ref().map(Login::of_row))
            }
        })
    }

    /// What staging will replace in a userdb rewritten in place, read
    /// before it writes.
    pub fn previous(&self, a: &NewAccount<'_>) -> Result<Previous, TargetError> {
        Ok(match (&self.db, self.in_place) {
            (TargetDb::File(path), true) => Previous {
                entry: Some(shared_entry(path, a)?),
                sql_maildir: None,
            },
            (TargetDb::Sql(_), true) => Previous {
                entry: None,
                sql_maildir: Some(a.source.sql_maildir.clone().unwrap_or_default()),
            },
            (_, false) => Previous::default(),
        })
    }

    /// Writes the new login staged (idempotent); a new file takes the
    /// owner and mode of the `source` file.
    pub fn stage(&self, source: &Source, a: &NewAccount<'_>) -> Result<(), TargetError> {
        match (&self.db, self.in_place) {
            (TargetDb::File(path), false) => {
                let live = self.entry(a);
                let staged = live.frozen();
                let line = passwd_file::check_writable(&staged).map_err(TargetError::Conflict)?;
                passwd_file::edit(path, source.file(), self.new.fsync, |file: &PasswdFile| {
                    match file.find(&staged.user)? {
                        Some((_, e)) if e == staged || e == live => Ok(None),
                        Some((no, _)) => Err(TargetError::Conflict(format!(
                            "{} line {no} already has a different entry for {}; not overwriting it",
                            path.display(),
                            staged.user
                        ))),
                        None => Ok(Some(Change::Append(line.clone()))),
                    }
                })?;
            }
            (TargetDb::File(path), true) => {
                self.rewrite_in_place(path, a, |e| self.switched_in_place(e, a).frozen())?;
            }
            (TargetDb::Sql(s), false) => {
                let row = self.row(a)?;
                sql::with_retry(s, |db| db.insert_staged(&row)).map_err(unknown)?;
            }
            (TargetDb::Sql(s), true) => {
                let old = a.source.sql_maildir.clone().unwrap_or_default();
                let new = maildir_rel(a);
                sql::with_retry(s, |db| db.move_locked(a.source_key, &old, &new))
                    .map_err(unknown)?;
            }
        }
        Ok(())
    }

    /// Takes a staged login back after a failure, as far as that can be
    /// done: a separate passwd-file loses the staged line, an entry
    /// rewritten in place gets back what it had; a separate database keeps
    /// its locked row (no query deletes rows), which the next run takes up.
    pub fn unstage(&self, a: &NewAccount<'_>, previous: &Previous) -> Result<(), TargetError> {
        let cannot = || {
            TargetError::Conflict(
                "the staged login could not be taken back (the run that staged it stopped); both logins stay refused until the job runs again".into(),
            )
        };
        match (&self.db, self.in_place) {
            (TargetDb::File(path), false) => {
                let staged = self.entry(a).frozen();
                // A staging write that never happened leaves nothing to
                // edit (and the file may not be writable at all).
                if PasswdFile::load(path)?.find(&staged.user)?.map(|(_, e)| e)
                    != Some(staged.clone())
                {
                    return Ok(());
                }
                passwd_file::edit(path, None, self.new.fsync, |file: &PasswdFile| {
                    Ok::<_, TargetError>(match file.find(&staged.user)? {
                        Some((_, e)) if e == staged => Some(Change::Remove {
                            user: staged.user.clone(),
                        }),
                        _ => None,
                    })
                })?;
            }
            (TargetDb::File(path), true) => {
                let before = previous.entry.clone().ok_or_else(cannot)?;
                self.rewrite_in_place(path, a, |_| before.clone())?;
            }
            (TargetDb::Sql(_), false) => {}
            (TargetDb::Sql(s), true) => {
                let old = previous.sql_maildir.clone().ok_or_else(cannot)?;
                let new = maildir_rel(a);
                sql::with_retry(s, |db| db.move_locked(a.source_key, &new, &old))?;
            }
        }
        Ok(())
    }

    /// Makes the staged login live.
    pub fn enable(&self, a: &NewAccount<'_>) -> Result<(), TargetError> {
        match (&self.db, self.in_place) {
            (TargetDb::File(path), false) => {
                let live = self.entry(a);
                let line = passwd_file::check_writable(&live).map_err(TargetError::Conflict)?;
                passwd_file::edit(path, None, self.new.fsync, |file: &PasswdFile| {
                    match file.find(&live.user)? {
                        Some((_, e)) if e == live => Ok::<_, TargetError>(None),
                        Some(_) => Ok(Some(Change::Replace {
                            user: live.user.clone(),
                            line: line.clone(),
                        })),
                        None => Ok(Some(Change::Append(line.clone()))),
                    }
                })?;
            }
            (TargetDb::File(path), true) => {
                self.rewrite_in_place(path, a, Entry::thawed)?;
            }
            (TargetDb::Sql(s), false) => {
                let username = self.row(a)?.username;
                sql::with_retry(s, |db| db.unlock(&username)).map_err(unknown)?;
            }
            (TargetDb::Sql(s), true) => {
                sql::with_retry(s, |db| db.unlock(a.source_key)).map_err(unknown)?;
            }
        }
        Ok(())
    }

    /// The home as Dovecot will see it (the configured root, not the
    /// symlink-resolved one).
    fn home(&self, a: &NewAccount<'_>) -> String {
        self.new
            .mail_root
            .join(a.home_rel)
            .to_string_lossy()
            .into_owned()
    }

    /// `userdb_mail=…`; folder names stored in UTF-8 need Dovecot told so.
    fn mail(&self) -> String {
        let mut m = TARGET_MAIL.to_string();
        if self.new.layout == Layout::Fs {
            m.push_str(":LAYOUT=fs");
        }
        if self.new.folder_names == NameEncoding::Utf8 {
            m.push_str(":UTF-8");
        }
        m
    }

    /// The entry written to a separate passwd-file: the hash unchanged but
    /// explicitly prefixed, the new home, the source's uid/gid (or the
    /// configured ones) and its other fields (quota rules, passdb fields
    /// such as a disabled login).
    fn entry(&self, a: &NewAccount<'_>) -> Entry {
        let owner = self.new.owner;
        let mut extra = vec![self.mail()];
        extra.extend(a.source.extra.iter().cloned());
        Entry {
            user: a.target_key.to_string(),
            password: a.source.hash.value.clone(),
            uid: owner.map_or(a.source.uid.clone(), |o| o.uid.to_string()),
            gid: owner.map_or(a.source.gid.clone(), |o| o.gid.to_string()),
            gecos: String::new(),
            home: self.home(a),
            shell: String::new(),
            extra,
        }
    }

    /// The shared entry rewritten to the new location, hash untouched.
    fn switched_in_place(&self, current: &Entry, a: &NewAccount<'_>) -> Entry {
        let mut e = current.thawed();
        if let Some(o) = self.new.owner {
            e.uid = o.uid.to_string();
            e.gid = o.gid.to_string();
        }
        e.home = self.home(a);
        let mut extra = vec![self.mail()];
        extra.extend(e.extra_without_location().cloned());
        e.extra = extra;
        e
    }

    /// The row written to a separate SQL target: the carried hash (with
    /// its `{SCHEME}` prefix), the new maildir, the quota in bytes.
    fn row(&self, a: &NewAccount<'_>) -> Result<MailboxRow, TargetError> {
        Ok(MailboxRow {
            username: a.target_key.to_string(),
            password: a.source.hash.value.clone(),
            name: a.source.name.clone(),
            maildir: maildir_rel(a),
            quota_bytes: quota_bytes(&a.source.extra).map_err(TargetError::Conflict)?,
            local_part: a.local.to_string(),
            domain: a.domain.to_string(),
            active: a.source.active,
        })
    }

    /// Rewrites the shared passwd-file entry with `f`; returns it as it was.
    fn rewrite_in_place(
        &self,
        path: &Path,
        a: &NewAccount<'_>,
        f: impl Fn(&Entry) -> Entry,
    ) -> Result<Entry, TargetError> {
        let key = a.source_key;
        let mut before = None;
        passwd_file::edit(path, None, self.new.fsync, |file: &PasswdFile| {
            let Some((_, current)) = file.find(key)? else {
                return Err(not_found(path, key));
            };
            let new = f(&current);
            before = Some(current.clone());
            if new == current {
                return Ok(None);
            }
            let line = passwd_file::check_writable(&new).map_err(TargetError::Conflict)?;
            Ok(Some(Change::Replace {
                user: key.to_string(),
                line,
            }))
        })?;
        before.ok_or_else(|| not_found(path, key))
    }
}

fn not_found(path: &Path, key: &str) -> TargetError {
    TargetError::NotFound {
        user: key.to_string(),
        db: path.display().to_string(),
    }
}

/// The shared passwd-file entry (in-place mode).
fn shared_entry(path: &Path, a: &NewAccount<'_>) -> Result<Entry, TargetError> {
    match PasswdFile::load(path)?.find(a.source_key)? {
        Some((_, e)) => Ok(e),
        None => Err(not_found(path, a.source_key)),
    }
}

/// An SQL row's `maildir` for the new Maildir, relative to the target
/// mail root (the row names the Maildir itself).
fn maildir_rel(a: &NewAccount<'_>) -> String {
    format!("{}/Maildir/", a.home_rel.to_string_lossy())
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

/// A separate passwd-file target must be a regular file (or not exist yet)
/// in an existing directory.
fn check_target_file(path: &Path) -> Result<(), String> {
    let bad = |problem: String| format!("{}: {problem}", path.display());
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
