//! Against the real servers: PostgreSQL (postgres@127.0.0.1:5432, trust)
//! and MariaDB (root@127.0.0.1:3306). Every test works in its own database.
//! Without a server its tests are skipped loudly, and fail under `CI=true`
//! (the rule of `tests/it/common/require.rs`, which a unit test cannot use).

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::driver::{Cell, Conn, Value};
use super::*;
use crate::db_url::Secret;
use std::os::unix::fs::PermissionsExt;

// Real hashes (`doveadm pw -s SCHEME`); passwords are `Secr3t-<SCHEME>`.
const MD5_CRYPT: &str = "$1$eGlkvjQk$HdhkC/RIfRUkpxGUgqNnx/";
const SHA512_CRYPT: &str = "$6$xOBlKhsKZkZhLJSW$q5lYykvGYN7ZHTEFMLpdf6SxFI6mLFlR3wZH6te/Bd4Rxmr9bhWFQriJAcrbp2q1DUxBQP8NV5byLI9aMXZf8.";
const BLF_CRYPT: &str = "{BLF-CRYPT}$2y$05$jxzykuPnTPvQrjFb8yzEm.V3XN4cuV9JOJ4iMZ9ecz8OuqfgkcUye";
const SSHA512: &str = "{SSHA512}nIvHBNygjNr1ATfEPAp7mO80zpa5Y9g2QuW2gXcvEHiiF/42ox5MW4dOlgeGdLGijzEHqK3oiIvMQW00NIpnwqg3Kak=";
const HOSTILE: &str = "x' OR '1'='1";

fn sha512_prefixed() -> String {
    format!("{{SHA512-CRYPT}}{SHA512_CRYPT}")
}

/// (username, password, name, maildir, quota, active)
fn fixture_rows() -> Vec<(&'static str, String, &'static str, &'static str, i64, bool)> {
    vec![
        (
            "alice@example.com",
            MD5_CRYPT.into(),
            "Alice",
            "example.com/alice/",
            0,
            true,
        ),
        (
            "bob@example.com",
            SHA512_CRYPT.into(),
            "Bob",
            "example.com/bob/",
            1_024_000_000,
            true,
        ),
        (
            "carol@example.com",
            sha512_prefixed(),
            "Carol Ünicode",
            "example.com/carol/",
            5,
            false,
        ),
        (
            "dave@example.com",
            BLF_CRYPT.into(),
            "",
            "example.com/dave/",
            0,
            true,
        ),
        (
            "erin@example.com",
            SSHA512.into(),
            "Erin",
            "example.com/erin/",
            0,
            true,
        ),
        (
            "frank@example.org",
            MD5_CRYPT.into(),
            "Frank",
            "example.org/frank/",
            0,
            true,
        ),
        (
            "grace@example.org",
            BLF_CRYPT.into(),
            "Grace",
            "example.org/grace/",
            7,
            true,
        ),
    ]
}

/// A database of its own, dropped at the end.
struct TempDb {
    driver: Driver,
    name: String,
}

fn admin_url(driver: Driver, dbname: &str) -> String {
    match driver {
        Driver::Postgres => format!("postgresql://postgres@127.0.0.1:5432/{dbname}"),
        Driver::Mysql => format!("mysql://root@127.0.0.1:3306/{dbname}"),
    }
}

fn open(driver: Driver, dbname: &str) -> Conn {
    let s = SqlSettings::parse(&admin_url(driver, dbname), None, SqlSchema::PostfixAdmin).unwrap();
    Conn::open(&s.url).unwrap()
}

/// Returns from the calling test when `driver`'s server is not listening.
macro_rules! require_server {
    ($driver:expr) => {
        if !server_listening($driver) {
            return;
        }
    };
}

