//! The migration scenario shared by the engine's and the daemon's
//! end-to-end tests: an old Dovecot fills the old store over IMAP
//! (localised and nested folders, Trash/Spam/Contacts and look-alikes,
//! flags, keywords, dates, expunge gaps, subscriptions, hashes in several
//! forms); after the migration a new Dovecot must serve every account
//! identically, with the original passwords.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::dovecot::{self, Dovecot};
use super::imap::{self, ImapClient};

pub fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.cz>\r\nTo: Bob <bob@example.cz>\r\nSubject: {subject}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

pub fn connect(dc: &Dovecot) -> ImapClient {
    ImapClient::connect(dc.port()).expect("connect to Dovecot")
}

pub const OLD_UID: u32 = 5001;

/// (user, password, scheme as generated, written bare without its prefix?)
pub const ACCOUNTS: &[(&str, &str, &str, bool)] = &[
    ("jan@example.cz", "Zedník2024!", "SHA512-CRYPT", false),
    ("info@example.cz", "info-heslo-7", "MD5-CRYPT", true),
    ("petra@example.cz", "Petra.Kytka.88", "BLF-CRYPT", false),
    (
        "ota@example.cz",
        "Příliš žluťoučký kůň 🐎",
        "SSHA512",
        false,
    ),
    ("eva@example.cz", "eva pass 6", "SHA512-CRYPT", true),
    ("des@example.cz", "abcdefgh", "DES-CRYPT", true),
];
/// On another domain: must stay on the old server, untouched.
pub const OTHER: (&str, &str) = ("other@example.org", "jiná doména");

pub fn owned_dir(path: &Path, uid: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    if dovecot::running_as_root() {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    }
}

/// Fills jan's old mailbox over IMAP: localised and nested folders, the
/// three kinds that are not migrated, look-alikes that are, flags,
/// keywords, dates, expunge gaps and subscriptions.
fn fill_jan(c: &mut ImapClient) {
    for name in [
        "Odeslané",
        "Koš",
        "Koš/2019",
        "Spam",
        "Contacts",
        "Trash 2020",
        "Spam reports",
        "Archive/2019",
        "Tom & Jerry",
        "Entwürfe",
    ] {
        c.create(name)
            .unwrap_or_else(|e| panic!("CREATE {name}: {e}"));
    }
    let msgs: &[(&str, &[&str], &str)] = &[
        ("INBOX", &["\\Seen"], "01-Jan-2019 10:00:00 +0100"),
        (
            "INBOX",
            &["\\Flagged", "$Label1"],
            "14-Feb-2019 08:30:00 -0500",
        ),
        (
            "INBOX",
            &["\\Answered", "\\Draft", "Work"],
            "29-Feb-2020 23:59:59 +0000",
        ),
        (
            "INBOX",
            &[
                "\\Seen",
                "\\Flagged",
                "\\Answered",
                "$Label1",
                "Work",
                "$Forwarded",
            ],
            "31-Dec-1999 23:00:00 -0100",
        ),
        ("INBOX", &[], "02-Jan-2021 07:00:00 +0000"),
        ("Odeslané", &["\\Seen"], "03-Jan-2021 08:00:00 +0000"),
        (
            "Odeslané",
            &["\\Seen", "$Label2"],
            "04-Jan-2021 08:00:00 +0000",
        ),
        (
            "Koš",
            &["\\Seen", "\\Deleted"],
            "05-Jan-2021 08:00:00 +0000",
        ),
        ("Koš/2019", &["\\Seen"], "06-Jan-2019 08:00:00 +0000"),
        ("Spam", &[], "07-Jan-2021 08:00:00 +0000"),
        ("Contacts", &["\\Seen"], "08-Jan-2021 08:00:00 +0000"),
        ("Trash 2020", &["\\Seen"], "09-Jan-2020 08:00:00 +0000"),
        ("Spam reports", &["\\Flagged"], "10-Jan-2021 08:00:00 +0000"),
        (
            "Archive/2019",
            &["\\Seen", "$Label1"],
            "02-Mar-2019 12:00:00 +0000",
        ),
        ("Archive/2019", &[], "03-Mar-2019 12:00:00 +0000"),
        ("Archive/2019", &["\\Seen"], "04-Mar-2019 12:00:00 +0000"),
        ("Tom & Jerry", &["Work"], "11-Jan-2021 08:00:00 +0000"),
        ("Entwürfe", &["\\Draft"], "12-Jan-2021 08:00:00 +0000"),
    ];
    for (i, (mbox, fl, date)) in msgs.iter().enumerate() {
        let body = message(
            &format!("zpráva {i} v {mbox}"),
            &"Dobrý den, žluťoučký kůň.\r\n".repeat(i * 7 + 1),
        );
        c.append(mbox, fl, Some(date), &body).unwrap();
    }
    // UID gaps: expunge INBOX uid 2 and Archive/2019 uid 2.
    for (mbox, uid) in [("INBOX", 2), ("Archive/2019", 2)] {
        c.select(mbox);
        c.uid_store(uid, "+FLAGS", &["\\Deleted"]).unwrap();
        c.expunge().unwrap();
    }
    c.select("INBOX");
    c.uid_store(5, "+FLAGS", &["\\Seen"]).unwrap();
    // Keywords a client sets on stored messages (not at APPEND).
    c.select("Odeslané");
    c.uid_store(1, "+FLAGS", &["Projekt-X", "$MDNSent"])
        .unwrap();
    c.select("Archive/2019");
    c.uid_store(3, "+FLAGS", &["$Forwarded"]).unwrap();
    for name in [
        "INBOX",
        "Odeslané",
        "Koš",
        "Spam",
        "Archive/2019",
        "Entwürfe",
        "Trash 2020",
    ] {
        c.subscribe(name).unwrap();
    }
}

