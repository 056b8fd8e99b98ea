//! A success report is a promise: each test here is a way a run used to
//! say `done` (or `verify` said `equal`) while a user could not log in or
//! read their mail, or a way bad data crashed the run. The real binary on
//! generated hosts; the ones that need it prove the result through a real
//! Dovecot.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::fixture::{Host, body};
use common::require::{Need, require};
use serde_json::Value;

const HASH: &str = "{PLAIN}secret";

fn mailbox<'a>(report: &'a Value, user: &str) -> &'a Value {
    report["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == user)
        .unwrap_or_else(|| panic!("{user} not in report {report:#}"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A user with one message in INBOX and one in `.Sent`.
fn two_folder_user(h: &Host, user: &str) -> common::fixture::Maildir {
    let md = one_message_user(h, user, "");
    md.folder(".Sent").msg(
        "cur",
        "1500000005.M5P1.old:2,S",
        &body("s", 30),
        1_500_000_005,
    );
    md
}

/// Every entry below `dir` (but the tool's own manifest) belongs to
/// `uid`:`gid`, directories 0700 and files 0600.
fn assert_owned(dir: &Path, uid: u32, gid: u32) {
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        if entry.file_name() == ".maildir-migrate-manifest" {
            continue;
        }
        let m = entry.metadata().unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (uid, gid, want),
            "{}",
            entry.path().display()
        );
    }
}

/// A user with one message in INBOX.
fn one_message_user(h: &Host, user: &str, extra: &str) -> common::fixture::Maildir {
    let md = h.add_user(user, HASH, extra);
    md.folder("").msg(
        "cur",
        "1500000000.M1P1.old,S=40:2,S",
        &body(user, 40),
        1_500_000_000,
    );
    md
}

/// A7: a whole-domain job for a domain the source does not know (a typo)
/// is an error, not an empty success.
#[test]
fn a_job_for_a_domain_without_mailboxes_fails() {
    let h = Host::new("");
    one_message_user(&h, "jan@example.cz", "");
    let job = h.job("typo", r#"{"domain": "exmaple.cz", "mode": "move"}"#);
    let out = h.run(&["run", "--json", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no mailboxes of exmaple.cz in the source userdb"),
        "{}",
        stderr(&out)
    );
}

/// A9: a partial copy left by a job for another user is never claimed.
#[test]
fn a_marker_naming_another_user_is_a_conflict() {
    let h = Host::new("");
    one_message_user(&h, "jan@example.cz", "");
    let target = h.target_maildir("jan@example.cz");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(target.join(sub)).unwrap();
    }
    std::fs::write(target.join("cur/1.other:2,S"), "someone else's mail").unwrap();
    std::fs::write(
        target.join(".maildir-migrate-partial"),
        "job j\nuser eva@example.org\n",
    )
    .unwrap();
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "{report:#}");
    let m = mailbox(&report, "jan@example.cz");
    assert!(
        m["error"]
            .as_str()
            .unwrap()
            .contains("not created by maildir-migrate"),
        "{m:#}"
    );
    assert!(target.join("cur/1.other:2,S").exists());
    let old = std::fs::read_to_string(&h.users_old).unwrap();
    assert!(!old.contains("nologin"), "the old login stays: {old}");
}

/// B10: mail locations and Courier fields that used to panic the run
/// fail only their own mailbox; the job goes on and says so.
#[test]
fn bad_locations_fail_only_their_mailbox() {
    let h = Host::new("");
    one_message_user(&h, "jan@example.cz", "");
    one_message_user(&h, "eva@example.cz", "userdb_mail=maildir:~/Maildir:LAYOUT");
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(mailbox(&report, "jan@example.cz")["status"], "done");
    let eva = mailbox(&report, "eva@example.cz");
    assert_eq!(eva["status"], "failed", "{eva:#}");
    assert!(eva["error"].as_str().unwrap().contains("LAYOUT"), "{eva:#}");
    let out = h.run(&["verify", "--domain", "example.cz", "--mailbox", "eva"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// D16: a file name with a newline must not forge a line in the log, the
/// human report or the JSON report's strings.
#[test]
fn names_cannot_forge_log_lines() {
    let forged = "2026-12-01T00:00:00Z  INFO forged: job finished";
    let host = || {
        let h = Host::new("");
        let md = one_message_user(&h, "jan@example.cz", "");
        nix::unistd::mkfifo(
            &md.0.join(format!("cur/x\n{forged}")),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
        (h, job)
    };
    let (h, job) = host();
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["--config", h.config.to_str().unwrap(), "run"])
        .arg(&job)
        .env("MAILDIR_MIGRATE_LOG", "info")
        .output()
        .unwrap();
    let (log, human) = (stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(human.contains("not a regular file"), "{human}");
    for text in [&log, &human.to_string()] {
        assert!(!text.lines().any(|l| l.starts_with(forged)), "{text}");
    }
    let (h, job) = host();
    let (_, report) = h.run_job(&job);
    let warnings = &mailbox(&report, "jan@example.cz")["warnings"];
    for w in warnings.as_array().unwrap() {
        assert!(!w.as_str().unwrap().contains('\n'), "{warnings}");
    }
}

/// D15: a 40 MB one-line control file costs that folder its UIDs, and is
/// quoted in a few bytes, not in full, in the report and the log.
#[test]
fn a_huge_control_file_is_quoted_briefly() {
    let h = Host::new("");
    let md = one_message_user(&h, "jan@example.cz", "");
    let mut junk = b"3 V1 N2\n1 :".to_vec();
    junk.extend(std::iter::repeat_n(b'A', 40 << 20));
    std::fs::write(md.0.join("dovecot-uidlist"), &junk).unwrap();
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let out = h.run(&["run", "--json", job.to_str().unwrap()]);
    assert!(
        out.stdout.len() < 64 << 10,
        "report of {} bytes",
        out.stdout.len()
    );
    assert!(
        out.stderr.len() < 64 << 10,
        "log of {} bytes",
        out.stderr.len()
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = mailbox(&report, "jan@example.cz");
    assert_eq!(m["status"], "done", "{m:#}");
    assert_eq!(m["uids_preserved"], false, "{m:#}");
}

/// D14: a message over `max_message_size` (here a sparse 5 GiB file that
/// would become 5 GiB of real blocks) fails its mailbox, naming the file,
/// before anything is copied; the old login stays.
#[test]
fn an_oversized_message_fails_its_mailbox_before_copying() {
    let h = Host::new("");
    let md = one_message_user(&h, "jan@example.cz", "");
    one_message_user(&h, "eva@example.cz", "");
    let big = md.0.join("cur/1600000000.M2P2.old:2,S");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(5 << 30)
        .unwrap();
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "{report:#}");
    let jan = mailbox(&report, "jan@example.cz");
    let err = jan["error"].as_str().unwrap();
    assert!(
        err.contains("1600000000.M2P2.old") && err.contains("max_message_size"),
        "{err}"
    );
    assert_eq!(mailbox(&report, "eva@example.cz")["status"], "done");
    assert!(
        !h.target_maildir("jan@example.cz")
            .join("cur/1500000000.M1P1.old,S=40:2,S")
            .exists(),
        "nothing copied for a mailbox that cannot finish"
    );
    let old = std::fs::read_to_string(&h.users_old).unwrap();
    let jan_line = old.lines().find(|l| l.starts_with("jan@")).unwrap();
    assert!(!jan_line.contains("nologin"), "{jan_line}");
}

/// D17: claimed sizes that add up past 2^64 saturate instead of wrapping.
#[test]
fn byte_totals_saturate() {
    let h = Host::new("");
    one_message_user(&h, "eva@example.cz", "");
    let md = one_message_user(&h, "jan@example.cz", "");
    md.folder("").msg(
        "cur",
        "1500000001.M2P1.old,S=18446744073709551615:2,S",
        &body("x", 10),
        1_500_000_001,
    );
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (_, report) = h.run_job(&job);
    let bytes = report["totals"]["bytes"].as_u64().unwrap();
    assert_eq!(bytes, u64::MAX, "{report:#}");
}

/// D18: unusable roots and userdbs are configuration errors naming the key.
#[test]
fn unusable_roots_and_userdbs_are_config_errors() {
    let h = Host::new("");
    one_message_user(&h, "jan@example.cz", "");
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let base = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(h.root.join("afile"), "").unwrap();
    std::fs::create_dir_all(h.root.join("adir")).unwrap();
    for (config, key) in [
        (
            base.replace("mail_root = \"newmail\"", "mail_root = \"/\""),
            "target.mail_root",
        ),
        (
            base.replace("mail_root = \"oldmail\"", "mail_root = \"/\""),
            "source.mail_root",
        ),
        (
            base.replace("mail_root = \"newmail\"", "mail_root = \"oldmail/new\""),
            "source.mail_root",
        ),
        (
            base.replace("mail_root = \"newmail\"", "mail_root = \"afile\""),
            "target.mail_root",
        ),
        (
            base.replace("userdb = \"users.old\"", "userdb = \"adir\""),
            "source.userdb",
        ),
        (
            base.replace("userdb = \"users.new\"", "userdb = \"adir\""),
            "target.userdb",
        ),
    ] {
        h.write_config(&config);
        let out = h.run(&["run", "--json", job.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(78), "{key}: {}", stderr(&out));
        assert!(stderr(&out).contains(key), "{key}: {}", stderr(&out));
    }
    h.write_config(&base);
    assert!(
        std::fs::read_to_string(&h.users_old)
            .unwrap()
            .lines()
            .all(|l| !l.contains("nologin")),
        "nothing was frozen"
    );
}

/// D18: an entry Dovecot accepts but the freeze could not write back is
/// found by `plan` and fails its mailbox before anything is copied.
#[test]
fn an_entry_that_cannot_be_frozen_fails_before_the_copy() {
    let h = Host::new("");
    one_message_user(&h, "jan@example.cz", "");
    let md = one_message_user(&h, "eva@example.cz", "");
    // One extra trailing colon (Dovecot reads it fine).
    let users = std::fs::read_to_string(&h.users_old).unwrap();
    let users = users.replace("example.cz/eva::\n", "example.cz/eva:::\n");
    std::fs::write(&h.users_old, &users).unwrap();
    let out = h.run(&["plan", "--domain", "example.cz", "--json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let eva = mailbox(&plan, "eva@example.cz");
    assert_ne!(eva["status"], "pending", "{eva:#}");
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(mailbox(&report, "eva@example.cz")["status"], "failed");
    assert!(
        !h.target_maildir("eva@example.cz").join("cur").exists(),
        "nothing copied for {}",
        md.0.display()
    );
}

/// A2 (without Dovecot): directories a crash left root-only before they
/// got their owner are repaired before the switch, and `verify` checks
/// owner and mode of everything.
#[test]
fn owner_and_mode_are_asserted_before_the_switch_and_verified() {
    require!(Need::Root);
    let h = Host::new("");
    two_folder_user(&h, "jan@example.cz");
    let target = h.target_maildir("jan@example.cz");
    for sub in ["cur", "new", "tmp"] {
        let p = target.join(sub);
        std::fs::create_dir_all(&p).unwrap();
        for d in [&p, &target, target.parent().unwrap()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    // Host's users carry uid/gid 1000; no target uid/gid is configured.
    assert_owned(target.parent().unwrap(), 1000, 1000);
    let users_new = std::fs::read_to_string(&h.users_new).unwrap();
    assert!(users_new.contains(":1000:1000:"), "{users_new}");
    let verify = |h: &Host| h.run(&["verify", "--domain", "example.cz"]);
    let out = verify(&h);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Damage: a folder that only root can enter, a message of another owner.
    std::fs::set_permissions(target.join(".Sent"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(
        target.join("cur/1500000000.M1P1.old,S=40:2,S"),
        Some(0),
        Some(0),
    )
    .unwrap();
    let out = verify(&h);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(".Sent") && text.contains("mode 755"),
        "{text}"
    );
    assert!(
        text.contains("1500000000.M1P1.old") && text.contains("uid 0"),
        "{text}"
    );
    let _ = Path::new("");
}

// ---------------------------------------------------------------------------
// Through a real Dovecot
// ---------------------------------------------------------------------------

use common::dovecot::{self, Dovecot};
use common::scenario::{ACCOUNTS, Scenario};

/// Runs the scenario's whole-domain job; returns (exit code, report).
fn run_scenario(s: &Scenario) -> (i32, Value) {
    let (code, report, _) = s.run_job();
    (code, report)
}

fn verify_json(config: &Path) -> (i32, Value) {
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["--config", config.to_str().unwrap(), "verify", "--json"])
        .args(["--domain", "example.cz"])
        .output()
        .unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    (out.status.code().unwrap(), v)
}

/// A1: without `[target] uid/gid` the new entries carry the source's uid
/// (5001 here) and the tree must belong to exactly that uid: a real Dovecot
/// serves every folder to every user (it answered [SERVERBUG] on a tree
/// that stayed root's).
#[test]
fn without_target_ids_the_tree_belongs_to_the_uid_of_the_new_entry() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-noids-", "");
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, config.replace("uid = 5000\ngid = 5000\n", "")).unwrap();
    let (code, report) = run_scenario(&s);
    assert_eq!(code, 0, "{report:#}");
    let users_new = std::fs::read_to_string(&s.users_new).unwrap();
    assert!(users_new.contains(":5001:5001:"), "{users_new}");
    s.check_servers();
    let (code, v) = verify_json(&s.config);
    assert_eq!(code, 0, "{v:#}");
}

/// A2: a crash between creating a directory and giving it its owner (here
/// made by hand with umask 077) is repaired before the switch: Dovecot
/// reads every folder.
#[test]
fn a_root_only_maildir_left_by_a_crash_is_repaired_before_the_switch() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-crashdirs-", "");
    let md = s.dir.join("newmail/example.cz/jan/Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    for d in ["example.cz", "example.cz/jan", "example.cz/jan/Maildir"] {
        let p = s.dir.join("newmail").join(d);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let (code, report) = run_scenario(&s);
    assert_eq!(code, 0, "{report:#}");
    s.check_servers();
    let (code, v) = verify_json(&s.config);
    assert_eq!(code, 0, "{v:#}");
}

/// A3: verify asks the new server itself when `[verify] doveadm` is set:
/// equal on a good migration; a userdb its auth process cannot read
/// fails every mailbox although every file is in place.
#[test]
fn verify_asks_the_new_dovecot() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-doveadm-", "");
    let (code, report) = run_scenario(&s);
    assert_eq!(code, 0, "{report:#}");
    let new = Dovecot::start(&s.dir.join("new-server"), &s.users_new);
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!(
            "{config}[verify]\ndoveadm = \"{}\"\ndoveadm_config = \"{}\"\n",
            dovecot::DOVEADM_BIN,
            new.config_path().display()
        ),
    )
    .unwrap();
    let (code, v) = verify_json(&s.config);
    assert_eq!(code, 0, "{v:#}");
    // Every folder the new server shows is what was copied, and running
    // Dovecot over the mailboxes (it writes its own files) keeps it equal.
    let (code, v) = verify_json(&s.config);
    assert_eq!(code, 0, "after Dovecot wrote its indexes: {v:#}");
    // Dovecot's auth process can no longer read the new userdb.
    std::os::unix::fs::chown(&s.users_new, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&s.users_new, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Dovecot re-reads a passwd-file only when its mtime moves.
    let later = std::fs::metadata(&s.users_new).unwrap().mtime() + 5;
    common::fixture::set_mtime(&s.users_new, later);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, v) = verify_json(&s.config);
    assert_eq!(code, 1, "{v:#}");
    let problems = v["mailboxes"][0]["problems"].to_string();
    assert!(problems.contains("doveadm user"), "{problems}");
    drop(new);
    let _ = ACCOUNTS;
}

/// A8: two files with one base name and different flags are two messages:
/// the mailbox is done, and the new Dovecot shows both (the first with
/// its carried UID, the other as a message of its own).
#[test]
fn a_duplicate_base_name_migrates_as_two_messages() {
    require!(Need::Dovecot, Need::Root);
    let s = Scenario::prepare("mm-dup-", "");
    let inbox = s.dir.join("oldmail/example.cz/jan/Maildir/cur");
    let (a, b) = (
        inbox.join("1710000000.M5P5.mx:2,S"),
        inbox.join("1710000000.M5P5.mx:2,F"),
    );
    std::fs::write(&a, common::scenario::message("dup one", "first body here")).unwrap();
    std::fs::write(&b, common::scenario::message("dup two", "second body")).unwrap();
    for f in [&a, &b] {
        std::os::unix::fs::chown(
            f,
            Some(common::scenario::OLD_UID),
            Some(common::scenario::OLD_UID),
        )
        .unwrap();
    }
    let (code, report) = run_scenario(&s);
    assert_eq!(code, 0, "{report:#}");
    let (user, pass, _, _) = ACCOUNTS[0];
    let new = Dovecot::start(&s.dir.join("new-server"), &s.users_new);
    let mut c = common::scenario::connect(&new);
    c.authenticate_plain(user, pass).unwrap();
    let snap = c.snapshot();
    c.logout().unwrap();
    let inbox = snap.mailbox("INBOX").unwrap();
    let subjects: Vec<String> = inbox
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .filter(|b| b.contains("Subject: dup"))
        .collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    let before = &s.before[0].mailbox("INBOX").unwrap().messages.len();
    assert_eq!(inbox.messages.len(), before + 2);
}

// ---------------------------------------------------------------------------
// One passwd-file for old and new (in place)
// ---------------------------------------------------------------------------

/// A4: after an in-place switch (the one entry now names the new home),
/// `verify` finds the old Maildir through the manifest and says equal,
/// and `sweep` moves mail that still arrived in the old Maildir.
#[test]
fn in_place_verify_and_sweep_work() {
    let h = Host::new("");
    let config = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("userdb = \"users.new\"", "userdb = \"users.old\"");
    h.write_config(&config);
    let md = two_folder_user(&h, "jan@example.cz");
    one_message_user(&h, "eva@example.cz", "");
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let users = std::fs::read_to_string(&h.users_old).unwrap();
    assert!(users.contains("newmail/example.cz/jan"), "{users}");
    let out = h.run(&["verify", "--domain", "example.cz", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["mailboxes"][0]["messages"], 2, "{v:#}");
    // Late mail in the old Maildir, and damage verify must see.
    md.folder("").msg(
        "new",
        "1700000000.M9P9.late",
        &body("late", 40),
        1_700_000_000,
    );
    let out = h.run(&["verify", "--domain", "example.cz", "--mailbox", "jan"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the late message is a difference"
    );
    let out = h.run(&["sweep", "--domain", "example.cz", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{s:#}");
    assert_eq!(s["moved"], 1, "{s:#}");
    let target = h.target_maildir("jan@example.cz");
    assert!(target.join("new/1700000000.M9P9.late").exists());
    assert!(!md.0.join("new/1700000000.M9P9.late").exists());
}

// ---------------------------------------------------------------------------
// Other writers of the source userdb
// ---------------------------------------------------------------------------

/// A6: a control panel that rewrites the source passwd-file from a copy it
/// read earlier (read-modify-rename, ignoring our lock) undoes each freeze
/// right after it is made (here: as the freeze command). Every old login
/// ends refused anyway, and each mailbox's report says it was re-applied.
#[test]
fn a_panel_that_undoes_the_freeze_is_caught() {
    let h = Host::new("");
    for u in ["a", "b", "c"] {
        one_message_user(&h, &format!("{u}@example.cz"), "");
    }
    let saved = h.root.join("users.panel-copy");
    std::fs::copy(&h.users_old, &saved).unwrap();
    let script = format!(
        "cp {0} {1}.panel && mv {1}.panel {1}",
        saved.display(),
        h.users_old.display()
    );
    let config = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&format!(
        "{config}[cutover]\nfreeze_command = [\"/bin/sh\", \"-c\", {script:?}]\n"
    ));
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let users = std::fs::read_to_string(&h.users_old).unwrap();
    for u in ["a", "b", "c"] {
        let line = users
            .lines()
            .find(|l| l.starts_with(&format!("{u}@")))
            .unwrap();
        assert!(line.contains("nologin"), "{u}'s old login works: {users}");
        let m = mailbox(&report, &format!("{u}@example.cz"));
        assert!(
            m["warnings"]
                .to_string()
                .contains("undid the refusal of the old login"),
            "{m:#}"
        );
    }
    let out = h.run(&["verify", "--domain", "example.cz"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A6: lines a `>>` appender adds to the source passwd-file while the job
/// freezes mailboxes are never lost.
#[test]
fn lines_appended_during_a_job_are_kept() {
    let h = Host::new("");
    for i in 0..40 {
        one_message_user(&h, &format!("u{i}@example.cz"), "");
    }
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (stop, path) = (stop.clone(), h.users_old.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = std::fs::File::options().append(true).open(&path).unwrap();
                f.write_all(
                    format!("appended{n}@other.org:{{PLAIN}}x:1:1::/nonexistent::\n").as_bytes(),
                )
                .unwrap();
                drop(f);
                n += 1;
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
            n
        })
    };
    let (code, report) = h.run_job(&job);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = appender.join().unwrap();
    assert_eq!(code, 0, "{report:#}");
    let users = std::fs::read_to_string(&h.users_old).unwrap();
    let lost: Vec<usize> = (0..n)
        .filter(|i| !users.contains(&format!("appended{i}@other.org:")))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {n} appended lines lost: {lost:?}",
        lost.len()
    );
    assert_eq!(users.matches("nologin").count(), 40);
}

/// A switch that fails before anything is written (here the new userdb's
/// directory turns immutable right after the freeze) fails the mailbox
/// with its old login back: no user is left with neither login.
#[test]
fn a_switch_that_writes_nothing_gives_the_old_login_back() {
    require!(Need::Root);
    let h = Host::new("");
    one_message_user(&h, "jan@example.cz", "");
    let db = h.root.join("newdb");
    std::fs::create_dir(&db).unwrap();
    let config = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("userdb = \"users.new\"", "userdb = \"newdb/users.new\"");
    h.write_config(&format!(
        "{config}[cutover]\nfreeze_command = [\"/usr/bin/chattr\", \"+i\", {:?}]\n",
        db.display().to_string()
    ));
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&db)
        .status();
    let m = mailbox(&report, "jan@example.cz");
    if m["warnings"].to_string().contains("freeze command") {
        common::require::skip(&format!("needs a working chattr +i: {m}"));
        return;
    }
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(m["status"], "failed", "{m:#}");
    let old = std::fs::read_to_string(&h.users_old).unwrap();
    assert!(!old.contains("nologin"), "the old login is back: {old}");
    assert!(!db.join("users.new").exists());
}

/// A pre-sync written for one owner, then the job run after the target's
/// owner changed: every message file (not only the directories) ends up
/// the new owner's before the switch.
#[test]
fn a_changed_owner_reaches_every_file_before_the_switch() {
    require!(Need::Root);
    let h = Host::new("uid = 5000\ngid = 5000\n");
    two_folder_user(&h, "jan@example.cz");
    let presync = h.job(
        "pre",
        r#"{"domain": "example.cz", "mode": "move", "cutover": false}"#,
    );
    let (code, report) = h.run_job(&presync);
    assert_eq!(code, 0, "{report:#}");
    let config = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&config.replace("uid = 5000\ngid = 5000\n", "uid = 5001\ngid = 5002\n"));
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    assert_owned(&h.target_maildir("jan@example.cz"), 5001, 5002);
}
