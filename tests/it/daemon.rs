//! The daemon, run as the real binary on a temporary spool: jobs dropped
//! by hand and by `submit`, refused job files, stop and crash in the
//! middle of a large job, one daemon per spool, SIGHUP, and the completion
//! e-mail over a real SMTP dialogue.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use common::daemon::{DaemonProc, drop_job, drop_job_with, record, wait_until};
use common::fixture::{BIN, Host, body, tree};
use common::require::{Need, require};
use common::scenario::{ACCOUNTS, Scenario};
use common::smtp::{SmtpSink, parse_message};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Top-level and `[daemon]`/`[notify]` settings; `daemon` replaces the
/// default `[daemon]` keys (a 1 s rescan).
pub(crate) fn spool_config(spool: &Path, smtp: &str, daemon: Option<&str>) -> String {
    format!(
        "spool_dir = \"{}\"\n[daemon]\n{}\n\
         [notify]\nsmtp = \"{smtp}\"\nfrom = \"migrace@hosting.example\"\nretries = 1\nretry_delay_secs = 1\ntimeout_secs = 5\n\
         [cutover]\nsweep_delay = 0\n",
        spool.display(),
        daemon.unwrap_or("rescan_interval = 1")
    )
}

/// The config file of a `Host` with `extra` put in front (top-level keys
/// must come before the first table).
pub(crate) fn prepend_config(config: &Path, extra: &str) {
    let text = fs::read_to_string(config).unwrap();
    fs::write(config, format!("{extra}{text}")).unwrap();
}

fn submit(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("submit")
        .args(args)
        .output()
        .unwrap()
}

