//! The manifest a switch leaves in the new Maildir: where the old Maildir
//! was (below the source mail root: once an in-place switch rewrote the
//! entry, nothing else remembers it) and the base names each folder held
//! at the switch (so the sweep tells late mail from messages the user has
//! since deleted in the new store, which must not come back).
//!
//! It belongs to the tool's user, not to the mail user: a mail user who
//! could rewrite it could point a root sweep at someone else's Maildir.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::MailboxError;
use super::folders::MailboxSync;
use crate::maildir::names::FolderName;
use crate::safe_fs::{Dir, FileAttrs};

/// In the target Maildir root (a dot file: Maildir++ readers skip it).
pub const MANIFEST: &str = ".maildir-migrate-manifest";
const HEADER_V1: &[u8] = b"maildir-migrate manifest 1\n";
const HEADER: &[u8] = b"maildir-migrate manifest 2\n";
/// A manifest lists every message of a mailbox once; beyond this it is not ours.
const LIMIT: u64 = 1 << 30;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The old Maildir, below the source mail root.
    pub source: Option<PathBuf>,
    /// Per source folder directory ("" for INBOX), the base names it held.
    pub folders: HashMap<String, HashSet<Vec<u8>>>,
    /// Every folder the target holds (copied, or skipped and emptied), with
    /// the HIGHESTMODSEQ the old server had for it.
    pub mailboxes: Vec<Mailbox>,
}

/// A folder of the target and what the old server said of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// `None` for INBOX.
    pub name: Option<FolderName>,
    pub old_modseq: Option<u64>,
}

/// Records the old Maildir, what each source folder held at the switch,
/// and the target's folders with their old HIGHESTMODSEQ.
pub fn write(
    md: &Dir,
    source: Option<&Path>,
    sync: &MailboxSync,
    mailboxes: Vec<Mailbox>,
    fsync: bool,
) -> Result<(), MailboxError> {
    let mut m = Manifest {
        source: source.map(Path::to_path_buf),
        folders: HashMap::new(),
        mailboxes,
    };
    for (dir, bases) in &sync.manifest {
        m.folders
            .entry(dir.clone())
            .or_default()
            .extend(bases.iter().cloned());
    }
    save(md, &m, fsync)
}

pub fn save(md: &Dir, m: &Manifest, fsync: bool) -> Result<(), MailboxError> {
    let mut out = HEADER.to_vec();
    if let Some(s) = &m.source {
        let b = s.as_os_str().as_bytes();
        if b.contains(&b'\n') {
            return Err(MailboxError::Location(format!(
                "the old Maildir's path {} contains a newline",
                crate::shown::path(s)
            )));
        }
        out.extend_from_slice(b"S ");
        out.extend_from_slice(b);
        out.push(b'\n');
    }
    for mb in &m.mailboxes {
        // Levels never hold a control character (FolderName refuses them).
        let levels = mb.name.as_ref().map(|n| n.levels().join("\t"));
        let modseq = mb.old_modseq.map_or("-".into(), |v| v.to_string());
        out.extend_from_slice(format!("M {modseq} {}\n", levels.unwrap_or_default()).as_bytes());
    }
    let mut dirs: Vec<&String> = m.folders.keys().collect();
    dirs.sort();
    for d in dirs {
        out.extend_from_slice(b"F ");
        out.extend_from_slice(d.as_bytes());
        out.push(b'\n');
        let mut bases: Vec<&Vec<u8>> = m.folders[d].iter().collect();
        bases.sort();
        for b in bases {
            out.extend_from_slice(b);
            out.push(b'\n');
        }
    }
    let attrs = FileAttrs::private(None, fsync);
    md.write_atomic(OsStr::new(MANIFEST), &out, &attrs)
        .map_err(|e| MailboxError::io(&md.child_path(MANIFEST), e))
}

