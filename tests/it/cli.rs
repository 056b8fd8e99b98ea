//! Integration tests: the real binary on generated old hosts.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::fixture::{BIN, Host, body, column, tree};
use common::require::{Need, require};
use serde_json::Value;

const JAN: &str = "jan@example.cz";
const HASH_6: &str = "$6$saltsalt$0123456789abcdefghijABCDEFGHIJ";

/// jan@example.cz with a realistic mix: localised and hierarchical
/// folders (one stored in raw UTF-8), Trash/Spam/Contacts, a look-alike,
/// control files, index files, and traps (symlinks, FIFO, tmp leftovers).
fn populate_jan(h: &Host) {
    let md = h.add_user(JAN, HASH_6, "userdb_quota_rule=*:bytes=1000000");
    let inbox = md.folder("");
    inbox
        .msg("cur", "1500000000.M1P1.old,S=40,W=42:2,S", &body("one", 40), 1_500_000_000)
        .msg("cur", "1500000100.M2P1.old,S=41:2,FRSa", &body("two", 41), 1_500_000_100)
        .msg("new", "1500000200.M3P1.old", &body("three", 50), 1_500_000_200)
        .file("dovecot-uidlist", b"3 V1400000000 N7 G0123456789abcdef0123456789abcdef\n3 :1500000000.M1P1.old,S=40,W=42\n5 W44 :1500000100.M2P1.old,S=41\n")
        .file("dovecot-keywords", b"0 $Label1\n1 Work\n")
        .file("dovecot.index", b"stale")
        .file("dovecot.index.cache", b"stale")
        .file("maildirsize", b"1000000S\n0 0\n")
        .file("subscriptions", "V\t2\n\nINBOX\nOdeslan&AOk-\nKo&AWE-\nArchive\t2019\nKontakty\nEntwürfe\n".as_bytes());
    std::fs::write(inbox.0.join("tmp/1500000300.M9P9.old"), b"half delivered").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", inbox.0.join("cur/1500000400.M4P1.old:2,S")).unwrap();
    nix::unistd::mkfifo(
        &inbox.0.join("new/1500000500.fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    md.folder(".Odeslan&AOk-")
        .msg(
            "cur",
            "1500001000.M5P1.old,S=30:2,S",
            &body("sent", 30),
            1_500_001_000,
        )
        .file(
            "dovecot-uidlist",
            b"3 V1400000001 N2\n1 :1500001000.M5P1.old,S=30\n",
        );
    md.folder(".Archive")
        .file("dovecot-uidlist", b"3 V1400000002 N1\n");
    md.folder(".Archive.2019")
        .msg(
            "cur",
            "1500002000.M6P1.old:2,",
            &body("old", 20),
            1_500_002_000,
        )
        .file(
            "dovecot-uidlist",
            b"1 1400000003 9\n8 1500002000.M6P1.old\n",
        );
    // Raw UTF-8 on disk (Dovecot with :UTF-8, or Courier 5).
    md.folder(".Entwürfe").msg(
        "cur",
        "1500003000.M7P1.old:2,D",
        &body("draft", 25),
        1_500_003_000,
    );
    md.folder(".Trash 2020").msg(
        "cur",
        "1500004000.M8P1.old:2,S",
        &body("kept", 25),
        1_500_004_000,
    );
    md.folder(".Ko&AWE-").msg(
        "cur",
        "1500005000.M9P1.old:2,ST",
        &body("trash", 25),
        1_500_005_000,
    );
    md.folder(".Ko&AWE-.2019")
        .msg("cur", "1500005100.M10P1.old:2,S", &body("trash2", 25), 1);
    md.folder(".Spam")
        .msg("new", "1500006000.M11P1.old", &body("spam", 25), 1);
    md.folder(".Kontakty")
        .msg("cur", "1500007000.M12P1.old:2,S", &body("vcard", 25), 1);
    std::os::unix::fs::symlink("/etc", md.0.join(".Evil")).unwrap();
}

fn mailbox<'a>(report: &'a Value, user: &str) -> &'a Value {
    report["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == user)
        .unwrap_or_else(|| panic!("{user} not in report {report:#}"))
}

#[test]
fn move_copies_content_and_carries_the_password() {
    let h = Host::new("uid = 5000\ngid = 5001\n");
    populate_jan(&h);
    h.add_user("other@example.org", "{PLAIN}x", "");
    let users_before = std::fs::read_to_string(&h.users_old).unwrap();
    let job = h.job("j1", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["status"], "done");
    let m = mailbox(&report, JAN);
    assert_eq!(m["status"], "done", "{m:#}");
    assert_eq!(m["messages"], 7, "{m:#}");
    assert_eq!(m["folders"], 6, "{m:#}");
    assert_eq!(
        m["uids_preserved"], false,
        "Entwürfe has messages in cur/ but no uidlist: {m:#}"
    );
    let skipped: Vec<(&str, &str)> = m["skipped_folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["kind"].as_str().unwrap_or("inside"),
            )
        })
        .collect();
    assert_eq!(
        skipped,
        [
            ("Kontakty", "contacts"),
            ("Koš", "trash"),
            ("Koš/2019", "inside"),
            ("Spam", "spam")
        ]
    );

    let src = h.old.join("example.cz/jan/Maildir");
    let dst = h.target_maildir(JAN);
    // Messages: same names, bytes and mtimes.
    for rel in [
        "cur/1500000000.M1P1.old,S=40,W=42:2,S",
        "cur/1500000100.M2P1.old,S=41:2,FRSa",
        "new/1500000200.M3P1.old",
        ".Odeslan&AOk-/cur/1500001000.M5P1.old,S=30:2,S",
        ".Archive.2019/cur/1500002000.M6P1.old:2,",
        ".Entw&APw-rfe/cur/1500003000.M7P1.old:2,D",
        ".Trash 2020/cur/1500004000.M8P1.old:2,S",
    ] {
        let (a, b) = (
            src.join(rel.replace(".Entw&APw-rfe", ".Entwürfe")),
            dst.join(rel),
        );
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{rel}"
        );
        let (ma, mb) = (
            std::fs::metadata(&a).unwrap(),
            std::fs::metadata(&b).unwrap(),
        );
        assert_eq!(ma.mtime(), mb.mtime(), "{rel}");
        assert_eq!(mb.mode() & 0o777, 0o600, "{rel}");
    }
    // Skipped folders are there, without their messages, with the old
    // UIDVALIDITY (they had no uidlist here: Dovecot gives them one).
    let t = tree(&dst);
    for emptied in [".Ko&AWE-", ".Ko&AWE-.2019", ".Spam", ".Kontakty"] {
        let messages = t
            .keys()
            .filter(|k| {
                k.starts_with(&format!("{emptied}/cur/"))
                    || k.starts_with(&format!("{emptied}/new/"))
            })
            .count();
        assert!(
            t.contains_key(emptied) && messages == 0,
            "{emptied} is there, empty"
        );
    }
    // Nothing else: no traps, tmp, indexes or quota file.
    for gone in [
        ".Evil",
        ".Entwürfe",
        "tmp/1500000300.M9P9.old",
        "cur/1500000400.M4P1.old:2,S",
        "new/1500000500.fifo",
        "dovecot.index",
        "dovecot.index.cache",
        "maildirsize",
        ".maildir-migrate-partial",
        "maildirfolder",
    ] {
        assert!(!t.contains_key(gone), "{gone} should not be in the target");
    }
    for (path, (kind, mode, _, _, _)) in &t {
        let want = if *kind == 'd' { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path}");
        assert!(*kind == 'd' || *kind == 'f', "{path}");
    }
    // Control files.
    let read = |rel: &str| String::from_utf8(std::fs::read(dst.join(rel)).unwrap()).unwrap();
    assert_eq!(
        read("dovecot-uidlist"),
        "3 V1400000000 N7 G0123456789abcdef0123456789abcdef\n3 :1500000000.M1P1.old,S=40,W=42\n5 W44 :1500000100.M2P1.old,S=41\n"
    );
    assert_eq!(
        read(".Archive.2019/dovecot-uidlist"),
        "3 V1400000003 N9\n8 :1500002000.M6P1.old\n"
    );
    assert_eq!(read(".Archive/dovecot-uidlist"), "3 V1400000002 N1\n");
    assert_eq!(read("dovecot-keywords"), "0 $Label1\n1 Work\n");
    assert_eq!(read(".Archive.2019/maildirfolder"), "");
    assert_eq!(
        read("subscriptions"),
        // Skipped folders keep their subscriptions: they are there, empty.
        "V\t2\n\nINBOX\nOdeslan&AOk-\nKo&AWE-\nArchive\t2019\nKontakty\nEntw&APw-rfe\n"
    );
    // The owners are root's to give.
    if common::require::available(Need::Root) {
        for (path, (_, _, uid, _, _)) in tree(&h.new.join("example.cz")) {
            // The manifest is the tool's own record, not the mail user's.
            let want = if path.ends_with(".maildir-migrate-manifest") {
                0
            } else {
                5000
            };
            assert_eq!(uid, want, "{path}");
        }
        let m = std::fs::metadata(dst.join("cur/1500000000.M1P1.old,S=40,W=42:2,S")).unwrap();
        assert_eq!((m.uid(), m.gid()), (5000, 5001));
    }

    // Userdbs: the old entry refuses logins but stays; other lines are
    // byte-identical; the new entry carries the hash with a prefix.
    let users_after = std::fs::read_to_string(&h.users_old).unwrap();
    let expected_old = users_before.replace(
        "userdb_quota_rule=*:bytes=1000000\n",
        "userdb_quota_rule=*:bytes=1000000 nologin reason=mailbox-migrated\n",
    );
    assert_eq!(users_after, expected_old);
    assert_eq!(
        std::fs::read_to_string(&h.users_new).unwrap(),
        format!(
            "{JAN}:{{SHA512-CRYPT}}{HASH_6}:5000:5001::{}::userdb_mail=maildir:~/Maildir userdb_quota_rule=*:bytes=1000000\n",
            h.new.join("example.cz/jan").display()
        )
    );
    // The source is left as it was (apart from the userdb).
    assert!(src.join(".Ko&AWE-/cur/1500005000.M9P1.old:2,ST").exists());
    assert!(src.join("maildirsize").exists());
}

