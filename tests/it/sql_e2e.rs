//! SQL userdbs (PostfixAdmin's `mailbox` table) on the machine's real
//! PostgreSQL and MariaDB: a domain moved to a separate database or
//! updated in place, the other domain untouched, re-runs idempotent, a
//! killed run resumed; and a real Dovecot with its SQL driver serving the
//! migrated users with their original passwords while the old login is
//! refused.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dovecot::{self, Auth, Dovecot};
use common::fixture::{BIN, Host, Maildir, body, column};
use common::imap::{ImapClient, assert_snapshots_equal};
use common::require::{Need, require};
use common::sqldb::{Engine, TestDb};

const ENGINES: [Engine; 2] = [Engine::Postgres, Engine::Mariadb];

/// (user, password, scheme, stored bare without its prefix?)
const USERS: &[(&str, &str, &str, bool)] = &[
    ("md5@a.cz", "heslo-md5", "MD5-CRYPT", true),
    ("sha@a.cz", "heslo-sha512", "SHA512-CRYPT", true),
    ("pref@a.cz", "Zedník2024!", "SHA512-CRYPT", false),
    ("blf@a.cz", "blf pass", "BLF-CRYPT", false),
    ("ssha@a.cz", "Příliš žluťoučký kůň", "SSHA512", false),
];
const OTHERS: &[(&str, &str)] = &[("x@b.cz", "jiné"), ("y@b.cz", "ještě jiné")];

/// The stored form of a fresh hash: bare (prefix cut off) or prefixed.
fn stored(scheme: &str, password: &str, bare: bool) -> String {
    let h = dovecot::hash_password(scheme, password);
    if bare {
        h[scheme.len() + 2..].to_string()
    } else {
        h
    }
}

/// A PostfixAdmin source: both domains' rows and Maildirs of a.cz with
/// `per_user` messages each (in INBOX and `.Sent`).
fn source(h: &Host, engine: Engine, per_user: usize) -> (TestDb, Vec<String>) {
    let db = TestDb::create(engine, "src");
    db.add_domain("a.cz");
    db.add_domain("b.cz");
    let mut hashes = Vec::new();
    for (i, (user, pw, scheme, bare)) in USERS.iter().enumerate() {
        let hash = stored(scheme, pw, *bare);
        db.add_mailbox(user, &hash, 1024000 * (i as u64));
        hashes.push(hash);
        if per_user == 0 {
            continue;
        }
        let (local, domain) = user.split_once('@').unwrap();
        let md = Maildir(h.old.join(domain).join(local));
        let (inbox, sent) = (md.folder(""), md.folder(".Sent"));
        for m in 0..per_user {
            let t = 1_600_000_000 + m as i64;
            inbox.msg(
                "cur",
                &format!("{t}.M{m}P{i}.h,S=900:2,S"),
                &body(&format!("{user} {m}"), 900),
                t,
            );
            sent.msg(
                "cur",
                &format!("{t}.M{m}Q{i}.h:2,RS"),
                &body(&format!("sent {m}"), 300),
                t,
            );
        }
    }
    for (user, pw) in OTHERS {
        db.add_mailbox(user, &stored("SHA512-CRYPT", pw, false), 0);
    }
    (db, hashes)
}

fn sql_config(h: &Host, src: &TestDb, dst: &TestDb, target_root: &str, home: &str) {
    let owner = if dovecot::running_as_root() {
        "uid = 5000\ngid = 5000\n"
    } else {
        ""
    };
    h.write_config(&format!(
        "[source]\nuserdb = \"{}\"\nuserdb_format = \"sql\"\nschema = \"postfixadmin\"\nmail_root = \"oldmail\"\n\
         [target]\nuserdb = \"{}\"\nuserdb_format = \"sql\"\nmail_root = \"{target_root}\"\nhome = \"{home}\"\n{owner}\
         [cutover]\nsweep_delay = 0\n",
        src.url(),
        dst.url()
    ));
}

