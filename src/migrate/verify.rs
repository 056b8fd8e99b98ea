//! `verify`: does the target hold what the source holds? Per mailbox and
//! folder: message sets by base name, flags (with Courier keywords as
//! letters), sizes and mtimes; the carried uidlist (every message listed,
//! UIDVALIDITY kept); and the userdb entry (the source's hash, the new home).
//! Reads only.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::folders::{self, SourceFolder};
use super::{Env, MailboxError, RunError, courier, each_mailbox};
use crate::config::Config;
use crate::copy::{self, Listing};
use crate::job::{Domain, Job, LocalPart};
use crate::maildir::uidlist::Uidlist;
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
    let job = Job::inspection("verify", domain, mailboxes);
    let env = Env::open(cfg, &job)?;
    let checks = each_mailbox(&env, |local| {
        let mut c = MailboxCheck {
            user: String::new(),
            ok: false,
            folders: 0,
            messages: 0,
            problems: Vec::new(),
        };
        // What was found before an error stays in the report.
        if let Err(e) = check_mailbox(&env, local, &mut c) {
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
        domain: job.domain.to_string(),
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

fn check_mailbox(
    env: &Env<'_>,
    local: &LocalPart,
    c: &mut MailboxCheck,
) -> Result<(), MailboxError> {
    let account = env.account(local)?;
    let (expected, actual) = env.target_login(&account, local)?;
    match actual {
        None => c.problems.push(format!(
            "no entry for {} in {}",
            env.target_key(local),
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

    let rel = env.home_rel(local)?.join("Maildir");
    let target = match env.target_root.open_beneath(&rel) {
        Ok(d) => d,
        Err(e) => {
            c.problems
                .push(format!("target Maildir {}: {e}", crate::shown::path(&rel)));
            return Ok(());
        }
    };
    let (_, source) = env.open_source_maildir(&account, local)?;
    let Some(source) = source else {
        return Ok(());
    };
    let scan = folders::scan(
        &source,
        &env.cfg.migration.classifier,
        env.cfg.source.layout,
    )?;
    let uid = source
        .stat()
        .map_err(|e| MailboxError::io(source.path(), e))?
        .st_uid;
    let mut expected_dirs = BTreeSet::new();
    for folder in &scan.copy {
        let dst_rel = folder
            .target_dir(env.cfg.target.folder_names, env.cfg.target.layout)
            .map_err(MailboxError::Conflict)?;
        if let Some(r) = &dst_rel {
            expected_dirs.insert(r.clone());
        }
        check_folder(&source, &target, folder, dst_rel, uid, c)?;
    }
    if env.cfg.target.layout == crate::maildir::Layout::MaildirPlusPlus {
        for e in target
            .entries()
            .map_err(|e| MailboxError::io(target.path(), e))?
        {
            let b = e.name.as_bytes();
            let dir = PathBuf::from(&e.name);
            if e.kind == crate::safe_fs::Kind::Dir
                && b.len() > 1
                && b[0] == b'.'
                && !expected_dirs.contains(&dir)
            {
                c.problems.push(format!(
                    "folder {:?} is in the target but not in the source",
                    dir.display()
                ));
            }
        }
    }
    Ok(())
}

fn check_folder(
    source: &Dir,
    target: &Dir,
    folder: &SourceFolder,
    dst_rel: Option<PathBuf>,
    uid: u32,
    c: &mut MailboxCheck,
) -> Result<(), MailboxError> {
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
            return Ok(());
        }
    };
    let mut listing: Listing = copy::list_messages(&src)?;
    let mut ignored = Vec::new();
    if src.stat_at(maildir::KEYWORDS).is_err()
        && let Some(k) = courier::read_keywords(&src, uid, &shown, &mut ignored)?
    {
        courier::apply_keywords(&mut listing, &k);
    }
    let got = copy::list_messages(&dst)?;
    let m = copy::compare(&listing, &got);
    if !m.is_empty() {
        c.problems.push(format!("{shown}: {m}"));
    }
    c.folders += 1;
    c.messages += listing.len() as u64;

    // Same bytes count and date for every message present on both sides.
    let subs = |d: &Dir| -> [Option<Dir>; 2] { copy::SUBDIRS.map(|s| d.open_dir(s).ok()) };
    let (ss, ds) = (subs(&src), subs(&dst));
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
                example = String::from_utf8_lossy(name.as_bytes()).into_owned();
            }
        }
    }
    if differ > 0 {
        c.problems.push(format!(
            "{shown}: {differ} messages differ in size or date (e.g. {example:?})"
        ));
    }

    // The uidlist: parses, lists every message, keeps UIDVALIDITY.
    let read = |d: &Dir, name: &str| d.read_file(name, 256 << 20, d.stat().map_or(0, |s| s.st_uid));
    match read(&dst, maildir::UIDLIST) {
        Ok(Some(data)) => match Uidlist::parse(&data) {
            Ok(list) => {
                let listed: HashMap<&[u8], u32> = list
                    .records
                    .iter()
                    .map(|r| (filename::base(&r.name), r.uid))
                    .collect();
                // A message the source had a UID for must keep one; mail
                // Dovecot never saw gets its UID on first sight either way.
                let src_list = read(&src, maildir::UIDLIST)
                    .ok()
                    .flatten()
                    .and_then(|d| Uidlist::parse(&d).ok());
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
            }
            Err(e) => c
                .problems
                .push(format!("{shown}: target {}: {e}", maildir::UIDLIST)),
        },
        // Only a loss when the source had UIDs to carry.
        Ok(None)
            if !got.is_empty()
                && [maildir::UIDLIST, "courierimapuiddb"]
                    .iter()
                    .any(|f| src.stat_at(f).is_ok()) =>
        {
            c.problems.push(format!(
                "{shown}: no {} in the target; Dovecot will assign new UIDs",
                maildir::UIDLIST
            ));
        }
        Ok(None) => {}
        Err(e) => c.problems.push(format!("{shown}: {e}")),
    }
    Ok(())
}