#[test]
fn rerun_is_a_noop_and_completes_a_partial_copy() {
    let h = Host::new("");
    populate_jan(&h);
    let job = h.job(
        "j",
        r#"{"domain": "example.cz", "mode": "move", "mailboxes": ["jan"]}"#,
    );

    // A crashed earlier run: marker, one message copied, one under an old
    // flag name, one the source no longer has, a temp file in tmp/.
    let dst = h.target_maildir(JAN);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
    }
    std::fs::write(
        dst.join(".maildir-migrate-partial"),
        "job j\nuser jan@example.cz\n",
    )
    .unwrap();
    std::fs::copy(
        h.old
            .join("example.cz/jan/Maildir/cur/1500000000.M1P1.old,S=40,W=42:2,S"),
        dst.join("cur/1500000000.M1P1.old,S=40,W=42:2,S"),
    )
    .unwrap();
    std::fs::write(
        dst.join("cur/1500000100.M2P1.old,S=41:2,S"),
        body("two", 41),
    )
    .unwrap();
    std::fs::write(dst.join("cur/1400000000.GONE.old:2,S"), b"expunged since").unwrap();
    std::fs::write(dst.join("tmp/maildir-migrate.77.1"), b"half").unwrap();

    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(mailbox(&report, JAN)["messages"], 7);
    let names: Vec<String> = tree(&dst.join("cur")).into_keys().collect();
    assert_eq!(
        names,
        [
            "1500000000.M1P1.old,S=40,W=42:2,S",
            "1500000100.M2P1.old,S=41:2,FRSa"
        ]
    );
    assert!(!dst.join("tmp/maildir-migrate.77.1").exists());
    assert!(!dst.join(".maildir-migrate-partial").exists());

    let before = (
        tree(&h.root),
        std::fs::read(&h.users_old).unwrap(),
        std::fs::read(&h.users_new).unwrap(),
    );
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(mailbox(&report, JAN)["status"], "already_migrated");
    let after = (
        tree(&h.root),
        std::fs::read(&h.users_old).unwrap(),
        std::fs::read(&h.users_new).unwrap(),
    );
    assert!(
        before == after,
        "a completed job re-run must change nothing"
    );
}

