//! A store made by the real Courier-IMAP 5 (fixtures/courier) migrated and
//! served by a real Dovecot: every account logs in with its original
//! password (hashes made by Courier's own tools), and jana's mailbox shows
//! what Courier reported: folders, UIDVALIDITY, UIDNEXT, UIDs, flags,
//! keywords, dates, sizes, subscriptions and POP3 UIDLs.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::dovecot::{self, Dovecot};
use common::imap::ImapClient;
use common::require::{COURIER_ROOT, Need, require};
use common::scenario::owned_dir;
use serde_json::Value;

const STORE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/courier/store");
const JANA: &str = "jana@example.cz";
const PASSWORD: &str = "Secr3t-pass";

fn json(name: &str) -> Value {
    serde_json::from_slice(&fs::read(Path::new(STORE).join(name)).unwrap()).unwrap()
}

/// `14-Feb-2019 07:30:00 +0000` → seconds since the epoch.
fn epoch(date: &str) -> i64 {
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (d, rest) = date.trim().split_once('-').unwrap();
    let (mon, rest) = rest.split_once('-').unwrap();
    let (year, rest) = rest.split_once(' ').unwrap();
    let (time, zone) = rest.split_once(' ').unwrap();
    let hms: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    let (y, m, d): (i64, i64, i64) = (
        year.parse().unwrap(),
        months.iter().position(|x| *x == mon).unwrap() as i64 + 1,
        d.trim().parse().unwrap(),
    );
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let zh: i64 = zone[1..3].parse().unwrap();
    let zm: i64 = zone[3..5].parse().unwrap();
    days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2] - sign * (zh * 3600 + zm * 60)
}

fn connect(dc: &Dovecot) -> ImapClient {
    ImapClient::connect(dc.port()).expect("connect to Dovecot")
}

