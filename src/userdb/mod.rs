//! User databases, one file per format, and the format-neutral view of a
//! source account the engine works with.

pub mod courier;
pub mod passwd_file;
pub mod scheme;
pub mod sql;

use std::path::{Path, PathBuf};

use passwd_file::{Change, PasswdFile, UserdbError};
use scheme::CarriedHash;
use sql::SqlSettings;

/// A source account, whatever its userdb format, with the password already
/// in the Dovecot form that verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub key: String,
    pub hash: CarriedHash,
    pub uid: String,
    pub gid: String,
    pub home: String,
    /// An explicit mail location (`userdb_mail=` / Courier's `mail=`).
    pub mail: Option<String>,
    /// Fields carried into the target entry (`userdb_quota_rule=…`, passdb fields).
    pub extra: Vec<String>,
    pub refuses_login: bool,
    pub frozen_by_us: bool,
    /// Display name (gecos, or an SQL row's `name`).
    pub name: String,
    /// Whether mail is delivered (an SQL row's `active`; files: always).
    pub active: bool,
    /// An SQL row's `maildir`, as stored (relative to the mail root).
    pub sql_maildir: Option<String>,
}

/// The source userdb of one domain.
#[derive(Debug, Clone)]
pub enum SourceDb {
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

impl SourceDb {
    /// The file, or the database URL (without password).
    pub fn describe(&self) -> String {
        match self {
            SourceDb::PasswdFile { path, .. } | SourceDb::Courier { path, .. } => {
                path.display().to_string()
            }
            SourceDb::Sql { settings, .. } => settings.url.to_string(),
        }
    }

    /// Fails when the userdb cannot be read at all (missing file, no
    /// database connection), before any mailbox is touched.
    pub fn check_reachable(&self) -> Result<(), UserdbError> {
        let path = match self {
            SourceDb::Sql { settings, .. } => {
                return Ok(sql::with_retry(settings, |_| Ok(()))?);
            }
            SourceDb::PasswdFile { path, .. } | SourceDb::Courier { path, .. } => path,
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() && matches!(self, SourceDb::PasswdFile { .. }) => {
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
            SourceDb::PasswdFile { path, .. } => Ok(PasswdFile::load(path)?.users()),
            SourceDb::Courier { path, .. } => Ok(courier::CourierDb::load(path)?.users()),
            SourceDb::Sql { settings, .. } => Ok(sql::with_retry(settings, |db| db.users(domain))?),
        }
    }

    /// The account `key`; an unusable password form is an error naming the
    /// line (never the hash).
    pub fn account(&self, key: &str) -> Result<Option<Account>, UserdbError> {
        match self {
            SourceDb::PasswdFile {
                path,
                default_scheme,
            } => {
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
            SourceDb::Courier { path, .. } => {
                let Some((file, line, e)) = courier::CourierDb::load(path)?.find(key)? else {
                    return Ok(None);
                };
                let bad = |problem: String| UserdbError::BadEntry {
                    path: file.clone(),
                    line,
                    problem: format!("{key}: {problem}"),
                };
                // No password an IMAP login would accept: never write an
                // entry without one (or with a form Dovecot cannot check).
                let (field, value) = e.password().ok_or_else(|| {
                    bad("no imappw, systempw or hmac-md5pw; nothing Dovecot could verify".into())
                })?;
                let hash = scheme::carry_courier(field, value)
                    .map_err(|p| bad(format!("{field}: {p}")))?;
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
            SourceDb::Sql {
                settings,
                default_scheme,
                mail_root,
            } => {
                let Some(row) = sql::with_retry(settings, |db| db.mailbox(key))? else {
                    return Ok(None);
                };
                // The Maildir is the row's directory itself (Postfix's
                // virtual_mailbox_base + maildir), not a subdirectory of it.
                let maildir = mail_root.join(row.maildir.trim_start_matches('/'));
                let maildir = maildir.to_string_lossy().into_owned();
                let locked = sql::is_locked(&row);
                Ok(Some(Account {
                    // As the row spells it: a case-insensitive database
                    // finds `MIXED` for the row `mixed`.
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
        }
    }

    /// Fails when the freeze (or its undoing) could not be written back
    /// for `key`, so that a mailbox is refused before its copy, not after.
    pub fn check_freezable(&self, key: &str) -> Result<(), UserdbError> {
        let SourceDb::PasswdFile { path, .. } = self else {
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
    pub fn freeze_seen(&self, passdb: Option<&std::collections::HashMap<String, String>>) -> bool {
        match self {
            SourceDb::PasswdFile { .. } | SourceDb::Courier { .. } => {
                passdb.is_none_or(|fields| fields.contains_key(passwd_file::NOLOGIN))
            }
            SourceDb::Sql { .. } => true,
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
            SourceDb::PasswdFile { path, .. } => {
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
            SourceDb::Courier { path, makeuserdb } => {
                courier::edit(path, key, fsync, makeuserdb.as_deref(), |e| {
                    Ok::<_, UserdbError>(if freeze { e.frozen() } else { e.thawed() })
                })?;
            }
            SourceDb::Sql { settings, .. } => {
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

fn missing(path: &Path, key: &str) -> UserdbError {
    UserdbError::BadEntry {
        path: path.to_path_buf(),
        line: 0,
        problem: format!("no entry for {key}"),
    }
}
