//! Courier-IMAP's metadata in a source Maildir, read with the same care as
//! the messages (regular files of the mailbox owner, no links) and turned
//! into what Dovecot reads. Used only where the Dovecot file is absent, so
//! a store already converted once keeps its Dovecot files.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::copy::Listing;
use crate::maildir::courier::keywords::{self as ck, Assignment, MergedKeywords};
use crate::maildir::courier::{acl, pop3, subscribed, uiddb};
use crate::maildir::filename;
use crate::maildir::names::NameEncoding;
use crate::safe_fs::{Dir, Kind};

use super::MailboxError;

const UIDDB: &str = "courierimapuiddb";
const KEYWORDS_DIR: &str = "courierimapkeywords";
const ACL: &str = "courierimapacl";
const POP3_LIST: &str = "courierpop3dsizelist";
const SUBSCRIBED: &str = "courierimapsubscribed";
/// Courier metadata larger than this is not metadata.
const LIMIT: u64 = 64 << 20;

fn read(dir: &Dir, name: impl AsRef<OsStr>, uid: u32) -> Result<Option<Vec<u8>>, MailboxError> {
    let name = name.as_ref();
    dir.read_file(name, LIMIT, uid)
        .map_err(|e| MailboxError::io(&dir.child_path(name), e))
}

/// The three keyword layers of a folder; `None` without Courier keywords.
/// A garbled `:list` loses this folder's keywords (reported), nothing else.
pub fn read_keywords(
    folder: &Dir,
    uid: u32,
    shown: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<MergedKeywords>, MailboxError> {
    let dir = match folder.open_dir(KEYWORDS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MailboxError::io(&folder.child_path(KEYWORDS_DIR), e)),
    };
    let mut list = None;
    let mut updates = Vec::new();
    for e in dir.entries().map_err(|e| MailboxError::io(dir.path(), e))? {
        if e.kind != Kind::File {
            continue;
        }
        let Some(data) = read(&dir, &e.name, uid)? else {
            continue;
        };
        if e.name == ":list" {
            list = Some(data);
        } else {
            updates.push((e.name.as_bytes().to_vec(), data));
        }
    }
    match ck::merge(list.as_deref(), &updates) {
        Ok(m) => {
            warnings.extend(m.warnings.iter().map(|w| format!("{shown}: keywords: {w}")));
            Ok(Some(m))
        }
        Err(e) => {
            warnings.push(format!(
                "{shown}: {KEYWORDS_DIR}/:list {e}; this folder's keywords are not carried"
            ));
            Ok(None)
        }
    }
}

/// Base names of the listed messages in Courier's order (by file name).
pub fn present_bases(listing: &Listing) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = listing
        .iter()
        .map(|(_, n)| filename::base(n.as_bytes()).to_vec())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Gives each listed message its keyword letters (as a target name).
pub fn apply_keywords(listing: &mut Listing, merged: &MergedKeywords) -> Assignment {
    let mut m = merged.clone();
    m.retain_present(&present_bases(listing));
    let a = ck::assign_letters(&m);
    listing.renames.clear();
    let names: Vec<_> = listing.iter().map(|(_, n)| n.clone()).collect();
    for name in names {
        let base = filename::base(name.as_bytes());
        if let Some(letters) = a.letters.get(base) {
            let to = ck::add_letters(name.as_bytes(), letters);
            if to != name.as_bytes() {
                listing
                    .renames
                    .insert(name, OsStr::from_bytes(&to).to_os_string());
            }
        }
    }
    a
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().min(u64::from(u32::MAX - 1)) as u32)
}