/// The manifest of `md`, if the tool left one; one of another owner is an
/// error (only the first version was written as the mail user, and it
/// names no old Maildir).
pub fn load(md: &Dir) -> Result<Option<Manifest>, MailboxError> {
    let me = nix::unistd::geteuid().as_raw();
    let path = md.child_path(MANIFEST);
    let st = match md.stat_at(MANIFEST) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MailboxError::io(&path, e)),
    };
    let Some(data) = md
        .read_file(MANIFEST, LIMIT, st.st_uid)
        .map_err(|e| MailboxError::io(&path, e))?
    else {
        return Ok(None);
    };
    let not_ours = || {
        MailboxError::Conflict(format!(
            "{} was not written by maildir-migrate (owner uid {}); not using it",
            crate::shown::path(&path),
            st.st_uid
        ))
    };
    let (body, with_source) = if let Some(b) = data.strip_prefix(HEADER) {
        (b, true)
    } else if let Some(b) = data.strip_prefix(HEADER_V1) {
        (b, false)
    } else {
        return Err(not_ours());
    };
    if with_source && st.st_uid != me {
        return Err(not_ours());
    }
    Ok(Some(parse(body, with_source)))
}

fn parse(body: &[u8], with_source: bool) -> Manifest {
    let mut m = Manifest::default();
    let mut current: Option<String> = None;
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if let Some(s) = line.strip_prefix(b"S ").filter(|_| with_source) {
            m.source = Some(PathBuf::from(OsStr::from_bytes(s)));
        } else if let Some(rest) = line.strip_prefix(b"M ").filter(|_| with_source) {
            m.mailboxes.extend(parse_mailbox(rest));
        } else if let Some(d) = line.strip_prefix(b"F ") {
            let d = String::from_utf8_lossy(d).into_owned();
            m.folders.entry(d.clone()).or_default();
            current = Some(d);
        } else if let Some(d) = &current {
            m.folders
                .entry(d.clone())
                .or_default()
                .insert(line.to_vec());
        }
    }
    m
}

/// `<modseq or -> <levels, TAB-separated>`; a line that does not name a
/// folder is left out.
fn parse_mailbox(rest: &[u8]) -> Option<Mailbox> {
    let text = std::str::from_utf8(rest).ok()?;
    let (modseq, levels) = text.split_once(' ')?;
    let name = match levels {
        "" => None,
        l => Some(FolderName::from_levels(l.split('\t')).ok()?),
    };
    Some(Mailbox {
        name,
        old_modseq: modseq.parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_the_first_version() {
        let t = tempfile::tempdir().unwrap();
        let md = Dir::open_root(t.path()).unwrap();
        let mut m = Manifest {
            source: Some(PathBuf::from("a.cz/jan/Maildir")),
            mailboxes: vec![
                Mailbox {
                    name: None,
                    old_modseq: Some(17),
                },
                Mailbox {
                    name: Some(FolderName::from_levels(["Archiv", "2019 a"]).unwrap()),
                    old_modseq: None,
                },
            ],
            ..Manifest::default()
        };
        m.folders
            .entry(".Sent".into())
            .or_default()
            .insert(b"1.x".to_vec());
        m.folders.entry(String::new()).or_default();
        save(&md, &m, false).unwrap();
        assert_eq!(load(&md).unwrap(), Some(m));
        std::fs::write(
            t.path().join(MANIFEST),
            b"maildir-migrate manifest 1\nS x\nF \n1.a\n",
        )
        .unwrap();
        let v1 = load(&md).unwrap().unwrap();
        assert_eq!(v1.source, None, "the first version names no old Maildir");
        assert!(v1.folders[""].contains(b"1.a".as_slice()));
        std::fs::write(t.path().join(MANIFEST), b"junk").unwrap();
        assert!(load(&md).is_err());
    }

    proptest! {
        #[test]
        fn any_body_parses(body in proptest::collection::vec(any::<u8>(), 0..400), v2 in any::<bool>()) {
            let _ = parse(&body, v2);
        }
    }
}
