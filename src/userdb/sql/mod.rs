//! SQL user databases: PostgreSQL and MySQL/MariaDB, with PostfixAdmin's
//! `mailbox` table built in and any other schema described by queries.
//!
//! # Use
//!
//! ```text
//! let settings = SqlSettings::parse(url, password_file, SqlSchema::PostfixAdmin)?; // config load
//! let mut db = SqlDb::connect(&settings)?;
//! for user in db.users("example.com")? { let row = db.mailbox(&user)?; … }
//! db.lock(user)?;                      // source: refuse logins, mail still delivered
//! target.insert(&row.for_target("CRYPT"))?;          // other database: idempotent
//! db.update_location(user, old_maildir, new_maildir)?; // same database: moves and unlocks
//! db.unlock(user)?;                    // rollback of a lock
//! ```
//!
//! * URL: `postgresql://user@host[:port]/dbname` (also `postgres://`) or
//!   `mysql://user@host[:port]/dbname` (also `mariadb://`). A password may
//!   sit in the URL (`user:password@`, percent-encoded) or, better, in a
//!   `password_file` that must not be accessible to group or others. The
//!   password never appears in `Debug`, `Display` or errors. TCP only and no
//!   TLS: neither driver is built with a TLS back end (it would add a TLS
//!   stack for the common 127.0.0.1 case); reach a remote database through
//!   an SSH or stunnel tunnel (the drivers' `native-tls` features would
//!   bring OpenSSL back, which `.ci/run` refuses).
//! * Writes run in one transaction each and are guarded (compare-and-swap on
//!   the values read in that transaction), so a lost connection leaves the
//!   row as it was and a concurrent change is reported as a conflict, never
//!   overwritten. [`SqlError::is_transient`] tells the engine whether a
//!   retry can help; the connection is re-opened on the next call.
//! * Hashes never appear in errors or logs; messages of the server are
//!   scrubbed of the values bound and PostgreSQL's DETAIL is dropped.
//! * Hashes are carried unchanged in place; a row written to another
//!   database gets an explicit `{SCHEME}` prefix with
//!   [`MailboxRow::for_target`] (SQL passdbs add `default_pass_scheme` to a
//!   bare hash and never detect a bare `$1$`), and [`SqlDb::insert`]
//!   refuses a password without one.
//!
//! # Locking a login
//!
//! [`SqlDb::lock`] prefixes the stored hash with [`LOCK_MARKER`]
//! (`{MAILDIR-MIGRATE-LOCKED}`), an unknown Dovecot scheme: the passdb
//! fails every login with "Unknown scheme", whatever `default_pass_scheme`
//! says, because a value starting with `{` is never given the default
//! scheme. `active` is left alone: Postfix keeps delivering. [`SqlDb::unlock`]
//! strips exactly that prefix. (With a `password_noscheme` field the whole
//! stored value is a plaintext, locked or not: no marker can help there, and
//! the lock opens nothing new.) `modified` is not touched by either, so a
//! lock and unlock leave the row byte for byte as it was.
//!
//! # Custom queries
//!
//! [`SqlSchema::Custom`] takes the statements in the spirit of Dovecot's
//! `dovecot-sql.conf.ext`. Parameters are written `%{name}` and are bound,
//! never spliced into the text: write `WHERE username = %{username}`, not
//! `'%{username}'`. A name may repeat. Other `%` characters are kept as
//! they are (`LIKE '%x'`). MySQL queries must not contain `:word` outside
//! string literals (the driver would read it as a named parameter).
//!
//! | query | parameters (required in bold) | must |
//! |---|---|---|
//! | `list_query` | **domain** | return the usernames in the first column |
//! | `user_query` | **username** | return at most one row with columns named `username`, `password`, `maildir` and optionally `name`, `quota` (bytes, 0 = unlimited), `local_part`, `domain`, `active` |
//! | `insert_query` | **username**, **password**, **maildir**, name, quota, local_part, domain, active | insert one row (set timestamps in SQL, e.g. `now()`) |
//! | `update_location_query` | **username**, **maildir**, **old_maildir**, **password**, **old_password** | `SET maildir = %{maildir}, password = %{password} … WHERE username = %{username} AND maildir = %{old_maildir} AND password = %{old_password}` |
//! | `update_password_query` | **username**, **password**, **old_password** | `SET password = %{password} WHERE username = %{username} AND password = %{old_password}` |
//!
//! The `WHERE … = %{old_…}` guards are what make a concurrent change
//! visible (zero rows matched), so they are required.

