//! `verify`: does the target hold what the source holds? Per mailbox and
//! folder: message sets by base name, flags (with Courier keywords as
//! letters), sizes and mtimes; the carried uidlist (every message listed,
//! UIDVALIDITY kept); and the userdb entry (the source's hash, the new home).
//! Reads only.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::assess::{self, Assessment};
use super::folders::{self, SourceFolder};
use super::server::{self, FolderFacts};
use super::{Env, MailboxError, Named, RunError, courier, each_mailbox, manifest, ownership};
use crate::classify::SkippedFolders;
use crate::config::Config;
use crate::copy::{self, Listing};
use crate::job::{Domain, LocalPart, Scope};
use crate::maildir::{self, filename};
use crate::safe_fs::Dir;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailboxCheck {
    pub user: String,
    pub ok: bool,
    pub folders: u64,
    pub messages: u64,
    /// Every difference found (empty when `ok`).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub domain: String,
    pub ok: bool,
    pub mailboxes: Vec<MailboxCheck>,
}

/// Compares every mailbox of `domain` (or the listed ones).
pub fn verify(
    cfg: &Config,
    domain: Domain,
    mailboxes: Option<Vec<LocalPart>>,
) -> Result<Verification, RunError> {
    let env = Env::open(cfg, Scope { domain, mailboxes })?;
    let checks = each_mailbox(&env, |named| {
        let mut c = MailboxCheck {
            user: String::new(),
            ok: false,
            folders: 0,
            messages: 0,
            problems: Vec::new(),
        };
        // What was found before an error stays in the report.
        if let Err(e) = check_mailbox(&env, named, &mut c) {
            c.problems.push(e.to_string());
        }
        Ok(c)
    })?;
    let out: Vec<MailboxCheck> = checks
        .into_iter()
        .map(|(user, r)| {
            let mut c = r.unwrap_or_else(|why| MailboxCheck {
                user: String::new(),
                ok: false,
                folders: 0,
                messages: 0,
                problems: vec![why],
            });
            c.user = user;
            c.ok = c.problems.is_empty();
            c
        })
        .collect();
    Ok(Verification {
        domain: env.scope.domain.to_string(),
        ok: out.iter().all(|c| c.ok),
        mailboxes: out,
    })
}

/// The hash without its `{SCHEME}` prefix.
fn hash_body(h: &str) -> &str {
    h.strip_prefix('{')
        .and_then(|r| r.split_once('}'))
        .map_or(h, |(_, body)| body)
}

fn check_mailbox(env: &Env<'_>, named: &Named, c: &mut MailboxCheck) -> Result<(), MailboxError> {
    let a = assess::assess(env, named)?;
    let mb = &a.mailbox;
    check_logins(env, &a, c)?;
    let rel = mb.maildir_rel();
    let home = match env.target_root.open_beneath(&mb.home_rel) {
        Ok(d) => d,
        Err(e) => {
            c.problems.push(format!(
                "target home {}: {e}",
                crate::shown::path(&mb.home_rel)
            ));
            return Ok(());
        }
    };
    let target = match home.open_dir("Maildir") {
        Ok(d) => d,
        Err(e) => {
            c.problems
                .push(format!("target Maildir {}: {e}", crate::shown::path(&rel)));
            return Ok(());
        }
    };
    c.problems.extend(ownership::audit(&home, mb.owner)?);
    if let Err(p) = ownership::check_reachable(&env.target_root_path, &rel, mb.owner) {
        c.problems.push(p);
    }
    let Some(source) = assess::old_maildir(env, &a)?.dir else {
        return Ok(());
    };
    let (expected_dirs, mut facts) = check_folders(env, &source, &target, c)?;
    if let Some(doveadm) = &env.cfg.verify.doveadm {
        // What the switch recorded of the old server's HIGHESTMODSEQ.
        let old: Vec<manifest::Mailbox> = manifest::load(&target)?
            .map(|m| m.mailboxes)
            .unwrap_or_default();
        for f in &mut facts {
            f.old_modseq = old
                .iter()
                .find(|m| m.name == f.name)
                .and_then(|m| m.old_modseq);
        }
        match doveadm.namespace(env.cfg.target.layout) {
            Ok(ns) => c.problems.extend(server::check(
                doveadm,
                &ns,
                mb,
                env.target.home_served(&a.new_account(env)).as_deref(),
                &facts,
            )),
            Err(e) => c.problems.push(e),
        }
    }
    if env.cfg.target.layout == crate::maildir::Layout::MaildirPlusPlus {
        stray_folders(&target, &expected_dirs, c)?;
    }
    Ok(())
}

