//! End-to-end tests against a real, private Dovecot (see `common::dovecot`).

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use common::dovecot::{self, Dovecot};
use common::imap::{self, mutf7};
use common::require::{Need, require};
use common::scenario::{ACCOUNTS, OLD_UID, Scenario, connect, message, owned_dir};

const USER1: &str = "alice@example.cz";
/// ASCII, but with `"` and `\` so LOGIN has to escape it in a quoted string.
const PASS1: &str = r#"Tr0ub4dor&3 "quoted" \back"#;
const USER2: &str = "bob@example.cz";
const PASS2: &str = "Příliš žluťoučký kůň 🐎";

const MAIL_UID: u32 = 5000;

fn flags(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn make_home(path: &Path) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    if dovecot::running_as_root() {
        std::os::unix::fs::chown(path, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
    }
}

/// The codecs need no server: known vectors from RFC 3501 and RFC 4648.
fn check_codecs() {
    assert_eq!(imap::base64_encode(b""), "");
    assert_eq!(imap::base64_encode(b"f"), "Zg==");
    assert_eq!(imap::base64_encode(b"fo"), "Zm8=");
    assert_eq!(imap::base64_encode(b"foo"), "Zm9v");
    assert_eq!(imap::base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(imap::base64_encode(b"\0u\0p"), "AHUAcA==");

    let cases = [
        ("INBOX", "INBOX"),
        ("Koš", "Ko&AWE-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        (
            "Příliš žluťoučký kůň 🐎",
            "P&AVkA7Q-li&AWE- &AX4-lu&AWU-ou&AQ0-k&AP0- k&AW8BSA- &2D3cDg-",
        ),
    ];
    for (utf8, wire) in cases {
        assert_eq!(mutf7::encode(utf8), wire, "encode {utf8:?}");
        assert_eq!(mutf7::decode(wire).as_deref(), Ok(utf8), "decode {wire:?}");
    }
    for bad in ["&AWE", "&AGE-", "&A-", "Ko\u{161}", "&2D0-", "&AWF-"] {
        assert!(mutf7::decode(bad).is_err(), "{bad:?} must not decode");
    }
}

#[test]
fn harness_smoke() {
    let t0 = Instant::now();
    check_codecs();
    require!(Need::Dovecot);
    let root = dovecot::running_as_root();
    let tmp = dovecot::scratch_dir("dovecot-e2e-");
    let dir = tmp.path();
    let home1 = dir.join("home/alice");
    let home2 = dir.join("home/bob");
    make_home(&home1);
    make_home(&home2);
    fs::set_permissions(dir.join("home"), fs::Permissions::from_mode(0o755)).unwrap();

    let hash1 = dovecot::hash_password("SHA512-CRYPT", PASS1);
    let hash2 = dovecot::hash_password("BLF-CRYPT", PASS2);
    assert!(hash1.starts_with("{SHA512-CRYPT}$6$"), "{hash1}");
    assert!(hash2.starts_with("{BLF-CRYPT}$2"), "{hash2}");
    let passwd = dir.join("passwd");
    dovecot::write_passwd_file(
        &passwd,
        &format!(
            "{}\n{}\n",
            dovecot::passwd_line(USER1, &hash1, MAIL_UID, MAIL_UID, &home1),
            dovecot::passwd_line(USER2, &hash2, MAIL_UID, MAIL_UID, &home2),
        ),
    );

    let t_start = Instant::now();
    let dc = Dovecot::start(&dir.join("server"), &passwd);
    eprintln!(
        "dovecot started on port {} in {:?}",
        dc.port(),
        t_start.elapsed()
    );

    // doveadm resolves the users through the same passwd-file.
    assert!(
        dc.user_exists(USER1),
        "doveadm user {USER1} failed:\n{}",
        dc.log()
    );
    assert!(dc.user_exists(USER2));
    assert!(!dc.user_exists("nobody@example.cz"));
    let out = dc.doveadm(&["user", USER1]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("home\t{}", home1.display())),
        "{text}"
    );
    assert!(text.contains("mail\tmaildir:~/Maildir"), "{text}");
    if root {
        assert!(
            text.contains("uid\t5000") && text.contains("gid\t5000"),
            "{text}"
        );
    }

    // Wrong passwords are refused, both ways, and the session can go on.
    let mut c = connect(&dc);
    let err = c.login(USER1, "wrong password").unwrap_err();
    assert!(err.contains("AUTHENTICATIONFAILED"), "{err}");
    let err = c
        .authenticate_plain(USER2, "Prilis zlutoucky kun")
        .unwrap_err();
    assert!(err.contains("AUTHENTICATIONFAILED"), "{err}");
    assert!(c.login("nobody@example.cz", PASS1).is_err());

    // User 1: LOGIN (quoted string with escapes).
    c.login(USER1, PASS1)
        .unwrap_or_else(|e| panic!("login {USER1}: {e}\n{}", dc.log()));
    for name in ["Koš", "Archive/2019", "Tom & Jerry"] {
        c.create(name)
            .unwrap_or_else(|e| panic!("CREATE {name}: {e}"));
    }
    assert!(
        c.create("Koš").is_err(),
        "creating an existing mailbox must fail"
    );

    let inbox_msgs = [
        (
            vec!["\\Seen"],
            "01-Jan-2019 10:00:00 +0100",
            message("first", "Ahoj"),
        ),
        (
            vec!["\\Flagged", "$Label1"],
            "14-Feb-2019 08:30:00 -0500",
            message("gone", "expunged"),
        ),
        (
            vec!["\\Answered", "\\Draft", "Work"],
            "29-Feb-2020 23:59:59 +0000",
            message("third", "Dobrý den, žluťoučký kůň"),
        ),
        (
            vec!["\\Seen", "\\Flagged", "\\Answered", "$Label1", "Work"],
            "31-Dec-1999 23:00:00 -0100",
            message("fourth", &"long line ".repeat(2000)),
        ),
    ];
    for (fl, date, body) in &inbox_msgs {
        c.append("INBOX", fl, Some(date), body).unwrap();
    }
    c.append(
        "Archive/2019",
        &["\\Seen", "$Label1"],
        Some("02-Mar-2019 12:00:00 +0000"),
        &message("old", "a"),
    )
    .unwrap();
    c.append(
        "Archive/2019",
        &[],
        Some("03-Mar-2019 12:00:00 +0000"),
        &message("older", "b"),
    )
    .unwrap();
    c.append(
        "Tom & Jerry",
        &["Work"],
        None,
        &message("cat & mouse", "🐈🐁"),
    )
    .unwrap();
    for name in ["INBOX", "Koš", "Archive/2019"] {
        c.subscribe(name).unwrap();
    }

    // Expunge UID 2 -> a gap in INBOX. The first SELECT sees all four.
    let info = c.select("INBOX");
    assert_eq!((info.exists, info.uidnext), (4, 5), "{info:?}");
    assert_ne!(info.uidvalidity, 0);
    c.uid_store(2, "+FLAGS", &["\\Deleted"]).unwrap();
    c.uid_store(3, "-FLAGS", &["\\Draft"]).unwrap();
    c.uid_store(3, "+FLAGS", &["\\Draft"]).unwrap();
    c.expunge().unwrap();
    assert_eq!(c.select("Koš").exists, 0);
    assert!(
        c.uid_fetch_all().is_empty(),
        "empty mailbox gives no messages"
    );
    assert!(c.try_select("Does not exist").is_err());

    let list = c.list();
    eprintln!("LIST: {list:#?}");
    let by_name = |n: &str| {
        list.iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n} not in {list:?}"))
    };
    assert_eq!(by_name("Koš").delimiter, Some('/'));
    assert!(by_name("Tom & Jerry").selectable());
    assert!(
        !by_name("Archive").selectable(),
        "the parent of Archive/2019 was never created"
    );

    let snap1 = c.snapshot();
    c.logout().unwrap();

    // Log in again (new session: no \Recent, same state).
    let mut c = connect(&dc);
    c.login(USER1, PASS1).unwrap();
    let snap2 = c.snapshot();
    c.logout().unwrap();
    imap::assert_snapshots_equal(&snap1, &snap2);
    eprintln!("snapshot of {USER1}: {snap2:#?}");

    assert_eq!(
        snap2.mailbox_names(),
        ["Archive/2019", "INBOX", "Koš", "Tom & Jerry"]
    );
    assert_eq!(snap2.subscriptions, ["Archive/2019", "INBOX", "Koš"]);
    let inbox = snap2.mailbox("INBOX").unwrap();
    assert_eq!(inbox.uids(), [1, 3, 4]);
    assert_eq!(inbox.uidnext, 5);
    assert_eq!(inbox.uidvalidity, info.uidvalidity);
    // Maildir keeps INTERNALDATE as the file's mtime: the instant survives,
    // the zone does not (Dovecot answers in its own zone, UTC here).
    let expected_dates = [
        (1, "01-Jan-2019 09:00:00 +0000"),
        (3, "29-Feb-2020 23:59:59 +0000"),
        (4, "01-Jan-2000 00:00:00 +0000"),
    ];
    for (uid, date) in expected_dates {
        let m = inbox.message(uid).unwrap();
        let (fl, _, body) = &inbox_msgs[uid as usize - 1];
        assert_eq!(m.flags, flags(fl), "uid {uid}");
        assert_eq!(m.internal_date, date, "uid {uid}");
        assert_eq!(&m.body, body, "uid {uid}");
        assert_eq!(m.size, body.len() as u64, "uid {uid}");
    }
    let archive = snap2.mailbox("Archive/2019").unwrap();
    assert_eq!(archive.uids(), [1, 2]);
    assert_eq!(archive.messages[0].flags, flags(&["\\Seen", "$Label1"]));
    assert!(archive.messages[1].flags.is_empty());
    assert_eq!(
        archive.messages[1].internal_date,
        "03-Mar-2019 12:00:00 +0000"
    );
    let tom = snap2.mailbox("Tom & Jerry").unwrap();
    assert_eq!(tom.messages.len(), 1);
    assert_eq!(tom.messages[0].flags, flags(&["Work"]));
    assert!(tom.messages[0].body.ends_with("🐈🐁\r\n".as_bytes()));
    assert!(snap2.mailbox("Koš").unwrap().messages.is_empty());
    let validities: BTreeSet<u32> = snap2.mailboxes.iter().map(|m| m.uidvalidity).collect();
    assert_eq!(validities.len(), 4, "each mailbox has its own UIDVALIDITY");

    // diff() describes changes per mailbox/uid/field.
    let mut changed = snap2.clone();
    changed.subscriptions.retain(|s| s != "Koš");
    changed.mailboxes.retain(|m| m.name != "Tom & Jerry");
    let inbox_c = changed
        .mailboxes
        .iter_mut()
        .find(|m| m.name == "INBOX")
        .unwrap();
    inbox_c.uidnext = 6;
    inbox_c.messages[0].flags.insert("\\Deleted".into());
    inbox_c.messages[1].body.push(b'x');
    inbox_c.messages.pop();
    let d = imap::diff(&snap2, &changed);
    eprintln!("diff example:\n  {}", d.join("\n  "));
    let expected = [
        r#"subscription "Koš": only in a"#,
        r#"mailbox "INBOX": UIDNEXT a=5 b=6"#,
        r#"mailbox "INBOX" uid 1: flags"#,
        r#"mailbox "INBOX" uid 3: body differs"#,
        r#"mailbox "INBOX" uid 4: only in a"#,
        r#"mailbox "Tom & Jerry": only in a"#,
    ];
    assert_eq!(d.len(), expected.len(), "{d:#?}");
    for (line, want) in d.iter().zip(expected) {
        assert!(
            line.starts_with(want),
            "{line:?} should start with {want:?}"
        );
    }
    assert!(imap::diff(&snap1, &snap2).is_empty());

    // Dovecot's own on-disk names (Maildir++, mUTF-7).
    let maildir = home1.join("Maildir");
    for folder in [".Ko&AWE-", ".Archive.2019", ".Tom &- Jerry"] {
        assert!(
            maildir.join(folder).join("cur").is_dir(),
            "{folder} missing in {maildir:?}"
        );
    }
    assert!(!maildir.join(".Archive").exists());
    assert_eq!(
        fs::read_dir(maildir.join("cur")).unwrap().count(),
        3,
        "INBOX files"
    );

    // User 2: AUTHENTICATE PLAIN (SASL-IR) with a UTF-8 password, then
    // LOGIN with the password as a literal.
    let mut c = connect(&dc);
    assert!(c.has_capability("SASL-IR").unwrap());
    c.authenticate_plain(USER2, PASS2)
        .unwrap_or_else(|e| panic!("AUTHENTICATE {USER2}: {e}\n{}", dc.log()));
    c.create("Příliš žluťoučký kůň 🐎").unwrap();
    c.append(
        "INBOX",
        &["\\Seen"],
        Some("05-May-2021 05:05:05 +0200"),
        &message("pro Boba", "čau"),
    )
    .unwrap();
    let snap_b1 = c.snapshot();
    c.logout().unwrap();
    let mut c = connect(&dc);
    c.login(USER2, PASS2).unwrap();
    let snap_b2 = c.snapshot();
    c.logout().unwrap();
    imap::assert_snapshots_equal(&snap_b1, &snap_b2);
    assert_eq!(
        snap_b2.mailbox_names(),
        ["INBOX", "Příliš žluťoučký kůň 🐎"]
    );
    assert_eq!(
        snap_b2.mailbox("INBOX").unwrap().messages[0].internal_date,
        "05-May-2021 03:05:05 +0000"
    );
    assert!(
        home2
            .join("Maildir/.P&AVkA7Q-li&AWE- &AX4-lu&AWU-ou&AQ0-k&AP0- k&AW8BSA- &2D3cDg-")
            .is_dir()
    );

    // A second instance alongside the first ("old" and "new" server).
    let home3 = dir.join("home/bob-new");
    make_home(&home3);
    let passwd2 = dir.join("passwd-new");
    dovecot::write_passwd_file(
        &passwd2,
        &format!(
            "{}\n",
            dovecot::passwd_line(USER2, &hash2, MAIL_UID, MAIL_UID, &home3)
        ),
    );
    let dc2 = Dovecot::start(&dir.join("server-new"), &passwd2);
    assert_ne!(dc.port(), dc2.port());
    let mut c2 = connect(&dc2);
    c2.authenticate_plain(USER2, PASS2).unwrap();
    let empty = c2.snapshot();
    c2.logout().unwrap();
    assert_eq!(empty.mailbox_names(), ["INBOX"]);
    assert!(!imap::diff(&snap_b2, &empty).is_empty());

    // Stopping leaves no process behind.
    let names = [
        dc.instance_name().to_owned(),
        dc2.instance_name().to_owned(),
    ];
    assert!(
        !dovecot::instance_pids(&names[0]).is_empty(),
        "instance processes are visible"
    );
    let log = dc.log();
    assert!(
        log.contains("Login: user=<alice@example.cz>, method=PLAIN"),
        "{log}"
    );
    assert!(
        !log.contains("Error:") && !log.contains("Fatal:"),
        "errors in the log:\n{log}"
    );
    dc2.stop();
    drop(dc);
    for name in &names {
        assert!(
            dovecot::instance_pids(name).is_empty(),
            "{name} left processes behind"
        );
    }
    eprintln!("harness_smoke took {:?}", t0.elapsed());
}