#[test]
fn in_place_rewrite_keeps_the_hash_and_other_lines() {
    let h = Host::new("");
    h.write_config(
        "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n\
         [target]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\nhome = \"%d/%n/home\"\n",
    );
    let md = h.add_user(
        JAN,
        "$1$abcdefgh$zqlK0cLw7wMRRO49PNOrq0",
        "userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=1G",
    );
    md.folder("")
        .msg("cur", "1.a:2,S", &body("x", 30), 1_600_000_000);
    h.add_user("eva@example.cz", "{PLAIN}y", "");
    let before = std::fs::read_to_string(&h.users_old).unwrap();
    let job = h.job(
        "ip",
        r#"{"domain": "example.cz", "mode": "move", "mailboxes": ["jan"]}"#,
    );
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let after = std::fs::read_to_string(&h.users_old).unwrap();
    let old_jan = before.lines().find(|l| l.starts_with("jan@")).unwrap();
    let new_jan = format!(
        "{JAN}:$1$abcdefgh$zqlK0cLw7wMRRO49PNOrq0:1000:1000::{}::userdb_mail=maildir:~/Maildir userdb_quota_rule=*:storage=1G",
        h.new.join("example.cz/jan/home").display()
    );
    assert_eq!(after, before.replace(old_jan, &new_jan));
    assert!(
        h.new
            .join("example.cz/jan/home/Maildir/cur/1.a:2,S")
            .exists()
    );
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0);
    assert_eq!(mailbox(&report, JAN)["status"], "already_migrated");
}

