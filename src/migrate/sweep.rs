//! The sweep: mail that an agent with a cached location delivers to the old
//! Maildir after the switch is moved into the new one. The manifest written
//! at the switch (the base names each folder held then) tells such late
//! mail from messages the user has since deleted in the new store, which
//! must not come back.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};

use super::assess::{self, State};
use super::{Env, MailboxError, Named, RunError, each_mailbox, folders, manifest};
use crate::config::Config;
use crate::copy::{self, TargetFolder};
use crate::job::{Domain, LocalPart, Scope};
use crate::maildir::filename;
use crate::report::now_rfc3339;

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
    let env = Env::open(cfg, Scope { domain, mailboxes })?;
    let out: Vec<SweptMailbox> = each_mailbox(&env, |named| sweep_mailbox(&env, named))?
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
        domain: env.scope.domain.to_string(),
        at: now_rfc3339(),
        moved: out.iter().map(|m| m.moved).sum(),
        mailboxes: out,
    })
}

fn sweep_mailbox(env: &Env<'_>, named: &Named) -> Result<(u64, Vec<String>), MailboxError> {
    let a = assess::assess(env, named)?;
    if a.state != State::AlreadyMigrated {
        return Ok((0, vec!["not migrated (yet); nothing to sweep".into()]));
    }
    let mb = &a.mailbox;
    let md = env
        .target_root
        .open_beneath(&mb.maildir_rel())
        .map_err(|e| MailboxError::io(&env.target_root_path.join(mb.maildir_rel()), e))?;
    let Some(mut manifest) = manifest::load(&md)? else {
        return Ok((
            0,
            vec!["no manifest (migrated before sweeps existed); not swept".into()],
        ));
    };
    let Some(src) = assess::old_maildir(env, &a)?.dir else {
        return Ok((0, Vec::new()));
    };
    let uid = src
        .stat()
        .map_err(|e| MailboxError::io(src.path(), e))?
        .st_uid;
    let opts = env.cfg.copy_options().with_owner(mb.owner);
    let scan = folders::scan(&src, &env.cfg.migration.classifier, env.cfg.source.layout)?;
    let (mut moved, mut problems) = (0, Vec::new());
    for folder in &scan.copy {
        let key = folder
            .dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = folder.display();
        let Some(known) = manifest.folders.get_mut(&key) else {
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
        manifest::save(&md, &manifest, opts.fsync)?;
    }
    Ok((moved, problems))
}
