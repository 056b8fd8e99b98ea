//! Courier authlib's userdb text format: `name<TAB>field=value|field=value`,
//! in one file or a directory of files (names starting with `.` skipped).
//!
//! A migrated account keeps resolving for delivery but refuses IMAP, POP3
//! and webmail logins through authlib's per-account `options`. The options
//! it had before are kept in `mmfrozen=` so a rollback restores them
//! exactly. Files are edited the way authlib's `userdb` tool does (flock on
//! `.lock.<file>`, write `.tmp.<file>`, rename) and stay 0600; `makeuserdb`
//! then rebuilds `userdb.dat`, which is what authlib actually reads.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::safe_fs::{Dir, FileAttrs, Owner, apply_attrs, lock_file, split_file_path};
use crate::userdb::passwd_file::UserdbError;

/// Options that refuse every login service but keep the account known.
const FREEZE_OPTIONS: [&str; 3] = ["disableimap=1", "disablepop3=1", "disablewebmail=1"];
/// Field holding the `options` value from before the freeze.
pub const FROZEN_FIELD: &str = "mmfrozen";

/// One account line, fields in file order (an unchanged entry writes back
/// identically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// Parses `name<TAB>f=v|f=v`; each field is split on its first `=`
    /// (base64 values end in `=`).
    pub fn parse(line: &str) -> Result<Entry, String> {
        let (name, rest) = line
            .split_once('\t')
            .ok_or("no TAB between the account name and its fields")?;
        if name.is_empty() {
            return Err("empty account name".into());
        }
        let mut fields = Vec::new();
        for f in rest.split('|').filter(|f| !f.is_empty()) {
            let (k, v) = f.split_once('=').unwrap_or((f, ""));
            fields.push((k.to_string(), v.to_string()));
        }
        Ok(Entry {
            name: name.to_string(),
            fields,
        })
    }

    pub fn to_line(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}\t{}", self.name, fields.join("|"))
    }

    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, key: &str, value: Option<String>) {
        match (self.fields.iter().position(|(k, _)| k == key), value) {
            (Some(i), Some(v)) => {
                if let Some(f) = self.fields.get_mut(i) {
                    f.1 = v;
                }
            }
            (Some(i), None) => {
                self.fields.remove(i);
            }
            (None, Some(v)) => self.fields.push((key.to_string(), v)),
            (None, None) => {}
        }
    }

    /// The password an IMAP login checks: `imappw` replaces `systempw`
    /// for IMAP (verified with authtest); the HMAC field is the last resort.
    pub fn password(&self) -> Option<(&'static str, &str)> {
        ["imappw", "systempw", "hmac-md5pw"]
            .into_iter()
            .find_map(|k| self.field(k).filter(|v| !v.is_empty()).map(|v| (k, v)))
    }

    /// Maildir++ quota `10000000S,1000C` as a Dovecot quota rule.
    pub fn quota_rule(&self) -> Result<Option<String>, String> {
        let Some(q) = self.field("quota").filter(|q| !q.is_empty()) else {
            return Ok(None);
        };
        let bad = || format!("quota {:?} is not a Maildir++ quota", crate::shown::text(q));
        let mut rule = String::from("*");
        for part in q.split(',') {
            // The unit is a suffix letter; the part may end in any character.
            let (n, key) = if let Some(n) = part.strip_suffix('S') {
                (n, "bytes")
            } else if let Some(n) = part.strip_suffix('C') {
                (n, "messages")
            } else {
                return Err(bad());
            };
            let n: u64 = n.parse().map_err(|_| bad())?;
            rule.push_str(&format!(":{key}={n}"));
        }
        Ok(Some(rule))
    }

    fn options(&self) -> Vec<&str> {
        self.field("options")
            .map(|o| o.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    pub fn refuses_login(&self) -> bool {
        let o = self.options();
        ["disableimap=1", "disablepop3=1"]
            .iter()
            .all(|f| o.contains(f))
    }

    pub fn frozen_by_us(&self) -> bool {
        self.field(FROZEN_FIELD).is_some()
    }

    /// Logins refused; the old options kept for the rollback.
    pub fn frozen(&self) -> Entry {
        if self.frozen_by_us() {
            return self.clone();
        }
        let mut e = self.clone();
        let old = self.field("options").unwrap_or("").to_string();
        let mut opts: Vec<String> = self
            .options()
            .into_iter()
            .filter(|o| {
                !FREEZE_OPTIONS
                    .iter()
                    .any(|f| f.split('=').next() == o.split('=').next())
            })
            .map(String::from)
            .collect();
        opts.extend(FREEZE_OPTIONS.iter().map(|s| s.to_string()));
        e.set("options", Some(opts.join(",")));
        e.set(FROZEN_FIELD, Some(old));
        e
    }

    /// Undoes exactly our freeze (nothing else).
    pub fn thawed(&self) -> Entry {
        let Some(old) = self.field(FROZEN_FIELD) else {
            return self.clone();
        };
        let mut e = self.clone();
        e.set("options", (!old.is_empty()).then(|| old.to_string()));
        e.set(FROZEN_FIELD, None);
        e
    }
}

/// A userdb: one file or a directory of files.
#[derive(Debug)]
pub struct CourierDb {
    files: Vec<DbFile>,
}

#[derive(Debug)]
struct DbFile {
    path: PathBuf,
    lines: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UserdbError + '_ {
    move |source| UserdbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Account lines are everything but blanks, comments and the reverse
/// `uid=<TAB>name` lines `pw2userdb` writes.
fn is_account(line: &str) -> bool {
    let name = line.split('\t').next().unwrap_or_default();
    !line.trim().is_empty() && !line.starts_with('#') && !name.ends_with('=')
}

impl CourierDb {
    pub fn load(path: &Path) -> Result<CourierDb, UserdbError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => UserdbError::Missing {
                path: path.to_path_buf(),
            },
            _ => io_err(path)(e),
        })?;
        let mut files = Vec::new();
        if meta.file_type().is_symlink() {
            return Err(UserdbError::Symlink {
                path: path.to_path_buf(),
            });
        }
        if meta.is_dir() {
            collect_files(path, &mut files, 0)?;
        } else {
            files.push(read_db_file(path)?);
        }
        Ok(CourierDb { files })
    }

    /// Account names in file order.
    pub fn users(&self) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| f.lines.iter())
            .filter(|l| is_account(l))
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect()
    }

    /// The entry for `name` and the file holding it; a name listed twice
    /// is an error.
    pub fn find(&self, name: &str) -> Result<Option<(PathBuf, usize, Entry)>, UserdbError> {
        let mut found = None;
        for f in &self.files {
            for (i, line) in f.lines.iter().enumerate() {
                if !is_account(line) || line.split('\t').next() != Some(name) {
                    continue;
                }
                if let Some((_, first, _)) = &found {
                    return Err(UserdbError::Duplicate {
                        path: f.path.clone(),
                        user: name.to_string(),
                        first: *first,
                        second: i + 1,
                    });
                }
                let e = Entry::parse(line).map_err(|problem| UserdbError::BadEntry {
                    path: f.path.clone(),
                    line: i + 1,
                    problem,
                })?;
                found = Some((f.path.clone(), i + 1, e));
            }
        }
        Ok(found)
    }
}