#[test]
fn recreate_makes_an_empty_mailbox_with_the_same_password() {
    let h = Host::new("");
    let md = h.add_user(JAN, "{SSHA}6YO+9J9IzxY/+l8b0VDxKblp2nv6v104", "");
    md.folder("").msg("cur", "1.a:2,S", &body("x", 30), 1);
    md.folder(".Sent").msg("cur", "2.b:2,S", &body("y", 30), 1);
    let job = h.job("rc", r#"{"domain": "example.cz", "mode": "recreate"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let dst = h.target_maildir(JAN);
    let names: Vec<String> = tree(&dst).into_keys().collect();
    assert_eq!(names, [".maildir-migrate-manifest", "cur", "new", "tmp"]);
    assert!(
        std::fs::read_to_string(&h.users_new)
            .unwrap()
            .starts_with(&format!(
                "{JAN}:{{SSHA}}6YO+9J9IzxY/+l8b0VDxKblp2nv6v104:1000:1000::"
            ))
    );
    assert!(
        std::fs::read_to_string(&h.users_old)
            .unwrap()
            .contains("nologin reason=mailbox-migrated")
    );
}

/// `[migration] max_files_per_sec` / `max_bytes_per_sec` hold for the
/// whole run: with a bucket of a tenth of a second's worth, N files (or
/// bytes) at rate R cannot be copied in less than (N - R/10) / R seconds.
/// A lower bound only: how much slower a loaded machine is does not matter.
#[test]
fn io_limits_hold_for_the_whole_run() {
    for (limit, files, size, at_least) in [
        ("max_files_per_sec = 40", 60, 300, 1.4),
        ("max_bytes_per_sec = 100000", 20, 10_000, 1.9),
    ] {
        let h = Host::new(&format!(
            "[migration]\nthreads = 4\nfsync = false\n{limit}\n"
        ));
        let inbox = h.add_user(JAN, "{PLAIN}x", "").folder("");
        for i in 0..files {
            let name = format!("{}.M{i}.old:2,S", 1_600_000_000 + i);
            inbox.msg("cur", &name, &body(&format!("m{i}"), size), 1_600_000_000);
        }
        let job = h.job("limited", r#"{"domain": "example.cz", "mode": "move"}"#);
        let started = std::time::Instant::now();
        let (code, report) = h.run_job(&job);
        let took = started.elapsed().as_secs_f64();
        assert_eq!(code, 0, "{report:#}");
        assert_eq!(mailbox(&report, JAN)["messages"], files, "{report:#}");
        assert!(took >= at_least, "{limit}: {took:.2} s < {at_least} s");
    }
}

#[test]
fn per_mailbox_failures_do_not_stop_the_job() {
    let h = Host::new("");
    populate_jan(&h);
    // Maildir is a symlink to another user's mail.
    let evil = h.add_user("evil@example.cz", "{PLAIN}e", "");
    std::fs::create_dir_all(evil.0.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(h.old.join("example.cz/jan/Maildir"), &evil.0).unwrap();
    // Maildir outside the mail root.
    h.add_user("out@example.cz", "{PLAIN}o", "userdb_mail=maildir:/etc");
    // A folder name that is neither mUTF-7 nor UTF-8.
    let bad = h.add_user("bad@example.cz", "{PLAIN}b", "");
    bad.folder("").msg("cur", "1.a:2,S", b"x", 1);
    let latin1 = h
        .old
        .join("example.cz/bad/Maildir")
        .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b".Ko\xb9"));
    std::fs::create_dir_all(latin1.join("cur")).unwrap();
    // A different target entry already exists.
    h.add_user("taken@example.cz", "{PLAIN}t", "");
    std::fs::write(
        &h.users_new,
        "taken@example.cz:{PLAIN}other:5:5::/elsewhere::\n",
    )
    .unwrap();
    // A target Maildir with somebody else's mail in it.
    // (Frozen by an earlier run that crashed: this run must thaw it.)
    let busy = h.add_user(
        "busy@example.cz",
        "{PLAIN}b",
        "nologin reason=mailbox-migrated",
    );
    busy.folder("");
    std::fs::create_dir_all(h.target_maildir("busy@example.cz").join("cur")).unwrap();
    std::fs::write(
        h.target_maildir("busy@example.cz").join("cur/1.x:2,S"),
        b"not ours",
    )
    .unwrap();
    // A file the mailbox owner does not own (a planted hard link, say).
    let sneaky = h.add_user("sneaky@example.cz", "{PLAIN}s", "");
    sneaky.folder("").msg("cur", "1.a:2,S", b"mine", 1);
    let root = common::require::available(Need::Root);
    if root {
        std::os::unix::fs::chown(sneaky.0.join("cur/1.a:2,S"), Some(4242), None).unwrap();
    }
    let users_new_before = std::fs::read_to_string(&h.users_new).unwrap();

    let job = h.job("mixed", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["status"], "failed");
    assert_eq!(mailbox(&report, JAN)["status"], "done", "{report:#}");
    for (user, needle) in [
        ("evil@example.cz", "symlink"),
        ("out@example.cz", "outside source.mail_root"),
        ("bad@example.cz", "neither modified UTF-7 nor UTF-8"),
        ("taken@example.cz", "different entry"),
        ("busy@example.cz", "not created by maildir-migrate"),
    ]
    .into_iter()
    .chain(root.then_some(("sneaky@example.cz", "belongs to uid 4242")))
    {
        let m = mailbox(&report, user);
        assert_eq!(m["status"], "failed", "{user}");
        let err = m["error"].as_str().unwrap();
        assert!(err.contains(needle), "{user}: {err}");
    }
    // Failed mailboxes keep their old login and get no new entry.
    let old = std::fs::read_to_string(&h.users_old).unwrap();
    for l in old
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("jan@"))
    {
        assert!(!l.contains("nologin"), "{l}");
    }
    let new = std::fs::read_to_string(&h.users_new).unwrap();
    assert_eq!(new.lines().count(), 2, "{new}");
    assert!(new.starts_with(&users_new_before));
    assert_eq!(
        std::fs::read(h.target_maildir("busy@example.cz").join("cur/1.x:2,S")).unwrap(),
        b"not ours"
    );
    assert!(
        !h.new.join("example.cz/evil/Maildir/cur").exists()
            || tree(&h.new.join("example.cz/evil/Maildir/cur")).is_empty()
    );
}

