//! The source side: the userdb a domain's accounts are read from, frozen
//! in and thawed in, whatever its format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::courier::{self, CourierDb};
use super::passwd_file::{self, Change, PasswdFile, UserdbError};
use super::scheme;
use super::sql::{self, SqlSettings};
use super::{Account, missing};

/// The source userdb of one domain.
#[derive(Debug, Clone)]
pub enum Source {
    PasswdFile {
        path: PathBuf,
        default_scheme: String,
    },
    Courier {
        path: PathBuf,
        makeuserdb: Option<PathBuf>,
    },
    Sql {
        settings: Box<SqlSettings>,
        default_scheme: String,
        /// What the rows' relative `maildir` is relative to.
        mail_root: PathBuf,
    },
}

impl Source {
    /// The file, or the database URL (without password).
    pub fn describe(&self) -> String {
        match self {
            Source::PasswdFile { path, .. } | Source::Courier { path, .. } => {
                path.display().to_string()
            }
            Source::Sql { settings, .. } => settings.url.to_string(),
        }
    }

    /// The userdb file, if it is one (a new target file takes its owner
    /// and mode).
    pub fn file(&self) -> Option<&Path> {
        match self {
            Source::PasswdFile { path, .. } | Source::Courier { path, .. } => Some(path),
            Source::Sql { .. } => None,
        }
    }

    /// Whether `users` lists the domain's accounts by a domain column (so
    /// a listed name of another domain is an error, not someone else's).
    pub fn lists_by_domain(&self) -> bool {
        matches!(self, Source::Sql { .. })
    }

    /// Fails when the userdb cannot be read at all (missing file, no
    /// database connection), before any mailbox is touched.
    pub fn check_reachable(&self) -> Result<(), UserdbError> {
        let path = match self {
            Source::Sql { settings, .. } => {
                return Ok(sql::with_retry(settings, |_| Ok(()))?);
            }
            Source::PasswdFile { path, .. } | Source::Courier { path, .. } => path,
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() && matches!(self, Source::PasswdFile { .. }) => {
                Err(UserdbError::NotAFile { path: path.clone() })
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(UserdbError::Missing { path: path.clone() })
            }
            Err(source) => Err(UserdbError::Io {
                path: path.clone(),
                source,
            }),
        }
    }

    /// Account names in file order (SQL: the domain's, sorted).
    pub fn users(&self, domain: &str) -> Result<Vec<String>, UserdbError> {
        match self {
            Source::PasswdFile { path, .. } => Ok(PasswdFile::load(path)?.users()),
            Source::Courier { path, .. } => Ok(CourierDb::load(path)?.users()),
            Source::Sql { settings, .. } => Ok(sql::with_retry(settings, |db| db.users(domain))?),
        }
    }

    /// The account `key`; an unusable password form is an error naming the
    /// line (never the hash).
    pub fn account(&self, key: &str) -> Result<Option<Account>, UserdbError> {
        match self {
            Source::PasswdFile {
                path,
                default_scheme,
            } => passwd_file_account(path, default_scheme, key),
            Source::Courier { path, .. } => courier_account(path, key),
            Source::Sql {
                settings,
                default_scheme,
                mail_root,
            } => sql_account(settings, default_scheme, mail_root, key),
        }
    }

    /// Fails when the freeze (or its undoing) could not be written back
    /// for `key`, so that a mailbox is refused before its copy, not after.
    pub fn check_freezable(&self, key: &str) -> Result<(), UserdbError> {
        let Source::PasswdFile { path, .. } = self else {
            return Ok(());
        };
        let Some((no, e)) = PasswdFile::load(path)?.find(key)? else {
            return Err(missing(path, key));
        };
        for changed in [e.frozen(), e.thawed()] {
            passwd_file::check_writable(&changed).map_err(|problem| UserdbError::BadEntry {
                path: path.clone(),
                line: no,
                problem: format!("{problem}; the old login could not be refused"),
            })?;
        }
        Ok(())
    }

    /// Whether a server's passdb lookup of a frozen account (`None`: it
    /// does not know the user) shows that it now refuses the login. A
    /// file's freeze is a `nologin` the server sees once it re-reads the
    /// file; a SQL row is read at every login and its changed hash never
    /// shows.
    pub fn freeze_seen(&self, passdb: Option<&HashMap<String, String>>) -> bool {
        match self {
            Source::PasswdFile { .. } | Source::Courier { .. } => {
                passdb.is_none_or(|fields| fields.contains_key(passwd_file::NOLOGIN))
            }
            Source::Sql { .. } => true,
        }
    }

    /// Refuses logins but keeps the account resolvable (mail still arrives).
    pub fn freeze(&self, key: &str, fsync: bool) -> Result<(), UserdbError> {
        self.rewrite(key, fsync, true)
    }

    /// Undoes exactly our freeze.
    pub fn thaw(&self, key: &str, fsync: bool) -> Result<(), UserdbError> {
        self.rewrite(key, fsync, false)
    }

