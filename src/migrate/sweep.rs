//! The sweep: mail that an agent with a cached location delivers to the old
//! Maildir after the switch is moved into the new one. The manifest written
//! at the switch (the base names each folder held then) tells such late
//! mail from messages the user has since deleted in the new store, which
//! must not come back.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};

use super::folders::{self, MailboxSync};
use super::mailbox::{self, State};
use super::{Env, MailboxError, RunError, each_mailbox};
use crate::config::Config;
use crate::copy::{self, CopyOptions, TargetFolder};
use crate::job::{Domain, Job, LocalPart};
use crate::maildir::filename;
use crate::report::now_rfc3339;
use crate::safe_fs::{Dir, FileAttrs};

/// In the target Maildir root (a dot file: Maildir++ readers skip it).
pub const MANIFEST: &str = ".maildir-migrate-manifest";
const HEADER: &[u8] = b"maildir-migrate manifest 1\n";

type Manifest = HashMap<String, HashSet<Vec<u8>>>;

/// Records what each source folder held at the switch.
pub fn write_manifest(md: &Dir, sync: &MailboxSync, attrs: &FileAttrs) -> Result<(), MailboxError> {
    let mut m: Manifest = HashMap::new();
    for (dir, bases) in &sync.manifest {
        m.entry(dir.clone())
            .or_default()
            .extend(bases.iter().cloned());
    }
    save(md, &m, attrs)
}

fn save(md: &Dir, m: &Manifest, attrs: &FileAttrs) -> Result<(), MailboxError> {
    let mut out = HEADER.to_vec();
    let mut dirs: Vec<&String> = m.keys().collect();
    dirs.sort();
    for d in dirs {
        out.extend_from_slice(b"F ");
        out.extend_from_slice(d.as_bytes());
        out.push(b'\n');
        let mut bases: Vec<&Vec<u8>> = m[d].iter().collect();
        bases.sort();
        for b in bases {
            out.extend_from_slice(b);
            out.push(b'\n');
        }
    }
    md.write_atomic(OsStr::new(MANIFEST), &out, attrs)
        .map_err(|e| MailboxError::io(&md.child_path(MANIFEST), e))
}

fn load(md: &Dir) -> Result<Option<Manifest>, MailboxError> {
    let uid = md
        .stat()
        .map_err(|e| MailboxError::io(md.path(), e))?
        .st_uid;
    let Some(data) = md
        .read_file(MANIFEST, 1 << 30, uid)
        .map_err(|e| MailboxError::io(&md.child_path(MANIFEST), e))?
    else {
        return Ok(None);
    };
    let body = data.strip_prefix(HEADER).ok_or_else(|| {
        MailboxError::Conflict(format!(
            "{} is not a manifest",
            md.child_path(MANIFEST).display()
        ))
    })?;
    let mut m: Manifest = HashMap::new();
    let mut current: Option<String> = None;
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match line.strip_prefix(b"F ") {
            Some(d) => {
                let d = String::from_utf8_lossy(d).into_owned();
                m.entry(d.clone()).or_default();
                current = Some(d);
            }
            None => {
                if let Some(d) = &current {
                    m.get_mut(d).expect("entered").insert(line.to_vec());
                }
            }
        }
    }
    Ok(Some(m))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweptMailbox {
    pub user: String,
    /// Late messages moved into the new store.
    pub moved: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    pub domain: String,
    pub at: String,
    pub moved: u64,
    pub mailboxes: Vec<SweptMailbox>,
}

/// Sweeps every migrated mailbox of `domain` (or the listed ones).
pub fn sweep(
    cfg: &Config,
    domain: Domain,
    mailboxes: Option<Vec<LocalPart>>,
) -> Result<Sweep, RunError> {
    let job = Job::inspection("sweep", domain, mailboxes);
    let env = Env::open(cfg, &job)?;
    let out: Vec<SweptMailbox> = each_mailbox(&env, |local| sweep_mailbox(&env, local))?
        .into_iter()
        .map(|(user, r)| {
            let (moved, problems) = r.unwrap_or_else(|e| (0, vec![e]));
            SweptMailbox {
                user,
                moved,
                problems,
            }
        })
        .collect();
    Ok(Sweep {
        domain: job.domain.to_string(),
        at: now_rfc3339(),
        moved: out.iter().map(|m| m.moved).sum(),
        mailboxes: out,
    })
}

fn sweep_mailbox(env: &Env<'_>, local: &LocalPart) -> Result<(u64, Vec<String>), MailboxError> {
    let a = mailbox::assess(env, local)?;
    if a.state != State::AlreadyMigrated {
        return Ok((0, vec!["not migrated (yet); nothing to sweep".into()]));
    }
    let md = env
        .target_root
        .open_beneath(&env.home_rel(local)?.join("Maildir"))
        .map_err(|e| MailboxError::io(&env.home_rel(local).unwrap_or_default(), e))?;
    let Some(mut manifest) = load(&md)? else {
        return Ok((
            0,
            vec!["no manifest (migrated before sweeps existed); not swept".into()],
        ));
    };
    let (_, src) = env.open_source_maildir(&a.source, local)?;
    let Some(src) = src else {
        return Ok((0, Vec::new()));
    };
    let uid = src
        .stat()
        .map_err(|e| MailboxError::io(src.path(), e))?
        .st_uid;
    let opts = CopyOptions {
        owner: env.cfg.target.owner,
        fsync: env.cfg.migration.fsync,
        sync: env.cfg.migration.sync,
    };
    let scan = folders::scan(&src, &env.cfg.migration.classifier, env.cfg.source.layout)?;
    let (mut moved, mut problems) = (0, Vec::new());
    for folder in &scan.copy {
        let key = folder
            .dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = folder.display();
        let Some(known) = manifest.get_mut(&key) else {
            problems.push(format!("{shown}: appeared after the switch; not swept"));
            continue;
        };
        let rel = folder
            .target_dir(env.cfg.target.folder_names, env.cfg.target.layout)
            .map_err(MailboxError::Conflict)?;
        let dst = match &rel {
            None => md.reopen(),
            Some(r) => md.open_beneath(r),
        };
        let Ok(dst) = dst else {
            problems.push(format!("{shown}: no longer in the new store; not swept"));
            continue;
        };
        let src_dir = folder
            .open(&src)
            .map_err(|e| MailboxError::io(src.path(), e))?;
        let listing = copy::list_messages(&src_dir)?;
        let target = TargetFolder::open(dst, opts.owner)?;
        let there: HashSet<Vec<u8>> = target
            .list()?
            .iter()
            .map(|(_, n)| filename::base(n.as_bytes()).to_vec())
            .collect();
        let subs = copy::SUBDIRS.map(|s| src_dir.open_dir(s).ok());
        for (sub, name) in listing.iter() {
            let base = filename::base(name.as_bytes()).to_vec();
            if known.contains(&base) || there.contains(&base) {
                continue;
            }
            let Some(s) = &subs[sub] else { continue };
            if target.take(s, sub, name, uid, &opts)?.is_some() {
                moved += 1;
                known.insert(base);
            }
        }
    }
    if moved > 0 {
        let attrs = FileAttrs {
            mode: 0o600,
            owner: opts.owner,
            mtime: None,
            fsync: opts.fsync,
        };
        save(&md, &manifest, &attrs)?;
    }
    Ok((moved, problems))
}
