//! Throwaway PostgreSQL and MariaDB databases on the machine's real servers
//! (127.0.0.1, trust / passwordless root), loaded with PostfixAdmin's schema
//! from `fixtures/sql/`, dropped when the value is dropped.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mariadb,
}

pub struct TestDb {
    pub engine: Engine,
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs one client call; panics with its stderr on failure.
fn client(engine: Engine, db: &str, sql: &str) -> String {
    let mut cmd = match engine {
        Engine::Postgres => {
            let mut c = Command::new("psql");
            c.args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
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
    assert!(
        out.status.success(),
        "{engine:?} {db}: {sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl TestDb {
    /// A new database with PostfixAdmin's `domain` and `mailbox` tables.
    pub fn create(engine: Engine, tag: &str) -> TestDb {
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
        let db = TestDb { engine, name };
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
    }
}