/// `true` when the server answers; otherwise a loud SKIPPED banner, or a
/// panic when `CI=true`.
fn server_listening(driver: Driver) -> bool {
    let port = match driver {
        Driver::Postgres => 5432,
        Driver::Mysql => 3306,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
        return true;
    }
    let thread = std::thread::current();
    let msg = format!(
        "{} needs {driver:?} on {addr}",
        thread.name().unwrap_or("this test")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!!! SKIPPED: {msg}\n{bar}\n");
    false
}

/// Placeholder `n` (1-based) in the driver's syntax.
fn ph(driver: Driver, n: usize) -> String {
    match driver {
        Driver::Postgres => format!("${n}"),
        Driver::Mysql => "?".into(),
    }
}

impl TempDb {
    fn new(driver: Driver) -> TempDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "mm_sql_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        open(driver, "test")
            .simple(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = TempDb { driver, name };
        let file = match driver {
            Driver::Postgres => "postfixadmin-pgsql.sql",
            Driver::Mysql => "postfixadmin-mysql.sql",
        };
        let schema = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/sql")
                .join(file),
        )
        .unwrap();
        let mut c = db.conn();
        for stmt in schema.split(";\n") {
            let stmt: String = stmt
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            if !stmt.trim().is_empty() {
                c.simple(&stmt).unwrap();
            }
        }
        db
    }

    fn conn(&self) -> Conn {
        open(self.driver, &self.name)
    }

    fn settings(&self, schema: SqlSchema) -> SqlSettings {
        SqlSettings::parse(&admin_url(self.driver, &self.name), None, schema).unwrap()
    }

    fn fill(&self) {
        let mut c = self.conn();
        let d = self.driver;
        for domain in ["example.com", "example.org"] {
            c.execute(
                &format!("INSERT INTO domain (domain) VALUES ({})", ph(d, 1)),
                &[Value::Text(domain.into())],
            )
            .unwrap();
        }
        let sql = format!(
            "INSERT INTO mailbox (username, password, name, maildir, quota, local_part, domain, \
             created, modified, active) VALUES ({}, {}, {}, {}, {}, {}, {}, \
             '2020-01-02 03:04:05', '2021-02-03 04:05:06', {})",
            ph(d, 1),
            ph(d, 2),
            ph(d, 3),
            ph(d, 4),
            ph(d, 5),
            ph(d, 6),
            ph(d, 7),
            ph(d, 8)
        );
        for (user, pw, name, maildir, quota, active) in fixture_rows() {
            let (local, domain) = user.split_once('@').unwrap();
            let active = match d {
                Driver::Postgres => Value::Bool(active),
                Driver::Mysql => Value::Int(active.into()),
            };
            c.execute(
                &sql,
                &[
                    Value::Text(user.into()),
                    Value::Text(pw),
                    Value::Text(name.into()),
                    Value::Text(maildir.into()),
                    Value::Int(quota),
                    Value::Text(local.into()),
                    Value::Text(domain.into()),
                    active,
                ],
            )
            .unwrap();
        }
    }

    /// Every column of every row of `domain`, as text.
    fn dump(&self, domain: &str) -> Vec<String> {
        let sql = format!(
            "SELECT concat_ws('|', username, password, name, maildir, quota, local_part, domain, \
             created, modified, active, phone, email_other, token, token_validity, \
             password_expiry) FROM mailbox WHERE domain = {} ORDER BY username",
            ph(self.driver, 1)
        );
        let rows = self
            .conn()
            .query(&sql, &[Value::Text(domain.into())])
            .unwrap();
        rows.rows
            .into_iter()
            .map(|r| match &r[0] {
                Cell::Text(s) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn dump_user(&self, user: &str) -> String {
        let domain = user.split_once('@').unwrap().1;
        self.dump(domain)
            .into_iter()
            .find(|r| r.starts_with(&format!("{user}|")))
            .unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = open(self.driver, "test").simple(&format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// Ends the session `sid` from another connection and waits until the
/// server has really let it go (the kill is asynchronous).
fn kill(driver: Driver, sid: i64) {
    let mut admin = open(driver, "test");
    let (kill, alive) = match driver {
        Driver::Postgres => (
            format!("SELECT pg_terminate_backend({sid})"),
            format!("SELECT pid FROM pg_stat_activity WHERE pid = {sid}"),
        ),
        Driver::Mysql => (
            format!("KILL {sid}"),
            format!("SELECT id FROM information_schema.processlist WHERE id = {sid}"),
        ),
    };
    admin.simple(&kill).unwrap();
    let start = Instant::now();
    while !admin.query(&alive, &[]).unwrap().rows.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "session {sid} survived the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn row(db: &mut SqlDb, user: &str) -> MailboxRow {
    db.mailbox(user).unwrap().unwrap()
}

// Long on purpose: one story against a live server (insert, lock, move,
// conflicts, re-runs), each step checking the rows the previous one left.
fn scenario(driver: Driver) {
    require_server!(driver);
    let src = TempDb::new(driver);
    src.fill();
    let mut db = SqlDb::connect(&src.settings(SqlSchema::PostfixAdmin)).unwrap();
    let org_before = src.dump("example.org");

    // users() lists one domain, sorted.
    assert_eq!(
        db.users("example.com").unwrap(),
        ["alice", "bob", "carol", "dave", "erin"].map(|u| format!("{u}@example.com"))
    );
    assert_eq!(
        db.users("example.org").unwrap(),
        ["frank@example.org", "grace@example.org"]
    );
    assert!(db.users("example.net").unwrap().is_empty());

    // mailbox() returns the fields as stored.
    let carol = row(&mut db, "carol@example.com");
    assert_eq!(
        carol,
        MailboxRow {
            username: "carol@example.com".into(),
            password: sha512_prefixed(),
            name: "Carol Ünicode".into(),
            maildir: "example.com/carol/".into(),
            quota_bytes: 5,
            local_part: "carol".into(),
            domain: "example.com".into(),
            active: false,
        }
    );
    assert_eq!(row(&mut db, "bob@example.com").quota_bytes, 1_024_000_000);
    assert!(row(&mut db, "bob@example.com").active);
    assert_eq!(db.mailbox("nobody@example.com").unwrap(), None);

    // lock/unlock: every hash form round-trips byte for byte, idempotently,
    // and nothing else of the row (not even `modified`) changes.
    for (user, pw, ..) in fixture_rows().into_iter().filter(|r| r.0.ends_with(".com")) {
        let before = src.dump_user(user);
        assert_eq!(db.lock(user).unwrap(), Outcome::Changed);
        let locked = row(&mut db, user);
        assert!(is_locked(&locked));
        assert_eq!(locked.password, format!("{LOCK_MARKER}{pw}"));
        assert_eq!(
            locked.active,
            user != "carol@example.com",
            "lock must not touch active"
        );
        assert_eq!(db.lock(user).unwrap(), Outcome::Unchanged);
        assert_eq!(row(&mut db, user).password, locked.password);
        assert_eq!(db.unlock(user).unwrap(), Outcome::Changed);
        assert_eq!(db.unlock(user).unwrap(), Outcome::Unchanged);
        assert_eq!(row(&mut db, user).password, pw);
        assert_eq!(src.dump_user(user), before);
    }
    // `active` is never touched by a lock: mail keeps arriving.
    db.lock("alice@example.com").unwrap();
    assert!(row(&mut db, "alice@example.com").active);
    db.unlock("alice@example.com").unwrap();
    assert!(matches!(
        db.lock("nobody@example.com"),
        Err(SqlError::NoSuchUser { .. })
    ));

    // insert into a second database: idempotent, never overwrites.
    let dst = TempDb::new(driver);
    dst.conn()
        .execute(
            &format!("INSERT INTO domain (domain) VALUES ({})", ph(driver, 1)),
            &[Value::Text("example.com".into())],
        )
        .unwrap();
    let mut target = SqlDb::connect(&dst.settings(SqlSchema::PostfixAdmin)).unwrap();
    db.lock("bob@example.com").unwrap();
    let bob = row(&mut db, "bob@example.com");
    assert!(matches!(target.insert(&bob), Err(SqlError::Refused { .. })));
    let mut bare = bob.clone();
    bare.password = SHA512_CRYPT.into();
    let err = target.insert(&bare).unwrap_err();
    assert!(matches!(err, SqlError::Refused { .. }));
    assert!(!err.to_string().contains(SHA512_CRYPT));
    let bob_t = bob.for_target("MD5");
    assert_eq!(bob_t.password, sha512_prefixed());
    assert_eq!(target.insert(&bob_t).unwrap(), InsertOutcome::Inserted);
    assert_eq!(
        target.insert(&bob_t).unwrap(),
        InsertOutcome::AlreadyPresent
    );
    assert_eq!(row(&mut target, "bob@example.com"), bob_t);
    let inserted = dst.dump_user("bob@example.com");
    assert!(
        !inserted.contains("2000-01-01 00:00:00|2000-01-01 00:00:00|1|"),
        "created/modified set: {inserted}"
    );
    let mut other = bob_t.clone();
    other.maildir = "example.com/bob-elsewhere/".into();
    other.password = "{SHA512-CRYPT}$6$different".into();
    let err = target.insert(&other).unwrap_err();
    assert!(matches!(err, SqlError::Conflict { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("password") && msg.contains("maildir"), "{msg}");
    assert!(!msg.contains("$6$"), "hash leaked: {msg}");
    assert_eq!(dst.dump_user("bob@example.com"), inserted);
    for (user, ..) in fixture_rows().into_iter().filter(|r| r.0.ends_with(".com")) {
        let r = row(&mut db, user).for_target("MD5");
        assert!(r.password.starts_with('{') && !is_locked(&r));
        let again = target.insert(&r).unwrap() == InsertOutcome::AlreadyPresent;
        assert_eq!(again, user == "bob@example.com", "{user}");
    }
    assert_eq!(
        row(&mut target, "alice@example.com").password,
        format!("{{MD5-CRYPT}}{MD5_CRYPT}")
    );
    assert_eq!(row(&mut target, "dave@example.com").password, BLF_CRYPT);
    db.unlock("bob@example.com").unwrap();

    // update_location in place: moves and unlocks in one go; idempotent;
    // a maildir other than expected is a conflict.
    let before = src.dump_user("dave@example.com");
    db.lock("dave@example.com").unwrap();
    assert_eq!(
        db.update_location(
            "dave@example.com",
            "example.com/dave/",
            "new/example.com/dave/"
        )
        .unwrap(),
        Outcome::Changed
    );
    let dave = row(&mut db, "dave@example.com");
    assert_eq!(
        (dave.maildir.as_str(), dave.password.as_str()),
        ("new/example.com/dave/", BLF_CRYPT)
    );
    assert_ne!(
        src.dump_user("dave@example.com"),
        before,
        "modified is updated"
    );
    let after = src.dump_user("dave@example.com");
    assert_eq!(
        db.update_location(
            "dave@example.com",
            "example.com/dave/",
            "new/example.com/dave/"
        )
        .unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(src.dump_user("dave@example.com"), after);
    let err = db
        .update_location(
            "erin@example.com",
            "somewhere/else/",
            "new/example.com/erin/",
        )
        .unwrap_err();
    assert!(matches!(err, SqlError::Conflict { .. }), "{err}");
    assert_eq!(
        row(&mut db, "erin@example.com").maildir,
        "example.com/erin/"
    );

    // The other domain was never touched.
    assert_eq!(src.dump("example.org"), org_before);
}

fn custom_queries(driver: Driver) {
    require_server!(driver);
    let src = TempDb::new(driver);
    src.fill();
    let before = [src.dump("example.com"), src.dump("example.org")];
    // Repeated parameters, a literal `%`, aliased columns, missing optional
    // columns (name, local_part and domain derived from the username).
    let schema = SqlSchema::Custom(CustomQueries {
        list_query: "SELECT username AS u FROM mailbox WHERE domain = %{domain} \
                     AND username LIKE CONCAT('%@', %{domain})"
            .into(),
        user_query: "SELECT username, password AS password, maildir, quota, active \
                     FROM mailbox WHERE username = %{username}"
            .into(),
        insert_query: "INSERT INTO mailbox (username, password, maildir, local_part, domain) \
                       VALUES (%{username}, %{password}, %{maildir}, %{local_part}, %{domain})"
            .into(),
        update_location_query: "UPDATE mailbox SET maildir = %{maildir}, password = %{password} \
                                WHERE username = %{username} AND maildir = %{old_maildir} \
                                AND password = %{old_password}"
            .into(),
        update_password_query: "UPDATE mailbox SET password = %{password} WHERE \
                                username = %{username} AND password = %{old_password}"
            .into(),
    });
    let mut db = SqlDb::connect(&src.settings(schema)).unwrap();
    assert_eq!(
        db.users("example.org").unwrap(),
        ["frank@example.org", "grace@example.org"]
    );
    let frank = row(&mut db, "frank@example.org");
    assert_eq!(
        (
            frank.local_part.as_str(),
            frank.domain.as_str(),
            frank.name.as_str()
        ),
        ("frank", "example.org", "")
    );
    db.lock("frank@example.org").unwrap();
    db.unlock("frank@example.org").unwrap();

    // A hostile value is bound: it matches nothing and changes nothing.
    assert!(db.users(HOSTILE).unwrap().is_empty());
    assert_eq!(db.mailbox(HOSTILE).unwrap(), None);
    assert!(matches!(db.lock(HOSTILE), Err(SqlError::NoSuchUser { .. })));
    assert!(matches!(
        db.update_location(HOSTILE, "a", "b"),
        Err(SqlError::NoSuchUser { .. })
    ));
    let mut pfa = SqlDb::connect(&src.settings(SqlSchema::PostfixAdmin)).unwrap();
    assert!(pfa.users(HOSTILE).unwrap().is_empty());
    assert_eq!(pfa.mailbox(HOSTILE).unwrap(), None);
    assert!(matches!(
        pfa.unlock(HOSTILE),
        Err(SqlError::NoSuchUser { .. })
    ));
    assert_eq!([src.dump("example.com"), src.dump("example.org")], before);
}

fn connection_loss(driver: Driver) {
    require_server!(driver);
    let src = TempDb::new(driver);
    src.fill();
    let mut db = SqlDb::connect(&src.settings(SqlSchema::PostfixAdmin)).unwrap();
    let user = "erin@example.com";
    let before = src.dump_user(user);

    // Killed after the guarded UPDATE, before COMMIT: nothing committed,
    // transient, and the next call reconnects.
    for step in ["lock", "update_location"] {
        let sid = db.conn().unwrap().session_id();
        db.before_commit = Some(Box::new(move || kill(driver, sid)));
        let err = match step {
            "lock" => db.lock(user).unwrap_err(),
            _ => db
                .update_location(user, "example.com/erin/", "new/example.com/erin/")
                .unwrap_err(),
        };
        assert!(err.is_transient(), "{step}: {err:?}");
        assert!(err.to_string().contains(user), "{err}");
        assert!(!err.to_string().contains("nIvHBN"), "hash leaked: {err}");
        assert_eq!(src.dump_user(user), before, "{step}");
        db.before_commit = None;
    }
    assert_eq!(db.lock(user).unwrap(), Outcome::Changed);
    assert_eq!(
        db.update_location(user, "example.com/erin/", "new/example.com/erin/")
            .unwrap(),
        Outcome::Changed
    );
    assert_eq!(row(&mut db, user).password, SSHA512);

    // The same for an insert into a target.
    let dst = TempDb::new(driver);
    dst.conn()
        .execute(
            &format!("INSERT INTO domain (domain) VALUES ({})", ph(driver, 1)),
            &[Value::Text("example.com".into())],
        )
        .unwrap();
    let mut target = SqlDb::connect(&dst.settings(SqlSchema::PostfixAdmin)).unwrap();
    let erin = row(&mut db, user).for_target("MD5");
    let sid = target.conn().unwrap().session_id();
    target.before_commit = Some(Box::new(move || kill(driver, sid)));
    let err = target.insert(&erin).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(dst.dump("example.com").is_empty());
    target.before_commit = None;
    assert_eq!(target.insert(&erin).unwrap(), InsertOutcome::Inserted);

    // A server that is not there: transient too.
    let gone = SqlSettings::parse(
        match driver {
            Driver::Postgres => "postgresql://postgres@127.0.0.1:1/x",
            Driver::Mysql => "mysql://root@127.0.0.1:1/x",
        },
        None,
        SqlSchema::PostfixAdmin,
    )
    .unwrap();
    let err = SqlDb::connect(&gone).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[test]
fn postgres_postfixadmin() {
    scenario(Driver::Postgres);
}

#[test]
fn mysql_postfixadmin() {
    scenario(Driver::Mysql);
}

#[test]
fn postgres_custom_queries_bind_parameters() {
    custom_queries(Driver::Postgres);
}

#[test]
fn mysql_custom_queries_bind_parameters() {
    custom_queries(Driver::Mysql);
}

#[test]
fn postgres_connection_loss_is_transient_and_commits_nothing() {
    connection_loss(Driver::Postgres);
}

#[test]
fn mysql_connection_loss_is_transient_and_commits_nothing() {
    connection_loss(Driver::Mysql);
}

#[test]
fn wrong_password_is_a_permanent_connect_error_without_the_password() {
    require_server!(Driver::Mysql);
    let s = SqlSettings::parse(
        "mysql://root:Wr0ng-pw@127.0.0.1:3306/test",
        None,
        SqlSchema::PostfixAdmin,
    )
    .unwrap();
    let err = SqlDb::connect(&s).unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(!format!("{err} {err:?} {s:?}").contains("Wr0ng-pw"));
}

#[test]
fn password_file_mode_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "s3cret-pw\n").unwrap();
    let set_mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
    set_mode(0o640);
    let url = "postgresql://postgres@127.0.0.1/test";
    let err = SqlSettings::parse(url, Some(&path), SqlSchema::PostfixAdmin).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("0640"),
        "{msg}"
    );
    set_mode(0o600);
    let s = SqlSettings::parse(url, Some(&path), SqlSchema::PostfixAdmin).unwrap();
    assert_eq!(s.url.password, Some(Secret("s3cret-pw".into())));
    assert!(!format!("{s:?} {}", s.url).contains("s3cret"));
    let err = SqlSettings::parse("postgresql://u:x@h/d", Some(&path), SqlSchema::PostfixAdmin)
        .unwrap_err();
    assert!(matches!(
        err,
        SqlConfigError::Url(UrlError::TwoPasswords { .. })
    ));
    std::fs::write(&path, "\n").unwrap();
    assert!(SqlSettings::parse(url, Some(&path), SqlSchema::PostfixAdmin).is_err());
}

#[test]
fn named_parameters_become_placeholders() {
    let q = Query::compile(
        QueryKind::UpdatePassword,
        "UPDATE t SET p = %{password} WHERE u = %{username} AND p = %{old_password} AND u LIKE '%x' AND u <> %{username}",
        Driver::Postgres,
    )
    .unwrap();
    assert_eq!(
        q.sql,
        "UPDATE t SET p = $1 WHERE u = $2 AND p = $3 AND u LIKE '%x' AND u <> $2"
    );
    assert_eq!(
        q.binds,
        [Param::Password, Param::Username, Param::OldPassword]
    );
    let q = Query::compile(
        QueryKind::UpdatePassword,
        "UPDATE t SET p = %{password} WHERE u = %{username} AND p = %{old_password} AND u <> %{username}",
        Driver::Mysql,
    )
    .unwrap();
    assert_eq!(q.sql, "UPDATE t SET p = ? WHERE u = ? AND p = ? AND u <> ?");
    assert_eq!(
        q.binds,
        [
            Param::Password,
            Param::Username,
            Param::OldPassword,
            Param::Username
        ]
    );

    let err = |kind, text: &str| {
        Query::compile(kind, text, Driver::Postgres)
            .unwrap_err()
            .to_string()
    };
    let e = err(QueryKind::User, "SELECT * FROM m WHERE u = %{user}");
    assert!(
        e.starts_with("user_query: unknown parameter %{user}") && e.contains("%{username}"),
        "{e}"
    );
    let e = err(QueryKind::List, "SELECT u FROM m WHERE u = %{username}");
    assert!(
        e.starts_with("list_query: unknown parameter %{username}"),
        "{e}"
    );
    let e = err(
        QueryKind::UpdatePassword,
        "UPDATE m SET p = %{password} WHERE u = %{username}",
    );
    assert_eq!(e, "update_password_query: must use %{old_password}");
    assert!(err(QueryKind::User, "SELECT %{username").contains("without a closing"));
    assert!(err(QueryKind::User, "  ").contains("empty"));
    assert!(Queries::compile(&SqlSchema::PostfixAdmin, Driver::Mysql).is_ok());
}

#[test]
fn server_messages_are_scrubbed() {
    assert_eq!(
        scrub("bad value '{SSHA}abcd' here".into(), &["{SSHA}abcd", "x"]),
        "bad value '<redacted>' here"
    );
}
