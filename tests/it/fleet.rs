//! The PostgreSQL job queue shared by a fleet of daemons: real daemons of
//! the real binary as separate processes (distinct `[queue] host` names,
//! short leases) on one machine's PostgreSQL. Pools and the one-job-per-
//! domain rule, kill -9 of a daemon mid-job (another resumes it after the
//! lease), a PostgreSQL restart mid-job, malformed rows, the panel's role,
//! and cancel.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::daemon::{closed_port, spool_config};
use common::daemon::{DaemonProc, wait_until};
use common::dovecot::{self, Dovecot};
use common::fixture::{Host, run_with as bin};
use common::imap::assert_snapshots_equal;
use common::require::{Need, require};
use common::scenario::{ACCOUNTS, OLD_UID, Scenario, connect, message, owned_dir};
use common::smtp::SmtpSink;
use common::sqldb::{Engine, TestDb, pg_exclusive};

const S: &str = "maildir_migrate";
const LEASE_SECS: u64 = 6;
const JOB_TIMEOUT: Duration = Duration::from_secs(90);
/// Slow enough that a job of the scenario's domain (about 30 files) is
/// mid-job for several seconds.
const SLOW: &str = "[migration]\nmax_files_per_sec = 3\n";

/// One daemon's config next to `base` (so its relative paths hold): its
/// own spool, `[daemon]`/`[notify]` as the spool tests have them, and
/// `[queue]` with `host` and `pools`.
fn fleet_config(base: &Path, db: &TestDb, host: &str, pools: &[&str], smtp: &str) -> PathBuf {
    let dir = base.parent().unwrap();
    let path = dir.join(format!("config-{host}.toml"));
    let pools: Vec<String> = pools.iter().map(|p| format!("\"{p}\"")).collect();
    fs::write(
        &path,
        format!(
            "{}{}[queue]\nurl = \"{}\"\nhost = \"{host}\"\npools = [{}]\nlease_secs = {LEASE_SECS}\n",
            spool_config(&dir.join(format!("spool-{host}")), smtp, None),
            fs::read_to_string(base).unwrap(),
            db.url(),
            pools.join(", ")
        ),
    )
    .unwrap();
    path
}

fn queue_init(config: &Path, args: &[&str]) -> String {
    let out = bin(config, &[&["queue", "init"][..], args].concat());
    assert_eq!(out.status.code(), Some(0), "queue init: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start(config: &Path) -> DaemonProc {
    DaemonProc::start(config, &config.with_extension("log"))
}

/// `NULL` or a quoted SQL literal.
fn lit(v: Option<&str>) -> String {
    v.map_or("NULL".into(), |s| format!("'{}'", s.replace('\'', "''")))
}

/// Inserts a job as the panel does; returns its id.
fn insert(
    db: &TestDb,
    domain: &str,
    mode: &str,
    mailboxes: &[&str],
    pool: Option<&str>,
    notify: Option<&str>,
) -> i64 {
    let mbs = if mailboxes.is_empty() {
        "NULL".to_string()
    } else {
        let v: Vec<String> = mailboxes.iter().map(|m| lit(Some(*m))).collect();
        format!("ARRAY[{}]", v.join(","))
    };
    let rows = db.rows(&format!(
        "INSERT INTO {S}.jobs (domain, mode, mailboxes, notify, cutover, pool) \
         VALUES ({}, {}, {mbs}, {}, true, {}) RETURNING id",
        lit(Some(domain)),
        lit(Some(mode)),
        lit(notify),
        lit(pool)
    ));
    rows[0][0].parse().unwrap()
}

/// The scenario's domain as one job of pool `pa`, with its e-mail.
fn insert_example(db: &TestDb) -> i64 {
    insert(
        db,
        "example.cz",
        "move",
        &[],
        Some("pa"),
        Some("majitel@zakaznik.example"),
    )
}

/// The job's row as JSON (None while the database is unreachable).
fn try_job(db: &TestDb, id: i64) -> Option<serde_json::Value> {
    let out = db
        .try_as(
            "postgres",
            &format!("SELECT row_to_json(j) FROM {S}.jobs j WHERE id = {id}"),
        )
        .ok()?;
    serde_json::from_str(out.trim()).ok()
}

fn job(db: &TestDb, id: i64) -> serde_json::Value {
    try_job(db, id).unwrap_or_else(|| panic!("job {id} not readable"))
}

/// Waits until job `id` is in one of the finished states; returns its row.
fn wait_finished(db: &TestDb, id: i64, daemons: &[&DaemonProc]) -> serde_json::Value {
    let logs = || {
        daemons
            .iter()
            .map(|d| d.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(&format!("job {id} finished"), JOB_TIMEOUT, || {
            let j = try_job(db, id)?;
            ["done", "failed", "cancelled"]
                .contains(&j["state"].as_str()?)
                .then_some(j)
        })
    }));
    r.unwrap_or_else(|_| {
        panic!(
            "job {id} did not finish: {:#}\nevents: {:#?}\n{}",
            job(db, id),
            events(db),
            logs()
        )
    })
}