mod driver;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use driver::{Cell, Conn, Failure, Rows, Value};

pub use crate::db_url::{Driver, SqlUrl, UrlError};

use super::scheme;

/// Prefix that makes a stored hash unverifiable (an unknown Dovecot scheme).
pub const LOCK_MARKER: &str = "{MAILDIR-MIGRATE-LOCKED}";

/// The statements of a schema other than PostfixAdmin's (see the module
/// documentation for parameters and columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomQueries {
    pub list_query: String,
    pub user_query: String,
    pub insert_query: String,
    pub update_location_query: String,
    pub update_password_query: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlSchema {
    /// PostfixAdmin 3.3/4.x `mailbox` table.
    PostfixAdmin,
    Custom(CustomQueries),
}

/// A checked SQL userdb configuration; only [`SqlSettings::parse`] makes one.
#[derive(Debug, Clone)]
pub struct SqlSettings {
    pub url: SqlUrl,
    pub schema: SqlSchema,
    queries: Queries,
}

#[derive(Debug, thiserror::Error)]
pub enum SqlConfigError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("{query}: {problem}")]
    Query {
        query: &'static str,
        problem: String,
    },
}

impl SqlSettings {
    /// Checks a URL, reads the password file (refusing group/other access)
    /// and converts the schema's named parameters to the driver's placeholders.
    pub fn parse(
        url: &str,
        password_file: Option<&Path>,
        schema: SqlSchema,
    ) -> Result<SqlSettings, SqlConfigError> {
        let url = SqlUrl::parse(url, password_file)?;
        let queries = Queries::compile(&schema, url.driver)?;
        Ok(SqlSettings {
            url,
            schema,
            queries,
        })
    }
}

/// The parameters a query may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Username,
    Domain,
    Password,
    OldPassword,
    Name,
    Maildir,
    OldMaildir,
    Quota,
    LocalPart,
    Active,
}

impl Param {
    const ALL: [Param; 10] = [
        Param::Username,
        Param::Domain,
        Param::Password,
        Param::OldPassword,
        Param::Name,
        Param::Maildir,
        Param::OldMaildir,
        Param::Quota,
        Param::LocalPart,
        Param::Active,
    ];

    fn name(self) -> &'static str {
        match self {
            Param::Username => "username",
            Param::Domain => "domain",
            Param::Password => "password",
            Param::OldPassword => "old_password",
            Param::Name => "name",
            Param::Maildir => "maildir",
            Param::OldMaildir => "old_maildir",
            Param::Quota => "quota",
            Param::LocalPart => "local_part",
            Param::Active => "active",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryKind {
    List,
    User,
    Insert,
    UpdateLocation,
    UpdatePassword,
}

impl QueryKind {
    fn name(self) -> &'static str {
        match self {
            QueryKind::List => "list_query",
            QueryKind::User => "user_query",
            QueryKind::Insert => "insert_query",
            QueryKind::UpdateLocation => "update_location_query",
            QueryKind::UpdatePassword => "update_password_query",
        }
    }

    /// (required, optional) parameters.
    fn params(self) -> (&'static [Param], &'static [Param]) {
        use Param::*;
        match self {
            QueryKind::List => (&[Domain], &[]),
            QueryKind::User => (&[Username], &[]),
            QueryKind::Insert => (
                &[Username, Password, Maildir],
                &[Name, Quota, LocalPart, Domain, Active],
            ),
            QueryKind::UpdateLocation => {
                (&[Username, Maildir, OldMaildir, Password, OldPassword], &[])
            }
            QueryKind::UpdatePassword => (&[Username, Password, OldPassword], &[]),
        }
    }
}

/// A statement with driver placeholders and the parameters in bind order.
#[derive(Debug, Clone)]
struct Query {
    kind: QueryKind,
    sql: String,
    binds: Vec<Param>,
}

impl Query {
    /// Replaces `%{name}` by `$n` (PostgreSQL, one number per name) or `?`
    /// (MySQL, one per occurrence).
    fn compile(kind: QueryKind, text: &str, driver: Driver) -> Result<Query, SqlConfigError> {
        let bad = |problem: String| SqlConfigError::Query {
            query: kind.name(),
            problem,
        };
        let (required, optional) = kind.params();
        if text.trim().is_empty() {
            return Err(bad("is empty".into()));
        }
        let mut sql = String::with_capacity(text.len());
        let mut names: Vec<Param> = Vec::new();
        let mut binds = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("%{") {
            sql.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| bad("has a %{ without a closing }".into()))?;
            let name = &after[..end];
            let param = Param::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .filter(|p| required.contains(p) || optional.contains(p))
                .ok_or_else(|| {
                    let allowed: Vec<String> = required
                        .iter()
                        .chain(optional)
                        .map(|p| format!("%{{{}}}", p.name()))
                        .collect();
                    bad(format!(
                        "unknown parameter %{{{name}}}; allowed here: {}",
                        allowed.join(", ")
                    ))
                })?;
            match driver {
                Driver::Postgres => {
                    let n = match names.iter().position(|&p| p == param) {
                        Some(i) => i + 1,
                        None => {
                            names.push(param);
                            binds.push(param);
                            names.len()
                        }
                    };
                    sql.push_str(&format!("${n}"));
                }
                Driver::Mysql => {
                    names.push(param);
                    binds.push(param);
                    sql.push('?');
                }
            }
            rest = &after[end + 1..];
        }
        sql.push_str(rest);
        if let Some(missing) = required.iter().find(|p| !names.contains(p)) {
            return Err(bad(format!("must use %{{{}}}", missing.name())));
        }
        Ok(Query { kind, sql, binds })
    }
}