/// Whether the folder is one the migration deliberately leaves behind.
pub fn is_skipped(name: &str) -> bool {
    ["Koš", "Spam", "Contacts"]
        .iter()
        .any(|p| name == *p || name.starts_with(&format!("{p}/")))
}

/// What a snapshot of the old server becomes on the new one: the folders
/// that are not migrated are there, empty, with their UIDVALIDITY and
/// UIDNEXT and their subscriptions (so a client sees their messages
/// expunged instead of pushing its copies back).
pub fn with_skipped_emptied(mut s: imap::AccountSnapshot) -> imap::AccountSnapshot {
    for m in s.mailboxes.iter_mut().filter(|m| is_skipped(&m.name)) {
        m.messages.clear();
    }
    s
}

/// The old host, filled and snapshotted, with a config for the migration.
pub struct Scenario {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub old: Dovecot,
    /// Every account as the old server showed it, in `ACCOUNTS` order.
    pub before: Vec<imap::AccountSnapshot>,
    pub config: PathBuf,
    pub users_new: PathBuf,
}

impl Scenario {
    /// Builds the old host; `extra_config` is appended to the config.
    pub fn prepare(prefix: &str, extra_config: &str) -> Scenario {
        Scenario::prepare_layout(prefix, false, extra_config)
    }