fn read_db_file(path: &Path) -> Result<DbFile, UserdbError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    let text = String::from_utf8(data).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        UserdbError::NotUtf8 {
            path: path.to_path_buf(),
            line,
        }
    })?;
    Ok(DbFile {
        path: path.to_path_buf(),
        lines: text.lines().map(String::from).collect(),
    })
}

/// authlib concatenates a userdb directory recursively, skipping dot names.
fn collect_files(dir: &Path, out: &mut Vec<DbFile>, depth: usize) -> Result<(), UserdbError> {
    if depth > 8 {
        return Err(UserdbError::BadEntry {
            path: dir.to_path_buf(),
            line: 0,
            problem: "nested too deep".into(),
        });
    }
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    names.sort();
    for name in names {
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = dir.join(&name);
        let m = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
        if m.is_dir() {
            collect_files(&p, out, depth + 1)?;
        } else if m.is_file() {
            out.push(read_db_file(&p)?);
        }
    }
    Ok(())
}

/// Rewrites the entry for `name` with `f` under authlib's lock convention,
/// then runs `makeuserdb` (when configured) so authlib sees the change.
/// `f` returning the entry unchanged writes nothing.
pub fn edit<E>(
    db: &Path,
    name: &str,
    fsync: bool,
    makeuserdb: Option<&Path>,
    f: impl FnOnce(&Entry) -> Result<Entry, E>,
) -> Result<bool, E>
where
    E: From<UserdbError>,
{
    let (path, _, _) = CourierDb::load(db)?
        .find(name)?
        .ok_or_else(|| UserdbError::BadEntry {
            path: db.to_path_buf(),
            line: 0,
            problem: format!("no account {}", crate::shown::text(name)),
        })?;
    let (dir_path, file_name) = split_file_path(&path).map_err(io_err(&path))?;
    let with_prefix = |p: &str| {
        let mut s = OsString::from(p);
        s.push(file_name);
        s
    };
    let lock_path = dir_path.join(with_prefix(".lock."));
    let lock = lock_file(&lock_path).map_err(io_err(&lock_path))?;

    // Re-read under the lock: the file is the truth, not our earlier view.
    let (current, i, old) = account_line(&path, name)?;
    let new = f(&old)?;
    if new == old {
        return Ok(false);
    }
    let mut lines = current.lines.clone();
    if let Some(l) = lines.get_mut(i) {
        *l = new.to_line();
    }
    let mut data = lines.join("\n");
    data.push('\n');

    let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
    let dir = Dir::open_root(dir_path).map_err(io_err(dir_path))?;
    let tmp = with_prefix(".tmp.");
    let write = || -> io::Result<()> {
        dir.unlink_if_exists(&tmp)?;
        let mut out = dir.create_file(&tmp, 0o600)?;
        // makeuserdb refuses a text file with group or world bits.
        apply_attrs(&out, &FileAttrs::private(Some(Owner::of(&meta)), fsync))?;
        out.write_all(data.as_bytes())?;
        if fsync {
            out.sync_all()?;
        }
        drop(out);
        dir.rename_replace(&tmp, &dir, file_name)?;
        if fsync {
            dir.sync()?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = dir.unlink_if_exists(&tmp);
        return Err(io_err(&path)(e).into());
    }
    if let Some(cmd) = makeuserdb {
        run_makeuserdb(cmd, db)?;
    }
    drop(lock);
    Ok(true)
}

/// The file at `path` as it is now, with the index and entry of the line
/// of account `name` (the last line naming it).
fn account_line(path: &Path, name: &str) -> Result<(DbFile, usize, Entry), UserdbError> {
    let current = read_db_file(path)?;
    let found = current
        .lines
        .iter()
        .enumerate()
        .rfind(|(_, line)| is_account(line) && line.split('\t').next() == Some(name));
    let (i, line) = found.ok_or_else(|| UserdbError::BadEntry {
        path: path.to_path_buf(),
        line: 0,
        problem: format!("account {} disappeared", crate::shown::text(name)),
    })?;
    let old = Entry::parse(line).map_err(|problem| UserdbError::BadEntry {
        path: path.to_path_buf(),
        line: i + 1,
        problem,
    })?;
    Ok((current, i, old))
}

/// `makeuserdb -f <db>` rebuilds `userdb.dat`; its failure is an error
/// because the text change would otherwise not take effect.
fn run_makeuserdb(cmd: &Path, db: &Path) -> Result<(), UserdbError> {
    let out = std::process::Command::new(cmd)
        .arg("-f")
        .arg(db)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err(cmd))?;
    if out.status.success() {
        return Ok(());
    }
    Err(UserdbError::BadEntry {
        path: db.to_path_buf(),
        line: 0,
        problem: format!(
            "{} failed ({}): {}",
            cmd.display(),
            out.status,
            crate::shown::bytes(out.stderr.trim_ascii())
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    const JAN: &str = "jan@a.cz\tuid=5000|gid=5000|home=/m/a.cz/jan|systempw={SSHA}abc=|quota=1000S,10C|options=disablewebmail=0";

    #[test]
    fn parse_fields_and_round_trip() {
        let e = Entry::parse(JAN).unwrap();
        assert_eq!(e.name, "jan@a.cz");
        assert_eq!(e.field("systempw"), Some("{SSHA}abc="));
        assert_eq!(e.password(), Some(("systempw", "{SSHA}abc=")));
        assert_eq!(
            e.quota_rule().unwrap().as_deref(),
            Some("*:bytes=1000:messages=10")
        );
        assert_eq!(e.to_line(), JAN);
        let with_imap = Entry::parse("u\tsystempw=x|imappw=y").unwrap();
        assert_eq!(with_imap.password(), Some(("imappw", "y")));
        assert!(Entry::parse("no tab").is_err());
        assert!(Entry::parse("u\tquota=12X").unwrap().quota_rule().is_err());
    }

    #[test]
    fn quota_with_a_multibyte_last_character_is_an_error_not_a_panic() {
        let e = Entry::parse("u\tquota=1000000000S,100é").unwrap();
        let err = e.quota_rule().unwrap_err();
        assert!(err.contains("not a Maildir++ quota"), "{err}");
    }

    #[test]
    fn huge_garbage_gives_brief_messages() {
        let garbage = "\x1b[31m\0\r\u{85}é,".repeat(450_000);
        let quota = Entry::parse(&format!("u\tquota={garbage}")).unwrap();
        for s in [
            quota.quota_rule().unwrap_err(),
            Entry::parse(&garbage).unwrap_err(),
            Entry::parse(&format!("\t{garbage}")).unwrap_err(),
        ] {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    #[test]
    fn freeze_keeps_the_old_options_and_thaw_restores_them() {
        let e = Entry::parse(JAN).unwrap();
        let f = e.frozen();
        assert!(f.refuses_login() && f.frozen_by_us());
        assert_eq!(
            f.field("options"),
            Some("disableimap=1,disablepop3=1,disablewebmail=1")
        );
        assert_eq!(f.frozen(), f);
        assert_eq!(f.thawed(), e);
        let bare = Entry::parse("u\tsystempw=x").unwrap();
        assert_eq!(bare.frozen().thawed(), bare);
        // Disabled by the admin, not by us: thaw leaves it alone.
        let admin = Entry::parse("u\toptions=disableimap=1,disablepop3=1").unwrap();
        assert!(admin.refuses_login() && !admin.frozen_by_us());
        assert_eq!(admin.thawed(), admin);
    }

    #[test]
    fn directory_db_skips_dot_files_and_reverse_lines() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("userdb");
        std::fs::create_dir_all(db.join("sub")).unwrap();
        std::fs::write(db.join("a"), "# c\n\n1000=\tjan\njan\tuid=1\n").unwrap();
        std::fs::write(db.join("sub/b"), "eva\tuid=2\n").unwrap();
        std::fs::write(db.join(".hidden"), "ghost\tuid=3\n").unwrap();
        let d = CourierDb::load(&db).unwrap();
        assert_eq!(d.users(), ["jan", "eva"]);
        let (p, line, e) = d.find("eva").unwrap().unwrap();
        assert!(p.ends_with("sub/b"));
        assert_eq!((line, e.field("uid")), (1, Some("2")));
        std::fs::write(db.join("c"), "jan\tuid=9\n").unwrap();
        assert!(CourierDb::load(&db).unwrap().find("jan").is_err());
    }

    #[test]
    fn edit_uses_authlib_conventions_and_keeps_other_lines() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("userdb");
        let text = format!("# header\n{JAN}\neva\tuid=2|systempw=$1$x$y\n");
        std::fs::write(&db, &text).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        let changed =
            edit::<UserdbError>(&db, "jan@a.cz", false, None, |e| Ok(e.frozen())).unwrap();
        assert!(changed);
        let now = std::fs::read_to_string(&db).unwrap();
        assert!(now.starts_with("# header\njan@a.cz\t"));
        assert!(now.ends_with("eva\tuid=2|systempw=$1$x$y\n"));
        assert!(now.contains("|mmfrozen=disablewebmail=0"));
        let m = std::fs::metadata(&db).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert!(t.path().join(".lock.userdb").exists());
        assert!(!t.path().join(".tmp.userdb").exists());
        edit::<UserdbError>(&db, "jan@a.cz", false, None, |e| Ok(e.thawed())).unwrap();
        assert_eq!(std::fs::read_to_string(&db).unwrap(), text);
        // A failing makeuserdb is an error.
        let e = edit::<UserdbError>(&db, "jan@a.cz", false, Some(Path::new("/bin/false")), |e| {
            Ok(e.frozen())
        })
        .unwrap_err();
        assert!(e.to_string().contains("/bin/false failed"), "{e}");
    }

    proptest! {
        #[test]
        fn freeze_thaw_round_trips(opts in proptest::collection::vec("[a-z]{1,8}=[01]", 0..4)) {
            let mut e = Entry::parse("u\tsystempw=x").unwrap();
            if !opts.is_empty() {
                e.fields.push(("options".into(), opts.join(",")));
            }
            prop_assert_eq!(e.frozen().thawed(), e.clone());
            prop_assert!(e.frozen().refuses_login());
            let line = e.frozen().to_line();
            prop_assert_eq!(Entry::parse(&line).unwrap(), e.frozen());
        }
    }

    fn userdb_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("u"),
            Just("\t"),
            Just("|"),
            Just("="),
            Just("quota="),
            Just("options="),
            Just("mmfrozen="),
            Just("disableimap=1"),
            Just(","),
            Just("1000"),
            Just("S"),
            Just("C"),
            Just("é"),
            Just("日"),
            Just("\n"),
            Just("\0"),
            Just("systempw="),
            Just("imappw="),
        ];
        proptest::collection::vec(piece, 0..20).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(
            line in prop_oneof![
                any::<String>(),
                "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}a-z|=,SC0-9\\téš日]{0,80}",
                userdb_like(),
            ],
        ) {
            if let Ok(e) = Entry::parse(&line) {
                prop_assert_eq!(Entry::parse(&e.to_line()), Ok(e.clone()));
                if let Err(msg) = e.quota_rule() {
                    prop_assert!(msg.len() < 1024 && !msg.chars().any(char::is_control), "{msg}");
                }
                let _ = (e.password(), e.refuses_login());
                let f = e.frozen();
                // An entry already frozen by us is left as it is.
                prop_assert!(f.refuses_login() || e.frozen_by_us());
                prop_assert_eq!(Entry::parse(&f.to_line()), Ok(f.clone()));
                let _ = f.thawed();
            }
        }
    }
}