#[derive(Debug, Clone)]
struct Queries {
    list: Query,
    user: Query,
    insert: Query,
    update_location: Query,
    update_password: Query,
}

const PFA_COLUMNS: &str = "username, password, name, maildir, quota, local_part, domain, active";

impl Queries {
    fn compile(schema: &SqlSchema, driver: Driver) -> Result<Queries, SqlConfigError> {
        // `now()` is spelt the same in PostgreSQL and MySQL.
        let pfa;
        let q = match schema {
            SqlSchema::Custom(q) => q,
            SqlSchema::PostfixAdmin => {
                pfa = CustomQueries {
                    // Any case of the domain: a row never drops out of its domain's job.
                    list_query: "SELECT username FROM mailbox WHERE lower(domain) = %{domain}"
                        .into(),
                    user_query: format!(
                        "SELECT {PFA_COLUMNS} FROM mailbox WHERE username = %{{username}}"
                    ),
                    insert_query: format!(
                        "INSERT INTO mailbox ({PFA_COLUMNS}, created, modified) VALUES \
                         (%{{username}}, %{{password}}, %{{name}}, %{{maildir}}, %{{quota}}, \
                         %{{local_part}}, %{{domain}}, %{{active}}, now(), now())"
                    ),
                    update_location_query: "UPDATE mailbox SET maildir = %{maildir}, \
                         password = %{password}, modified = now() WHERE username = %{username} \
                         AND maildir = %{old_maildir} AND password = %{old_password}"
                        .into(),
                    update_password_query: "UPDATE mailbox SET password = %{password} \
                         WHERE username = %{username} AND password = %{old_password}"
                        .into(),
                };
                &pfa
            }
        };
        Ok(Queries {
            list: Query::compile(QueryKind::List, &q.list_query, driver)?,
            user: Query::compile(QueryKind::User, &q.user_query, driver)?,
            insert: Query::compile(QueryKind::Insert, &q.insert_query, driver)?,
            update_location: Query::compile(
                QueryKind::UpdateLocation,
                &q.update_location_query,
                driver,
            )?,
            update_password: Query::compile(
                QueryKind::UpdatePassword,
                &q.update_password_query,
                driver,
            )?,
        })
    }
}

/// One mailbox row, PostfixAdmin's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRow {
    pub username: String,
    /// The stored hash, exactly as stored (bare or `{SCHEME}`-prefixed).
    pub password: String,
    pub name: String,
    /// Relative to the mail root, e.g. `example.com/alice/`.
    pub maildir: String,
    /// Bytes; 0 = unlimited.
    pub quota_bytes: u64,
    pub local_part: String,
    pub domain: String,
    pub active: bool,
}