/// Compares every folder the target should hold; returns the folder
/// directories expected in the target and what it holds of each folder
/// (for the new server's own view).
fn check_folders(
    env: &Env<'_>,
    source: &Dir,
    target: &Dir,
    c: &mut MailboxCheck,
) -> Result<(BTreeSet<PathBuf>, Vec<FolderFacts>), MailboxError> {
    let scan = folders::scan(source, &env.cfg.migration.classifier, env.cfg.source.layout)?;
    let uid = source
        .stat()
        .map_err(|e| MailboxError::io(source.path(), e))?
        .st_uid;
    let mut expected_dirs = BTreeSet::new();
    let mut facts = Vec::new();
    // Skipped folders are there, empty, when they are kept that way.
    let emptied = match env.cfg.migration.skipped_folders {
        SkippedFolders::Empty => scan.skip.as_slice(),
        SkippedFolders::Absent => &[],
    };
    let folders = scan.copy.iter().map(|f| (f, false));
    for (folder, empty) in folders.chain(emptied.iter().map(|f| (f, true))) {
        let dst_rel = folder
            .target_dir(env.cfg.target.folder_names, env.cfg.target.layout)
            .map_err(MailboxError::Conflict)?;
        if let Some(r) = &dst_rel {
            expected_dirs.insert(r.clone());
        }
        let here = Folders {
            source,
            target,
            uid,
        };
        facts.extend(check_folder(here, folder, dst_rel, empty, c)?);
    }
    Ok((expected_dirs, facts))
}

