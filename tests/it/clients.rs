//! What a mail client that synced with the old server sees on the new one:
//! folders that are not migrated, CONDSTORE/QRESYNC modification
//! sequences, the namespace its folder names live in, a session left open
//! on the old server across the freeze, and keywords it set. Real Dovecot
//! on both sides, spoken to over IMAP as the clients do.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::dovecot::{self, Dovecot};
use common::fixture::{Host, body};
use common::imap::{ImapClient, Resync};
use common::require::{Need, require};
use common::scenario::{self, ACCOUNTS, Scenario};

/// jan's session on `dc`, with QRESYNC enabled.
fn jan_on(dc: &Dovecot) -> ImapClient {
    let (user, pass, _, _) = ACCOUNTS[0];
    let mut c = scenario::connect(dc);
    c.authenticate_plain(user, pass)
        .unwrap_or_else(|e| panic!("login {user}: {e}\n{}", dc.log()));
    c.enable_qresync();
    c
}

/// What a client remembers of each of jan's folders on `dc`: the CONDSTORE
/// state of every folder the server can open (the old one cannot open the
/// scenario's raw UTF-8 folder).
fn remembered(dc: &Dovecot) -> BTreeMap<String, Resync> {
    let mut c = jan_on(dc);
    let names: Vec<String> = c
        .list()
        .into_iter()
        .filter(|e| e.selectable())
        .map(|e| e.name)
        .collect();
    let states = names
        .into_iter()
        .filter_map(|n| Some((n.clone(), c.select_resync(&n, None).ok()?)))
        .collect();
    c.logout().unwrap();
    states
}

/// The new server, running on the (still empty) new userdb before the job
/// so that the job can ask it.
fn new_server(s: &Scenario, extra_conf: &str) -> Dovecot {
    dovecot::write_passwd_file(&s.users_new, "");
    Dovecot::start_configured(
        &s.dir.join("new-server"),
        dovecot::Auth::PasswdFile(s.users_new.clone()),
        extra_conf,
    )
}

/// Point 2: a Dovecot source's modification sequences are carried (raised
/// on the new server before the login goes live): HIGHESTMODSEQ never
/// goes back, and a QRESYNC client that remembers the old state sees
/// every flag change made on the new server after the switch.
#[test]
fn no_flag_change_after_the_switch_is_missed_by_a_qresync_client() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-modseq-", "");
    // A client flips flags for a while: the old server's modseqs climb well
    // above what a fresh index starts at.
    let mut c = jan_on(&s.old);
    for folder in ["INBOX", "Archive/2019"] {
        c.select(folder);
        for round in 0..20 {
            let op = if round % 2 == 0 { "+FLAGS" } else { "-FLAGS" };
            c.uid_store(1, op, &["\\Flagged"]).unwrap();
        }
    }
    c.logout().unwrap();
    let old = remembered(&s.old);
    assert!(old["INBOX"].highestmodseq > 20, "{:?}", old["INBOX"]);

    let new = new_server(&s, "");
    s.ask_servers(&new);
    let (code, report, stderr) = s.run_job();
    assert_eq!(code, 0, "{report:#}\n{stderr}");

    let now = remembered(&new);
    for (name, was) in &old {
        if scenario::is_skipped(name) {
            continue;
        }
        let is = now.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(is.uidvalidity, was.uidvalidity, "{name}");
        assert!(
            is.highestmodseq >= was.highestmodseq,
            "{name}: HIGHESTMODSEQ went back from {} to {}",
            was.highestmodseq,
            is.highestmodseq
        );
    }
    // After the switch, another device flags a message on the new server.
    let mut other = jan_on(&new);
    other.select("INBOX");
    other.uid_store(3, "+FLAGS", &["\\Flagged"]).unwrap();
    other.logout().unwrap();
    // The client comes back with what it remembered from the old server.
    let mut c = jan_on(&new);
    let inbox = &old["INBOX"];
    let r = c
        .select_resync("INBOX", Some((inbox.uidvalidity, inbox.highestmodseq)))
        .unwrap();
    assert!(
        r.changed.get(&3).is_some_and(|f| f.contains("\\Flagged")),
        "the flag set on the new server is not reported: {r:?}"
    );
    assert!(r.highestmodseq > inbox.highestmodseq, "{r:?}");
    c.logout().unwrap();
}

