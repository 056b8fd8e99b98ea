//! Throwaway PostgreSQL and MariaDB databases on the machine's real servers
//! (127.0.0.1, trust / passwordless root), loaded with PostfixAdmin's schema
//! from `fixtures/sql/`, dropped when the value is dropped.
//!
//! A test that restarts the shared PostgreSQL server takes [`PgGate`]'s
//! exclusive side ([`pg_exclusive`]); every PostgreSQL `TestDb` holds the
//! shared side for its life, so no other test uses the server meanwhile.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mariadb,
}

pub struct TestDb {
    pub engine: Engine,
    pub name: String,
    /// Roles made by [`TestDb::create_role`], dropped with the database.
    roles: Mutex<Vec<String>>,
    /// Dropped after the database (fields drop in order).
    _gate: Option<PgShared>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A writer-preferring readers/writer gate on the shared PostgreSQL server
/// (`Send`, unlike std's guards, so a `TestDb` may move across threads):
/// (tests holding a database, a restart waiting or under way).
static PG_GATE: (Mutex<(usize, bool)>, Condvar) = (Mutex::new((0, false)), Condvar::new());

fn gate_wait(
    until: impl Fn(&(usize, bool)) -> bool,
) -> std::sync::MutexGuard<'static, (usize, bool)> {
    let (lock, cv) = &PG_GATE;
    let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !until(&st) {
        st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    st
}

/// The shared side: the server stays up while it is held.
pub struct PgShared(());

fn pg_shared() -> PgShared {
    gate_wait(|st| !st.1).0 += 1;
    PgShared(())
}

impl Drop for PgShared {
    fn drop(&mut self) {
        PG_GATE.0.lock().unwrap_or_else(|e| e.into_inner()).0 -= 1;
        PG_GATE.1.notify_all();
    }
}

/// The exclusive side: no other test holds a PostgreSQL database; may
/// restart the server. Its own databases come from [`PgExclusive::create`].
pub struct PgExclusive(());

pub fn pg_exclusive() -> PgExclusive {
    gate_wait(|st| !st.1).1 = true;
    drop(gate_wait(|st| st.0 == 0));
    PgExclusive(())
}

impl PgExclusive {
    /// A PostgreSQL database for the holder of the exclusive side.
    pub fn create(&self, tag: &str) -> TestDb {
        TestDb::create_gated(Engine::Postgres, tag, None)
    }
}

impl Drop for PgExclusive {
    fn drop(&mut self) {
        PG_GATE.0.lock().unwrap_or_else(|e| e.into_inner()).1 = false;
        PG_GATE.1.notify_all();
    }
}

/// Runs one client call; panics with its stderr on failure.
fn client(engine: Engine, db: &str, sql: &str) -> String {
    try_client(engine, "postgres", db, sql)
        .unwrap_or_else(|e| panic!("{engine:?} {db}: {sql}\n{e}"))
}

/// One client call (PostgreSQL as `user`); its stdout, or its stderr (with
/// the SQLSTATE, `ERROR:  42501: …`, for PostgreSQL) on failure.
fn try_client(engine: Engine, user: &str, db: &str, sql: &str) -> Result<String, String> {
    let mut cmd = match engine {
        Engine::Postgres => {
            let mut c = Command::new("psql");
            c.args([
                "-h",
                "127.0.0.1",
                "-U",
                user,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "VERBOSITY=verbose",
                "-At",
                "-F",
                "\t",
                "-d",
                db,
                "-c",
                sql,
            ]);
            c
        }
        Engine::Mariadb => {
            let mut c = Command::new("mysql");
            c.args(["-h", "127.0.0.1", "-uroot", "-N", "-B", db, "-e", sql]);
            c
        }
    };
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout).unwrap())
}

impl TestDb {
    /// A new database with PostfixAdmin's `domain` and `mailbox` tables.
    pub fn create(engine: Engine, tag: &str) -> TestDb {
        let gate = (engine == Engine::Postgres).then(pg_shared);
        TestDb::create_gated(engine, tag, gate)
    }