impl MailboxRow {
    /// The columns a user_query must return.
    const REQUIRED: [&str; 3] = ["username", "password", "maildir"];

    /// The row to write to another database: without our lock marker and
    /// with an explicit `{SCHEME}` prefix, a bare hash read the way the
    /// source passdb read it (`default_scheme` = its `default_pass_scheme`).
    pub fn for_target(&self, default_scheme: &str) -> MailboxRow {
        MailboxRow {
            password: scheme::carry(strip_lock(&self.password), default_scheme).value,
            ..self.clone()
        }
    }

    fn from_cells(columns: &[String], cells: Vec<Cell>) -> Result<MailboxRow, String> {
        let get = |name: &str| {
            columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(name))
                .map(|i| &cells[i])
        };
        let text = |name: &str, required: bool| -> Result<Option<String>, String> {
            match get(name) {
                None | Some(Cell::Null) if required => Err(format!("no {name} column")),
                None | Some(Cell::Null) => Ok(None),
                Some(Cell::Text(s)) => Ok(Some(s.clone())),
                Some(Cell::Int(i)) => Ok(Some(i.to_string())),
                Some(Cell::Bool(_)) => Err(format!("{name} is a boolean")),
            }
        };
        let username = text("username", true)?.unwrap_or_default();
        let (user_part, user_domain) = username.split_once('@').unwrap_or((&username, ""));
        let quota_bytes = match get("quota") {
            None | Some(Cell::Null) => 0,
            Some(Cell::Int(i)) => u64::try_from(*i).map_err(|_| "quota is negative".to_string())?,
            Some(Cell::Text(s)) => s
                .trim()
                .parse()
                .map_err(|_| "quota is not a number of bytes".to_string())?,
            Some(Cell::Bool(_)) => return Err("quota is a boolean".into()),
        };
        let active = match get("active") {
            None => true,
            Some(Cell::Bool(b)) => *b,
            Some(Cell::Int(i)) => *i != 0,
            Some(Cell::Text(s)) => matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "1" | "t" | "true" | "y" | "yes"
            ),
            Some(Cell::Null) => false,
        };
        Ok(MailboxRow {
            password: text("password", true)?.unwrap_or_default(),
            name: text("name", false)?.unwrap_or_default(),
            maildir: text("maildir", true)?.unwrap_or_default(),
            quota_bytes,
            local_part: text("local_part", false)?.unwrap_or_else(|| user_part.to_string()),
            domain: text("domain", false)?.unwrap_or_else(|| user_domain.to_string()),
            active,
            username,
        })
    }
}

/// The hash with our lock marker (`locked`) or without it.
fn lock_as(password: &str, locked: bool) -> String {
    let bare = strip_lock(password);
    if locked {
        format!("{LOCK_MARKER}{bare}")
    } else {
        bare.to_string()
    }
}

/// True if the row's login is refused by [`SqlDb::lock`].
pub fn is_locked(row: &MailboxRow) -> bool {
    row.password.starts_with(LOCK_MARKER)
}

/// The hash without our lock marker.
pub fn strip_lock(password: &str) -> &str {
    password.strip_prefix(LOCK_MARKER).unwrap_or(password)
}

/// Whether a write changed the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    /// The row was already in the requested state.
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// An identical row exists (a re-run).
    AlreadyPresent,
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{db}: cannot connect: {message}")]
    Connect {
        db: String,
        message: String,
        transient: bool,
    },
    #[error("{db}: {query}{}: {message}", for_user(user))]
    Query {
        db: String,
        query: &'static str,
        user: Option<String>,
        message: String,
        transient: bool,
    },
    #[error("{db}: {query} for {user}: {problem}")]
    BadRow {
        db: String,
        query: &'static str,
        user: String,
        problem: String,
    },
    #[error("{db}: no mailbox {user}")]
    NoSuchUser { db: String, user: String },
    /// The row is not what was expected: changed concurrently, or a
    /// different row already exists. Never overwritten.
    #[error("{db}: {user}: {problem}")]
    Conflict {
        db: String,
        user: String,
        problem: String,
    },
    #[error("{db}: {user}: refusing to write {problem}")]
    Refused {
        db: String,
        user: String,
        problem: &'static str,
    },
}

fn for_user(user: &Option<String>) -> String {
    user.as_ref()
        .map(|u| format!(" for {u}"))
        .unwrap_or_default()
}