    fn rewrite(&self, key: &str, fsync: bool, freeze: bool) -> Result<(), UserdbError> {
        match self {
            Source::PasswdFile { path, .. } => {
                passwd_file::edit(path, None, fsync, |file: &PasswdFile| {
                    let Some((no, e)) = file.find(key)? else {
                        return Err(missing(path, key));
                    };
                    let new = if freeze { e.frozen() } else { e.thawed() };
                    if new == e {
                        return Ok(None);
                    }
                    let line = passwd_file::check_writable(&new).map_err(|problem| {
                        UserdbError::BadEntry {
                            path: path.clone(),
                            line: no,
                            problem,
                        }
                    })?;
                    Ok(Some(Change::Replace {
                        user: key.to_string(),
                        line,
                    }))
                })?;
            }
            Source::Courier { path, makeuserdb } => {
                courier::edit(path, key, fsync, makeuserdb.as_deref(), |e| {
                    Ok::<_, UserdbError>(if freeze { e.frozen() } else { e.thawed() })
                })?;
            }
            Source::Sql { settings, .. } => {
                sql::with_retry(
                    settings,
                    |db| {
                        if freeze { db.lock(key) } else { db.unlock(key) }
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// A passwd-file entry, as it is when not frozen.
fn passwd_file_account(
    path: &Path,
    default_scheme: &str,
    key: &str,
) -> Result<Option<Account>, UserdbError> {
    let Some((_, e)) = PasswdFile::load(path)?.find(key)? else {
        return Ok(None);
    };
    let src = e.thawed();
    Ok(Some(Account {
        key: key.to_string(),
        hash: scheme::carry(&src.password, default_scheme),
        uid: src.uid.clone(),
        gid: src.gid.clone(),
        mail: src.mail().map(String::from),
        extra: src.extra_without_location().cloned().collect(),
        name: src.gecos.clone(),
        home: src.home,
        refuses_login: e.refuses_login(),
        frozen_by_us: e.frozen_by_us(),
        active: true,
        sql_maildir: None,
    }))
}

/// A Courier userdb entry; one without a password Dovecot could verify is
/// an error.
fn courier_account(path: &Path, key: &str) -> Result<Option<Account>, UserdbError> {
    let Some((file, line, e)) = CourierDb::load(path)?.find(key)? else {
        return Ok(None);
    };
    let bad = |problem: String| UserdbError::BadEntry {
        path: file.clone(),
        line,
        problem: format!("{key}: {problem}"),
    };
    // No password an IMAP login would accept: never write an entry
    // without one (or with a form Dovecot cannot check).
    let (field, value) = e.password().ok_or_else(|| {
        bad("no imappw, systempw or hmac-md5pw; nothing Dovecot could verify".into())
    })?;
    let hash = scheme::carry_courier(field, value).map_err(|p| bad(format!("{field}: {p}")))?;
    let extra = e
        .quota_rule()
        .map_err(bad)?
        .map(|r| format!("userdb_quota_rule={r}"))
        .into_iter()
        .collect();
    let field = |k: &str| e.field(k).unwrap_or_default().to_string();
    Ok(Some(Account {
        key: key.to_string(),
        hash,
        uid: field("uid"),
        gid: field("gid"),
        home: field("home"),
        // Courier's `mail=` is a bare Maildir path.
        mail: e
            .field("mail")
            .filter(|m| !m.is_empty())
            .map(|m| format!("maildir:{m}")),
        extra,
        refuses_login: e.refuses_login(),
        frozen_by_us: e.frozen_by_us(),
        name: String::new(),
        active: true,
        sql_maildir: None,
    }))
}

/// An SQL row; its Maildir is the row's directory itself (Postfix's
/// virtual_mailbox_base + maildir), not a subdirectory of it.
fn sql_account(
    settings: &SqlSettings,
    default_scheme: &str,
    mail_root: &Path,
    key: &str,
) -> Result<Option<Account>, UserdbError> {
    let Some(row) = sql::with_retry(settings, |db| db.mailbox(key))? else {
        return Ok(None);
    };
    let maildir = mail_root.join(row.maildir.trim_start_matches('/'));
    let maildir = maildir.to_string_lossy().into_owned();
    let locked = sql::is_locked(&row);
    Ok(Some(Account {
        // As the row spells it: a case-insensitive database finds `MIXED`
        // for the row `mixed`.
        key: row.username.clone(),
        hash: scheme::carry(&row.for_target(default_scheme).password, default_scheme),
        uid: String::new(),
        gid: String::new(),
        mail: Some(format!("maildir:{maildir}")),
        home: maildir,
        extra: (row.quota_bytes > 0)
            .then(|| format!("userdb_quota_rule=*:bytes={}", row.quota_bytes))
            .into_iter()
            .collect(),
        refuses_login: locked,
        frozen_by_us: locked,
        name: row.name,
        active: row.active,
        sql_maildir: Some(row.maildir),
    }))
}
