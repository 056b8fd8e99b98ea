//! Where a database is: `postgresql://user@host[:port]/dbname` (also
//! `postgres://`) or `mysql://user@host[:port]/dbname` (also `mariadb://`),
//! with the password in the URL (percent-encoded) or, better, in a
//! `password_file` that group and others cannot read. Shared by the SQL
//! userdb and the PostgreSQL job queue; the password never appears in
//! `Debug`, `Display` or errors.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("SQL URL {url}: {problem}")]
    Url { url: String, problem: String },
    #[error("{}: {source}", path.display())]
    PasswordFile { path: PathBuf, source: io::Error },
    #[error(
        "{}: mode {mode:04o} lets group or others read it; a password file must be mode 600 or 400",
        path.display()
    )]
    PasswordFileMode { path: PathBuf, mode: u32 },
    #[error("{}: {problem}", path.display())]
    PasswordFileContent {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("SQL URL {url} has a password and password_file {} is set too; keep one", path.display())]
    TwoPasswords { url: String, path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Postgres,
    Mysql,
}

/// A password that never shows up in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the database is. `Display` gives the URL without password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlUrl {
    pub driver: Driver,
    pub user: String,
    pub(crate) password: Option<Secret>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl fmt::Display for SqlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.driver {
            Driver::Postgres => "postgresql",
            Driver::Mysql => "mysql",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "{scheme}://{}@{host}:{}/{}",
            self.user, self.port, self.dbname
        )
    }
}

impl SqlUrl {
    /// Checks a URL and reads the password file (refusing group/other access).
    pub fn parse(raw: &str, password_file: Option<&Path>) -> Result<SqlUrl, UrlError> {
        let mut url = parse_url(raw)?;
        if let Some(path) = password_file {
            if url.password.is_some() {
                return Err(UrlError::TwoPasswords {
                    url: url.to_string(),
                    path: path.to_path_buf(),
                });
            }
            url.password = Some(read_password_file(path)?);
        }
        Ok(url)
    }

    /// The PostgreSQL client settings (TCP, no TLS; see the SQL userdb).
    pub fn postgres_config(&self, connect_timeout: std::time::Duration) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("maildir-migrate")
            .connect_timeout(connect_timeout);
        if let Some(p) = &self.password {
            c.password(p.0.as_str());
        }
        c
    }
}

/// The URL with any password replaced, for error messages.
fn redact_url(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            let after = &rest[userinfo.len()..];
            format!("{scheme}://{user}:<redacted>{after}")
        }
        _ => raw.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_url(raw: &str) -> Result<SqlUrl, UrlError> {
    let bad = |problem: &str| UrlError::Url {
        url: redact_url(raw),
        problem: problem.to_string(),
    };
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| bad("expected postgresql://… or mysql://…"))?;
    let (driver, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "postgresql" | "postgres" => (Driver::Postgres, 5432),
        "mysql" | "mariadb" => (Driver::Mysql, 3306),
        _ => {
            return Err(bad(
                "unknown scheme; use postgresql://, mysql:// or mariadb://",
            ));
        }
    };
    if rest.contains(['?', '#']) {
        return Err(bad("options after ? are not supported"));
    }
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("missing /dbname"))?;
    let dbname = percent_decode(path).ok_or_else(|| bad("bad %-encoding in the dbname"))?;
    if dbname.is_empty() || dbname.contains('/') {
        return Err(bad("missing /dbname"));
    }
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("missing user@ before the host"))?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (
            u,
            Some(Secret(
                percent_decode(p).ok_or_else(|| bad("bad %-encoding in the password"))?,
            )),
        ),
        None => (userinfo, None),
    };
    let user = percent_decode(user).ok_or_else(|| bad("bad %-encoding in the user"))?;
    if user.is_empty() {
        return Err(bad("missing user@ before the host"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated [IPv6 address]"))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("port must be a number from 1 to 65535"))?,
    };
    Ok(SqlUrl {
        driver,
        user,
        password,
        host: host.to_string(),
        port,
        dbname,
    })
}

fn read_password_file(path: &Path) -> Result<Secret, UrlError> {
    let io_err = |source| UrlError::PasswordFile {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(UrlError::PasswordFileMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let content = |problem| UrlError::PasswordFileContent {
        path: path.to_path_buf(),
        problem,
    };
    let text = String::from_utf8(std::fs::read(path).map_err(io_err)?)
        .map_err(|_| content("not UTF-8"))?;
    // One trailing newline is how editors save a one-line file.
    let pw = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if pw.is_empty() {
        return Err(content("is empty"));
    }
    if pw.contains('\n') {
        return Err(content("has more than one line"));
    }
    Ok(Secret(pw.to_string()))
}

/// A PostgreSQL error as the SQL userdb and the job queue report it.
pub(crate) struct PgFailure {
    pub message: String,
    /// The SQLSTATE, when the server answered.
    pub code: Option<String>,
    /// Worth a retry: the connection, not the statement, failed.
    pub transient: bool,
}

impl PgFailure {
    pub fn of(e: &postgres::Error) -> PgFailure {
        let code = e.code().map(|c| c.code().to_string());
        match e.as_db_error() {
            Some(db) => PgFailure {
                message: format!("{}: {}", db.severity(), db.message()),
                transient: code.as_deref().is_some_and(pg_transient),
                code,
            },
            None => PgFailure {
                transient: e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<io::Error>()),
                message: e.to_string(),
                code,
            },
        }
    }
}

/// SQLSTATEs worth a retry: connection exceptions (class 08), a killed or
/// restarting server, serialization failures and deadlocks, lock timeouts.
fn pg_transient(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "55P03"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = SqlUrl::parse(
            "postgres://mail%40admin:p%3Ass@db.example:6543/post%66ix",
            None,
        )
        .unwrap();
        assert_eq!(
            (
                u.driver,
                u.user.as_str(),
                u.host.as_str(),
                u.port,
                u.dbname.as_str()
            ),
            (
                Driver::Postgres,
                "mail@admin",
                "db.example",
                6543,
                "postfix"
            )
        );
        assert_eq!(u.password, Some(Secret("p:ss".into())));
        assert_eq!(
            u.to_string(),
            "postgresql://mail@admin@db.example:6543/postfix"
        );
        assert!(!format!("{u:?}").contains("p:ss"));
        let m = SqlUrl::parse("mariadb://root@[::1]/test", None).unwrap();
        assert_eq!(
            (m.driver, m.host.as_str(), m.port),
            (Driver::Mysql, "::1", 3306)
        );
        assert_eq!(m.to_string(), "mysql://root@[::1]:3306/test");
        assert_eq!(SqlUrl::parse("mysql://u@h/d", None).unwrap().port, 3306);
        for bad in [
            "sqlite:///x",
            "postgresql://host/db",
            "postgresql://u@host",
            "postgresql://u@host/",
            "postgresql://u@host:0/d",
            "postgresql://u@host:x/d",
            "postgresql://u@/d",
            "postgresql://u@h/d?sslmode=require",
            "postgresql://u:s3cret@h/d?x",
        ] {
            let err = SqlUrl::parse(bad, None).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