fn status_json(config: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits for `<place>/<id>.report.json` and returns the record.
fn wait_record(spool: &Path, place: &str, id: &str, d: &DaemonProc) -> serde_json::Value {
    let path = spool.join(place).join(format!("{id}.report.json"));
    wait_until(
        &format!("{} ({})", path.display(), d.log()),
        JOB_TIMEOUT,
        || path.exists().then_some(()),
    );
    record(&path)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The whole product path: jobs reach done/, the new Dovecot serves every
/// account with the original password and identical UIDs, flags and
/// dates, and the customer gets the bilingual e-mail over real SMTP.
#[test]
fn daemon_migrates_and_notifies() {
    require!(Need::Dovecot);
    let smtp = SmtpSink::start();
    let s = Scenario::prepare("mm-daemon-", "");
    let spool_dir = s.dir.join("spool");
    prepend_config(&s.config, &spool_config(&spool_dir, &smtp.addr(), None));
    let log = s.dir.join("daemon.log");
    let mut d = DaemonProc::start(&s.config, &log);
    for place in ["incoming", "active", "done", "failed"] {
        let m = fs::metadata(spool_dir.join(place)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750, "{place}");
    }

    // Half the domain by a job file dropped by hand, half by `submit`.
    let locals = |r: std::ops::Range<usize>| -> Vec<String> {
        ACCOUNTS[r]
            .iter()
            .map(|a| format!("\"{}\"", a.0.split('@').next().unwrap()))
            .collect()
    };
    drop_job(
        &spool_dir.join("incoming"),
        "by-hand",
        &format!(
            r#"{{"domain":"example.cz","mode":"move","mailboxes":[{}]}}"#,
            locals(0..3).join(",")
        ),
    );
    let mut args = vec![
        "--domain",
        "example.cz",
        "--mode",
        "move",
        "--notify",
        "majitel@zakaznik.example",
        "--id",
        "via-submit",
    ];
    let rest: Vec<String> = ACCOUNTS[3..]
        .iter()
        .map(|a| a.0.split('@').next().unwrap().to_string())
        .collect();
    for l in &rest {
        args.extend(["--mailbox", l]);
    }
    let out = submit(&s.config, &args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-submit");
    // The same id again is refused.
    let again = submit(&s.config, &args);
    assert_eq!(again.status.code(), Some(73), "{again:?}");

    let a = wait_record(&spool_dir, "done", "by-hand", &d);
    let b = wait_record(&spool_dir, "done", "via-submit", &d);
    for r in [&a, &b] {
        assert_eq!(r["status"], "done", "{r:#}");
        assert_eq!(r["verify"]["ok"], true, "verified after the job: {r:#}");
        assert_eq!(r["error"], serde_json::Value::Null);
        assert!(r["queue_wait_secs"].is_u64() && r["run_secs"].is_u64());
    }
    assert!(spool_dir.join("done/by-hand.json").exists());
    assert!(names_in(&spool_dir.join("incoming")).is_empty());
    let mailboxes: Vec<&serde_json::Value> = [&a, &b]
        .iter()
        .flat_map(|r| r["report"]["mailboxes"].as_array().unwrap())
        .collect();
    s.check_reports(&mailboxes);
    s.check_servers();

    // One e-mail, for the job that asked for it.
    let mail = smtp.wait_for(1, Duration::from_secs(30)).remove(0);
    assert_eq!(mail.rcpt_to, ["majitel@zakaznik.example"]);
    assert_eq!(mail.mail_from, "migrace@hosting.example");
    let m = parse_message(&mail.data);
    assert!(
        m.subject.contains("example.cz"),
        "subject names the domain: {}",
        m.subject
    );
    let body = &m.body;
    let want_messages = b["report"]["totals"]["messages"].as_u64().unwrap();
    for fact in [
        "example.cz".to_string(),
        format!("{want_messages}"),
        "Spam".into(),
        "Trash".into(),
        "koš".into(),
        "kontakty".into(),
        "autoresponder".into(),
        "Outlook".into(),
        "Thunderbird".into(),
        "993".into(),
        "587".into(),
        "465".into(),
    ] {
        assert!(body.contains(&fact), "e-mail body lacks {fact:?}:\n{body}");
    }
    let cs = body.find("koš").unwrap();
    let en = body.find("Trash").unwrap();
    assert!(cs < en, "Czech comes first:\n{body}");
    // The outcome is recorded in the report.
    let b = wait_until("notification recorded", Duration::from_secs(10), || {
        let r = record(&spool_dir.join("done/via-submit.report.json"));
        (r["notification"]["status"] == "sent").then_some(r)
    });
    assert_eq!(b["notification"]["to"], "majitel@zakaznik.example");
    assert_eq!(a["notification"], serde_json::Value::Null);

    // status lists both finished jobs; systemd saw READY and STATUS lines.
    let st = status_json(&s.config);
    assert_eq!(st["daemon_pid"], d.pid().to_string());
    let ids = common::fixture::column(&st["finished"], "id");
    assert!(
        ids.contains(&"by-hand") && ids.contains(&"via-submit"),
        "{st:#}"
    );
    d.wait_notice("WATCHDOG=1", Duration::from_secs(5));
    assert!(d.notices().iter().any(|n| n.starts_with("STATUS=")));
    let (code, took) = d.stop();
    assert_eq!(code.code(), Some(0));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let log = d.log();
    assert!(!log.contains("$6$") && !log.contains("{SHA512"), "{log}");
}

/// A host for the daemon without Dovecot: users.old, old Maildirs, spool.
fn spool_host(smtp: &str) -> (Host, PathBuf) {
    spool_host_with(smtp, None)
}

pub(crate) fn spool_host_with(smtp: &str, daemon: Option<&str>) -> (Host, PathBuf) {
    let h = Host::new("");
    let spool = h.root.join("spool");
    prepend_config(&h.config, &spool_config(&spool, smtp, daemon));
    (h, spool)
}

pub(crate) fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[test]
fn refused_job_files_land_in_failed_and_the_daemon_lives_on() {
    let (h, spool) = spool_host(&closed_port());
    h.add_user("jan@a.cz", "{PLAIN}x", "")
        .folder("")
        .msg("cur", "1.a:2,S", b"hi", 1_600_000_000);
    let log = h.root.join("daemon.log");
    let d = DaemonProc::start(&h.config, &log);
    let inc = spool.join("incoming");
    let good = r#"{"domain":"a.cz","mode":"move"}"#;
    drop_job(&inc, "malformed", r#"{"domain":"a.cz","mode":"#);
    drop_job(&inc, "unknown-mode", r#"{"domain":"a.cz","mode":"copy"}"#);
    drop_job(&inc, "bad id!", good);
    drop_job(&inc, "evil-domain", r#"{"domain":"../etc","mode":"move"}"#);
    drop_job_with(&inc, "world-writable", good, |p| {
        fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap()
    });
    // Only root can give a job file another owner.
    let root = common::require::available(Need::Root);
    if root {
        drop_job_with(&inc, "foreign-owner", good, |p| {
            std::os::unix::fs::chown(p, Some(4321), Some(4321)).unwrap()
        });
    }
    std::os::unix::fs::symlink("/etc/shadow", inc.join("link.json")).unwrap();
    drop_job(&inc, "good", good);

    let mut expect = vec![
        ("malformed", "EOF while parsing"),
        ("unknown-mode", "unknown variant"),
        ("bad_id_", "job id"),
        ("evil-domain", "domain"),
        ("world-writable", "untrusted job file"),
        ("link", "untrusted job file"),
    ];
    if root {
        expect.push(("foreign-owner", "untrusted job file"));
    }
    for (id, why) in expect {
        let r = wait_record(&spool, "failed", id, &d);
        assert_eq!(r["status"], "failed");
        let err = r["error"].as_str().unwrap();
        assert!(err.contains(why), "{id}: {err}");
    }
    let r = wait_record(&spool, "done", "good", &d);
    assert_eq!(r["report"]["totals"]["messages"], 1);
    // The link was moved, never followed.
    assert!(
        fs::symlink_metadata(spool.join("failed/link.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(names_in(&inc).is_empty(), "{:?}", names_in(&inc));
    // An unreachable SMTP server does not fail anything.
    assert_eq!(r["notification"], serde_json::Value::Null);
    drop(d);
}

#[test]
fn unreachable_smtp_server_is_recorded_not_fatal() {
    let (h, spool) = spool_host(&closed_port());
    h.add_user("jan@a.cz", "{PLAIN}x", "")
        .folder("")
        .msg("cur", "1.a:2,S", b"hi", 1_600_000_000);
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    drop_job(
        &spool.join("incoming"),
        "j",
        r#"{"domain":"a.cz","mode":"move","notify":"owner@a.cz"}"#,
    );
    let r = wait_record(&spool, "done", "j", &d);
    assert_eq!(r["status"], "done");
    let r = wait_until("the failed notification", Duration::from_secs(30), || {
        let r = record(&spool.join("done/j.report.json"));
        (r["notification"]["status"] == "failed").then_some(r)
    });
    assert_eq!(r["notification"]["attempts"], 2, "{r:#}");
    assert!(r["notification"]["error"].as_str().unwrap().len() > 3);
    // The queue goes on.
    drop_job(
        &spool.join("incoming"),
        "k",
        r#"{"domain":"a.cz","mode":"move"}"#,
    );
    let k = wait_record(&spool, "done", "k", &d);
    assert_eq!(k["report"]["mailboxes"][0]["status"], "already_migrated");
}

#[test]
fn one_daemon_per_spool_and_sighup_keeps_a_good_config() {
    let (h, spool) = spool_host(&closed_port());
    h.add_user("jan@a.cz", "{PLAIN}x", "");
    let log = h.root.join("daemon.log");
    let d = DaemonProc::start(&h.config, &log);
    let second = Command::new(BIN)
        .arg("--config")
        .arg(&h.config)
        .arg("daemon")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(75), "{second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another daemon") && err.contains(&d.pid().to_string()),
        "{err}"
    );

    let good = fs::read_to_string(&h.config).unwrap();
    fs::write(&h.config, format!("{good}\nbogus_key = 1\n")).unwrap();
    d.signal(Signal::SIGHUP);
    wait_until("reload refused", Duration::from_secs(10), || {
        d.log()
            .contains("reload failed, keeping the old configuration")
            .then_some(())
    });
    assert!(d.log().contains("bogus_key"));
    // Still working, on the old configuration.
    drop_job(
        &spool.join("incoming"),
        "after-hup",
        r#"{"domain":"a.cz","mode":"recreate"}"#,
    );
    let r = wait_record(&spool, "done", "after-hup", &d);
    assert_eq!(r["status"], "done");
    fs::write(&h.config, good).unwrap();
    d.signal(Signal::SIGHUP);
    wait_until("reload", Duration::from_secs(10), || {
        d.log().contains("configuration reloaded").then_some(())
    });
}

/// Builds a domain large enough that a stop lands in the middle.
pub(crate) fn large_host(mailboxes: usize, per_mailbox: usize) -> (Host, PathBuf) {
    let (h, spool) = spool_host(&closed_port());
    let mut cfg = fs::read_to_string(&h.config).unwrap();
    cfg.push_str("[migration]\nthreads = 2\n");
    fs::write(&h.config, cfg).unwrap();
    for m in 0..mailboxes {
        let md = h.add_user(&format!("u{m}@big.cz"), "{PLAIN}x", "");
        let inbox = md.folder("");
        let sent = md.folder(".Sent");
        for i in 0..per_mailbox {
            let f = if i % 4 == 0 { &sent } else { &inbox };
            f.msg(
                "cur",
                &format!("{}.M{i}P{m}.host,S=300:2,S", 1_600_000_000 + i),
                &body(&format!("m{m}-{i}"), 300),
                1_600_000_000 + i as i64,
            );
        }
    }
    (h, spool)
}

/// Mailboxes and messages per mailbox of the interrupted job's domain.
pub(crate) const LARGE: (usize, usize) = (4, 6000);

/// Interrupts a large job (a `large_host(LARGE)` with its spool) with
/// `interrupt`, restarts with `start` (given the log file), and checks that
/// the job completes exactly once with nothing missing and nothing doubled.
/// `checkpointed`: a stop writes the checkpoint, so the resumed job's
/// report carries every mailbox's counts (after kill -9 the last second of
/// progress may be missing, and such a mailbox reports already_migrated).
pub(crate) fn interrupted_job_completes_exactly_once(
    (h, spool): (Host, PathBuf),
    start: impl Fn(&Path) -> DaemonProc,
    checkpointed: bool,
    interrupt: impl FnOnce(&mut DaemonProc),
) {
    let (mailboxes, per) = LARGE;
    let log = h.root.join("daemon.log");
    let mut d = start(&log);
    drop_job(
        &spool.join("incoming"),
        "big",
        r#"{"domain":"big.cz","mode":"move"}"#,
    );
    // Wait until copying is under way.
    wait_until("copying under way", JOB_TIMEOUT, || {
        let p = fs::read(spool.join("active/big.progress")).ok()?;
        let p: serde_json::Value = serde_json::from_slice(&p).ok()?;
        // With a checkpoint to prove, stop after a whole mailbox is done.
        let far_enough = if checkpointed {
            p["mailboxes_done"].as_u64()? >= 1
        } else {
            p["messages"].as_u64()? >= 1500
        };
        far_enough.then_some(())
    });
    let st = status_json(&h.config);
    let running = &st["running"][0];
    assert_eq!(running["id"], "big", "{st:#}");
    assert_eq!(running["state"], "running");
    assert_eq!(running["mailboxes_total"], mailboxes as u64);
    assert!(running["messages"].as_u64().unwrap() >= 1500, "{st:#}");
    d.wait_notice("STATUS=job big (big.cz): ", Duration::from_secs(5));
    interrupt(&mut d);
    let st = status_json(&h.config);
    assert_eq!(st["daemon_pid"], serde_json::Value::Null);
    assert_eq!(st["running"][0]["state"], "interrupted", "{st:#}");
    assert!(
        spool.join("active/big.json").exists(),
        "the job must still be in active/ (it finished too early to test the stop)"
    );
    assert!(!spool.join("done/big.json").exists());
    if checkpointed {
        // A stop (not kill -9) rolls the current mailbox back.
        every_mailbox_has_exactly_one_login(&h, mailboxes);
    }

    let mut d = start(&log);
    let r = wait_record(&spool, "done", "big", &d);
    assert_eq!(r["status"], "done", "{r:#}");
    assert_eq!(r["resumed"], true);
    // Mailboxes finished before the interruption report already_migrated;
    // the trees below prove every message arrived exactly once.
    let statuses = common::fixture::column(&r["report"]["mailboxes"], "status");
    assert_eq!(statuses.len(), mailboxes);
    assert!(
        statuses
            .iter()
            .all(|s| *s == "done" || *s == "already_migrated"),
        "{statuses:?}"
    );
    assert!(statuses.contains(&"done"), "{statuses:?}");
    if checkpointed {
        assert!(statuses.iter().all(|s| *s == "done"), "{statuses:?}");
        assert_eq!(r["report"]["totals"]["messages"], (mailboxes * per) as u64);
        assert!(
            d.log().contains("resuming after the checkpoint"),
            "{}",
            d.log()
        );
    }
    // The record is written first; the job's files leave active/ (for
    // done/) just after.
    wait_until("active/ emptied", Duration::from_secs(10), || {
        names_in(&spool.join("active")).is_empty().then_some(())
    });
    assert_eq!(
        names_in(&spool.join("done")),
        ["big.json", "big.report.json"]
    );
    assert!(names_in(&spool.join("failed")).is_empty());
    // Every message exactly once, byte for byte, under its own name.
    for m in 0..mailboxes {
        let user = format!("u{m}@big.cz");
        let src = tree(&h.old.join(format!("big.cz/u{m}/Maildir")));
        let dst = tree(&h.target_maildir(&user));
        let msgs = |t: &std::collections::BTreeMap<String, (char, u32, u32, i64, Vec<u8>)>| {
            t.iter()
                .filter(|(k, _)| k.contains("/cur/") || k.starts_with("cur/"))
                .map(|(k, v)| (k.clone(), v.3, v.4.clone()))
                .collect::<Vec<_>>()
        };
        let (s, t) = (msgs(&src), msgs(&dst));
        assert_eq!(s.len(), per);
        assert!(s == t, "{user}: target differs from source");
        assert!(!dst.keys().any(|k| k.starts_with("tmp/") && k.len() > 4));
    }
    let users_new = fs::read_to_string(&h.users_new).unwrap();
    for m in 0..mailboxes {
        assert_eq!(users_new.matches(&format!("u{m}@big.cz:")).count(), 1);
    }
    let (code, _) = d.stop();
    assert_eq!(code.code(), Some(0));
}

/// After a stop, each mailbox is served by exactly one side: either its
/// old login works (not migrated, or rolled back by the stop) and it has no
/// new entry, or the old one is refused and the new one exists.
fn every_mailbox_has_exactly_one_login(h: &Host, mailboxes: usize) {
    let old = fs::read_to_string(&h.users_old).unwrap();
    let new = fs::read_to_string(&h.users_new).unwrap_or_default();
    let (mut rolled_back, mut switched) = (0, 0);
    for m in 0..mailboxes {
        let key = format!("u{m}@big.cz:");
        let old_line = old.lines().find(|l| l.starts_with(&key)).unwrap();
        let in_new = new.lines().any(|l| l.starts_with(&key));
        if old_line.contains("nologin") {
            assert!(in_new, "{key} refused on both sides:\n{old}\n{new}");
            switched += 1;
        } else {
            assert!(!in_new, "{key} served by both sides:\n{old}\n{new}");
            rolled_back += 1;
        }
    }
    assert!(
        switched >= 1 && rolled_back >= 1,
        "{switched} switched, {rolled_back} not"
    );
}

/// Starts the daemon just built on the host's config.
fn start_built(config: &Path) -> impl Fn(&Path) -> DaemonProc + '_ {
    move |log| DaemonProc::start(config, log)
}

#[test]
fn sigterm_mid_job_then_restart_completes_exactly_once() {
    let host = large_host(LARGE.0, LARGE.1);
    let config = host.0.config.clone();
    interrupted_job_completes_exactly_once(host, start_built(&config), true, |d| {
        let (code, took) = d.stop();
        eprintln!("SIGTERM to exit: {took:?}");
        assert_eq!(code.code(), Some(0), "{}", d.log());
        assert!(
            took < Duration::from_secs(10),
            "stop took {took:?}\n{}",
            d.log()
        );
        assert!(d.log().contains("job interrupted"), "{}", d.log());
    });
}

#[test]
fn kill_9_mid_job_then_restart_completes_exactly_once() {
    let host = large_host(LARGE.0, LARGE.1);
    let config = host.0.config.clone();
    interrupted_job_completes_exactly_once(host, start_built(&config), false, |d| {
        d.signal(Signal::SIGKILL);
        let (code, _) = d.wait_exit(Duration::from_secs(10));
        assert_eq!(code.code(), None, "killed by a signal");
    });
}

/// A stop during `freeze_grace` (the old login already refused) does not
/// wait the grace out: the daemon exits within seconds, as systemd's
/// `TimeoutStopSec=` needs, and the mailbox gets its old login back.
#[test]
fn a_stop_during_the_freeze_grace_rolls_back_at_once() {
    let (h, spool) = spool_host(&closed_port());
    let cfg = fs::read_to_string(&h.config).unwrap();
    h.write_config(&cfg.replace("[cutover]\n", "[cutover]\nfreeze_grace = 120\n"));
    jan_with_one_message(&h);
    let log = h.root.join("daemon.log");
    let mut d = DaemonProc::start(&h.config, &log);
    drop_job(
        &spool.join("incoming"),
        "grace",
        r#"{"domain":"a.cz","mode":"move"}"#,
    );
    wait_until("the old login refused", JOB_TIMEOUT, || {
        let old = fs::read_to_string(&h.users_old).ok()?;
        old.contains("nologin").then_some(())
    });
    let (code, took) = d.stop();
    assert_eq!(code.code(), Some(0), "{}", d.log());
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let old = fs::read_to_string(&h.users_old).unwrap();
    assert!(!old.contains("nologin"), "old login not restored: {old}");
    assert!(
        !fs::read_to_string(&h.users_new)
            .unwrap_or_default()
            .contains("jan@a.cz")
    );
    assert!(spool.join("active/grace.json").exists());
}

/// A first SIGTERM waits (here for an e-mail to a server that never
/// answers); a second one exits at once.
#[test]
fn a_second_sigterm_exits_at_once() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (h, spool) = spool_host(&silent.local_addr().unwrap().to_string());
    h.add_user("jan@a.cz", "{PLAIN}x", "");
    let mut d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    drop_job(
        &spool.join("incoming"),
        "j",
        r#"{"domain":"a.cz","mode":"recreate","notify":"owner@a.cz"}"#,
    );
    wait_record(&spool, "done", "j", &d);
    d.signal(Signal::SIGTERM);
    wait_until("the stop request", Duration::from_secs(5), || {
        d.log().contains("stop requested").then_some(())
    });
    // The e-mail's first attempt times out (timeout_secs = 5) after the
    // stop request; a retry follows, so the daemon is still there.
    wait_until("the first e-mail attempt to fail", JOB_TIMEOUT, || {
        d.log()
            .contains("notification attempt failed")
            .then_some(())
    });
    assert!(
        d.wait_exit_or_none(Duration::ZERO).is_none(),
        "still waiting for the e-mail"
    );
    d.signal(Signal::SIGTERM);
    let (code, took) = d.wait_exit(Duration::from_secs(5));
    assert_eq!(code.code(), Some(1), "{}", d.log());
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(silent);
}

/// inotify alone finds a job (no rescan for an hour); with inotify off
/// (as on NFS) the periodic rescan alone does.
#[test]
fn jobs_are_found_by_inotify_and_by_rescan_alone() {
    for (daemon, how) in [
        ("rescan_interval = 3600", "inotify"),
        ("rescan_interval = 1\ninotify = false", "rescan"),
    ] {
        let (h, spool) = spool_host_with(&closed_port(), Some(daemon));
        h.add_user("jan@a.cz", "{PLAIN}x", "");
        // READY=1 (awaited by start) comes after the watch is set and the
        // first scan is done: the job below is found by `how` alone.
        let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
        drop_job(
            &spool.join("incoming"),
            "j",
            r#"{"domain":"a.cz","mode":"recreate"}"#,
        );
        let path = spool.join("done/j.report.json");
        wait_until(
            &format!("{how} to find the job"),
            Duration::from_secs(5),
            || path.exists().then_some(()),
        );
        drop(d);
    }
}

/// Members of `submit_group` may queue jobs: incoming/ is 2770 with the
/// group, and a job file of another user in that group is run.
#[test]
fn submit_group_members_may_queue_jobs() {
    require!(Need::Root);
    let (h, spool) = spool_host_with(
        &closed_port(),
        Some("rescan_interval = 1\nsubmit_group = \"mail\""),
    );
    h.add_user("jan@a.cz", "{PLAIN}x", "");
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    let inc = spool.join("incoming");
    let m = fs::metadata(&inc).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o2770, 8));
    drop_job_with(
        &inc,
        "member",
        r#"{"domain":"a.cz","mode":"recreate"}"#,
        |p| std::os::unix::fs::chown(p, Some(4321), Some(8)).unwrap(),
    );
    let r = wait_record(&spool, "done", "member", &d);
    assert_eq!(r["status"], "done");
}

/// Two jobs may run at once, but never two for one domain: the second
/// big.cz job waits for the first, the small.cz job does not.
#[test]
fn parallel_jobs_never_share_a_domain() {
    let (h, spool) = large_host(2, 3000);
    let cfg = fs::read_to_string(&h.config).unwrap().replace(
        "rescan_interval = 1",
        "rescan_interval = 1\nmax_parallel_jobs = 2",
    );
    fs::write(&h.config, cfg).unwrap();
    h.add_user("eva@small.cz", "{PLAIN}x", "");
    let inc = spool.join("incoming");
    fs::create_dir_all(&inc).unwrap();
    // Queued before the daemon starts, in this order (mtime, then name).
    for (i, (id, domain)) in [
        ("a-big", "big.cz"),
        ("b-big", "big.cz"),
        ("c-small", "small.cz"),
    ]
    .iter()
    .enumerate()
    {
        let p = drop_job(
            &inc,
            id,
            &format!(r#"{{"domain":"{domain}","mode":"move"}}"#),
        );
        common::fixture::set_mtime(&p, 1_700_000_000 + i as i64);
    }
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    for id in ["a-big", "b-big", "c-small"] {
        wait_record(&spool, "done", id, &d);
    }
    let log = d.log();
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what} not in the log:\n{log}"))
    };
    let started = |id: &str| at(&format!("job started job=\"{id}\""));
    let finished = |id: &str| at(&format!("job finished job=\"{id}\""));
    assert!(
        finished("c-small") < finished("a-big"),
        "ran in parallel:\n{log}"
    );
    assert!(
        finished("a-big") < started("b-big"),
        "same domain waited:\n{log}"
    );
}

/// `sweep_delay` after a job the daemon moves mail that still arrived in
/// the old Maildir into the new one and records it in the job's report.
#[test]
fn the_daemon_sweeps_late_mail_after_the_delay() {
    let (h, spool) = spool_host(&closed_port());
    let cfg = fs::read_to_string(&h.config)
        .unwrap()
        .replace("sweep_delay = 0", "sweep_delay = 2");
    fs::write(&h.config, cfg).unwrap();
    let inbox = jan_with_one_message(&h);
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    drop_job(
        &spool.join("incoming"),
        "j",
        r#"{"domain":"a.cz","mode":"move"}"#,
    );
    wait_record(&spool, "done", "j", &d);
    // Scheduled just after the record is filed.
    wait_until("the schedule on disk", Duration::from_secs(5), || {
        spool.join("done/j.sweep.json").exists().then_some(())
    });
    late_mail_is_swept(&h, &spool, &inbox, "j");
    // The record is written first, then the schedule dropped.
    wait_until("the schedule dropped", Duration::from_secs(5), || {
        (!spool.join("done/j.sweep.json").exists()).then_some(())
    });
}

/// One passwd-file for old and new (in place, the common single-host
/// setup): the job is filed done, the customer's e-mail says so, and mail
/// that arrives in the old Maildir after the switch is swept (verify used
/// to find a difference in every in-place job, and sweep moved nothing).
#[test]
fn an_in_place_job_is_done_mailed_and_swept() {
    let smtp = SmtpSink::start();
    let (h, spool) = spool_host(&smtp.addr());
    let cfg = fs::read_to_string(&h.config)
        .unwrap()
        .replace("sweep_delay = 0", "sweep_delay = 2")
        .replace("userdb = \"users.new\"", "userdb = \"users.old\"");
    fs::write(&h.config, cfg).unwrap();
    let inbox = jan_with_one_message(&h);
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    drop_job(
        &spool.join("incoming"),
        "ip",
        r#"{"domain":"a.cz","mode":"move","notify":"owner@a.cz"}"#,
    );
    let r = wait_record(&spool, "done", "ip", &d);
    assert_eq!(r["status"], "done", "{r:#}");
    assert_eq!(r["verify"]["ok"], true, "{r:#}");
    let mail = smtp.wait_for(1, Duration::from_secs(30)).remove(0);
    let m = parse_message(&mail.data);
    assert!(m.subject.contains("finished"), "{}", m.subject);
    late_mail_is_swept(&h, &spool, &inbox, "ip");
}

/// Delivers a message to jan@a.cz's old INBOX after the switch and waits
/// until the daemon's sweep for job `id` has moved it into the new one.
/// jan@a.cz with one message in the old INBOX, which is returned.
fn jan_with_one_message(h: &Host) -> common::fixture::Folder {
    let inbox = h.add_user("jan@a.cz", "{PLAIN}x", "").folder("");
    inbox.msg(
        "cur",
        "1600000000.M1P1.h:2,S",
        &body("old", 100),
        1_600_000_000,
    );
    inbox
}

fn late_mail_is_swept(h: &Host, spool: &Path, inbox: &common::fixture::Folder, id: &str) {
    inbox.msg(
        "new",
        "1700000000.M2P2.late",
        &body("late", 100),
        1_700_000_000,
    );
    let r = wait_until("the sweep", Duration::from_secs(20), || {
        let r = record(&spool.join(format!("done/{id}.report.json")));
        (r["sweeps"].as_array().is_some_and(|s| !s.is_empty())).then_some(r)
    });
    assert_eq!(r["sweeps"][0]["moved"], 1, "{r:#}");
    assert!(
        h.target_maildir("jan@a.cz")
            .join("new/1700000000.M2P2.late")
            .exists()
    );
    assert!(!inbox.0.join("new/1700000000.M2P2.late").exists());
}

/// A job for a domain the source does not know (a typo) is failed, and
/// the e-mail says so.
#[test]
fn a_job_for_an_unknown_domain_fails_and_mails_failed() {
    let smtp = SmtpSink::start();
    let (h, spool) = spool_host(&smtp.addr());
    h.add_user("jan@example.cz", "{PLAIN}x", "").folder("").msg(
        "cur",
        "1.a:2,S",
        b"hi",
        1_600_000_000,
    );
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    drop_job(
        &spool.join("incoming"),
        "typo",
        r#"{"domain":"exmaple.cz","mode":"move","notify":"owner@example.cz"}"#,
    );
    let r = wait_record(&spool, "failed", "typo", &d);
    let err = r["error"].as_str().unwrap();
    assert!(err.contains("no mailboxes of exmaple.cz"), "{err}");
    let mail = smtp.wait_for(1, Duration::from_secs(30)).remove(0);
    let m = parse_message(&mail.data);
    assert!(m.subject.contains("failed"), "{}", m.subject);
}

/// Runs `daemon` on a spool it must refuse; returns the exit code and
/// stderr. A daemon that accepts the spool is killed after 20 s.
fn refused_daemon(config: &Path) -> (Option<i32>, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("daemon")
        .env("MAILDIR_MIGRATE_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let status = std::iter::repeat_with(|| {
        std::thread::sleep(Duration::from_millis(50));
        child.try_wait().unwrap()
    })
    .take(400)
    .flatten()
    .next();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = fs::read_to_string(err.path()).unwrap();
    assert!(status.is_some(), "the daemon accepted the spool:\n{stderr}");
    (status.unwrap().code(), stderr)
}

/// A spool root the submit group can write is refused (a member could
/// swap `daemon.pid` for a symlink), and a symlinked `daemon.pid` is
/// neither followed nor truncated: exit 78 with the directory and the fix.
#[test]
fn unsafe_spool_root_and_pid_symlink_are_refused() {
    let (h, spool) = spool_host_with(
        &closed_port(),
        Some("rescan_interval = 1\nsubmit_group = \"mail\""),
    );
    fs::create_dir(&spool).unwrap();
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o770)).unwrap();
    let (code, err) = refused_daemon(&h.config);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains(&spool.display().to_string()) && err.contains("chmod g-w,o-w"),
        "{err}"
    );

    fs::set_permissions(&spool, fs::Permissions::from_mode(0o750)).unwrap();
    let victim = h.root.join("victim.conf");
    fs::write(&victim, "keep me\n").unwrap();
    common::fixture::set_mtime(&victim, 1_600_000_000);
    std::os::unix::fs::symlink(&victim, spool.join("daemon.pid")).unwrap();
    let (code, err) = refused_daemon(&h.config);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("daemon.pid") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(fs::read(&victim).unwrap(), b"keep me\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&victim).unwrap().mtime(), 1_600_000_000);
}