#[test]
fn courier_store_migrates_to_dovecot() {
    require!(Need::Dovecot);
    assert_eq!(epoch("01-Jan-1970 01:00:00 +0100"), 0);
    let expected = json("expected.json");
    let hashes = json("hashes.json");
    let tmp = dovecot::scratch_dir("mm-courier-");
    let dir = tmp.path();
    let (old, new) = (dir.join("oldmail"), dir.join("newmail"));
    owned_dir(&old, 0);
    owned_dir(&new, 0);

    // The userdb Courier's `userdb` tool wrote, moved into this host, plus
    // one account per hash Courier's tools made (no Maildir: never used).
    let mut userdb = fs::read_to_string(Path::new(STORE).join("userdb"))
        .unwrap()
        .replace("/srv/mail", old.to_str().unwrap());
    let mut logins: Vec<(String, String)> = ["jan", "jana", "info", "petr", "marie"]
        .iter()
        .map(|u| (format!("{u}@example.cz"), PASSWORD.to_string()))
        .collect();
    let mut unusable = Vec::new();
    for (i, h) in hashes.as_array().unwrap().iter().enumerate() {
        let user = format!("h{i}@example.cz");
        let field = h["userdb_field"].as_str().unwrap();
        userdb.push_str(&format!(
            "{user}\tuid=5000|gid=5000|home={}|{field}={}\n",
            old.join(format!("example.cz/h{i}")).display(),
            h["hash"].as_str().unwrap()
        ));
        if field == "hmac-sha1pw" {
            unusable.push(user);
        } else {
            logins.push((user, h["password"].as_str().unwrap().to_string()));
        }
    }
    let userdb_path = dir.join("userdb");
    fs::write(&userdb_path, &userdb).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&userdb_path, fs::Permissions::from_mode(0o600)).unwrap();

    let jana_home = old.join("example.cz/jana");
    owned_dir(&jana_home, 0);
    let tar = std::process::Command::new("tar")
        .args(["--no-same-owner", "-xzf"])
        .arg(Path::new(STORE).join("Maildir.tar.gz"))
        .arg("-C")
        .arg(&jana_home)
        .status()
        .unwrap();
    assert!(tar.success());

    let owner = if dovecot::running_as_root() {
        "uid = 5000\ngid = 5000\n"
    } else {
        ""
    };
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "[source]\nuserdb = \"userdb\"\nuserdb_format = \"courier-userdb\"\nmail_root = \"oldmail\"\n\
             [target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\n{owner}"
        ),
    )
    .unwrap();
    let job = dir.join("courier.json");
    fs::write(&job, r#"{"domain": "example.cz", "mode": "move"}"#).unwrap();
    let out = std::process::Command::new(common::fixture::BIN)
        .args(["--config", config.to_str().unwrap(), "run", "--json"])
        .arg(&job)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let mailboxes = report["mailboxes"].as_array().unwrap();
    let by_user = |u: &str| mailboxes.iter().find(|m| m["user"] == u).unwrap();
    // Only the accounts whose sole password is HMAC-SHA1 fail, and say why.
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    for m in mailboxes {
        let user = m["user"].as_str().unwrap();
        if unusable.iter().any(|u| u == user) {
            assert_eq!(m["status"], "failed");
            assert!(
                m["error"]
                    .as_str()
                    .unwrap()
                    .contains("nothing Dovecot could verify"),
                "{m:#}"
            );
        } else {
            assert_eq!(m["status"], "done", "{m:#}");
        }
    }
    let jana = by_user(JANA);
    assert_eq!(jana["uids_preserved"], true, "{jana:#}");
    let skipped: BTreeSet<&str> = common::fixture::column(&jana["skipped_folders"], "name")
        .into_iter()
        .collect();
    assert_eq!(
        skipped,
        ["Koš", "Nevyžádaná pošta", "Spam"].into_iter().collect()
    );
    // No Courier file reached the target.
    for e in walkdir::WalkDir::new(&new) {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with("courier"), "{name} copied");
    }
    let old_db = fs::read_to_string(&userdb_path).unwrap();
    let jana_line = old_db.lines().find(|l| l.starts_with("jana@")).unwrap();
    assert!(jana_line.contains("options=disableimap=1,disablepop3=1,disablewebmail=1"));

    // verify agrees for the migrated accounts (Courier keywords included).
    let v = std::process::Command::new(common::fixture::BIN)
        .args(["--config", config.to_str().unwrap(), "verify", "--json"])
        .args([
            "--domain",
            "example.cz",
            "--mailbox",
            "jana",
            "--mailbox",
            "jan",
        ])
        .output()
        .unwrap();
    let verdict: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v.status.code(), Some(0), "{verdict:#}");
    assert_eq!(verdict["mailboxes"][0]["messages"], 17, "{verdict:#}");

    // The new server.
    let users_new = dir.join("users.new");
    if dovecot::running_as_root() {
        let text = fs::read_to_string(&users_new).unwrap();
        dovecot::write_passwd_file(&users_new, &text);
    }
    let dc = Dovecot::start(&dir.join("new-server"), &users_new);
    for (user, pass) in &logins {
        let mut c = connect(&dc);
        c.authenticate_plain(user, pass)
            .unwrap_or_else(|e| panic!("{user} with its Courier password: {e}\n{}", dc.log()));
        c.logout().unwrap();
        let mut c = connect(&dc);
        assert!(c.authenticate_plain(user, "wrong").is_err(), "{user}");
    }
    let mut c = connect(&dc);
    c.authenticate_plain(JANA, PASSWORD).unwrap();
    let after = c.snapshot();
    c.logout().unwrap();

    let mut seen = Vec::new();
    for f in expected["folders"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        if f["selectable"] == false {
            continue;
        }
        let mb = after
            .mailbox(name)
            .unwrap_or_else(|| panic!("{name} missing; Dovecot has {:?}", after.mailbox_names()));
        seen.push(name);
        if skipped.contains(name) {
            // Not migrated, but there: empty, Courier's UIDVALIDITY and at
            // least its UIDNEXT, so a client sees the messages expunged.
            assert!(mb.messages.is_empty(), "{name}: {mb:?}");
            let uidvalidity = f["uidvalidity"].as_u64().unwrap();
            assert_eq!(mb.uidvalidity as u64, uidvalidity, "{name}");
            assert!(
                mb.uidnext as u64 >= f["uidnext"].as_u64().unwrap(),
                "{name}"
            );
            continue;
        }
        assert_eq!(
            mb.uidvalidity as u64,
            f["uidvalidity"].as_u64().unwrap(),
            "{name}"
        );
        let uidnext = f["uidnext_after_courier_scan"]
            .as_u64()
            .or(f["uidnext"].as_u64())
            .unwrap();
        assert_eq!(mb.uidnext as u64, uidnext, "{name} UIDNEXT");
        let msgs = f["messages"].as_array().unwrap();
        assert_eq!(mb.messages.len(), msgs.len(), "{name}: {mb:?}");
        for m in msgs {
            let uid = m["uid"]
                .as_u64()
                .or(m["courier_assigned_uid_on_next_scan"].as_u64())
                .unwrap_or_else(|| panic!("{name}: no UID for {m}")) as u32;
            let got = mb
                .message(uid)
                .unwrap_or_else(|| panic!("{name}: UID {uid} missing: {:?}", mb.uids()));
            let mut want: BTreeSet<String> = BTreeSet::new();
            for k in ["flags", "keywords"] {
                want.extend(
                    m[k].as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string()),
                );
            }
            assert_eq!(got.flags, want, "{name} UID {uid} flags");
            assert_eq!(
                got.size,
                m["rfc822_size"].as_u64().unwrap(),
                "{name} UID {uid}"
            );
            assert_eq!(
                epoch(&got.internal_date),
                m["internaldate_epoch"].as_i64().unwrap(),
                "{name} UID {uid} date {}",
                got.internal_date
            );
        }
    }
    let names: BTreeSet<&str> = after.mailbox_names().into_iter().collect();
    let wanted: BTreeSet<&str> = seen.iter().copied().collect();
    assert_eq!(names, wanted, "no extra folders");

    // Subscriptions: Courier's file without INBOX. (skipped folders too:
    // they are there, empty).
    let mut subs: Vec<String> = expected["subscriptions_file"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let s = s.as_str().unwrap();
            let s = s.strip_prefix("INBOX.").unwrap_or(s);
            s.split('.')
                .map(|l| common::imap::mutf7::decode(l).unwrap_or_else(|_| l.to_string()))
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    subs.sort();
    assert_eq!(after.subscriptions, subs);

    // POP3: Dovecot gives the UIDLs Courier's pop3d gave (or would give).
    if common::require::available(Need::Pop3) {
        let port = dc.pop3_port().expect("POP3 is served when installed");
        let got = common::pop3::uidl(port, JANA, PASSWORD).unwrap();
        let inbox = &expected["folders"][0];
        assert_eq!(inbox["name"], "INBOX");
        let want: Vec<&str> = inbox["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["pop3_uidl"].as_str().unwrap())
            .collect();
        let got: Vec<&str> = got.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(got, want);
    }
    let log = dc.log();
    assert!(
        !log.contains("Error:") && !log.contains("Fatal:"),
        "errors in the new server's log:\n{log}"
    );

    // Courier's clients saw `INBOX.` and `.`: a new server that shows
    // folders otherwise (this one: no prefix, `/`) is a problem for a
    // cutover; one with Courier's namespace is not.
    let base = fs::read_to_string(&config).unwrap();
    let plan = |server: &Dovecot| {
        fs::write(
            &config,
            format!(
                "{base}[verify]\ndoveadm = \"{}\"\ndoveadm_config = \"{}\"\n",
                dovecot::DOVEADM_BIN,
                server.config_path().display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::fixture::BIN)
            .args(["--config", config.to_str().unwrap(), "plan", "--json"])
            .args(["--domain", "example.cz"])
            .output()
            .unwrap();
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), plan["problems"].to_string())
    };
    let (code, problems) = plan(&dc);
    assert_eq!(code, Some(78), "{problems}");
    assert!(
        problems.contains(r#"prefix \"INBOX.\" and separator '.'"#),
        "{problems}"
    );
    drop(dc);
    let courier_like = Dovecot::start_configured(
        &dir.join("courier-like-server"),
        dovecot::Auth::PasswdFile(users_new.clone()),
        "namespace inbox {\n  prefix = INBOX.\n  separator = .\n}\n",
    );
    assert_eq!(plan(&courier_like), (Some(0), "[]".to_string()));
}

/// Damaged Courier metadata costs only what it described, per folder, and
/// says so: every message is still copied.
#[test]
fn damaged_courier_metadata_falls_back_per_folder() {
    let h = common::fixture::Host::new("");
    let home = h.old.join("example.cz/jana");
    fs::create_dir_all(&home).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["--no-same-owner", "-xzf"])
        .arg(Path::new(STORE).join("Maildir.tar.gz"))
        .arg("-C")
        .arg(&home)
        .status()
        .unwrap();
    assert!(tar.success());
    let md = home.join("Maildir");
    // A truncated uiddb, a garbled keyword list, a garbled subscription line.
    fs::write(md.join(".Odeslané/courierimapuiddb"), b"1 79595").unwrap();
    fs::write(md.join("courierimapkeywords/:list"), b"Work\n\nbase:x y\n").unwrap();
    let mut subs = fs::read(md.join("courierimapsubscribed")).unwrap();
    subs.extend_from_slice(b"INBOX.\xff\xfe\n");
    fs::write(md.join("courierimapsubscribed"), subs).unwrap();
    let userdb = h.root.join("userdb");
    fs::write(
        &userdb,
        format!(
            "jana@example.cz\tuid=5000|gid=5000|home={}|systempw=$1$abcdefgh$zqlK0cLw7wMRRO49PNOrq0\n",
            home.display()
        ),
    )
    .unwrap();
    let config = fs::read_to_string(&h.config).unwrap().replace(
        "userdb = \"users.old\"\nuserdb_format = \"passwd-file\"",
        "userdb = \"userdb\"\nuserdb_format = \"courier-userdb\"",
    );
    h.write_config(&config);
    let job = h.job("j", r#"{"domain": "example.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let m = &report["mailboxes"][0];
    assert_eq!(m["status"], "done");
    assert_eq!(m["uids_preserved"], false, "Odeslané lost its UIDs");
    let warnings: Vec<&str> = m["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let has = |needle: &str| warnings.iter().any(|w| w.contains(needle));
    assert!(has("Odeslané: courierimapuiddb"), "{warnings:#?}");
    assert!(has("INBOX: courierimapkeywords/:list"), "{warnings:#?}");
    assert!(has("subscription"), "{warnings:#?}");
    // Every message of every kept folder arrived.
    let expected = json("expected.json");
    let want: u64 = expected["folders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !["Koš", "Spam", "Nevyžádaná pošta"].contains(&f["name"].as_str().unwrap()))
        .map(|f| f["messages"].as_array().map_or(0, |v| v.len() as u64))
        .sum();
    assert_eq!(m["messages"], want);
    let target = h.target_maildir("jana@example.cz");
    let uidlist = fs::read_to_string(target.join(".Odeslan&AOk-/dovecot-uidlist"));
    assert!(uidlist.is_err(), "no uidlist from a broken uiddb");
    assert!(!target.join("dovecot-keywords").exists());
    let inbox_uidlist = fs::read_to_string(target.join("dovecot-uidlist")).unwrap();
    assert!(
        inbox_uidlist.starts_with("3 V795958065 N"),
        "{inbox_uidlist}"
    );
}

/// With `makeuserdb` configured, the freeze reaches `userdb.dat`, which is
/// what authlib reads: Courier's own makeuserdb (from the packages the
/// fixture builder unpacked) compiles the edited text, checked with gdbmtool.
#[test]
fn makeuserdb_publishes_the_freeze_to_authlib() {
    require!(Need::Courier, Need::Gdbmtool);
    let root = Path::new(COURIER_ROOT);
    let script = root.join("usr/sbin/makeuserdb");
    let h = common::fixture::Host::new("");
    // Courier's script with its helper's path pointed into the unpacked tree.
    let makedat = root.join("usr/lib/courier/courier-authlib/makedatprog");
    let patched = h.root.join("makeuserdb.pl");
    fs::write(
        &patched,
        fs::read_to_string(&script).unwrap().replace(
            "/usr/lib/courier/courier-authlib/makedatprog",
            makedat.to_str().unwrap(),
        ),
    )
    .unwrap();
    let wrapper = h.root.join("makeuserdb");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nLD_LIBRARY_PATH={0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu exec perl {1} \"$@\"\n",
            root.display(),
            patched.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let userdb = h.root.join("userdb");
    fs::write(
        &userdb,
        fs::read_to_string(Path::new(STORE).join("userdb"))
            .unwrap()
            .replace("/srv/mail", h.old.to_str().unwrap()),
    )
    .unwrap();
    fs::set_permissions(&userdb, fs::Permissions::from_mode(0o600)).unwrap();
    let config = fs::read_to_string(&h.config).unwrap().replace(
        "userdb = \"users.old\"\nuserdb_format = \"passwd-file\"",
        &format!(
            "userdb = \"userdb\"\nuserdb_format = \"courier-userdb\"\nmakeuserdb = \"{}\"",
            wrapper.display()
        ),
    );
    h.write_config(&config);
    let job = h.job(
        "j",
        r#"{"domain": "example.cz", "mode": "move", "mailboxes": ["jana"]}"#,
    );
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let fetch = |key: &str, file: &str| {
        let out = std::process::Command::new("gdbmtool")
            .arg(h.root.join(file))
            .args(["fetch", key])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let jana = fetch("jana@example.cz", "userdb.dat");
    assert!(
        jana.contains("options=disableimap=1,disablepop3=1,disablewebmail=1"),
        "userdb.dat: {jana}"
    );
    let jan = fetch("jan@example.cz", "userdb.dat");
    assert!(
        jan.contains("uid=5000") && !jan.contains("disableimap"),
        "{jan}"
    );
    assert!(
        fetch("jana@example.cz", "userdbshadow.dat").contains("systempw="),
        "passwords stay in the shadow file"
    );
}

/// The freeze command shipped for Courier sources (`systemd/courier-kick`)
/// ends the sessions of the one user, real Courier imapd processes, and
/// returns once they are gone; another user's session stays.
#[test]
fn courier_kick_ends_only_that_users_sessions() {
    require!(Need::Courier, Need::Root);
    let root = Path::new(COURIER_ROOT);
    let tmp = dovecot::scratch_dir("mm-courier-kick-");
    let imapd = |user: &str| {
        let home = tmp.path().join(user);
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(home.join("Maildir").join(sub)).unwrap();
        }
        let lib = [
            "usr/lib/x86_64-linux-gnu",
            "lib/x86_64-linux-gnu",
            "usr/lib",
        ]
        .map(|d| root.join(d).display().to_string())
        .join(":");
        let mut child = std::process::Command::new(root.join("usr/bin/imapd"))
            .arg("Maildir")
            .current_dir(&home)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LD_LIBRARY_PATH", lib)
            .env("HOME", &home)
            .env("AUTHENTICATED", user)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Logged in: the greeting is there.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("PREAUTH") {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0);
        }
        (child, out)
    };
    let (mut jana, _jana_out) = imapd("jana@example.cz");
    let (mut other, _other_out) = imapd("other@example.org");
    let kick =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/courier-kick"))
            .arg("jana@example.cz")
            .output()
            .unwrap();
    assert!(
        kick.status.success(),
        "{}",
        String::from_utf8_lossy(&kick.stderr)
    );
    // Gone when the command returned (only the zombie is left to reap).
    let gone = std::fs::read_to_string(format!("/proc/{}/stat", jana.id()))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true);
    assert!(gone, "jana's imapd still runs");
    assert!(jana.wait().is_ok());
    assert!(
        other.try_wait().unwrap().is_none(),
        "another user's session was ended"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}