    fn create_gated(engine: Engine, tag: &str, gate: Option<PgShared>) -> TestDb {
        let name = format!(
            "mm_{tag}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = match engine {
            Engine::Postgres => "postgres",
            Engine::Mariadb => "test",
        };
        client(engine, admin, &format!("CREATE DATABASE {name}"));
        let db = TestDb {
            engine,
            name,
            roles: Mutex::new(Vec::new()),
            _gate: gate,
        };
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join(match engine {
            Engine::Postgres => "fixtures/sql/postfixadmin-pgsql.sql",
            Engine::Mariadb => "fixtures/sql/postfixadmin-mysql.sql",
        });
        db.exec(&std::fs::read_to_string(schema).unwrap());
        db
    }

    pub fn url(&self) -> String {
        match self.engine {
            Engine::Postgres => format!("postgresql://postgres@127.0.0.1:5432/{}", self.name),
            Engine::Mariadb => format!("mysql://root@127.0.0.1:3306/{}", self.name),
        }
    }

    pub fn exec(&self, sql: &str) {
        client(self.engine, &self.name, sql);
    }

    /// A new PostgreSQL login role `<database>_<tag>` (trust auth),
    /// dropped with the database.
    pub fn create_role(&self, tag: &str) -> String {
        let role = format!("{}_{tag}", self.name);
        client(
            self.engine,
            &self.name,
            &format!("CREATE ROLE {role} LOGIN"),
        );
        self.roles.lock().unwrap().push(role.clone());
        role
    }

    /// `sql` run as PostgreSQL role `user`: its output, or the client's
    /// error text with the SQLSTATE.
    pub fn try_as(&self, user: &str, sql: &str) -> Result<String, String> {
        try_client(self.engine, user, &self.name, sql)
    }

    /// Rows of `sql`, columns split on tabs.
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        client(self.engine, &self.name, sql)
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }

    /// Every mailbox row as text, for before/after comparisons.
    pub fn mailboxes(&self, domain: &str) -> Vec<Vec<String>> {
        self.rows(&format!(
            "SELECT username, password, name, maildir, quota, local_part, domain, created, modified, active \
             FROM mailbox WHERE domain = '{domain}' ORDER BY username"
        ))
    }

    pub fn add_domain(&self, domain: &str) {
        self.exec(&format!(
            "INSERT INTO domain (domain, description, transport) VALUES ('{domain}', '', 'virtual')"
        ));
    }

    /// A PostfixAdmin mailbox row (`maildir` = `<domain>/<local>/`).
    pub fn add_mailbox(&self, user: &str, hash: &str, quota: u64) {
        let (local, domain) = user.split_once('@').unwrap();
        self.exec(&format!(
            "INSERT INTO mailbox (username, password, name, maildir, quota, local_part, domain) \
             VALUES ('{user}', '{hash}', 'Name of {local}', '{domain}/{local}/', {quota}, '{local}', '{domain}')"
        ));
    }

    /// Dovecot's `driver` and `connect` for a dovecot-sql.conf.ext.
    pub fn dovecot_connect(&self) -> (&'static str, String) {
        match self.engine {
            Engine::Postgres => (
                "pgsql",
                format!(
                    "host=127.0.0.1 port=5432 dbname={} user=postgres",
                    self.name
                ),
            ),
            Engine::Mariadb => (
                "mysql",
                format!("host=127.0.0.1 port=3306 dbname={} user=root", self.name),
            ),
        }
    }

    /// The PostfixAdmin-style `user_query` home expression for `root`.
    pub fn home_expr(&self, root: &Path) -> String {
        match self.engine {
            Engine::Postgres => format!("'{}/' || maildir", root.display()),
            Engine::Mariadb => format!("CONCAT('{}/', maildir)", root.display()),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = match self.engine {
            Engine::Postgres => "postgres",
            Engine::Mariadb => "test",
        };
        let sql = match self.engine {
            Engine::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            Engine::Mariadb => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        let _ = std::panic::catch_unwind(|| client(self.engine, admin, &sql));
        for role in self.roles.lock().unwrap().iter() {
            let sql = format!("DROP ROLE IF EXISTS {role}");
            let _ = std::panic::catch_unwind(|| client(self.engine, admin, &sql));
        }
    }
}
