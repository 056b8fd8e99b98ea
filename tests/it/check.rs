//! `check`, the preflight: the real binary on the demo host (every line OK
//! or WARN, exit 0), on a host with one broken part per check (FAIL lines
//! naming each, exit 1), with no configuration (exit 78), against real
//! PostgreSQL schemas; and it never changes a file. The daemon logs the
//! same lines when it starts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::daemon::{DaemonProc, wait_until};
use crate::common::fixture::{BIN, Host, tree};
use crate::common::require::{Need, require};
use crate::common::sqldb::{Engine, TestDb};

fn check(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("check")
        .args(args)
        .env("MAILDIR_MIGRATE_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `--json` lines as (status, check, found).
fn lines(out: &Output) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(out)));
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("check"), s("found"))
        })
        .collect()
}

fn status_of<'a>(lines: &'a [(String, String, String)], check: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|l| l.1 == check)
        .map(|l| l.0.as_str())
        .collect()
}

/// Dovecot's auth user must reach the userdbs: the temporary directories
/// are 0700.
fn open_up(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_demo_host_checks_out_and_nothing_changes() {
    let t = tempfile::Builder::new()
        .prefix("mm-check-demo-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    open_up(t.path());
    let dir = t.path().join("demo");
    let demo = Command::new(BIN)
        .args(["demo", "--dir"])
        .arg(&dir)
        .env("MAILDIR_MIGRATE_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(demo.status.code(), Some(0), "{}", text(&demo));
    let config = dir.join("config.toml");
    let before = tree(&dir);

    let out = check(&config, &["--domain", "novak-stavby.cz"]);
    let shown = text(&out);
    println!("{shown}");
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for (status, check, says) in [
        ("OK", "config", ""),
        ("OK", "source.userdb", ""),
        ("OK", "target.userdb", ""),
        ("OK", "source.mail_root", ""),
        ("OK", "target.mail_root", ""),
        ("OK", "copy", "O_TMPFILE works in"),
        (
            "OK",
            "target.free_space",
            "domain novak-stavby.cz has 0 B still to copy",
        ),
        ("OK", "target.uid", "unset"),
        ("WARN", "cutover.freeze_command", "unset"),
        ("OK", "notify", "e-mails are written to"),
        ("OK", "spool", ""),
    ] {
        let want = format!("{status:<4}  {check:<22}  {says}");
        assert!(
            shown.lines().any(|l| l.starts_with(&want)),
            "{want}:\n{shown}"
        );
    }
    assert!(!shown.contains("FAIL"), "{shown}");

    let json = check(&config, &["--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", text(&json));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["status"], "WARN", "{v}");
    let l = lines(&json);
    assert_eq!(status_of(&l, "cutover.freeze_command"), ["WARN"]);
    assert!(v["checks"][0]["fix"].is_null(), "{v}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| (c["status"] == "OK") == c["fix"].is_null()),
        "{v}"
    );
    assert_eq!(before, tree(&dir), "check changed the demo host");
}

/// One broken part per check; each FAIL names its problem, and nothing
/// on the host changes.
#[test]
fn each_broken_part_is_a_fail_line_naming_it() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let h = Host::new("");
    open_up(&h.root);
    let kick = h.root.join("kick");
    std::fs::write(&kick, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&kick, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spool = h.root.join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(&h.users_new, "").unwrap();
    std::fs::set_permissions(&h.users_new, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_dir(&h.new).unwrap();
    h.write_config(&format!(
        "spool_dir = \"spool\"\n\
         [source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n\
         [target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\n\
         [cutover]\nfreeze_command = [\"{}\", \"%u\"]\n\
         [notify]\nsmtp = \"127.0.0.1:{port}\"\ntimeout_secs = 5\n",
        kick.display()
    ));
    let before = tree(&h.root);

    let out = check(&h.config, &[]);
    let shown = text(&out);
    println!("{shown}");
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let fail = |check: &str, says: &str| {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(&format!("FAIL  {check:<22}  ")) && l.contains(says)),
            "FAIL {check} … {says}:\n{shown}"
        );
    };
    fail("target.mail_root", "newmail: No such file or directory");
    fail("cutover.freeze_command", "kick: EACCES: Permission denied");
    fail("notify", &format!("127.0.0.1:{port}"));
    fail("spool", "world-writable");
    assert!(shown.contains("fix: create it (mkdir -p"), "{shown}");
    assert!(shown.contains("fix: chmod g-w,o-w"), "{shown}");
    if crate::common::require::available(Need::Dovecot) {
        fail("target.userdb", "users.new cannot be read by dovecot");
    }
    let json = check(&h.config, &["--json"]);
    assert_eq!(json.status.code(), Some(1));
    let l = lines(&json);
    assert_eq!(status_of(&l, "target.mail_root"), ["FAIL"]);
    assert_eq!(status_of(&l, "source.mail_root"), ["OK"]);
    assert_eq!(before, tree(&h.root), "check changed the host");
}

#[test]
fn no_usable_configuration_exits_78() {
    let h = Host::new("");
    let missing = h.root.join("nothing.toml");
    let out = check(&missing, &[]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).starts_with(&format!("FAIL  {:<22}  ", "config"))
            && text(&out).contains("nothing.toml"),
        "{}",
        text(&out)
    );
    h.write_config("[source]\nuserdb = 5\n");
    let out = check(&h.config, &["--json"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert_eq!(status_of(&lines(&out), "config"), ["FAIL"]);
}

/// The SQL userdb's statements are prepared on the real server: the
/// PostfixAdmin schema passes, a query naming a column the table lacks
/// fails with the server's words, and one without a `maildir` column fails
/// naming it. Nothing is written to the database. PostgreSQL and MariaDB.
#[test]
fn sql_queries_are_prepared_against_the_real_schema() {
    require!(Need::Postgres);
    sql_queries_are_prepared(Engine::Postgres);
}

#[test]
fn sql_queries_are_prepared_against_the_real_schema_on_mariadb() {
    require!(Need::Mariadb);
    sql_queries_are_prepared(Engine::Mariadb);
}

fn sql_queries_are_prepared(engine: Engine) {
    let db = TestDb::create(engine, "check");
    db.add_domain("example.cz");
    db.add_mailbox("jan@example.cz", "{CRYPT}x", 0);
    let rows = db.mailboxes("example.cz");
    let h = Host::new("");
    let (uid, gid) = crate::common::dovecot::current_uid_gid();
    let config = |queries: &str| {
        format!(
            "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n\
             [target]\nuserdb = \"{}\"\nuserdb_format = \"sql\"\nmail_root = \"newmail\"\nuid = {}\ngid = {}\n{queries}",
            db.url(),
            uid.max(1),
            gid.max(1)
        )
    };
    h.write_config(&config(""));
    let l = lines(&check(&h.config, &["--json"]));
    assert_eq!(status_of(&l, "target.userdb"), ["OK"], "{l:?}");

    let custom = |user_query: &str| {
        format!(
            "schema = \"custom\"\n[target.queries]\n\
             list_query = \"SELECT username FROM mailbox WHERE domain = %{{domain}}\"\n\
             user_query = \"{user_query}\"\n\
             insert_query = \"INSERT INTO mailbox (username, password, maildir) VALUES (%{{username}}, %{{password}}, %{{maildir}})\"\n\
             update_location_query = \"UPDATE mailbox SET maildir = %{{maildir}}, password = %{{password}} WHERE username = %{{username}} AND maildir = %{{old_maildir}} AND password = %{{old_password}}\"\n\
             update_password_query = \"UPDATE mailbox SET password = %{{password}} WHERE username = %{{username}} AND password = %{{old_password}}\"\n"
        )
    };
    for (user_query, says) in [
        (
            "SELECT username, password, maildir, nosuchcol FROM mailbox WHERE username = %{username}",
            "nosuchcol",
        ),
        (
            "SELECT username, password FROM mailbox WHERE username = %{username}",
            "returns no maildir column",
        ),
    ] {
        h.write_config(&config(&custom(user_query)));
        let out = check(&h.config, &[]);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(
            shown.lines().any(|l| l.starts_with("FAIL  target.userdb")
                && l.contains(says)
                && l.contains("user_query")),
            "{says}:\n{shown}"
        );
    }
    assert_eq!(
        rows,
        db.mailboxes("example.cz"),
        "check wrote to the database"
    );
}

/// The daemon logs the same lines when it starts, and keeps running.
#[test]
fn the_daemon_logs_the_checks_at_start() {
    let h = Host::new("");
    let config = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&format!("spool_dir = \"spool\"\n{config}"));
    let log = h.root.join("daemon.log");
    let mut d = DaemonProc::start(&h.config, &log);
    wait_until("the check lines", Duration::from_secs(20), || {
        d.log().contains("check WARN: unset").then_some(())
    });
    let text = d.log();
    assert!(
        text.contains("check OK: ") && text.contains("loads"),
        "{text}"
    );
    assert!(text.contains("cutover.freeze_command"), "{text}");
    d.stop();
}

/// A host whose e-mails go to its outbox, with jan@example.cz holding
/// one message of `size` bytes.
fn host_with_one_message(size: usize) -> Host {
    let h = Host::new("[notify]\noutbox_dir = \"outbox\"\n");
    std::fs::create_dir(h.root.join("outbox")).unwrap();
    let md = h.add_user("jan@example.cz", "{PLAIN}x", "");
    md.folder("").msg(
        "cur",
        "1.a:2,S",
        &crate::common::fixture::body("one", size),
        1_700_000_000,
    );
    h
}

/// With `--domain`, the room on the target is compared with what `plan`
/// would still copy of that domain.
#[test]
fn free_space_is_weighed_against_what_is_still_to_copy() {
    let h = host_with_one_message(3000);
    let out = check(&h.config, &["--domain", "example.cz", "--json"]);
    let l = lines(&out);
    let space: Vec<_> = l.iter().filter(|l| l.1 == "target.free_space").collect();
    assert_eq!(space.len(), 1, "{l:?}");
    assert_eq!(space[0].0, "OK", "{l:?}");
    assert!(
        space[0]
            .2
            .starts_with("domain example.cz has 2.9 KiB still to copy"),
        "{l:?}"
    );
    let without = lines(&check(&h.config, &["--json"]));
    assert!(status_of(&without, "target.free_space").is_empty());
}

/// With `--domain`, a mailbox that `plan` says would fail is a FAIL line,
/// not an OK that counts it as nothing to copy.
#[test]
fn a_domain_whose_mailboxes_would_fail_is_a_fail() {
    let h = Host::new("[notify]\noutbox_dir = \"outbox\"\n");
    std::fs::create_dir(h.root.join("outbox")).unwrap();
    h.add_user("jan@example.cz", "{PLAIN}x", "");
    // A uid that is neither a number nor a user of this host.
    let old = std::fs::read_to_string(&h.users_old).unwrap();
    std::fs::write(
        &h.users_old,
        old.replace(":1000:1000:", ":nosuchuser:1000:"),
    )
    .unwrap();
    let out = check(&h.config, &["--domain", "example.cz", "--json"]);
    let l = lines(&out);
    assert_eq!(status_of(&l, "domain.plan"), ["FAIL"], "{l:?}");
    let found = &l.iter().find(|l| l.1 == "domain.plan").unwrap().2;
    assert!(
        found.contains("1 of 1 mailboxes") && found.contains("jan@example.cz"),
        "{found}"
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// With `--domain`, a target with less room than the domain still needs
/// is a FAIL naming both figures.
#[test]
fn too_little_room_on_the_target_is_a_fail() {
    let h = host_with_one_message(200_000);
    let Some(_fs) = crate::enospc::Tmpfs::mount(&h.new, "64k") else {
        crate::common::require::skip("needs to mount a tmpfs (root)");
        return;
    };
    let out = check(&h.config, &["--domain", "example.cz", "--json"]);
    let l = lines(&out);
    assert_eq!(status_of(&l, "target.free_space"), ["FAIL"], "{l:?}");
    let found = &l.iter().find(|l| l.1 == "target.free_space").unwrap().2;
    assert!(found.contains("still to copy, only"), "{found}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// With `[queue]`: the database answers and its schema is this build's;
/// before `queue init` the line fails and says to run it.
#[test]
fn the_queue_line_wants_an_initialised_schema() {
    require!(Need::Postgres);
    let db = TestDb::create(Engine::Postgres, "checkq");
    let h = Host::new("");
    h.write_config(&format!(
        "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n\
         [target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\n\
         [queue]\nurl = \"{}\"\nhost = \"store-1\"\n",
        db.url()
    ));
    let out = check(&h.config, &[]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.lines().any(|l| l.starts_with("FAIL  queue") && l.contains("version 0")),
        "{shown}"
    );
    assert!(shown.contains("run `maildir-migrate queue init`"), "{shown}");
    let init = Command::new(BIN)
        .arg("--config")
        .arg(&h.config)
        .args(["queue", "init"])
        .output()
        .unwrap();
    assert_eq!(init.status.code(), Some(0), "{}", text(&init));
    let l = lines(&check(&h.config, &["--json"]));
    assert_eq!(status_of(&l, "queue"), ["OK"], "{l:?}");
}
