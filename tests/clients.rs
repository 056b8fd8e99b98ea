//! What a mail client that synced with the old server sees on the new one:
//! folders that are not migrated, CONDSTORE/QRESYNC modification
//! sequences, the namespace its folder names live in, a session left open
//! on the old server across the freeze, and keywords it set. Real Dovecot
//! on both sides, spoken to over IMAP as the clients do.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::dovecot::{self, Dovecot};
use common::fixture::{Host, body, is_root};
use common::imap::{ImapClient, Resync};
use common::scenario::{self, ACCOUNTS, Scenario};

fn needs_root_and_dovecot(test: &str) -> bool {
    if !dovecot::require_dovecot(test) {
        return false;
    }
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (Dovecot serves mail as other uids)");
        return false;
    }
    true
}

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
    if !needs_root_and_dovecot("no_flag_change_after_the_switch_is_missed_by_a_qresync_client") {
        return;
    }
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
    if !needs_root_and_dovecot("skipped_folders_show_their_messages_expunged") {
        return;
    }
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
    if !needs_root_and_dovecot("a_new_server_with_another_namespace_is_refused") {
        return;
    }
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
    assert!(stderr.contains("INBOX.") && stderr.contains("'/'"), "{stderr}");
    // Nothing was touched: the old server still lets everyone in.
    assert_eq!(std::fs::read_to_string(&s.users_new).unwrap(), "");
    let (user, pass, _, _) = ACCOUNTS[0];
    let mut c = scenario::connect(&s.old);
    c.authenticate_plain(user, pass).unwrap();
    c.logout().unwrap();
}