    /// With `source_fs` the old server stores folders in `LAYOUT=fs`
    /// (and the config says so).
    pub fn prepare_layout(prefix: &str, source_fs: bool, extra_config: &str) -> Scenario {
        let tmp = dovecot::scratch_dir(prefix);
        let dir = tmp.path().to_path_buf();
        let root = dovecot::running_as_root();
        let (old_root, new_root) = (dir.join("oldmail"), dir.join("newmail"));
        owned_dir(&old_root, 0);
        owned_dir(&new_root, 0);

        // The old host: one passwd-file, hashes in several forms (some bare).
        let mut lines = String::from("# old mail host\n");
        let mut homes = Vec::new();
        for &(user, pass, scheme, bare) in
            ACCOUNTS.iter().chain([&(OTHER.0, OTHER.1, "PLAIN", false)])
        {
            let mut hash = dovecot::hash_password(scheme, pass);
            if bare {
                hash = hash.split_once('}').unwrap().1.to_string();
            }
            let (local, domain) = user.split_once('@').unwrap();
            let home = old_root.join(domain).join(local);
            owned_dir(&home, OLD_UID);
            fs::set_permissions(home.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
            let mut line = dovecot::passwd_line(user, &hash, OLD_UID, OLD_UID, &home);
            if source_fs {
                line = line.replace("maildir:~/Maildir", "maildir:~/Maildir:LAYOUT=fs");
            }
            if user.starts_with("petra@") {
                line.push_str(" userdb_quota_rule=*:bytes=2147483648");
            }
            lines.push_str(&line);
            lines.push('\n');
            homes.push(home);
        }
        let users_old = dir.join("users.old");
        dovecot::write_passwd_file(&users_old, &lines);
        let old = Dovecot::start(&dir.join("old-server"), &users_old);

        // Fill the old store through the old server.
        let mut before = Vec::new();
        for (i, &(user, pass, _, _)) in ACCOUNTS.iter().enumerate() {
            let mut c = connect(&old);
            c.authenticate_plain(user, pass)
                .unwrap_or_else(|e| panic!("old login {user}: {e}\n{}", old.log()));
            if i == 0 {
                fill_jan(&mut c);
            } else {
                c.create("Sent").unwrap();
                c.append(
                    "INBOX",
                    &["\\Seen"],
                    Some("01-Feb-2022 10:00:00 +0000"),
                    &message(user, "ahoj"),
                )
                .unwrap();
                c.append(
                    "Sent",
                    &[],
                    Some("02-Feb-2022 10:00:00 +0000"),
                    &message("odesláno", "x"),
                )
                .unwrap();
                c.subscribe("Sent").unwrap();
            }
            c.logout().unwrap();
        }
        // A message a delivery agent dropped into new/ that no IMAP client has
        // seen yet, then the state every client knows.
        let jan_md = homes[0].join("Maildir");
        let fresh_body = message("čerstvá pošta", "nová");
        let fresh = jan_md.join(format!("new/1700000000.M1P1.mx,S={}", fresh_body.len()));
        fs::write(&fresh, &fresh_body).unwrap();
        if root {
            std::os::unix::fs::chown(&fresh, Some(OLD_UID), Some(OLD_UID)).unwrap();
        }
        for &(user, pass, _, _) in ACCOUNTS {
            let mut c = connect(&old);
            c.authenticate_plain(user, pass).unwrap();
            before.push(c.snapshot());
            c.logout().unwrap();
        }
        assert!(
            before[0].mailbox("Koš/2019").is_some() && before[0].mailbox("Spam reports").is_some()
        );
        assert_eq!(before[0].mailbox("INBOX").unwrap().messages.len(), 5);
        // A folder stored in raw UTF-8 (as Courier 5 or `:UTF-8` write it):
        // the old Dovecot cannot open it, the new one must.
        let raw = jan_md.join(if source_fs { "Přílohy" } else { ".Přílohy" });
        for sub in ["cur", "new", "tmp"] {
            owned_dir(&raw.join(sub), OLD_UID);
        }
        let attachment_body = message("příloha", "pdf");
        let attachment = raw.join(format!(
            "cur/1600000000.M2P2.mx,S={}:2,S",
            attachment_body.len()
        ));
        fs::write(&attachment, &attachment_body).unwrap();
        super::fixture::set_mtime(&attachment, 1_600_000_000);
        fs::write(
            raw.join("dovecot-uidlist"),
            format!(
                "3 V1234567 N8\n7 :1600000000.M2P2.mx,S={}\n",
                attachment_body.len()
            ),
        )
        .unwrap();
        if root {
            for f in [&attachment, &raw.join("dovecot-uidlist")] {
                std::os::unix::fs::chown(f, Some(OLD_UID), Some(OLD_UID)).unwrap();
            }
        }

        // Migrate the domain.
        let users_new = dir.join("users.new");
        let owner = if root { "uid = 5000\ngid = 5000\n" } else { "" };
        let source_layout = if source_fs { "layout = \"fs\"\n" } else { "" };
        let config = dir.join("config.toml");
        fs::write(
        &config,
        format!(
            "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n{source_layout}\
             [target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\n{owner}{extra_config}"
        ),
    )
    .unwrap();
        Scenario {
            _tmp: tmp,
            dir,
            old,
            before,
            config,
            users_new,
        }
    }

    /// Runs a move job for example.cz with `run --json`: (exit code,
    /// report, stderr).
    pub fn run_job(&self) -> (i32, serde_json::Value, String) {
        let job = self.dir.join("example-cz.json");
        fs::write(&job, r#"{"domain": "example.cz", "mode": "move"}"#).unwrap();
        let out = std::process::Command::new(super::fixture::BIN)
            .args(["--config", self.config.to_str().unwrap(), "run", "--json"])
            .arg(&job)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        (out.status.code().unwrap(), report, stderr)
    }

    /// Appends `text` to the config.
    pub fn add_config(&self, text: &str) {
        let config = fs::read_to_string(&self.config).unwrap();
        fs::write(&self.config, format!("{config}{text}")).unwrap();
    }

    /// Lets the job ask the old server (`[source] doveadm`) and the new
    /// one (`[verify] doveadm`, with the config of `new`).
    pub fn ask_servers(&self, new: &Dovecot) {
        let config = fs::read_to_string(&self.config).unwrap();
        let keys = |dc: &Dovecot| {
            format!(
                "doveadm = \"{}\"\ndoveadm_config = \"{}\"\n",
                dovecot::DOVEADM_BIN,
                dc.config_path().display()
            )
        };
        let config = config.replacen("[source]\n", &format!("[source]\n{}", keys(&self.old)), 1);
        fs::write(&self.config, format!("{config}[verify]\n{}", keys(new))).unwrap();
    }

    /// The migration's report lines for the accounts (any order, from one
    /// or several jobs) and the new userdb.
    pub fn check_reports(&self, mailboxes: &[&serde_json::Value]) {
        assert_eq!(mailboxes.len(), ACCOUNTS.len());
        for m in mailboxes {
            assert_eq!(m["status"], "done", "{m:#}");
            assert_eq!(m["uids_preserved"], true, "{m:#}");
        }
        let jan_report = mailboxes
            .iter()
            .find(|m| m["user"] == ACCOUNTS[0].0)
            .expect("jan was migrated");
        let skipped = super::fixture::column(&jan_report["skipped_folders"], "name");
        assert_eq!(skipped, ["Contacts", "Koš", "Koš/2019", "Spam"]);
        let new_users = fs::read_to_string(&self.users_new).unwrap();
        for prefix in [
            "{SHA512-CRYPT}$6$",
            "{MD5-CRYPT}$1$",
            "{BLF-CRYPT}$2y$",
            "{SSHA512}",
            "{CRYPT}",
        ] {
            assert!(
                new_users.contains(prefix),
                "{prefix} missing in:\n{new_users}"
            );
        }
        assert!(!new_users.contains(OTHER.0));
    }

    /// A new Dovecot on the new userdb serves every account as the old
    /// one did (minus what is not migrated); the old one refuses them.
    pub fn check_servers(&self) {
        let (dir, old, before) = (&self.dir, &self.old, &self.before);
        // The new server: every user logs in with the original password and
        // sees the same folders, UIDs, flags, keywords, dates and sizes.
        let new = Dovecot::start(&dir.join("new-server"), &self.users_new);
        for (i, &(user, pass, _, _)) in ACCOUNTS.iter().enumerate() {
            let mut c = connect(&new);
            c.authenticate_plain(user, pass)
                .unwrap_or_else(|e| panic!("new login {user}: {e}\n{}", new.log()));
            let mut after = c.snapshot();
            c.logout().unwrap();
            if i == 0 {
                let pos = after
                    .mailboxes
                    .iter()
                    .position(|m| m.name == "Přílohy")
                    .expect("raw UTF-8 folder migrated");
                let p = after.mailboxes.remove(pos);
                assert_eq!((p.uidvalidity, p.uidnext, p.uids()), (1234567, 8, vec![7]));
                assert_eq!(p.messages[0].internal_date, "13-Sep-2020 12:26:40 +0000");
                assert!(p.messages[0].flags.contains("\\Seen"));
                for emptied in ["Koš", "Koš/2019", "Spam", "Contacts"] {
                    let m = after
                        .mailbox(emptied)
                        .expect("skipped folders are there, empty");
                    assert!(m.messages.is_empty(), "{emptied} must not be migrated");
                    let old = before[i].mailbox(emptied).unwrap();
                    assert_eq!((m.uidvalidity, m.uidnext), (old.uidvalidity, old.uidnext));
                }
                assert!(
                    after.mailbox("Trash 2020").is_some()
                        && after.mailbox("Spam reports").is_some()
                );
                let sent = after.mailbox("Odeslané").unwrap().message(1).unwrap();
                assert!(
                    sent.flags.contains("Projekt-X") && sent.flags.contains("$MDNSent"),
                    "keywords a client set: {sent:?}"
                );
            }
            imap::assert_snapshots_equal(&with_skipped_emptied(before[i].clone()), &after);
            let mut c = connect(&new);
            assert!(c.authenticate_plain(user, "wrong password").is_err());
        }
        let mut c = connect(&new);
        assert!(
            c.login(OTHER.0, OTHER.1).is_err(),
            "the other domain was not migrated"
        );
        assert!(new.user_exists("jan@example.cz"));

        // The old server refuses the migrated users but still resolves them
        // (a late delivery must not bounce); the other domain is untouched.
        for &(user, pass, _, _) in ACCOUNTS {
            let mut c = connect(old);
            assert!(
                c.authenticate_plain(user, pass).is_err(),
                "old server still lets {user} in"
            );
            assert!(
                old.user_exists(user),
                "old server no longer resolves {user}"
            );
        }
        let mut c = connect(old);
        c.authenticate_plain(OTHER.0, OTHER.1)
            .unwrap_or_else(|e| panic!("{} must still log in on the old server: {e}", OTHER.0));
        c.logout().unwrap();
        let log = new.log();
        assert!(
            !log.contains("Error:") && !log.contains("Fatal:"),
            "errors in the new server's log:\n{log}"
        );
    }
}