/// Point 1: the folders that are not migrated are there on the new server,
/// empty, with their old UIDVALIDITY and at least their old UIDNEXT, and
/// still subscribed: a QRESYNC client is told their messages vanished (it
/// drops its copies instead of uploading them or failing on a UIDVALIDITY
/// change), even where the new Dovecot auto-creates a special-use folder
/// of the same name.
#[test]
fn skipped_folders_show_their_messages_expunged() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-skipped-", "");
    let old = remembered(&s.old);
    let (code, report, stderr) = s.run_job();
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    let new = Dovecot::start_configured(
        &s.dir.join("new-server"),
        dovecot::Auth::PasswdFile(s.users_new.clone()),
        "namespace inbox {\n  mailbox Spam {\n    auto = subscribe\n    special_use = \\Junk\n  }\n  \
         mailbox Trash {\n    auto = subscribe\n    special_use = \\Trash\n  }\n}\n",
    );
    let before = s.before[0].clone();
    let mut c = jan_on(&new);
    for name in ["Koš", "Koš/2019", "Spam", "Contacts"] {
        let was = &old[name];
        let old_uids: BTreeSet<u32> = before.mailbox(name).unwrap().uids().into_iter().collect();
        assert!(!old_uids.is_empty(), "{name} had messages");
        let r = c
            .select_resync(name, Some((was.uidvalidity, was.highestmodseq)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.uidvalidity, was.uidvalidity, "{name}: {r:?}");
        assert!(r.uidnext >= was.uidnext, "{name}: {r:?}");
        assert_eq!(r.exists, 0, "{name}: {r:?}");
        assert!(
            r.vanished.is_superset(&old_uids),
            "{name}: the client is not told that {old_uids:?} are gone: {r:?}"
        );
    }
    let log = new.log();
    assert!(
        !log.contains("Error:"),
        "the carried indexes upset Dovecot:\n{log}"
    );
    let subscribed = c.lsub();
    for name in ["Koš", "Spam"] {
        assert!(
            subscribed.iter().any(|n| n == name),
            "{name} in {subscribed:?}"
        );
    }
    c.logout().unwrap();
    let jan = report["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == ACCOUNTS[0].0)
        .unwrap();
    let skipped = common::fixture::column(&jan["skipped_folders"], "name");
    assert_eq!(skipped, ["Contacts", "Koš", "Koš/2019", "Spam"]);
}

/// Point 1, the alternative: with `skipped_folders = "absent"` the folders
/// that are not migrated are left out of the target altogether; either way
/// the report names them.
#[test]
fn skipped_folders_are_emptied_or_left_out() {
    for (setting, present) in [
        ("", true),
        ("[migration]\nskipped_folders = \"absent\"\n", false),
    ] {
        let h = Host::new(setting);
        let md = h.add_user("jan@example.cz", "{PLAIN}x", "");
        md.folder("").msg(
            "cur",
            "1500000000.M1P1.old:2,S",
            &body("in", 30),
            1_500_000_000,
        );
        md.folder(".Trash")
            .msg(
                "cur",
                "1500000001.M2P1.old:2,S",
                &body("gone", 30),
                1_500_000_001,
            )
            .file(
                "dovecot-uidlist",
                b"3 V1400000009 N5\n4 :1500000001.M2P1.old\n",
            )
            .file("dovecot.index.log", b"the old server's log");
        let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
        let (code, report) = h.run_job(&job);
        assert_eq!(code, 0, "{report:#}");
        let skipped = common::fixture::column(&report["mailboxes"][0]["skipped_folders"], "name");
        assert_eq!(skipped, ["Trash"], "{setting}");
        let trash = h.target_maildir("jan@example.cz").join(".Trash");
        assert_eq!(trash.exists(), present, "{setting}");
        if present {
            assert_eq!(std::fs::read_dir(trash.join("cur")).unwrap().count(), 0);
            let uidlist = std::fs::read_to_string(trash.join("dovecot-uidlist")).unwrap();
            assert!(uidlist.starts_with("3 V1400000009 N5"), "{uidlist}");
            assert_eq!(uidlist.lines().count(), 1, "{uidlist}");
            let log = std::fs::read(trash.join("dovecot.index.log")).unwrap();
            assert_eq!(log, b"the old server's log");
        }
    }
}

/// Point 3: a new Dovecot whose inbox namespace differs from the one the
/// old server's clients saw (here `INBOX.` and `.` against the old
/// server's empty prefix and `/`) would make every client download
/// everything again: `plan` says so and a cutover job is refused as a
/// configuration error naming both, before anything is frozen.
#[test]
fn a_new_server_with_another_namespace_is_refused() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-namespace-", "");
    let new = new_server(
        &s,
        "namespace inbox {\n  prefix = INBOX.\n  separator = .\n}\n",
    );
    s.ask_servers(&new);
    let cli = |args: &[&str]| {
        std::process::Command::new(common::fixture::BIN)
            .args(["--config", s.config.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let plan = cli(&["plan", "--domain", "example.cz", "--json"]);
    assert_eq!(plan.status.code(), Some(78));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let problems = plan["problems"].to_string();
    assert!(
        problems.contains(r#"prefix \"INBOX.\" and separator '.'"#)
            && problems.contains(r#"prefix \"\" and separator '/'"#),
        "{problems}"
    );
    let job = s.dir.join("example-cz.json");
    std::fs::write(&job, r#"{"domain": "example.cz", "mode": "move"}"#).unwrap();
    let run = cli(&["run", job.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("INBOX.") && stderr.contains("'/'"),
        "{stderr}"
    );
    // Nothing was touched: the old server still lets everyone in.
    assert_eq!(std::fs::read_to_string(&s.users_new).unwrap(), "");
    let (user, pass, _, _) = ACCOUNTS[0];
    let mut c = scenario::connect(&s.old);
    c.authenticate_plain(user, pass).unwrap();
    c.logout().unwrap();
}

/// What a client on the old server did, as far as the server confirmed it.
#[derive(Default, Debug)]
struct Confirmed {
    /// Subjects of APPENDs the server said OK to, and of those whose answer
    /// was lost (they may or may not have been stored).
    appended: Vec<String>,
    unanswered: Vec<String>,
    /// UID → whether it is `\Flagged` after the last STORE that was
    /// answered OK; `None` when the last one's answer was lost.
    flagged: BTreeMap<u32, Option<bool>>,
    sessions: u32,
    refused_logins: u32,
}

/// A client like a desktop one: logged in to the old server, it appends
/// and flags messages in jan's INBOX without pause and reconnects at once
/// when its session ends, until `stop`.
fn busy_client(
    port: u16,
    uids: Vec<u32>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Confirmed {
    use std::sync::atomic::Ordering;
    let (user, pass, _, _) = ACCOUNTS[0];
    let mut done = Confirmed::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = ImapClient::connect(port) else {
            continue;
        };
        if c.authenticate_plain(user, pass).is_err() {
            done.refused_logins += 1;
            continue;
        }
        done.sessions += 1;
        if c.try_select("INBOX").is_err() {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let subject = format!("live {n}");
            match c.append("INBOX", &[], None, &scenario::message(&subject, "x")) {
                Ok(()) => done.appended.push(subject),
                Err(e) if e.starts_with("I/O") => {
                    done.unanswered.push(subject);
                    break;
                }
                Err(_) => {}
            }
            let uid = uids[n % uids.len()];
            let set = (n / uids.len()).is_multiple_of(2);
            let op = if set { "+FLAGS" } else { "-FLAGS" };
            match c.uid_store(uid, op, &["\\Flagged"]) {
                Ok(()) => {
                    done.flagged.insert(uid, Some(set));
                }
                Err(e) if e.starts_with("I/O") => {
                    done.flagged.insert(uid, None);
                    break;
                }
                Err(_) => {}
            }
        }
    }
    done
}

/// A webmail-like client: one login per request, without pause, until
/// `stop`; how many were let in.
fn login_poller(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u32 {
    let (user, pass, _, _) = ACCOUNTS[0];
    let mut logins = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(mut c) = ImapClient::connect(port)
            && c.authenticate_plain(user, pass).is_ok()
        {
            logins += 1;
            let _ = c.logout();
        }
    }
    logins
}

/// Point 4: a client keeps working on the old server across the freeze.
/// With `freeze_command = doveadm kick %u` (and the old server asked
/// through `[source] doveadm`), everything the server confirmed to it is
/// in the new store, nothing twice: its reconnects are refused once the
/// login is frozen, and the final pass starts only when its session is
/// gone.
#[test]
fn a_client_busy_on_the_old_server_loses_nothing_at_the_freeze() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-busy-", "");
    let new = new_server(&s, "");
    s.ask_servers(&new);
    s.add_config(&format!(
        "[cutover]\nfreeze_command = [\"{}\", \"-c\", \"{}\", \"kick\", \"%u\"]\n",
        dovecot::DOVEADM_BIN,
        s.old.config_path().display()
    ));
    let uids = s.before[0].mailbox("INBOX").unwrap().uids();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (port, stop) = (s.old.port(), stop.clone());
        std::thread::spawn(move || busy_client(port, uids, stop))
    };
    // Logins that keep the old server's view of its passwd-file fresh:
    // Dovecot re-reads it at most once a second, so a login right after
    // the freeze may still be let in unless the job waits for the server.
    let poller = {
        let (port, stop) = (s.old.port(), stop.clone());
        std::thread::spawn(move || login_poller(port, stop))
    };
    // The client is at work before the job starts.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (code, report, stderr) = s.run_job();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = client.join().unwrap();
    let polled = poller.join().unwrap();
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert!(
        report["warnings"].as_array().unwrap().is_empty(),
        "{report:#}"
    );

    eprintln!(
        "busy client: {} sessions, {} appends confirmed, {} unanswered, {} logins refused; {polled} polling logins",
        done.sessions,
        done.appended.len(),
        done.unanswered.len(),
        done.refused_logins
    );
    let mut c = jan_on(&new);
    c.examine("INBOX");
    let inbox = c.uid_fetch_all();
    c.logout().unwrap();
    let count = |subject: &str| {
        let header = format!("Subject: {subject}\r\n");
        inbox
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.body).contains(&header))
            .count()
    };
    let lost: Vec<&String> = done.appended.iter().filter(|s| count(s) != 1).collect();
    assert!(
        lost.is_empty(),
        "{} of {} confirmed appends are not on the new server once (first: {:?})",
        lost.len(),
        done.appended.len(),
        lost.first()
    );
    for subject in &done.unanswered {
        assert!(count(subject) <= 1, "{subject} twice");
    }
    for (uid, flagged) in &done.flagged {
        let Some(flagged) = flagged else { continue };
        let m = inbox.iter().find(|m| m.uid == *uid).unwrap();
        assert_eq!(
            m.flags.contains("\\Flagged"),
            *flagged,
            "UID {uid}: the confirmed flag change is lost"
        );
    }
    assert!(
        done.appended.len() > 10 && done.refused_logins > 0,
        "the client did not work across the freeze"
    );
}

/// Point 4, without a freeze command: the job says once, in its report
/// and its log, that sessions open on the old server were not ended.
#[test]
fn a_cutover_without_a_freeze_command_warns_once() {
    let h = Host::new("");
    for user in ["jan@example.cz", "eva@example.cz"] {
        let md = h.add_user(user, "{PLAIN}x", "");
        md.folder("").msg(
            "cur",
            "1500000000.M1P1.old:2,S",
            &body(user, 30),
            1_500_000_000,
        );
    }
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let out = h.run(&["run", "--json", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("no [cutover] freeze_command"),
        "{report:#}"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("no [cutover] freeze_command").count(),
        1,
        "{log}"
    );
    // A pre-sync freezes nothing: no warning.
    let presync = h.job(
        "p",
        r#"{"domain": "example.cz", "mode": "move", "cutover": false}"#,
    );
    let out = h.run(&["run", "--json", presync.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]), "{report:#}");
}