impl SqlError {
    /// True for a lost connection, a server shutting down, a deadlock or
    /// a concurrent insert: retrying the mailbox may succeed. Nothing was
    /// committed by the failed call.
    pub fn is_transient(&self) -> bool {
        match self {
            SqlError::Connect { transient, .. } | SqlError::Query { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Replaces every bound secret in a server message.
fn scrub(mut message: String, secrets: &[&str]) -> String {
    for s in secrets {
        // Too short to be a hash; replacing it would garble the message.
        if s.len() >= 4 {
            message = message.replace(s, "<redacted>");
        }
    }
    message
}

/// A connection to one SQL userdb. Re-opened after a transient failure.
pub struct SqlDb {
    settings: SqlSettings,
    db: String,
    conn: Option<Conn>,
    /// Runs before COMMIT, to break the connection mid-transaction.
    #[cfg(test)]
    before_commit: Option<Box<dyn FnMut()>>,
}

impl fmt::Debug for SqlDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlDb").field("db", &self.db).finish()
    }
}

/// The arguments of one statement.
type Args<'a> = &'a [(Param, Value)];

impl SqlDb {
    pub fn connect(settings: &SqlSettings) -> Result<SqlDb, SqlError> {
        let mut db = SqlDb {
            settings: settings.clone(),
            db: settings.url.to_string(),
            conn: None,
            #[cfg(test)]
            before_commit: None,
        };
        db.conn()?;
        Ok(db)
    }

    fn conn(&mut self) -> Result<&mut Conn, SqlError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => Conn::open(&self.settings.url).map_err(|f| SqlError::Connect {
                db: self.db.clone(),
                message: f.message,
                transient: f.transient,
            })?,
        };
        Ok(self.conn.insert(conn))
    }

    /// Wraps a driver failure with context; drops a connection that a
    /// transient failure may have broken so the next call opens a new one.
    fn failed(
        &mut self,
        kind: QueryKind,
        user: Option<&str>,
        f: Failure,
        secrets: &[&str],
    ) -> SqlError {
        // A duplicate key on insert means a concurrent insert: a retry
        // reads that row and compares it.
        let transient = f.transient || (kind == QueryKind::Insert && f.is_unique_violation());
        if f.transient {
            self.conn = None;
        }
        SqlError::Query {
            db: self.db.clone(),
            query: kind.name(),
            user: user.map(String::from),
            message: scrub(f.message, secrets),
            transient,
        }
    }