#[test]
fn migration_end_to_end() {
    require!(Need::Dovecot);
    let s = Scenario::prepare("mm-e2e-", "");
    let report = run_scenario_job(&s);
    assert_eq!(report["totals"]["mailboxes"], ACCOUNTS.len());
    for m in report["mailboxes"].as_array().unwrap() {
        assert_eq!(m["status"], "done", "{m:#}");
        assert_eq!(m["uids_preserved"], true, "{m:#}");
    }
    let mailboxes: Vec<&serde_json::Value> =
        report["mailboxes"].as_array().unwrap().iter().collect();
    s.check_reports(&mailboxes);
    s.check_servers();
}

/// Shared userdb rewritten in place while the server that reads it keeps
/// running: the same Dovecot must pick up the new home at once (passwd-file
/// reload by mtime/size) and serve the migrated mail with the same UIDs.
#[test]
fn in_place_switch_under_a_running_dovecot() {
    require!(Need::Dovecot);
    let root = dovecot::running_as_root();
    let tmp = dovecot::scratch_dir("mm-inplace-");
    let dir = tmp.path();
    owned_dir(&dir.join("old"), 0);
    owned_dir(&dir.join("new"), 0);
    let (user, pass) = ("jana@example.cz", "Heslo s mezerou a háčky");
    let home = dir.join("old/example.cz/jana");
    owned_dir(&home, MAIL_UID);
    fs::set_permissions(
        dir.join("old/example.cz"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let hash = dovecot::hash_password("SHA256-CRYPT", pass);
    let users = dir.join("users");
    dovecot::write_passwd_file(
        &users,
        &format!(
            "{}\nother@example.cz:{{PLAIN}}x:{MAIL_UID}:{MAIL_UID}::/nonexistent::\n",
            dovecot::passwd_line(user, &hash, MAIL_UID, MAIL_UID, &home)
        ),
    );
    let dc = Dovecot::start(&dir.join("server"), &users);
    let mut c = connect(&dc);
    c.authenticate_plain(user, pass).unwrap();
    c.create("Faktury/2024").unwrap();
    c.append(
        "INBOX",
        &["\\Seen", "Work"],
        Some("01-Jun-2024 10:00:00 +0000"),
        &message("a", "b"),
    )
    .unwrap();
    c.append(
        "Faktury/2024",
        &["\\Flagged"],
        Some("02-Jun-2024 10:00:00 +0000"),
        &message("c", "d"),
    )
    .unwrap();
    let before = c.snapshot();
    c.logout().unwrap();

    let owner = if root {
        format!("uid = {MAIL_UID}\ngid = {MAIL_UID}\n")
    } else {
        String::new()
    };
    fs::write(
        dir.join("config.toml"),
        format!(
            "[source]\nuserdb = \"users\"\nuserdb_format = \"passwd-file\"\nmail_root = \"old\"\n\
             [target]\nuserdb = \"users\"\nuserdb_format = \"passwd-file\"\nmail_root = \"new\"\n{owner}"
        ),
    )
    .unwrap();
    let job = dir.join("j.json");
    fs::write(
        &job,
        r#"{"domain": "example.cz", "mode": "move", "mailboxes": ["jana"]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(common::fixture::BIN)
        .args([
            "--config",
            dir.join("config.toml").to_str().unwrap(),
            "run",
            job.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Dovecot stats a passwd-file at most once per wall-clock second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let lookup = String::from_utf8(dc.doveadm(&["user", user]).stdout).unwrap();
    let new_home = dir.join("new/example.cz/jana");
    assert!(
        lookup.contains(&format!("home\t{}", new_home.display())),
        "{lookup}"
    );
    let mut c = connect(&dc);
    c.authenticate_plain(user, pass)
        .unwrap_or_else(|e| panic!("login after the switch: {e}\n{}", dc.log()));
    let after = c.snapshot();
    c.logout().unwrap();
    imap::assert_snapshots_equal(&before, &after);
    // The old Maildir is left where it was, and not served any more.
    assert!(home.join("Maildir/cur").is_dir());
    let text = fs::read_to_string(&users).unwrap();
    assert!(
        text.ends_with("other@example.cz:{PLAIN}x:5000:5000::/nonexistent::\n"),
        "{text}"
    );
}

/// Every bare crypt form gets a prefix under which Dovecot verifies it
/// (`doveadm pw -t`), and prefixed hashes pass through unchanged.
#[test]
fn carried_hashes_verify_in_dovecot() {
    use maildir_migrate::userdb::scheme::carry;
    require!(Need::Dovecot);
    let pw = "Heslo-ř 7";
    let bare = |scheme: &str| {
        dovecot::hash_password(scheme, pw)
            .split_once('}')
            .unwrap()
            .1
            .to_string()
    };
    let blf = bare("BLF-CRYPT");
    let mut cases: Vec<(String, &str)> = vec![
        (bare("MD5-CRYPT"), "MD5-CRYPT"),
        (bare("SHA256-CRYPT"), "SHA256-CRYPT"),
        (bare("SHA512-CRYPT"), "SHA512-CRYPT"),
        (bare("ARGON2ID"), "ARGON2ID"),
        (bare("ARGON2I"), "ARGON2I"),
        (bare("DES-CRYPT"), "CRYPT"),
    ];
    // $2a$, $2b$ and $2y$ hash the same way for such passwords.
    for v in ["$2a$", "$2b$", "$2y$"] {
        cases.push((format!("{v}{}", &blf[4..]), "BLF-CRYPT"));
    }
    for (hash, scheme) in &cases {
        let c = carry(hash, "CRYPT");
        assert_eq!(c.scheme.as_deref(), Some(*scheme), "{hash}");
        assert_eq!(c.value, format!("{{{scheme}}}{hash}"));
        assert!(
            dovecot::verify_hash(&c.value, pw),
            "{} does not verify",
            c.value
        );
        assert!(
            !dovecot::verify_hash(&c.value, "wrong"),
            "{} verifies a wrong password",
            c.value
        );
    }
    for scheme in ["SSHA512", "SHA512-CRYPT", "PLAIN-MD5", "CRAM-MD5", "PBKDF2"] {
        let h = dovecot::hash_password(scheme, pw);
        assert_eq!(carry(&h, "CRYPT").value, h);
        assert!(dovecot::verify_hash(&h, pw));
    }
    // A bare non-crypt value is read with the source's default scheme.
    let md5_hex = bare("PLAIN-MD5");
    let c = carry(&md5_hex, "PLAIN-MD5");
    assert_eq!(c.value, format!("{{PLAIN-MD5}}{md5_hex}"));
    assert!(dovecot::verify_hash(&c.value, pw));
}

/// Every password form Courier stores, made for a known password by the
/// same algorithms (Python's hashlib and libxcrypt), carried into the
/// Dovecot form, and checked with `doveadm pw -t`: the right password
/// verifies, a wrong one does not. Unknown forms are refused.
#[test]
fn courier_hash_forms_verify_in_dovecot() {
    use maildir_migrate::userdb::scheme::carry_courier;
    require!(Need::Dovecot);
    let pw = "Heslo-ř 7";
    let script = r#"
import base64, crypt, hashlib, hmac, sys
pw = sys.argv[1].encode()
b64 = lambda b: base64.b64encode(b).decode()
salt = b"\x01\x02\xfe\xff"
out = {
  "{MD5}": "{MD5}" + b64(hashlib.md5(pw).digest()),
  "{md5raw}": "{md5raw}" + hashlib.md5(pw).hexdigest(),
  "{MD5RAW}": "{MD5RAW}" + hashlib.md5(pw).hexdigest(),
  "{SHA}": "{SHA}" + b64(hashlib.sha1(pw).digest()),
  "{SHA256}": "{SHA256}" + b64(hashlib.sha256(pw).digest()),
  "{SHA512}": "{SHA512}" + b64(hashlib.sha512(pw).digest()),
  "{SSHA}": "{SSHA}" + b64(hashlib.sha1(pw + salt).digest() + salt),
  "$1$": crypt.crypt(sys.argv[1], "$1$abcdefgh$"),
  "$5$": crypt.crypt(sys.argv[1], "$5$abcdefghijklmnop$"),
  "$6$": crypt.crypt(sys.argv[1], "$6$rounds=6000$abcdefghijklmnop$"),
  "$y$": crypt.crypt(sys.argv[1], "$y$j9T$fin6lo1Tpld6IeuDhPf.70$"),
  "$2b$": crypt.crypt(sys.argv[1], "$2b$05$wKW04Tj8kV./a.ZKxqejju"),
  "DES": crypt.crypt(sys.argv[1], "ab"),
  "{CRYPT}$6$": "{CRYPT}" + crypt.crypt(sys.argv[1], "$6$saltsalt$"),
}
for k, v in out.items():
    print(k + "\t" + v)
"#;
    let out = std::process::Command::new("python3")
        .args(["-W", "ignore", "-c", script, pw])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut cases: Vec<(String, String, String)> = text
        .lines()
        .map(|l| {
            let (form, hash) = l.split_once('\t').unwrap();
            (form.to_string(), "systempw".to_string(), hash.to_string())
        })
        .collect();
    assert_eq!(cases.len(), 14, "{text}");
    // Courier's hmac-md5pw is the CRAM-MD5 state Dovecot computes itself.
    let cram = dovecot::hash_password("CRAM-MD5", pw);
    let hmac = cram.split_once('}').unwrap().1.to_string();
    cases.push(("hmac-md5pw".into(), "hmac-md5pw".into(), hmac));
    for (form, field, hash) in &cases {
        let c = carry_courier(field, hash).unwrap_or_else(|e| panic!("{form}: {e}"));
        assert!(
            dovecot::verify_hash(&c.value, pw),
            "{form}: {} does not verify",
            c.value
        );
        assert!(
            !dovecot::verify_hash(&c.value, "wrong"),
            "{form}: {} verifies a wrong password",
            c.value
        );
    }
    for (field, bad) in [
        ("systempw", "{FOO}abc"),
        ("systempw", "plaintext password"),
        ("hmac-md5pw", "abc"),
    ] {
        assert!(carry_courier(field, bad).is_err(), "{bad} must be refused");
    }
}

/// `[target] folder_names = "utf8"`: folder directories in raw UTF-8 and
/// `:UTF-8` in the mail location; Dovecot serves the same account.
#[test]
fn migration_to_utf8_folder_names() {
    require!(Need::Dovecot);
    let s = Scenario::prepare("mm-utf8-", "folder_names = \"utf8\"\n");
    let report = run_scenario_job(&s);
    let jan = s.dir.join("newmail/example.cz/jan/Maildir");
    assert!(jan.join(".Odeslané").is_dir(), "raw UTF-8 on disk");
    assert!(!jan.join(".Odeslan&AOk-").exists());
    let users = fs::read_to_string(&s.users_new).unwrap();
    assert!(
        users.contains("userdb_mail=maildir:~/Maildir:UTF-8"),
        "{users}"
    );
    let mailboxes: Vec<&serde_json::Value> =
        report["mailboxes"].as_array().unwrap().iter().collect();
    s.check_reports(&mailboxes);
    s.check_servers();
}

/// An old Dovecot with `LAYOUT=fs` folders, migrated into Maildir++.
#[test]
fn migration_from_fs_layout() {
    require!(Need::Dovecot);
    let s = Scenario::prepare_layout("mm-fs-src-", true, "");
    let jan_old = s.dir.join("oldmail/example.cz/jan/Maildir");
    assert!(
        jan_old.join("Archive/2019/cur").is_dir(),
        "the old server used fs"
    );
    let report = run_scenario_job(&s);
    let jan = s.dir.join("newmail/example.cz/jan/Maildir");
    assert!(jan.join(".Archive.2019/cur").is_dir());
    let mailboxes: Vec<&serde_json::Value> =
        report["mailboxes"].as_array().unwrap().iter().collect();
    s.check_reports(&mailboxes);
    s.check_servers();
}

/// Maildir++ into a new Dovecot with `LAYOUT=fs`.
#[test]
fn migration_to_fs_layout() {
    require!(Need::Dovecot);
    let s = Scenario::prepare("mm-fs-dst-", "layout = \"fs\"\n");
    let report = run_scenario_job(&s);
    let jan = s.dir.join("newmail/example.cz/jan/Maildir");
    assert!(jan.join("Archive/2019/cur").is_dir());
    assert!(!jan.join(".Archive.2019").exists());
    let users = fs::read_to_string(&s.users_new).unwrap();
    assert!(
        users.contains("userdb_mail=maildir:~/Maildir:LAYOUT=fs"),
        "{users}"
    );
    let mailboxes: Vec<&serde_json::Value> =
        report["mailboxes"].as_array().unwrap().iter().collect();
    s.check_reports(&mailboxes);
    s.check_servers();
}

/// Runs the scenario's job with `run --json`; every mailbox must succeed.
fn run_scenario_job(s: &Scenario) -> serde_json::Value {
    let (code, report, _) = s.run_job();
    assert_eq!(code, 0, "{report:#}");
    report
}

/// After the switch an agent still delivers to jan's old Maildir; the sweep
/// moves it, and the new Dovecot shows it as a new message above the
/// carried UIDNEXT while every carried UID stays as it was.
#[test]
fn swept_late_mail_appears_in_dovecot_with_a_new_uid() {
    require!(Need::Dovecot);
    let s = Scenario::prepare("mm-sweep-", "");
    run_scenario_job(&s);
    let (user, pass, _, _) = ACCOUNTS[0];
    let old_md = s.dir.join("oldmail/example.cz/jan/Maildir");
    let late = message("pozdní pošta", "late");
    let name = format!("1800000000.M1P1.mx,S={}", late.len());
    fs::write(old_md.join("tmp").join(&name), &late).unwrap();
    if dovecot::running_as_root() {
        std::os::unix::fs::chown(old_md.join("tmp").join(&name), Some(OLD_UID), Some(OLD_UID))
            .unwrap();
    }
    fs::rename(
        old_md.join("tmp").join(&name),
        old_md.join("new").join(&name),
    )
    .unwrap();
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["--config", s.config.to_str().unwrap(), "sweep", "--json"])
        .args(["--domain", "example.cz"])
        .output()
        .unwrap();
    let sweep: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(sweep["moved"], 1, "{sweep:#}");

    let new = Dovecot::start(&s.dir.join("new-server"), &s.users_new);
    let mut c = connect(&new);
    c.authenticate_plain(user, pass).unwrap();
    let after = c.snapshot();
    c.logout().unwrap();
    let before = s.before[0].mailbox("INBOX").unwrap();
    let inbox = after.mailbox("INBOX").unwrap();
    assert_eq!(inbox.uidvalidity, before.uidvalidity);
    assert_eq!(inbox.messages.len(), before.messages.len() + 1);
    for m in &before.messages {
        let got = inbox.message(m.uid).expect("carried UID kept");
        assert_eq!(got.body, m.body);
    }
    let extra: Vec<_> = inbox
        .messages
        .iter()
        .filter(|m| before.message(m.uid).is_none())
        .collect();
    assert_eq!(extra.len(), 1);
    assert!(
        extra[0].uid >= before.uidnext,
        "{} < {}",
        extra[0].uid,
        before.uidnext
    );
    assert_eq!(extra[0].body, late);
}

/// The live cutover through a real Dovecot: while the job copies, a writer
/// delivers to jan's old INBOX, flags and expunges until the freeze; after
/// the switch one more message arrives there and the sweep moves it. The
/// new server then shows exactly the old store's final messages with their
/// latest flags, and the messages that had UIDs keep them.
#[test]
fn live_changes_and_late_mail_arrive_exactly_once_in_dovecot() {
    require!(Need::Dovecot);
    let s = Scenario::prepare("mm-live-", "\n[cutover]\nfreeze_grace = 1\n");
    let inbox = s.dir.join("oldmail/example.cz/jan/Maildir");
    let root = dovecot::running_as_root();
    let own = |p: &Path| {
        if root {
            std::os::unix::fs::chown(p, Some(OLD_UID), Some(OLD_UID)).unwrap();
        }
    };
    // Enough mail that the copy is still running when the writer starts.
    for i in 0..3000 {
        let p = inbox.join(format!("cur/{}.M{i}P7.bulk:2,S", 1_650_000_000 + i));
        fs::write(&p, message(&format!("bulk {i}"), &format!("bulk body {i}"))).unwrap();
        own(&p);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, inbox, users) = (stop.clone(), inbox.clone(), s.dir.join("users.old"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let frozen = fs::read_to_string(&users).is_ok_and(|t| {
                    t.lines()
                        .any(|l| l.starts_with("jan@") && l.contains("nologin"))
                });
                if frozen {
                    break;
                }
                let i = n * 7 % 3000;
                let cur = |flags: &str| {
                    inbox.join(format!("cur/{}.M{i}P7.bulk:2,{flags}", 1_650_000_000 + i))
                };
                match n % 3 {
                    0 => {
                        let name = format!("1700000000.M{n}P8.live");
                        let tmp = inbox.join("tmp").join(&name);
                        fs::write(
                            &tmp,
                            message(&format!("live {n}"), &format!("live body {n}")),
                        )
                        .unwrap();
                        if root {
                            std::os::unix::fs::chown(&tmp, Some(OLD_UID), Some(OLD_UID)).unwrap();
                        }
                        fs::rename(&tmp, inbox.join("new").join(&name)).unwrap();
                    }
                    1 => {
                        let _ = fs::rename(cur("S"), cur("FS"));
                    }
                    _ => {
                        let _ = fs::remove_file(cur("S"));
                    }
                }
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            n
        })
    };
    run_scenario_job(&s);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let ops = writer.join().unwrap();
    assert!(ops > 10, "the writer ran during the job ({ops} operations)");

    // After the switch: one late delivery, then the sweep.
    let late = inbox.join("new/1800000000.M1P9.late");
    fs::write(&late, message("late", "late body")).unwrap();
    own(&late);
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["--config", s.config.to_str().unwrap(), "sweep", "--json"])
        .args(["--domain", "example.cz", "--mailbox", "jan"])
        .output()
        .unwrap();
    let sweep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sweep["moved"], 1, "{sweep:#}");

    // Expected: every bulk and live message still in the old INBOX, by body,
    // with its flags; the late one unread.
    let mut want: Vec<(String, BTreeSet<String>)> = Vec::new();
    for sub in ["cur", "new"] {
        for e in fs::read_dir(inbox.join(sub)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if !name.contains(".bulk") && !name.contains(".live") {
                continue;
            }
            let body = fs::read(inbox.join(sub).join(&name)).unwrap();
            let info = name.split_once(":2,").map_or("", |(_, f)| f);
            let mut f = BTreeSet::new();
            if info.contains('F') {
                f.insert("\\Flagged".to_string());
            }
            if info.contains('S') {
                f.insert("\\Seen".to_string());
            }
            want.push((String::from_utf8(body).unwrap(), f));
        }
    }
    want.push((
        String::from_utf8(message("late", "late body")).unwrap(),
        BTreeSet::new(),
    ));
    want.sort();

    let new = Dovecot::start(&s.dir.join("new-server"), &s.users_new);
    let mut c = connect(&new);
    c.authenticate_plain(ACCOUNTS[0].0, ACCOUNTS[0].1).unwrap();
    let after = c.snapshot();
    c.logout().unwrap();
    let inbox_after = after.mailbox("INBOX").unwrap();
    let before = s.before[0].mailbox("INBOX").unwrap();
    for m in &before.messages {
        let got = inbox_after.message(m.uid).expect("a carried UID is kept");
        assert_eq!((&got.flags, &got.body), (&m.flags, &m.body));
    }
    let mut got: Vec<(String, BTreeSet<String>)> = inbox_after
        .messages
        .iter()
        .filter(|m| before.message(m.uid).is_none())
        .map(|m| (String::from_utf8(m.body.clone()).unwrap(), m.flags.clone()))
        .collect();
    got.sort();
    assert_eq!(got.len(), want.len(), "exactly once each");
    assert!(got == want, "bodies and latest flags differ");
    eprintln!(
        "{ops} writer operations; {} messages match in Dovecot",
        got.len()
    );
}