/// Waits until job `id` is running with at least one mailbox done.
fn wait_mid_job(db: &TestDb, id: i64) -> serde_json::Value {
    wait_until(&format!("job {id} mid-job"), JOB_TIMEOUT, || {
        let j = try_job(db, id)?;
        assert!(
            j["state"] == "queued" || j["state"] == "running",
            "job {id} finished before it could be interrupted: {j:#}"
        );
        (j["state"] == "running" && j["mailboxes_done"].as_i64()? > 0).then_some(j)
    })
}

#[derive(Debug, Clone)]
struct Event {
    job: i64,
    host: String,
    kind: String,
    mailbox: String,
    /// Seconds since the epoch, the database's clock.
    at: f64,
}

fn events(db: &TestDb) -> Vec<Event> {
    db.rows(&format!(
        "SELECT job_id, coalesce(host, ''), kind, coalesce(mailbox, ''), extract(epoch FROM at) \
         FROM {S}.events ORDER BY id"
    ))
    .into_iter()
    .map(|r| Event {
        job: r[0].parse().unwrap_or(-1),
        host: r[1].clone(),
        kind: r[2].clone(),
        mailbox: r[3].clone(),
        at: r[4].parse().unwrap(),
    })
    .collect()
}

fn kinds(evs: &[Event], id: i64, kind: &str) -> Vec<Event> {
    evs.iter()
        .filter(|e| e.job == id && e.kind == kind)
        .cloned()
        .collect()
}

/// No mailbox of any job is reported done twice.
fn assert_no_mailbox_done_twice(evs: &[Event]) {
    let mut seen = BTreeMap::new();
    for e in evs.iter().filter(|e| e.kind == "mailbox_done") {
        *seen.entry((e.job, e.mailbox.clone())).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "mailboxes done twice: {twice:?}\n{evs:#?}"
    );
}

/// Exactly one completion e-mail arrives, and no second one follows.
fn assert_one_mail(smtp: &SmtpSink) {
    smtp.wait_for(1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.received().len(), 1, "completion e-mails");
}

/// Extra domains on the scenario's old host: users added to its
/// passwd-file (in one write; Dovecot looks at the file at most once a
/// second, so the fill waits for the next second) and filled through the old Dovecot (a UID gap, a folder); returns
/// (user, password, snapshot) of each.
fn extra_domains(s: &Scenario, domains: &[&str], locals: &[&str]) -> Vec<Extra> {
    let users_old = s.dir.join("users.old");
    let mut text = fs::read_to_string(&users_old).unwrap();
    let mut out = Vec::new();
    for domain in domains {
        for local in locals {
            let user = format!("{local}@{domain}");
            let pass = format!("heslo {local} {domain}");
            let home = s.dir.join("oldmail").join(domain).join(local);
            owned_dir(home.parent().unwrap(), 0);
            owned_dir(&home, OLD_UID);
            let hash = dovecot::hash_password("SHA512-CRYPT", &pass);
            text.push_str(&dovecot::passwd_line(&user, &hash, OLD_UID, OLD_UID, &home));
            text.push('\n');
            out.push((user, pass));
        }
    }
    dovecot::write_passwd_file(&users_old, &text);
    std::thread::sleep(Duration::from_millis(1100));
    out.into_iter()
        .map(|(user, pass)| {
            let mut c = connect(&s.old);
            c.authenticate_plain(&user, &pass)
                .unwrap_or_else(|e| panic!("old login {user}: {e}\n{}", s.old.log()));
            c.create("Sent").unwrap();
            for i in 0..3 {
                let m = message(&format!("{user} {i}"), "ahoj");
                c.append("INBOX", &["\\Seen"], Some("01-Feb-2022 10:00:00 +0000"), &m)
                    .unwrap();
            }
            c.append("Sent", &[], None, &message("odesláno", "x"))
                .unwrap();
            c.select("INBOX");
            c.uid_store(2, "+FLAGS", &["\\Deleted"]).unwrap();
            c.expunge().unwrap();
            let snap = c.snapshot();
            c.logout().unwrap();
            (user, pass, snap)
        })
        .collect()
}