#[test]
fn bad_input_is_named_and_nothing_is_written() {
    let h = Host::new("");
    populate_jan(&h);
    let snapshot = || tree(&h.root);
    let before = snapshot();
    let good_job = h.job("good", r#"{"domain": "example.cz", "mode": "move"}"#);
    let check = |out: std::process::Output, code: i32, needles: &[&str]| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
    };
    let jobs = [
        (
            "unknown",
            r#"{"domain": "example.cz", "mode": "move", "priority": 1}"#,
            "unknown field `priority`",
        ),
        (
            "malformed",
            r#"{"domain": "example.cz", "mode": "move""#,
            "line 1",
        ),
        (
            "baddomain",
            r#"{"domain": "../etc", "mode": "move"}"#,
            "domain",
        ),
        (
            "badlocal",
            r#"{"domain": "example.cz", "mode": "move", "mailboxes": ["../root"]}"#,
            "mailbox name",
        ),
        (
            "badmode",
            r#"{"domain": "example.cz", "mode": "copy"}"#,
            "unknown variant `copy`",
        ),
        (
            "bad id!",
            r#"{"domain": "example.cz", "mode": "move"}"#,
            "job id",
        ),
    ];
    for (name, text, needle) in jobs {
        let p = h.job(name, text);
        check(
            h.run(&["run", p.to_str().unwrap()]),
            65,
            &[p.to_str().unwrap(), needle],
        );
        std::fs::remove_file(p).unwrap();
    }
    check(
        h.run(&["run", h.root.join("missing.json").to_str().unwrap()]),
        74,
        &["missing.json"],
    );

    let good_config = std::fs::read_to_string(&h.config).unwrap();
    for (text, needle) in [
        (
            format!("{good_config}colour = \"blue\"\n"),
            "unknown field `colour`",
        ),
        (
            good_config.replace(
                "userdb_format = \"passwd-file\"\nmail_root = \"newmail\"",
                "userdb_format = \"courier-userdb\"\nmail_root = \"newmail\"",
            ),
            "target.userdb_format",
        ),
        (
            good_config.replace(
                "userdb_format = \"passwd-file\"\nmail_root = \"newmail\"",
                "userdb_format = \"cdb\"\nmail_root = \"newmail\"",
            ),
            "unknown variant",
        ),
        (good_config.replace("[target]", "[target\n"), "line"),
        (format!("{good_config}uid = 0\ngid = 0\n"), "uid"),
    ] {
        h.write_config(&text);
        check(
            h.run(&["run", good_job.to_str().unwrap()]),
            78,
            &[h.config.to_str().unwrap(), needle],
        );
    }
    h.write_config(&good_config.replace("oldmail", "nonexistent"));
    check(
        h.run(&["run", good_job.to_str().unwrap()]),
        78,
        &["source.mail_root", "nonexistent"],
    );
    h.write_config(&good_config);
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["run", good_job.to_str().unwrap()])
        .env("MAILDIR_MIGRATE_CONFIG", h.root.join("nope.toml"))
        .output()
        .unwrap();
    check(out, 78, &["nope.toml"]);
    check(h.run(&["frobnicate"]), 64, &["frobnicate"]);
    check(h.run(&["run"]), 64, &["JOB"]);

    std::fs::remove_file(&good_job).unwrap();
    // The test itself rewrote the config; only its content must match.
    common::fixture::set_mtime(&h.config, before["config.toml"].3);
    let after = snapshot();
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(before.keys().filter(|k| !after.contains_key(*k)))
        .collect();
    assert!(
        changed.is_empty(),
        "bad input must not write anything: {changed:?}"
    );
}

