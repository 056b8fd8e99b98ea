//! Dovecot passwd-file: `user:password:uid:gid:gecos:home:shell:extra`.
//!
//! Files are edited the way a live Dovecot needs: under a sidecar lock, by
//! replacing only the affected line's bytes, writing a temp file with the
//! original owner/group/mode, fsync, rename, fsync of the directory, and an
//! mtime that really changes (Dovecot reloads on mtime-second or size
//! change). Hashes never appear in errors or logs.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::time::TimeSpec;

use crate::safe_fs::{Dir, FileAttrs, lock_file, split_file_path};

/// Passdb extra field that refuses logins while keeping the user resolvable.
pub const NOLOGIN: &str = "nologin";
/// Marks a `nologin` as ours, so a rollback removes exactly what we added.
pub const FREEZE_REASON: &str = "reason=mailbox-migrated";

#[derive(Debug, thiserror::Error)]
pub enum UserdbError {
    #[error("{}: {source}", crate::shown::path(path))]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: does not exist", crate::shown::path(path))]
    Missing { path: PathBuf },
    #[error(
        "{}: is a symlink; point the configuration at the file itself",
        crate::shown::path(path)
    )]
    Symlink { path: PathBuf },
    #[error("{}: is not a regular file", crate::shown::path(path))]
    NotAFile { path: PathBuf },
    #[error(
        "{}: another program keeps rewriting the file; gave up after {attempts} attempts (see the README on the lock a writer must take)",
        crate::shown::path(path)
    )]
    Busy { path: PathBuf, attempts: usize },
    #[error(
        "{}: user {} exists more than once (lines {first} and {second})",
        crate::shown::path(path),
        crate::shown::text(user)
    )]
    Duplicate {
        path: PathBuf,
        user: String,
        first: usize,
        second: usize,
    },
    #[error("{}: line {line} is not valid UTF-8", crate::shown::path(path))]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{}: line {line}: {problem}", crate::shown::path(path))]
    BadEntry {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error(transparent)]
    Sql(#[from] super::sql::SqlError),
}

/// One parsed line. Fields are kept as text; nothing is normalised, so an
/// unchanged entry writes back identically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub user: String,
    pub password: String,
    pub uid: String,
    pub gid: String,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// Space-separated extra fields (`userdb_*` and passdb fields).
    pub extra: Vec<String>,
}

impl Entry {
    pub fn parse(line: &str) -> Entry {
        let f: Vec<&str> = line.split(':').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("").to_string();
        let rest = f.get(7..).unwrap_or_default();
        let extra = match rest {
            // Dovecot's old format: an empty field, then the mail location.
            ["", mail @ ..] if mail.first().is_some_and(|m| !m.is_empty()) => {
                vec![format!("userdb_mail={}", mail.join(":"))]
            }
            _ => rest
                .join(":")
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        };
        Entry {
            user: get(0),
            password: get(1),
            uid: get(2),
            gid: get(3),
            gecos: get(4),
            home: get(5),
            shell: get(6),
            extra,
        }
    }

    pub fn to_line(&self) -> String {
        let mut s = [
            self.user.as_str(),
            &self.password,
            &self.uid,
            &self.gid,
            &self.gecos,
            &self.home,
            &self.shell,
        ]
        .join(":");
        if !self.extra.is_empty() {
            s.push(':');
            s.push_str(&self.extra.join(" "));
        }
        s
    }