type Extra = (String, String, common::imap::AccountSnapshot);

/// A new Dovecot on the new userdb serves the extra users as the old one
/// did, with their original passwords; the old one refuses them.
fn check_extra(s: &Scenario, extra: &[Extra]) {
    let new = Dovecot::start(&s.dir.join("new-server-extra"), &s.users_new);
    for (user, pass, before) in extra {
        let mut c = connect(&new);
        c.authenticate_plain(user, pass)
            .unwrap_or_else(|e| panic!("new login {user}: {e}\n{}", new.log()));
        assert_snapshots_equal(before, &c.snapshot());
        let mut c = connect(&s.old);
        assert!(
            c.authenticate_plain(user, pass).is_err(),
            "old server still lets {user} in"
        );
    }
}

/// Ten jobs over six domains, in pools A and B and without a pool, on two
/// daemons: each runs once, on a daemon of its pool, jobs of one domain
/// one after another in submission order, and every account is served by
/// the new Dovecot as by the old one.
#[test]
fn two_daemons_share_the_queue_by_pool_one_job_per_domain_at_a_time() {
    require!(Need::Dovecot, Need::Postgres);
    let s = Scenario::prepare("mm-fleet-", "");
    let db = TestDb::create(Engine::Postgres, "fleet");
    let port = closed_port();
    let cfg_a = fleet_config(&s.config, &db, "store-a", &["pa"], &port);
    let cfg_b = fleet_config(&s.config, &db, "store-b", &["pb"], &port);
    let init = queue_init(&cfg_a, &[]);
    assert!(init.contains(S), "{init}");
    // Idempotent.
    queue_init(&cfg_b, &[]);
    let extra = extra_domains(
        &s,
        &["alfa.cz", "beta.cz", "gama.cz", "delta.cz", "epsilon.cz"],
        &["u1", "u2"],
    );
    let local = |i: usize| ACCOUNTS[i].0.split('@').next().unwrap();
    let jobs: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        ("example.cz", vec![local(0), local(1)], Some("pa")),
        ("example.cz", vec![local(2), local(3)], None),
        ("example.cz", vec![local(4), local(5)], Some("pb")),
        ("alfa.cz", vec![], Some("pa")),
        ("beta.cz", vec![], Some("pb")),
        ("gama.cz", vec!["u1"], None),
        ("gama.cz", vec!["u2"], Some("pa")),
        ("delta.cz", vec![], Some("pb")),
        ("epsilon.cz", vec!["u1"], Some("pa")),
        ("epsilon.cz", vec!["u2"], Some("pb")),
    ];
    // Queued before the daemons start, so both compete from the first claim.
    let ids: Vec<i64> = jobs
        .iter()
        .map(|(d, m, p)| insert(&db, d, "move", m, *p, None))
        .collect();
    let a = start(&cfg_a);
    let b = start(&cfg_b);
    let rows: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| wait_finished(&db, *id, &[&a, &b]))
        .collect();
    let evs = events(&db);
    let host_of = |pool: Option<&str>| match pool {
        Some("pa") => vec!["store-a"],
        Some("pb") => vec!["store-b"],
        _ => vec!["store-a", "store-b"],
    };
    for ((id, row), (_, _, pool)) in ids.iter().zip(&rows).zip(&jobs) {
        assert_eq!(
            row["state"],
            "done",
            "job {id}: {row:#}\n{}\n{}",
            a.log(),
            b.log()
        );
        let started = kinds(&evs, *id, "started");
        assert_eq!(started.len(), 1, "job {id} started once: {evs:#?}");
        assert!(
            kinds(&evs, *id, "resumed").is_empty(),
            "job {id} resumed: {evs:#?}"
        );
        assert_eq!(row["claims"], 1, "{row:#}");
        let owner = row["owner"].as_str().unwrap_or_default();
        assert!(
            host_of(*pool).contains(&owner),
            "job {id} of pool {pool:?} ran on {owner}"
        );
        assert_eq!(started[0].host, owner, "job {id}");
        assert_eq!(kinds(&evs, *id, "done").len(), 1, "job {id}: {evs:#?}");
    }
    assert!(
        rows.iter().any(|r| r["owner"] == "store-a")
            && rows.iter().any(|r| r["owner"] == "store-b"),
        "both daemons worked"
    );
    // Per domain: the intervals started..finished never overlap, in id order.
    let mut by_domain: BTreeMap<&str, Vec<(i64, f64, f64)>> = BTreeMap::new();
    for (id, (domain, _, _)) in ids.iter().zip(&jobs) {
        let start = kinds(&evs, *id, "started")[0].at;
        let end = evs
            .iter()
            .filter(|e| e.job == *id && ["done", "failed", "cancelled"].contains(&e.kind.as_str()))
            .map(|e| e.at)
            .next()
            .unwrap();
        by_domain
            .entry(*domain)
            .or_default()
            .push((*id, start, end));
    }
    for (domain, runs) in &by_domain {
        for w in runs.windows(2) {
            assert!(
                w[0].2 <= w[1].1,
                "{domain}: job {} ({}..{}) overlaps job {} ({}..{})",
                w[0].0,
                w[0].1,
                w[0].2,
                w[1].0,
                w[1].1,
                w[1].2
            );
        }
    }
    assert_no_mailbox_done_twice(&evs);
    let mailboxes: Vec<&serde_json::Value> = rows[..3]
        .iter()
        .flat_map(|r| r["report"]["report"]["mailboxes"].as_array().unwrap())
        .collect();
    s.check_reports(&mailboxes);
    s.check_servers();
    check_extra(&s, &extra);
}