#[test]
fn plan_reports_and_writes_nothing() {
    let h = Host::new("[migration]\nskip_folders = [\"Trash 2020\"]\nkeep_folders = [\"Spam\"]\n");
    populate_jan(&h);
    h.add_user("info@example.cz", "86a3e678acdcd65f8af49ecde306b979", "");
    let before = tree(&h.root);
    let out = h.run(&["plan", "--domain", "example.cz", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jan = mailbox(&plan, JAN);
    assert_eq!(jan["status"], "pending");
    assert_eq!(jan["hash_scheme"], "SHA512-CRYPT");
    assert_eq!(jan["messages"], 7, "{jan:#}");
    let folders = column(&jan["folders"], "name");
    assert_eq!(
        folders,
        [
            "INBOX",
            "Archive",
            "Archive/2019",
            "Entwürfe",
            "Odeslané",
            "Spam"
        ]
    );
    let skipped = column(&jan["skipped_folders"], "reason");
    assert!(skipped.contains(&"listed in skip_folders"), "{skipped:?}");
    assert_eq!(mailbox(&plan, "info@example.cz")["hash_scheme"], "CRYPT");
    let text = h.run(&["plan", "--domain", "example.cz", "--mailbox", "jan"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("skip \"Koš\": trash folder"), "{text}");
    assert!(!text.contains(HASH_6), "plan must never print a hash");
    assert!(before == tree(&h.root), "plan must not write");
}

#[test]
fn human_output_and_logs_never_show_hashes() {
    let h = Host::new("");
    populate_jan(&h);
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let out = std::process::Command::new(common::fixture::BIN)
        .args([
            "--config",
            h.config.to_str().unwrap(),
            "run",
            job.to_str().unwrap(),
        ])
        .env("MAILDIR_MIGRATE_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("jan@example.cz"), "{all}");
    assert!(all.contains("skipped \"Spam\": spam folder"), "{all}");
    assert!(!all.contains("saltsalt"), "{all}");
}

#[test]
fn a_never_used_mailbox_moves_as_an_empty_one() {
    let h = Host::new("");
    h.add_user("new@example.cz", "{PLAIN}n", "");
    let job = h.job("empty", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let m = mailbox(&report, "new@example.cz");
    assert_eq!(m["status"], "done");
    assert!(
        m["warnings"][0]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{m:#}"
    );
    let names: Vec<String> = tree(&h.target_maildir("new@example.cz"))
        .into_keys()
        .collect();
    assert_eq!(names, [".maildir-migrate-manifest", "cur", "new", "tmp"]);
}

/// A Courier authlib userdb as the source: the IMAP password (imappw over
/// systempw) carried in Dovecot's form, the quota as a quota rule, the
/// Maildir from `mail=`; the old account refuses IMAP/POP3/webmail but
/// keeps its options for a rollback, and the file stays 0600.
#[test]
fn courier_userdb_source() {
    use std::os::unix::fs::PermissionsExt;
    let h = Host::new("");
    let courier = h.root.join("userdb");
    let jan_md = h.old.join("example.cz/jan/Maildir");
    let eva_home = h.old.join("example.cz/eva");
    std::fs::write(
        &courier,
        format!(
            "# Courier userdb\n5000=\tjan@example.cz\n\
             jan@example.cz\tuid=5000|gid=5000|home={}|mail={}|systempw=$1$abcdefgh$zqlK0cLw7wMRRO49PNOrq0|imappw={{MD5RAW}}86a3e678acdcd65f8af49ecde306b979|quota=1000000S,500C|options=disablewebmail=0\n\
             eva@example.cz\tuid=5000|gid=5000|home={}|systempw={{SSHA}}6YO+9J9IzxY/+l8b0VDxKblp2nv6v104\n\
             bad@example.cz\tuid=5000|gid=5000|home={}|systempw={{WEIRD}}x\n",
            h.old.join("example.cz/jan").display(),
            jan_md.display(),
            eva_home.display(),
            h.old.join("example.cz/bad").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&courier, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(&h.config).unwrap().replace(
        "userdb = \"users.old\"\nuserdb_format = \"passwd-file\"",
        "userdb = \"userdb\"\nuserdb_format = \"courier-userdb\"",
    );
    h.write_config(&config);
    let inbox = common::fixture::Maildir(jan_md).folder("");
    inbox.msg(
        "cur",
        "1500000000.M1P1.old,S=40:2,S",
        &body("one", 40),
        1_500_000_000,
    );

    let job = h.job("courier", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "bad@ fails, the others move: {report:#}");
    assert_eq!(mailbox(&report, JAN)["status"], "done", "{report:#}");
    assert_eq!(mailbox(&report, JAN)["messages"], 1);
    assert_eq!(mailbox(&report, "eva@example.cz")["status"], "done");
    let bad = mailbox(&report, "bad@example.cz");
    assert_eq!(bad["status"], "failed");
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains("unknown Courier hash form {WEIRD}") && err.contains("line 5"),
        "{err}"
    );

    let new = std::fs::read_to_string(&h.users_new).unwrap();
    assert!(
        new.contains("jan@example.cz:{PLAIN-MD5}86a3e678acdcd65f8af49ecde306b979:5000:5000::"),
        "{new}"
    );
    assert!(
        new.contains("userdb_quota_rule=*:bytes=1000000:messages=500"),
        "{new}"
    );
    assert!(
        new.contains("eva@example.cz:{SSHA}6YO+9J9IzxY/+l8b0VDxKblp2nv6v104:"),
        "{new}"
    );
    assert!(!new.contains("bad@example.cz"));
    let old = std::fs::read_to_string(&courier).unwrap();
    assert!(
        old.contains("5000=\tjan@example.cz\n"),
        "reverse line kept: {old}"
    );
    assert!(
        old.contains(
            "|options=disableimap=1,disablepop3=1,disablewebmail=1|mmfrozen=disablewebmail=0\n"
        ),
        "{old}"
    );
    assert!(
        old.contains("bad@example.cz\tuid=5000|gid=5000|home="),
        "bad@ untouched"
    );
    assert!(
        !old.lines()
            .any(|l| l.starts_with("bad@") && l.contains("disableimap"))
    );
    let mode = std::fs::metadata(&courier).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert!(
        h.target_maildir(JAN)
            .join("cur/1500000000.M1P1.old,S=40:2,S")
            .exists()
    );

    // A rerun changes nothing.
    let before = tree(&h.root);
    let (_, again) = h.run_job(&job);
    assert_eq!(mailbox(&again, JAN)["status"], "already_migrated");
    let after = tree(&h.root);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read_to_string(&courier).unwrap(), old);
}

/// `"cutover": false` copies ahead and touches no login; repeating it
/// copies only what is new; the real job then switches with the freeze
/// command run for the user (argument vector, no shell).
#[test]
fn presync_then_cutover_with_a_freeze_command() {
    let h = Host::new("");
    let args_file = h.root.join("freeze-args");
    let script = h.root.join("kick.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s|' \"$@\" >> {}\n",
            args_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&format!(
        "{cfg}[cutover]\nfreeze_command = [\"{}\", \"kick\", \"%u\", \"100%%\"]\nfreeze_grace = 1\n",
        script.display()
    ));
    let inbox = h.add_user(JAN, HASH_6, "").folder("");
    inbox.msg(
        "cur",
        "1500000000.M1P1.old:2,S",
        &body("one", 40),
        1_500_000_000,
    );
    let old_users = std::fs::read_to_string(&h.users_old).unwrap();

    let pre = h.job(
        "pre",
        r#"{"domain": "example.cz", "mode": "move", "cutover": false}"#,
    );
    let (code, report) = h.run_job(&pre);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(mailbox(&report, JAN)["status"], "presynced");
    let md = h.target_maildir(JAN);
    assert!(md.join("cur/1500000000.M1P1.old:2,S").exists());
    assert!(
        md.join(".maildir-migrate-partial").exists(),
        "still ours to finish"
    );
    assert_eq!(std::fs::read_to_string(&h.users_old).unwrap(), old_users);
    assert!(!h.users_new.exists());
    assert!(!args_file.exists(), "no freeze in a pre-sync");

    // New mail and a flag change meanwhile; a second pre-sync picks them up.
    inbox.msg(
        "new",
        "1500000100.M2P1.old",
        &body("two", 40),
        1_500_000_100,
    );
    std::fs::rename(
        inbox.0.join("cur/1500000000.M1P1.old:2,S"),
        inbox.0.join("cur/1500000000.M1P1.old:2,FS"),
    )
    .unwrap();
    let (_, report) = h.run_job(&pre);
    assert_eq!(mailbox(&report, JAN)["status"], "presynced");
    assert!(md.join("new/1500000100.M2P1.old").exists());
    assert!(md.join("cur/1500000000.M1P1.old:2,FS").exists());
    assert!(!md.join("cur/1500000000.M1P1.old:2,S").exists());

    let started = std::time::Instant::now();
    let full = h.job("full", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&full);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(mailbox(&report, JAN)["status"], "done");
    assert_eq!(mailbox(&report, JAN)["messages"], 2);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "freeze_grace waited"
    );
    assert_eq!(
        std::fs::read_to_string(&args_file).unwrap(),
        "kick|jan@example.cz|100%|"
    );
    assert!(!md.join(".maildir-migrate-partial").exists());
    assert!(std::fs::read_to_string(&h.users_new).unwrap().contains(JAN));
}

/// `verify` finds a migrated domain equal, and names each kind of damage.
#[test]
fn verify_compares_source_and_target() {
    let h = Host::new("");
    populate_jan(&h);
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let verify = |h: &Host| {
        let out = h.run(&["verify", "--domain", "example.cz", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), v)
    };
    let (code, v) = verify(&h);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    assert!(
        v["mailboxes"][0]["messages"].as_u64().unwrap() >= 5,
        "{v:#}"
    );

    // Damage the target four ways.
    let md = h.target_maildir(JAN);
    std::fs::remove_file(md.join("new/1500000200.M3P1.old")).unwrap();
    std::fs::rename(
        md.join(".Odeslan&AOk-/cur/1500001000.M5P1.old,S=30:2,S"),
        md.join(".Odeslan&AOk-/cur/1500001000.M5P1.old,S=30:2,FS"),
    )
    .unwrap();
    std::fs::create_dir_all(md.join(".Stray/cur")).unwrap();
    let users = std::fs::read_to_string(&h.users_new).unwrap();
    std::fs::write(&h.users_new, users.replace("$6$saltsalt$", "$6$other$")).unwrap();
    let (code, v) = verify(&h);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false);
    let problems = v["mailboxes"][0]["problems"].to_string();
    for needle in [
        "INBOX: 1 missing",
        "Odeslané: 0 missing (e.g. \\\"\\\"), 0 extra (e.g. \\\"\\\"), 1 with other flags",
        ".Stray",
        "password hash differs",
    ] {
        assert!(problems.contains(needle), "{needle} not in {problems}");
    }
    assert!(!problems.contains("$6$"), "no hash in the output");
}

/// `sweep` moves mail delivered to the old Maildir after the switch, and
/// only that: a message the user deleted in the new store stays deleted.
#[test]
fn sweep_moves_late_mail_exactly_once() {
    let h = Host::new("");
    let md = h.add_user(JAN, HASH_6, "");
    let inbox = md.folder("");
    let sent = md.folder(".Sent");
    inbox.msg(
        "cur",
        "1500000000.M1P1.old:2,S",
        &body("one", 40),
        1_500_000_000,
    );
    inbox.msg(
        "cur",
        "1500000001.M2P1.old:2,S",
        &body("two", 40),
        1_500_000_001,
    );
    sent.msg(
        "cur",
        "1500000002.M3P1.old:2,S",
        &body("sent", 40),
        1_500_000_002,
    );
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    assert_eq!(h.run_job(&job).0, 0);
    let target = h.target_maildir(JAN);

    // After the switch: the user deletes one message in the new store, an
    // agent with a cached location delivers two late messages to the old one.
    std::fs::remove_file(target.join("cur/1500000001.M2P1.old:2,S")).unwrap();
    inbox.msg(
        "new",
        "1700000000.M9P9.late",
        &body("late", 40),
        1_700_000_000,
    );
    sent.msg(
        "cur",
        "1700000001.M8P8.late:2,S",
        &body("late sent", 40),
        1_700_000_001,
    );

    let out = h.run(&["sweep", "--domain", "example.cz", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["moved"], 2, "{s:#}");
    assert!(target.join("new/1700000000.M9P9.late").exists());
    assert!(target.join(".Sent/cur/1700000001.M8P8.late:2,S").exists());
    assert!(
        !inbox.0.join("new/1700000000.M9P9.late").exists(),
        "moved, not copied"
    );
    assert!(
        !target.join("cur/1500000001.M2P1.old:2,S").exists(),
        "a message deleted in the new store does not come back"
    );
    // Late mail gets a UID from Dovecot: it is not in the carried uidlist.
    let uidlist = std::fs::read_to_string(target.join("dovecot-uidlist")).unwrap_or_default();
    assert!(!uidlist.contains("late"));

    // Again: nothing left to move.
    let out = h.run(&["sweep", "--domain", "example.cz", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["moved"], 0, "{s:#}");
}

/// A source folder the tool may not read (run as an ordinary user): that
/// mailbox fails naming the folder and keeps its old login; the others
/// move; nothing in the source changes.
#[test]
fn an_unreadable_source_folder_fails_only_its_mailbox() {
    require!(Need::Root);
    let h = Host::new("");
    let locked = h.add_user(JAN, "{PLAIN}x", "");
    locked.folder("").msg(
        "cur",
        "1500000000.M1P1.old:2,S",
        &body("one", 40),
        1_500_000_000,
    );
    locked.folder(".Secret").msg(
        "cur",
        "1500000001.M2P1.old:2,S",
        &body("two", 40),
        1_500_000_001,
    );
    h.add_user("eva@example.cz", "{PLAIN}y", "").folder("").msg(
        "cur",
        "1500000002.M3P1.old:2,S",
        &body("three", 40),
        1_500_000_002,
    );
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    // Nobody can only give the new tree to itself.
    let config = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&format!("{config}uid = 65534\ngid = 65534\n"));
    // Everything belongs to nobody, who then runs the job.
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&h.root)
        .status()
        .unwrap();
    assert!(chown.success());
    let mut p = h.root.clone();
    while let Some(parent) = p.parent() {
        // Let nobody reach the host directory.
        let mode = std::fs::metadata(parent).unwrap().mode();
        if mode & 0o001 == 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o001))
                .unwrap();
        }
        p = parent.to_path_buf();
    }
    let secret = locked.0.join(".Secret");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let before = tree(&h.old);
    let users_before = std::fs::read_to_string(&h.users_old).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::fixture::BIN)
        .arg("--config")
        .arg(&h.config)
        .args(["run", "--json"])
        .arg(&job)
        .env("MAILDIR_MIGRATE_LOG", "warn")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let jan = mailbox(&report, JAN);
    assert_eq!(jan["status"], "failed");
    let err = jan["error"].as_str().unwrap();
    assert!(
        err.contains(".Secret") && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(mailbox(&report, "eva@example.cz")["status"], "done");
    let now = std::fs::read_to_string(&h.users_old).unwrap();
    let jan_line = users_before.lines().find(|l| l.starts_with(JAN)).unwrap();
    assert!(
        now.contains(&format!("{jan_line}\n")),
        "jan keeps his old login"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let after = tree(&h.old);
    let differ: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v) && !k.ends_with(".Secret"))
        .map(|(k, _)| k)
        .collect();
    assert!(differ.is_empty(), "source changed: {differ:?}");
}