/// A source as `source` makes it and an empty separate target database
/// (with a.cz's domain row), configured as a separate-database move.
fn separate(h: &Host, engine: Engine, per_user: usize) -> (TestDb, Vec<String>, TestDb) {
    let (src, hashes) = source(h, engine, per_user);
    let dst = TestDb::create(engine, "dst");
    dst.add_domain("a.cz");
    sql_config(h, &src, &dst, "newmail", "%d/%n");
    (src, hashes, dst)
}

fn assert_verifies(h: &Host) -> std::process::Output {
    let out = h.run(&["verify", "--domain", "a.cz"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// `run --json JOB` in the background (the report on a pipe).
fn spawn_run(h: &Host, job: &Path) -> std::process::Child {
    Command::new(BIN)
        .arg("--config")
        .arg(&h.config)
        .args(["run", "--json"])
        .arg(job)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn expect_code(h: &Host, job: &Path, code: i32) -> serde_json::Value {
    let (got, report) = h.run_job(job);
    assert_eq!(got, code, "{report:#}");
    report
}

#[test]
fn a_domain_moves_to_a_separate_database() {
    require!(Need::Dovecot, Need::Postgres, Need::Mariadb);
    for engine in ENGINES {
        let h = Host::new("");
        let (src, hashes, dst) = separate(&h, engine, 3);
        let others_before = src.mailboxes("b.cz");
        let a_before = src.mailboxes("a.cz");

        let job = h.job("j", r#"{"domain": "a.cz", "mode": "move"}"#);
        let report = expect_code(&h, &job, 0);
        assert_eq!(
            column(&report["mailboxes"], "status"),
            ["done"; 5],
            "{engine:?}"
        );

        let rows = dst.rows(
            "SELECT username, password, name, maildir, quota, local_part, domain, active FROM mailbox ORDER BY username",
        );
        assert_eq!(rows.len(), 5, "{engine:?} {rows:?}");
        for (i, (user, _, scheme, _)) in USERS.iter().enumerate() {
            let r = rows.iter().find(|r| r[0] == *user).unwrap();
            let (local, _) = user.split_once('@').unwrap();
            // Bare hashes gain the prefix that verifies them; prefixed stay.
            let want = if hashes[i].starts_with('{') {
                hashes[i].clone()
            } else {
                format!("{{{scheme}}}{}", hashes[i])
            };
            assert_eq!(r[1], want, "{engine:?} {user}");
            assert_eq!(r[2], format!("Name of {local}"));
            assert_eq!(r[3], format!("a.cz/{local}/Maildir/"));
            assert_eq!(r[4], (1024000 * i).to_string());
            assert_eq!((r[5].as_str(), r[6].as_str()), (local, "a.cz"));
            assert!(matches!(r[7].as_str(), "t" | "1"), "{r:?}");
            let md = h.new.join("a.cz").join(local).join("Maildir");
            assert_eq!(std::fs::read_dir(md.join("cur")).unwrap().count(), 3);
            assert_eq!(std::fs::read_dir(md.join(".Sent/cur")).unwrap().count(), 3);
        }
        // The old rows: login locked by the marker, everything else kept.
        let a_after = src.mailboxes("a.cz");
        for (before, after) in a_before.iter().zip(&a_after) {
            assert_eq!(after[1], format!("{{MAILDIR-MIGRATE-LOCKED}}{}", before[1]));
            let mut unlocked = after.clone();
            unlocked[1] = before[1].clone();
            assert_eq!(&unlocked, before, "{engine:?}: only the hash changes");
        }
        assert_eq!(
            src.mailboxes("b.cz"),
            others_before,
            "{engine:?}: b.cz untouched"
        );

        // Idempotent: nothing changes on a second run.
        let dst_before = dst.mailboxes("a.cz");
        let report = expect_code(&h, &job, 0);
        assert_eq!(
            column(&report["mailboxes"], "status"),
            ["already_migrated"; 5]
        );
        assert_eq!(dst.mailboxes("a.cz"), dst_before);
        assert_eq!(src.mailboxes("a.cz"), a_after);
        let out = assert_verifies(&h);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        for hash in &hashes {
            assert!(!text.contains(hash.as_str()), "no hash in verify output");
        }
    }
}

/// A source row, spelt as given, of a.cz with one message in its Maildir.
fn cased_row(h: &Host, db: &TestDb, user: &str, local: &str) {
    db.exec(&format!(
        "INSERT INTO mailbox (username, password, name, maildir, quota, local_part, domain) \
         VALUES ('{user}', '{}', 'Cased', 'a.cz/{local}/', 0, '{local}', 'a.cz')",
        stored("SHA512-CRYPT", "pw", false)
    ));
    Maildir(h.old.join("a.cz").join(local)).folder("").msg(
        "cur",
        &format!("1600000000.M1P1.{local}:2,S"),
        &body(user, 100),
        1_600_000_000,
    );
}

/// Case in usernames. A MariaDB source compares names case-insensitively:
/// a job naming `LOWER` finds the row `lower@a.cz`, and the account must be
/// written as the row spells it (the new Dovecot looks up the lower-cased
/// login). A row `Upper@A.CZ` of a.cz is never left out of the domain's
/// job; PostgreSQL compares case-sensitively, so Dovecot could never find
/// it there: that mailbox fails before anything is locked. MariaDB as the
/// target does find it, so there it moves as spelt.
#[test]
fn sql_usernames_keep_the_case_of_their_row() {
    require!(Need::Postgres, Need::Mariadb);
    let h = Host::new("");
    let (src, _) = source(&h, Engine::Mariadb, 0);
    cased_row(&h, &src, "lower@a.cz", "lower");
    cased_row(&h, &src, "Upper@A.CZ", "Upper");
    let dst = TestDb::create(Engine::Postgres, "dst");
    dst.add_domain("a.cz");
    sql_config(&h, &src, &dst, "newmail", "%d/%n");
    let job = h.job(
        "one",
        r#"{"domain": "a.cz", "mode": "move", "mailboxes": ["LOWER"]}"#,
    );
    let report = expect_code(&h, &job, 0);
    assert_eq!(report["mailboxes"][0]["user"], "lower@a.cz", "{report:#}");
    let rows = dst.rows("SELECT username, maildir FROM mailbox ORDER BY username");
    assert_eq!(rows, [["lower@a.cz", "a.cz/lower/Maildir/"]]);

    let upper_before = src.rows("SELECT password FROM mailbox WHERE username = 'Upper@A.CZ'");
    let job = h.job("all", r#"{"domain": "a.cz", "mode": "move"}"#);
    let report = expect_code(&h, &job, 1);
    let users = column(&report["mailboxes"], "user");
    assert!(users.contains(&"Upper@A.CZ"), "not left out: {users:?}");
    let upper = report["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "Upper@A.CZ")
        .unwrap();
    assert_eq!(upper["status"], "failed");
    assert!(
        upper["error"]
            .as_str()
            .unwrap()
            .contains("case-sensitively"),
        "{upper:#}"
    );
    assert_eq!(
        src.rows("SELECT password FROM mailbox WHERE username = 'Upper@A.CZ'"),
        upper_before,
        "nothing locked"
    );
    assert!(
        dst.rows("SELECT username FROM mailbox WHERE username = 'Upper@A.CZ'")
            .is_empty()
    );

    // The other way round: PostgreSQL source, MariaDB target.
    let h = Host::new("");
    let (src, _) = source(&h, Engine::Postgres, 0);
    cased_row(&h, &src, "Upper@A.CZ", "Upper");
    let dst = TestDb::create(Engine::Mariadb, "dst");
    dst.add_domain("a.cz");
    sql_config(&h, &src, &dst, "newmail", "%d/%n");
    let job = h.job("all", r#"{"domain": "a.cz", "mode": "move"}"#);
    let report = expect_code(&h, &job, 0);
    assert_eq!(report["totals"]["mailboxes"], 6, "{report:#}");
    let rows = dst.rows("SELECT username FROM mailbox WHERE local_part = 'Upper'");
    assert_eq!(rows, [["Upper@A.CZ"]]);
    assert!(h.new.join("a.cz/Upper/Maildir/cur").is_dir());
}

#[test]
fn one_database_is_updated_in_place() {
    require!(Need::Dovecot, Need::Postgres, Need::Mariadb);
    for engine in ENGINES {
        let h = Host::new("");
        let (db, _) = source(&h, engine, 2);
        sql_config(&h, &db, &db, "oldmail", "v2/%d/%n");
        let before = db.mailboxes("a.cz");
        let others_before = db.mailboxes("b.cz");
        let job = h.job("j", r#"{"domain": "a.cz", "mode": "move"}"#);
        expect_code(&h, &job, 0);
        let after = db.mailboxes("a.cz");
        for (b, a) in before.iter().zip(&after) {
            let local = &b[5];
            assert_eq!(
                a[1], b[1],
                "{engine:?}: the hash stays byte for byte, unlocked"
            );
            assert_eq!(a[3], format!("v2/a.cz/{local}/Maildir/"));
            assert_eq!(a[9], b[9], "active untouched");
            assert!(
                h.old
                    .join(format!("v2/a.cz/{local}/Maildir/.Sent/cur"))
                    .is_dir()
            );
        }
        assert_eq!(db.mailboxes("b.cz"), others_before);
        let report = expect_code(&h, &job, 0);
        assert_eq!(
            column(&report["mailboxes"], "status"),
            ["already_migrated"; 5]
        );
        assert_eq!(db.mailboxes("a.cz"), after);
    }
}

#[test]
fn a_killed_run_resumes_to_the_same_result() {
    require!(Need::Dovecot, Need::Postgres, Need::Mariadb);
    for engine in ENGINES {
        for in_place in [false, true] {
            killed_and_resumed(engine, in_place);
        }
    }
}

/// Kills a job (SIGKILL) as soon as its first mailbox switched, then runs
/// it again: every mailbox ends switched exactly once.
fn killed_and_resumed(engine: Engine, in_place: bool) {
    let h = Host::new("");
    let (src, _, dst) = separate(&h, engine, 1500);
    // Switched rows: new rows in the target, or rows moved to v2/ in place,
    // whose login is enabled (a staged one is still locked).
    let (db, written) = if in_place {
        sql_config(&h, &src, &src, "oldmail", "v2/%d/%n");
        (
            &src,
            "SELECT username FROM mailbox WHERE maildir LIKE 'v2/%'",
        )
    } else {
        (&dst, "SELECT username FROM mailbox WHERE true")
    };
    let switched_sql = &format!("{written} AND password NOT LIKE '{{MAILDIR-MIGRATE-LOCKED}}%'");
    let job = h.job("j", r#"{"domain": "a.cz", "mode": "move"}"#);
    let mut child = spawn_run(&h, &job);
    let started = Instant::now();
    while db.rows(switched_sql).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no mailbox switched"
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let switched = db.rows(switched_sql).len();
    let staged = db.rows(written).len() - switched;
    let mode = if in_place { "in place" } else { "separate" };
    assert!(
        switched < USERS.len(),
        "{engine:?} {mode}: the kill came too late ({switched})"
    );

    let report = expect_code(&h, &job, 0);
    let statuses = column(&report["mailboxes"], "status");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == "already_migrated")
            .count(),
        switched,
        "{engine:?} {mode}: {report:#}"
    );
    // A login killed between staging and enabling is enabled by the rerun.
    let resumed = report["mailboxes"]
        .to_string()
        .matches("stopped between staging")
        .count();
    assert_eq!(resumed, staged, "{engine:?} {mode}: {report:#}");
    assert_eq!(db.rows(switched_sql).len(), USERS.len());
    let locked =
        src.rows("SELECT count(*) FROM mailbox WHERE password LIKE '{MAILDIR-MIGRATE-LOCKED}%'");
    let want_locked = if in_place { 0 } else { USERS.len() };
    assert_eq!(locked[0][0], want_locked.to_string(), "{engine:?} {mode}");
    assert_verifies(&h);
}

fn sql_dovecot(dir: &Path, db: &TestDb, root: &Path, uid: u32) -> Dovecot {
    let (driver, connect) = db.dovecot_connect();
    Dovecot::start_with(
        dir,
        Auth::Sql {
            driver,
            connect,
            home: db.home_expr(root),
            uid,
        },
    )
}

fn login(dc: &Dovecot, user: &str, pw: &str) -> Result<ImapClient, String> {
    let mut c = ImapClient::connect(dc.port()).map_err(|e| e.to_string())?;
    c.login(user, pw)?;
    Ok(c)
}

#[test]
fn dovecot_with_its_sql_driver_serves_the_migrated_users() {
    require!(Need::Dovecot, Need::Postgres, Need::Mariadb);
    let uid = if dovecot::running_as_root() {
        5000
    } else {
        dovecot::current_uid_gid().0
    };
    for engine in ENGINES {
        let h = Host::new("");
        let (src, _) = source(&h, engine, 0);
        let dst = TestDb::create(engine, "dst");
        dst.add_domain("a.cz");
        // Mail processes (uid 5000) must get through the test directory.
        std::fs::set_permissions(&h.root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for p in [h.old.clone(), h.new.clone(), h.old.join("a.cz")] {
            common::scenario::owned_dir(&p, uid);
        }
        for (user, ..) in USERS {
            let (local, domain) = user.split_once('@').unwrap();
            common::scenario::owned_dir(&h.old.join(domain).join(local), uid);
        }
        // Fill the old store through the old Dovecot.
        let old = sql_dovecot(&h.root.join("old-dovecot"), &src, &h.old, uid);
        let mut before = Vec::new();
        for (i, (user, pw, ..)) in USERS.iter().enumerate() {
            let mut c =
                login(&old, user, pw).unwrap_or_else(|e| panic!("{engine:?} old {user}: {e}"));
            c.create("Sent").unwrap();
            for m in 0..4 {
                let flags: &[&str] = if m % 2 == 0 {
                    &["\\Seen"]
                } else {
                    &["\\Flagged", "$Label1"]
                };
                c.append(
                    "INBOX",
                    flags,
                    Some(&format!("0{}-Mar-2020 10:00:00 +0100", m + 1)),
                    &body(&format!("{user} {m}"), 500 + i * 10),
                )
                .unwrap();
            }
            c.append(
                "Sent",
                &["\\Seen"],
                Some("01-Apr-2021 08:00:00 +0000"),
                &body("sent", 400),
            )
            .unwrap();
            // A gap in the UIDs: expunged mail must not renumber.
            c.command("SELECT INBOX").unwrap();
            c.command("UID STORE 2 +FLAGS (\\Deleted)").unwrap();
            c.command("EXPUNGE").unwrap();
            before.push(c.snapshot());
        }
        drop(old);

        sql_config(&h, &src, &dst, "newmail", "%d/%n");
        let job = h.job("j", r#"{"domain": "a.cz", "mode": "move"}"#);
        expect_code(&h, &job, 0);

        let new = sql_dovecot(&h.root.join("new-dovecot"), &dst, &h.new, uid);
        let old = sql_dovecot(&h.root.join("old-dovecot2"), &src, &h.old, uid);
        for (i, (user, pw, ..)) in USERS.iter().enumerate() {
            let mut c =
                login(&new, user, pw).unwrap_or_else(|e| panic!("{engine:?} new {user}: {e}"));
            assert_snapshots_equal(&before[i], &c.snapshot());
            assert!(
                login(&old, user, pw).is_err(),
                "{engine:?}: the old login of {user} is refused"
            );
        }
        // The other domain still logs in on the old server.
        let (other, pw) = OTHERS[0];
        login(&old, other, pw).unwrap_or_else(|e| panic!("{engine:?} {other}: {e}"));
    }
}

/// A TCP relay in front of a database server that can cut every
/// connection passing through it at once.
struct Relay {
    port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// Connections cut while open.
    cuts: std::sync::atomic::AtomicUsize,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let kept = conns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut k = kept.lock().unwrap();
                    k.push(client.try_clone().unwrap());
                    k.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            port,
            conns,
            cuts: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            if s.shutdown(std::net::Shutdown::Both).is_ok() {
                self.cuts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// `url` with the server's port replaced by the relay's.
    fn url(&self, url: &str) -> String {
        url.replace(":5432/", &format!(":{}/", self.port))
            .replace(":3306/", &format!(":{}/", self.port))
    }
}

#[test]
fn connections_cut_mid_job_never_leave_two_logins() {
    require!(Need::Dovecot, Need::Postgres, Need::Mariadb);
    for engine in ENGINES {
        let h = Host::new("");
        let (src, _, dst) = separate(&h, engine, 200);
        let upstream = match engine {
            Engine::Postgres => 5432,
            Engine::Mariadb => 3306,
        };
        let (rs, rd) = (Relay::start(upstream), Relay::start(upstream));
        let cfg = std::fs::read_to_string(&h.config)
            .unwrap()
            .replace(&src.url(), &rs.url(&src.url()))
            .replace(&dst.url(), &rd.url(&dst.url()));
        h.write_config(&cfg);
        let others_before = src.mailboxes("b.cz");
        let job = h.job("j", r#"{"domain": "a.cz", "mode": "move"}"#);
        let mut failures = 0;
        for round in 0..4 {
            let mut child = spawn_run(&h, &job);
            let mut k = 0u64;
            while child.try_wait().unwrap().is_none() {
                // Pseudo-random cuts, closer together each round.
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407 + round);
                let gap = 1 + (k >> 58) * 40 / 63 / (round + 1);
                std::thread::sleep(Duration::from_millis(gap));
                rs.cut();
                rd.cut();
            }
            let out = child.wait_with_output().unwrap();
            if let Ok(report) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                failures += column(&report["mailboxes"], "status")
                    .iter()
                    .filter(|s| **s == "failed")
                    .count();
            }
            // Whatever was cut: never a working new row while the old login
            // works (a staged row, still locked, is no login; the next run
            // takes it up).
            let is_locked = |pw: &str| pw.starts_with("{MAILDIR-MIGRATE-LOCKED}");
            for (user, ..) in USERS {
                let query = format!("SELECT password FROM mailbox WHERE username = '{user}'");
                let new_works = dst.rows(&query).first().is_some_and(|r| !is_locked(&r[0]));
                let old_works = !is_locked(&src.rows(&query)[0][0]);
                assert!(
                    !(new_works && old_works),
                    "{engine:?} round {round}: {user} has two working logins"
                );
            }
        }
        let cuts = rs.cuts.load(std::sync::atomic::Ordering::Relaxed)
            + rd.cuts.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{engine:?}: {cuts} connection ends cut, {failures} mailbox failures");
        assert!(cuts > 0, "{engine:?}: the relay carried no connection");
        // Without cuts, a re-run completes everything exactly once.
        let report = expect_code(&h, &job, 0);
        assert!(
            column(&report["mailboxes"], "status")
                .iter()
                .all(|s| *s == "done" || *s == "already_migrated"),
            "{report:#}"
        );
        assert_eq!(dst.rows("SELECT username FROM mailbox").len(), USERS.len());
        assert_eq!(src.mailboxes("b.cz"), others_before);
        assert_verifies(&h);
    }
}