/// Two daemons of one pool; the one running a job is killed with -9 mid-job.
/// After the lease the other resumes it: every message exactly once on the
/// new Dovecot, and exactly one completion e-mail.
#[test]
fn kill_9_of_a_daemon_mid_job_another_resumes_after_the_lease() {
    require!(Need::Dovecot, Need::Postgres);
    let smtp = SmtpSink::start();
    let s = Scenario::prepare("mm-fleet-kill-", SLOW);
    let db = TestDb::create(Engine::Postgres, "fleet");
    let cfg_a = fleet_config(&s.config, &db, "store-a", &["pa"], &smtp.addr());
    let cfg_b = fleet_config(&s.config, &db, "store-b", &["pa"], &smtp.addr());
    queue_init(&cfg_a, &[]);
    let mut daemons = BTreeMap::from([("store-a", start(&cfg_a)), ("store-b", start(&cfg_b))]);
    let id = insert_example(&db);
    let mid = wait_mid_job(&db, id);
    let first = mid["owner"].as_str().unwrap().to_string();
    let mut victim = daemons.remove(first.as_str()).unwrap();
    let killed_at: f64 = db.rows("SELECT extract(epoch FROM clock_timestamp())")[0][0]
        .parse()
        .unwrap();
    victim.signal(Signal::SIGKILL);
    let (code, _) = victim.wait_exit(Duration::from_secs(10));
    assert_eq!(code.code(), None, "killed by a signal");
    let other = daemons.values().next().unwrap();
    let row = wait_finished(&db, id, &[other, &victim]);
    assert_eq!(row["state"], "done", "{row:#}\n{}", other.log());
    let evs = events(&db);
    assert_ne!(
        row["owner"],
        first.as_str(),
        "the other daemon finished it: {row:#}"
    );
    assert_eq!(row["claims"], 2, "{row:#}");
    let resumed = kinds(&evs, id, "resumed");
    assert_eq!(resumed.len(), 1, "{evs:#?}");
    assert_ne!(resumed[0].host, first, "{evs:#?}");
    assert_eq!(kinds(&evs, id, "started").len(), 1, "{evs:#?}");
    // The resumer does not report the mailboxes done before it again.
    assert_no_mailbox_done_twice(&evs);
    // Not claimed again before the lease ran out (renewed every second).
    assert!(
        resumed[0].at - killed_at >= LEASE_SECS as f64 - 1.5,
        "resumed {} s after the kill: {evs:#?}",
        resumed[0].at - killed_at
    );
    s.check_servers();
    assert_one_mail(&smtp);
}