/// The README's first command: `demo` migrates the bundled host in a
/// scratch directory (as root or not) through the daemon: both jobs are
/// submitted, filed done, shown by `status`, and each leaves its
/// completion e-mail in the outbox.
#[test]
fn the_demo_runs() {
    let t = tempfile::Builder::new()
        .prefix("mm-demo-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = t.path().join("demo");
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["demo", "--dir"])
        .arg(&dir)
        .env("MAILDIR_MIGRATE_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("already migrated") || text.contains("migrated"),
        "{text}"
    );
    let users_new = std::fs::read_to_string(dir.join("users.new")).unwrap();
    assert_eq!(users_new.lines().count(), 5, "{users_new}");
    let verify = std::process::Command::new(common::fixture::BIN)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["verify", "--domain", "novak-stavby.cz"])
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    let jobs = [
        ("novak-stavby", "novak-stavby.cz", "majitel@novak-stavby.cz"),
        ("pekarna", "pekarna.sk", "majitel@pekarna.sk"),
    ];
    let mails: Vec<common::smtp::Parsed> = std::fs::read_dir(dir.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| common::smtp::parse_message(&std::fs::read(p).unwrap()))
        .collect();
    assert_eq!(mails.len(), jobs.len(), "one e-mail per job");
    for (id, domain, to) in jobs {
        let record: Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("spool/done/{id}.report.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(record["status"], "done", "{record}");
        assert_eq!(record["notification"]["status"], "sent", "{record}");
        assert!(
            text.lines().any(|l| l.starts_with(&format!("  {id} "))
                && l.contains(" done ")
                && l.contains(domain)
                && l.contains("e-mail sent")),
            "status shows {id} done:\n{text}"
        );
        let mail = mails
            .iter()
            .find(|m| m.header("To") == Some(to))
            .unwrap_or_else(|| panic!("no e-mail to {to}"));
        assert_eq!(
            mail.subject,
            format!("Migrace pošty {domain} dokončena / Mail migration of {domain} finished")
        );
        assert!(
            mail.body.contains("Dobrý den") && mail.body.contains("Hello"),
            "{}",
            mail.body
        );
    }
    assert!(text.contains("last finished: 2"), "{text}");
    assert!(text.contains("outbox/*.eml"), "{text}");
}