    /// Value of a `key=value` extra field.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find_map(|f| f.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.extra.iter().any(|f| f == flag)
    }

    /// The mail location (`userdb_mail`), if the entry sets one.
    pub fn mail(&self) -> Option<&str> {
        self.field("userdb_mail")
    }

    pub fn refuses_login(&self) -> bool {
        self.has_flag(NOLOGIN)
    }

    pub fn frozen_by_us(&self) -> bool {
        self.has_flag(FREEZE_REASON) && self.refuses_login()
    }

    /// The entry with logins refused. An entry that already refuses
    /// logins (a disabled account) is left alone.
    pub fn frozen(&self) -> Entry {
        let mut e = self.clone();
        if !e.refuses_login() {
            e.extra.push(NOLOGIN.into());
            e.extra.push(FREEZE_REASON.into());
        }
        e
    }

    /// The entry without the refusal that `frozen` added.
    pub fn thawed(&self) -> Entry {
        let mut e = self.clone();
        if e.frozen_by_us() {
            e.extra.retain(|f| f != FREEZE_REASON);
            if let Some(p) = e.extra.iter().position(|f| f == NOLOGIN) {
                e.extra.remove(p);
            }
        }
        e
    }

    /// Extra fields without the ones describing location and ownership,
    /// which the caller replaces.
    pub fn extra_without_location(&self) -> impl Iterator<Item = &String> {
        self.extra.iter().filter(|f| {
            let key = f.split('=').next().unwrap_or("");
            !matches!(
                key,
                "userdb_mail" | "userdb_home" | "userdb_uid" | "userdb_gid"
            )
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// A snapshot of a passwd-file's bytes with its line boundaries, and the
/// file it was read from (to tell whether another writer changed it).
#[derive(Debug)]
pub struct PasswdFile {
    path: PathBuf,
    data: Vec<u8>,
    lines: Vec<Span>,
    meta: Option<std::fs::Metadata>,
    file: Option<std::fs::File>,
    /// How much of `file` has been read (see `read_appended`), and those
    /// bytes (`data` plus what was appended since).
    seen: u64,
    known: Vec<u8>,
}

/// A change to apply under the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Replace the text of the entry found for `user`.
    Replace {
        user: String,
        line: String,
    },
    Append(String),
    /// Remove the entry of `user`, line end included.
    Remove {
        user: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UserdbError + '_ {
    move |source| UserdbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl PasswdFile {
    /// Reads the file; a missing file reads as empty (`exists()` is false).
    pub fn load(path: &Path) -> Result<PasswdFile, UserdbError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path);
        let file = match opened {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(UserdbError::Symlink {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut data = Vec::new();
        let meta = match &file {
            Some(f) => {
                let m = f.metadata().map_err(io_err(path))?;
                if !m.is_file() {
                    return Err(UserdbError::NotAFile {
                        path: path.to_path_buf(),
                    });
                }
                (&*f).read_to_end(&mut data).map_err(io_err(path))?;
                Some(m)
            }
            None => None,
        };
        let mut lines = Vec::new();
        let mut start = 0;
        for piece in data.split_inclusive(|&b| b == b'\n') {
            let body = piece.strip_suffix(b"\n").unwrap_or(piece);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            lines.push(Span {
                start,
                end: start + body.len(),
            });
            start += piece.len();
        }
        Ok(PasswdFile {
            path: path.to_path_buf(),
            seen: data.len() as u64,
            known: data.clone(),
            data,
            lines,
            meta,
            file,
        })
    }

    #[cfg(test)]
    pub fn exists(&self) -> bool {
        self.meta.is_some()
    }

    /// Bytes written to the file this was read from after the read (the
    /// file may no longer be at the path); each byte is returned once.
    fn read_appended(&mut self) -> io::Result<Vec<u8>> {
        use std::io::{Read, Seek};
        let mut late = Vec::new();
        if let Some(f) = &mut self.file {
            f.seek(io::SeekFrom::Start(self.seen))?;
            f.read_to_end(&mut late)?;
            self.seen += late.len() as u64;
            self.known.extend_from_slice(&late);
        }
        Ok(late)
    }

    /// The whole file this was read from, as it is now.
    fn read_whole(&mut self) -> io::Result<Vec<u8>> {
        use std::io::{Read, Seek};
        let mut all = Vec::new();
        if let Some(f) = &mut self.file {
            f.seek(io::SeekFrom::Start(0))?;
            f.read_to_end(&mut all)?;
        }
        Ok(all)
    }

    /// The user names of all entries, in file order.
    pub fn users(&self) -> Vec<String> {
        self.raw_entries()
            .map(|(_, user, _)| String::from_utf8_lossy(user).into_owned())
            .collect()
    }

    /// (line number, user bytes, line bytes) for every non-comment line.
    fn raw_entries(&self) -> impl Iterator<Item = (usize, &[u8], &[u8])> {
        self.lines.iter().enumerate().filter_map(|(i, s)| {
            let line = self.data.get(s.start..s.end)?;
            if matches!(line.first(), None | Some(b'#' | b':')) {
                return None;
            }
            let user = line.split(|&b| b == b':').next().unwrap_or_default();
            Some((i + 1, user, line))
        })
    }

    /// Finds the entry for `user` (exact, case-sensitive, like Dovecot).
    /// A user listed twice is an error: which line wins is not ours to guess.
    pub fn find(&self, user: &str) -> Result<Option<(usize, Entry)>, UserdbError> {
        let mut found: Option<(usize, &[u8])> = None;
        for (no, u, line) in self.raw_entries() {
            if u != user.as_bytes() {
                continue;
            }
            if let Some((first, _)) = found {
                return Err(UserdbError::Duplicate {
                    path: self.path.clone(),
                    user: user.to_string(),
                    first,
                    second: no,
                });
            }
            found = Some((no, line));
        }
        match found {
            None => Ok(None),
            Some((no, line)) => {
                let text = std::str::from_utf8(line).map_err(|_| UserdbError::NotUtf8 {
                    path: self.path.clone(),
                    line: no,
                })?;
                Ok(Some((no, Entry::parse(text))))
            }
        }
    }

    /// The file with the entry of `user` replaced by `line`, or removed
    /// with its line end.
    fn splice(&self, user: &str, line: Option<&str>) -> Result<Vec<u8>, UserdbError> {
        let gone = || UserdbError::BadEntry {
            path: self.path.clone(),
            line: 0,
            problem: format!(
                "user {} disappeared from the file",
                crate::shown::text(user)
            ),
        };
        let (no, _) = self.find(user)?.ok_or_else(gone)?;
        let (before, mut after) = no
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .and_then(|s| Some((self.data.get(..s.start)?, self.data.get(s.end..)?)))
            .ok_or_else(gone)?;
        if line.is_none() {
            after = after.strip_prefix(b"\r").unwrap_or(after);
            after = after.strip_prefix(b"\n").unwrap_or(after);
        }
        let mut out = Vec::with_capacity(self.data.len());
        out.extend_from_slice(before);
        out.extend_from_slice(line.unwrap_or_default().as_bytes());
        out.extend_from_slice(after);
        Ok(out)
    }

    fn apply(&self, change: &Change) -> Result<Vec<u8>, UserdbError> {
        match change {
            Change::Replace { user, line } => self.splice(user, Some(line)),
            Change::Remove { user } => self.splice(user, None),
            Change::Append(line) => {
                let mut out = self.data.clone();
                if !out.is_empty() && !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
                Ok(out)
            }
        }
    }
}

/// Validates a line we are about to write: it must parse back to `entry`
/// and contain no byte that would break the file's syntax.
pub fn check_writable(entry: &Entry) -> Result<String, String> {
    let fixed = [
        ("user", &entry.user),
        ("password", &entry.password),
        ("uid", &entry.uid),
        ("gid", &entry.gid),
        ("gecos", &entry.gecos),
        ("home", &entry.home),
        ("shell", &entry.shell),
    ];
    for (name, v) in fixed {
        if v.contains(':') || v.chars().any(char::is_control) {
            return Err(format!(
                "the {name} field cannot be written to a passwd-file"
            ));
        }
    }
    for f in &entry.extra {
        if f.is_empty() || f.contains(' ') || f.chars().any(char::is_control) {
            return Err("an extra field cannot be written to a passwd-file".into());
        }
    }
    let line = entry.to_line();
    if Entry::parse(&line) != *entry {
        return Err("the entry would not read back unchanged".into());
    }
    Ok(line)
}

/// Read-modify-write of a passwd-file under its sidecar lock. `decide`
/// sees the current contents and returns the change to make (or none).
/// A file that does not exist yet is created with the owner, group and
/// mode of `create_like` (the file Dovecot already reads), else 0600.
///
/// Writers that ignore the lock (a panel's read-modify-rename, a `>>`) must
/// not lose their lines: the file is replaced only if it is still the one
/// read (inode, size, mtime), else the edit is redone on the new contents;
/// lines appended to the old file after that check are carried over.
pub fn edit<E>(
    path: &Path,
    create_like: Option<&Path>,
    fsync: bool,
    mut decide: impl FnMut(&PasswdFile) -> Result<Option<Change>, E>,
) -> Result<Option<Change>, E>
where
    E: From<UserdbError>,
{
    let (dir_path, name) = split_file_path(path).map_err(io_err(path))?;
    let mut lock_name = OsString::from(".");
    lock_name.push(name);
    lock_name.push(".lock");
    let lock_path = dir_path.join(&lock_name);
    let lock = lock_file(&lock_path).map_err(io_err(&lock_path))?;
    let dir = Dir::open_root(dir_path).map_err(io_err(dir_path))?;

    for _ in 0..EDIT_ATTEMPTS {
        let current = PasswdFile::load(path)?;
        let Some(change) = decide(&current)? else {
            return Ok(None);
        };
        let data = current.apply(&change)?;
        let attrs = new_file_attrs(&current, create_like, fsync)?;
        let mut current = current;
        if replace_unless_changed(&dir, name, &mut current, &data, &attrs).map_err(io_err(path))? {
            carry_late_appends(path, current, fsync)?;
            drop(lock);
            return Ok(Some(change));
        }
    }
    Err(UserdbError::Busy {
        path: path.to_path_buf(),
        attempts: EDIT_ATTEMPTS,
    }
    .into())
}

/// How often an edit is redone because another writer got in between.
const EDIT_ATTEMPTS: usize = 20;

/// Owner, group and mode of the rewritten file: the current file's, else
/// `create_like`'s, else root-only; the mtime always moves.
fn new_file_attrs(
    current: &PasswdFile,
    create_like: Option<&Path>,
    fsync: bool,
) -> Result<FileAttrs, UserdbError> {
    let like = match &current.meta {
        Some(m) => Some(m.clone()),
        None => match create_like {
            Some(p) => Some(std::fs::metadata(p).map_err(io_err(p))?),
            None => None,
        },
    };
    let attrs = match &like {
        Some(m) => FileAttrs::like(m, fsync),
        None => FileAttrs::private(None, fsync),
    };
    Ok(attrs.with_mtime(current.meta.as_ref().map(|m| bumped_mtime(m.mtime()))))
}

/// What became of the file at `name` since `read` was taken.
enum Since {
    Same,
    /// Still the same file, with these bytes appended (a `>>`).
    Appended(Vec<u8>),
    /// Replaced, or rewritten in place.
    Changed,
}

fn since(dir: &Dir, name: &OsStr, read: &mut PasswdFile) -> io::Result<Since> {
    let now = match dir.stat_at(name) {
        Ok(st) => Some(st),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    match (&read.meta, now) {
        (None, None) => Ok(Since::Same),
        (Some(m), Some(st)) if (m.ino(), m.dev()) == (st.st_ino, st.st_dev) => {
            let whole = read.read_whole()?;
            let known = read.seen as usize;
            if whole.len() < known || whole[..known] != read.known[..] {
                return Ok(Since::Changed);
            }
            read.seen = whole.len() as u64;
            let tail = whole[known..].to_vec();
            read.known.extend_from_slice(&tail);
            Ok(if tail.is_empty() {
                Since::Same
            } else {
                Since::Appended(tail)
            })
        }
        _ => Ok(Since::Changed),
    }
}

/// Writes `data` under a temp name and renames it over `name` only if the
/// file is still the one `read` saw: lines appended to it meanwhile are
/// appended to `data` too; `Ok(false)`: it was replaced or rewritten, and
/// nothing was done.
fn replace_unless_changed(
    dir: &Dir,
    name: &OsStr,
    read: &mut PasswdFile,
    data: &[u8],
    attrs: &FileAttrs,
) -> io::Result<bool> {
    use std::io::Write;
    let tmp = crate::safe_fs::atomic_tmp_name(name);
    dir.unlink_if_exists(&tmp)?;
    let result = (|| {
        let mut out = dir.create_file(&tmp, attrs.mode)?;
        crate::safe_fs::apply_attrs(&out, attrs)?;
        out.write_all(data)?;
        // Keep up with an appender; give up on a writer that rewrites.
        for _ in 0..EDIT_ATTEMPTS {
            match since(dir, name, read)? {
                Since::Appended(tail) => out.write_all(&tail)?,
                Since::Changed => return Ok(false),
                Since::Same => {
                    crate::safe_fs::finish_file(&out, attrs)?;
                    drop(out);
                    dir.rename_replace(&tmp, dir, name)?;
                    if attrs.fsync {
                        dir.sync()?;
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    })();
    if !matches!(result, Ok(true)) {
        let _ = dir.unlink_if_exists(&tmp);
    }
    result
}

/// An appender that opened the file before we renamed over it may still
/// write to the old one: whatever it added after our read is appended to
/// the file now at `path`, the way the appender itself would have.
fn carry_late_appends(path: &Path, mut old: PasswdFile, fsync: bool) -> Result<(), UserdbError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Two quiet looks in a row: whoever had the old file open is done.
    let mut quiet = 0;
    for _ in 0..EDIT_ATTEMPTS * 10 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let late = old.read_appended().map_err(io_err(path))?;
        if late.is_empty() {
            quiet += 1;
            if quiet == 2 {
                return Ok(());
            }
            continue;
        }
        quiet = 0;
        let mut now = std::fs::File::options()
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(path))?;
        now.write_all(&late).map_err(io_err(path))?;
        if fsync {
            now.sync_all().map_err(io_err(path))?;
        }
    }
    Err(UserdbError::Busy {
        path: path.to_path_buf(),
        attempts: EDIT_ATTEMPTS * 10,
    })
}

/// Dovecot notices a change only if mtime (whole seconds) or size moved,
/// compared with the version it loaded, which may be any earlier one: so
/// the mtime only ever moves forward. Several rewrites within one second
/// run it a few seconds ahead of the clock; Dovecot only tests equality.
/// Always set explicitly: the kernel stamps from a coarse clock that can
/// still show the old second just after `SystemTime` has moved on.
fn bumped_mtime(old: i64) -> TimeSpec {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    match i64::try_from(now.as_secs()) {
        Ok(secs) if secs > old => TimeSpec::from_duration(now),
        _ => TimeSpec::new(old.saturating_add(1), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_fields_and_extras() {
        let e = Entry::parse(
            "jan@example.cz:{SHA512-CRYPT}$6$x:5000:5000::/h::userdb_mail=maildir:~/M:x userdb_quota_rule=*:bytes=100",
        );
        assert_eq!(e.user, "jan@example.cz");
        assert_eq!(e.home, "/h");
        assert_eq!(e.mail(), Some("maildir:~/M:x"));
        assert_eq!(e.field("userdb_quota_rule"), Some("*:bytes=100"));
        assert_eq!(
            e.to_line(),
            "jan@example.cz:{SHA512-CRYPT}$6$x:5000:5000::/h::userdb_mail=maildir:~/M:x userdb_quota_rule=*:bytes=100"
        );
    }

    #[test]
    fn old_format_mail_field() {
        let e = Entry::parse("u:p:1000:1000::/home/h:::maildir:~/OldFormat");
        assert_eq!(e.mail(), Some("maildir:~/OldFormat"));
        let short = Entry::parse("u:{PLAIN}x");
        assert_eq!(short.password, "{PLAIN}x");
        assert_eq!(short.to_line(), "u:{PLAIN}x:::::");
    }

    #[test]
    fn freeze_and_thaw() {
        let e = Entry::parse("u:p:1:1::/h::userdb_quota_rule=*:bytes=1");
        let f = e.frozen();
        assert!(f.refuses_login() && f.frozen_by_us());
        assert_eq!(f.frozen(), f);
        assert_eq!(f.thawed(), e);
        let disabled = Entry::parse("u:p:1:1::/h::nologin");
        assert_eq!(disabled.frozen(), disabled);
        assert_eq!(disabled.thawed(), disabled);
        assert!(!disabled.frozen_by_us());
    }

    #[test]
    fn writable_check() {
        let mut e = Entry::parse("u:p:1:1::/h::a=b");
        assert!(check_writable(&e).is_ok());
        e.extra.push("x y".into());
        assert!(check_writable(&e).is_err());
        let mut e = Entry::parse("u:p:1:1::/h::a=b");
        e.home = "/a:b".into();
        assert!(check_writable(&e).is_err());
    }

    #[test]
    fn huge_garbage_gives_brief_messages() {
        let garbage = "\x1b[31m\0\t\r\u{85}é:".repeat(450_000);
        let e = Entry::parse(&garbage);
        let long_extra = Entry::parse(&format!("u:p:1:1::/h::{}", garbage.replace(':', "")));
        let dup = UserdbError::Duplicate {
            path: PathBuf::from("/u"),
            user: garbage.clone(),
            first: 1,
            second: 2,
        };
        for s in [
            check_writable(&e).unwrap_err(),
            check_writable(&long_extra).unwrap_err(),
            dup.to_string(),
        ] {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn find_skips_comments_and_rejects_duplicates() {
        let t = tempfile::tempdir().unwrap();
        let p = write(t.path(), "u", "# c\n\n:x\na:1\nb:2\na:3\n");
        let f = PasswdFile::load(&p).unwrap();
        assert_eq!(f.users(), ["a", "b", "a"]);
        assert_eq!(f.find("b").unwrap().unwrap().0, 5);
        assert!(matches!(
            f.find("a"),
            Err(UserdbError::Duplicate {
                first: 4,
                second: 6,
                ..
            })
        ));
        assert!(f.find("c").unwrap().is_none());
    }

    #[test]
    fn edit_replaces_only_the_line_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let original = "# users\r\nalice:{PLAIN}a:1:1::/a::\nbob:{PLAIN}b:1:1::/b::\r\ncarol:x";
        let p = write(t.path(), "users", original);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let old_mtime = std::fs::metadata(&p).unwrap().mtime();
        let r: Result<_, UserdbError> = edit(&p, None, true, |f| {
            let (_, e) = f.find("bob")?.unwrap();
            Ok(Some(Change::Replace {
                user: "bob".into(),
                line: e.frozen().to_line(),
            }))
        });
        assert!(r.unwrap().is_some());
        let now = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            now,
            "# users\r\nalice:{PLAIN}a:1:1::/a::\nbob:{PLAIN}b:1:1::/b::nologin reason=mailbox-migrated\r\ncarol:x"
        );
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        assert_ne!(m.mtime(), old_mtime);
        let r: Result<_, UserdbError> = edit(&p, None, true, |_| {
            Ok(Some(Change::Append("dave:y".into())))
        });
        r.unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .ends_with("carol:x\ndave:y\n")
        );
        let r: Result<_, UserdbError> = edit(&p, None, true, |_| {
            Ok(Some(Change::Remove { user: "bob".into() }))
        });
        r.unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# users\r\nalice:{PLAIN}a:1:1::/a::\ncarol:x\ndave:y\n"
        );
        // Only the data file and the lock remain; no temp file is left.
        let mut names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, [".users.lock", "users"]);
    }

    /// A writer that ignores our lock appends a line (`>>`) or replaces
    /// the file (a panel's read-modify-rename) between our read and our
    /// rename: its change is kept and ours is made on top of it.
    #[test]
    fn writers_that_ignore_the_lock_lose_nothing() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let p = write(t.path(), "users", "a:{PLAIN}x\nb:{PLAIN}y\n");
        let mut calls = 0;
        let r: Result<_, UserdbError> = edit(&p, None, false, |f| {
            calls += 1;
            if calls == 1 {
                let mut out = std::fs::File::options().append(true).open(&p).unwrap();
                out.write_all(b"appended:{PLAIN}z\n").unwrap();
            }
            let (_, e) = f.find("a")?.unwrap();
            Ok(Some(Change::Replace {
                user: "a".into(),
                line: e.frozen().to_line(),
            }))
        });
        r.unwrap();
        assert_eq!(calls, 1, "the appended line was taken along, not redone");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "a:{PLAIN}x::::::nologin reason=mailbox-migrated\nb:{PLAIN}y\nappended:{PLAIN}z\n"
        );
        let mut calls = 0;
        let r: Result<_, UserdbError> = edit(&p, None, false, |f| {
            calls += 1;
            if calls == 1 {
                let text = std::fs::read_to_string(&p).unwrap() + "panel:{PLAIN}w\n";
                std::fs::write(t.path().join("panel.tmp"), text).unwrap();
                std::fs::rename(t.path().join("panel.tmp"), &p).unwrap();
            }
            let (_, e) = f.find("b")?.unwrap();
            Ok(Some(Change::Replace {
                user: "b".into(),
                line: e.frozen().to_line(),
            }))
        });
        r.unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("panel:{PLAIN}w\n"), "{text}");
        assert!(text.contains("b:{PLAIN}y::::::nologin"), "{text}");
    }

    /// The kernel stamps files from a coarse clock that lags the one
    /// `SystemTime` reads by a few milliseconds: left to the kernel, a
    /// rewrite just after a second boundary can keep the old second.
    #[test]
    fn the_new_mtime_is_set_explicitly_and_always_later() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        for old in [now - 5, now - 1, now, now + 3] {
            let t = bumped_mtime(old);
            assert!(t.tv_sec() > old, "{old} -> {t:?}");
            assert!(t.tv_sec() >= now, "{old} -> {t:?}");
        }
    }

    #[test]
    fn same_size_rewrite_in_the_same_second_still_moves_the_mtime() {
        let t = tempfile::tempdir().unwrap();
        let p = write(t.path(), "users", "u:{PLAIN}a\n");
        for pw in ["b", "c", "d"] {
            let before = std::fs::metadata(&p).unwrap();
            let r: Result<_, UserdbError> = edit(&p, None, false, |_| {
                Ok(Some(Change::Replace {
                    user: "u".into(),
                    line: format!("u:{{PLAIN}}{pw}"),
                }))
            });
            r.unwrap();
            let after = std::fs::metadata(&p).unwrap();
            assert_eq!(after.len(), before.len());
            assert_ne!(
                after.mtime(),
                before.mtime(),
                "Dovecot would keep the old entry"
            );
        }
    }

    #[test]
    fn new_file_copies_mode_from_reference() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let like = write(t.path(), "old", "");
        std::fs::set_permissions(&like, std::fs::Permissions::from_mode(0o640)).unwrap();
        let p = t.path().join("new");
        let r: Result<_, UserdbError> = edit(&p, Some(&like), false, |f| {
            assert!(!f.exists());
            Ok(Some(Change::Append("u:p".into())))
        });
        r.unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "u:p\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
    }

    #[test]
    fn symlinked_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = write(t.path(), "real", "u:p\n");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            PasswdFile::load(&link),
            Err(UserdbError::Symlink { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_to_line_round_trip(
            fields in proptest::collection::vec("[^:\\n\\r ]{0,10}", 7),
            extra in proptest::collection::vec("[a-z_]{1,8}(=[^ \\n\\r]{0,10})?", 0..4),
        ) {
            // An empty 8th field followed by text is the old format, so
            // extras are only generated non-empty.
            let e = Entry {
                user: fields[0].clone(), password: fields[1].clone(), uid: fields[2].clone(),
                gid: fields[3].clone(), gecos: fields[4].clone(), home: fields[5].clone(),
                shell: fields[6].clone(), extra,
            };
            prop_assert_eq!(Entry::parse(&e.to_line()), e);
        }

        #[test]
        fn parse_never_panics(line in "\\PC{0,80}") {
            let e = Entry::parse(&line);
            let _ = check_writable(&e);
        }
    }

    /// Text with control characters, multi-byte UTF-8 and the separators.
    fn hostile_line() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}a-z:= \\téš日\\u{10000}]{0,80}",
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_any_text(line in hostile_line()) {
            let e = Entry::parse(&line);
            let _ = (e.mail(), e.frozen_by_us(), e.extra_without_location().count());
            if !e.refuses_login() && !e.has_flag(FREEZE_REASON) {
                prop_assert_eq!(e.frozen().thawed(), e.clone());
            }
            match check_writable(&e) {
                Ok(written) => prop_assert_eq!(Entry::parse(&written), e),
                Err(msg) => prop_assert!(msg.len() < 1024 && !msg.chars().any(char::is_control)),
            }
        }
    }
}