/// PostgreSQL restarted mid-job: the copy goes on, the job ends done, no
/// mailbox is reported twice, and exactly one e-mail is sent.
#[test]
fn a_postgresql_restart_mid_job_is_survived() {
    require!(Need::Root, Need::Dovecot, Need::Postgres);
    let version = fs::read_dir("/etc/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
    });
    let Some(version) = version else {
        common::require::skip("needs a Debian PostgreSQL cluster (/etc/postgresql/<version>/main)");
        return;
    };
    let smtp = SmtpSink::start();
    let s = Scenario::prepare("mm-fleet-pg-", SLOW);
    // No other test uses the server from here on.
    let gate = pg_exclusive();
    let db = gate.create("fleet");
    let cfg = fleet_config(&s.config, &db, "store-a", &[], &smtp.addr());
    queue_init(&cfg, &[]);
    let d = start(&cfg);
    let id = insert(
        &db,
        "example.cz",
        "move",
        &[],
        None,
        Some("majitel@zakaznik.example"),
    );
    let postmaster_start = || {
        db.try_as("postgres", "SELECT pg_postmaster_start_time()")
            .ok()
    };
    let before = postmaster_start().unwrap();
    wait_mid_job(&db, id);
    let out = Command::new("pg_ctlcluster")
        .args([version.as_str(), "main", "restart"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_ctlcluster restart: {out:?}");
    let after = wait_until("PostgreSQL back", Duration::from_secs(30), postmaster_start);
    assert_ne!(before, after, "the server restarted");
    assert_eq!(job(&db, id)["state"], "running", "the restart came mid-job");
    let row = wait_finished(&db, id, &[&d]);
    assert_eq!(row["state"], "done", "{row:#}\n{}", d.log());
    let evs = events(&db);
    assert_no_mailbox_done_twice(&evs);
    assert_eq!(kinds(&evs, id, "done").len(), 1, "{evs:#?}");
    s.check_servers();
    assert_one_mail(&smtp);
    wait_until("notification_state sent", Duration::from_secs(20), || {
        (job(&db, id)["notification_state"] == "sent").then_some(())
    });
}

/// Rows the panel got wrong are failed with the reason and event
/// `rejected`; a good job after them is done.
#[test]
fn malformed_rows_are_rejected_and_the_daemon_goes_on() {
    require!(Need::Postgres);
    let h = Host::new("");
    h.add_user("jan@a.cz", "{PLAIN}x", "").folder("").msg(
        "cur",
        "1600000000.M1P1.h:2,S",
        b"Subject: hi\n\nhi\n",
        1_600_000_000,
    );
    let db = TestDb::create(Engine::Postgres, "fleet");
    let cfg = fleet_config(&h.config, &db, "store-a", &[], &closed_port());
    queue_init(&cfg, &[]);
    let d = start(&cfg);
    let bad = [
        insert(&db, "ex ample..com", "move", &[], None, None),
        insert(&db, "a.cz", "teleport", &[], None, None),
        insert(&db, "a.cz", "move", &["../etc"], None, None),
    ];
    let out = bin(&cfg, &["submit", "--domain", "a.cz", "--mode", "move"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let good: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("submit prints only the id ({e}): {out:?}"));
    let evs_of = |id| kinds(&events(&db), id, "rejected");
    for id in bad {
        let row = wait_finished(&db, id, &[&d]);
        assert_eq!(row["state"], "failed", "{row:#}");
        assert!(
            !row["error"].as_str().unwrap_or_default().is_empty(),
            "{row:#}"
        );
        assert_eq!(evs_of(id).len(), 1, "{:#?}", events(&db));
    }
    let row = wait_finished(&db, good, &[&d]);
    assert_eq!(row["state"], "done", "{row:#}\n{}", d.log());
    assert!(h.target_maildir("jan@a.cz").join("cur").exists());
    // status --json lists them.
    let out = bin(&cfg, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = st.to_string();
    assert!(
        text.contains("teleport") || text.contains(&bad[1].to_string()),
        "{st:#}"
    );
}

/// The panel's role inserts, reads and cancels, and can never update a
/// row; the daemon's role updates rows but cannot change the schema.
#[test]
fn the_panel_role_inserts_reads_and_cancels_but_never_updates() {
    require!(Need::Postgres);
    let h = Host::new("");
    let db = TestDb::create(Engine::Postgres, "fleet");
    let (daemon_role, panel) = (db.create_role("daemon"), db.create_role("panel"));
    let cfg = fleet_config(&h.config, &db, "store-a", &[], &closed_port());
    queue_init(
        &cfg,
        &["--daemon-role", &daemon_role, "--panel-role", &panel],
    );
    let sqlstate = |r: Result<String, String>| match r {
        Ok(out) => panic!("allowed: {out}"),
        Err(e) => e,
    };
    let id: i64 = db
        .try_as(
            &panel,
            &format!(
                "INSERT INTO {S}.jobs (domain, mode, mailboxes, notify, cutover, pool) \
                 VALUES ('example.cz', 'move', ARRAY['jan'], 'a@b.cz', true, 'pa') RETURNING id"
            ),
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let seen = db
        .try_as(
            &panel,
            &format!("SELECT state FROM {S}.jobs WHERE id = {id}"),
        )
        .unwrap();
    assert_eq!(seen.trim(), "queued");
    db.try_as(&panel, &format!("SELECT count(*) FROM {S}.events"))
        .unwrap();
    // Any row, queued or running.
    for sql in [
        format!("UPDATE {S}.jobs SET pool = 'pb' WHERE id = {id}"),
        format!("UPDATE {S}.jobs SET state = 'cancelled'"),
    ] {
        let e = sqlstate(db.try_as(&panel, &sql));
        assert!(e.contains("42501"), "{sql}: {e}");
    }
    let running = insert(&db, "b.cz", "move", &[], None, None);
    db.exec(&format!(
        "UPDATE {S}.jobs SET state = 'running', owner = 'store-x', started_at = now(), \
         lease_until = now() + interval '1 hour' WHERE id = {running}"
    ));
    for sql in [
        format!("UPDATE {S}.jobs SET state = 'queued', owner = NULL WHERE id = {running}"),
        format!("DELETE FROM {S}.jobs WHERE id = {running}"),
        format!("INSERT INTO {S}.jobs (domain, mode, state) VALUES ('c.cz', 'move', 'done')"),
        format!("INSERT INTO {S}.events (job_id, kind) VALUES ({running}, 'done')"),
    ] {
        let e = sqlstate(db.try_as(&panel, &sql));
        assert!(e.contains("42501"), "{sql}: {e}");
    }
    let r = db
        .try_as(&panel, &format!("SELECT {S}.cancel({id})"))
        .unwrap();
    assert_eq!(r.trim(), "cancelled");
    assert_eq!(job(&db, id)["state"], "cancelled");
    let r = db
        .try_as(&panel, &format!("SELECT {S}.cancel({running})"))
        .unwrap();
    assert_eq!(r.trim(), "requested");
    assert_eq!(job(&db, running)["cancel_requested"], true);
    let r = db
        .try_as(&panel, &format!("SELECT {S}.cancel(987654321)"))
        .unwrap();
    assert_eq!(r.trim(), "not found");
    // The daemon's role: rows yes, schema no.
    db.try_as(
        &daemon_role,
        &format!("UPDATE {S}.jobs SET phase = phase WHERE id = {running}"),
    )
    .unwrap();
    db.try_as(
        &daemon_role,
        &format!("SELECT version FROM {S}.schema_version"),
    )
    .unwrap();
    let e = sqlstate(db.try_as(&daemon_role, &format!("CREATE TABLE {S}.x (i int)")));
    assert!(e.contains("42501"), "{e}");
}

/// `cancel` of a queued job ends it at once; of a running one, stops it at
/// its current mailbox, which gets its old login back.
#[test]
fn cancel_ends_a_queued_job_at_once_and_stops_a_running_one() {
    require!(Need::Dovecot, Need::Postgres);
    let s = Scenario::prepare("mm-fleet-cancel-", SLOW);
    let db = TestDb::create(Engine::Postgres, "fleet");
    let cfg = fleet_config(&s.config, &db, "store-a", &["pa"], &closed_port());
    queue_init(&cfg, &[]);
    let d = start(&cfg);
    // Queued: a pool nobody serves.
    let queued = insert(&db, "example.cz", "move", &[], Some("nobody"), None);
    let out = bin(&cfg, &["cancel", &queued.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(job(&db, queued)["state"], "cancelled");
    assert_eq!(
        bin(&cfg, &["cancel", &queued.to_string()]).status.code(),
        Some(65)
    );
    assert_eq!(bin(&cfg, &["cancel", "987654321"]).status.code(), Some(66));

    let id = insert(&db, "example.cz", "move", &[], None, None);
    let mid = wait_mid_job(&db, id);
    let out = bin(&cfg, &["cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let row = wait_finished(&db, id, &[&d]);
    assert_eq!(row["state"], "cancelled", "{row:#}\n{}", d.log());
    let evs = events(&db);
    assert_no_mailbox_done_twice(&evs);
    let done: Vec<String> = kinds(&evs, id, "mailbox_done")
        .into_iter()
        .map(|e| e.mailbox)
        .collect();
    assert!(
        !done.is_empty() && done.len() < ACCOUNTS.len(),
        "{mid:#}\n{evs:#?}"
    );
    // The panel's progress counts what was done, not what was stopped.
    assert_eq!(row["mailboxes_done"], done.len() as i64, "{row:#}");
    assert_eq!(row["mailboxes_failed"], 1, "the interrupted one: {row:#}");
    // Each account is served by one side: done ones by the new server
    // only, the others (the one in progress among them) by the old one.
    let is_done = |user: &str| {
        let local = user.split('@').next().unwrap();
        done.iter().any(|m| m == user || m == local)
    };
    for &(user, pass, _, _) in ACCOUNTS {
        let mut c = connect(&s.old);
        let old_ok = c.authenticate_plain(user, pass).is_ok();
        assert_eq!(
            old_ok,
            !is_done(user),
            "{user}: old login works = {old_ok}; done: {done:?}"
        );
    }
    // The daemon sees the request at its next tick (a second): the
    // mailbox in progress is the one it was working on then, the row's
    // last current_mailbox, which the report shows interrupted.
    let in_progress = row["current_mailbox"]
        .as_str()
        .unwrap_or_else(|| panic!("no current_mailbox: {row:#}"))
        .to_string();
    // A stopped job has no engine report; its mailboxes' results are in
    // the checkpoint.
    let reported = [
        &row["report"]["report"]["mailboxes"],
        &row["checkpoint"]["finished"],
    ]
    .into_iter()
    .filter_map(|m| m.as_array())
    .flatten()
    .find(|m| m["user"] == in_progress.as_str())
    .unwrap_or_else(|| panic!("{in_progress} not in the report: {row:#}"));
    assert_ne!(reported["status"], "done", "{reported:#}");
    let user = ACCOUNTS
        .iter()
        .find(|a| a.0 == in_progress || a.0.split('@').next() == Some(in_progress.as_str()))
        .unwrap_or_else(|| panic!("current_mailbox {in_progress}"));
    assert!(
        !is_done(user.0),
        "the mailbox in progress {in_progress} was finished: {done:?}\n{row:#}\n{evs:#?}"
    );
    let new_users = fs::read_to_string(&s.users_new).unwrap_or_default();
    assert!(!new_users.contains(&format!("{}:", user.0)), "{new_users}");
}

/// A TCP relay to PostgreSQL that can freeze: while frozen it forwards
/// nothing and closes nothing, as a network that drops packets does (the
/// kernel still acknowledges what is sent, so only the daemon's own
/// clock can tell that its lease is in doubt).
struct Relay {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        use std::io::{ErrorKind, Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pump = |mut from: TcpStream, mut to: TcpStream, frozen: std::sync::Arc<_>| {
            move || {
                let frozen: &std::sync::atomic::AtomicBool = &frozen;
                from.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let mut buf = [0u8; 16384];
                loop {
                    if frozen.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    match from.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            }
        };
        let f = std::sync::Arc::clone(&frozen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(pump(client, server, std::sync::Arc::clone(&f)));
                std::thread::spawn(pump(s2, c2, std::sync::Arc::clone(&f)));
            }
        });
        Relay { port, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// When the daemon logged a line containing `what`, in seconds since the
/// epoch (the log's UTC timestamp, read by PostgreSQL).
fn logged_at(db: &TestDb, log: &str, what: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let stamp = line.split_whitespace().next()?;
    db.rows(&format!(
        "SELECT extract(epoch FROM '{}'::timestamptz)",
        stamp.replace('\'', "")
    ))[0][0]
        .parse()
        .ok()
}

/// The database stops answering one daemon without closing anything: its
/// renewals hang, yet it stops the job (the current mailbox gets its old
/// login back) before its lease runs out, and only then may the other
/// daemon resume it — two daemons never work on one domain.
#[test]
fn a_daemon_cut_off_from_the_database_stops_before_its_lease_runs_out() {
    require!(Need::Dovecot, Need::Postgres);
    let smtp = SmtpSink::start();
    // Slower still: its first mailbox (14 messages) outlasts the lease.
    let s = Scenario::prepare("mm-fleet-cut-", "[migration]\nmax_files_per_sec = 1\n");
    let db = TestDb::create(Engine::Postgres, "fleet");
    let relay = Relay::start(5432);
    let cfg_a = fleet_config(&s.config, &db, "store-a", &["pa"], &smtp.addr());
    let text = fs::read_to_string(&cfg_a).unwrap();
    let relayed = text.replace(":5432/", &format!(":{}/", relay.port));
    assert_ne!(text, relayed);
    fs::write(&cfg_a, relayed).unwrap();
    let cfg_b = fleet_config(&s.config, &db, "store-b", &["pa"], &smtp.addr());
    queue_init(&cfg_b, &[]);
    let a = start(&cfg_a);
    let id = insert_example(&db);
    let mid = wait_until("copying", JOB_TIMEOUT, || {
        let j = try_job(&db, id)?;
        (j["state"] == "running" && j["messages"].as_i64()? > 0).then_some(j)
    });
    assert_eq!(mid["owner"], "store-a", "{mid:#}");
    relay.freeze(true);
    let b = start(&cfg_b);
    let row = wait_finished(&db, id, &[&a, &b]);
    assert_eq!(row["state"], "done", "{row:#}\n{}", b.log());
    assert_eq!(
        (&row["owner"], &row["claims"]),
        (&"store-b".into(), &2.into()),
        "{row:#}"
    );
    let resumed = kinds(&events(&db), id, "resumed");
    assert_eq!(resumed.len(), 1);
    let log = a.log();
    let stopping = logged_at(&db, &log, "stopping it before it runs out")
        .unwrap_or_else(|| panic!("store-a never stopped the job:\n{log}"));
    let stopped = logged_at(&db, &log, "queue job stopped")
        .unwrap_or_else(|| panic!("store-a's job never ended:\n{log}"));
    assert!(
        stopping <= stopped && stopped < resumed[0].at,
        "store-a stopped at {stopping}, let go at {stopped}; store-b resumed at {}\n{log}",
        resumed[0].at
    );
    relay.freeze(false);
    s.check_servers();
    assert_one_mail(&smtp);
}