/// The hidden `man` command writes a page per command and the
/// configuration reference, and groff renders each without a warning.
#[test]
fn man_pages_are_written_and_render_cleanly() {
    let t = tempfile::Builder::new()
        .prefix("mm-man-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = t.path().join("man");
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["man", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let commands = [
        "cancel",
        "check",
        "completions",
        "daemon",
        "demo",
        "plan",
        "queue",
        "queue-init",
        "run",
        "status",
        "submit",
        "sweep",
        "verify",
    ];
    let mut expected: Vec<String> = commands
        .iter()
        .map(|c| format!("maildir-migrate-{c}.1"))
        .chain(["maildir-migrate.1".into(), "maildir-migrate.toml.5".into()])
        .collect();
    expected.sort();
    assert_eq!(pages, expected);

    require!(Need::Groff);
    for page in &pages {
        // Plain text (-P-cbou: no overstrike, no escapes); -ww: every warning.
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(dir.join(page))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{page}: {stderr}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NAME"), "{page}: {text}");
        if page.ends_with(".5") {
            for shown in ["[source.queries]", "[notify]", "Default:", "Example:"] {
                assert!(text.contains(shown), "{shown} missing:\n{text}");
            }
        }
    }
}

/// A reader that goes away (`| head`) ends a command quietly, not with a
/// panic (Rust ignores SIGPIPE, so a write gets EPIPE instead).
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let h = Host::new("");
    h.add_user("jan@a.cz", "{PLAIN}x", "").folder("");
    for args in [
        &["plan", "--domain", "a.cz", "--json"][..],
        &["plan", "--domain", "a.cz"][..],
        &["completions", "bash"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&h.config)
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