/// `dovecot-uidlist` from `courierimapuiddb` (and, in the root, the POP3
/// list's UIDLs). `None` when the folder has no Courier UID data.
pub fn uidlist(
    folder: &Dir,
    uid: u32,
    shown: &str,
    present: &[Vec<u8>],
    is_root: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<(Vec<u8>, bool)>, MailboxError> {
    let db = match read(folder, UIDDB, uid)? {
        None => None,
        Some(data) => match uiddb::parse(&data) {
            Ok(db) => Some(db),
            Err(e) => {
                warnings.push(format!(
                    "{shown}: {e}; not carried, Dovecot will assign new UIDs"
                ));
                return Ok(None);
            }
        },
    };
    let pop3 = match is_root.then(|| read(folder, POP3_LIST, uid)).transpose()? {
        Some(Some(data)) => match pop3::parse(&data) {
            Ok(mut l) => {
                l.extend_for(present);
                Some(l)
            }
            Err(e) => {
                warnings.push(format!(
                    "{shown}: {POP3_LIST} line {}: {}; POP3 clients will download again",
                    e.line, e.problem
                ));
                None
            }
        },
        _ => None,
    };
    if db.is_none() && pop3.is_none() {
        return Ok(None);
    }
    let c = uiddb::to_uidlist(db.as_ref(), present, pop3.as_ref(), now());
    warnings.extend(c.warnings.iter().map(|w| format!("{shown}: {w}")));
    // Messages Courier never numbered get fresh UIDs: nothing is lost.
    // Preserved means no message that had a UID got another one.
    let preserved = db.as_ref().is_some_and(|db| {
        let numbered: std::collections::HashSet<&[u8]> =
            db.records().iter().map(|r| r.base.as_slice()).collect();
        c.renumbered
            .iter()
            .all(|(base, _)| !numbered.contains(base.as_slice()))
    });
    Ok(Some((c.uidlist.to_bytes(), preserved)))
}

/// `dovecot-acl` for a folder shared through `courierimapacl`.
pub fn acl(
    folder: &Dir,
    uid: u32,
    shown: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<u8>>, MailboxError> {
    let Some(data) = read(folder, ACL, uid)? else {
        return Ok(None);
    };
    let c = match acl::convert(&data) {
        Ok(c) => c,
        Err(e) => {
            warnings.push(format!(
                "{shown}: {e}; not carried, the folder is not shared"
            ));
            return Ok(None);
        }
    };
    warnings.extend(c.warnings.iter().map(|w| format!("{shown}: ACL: {w}")));
    Ok(c.to_bytes())
}

/// `courierimapsubscribed` as target storage levels, minus skipped folders.
pub fn subscriptions(
    root: &Dir,
    uid: u32,
    names: NameEncoding,
    drops: impl Fn(&crate::maildir::names::FolderName) -> bool,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<Vec<String>>>, MailboxError> {
    let Some(data) = read(root, SUBSCRIBED, uid)? else {
        return Ok(None);
    };
    let s = match subscribed::parse(&data) {
        Ok(s) => s,
        Err(e) => {
            warnings.push(format!("{e}; subscriptions not carried"));
            return Ok(None);
        }
    };
    for l in s.skipped.iter().chain(&s.invalid) {
        warnings.push(format!(
            "subscription {:?} (line {}) dropped: {}",
            l.raw, l.line, l.reason
        ));
    }
    let mut kept: Vec<Vec<String>> = Vec::new();
    for entry in &s.entries {
        if let subscribed::Subscription::Folder(name) = entry
            && drops(name)
        {
            continue;
        }
        let levels = entry.storage_levels(names);
        if !kept.contains(&levels) {
            kept.push(levels);
        }
    }
    Ok(Some(kept))
}

/// What Courier keeps in the root that has no Dovecot counterpart here.
pub fn root_warnings(root: &Dir, warnings: &mut Vec<String>) {
    for (name, what) in [
        ("shared-folders", "Courier shared folders are not migrated"),
        ("shared-maildirs", "Courier shared folders are not migrated"),
        (
            "sqwebmail-addressbook",
            "the SqWebMail address book (contacts) is not migrated",
        ),
    ] {
        if root.stat_at(name).is_ok() {
            warnings.push(format!("{name}: {what}"));
        }
    }
}