    /// The values in bind order. `Query::compile` only lets through the
    /// parameters that every caller of that query binds; a gap is a bug here.
    fn bind(&self, query: &Query, user: Option<&str>, args: Args) -> Result<Vec<Value>, SqlError> {
        query
            .binds
            .iter()
            .map(|p| {
                args.iter()
                    .find(|(q, _)| q == p)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| SqlError::Query {
                        db: self.db.clone(),
                        query: query.kind.name(),
                        user: user.map(String::from),
                        message: format!("internal error: %{{{}}} is not bound", p.name()),
                        transient: false,
                    })
            })
            .collect()
    }

    fn secrets<'a>(args: Args<'a>) -> Vec<&'a str> {
        args.iter()
            .filter(|(p, _)| matches!(p, Param::Password | Param::OldPassword))
            .filter_map(|(_, v)| match v {
                Value::Text(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    fn run_query(
        &mut self,
        query: &Query,
        user: Option<&str>,
        args: Args,
    ) -> Result<Rows, SqlError> {
        let values = self.bind(query, user, args)?;
        let r = self.conn()?.query(&query.sql, &values);
        r.map_err(|f| self.failed(query.kind, user, f, &Self::secrets(args)))
    }

    fn run_execute(&mut self, query: &Query, user: &str, args: Args) -> Result<u64, SqlError> {
        let values = self.bind(query, Some(user), args)?;
        let r = self.conn()?.execute(&query.sql, &values);
        r.map_err(|f| self.failed(query.kind, Some(user), f, &Self::secrets(args)))
    }

    /// Runs `f` in a transaction: committed if it returns Ok, rolled back
    /// otherwise (by the server, if the connection is gone).
    fn transaction<T>(
        &mut self,
        kind: QueryKind,
        user: &str,
        f: impl FnOnce(&mut SqlDb) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let begin = self.conn()?.simple("BEGIN");
        begin.map_err(|e| self.failed(kind, Some(user), e, &[]))?;
        let result = f(self);
        #[cfg(test)]
        if result.is_ok()
            && let Some(hook) = self.before_commit.as_mut()
        {
            hook();
        }
        let end = match &result {
            Ok(_) => "COMMIT",
            Err(_) => "ROLLBACK",
        };
        let finish = match self.conn.as_mut() {
            Some(c) => c.simple(end),
            // Dropped by a transient failure: the server rolled back.
            None => Ok(()),
        };
        match (result, finish) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => {
                let e = Failure {
                    message: format!("COMMIT: {}", e.message),
                    ..e
                };
                Err(self.failed(kind, Some(user), e, &[]))
            }
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(_)) => {
                // A connection that cannot roll back is not reused.
                self.conn = None;
                Err(e)
            }
        }
    }

    /// Whether the database's default string comparison ignores case
    /// (MySQL/MariaDB's `_ci` collations do, PostgreSQL does not): then a
    /// lookup of the lower-cased login finds a row written in mixed case.
    pub fn folds_case(&mut self) -> Result<bool, SqlError> {
        let probe = "SELECT CASE WHEN 'A' = 'a' THEN 1 ELSE 0 END";
        let r = self.conn()?.query(probe, &[]);
        let rows = r.map_err(|f| self.failed(QueryKind::List, None, f, &[]))?;
        Ok(matches!(
            rows.rows.first().and_then(|r| r.first()),
            Some(Cell::Int(1))
        ))
    }

    /// Prepares the schema's five statements without running any (nothing
    /// is read or written): the server refuses a missing table or column,
    /// and the user_query must return the columns a row needs.
    pub fn check_queries(&mut self) -> Result<(), SqlError> {
        let q = &self.settings.queries;
        let all = [
            &q.list,
            &q.user,
            &q.insert,
            &q.update_location,
            &q.update_password,
        ]
        .map(|q| (q.kind, q.sql.clone()));
        for (kind, sql) in all {
            let r = self.conn()?.columns(&sql);
            let columns = r.map_err(|f| self.failed(kind, None, f, &[]))?;
            let missing = match kind {
                QueryKind::User => MailboxRow::REQUIRED
                    .iter()
                    .find(|c| !columns.iter().any(|n| n.eq_ignore_ascii_case(c))),
                _ => None,
            };
            if let Some(c) = missing {
                return Err(SqlError::Query {
                    db: self.db.clone(),
                    query: kind.name(),
                    user: None,
                    message: format!("returns no {c} column (it returns: {})", columns.join(", ")),
                    transient: false,
                });
            }
        }
        Ok(())
    }

    /// Usernames of `domain`, sorted bytewise (independent of collations).
    pub fn users(&mut self, domain: &str) -> Result<Vec<String>, SqlError> {
        let query = self.settings.queries.list.clone();
        let rows = self.run_query(&query, None, &[(Param::Domain, Value::Text(domain.into()))])?;
        let mut users = Vec::with_capacity(rows.rows.len());
        for row in rows.rows {
            match row.into_iter().next() {
                Some(Cell::Text(u)) => users.push(u),
                _ => {
                    return Err(SqlError::BadRow {
                        db: self.db.clone(),
                        query: query.kind.name(),
                        user: format!("domain {domain}"),
                        problem: "first column is not a text username".into(),
                    });
                }
            }
        }
        users.sort();
        Ok(users)
    }

    /// The row of `username`, if any.
    pub fn mailbox(&mut self, username: &str) -> Result<Option<MailboxRow>, SqlError> {
        let query = self.settings.queries.user.clone();
        let rows = self.run_query(
            &query,
            Some(username),
            &[(Param::Username, Value::Text(username.into()))],
        )?;
        let bad = |problem: String| SqlError::BadRow {
            db: self.db.clone(),
            query: query.kind.name(),
            user: username.to_string(),
            problem,
        };
        let mut it = rows.rows.into_iter();
        let Some(cells) = it.next() else {
            return Ok(None);
        };
        if it.next().is_some() {
            return Err(bad("more than one row".into()));
        }
        MailboxRow::from_cells(&rows.columns, cells)
            .map(Some)
            .map_err(bad)
    }

    fn existing(&mut self, username: &str) -> Result<MailboxRow, SqlError> {
        self.mailbox(username)?.ok_or_else(|| SqlError::NoSuchUser {
            db: self.db.clone(),
            user: username.to_string(),
        })
    }

    fn conflict(&self, user: &str, problem: impl Into<String>) -> SqlError {
        SqlError::Conflict {
            db: self.db.clone(),
            user: user.to_string(),
            problem: problem.into(),
        }
    }

    /// Replaces the password by `new(old)` if it differs, guarded by the old value.
    fn set_password(
        &mut self,
        username: &str,
        new: impl FnOnce(&str) -> String,
    ) -> Result<Outcome, SqlError> {
        self.transaction(QueryKind::UpdatePassword, username, |db| {
            let row = db.existing(username)?;
            let password = new(&row.password);
            if password == row.password {
                return Ok(Outcome::Unchanged);
            }
            let query = db.settings.queries.update_password.clone();
            let n = db.run_execute(
                &query,
                username,
                &[
                    (Param::Username, Value::Text(username.into())),
                    (Param::Password, Value::Text(password)),
                    (Param::OldPassword, Value::Text(row.password)),
                ],
            )?;
            match n {
                1 => Ok(Outcome::Changed),
                0 => Err(db.conflict(
                    username,
                    "password changed while it was being locked or unlocked",
                )),
                n => Err(db.conflict(username, format!("{n} rows matched one username"))),
            }
        })
    }

    /// Refuses logins (see the module documentation); a no-op if locked.
    pub fn lock(&mut self, username: &str) -> Result<Outcome, SqlError> {
        self.set_password(username, |p| {
            if p.starts_with(LOCK_MARKER) {
                p.to_string()
            } else {
                format!("{LOCK_MARKER}{p}")
            }
        })
    }

    /// Restores the hash `lock` changed; a no-op if not locked.
    pub fn unlock(&mut self, username: &str) -> Result<Outcome, SqlError> {
        self.set_password(username, |p| strip_lock(p).to_string())
    }

    /// Inserts `row` locked (its login staged: the new server can look the
    /// user up, nobody can log in); `unlock` makes it live. The same row,
    /// locked or not, is `AlreadyPresent`.
    pub fn insert_staged(&mut self, row: &MailboxRow) -> Result<InsertOutcome, SqlError> {
        if let Some(existing) = self.mailbox(&row.username)?
            && is_locked(&existing)
        {
            let mut unlocked = existing;
            unlocked.password = strip_lock(&unlocked.password).to_string();
            if unlocked == *row {
                return Ok(InsertOutcome::AlreadyPresent);
            }
        }
        self.insert_as(row, true)
    }

    /// Inserts `row` (use [`MailboxRow::for_target`]) in one transaction.
    /// An identical row is `AlreadyPresent`; a different one is a
    /// [`SqlError::Conflict`] and stays as it is.
    #[cfg(test)]
    pub fn insert(&mut self, row: &MailboxRow) -> Result<InsertOutcome, SqlError> {
        self.insert_as(row, false)
    }

    fn insert_as(&mut self, row: &MailboxRow, locked: bool) -> Result<InsertOutcome, SqlError> {
        let refuse = |problem| SqlError::Refused {
            db: self.db.clone(),
            user: row.username.clone(),
            problem,
        };
        if is_locked(row) {
            return Err(refuse("a locked password (use MailboxRow::for_target)"));
        }
        if scheme::carry(&row.password, "-").value != row.password || row.password.is_empty() {
            return Err(refuse(
                "a password without {SCHEME} prefix (use MailboxRow::for_target)",
            ));
        }
        let quota = i64::try_from(row.quota_bytes).map_err(|_| refuse("a quota above 2^63"))?;
        let password = lock_as(&row.password, locked);
        self.transaction(QueryKind::Insert, &row.username, |db| {
            if let Some(existing) = db.mailbox(&row.username)? {
                let same = MailboxRow {
                    password: row.password.clone(),
                    ..existing.clone()
                } == *row;
                return if same && existing.password == password {
                    Ok(InsertOutcome::AlreadyPresent)
                } else {
                    Err(db.conflict(
                        &row.username,
                        format!(
                            "a different row exists already ({})",
                            differing(&existing, row)
                        ),
                    ))
                };
            }
            let query = db.settings.queries.insert.clone();
            db.run_execute(
                &query,
                &row.username,
                &[
                    (Param::Username, Value::Text(row.username.clone())),
                    (Param::Password, Value::Text(password.clone())),
                    (Param::Name, Value::Text(row.name.clone())),
                    (Param::Maildir, Value::Text(row.maildir.clone())),
                    (Param::Quota, Value::Int(quota)),
                    (Param::LocalPart, Value::Text(row.local_part.clone())),
                    (Param::Domain, Value::Text(row.domain.clone())),
                    (Param::Active, Value::Bool(row.active)),
                ],
            )?;
            Ok(InsertOutcome::Inserted)
        })
    }

    /// Same-database migration: in one transaction, sets `maildir` from
    /// `old_maildir` to `new_maildir` and strips our lock marker. Already
    /// there and unlocked: `Unchanged`. Any other maildir, or a row changed
    /// concurrently: [`SqlError::Conflict`].
    #[cfg(test)]
    pub fn update_location(
        &mut self,
        username: &str,
        old_maildir: &str,
        new_maildir: &str,
    ) -> Result<Outcome, SqlError> {
        self.relocate(username, old_maildir, new_maildir, false)
    }

    /// `update_location`, but the row stays locked (or becomes so): the
    /// new location is staged, and `unlock` makes it live.
    pub fn move_locked(
        &mut self,
        username: &str,
        old_maildir: &str,
        new_maildir: &str,
    ) -> Result<Outcome, SqlError> {
        self.relocate(username, old_maildir, new_maildir, true)
    }

    fn relocate(
        &mut self,
        username: &str,
        old_maildir: &str,
        new_maildir: &str,
        locked: bool,
    ) -> Result<Outcome, SqlError> {
        self.transaction(QueryKind::UpdateLocation, username, |db| {
            let row = db.existing(username)?;
            if row.maildir == new_maildir && is_locked(&row) == locked {
                return Ok(Outcome::Unchanged);
            }
            if row.maildir != old_maildir && row.maildir != new_maildir {
                return Err(db.conflict(
                    username,
                    format!("maildir is {:?}, expected {old_maildir:?}", row.maildir),
                ));
            }
            let query = db.settings.queries.update_location.clone();
            let n = db.run_execute(
                &query,
                username,
                &[
                    (Param::Username, Value::Text(username.into())),
                    (Param::Maildir, Value::Text(new_maildir.into())),
                    (Param::OldMaildir, Value::Text(row.maildir.clone())),
                    (Param::Password, Value::Text(lock_as(&row.password, locked))),
                    (Param::OldPassword, Value::Text(row.password.clone())),
                ],
            )?;
            match n {
                1 => Ok(Outcome::Changed),
                0 => Err(db.conflict(username, "row changed while its maildir was being updated")),
                n => Err(db.conflict(username, format!("{n} rows matched one username"))),
            }
        })
    }
}