/// The submit-group member of the tests: uid 4321 in group `mail` (gid 8).
const MEMBER: (u32, u32) = (4321, 8);

/// Runs `sh -c script sh args…` as `MEMBER` (std's `CommandExt::uid/gid`,
/// which also drops root's supplementary groups); true when it succeeded.
fn as_member(script: &str, args: &[&Path]) -> bool {
    use std::os::unix::process::CommandExt;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .uid(MEMBER.0)
        .gid(MEMBER.1)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The record (in done/ or failed/) of the job file that was named `file`.
fn record_of(spool: &Path, file: &str) -> Option<(PathBuf, serde_json::Value)> {
    ["done", "failed"].iter().find_map(|place| {
        fs::read_dir(spool.join(place))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".report.json"))
            .find_map(|p| {
                let r: serde_json::Value = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                (r["file"] == file).then_some((p, r))
            })
    })
}

/// A submit-group member keeps nothing it could change once the daemon
/// has its job: the claimed job is a daemon-owned copy (also one an earlier
/// version left in active/), a file it still holds open writes into the
/// void, and the id `evil.sweep` (whose filed name was the sweep schedule
/// of a job `evil`) cannot make root sweep another domain.
#[test]
fn a_submitter_cannot_change_a_claimed_job_or_forge_a_sweep() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    require!(Need::Root);
    let (h, spool) = spool_host_with(
        &closed_port(),
        Some("rescan_interval = 1\nsubmit_group = \"mail\""),
    );
    h.add_user("jan@a.cz", "{PLAIN}x", "")
        .folder("")
        .msg("cur", "1.a:2,S", b"hi", 1_600_000_000);
    let victim = h.add_user("eva@victim.cz", "{PLAIN}x", "").folder("");
    victim.msg(
        "new",
        "1700000000.M1P1.late",
        &body("late", 100),
        1_700_000_000,
    );
    // The member must reach the spool (the test's temp root is 0700).
    fs::set_permissions(&h.root, fs::Permissions::from_mode(0o711)).unwrap();
    let job = r#"{"domain":"a.cz","mode":"move"}"#;
    // A job an earlier version claimed: still the member's own inode.
    fs::create_dir_all(spool.join("active")).unwrap();
    let legacy = spool.join("active/legacy.json");
    fs::write(&legacy, job).unwrap();
    std::os::unix::fs::chown(&legacy, Some(MEMBER.0), Some(MEMBER.1)).unwrap();
    fs::set_permissions(&legacy, fs::Permissions::from_mode(0o660)).unwrap();
    let mut held = vec![fs::OpenOptions::new().write(true).open(&legacy).unwrap()];
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));

    // The member writes both jobs, keeps them open, then queues them.
    let inc = spool.join("incoming");
    for id in ["evil.sweep", "evil"] {
        let tmp = inc.join(format!(".{id}.tmp"));
        let write = format!("printf %s '{job}' > \"$1\"");
        assert!(as_member(&write, &[&tmp]), "the member can write incoming/");
        held.push(fs::OpenOptions::new().write(true).open(&tmp).unwrap());
        let dest = inc.join(format!("{id}.json"));
        assert!(as_member("mv \"$1\" \"$2\"", &[&tmp, &dest]));
    }
    let (record, r) = wait_until("evil.sweep filed", JOB_TIMEOUT, || {
        record_of(&spool, "evil.sweep.json")
    });
    // The member turns its job file into a schedule sweeping victim.cz.
    let forged = format!(
        r#"{{"record":"{}","domain":"victim.cz","mailboxes":null,"due":0}}"#,
        record.file_name().unwrap().to_string_lossy()
    );
    held[1].set_len(0).unwrap();
    held[1].write_all_at(forged.as_bytes(), 0).unwrap();
    let by_path = format!("printf %s '{forged}' > \"$1\"");
    as_member(&by_path, &[&spool.join("done/evil.sweep.json")]);

    for id in ["legacy", "evil"] {
        wait_record(&spool, "done", id, &d);
    }
    // Every schedule() looks for due sweeps before it starts jobs.
    drop_job(&inc, "after", r#"{"domain":"a.cz","mode":"move"}"#);
    wait_record(&spool, "done", "after", &d);
    std::thread::sleep(Duration::from_secs(1));
    for (i, id) in [(0, "legacy"), (2, "evil")] {
        let filed = spool.join(format!("done/{id}.json"));
        let m = fs::metadata(&filed).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777, m.nlink()),
            (0, 0o640, 1),
            "{id}"
        );
        held[i].set_len(0).unwrap();
        held[i]
            .write_all_at(b"{\"domain\":\"victim.cz\"}", 0)
            .unwrap();
        assert_eq!(fs::read_to_string(&filed).unwrap(), job, "{id}");
        assert!(
            !as_member(": >> \"$1\"", &[&filed]),
            "the member can open done/{id}.json for writing"
        );
    }
    let log = d.log();
    assert!(
        !log.contains("sweep finished")
            && !log.contains("sweep failed")
            && !log.contains("victim.cz"),
        "a sweep ran:\n{log}"
    );
    assert!(victim.0.join("new/1700000000.M1P1.late").exists());
    // Refused as an id that names a daemon file, so never claimed.
    assert_eq!(r["status"], "failed", "{r:#}");
    assert!(r["error"].as_str().unwrap().contains("reserved"), "{r:#}");
}