/// Maildir++ folders in the target that the source does not have.
fn stray_folders(
    target: &Dir,
    expected: &BTreeSet<PathBuf>,
    c: &mut MailboxCheck,
) -> Result<(), MailboxError> {
    let entries = target
        .entries()
        .map_err(|e| MailboxError::io(target.path(), e))?;
    for e in entries {
        let b = e.name.as_bytes();
        let dir = PathBuf::from(&e.name);
        if e.kind == crate::safe_fs::Kind::Dir
            && b.len() > 1
            && b[0] == b'.'
            && !expected.contains(&dir)
        {
            c.problems.push(format!(
                "folder {:?} is in the target but not in the source",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// The new login is there with the source's hash and the new location; the
/// old one is refused (where there are two).
fn check_logins(env: &Env<'_>, a: &Assessment, c: &mut MailboxCheck) -> Result<(), MailboxError> {
    let (expected, actual) = env.target.logins(&a.new_account(env))?;
    match actual {
        None => c.problems.push(format!(
            "no entry for {} in {}",
            a.mailbox.target_key,
            env.target.describe()
        )),
        Some(got) => {
            if hash_body(&got.password) != hash_body(&expected.password) {
                c.problems
                    .push("the target password hash differs from the source's".into());
            }
            if got.location != expected.location {
                c.problems.push(format!(
                    "target location is {:?}, expected {:?}",
                    got.location, expected.location
                ));
            }
        }
    }
    if !env.target.in_place() && !a.source.refuses_login {
        c.problems.push(format!(
            "the old login of {} in {} is not refused: both servers would serve the mailbox",
            a.mailbox.source_key,
            env.source.describe()
        ));
    }
    Ok(())
}

/// A mailbox's two Maildirs, and the owner of the source's files.
#[derive(Clone, Copy)]
struct Folders<'a> {
    source: &'a Dir,
    target: &'a Dir,
    uid: u32,
}

/// Compares one folder (`empty`: a skipped folder, which the target must
/// hold without messages) and returns what the target holds of it (for
/// the new server's own view).
fn check_folder(
    md: Folders<'_>,
    folder: &SourceFolder,
    dst_rel: Option<PathBuf>,
    empty: bool,
    c: &mut MailboxCheck,
) -> Result<Option<FolderFacts>, MailboxError> {
    let Folders {
        source,
        target,
        uid,
    } = md;
    let shown = folder.display();
    let src = folder
        .open(source)
        .map_err(|e| MailboxError::io(source.path(), e))?;
    let dst = match &dst_rel {
        None => target.reopen(),
        Some(r) => target.open_beneath(r),
    };
    let dst = match dst {
        Ok(d) => d,
        Err(e) => {
            c.problems
                .push(format!("{shown}: missing in the target ({e})"));
            return Ok(None);
        }
    };
    let mut listing = if empty {
        Listing::default()
    } else {
        copy::list_messages(&src)?
    };
    let mut ignored = Vec::new();
    if !empty
        && src.stat_at(maildir::KEYWORDS).is_err()
        && let Some(k) = courier::read_keywords(&src, uid, &shown, &mut ignored)?
    {
        courier::apply_keywords(&mut listing, &k);
    }
    let got = copy::list_messages(&dst)?;
    let m = copy::compare(&listing, &got);
    if !m.is_empty() {
        c.problems.push(format!("{shown}: {m}"));
    }
    if !empty {
        c.folders += 1;
        c.messages += listing.len() as u64;
    }
    compare_sizes_and_dates(&src, &dst, &listing, &shown, c);
    let uids = check_uidlist(&src, &dst, &got, &shown, c);
    Ok(Some(FolderFacts {
        name: folder.name.clone(),
        messages: got.len() as u64,
        uids,
        old_modseq: None,
    }))
}

/// Same byte count and date for every message present on both sides.
fn compare_sizes_and_dates(
    src: &Dir,
    dst: &Dir,
    listing: &Listing,
    shown: &str,
    c: &mut MailboxCheck,
) {
    let subs = |d: &Dir| -> [Option<Dir>; 2] { copy::SUBDIRS.map(|s| d.open_dir(s).ok()) };
    let (ss, ds) = (subs(src), subs(dst));
    let mut differ = 0usize;
    let mut example = String::new();
    for (sub, name) in listing.iter() {
        let (Some(s), Some(d)) = (&ss[sub], &ds[sub]) else {
            continue;
        };
        let (Ok(a), Ok(b)) = (s.stat_at(name), d.stat_at(listing.target_name(name))) else {
            continue;
        };
        if a.st_size != b.st_size || a.st_mtime != b.st_mtime {
            differ += 1;
            if example.is_empty() {
                example = crate::shown::bytes(name.as_bytes());
            }
        }
    }
    if differ > 0 {
        c.problems.push(format!(
            "{shown}: {differ} messages differ in size or date (e.g. {example:?})"
        ));
    }
}

/// The target uidlist parses, lists every message the source had a UID
/// for, and keeps UIDVALIDITY. Returns its UIDVALIDITY and next UID.
fn check_uidlist(
    src: &Dir,
    dst: &Dir,
    got: &Listing,
    shown: &str,
    c: &mut MailboxCheck,
) -> Option<(u32, u32)> {
    let read = |d: &Dir| folders::read_uidlist(d, d.stat().map_or(0, |s| s.st_uid));
    let list = match read(dst) {
        Ok(Some(Ok(list))) => list,
        Ok(Some(Err(e))) => {
            c.problems
                .push(format!("{shown}: target {}: {e}", maildir::UIDLIST));
            return None;
        }
        // Only a loss when the source had UIDs to carry.
        Ok(None) => {
            if !got.is_empty()
                && [maildir::UIDLIST, "courierimapuiddb"]
                    .iter()
                    .any(|f| src.stat_at(f).is_ok())
            {
                c.problems.push(format!(
                    "{shown}: no {} in the target; Dovecot will assign new UIDs",
                    maildir::UIDLIST
                ));
            }
            return None;
        }
        Err(e) => {
            c.problems.push(format!("{shown}: {e}"));
            return None;
        }
    };
    let listed: HashMap<&[u8], u32> = list
        .records
        .iter()
        .map(|r| (filename::base(&r.name), r.uid))
        .collect();
    // A message the source had a UID for must keep one; mail Dovecot never
    // saw gets its UID on first sight either way.
    let src_list = read(src).ok().flatten().and_then(Result::ok);
    // A set, not a scan per message: folders hold 100k messages.
    let numbered: Option<HashSet<&[u8]>> = src_list
        .as_ref()
        .map(|l| l.records.iter().map(|r| filename::base(&r.name)).collect());
    let had_uid = |base: &[u8]| numbered.as_ref().is_none_or(|n| n.contains(base));
    let unlisted = got
        .iter()
        .map(|(_, n)| filename::base(n.as_bytes()))
        .filter(|b| !listed.contains_key(b) && had_uid(b))
        .count();
    if unlisted > 0 {
        c.problems.push(format!(
            "{shown}: {unlisted} messages are not in {} (they would get new UIDs)",
            maildir::UIDLIST
        ));
    }
    if let Some(src_list) = &src_list
        && src_list.uid_validity() != list.uid_validity()
    {
        c.problems.push(format!(
            "{shown}: UIDVALIDITY {} in the target, {} in the source",
            list.uid_validity(),
            src_list.uid_validity()
        ));
    }
    Some((list.uid_validity(), list.next_uid()))
}