/// Names of the fields that differ (never their values: one is a hash).
fn differing(a: &MailboxRow, b: &MailboxRow) -> String {
    let mut d = Vec::new();
    let fields: [(&str, bool); 8] = [
        ("username", a.username != b.username),
        ("password", a.password != b.password),
        ("name", a.name != b.name),
        ("maildir", a.maildir != b.maildir),
        ("quota", a.quota_bytes != b.quota_bytes),
        ("local_part", a.local_part != b.local_part),
        ("domain", a.domain != b.domain),
        ("active", a.active != b.active),
    ];
    for (name, differs) in fields {
        if differs {
            d.push(name);
        }
    }
    format!("{} differ", d.join(", "))
}

/// Runs `f` on a new connection; a transient failure (lost connection,
/// deadlock, server restart) is retried once on another. Every write is
/// one transaction, so the failed attempt committed nothing.
pub fn with_retry<T>(
    settings: &SqlSettings,
    mut f: impl FnMut(&mut SqlDb) -> Result<T, SqlError>,
) -> Result<T, SqlError> {
    let mut attempt = || SqlDb::connect(settings).and_then(|mut db| f(&mut db));
    match attempt() {
        Err(e) if e.is_transient() => {
            tracing::warn!("{e}; retrying once");
            attempt()
        }
        r => r,
    }
}