/// `[daemon] metrics_file`: node_exporter's textfile shows the filed job
/// and what it copied, is replaced whole (no temp file left, mode 0644),
/// and promtool accepts it.
#[test]
fn the_daemon_writes_prometheus_metrics() {
    let h = Host::new("");
    let metrics = h.root.join("metrics");
    fs::create_dir(&metrics).unwrap();
    let file = metrics.join("maildir-migrate.prom");
    let spool = h.root.join("spool");
    let daemon = format!("rescan_interval = 1\nmetrics_file = \"{}\"", file.display());
    prepend_config(
        &h.config,
        &spool_config(&spool, &closed_port(), Some(&daemon)),
    );
    jan_with_one_message(&h);
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    drop_job(
        &spool.join("incoming"),
        "m",
        r#"{"domain":"a.cz","mode":"move"}"#,
    );
    let r = wait_record(&spool, "done", "m", &d);
    assert_eq!(r["status"], "done", "{r:#}");
    let text = wait_until(
        "the metrics to show the job",
        Duration::from_secs(10),
        || {
            let t = fs::read_to_string(&file).ok()?;
            t.contains("maildir_migrate_jobs{state=\"done\"} 1\n")
                .then_some(t)
        },
    );
    let value = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("maildir_migrate_messages_copied_total") > 0, "{text}");
    assert!(value("maildir_migrate_bytes_copied_total") > 0, "{text}");
    assert!(
        value("maildir_migrate_last_success_timestamp_seconds") > 0,
        "{text}"
    );
    assert_eq!(
        value("maildir_migrate_job_duration_seconds_count"),
        1,
        "{text}"
    );
    assert_eq!(value("maildir_migrate_frozen_mailboxes"), 0, "{text}");
    for line in [
        "maildir_migrate_jobs{state=\"queued\"} 0",
        "maildir_migrate_jobs{state=\"running\"} 0",
        "maildir_migrate_jobs{state=\"failed\"} 0",
        "maildir_migrate_mailboxes_total{status=\"done\"} 1",
        "maildir_migrate_mailboxes_total{status=\"failed\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    drop(d);
    // Stopped: no write in flight, so no temporary name may be left.
    assert_eq!(names_in(&metrics), ["maildir-migrate.prom"]);
    if common::require::available(Need::Promtool) {
        let out = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// SIGHUP changes the I/O limit from the next mailbox on: the first
/// mailbox (60 files at 10 files/s, at least 5.9 s) is still copying when
/// the limit is raised, and the log shows the second one under the new one.
#[test]
fn sighup_changes_the_io_limit_for_the_next_mailbox() {
    let (h, spool) = spool_host(&closed_port());
    let slow = "[migration]\nthreads = 2\nfsync = false\nmax_files_per_sec = 10\n";
    let cfg = fs::read_to_string(&h.config).unwrap();
    fs::write(&h.config, format!("{cfg}{slow}")).unwrap();
    for user in ["a@lim.cz", "b@lim.cz"] {
        let inbox = h.add_user(user, "{PLAIN}x", "").folder("");
        for i in 0..60 {
            let name = format!("{}.M{i}.old:2,S", 1_600_000_000 + i);
            inbox.msg("cur", &name, &body(&format!("m{i}"), 300), 1_600_000_000);
        }
    }
    let d = DaemonProc::start(&h.config, &h.root.join("daemon.log"));
    drop_job(
        &spool.join("incoming"),
        "limited",
        r#"{"domain":"lim.cz","mode":"move"}"#,
    );
    let limit_line = |user: &str| {
        d.log()
            .lines()
            .find(|l| l.contains("I/O limit from this mailbox on") && l.contains(user))
            .map(str::to_string)
    };
    let first = wait_until("the first mailbox's limit", JOB_TIMEOUT, || {
        limit_line("a@lim.cz")
    });
    assert!(first.contains("io_limit=10 files/s"), "{first}");
    fs::write(
        &h.config,
        format!("{cfg}{}", slow.replace("= 10\n", "= 1000\n")),
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    let r = wait_record(&spool, "done", "limited", &d);
    assert_eq!(r["status"], "done");
    let log = d.log();
    assert!(log.contains("configuration reloaded"), "{log}");
    let second = limit_line("b@lim.cz").unwrap_or_else(|| panic!("{log}"));
    assert!(second.contains("io_limit=1000 files/s"), "{log}");
    let lines_a = log
        .lines()
        .filter(|l| l.contains("user=\"a@lim.cz\"") && l.contains("I/O limit"));
    assert_eq!(
        lines_a.count(),
        1,
        "the first mailbox kept its limit:\n{log}"
    );
}
