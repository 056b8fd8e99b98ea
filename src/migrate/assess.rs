//! Step 1 of the per-mailbox protocol, and the read-only look at one
//! mailbox that `plan`, `verify` and `sweep` share with the run: the
//! mailbox resolved against its source entry, where its new login stands,
//! and its two Maildirs.

use std::path::PathBuf;

use crate::safe_fs::Dir;
use crate::userdb::{Account, NewAccount, NewLogin};

use super::env::{Env, Mailbox, OldMaildir};
use super::folders::{self, FolderScan};
use super::{MailboxError, Named, manifest};

/// Where a mailbox stands before this run touches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending,
    AlreadyMigrated,
    /// Rewritten in place to the new Maildir, refusing logins: a run
    /// stopped between staging the new login and enabling it.
    Staged,
    Conflict(String),
}

/// A read-only look at one mailbox (shared by `run`, `plan`, `verify`
/// and `sweep`).
pub struct Assessment {
    pub mailbox: Mailbox,
    pub source: Account,
    pub state: State,
    /// The scheme recognised for the carried hash (`None`: empty field).
    pub scheme: Option<String>,
}

impl Assessment {
    /// The mailbox as the target userdb writes its new login.
    pub fn new_account<'a>(&'a self, env: &'a Env<'_>) -> NewAccount<'a> {
        self.mailbox.new_account(&self.source, &env.scope.domain)
    }
}

/// Resolves `named` and says where it stands. What could not be finished
/// (an entry the freeze could not write back, a name the new Dovecot
/// would not find) is an error here, before anything is copied or locked.
pub fn assess(env: &Env<'_>, named: &Named) -> Result<Assessment, MailboxError> {
    let (mb, source) = env.resolve(named)?;
    let scheme = source.hash.scheme.clone();
    if !env.target.finds(&mb.target_key)? {
        return Err(MailboxError::Conflict(format!(
            "the new Dovecot looks up {:?} (auth_username_format %Lu), and {} compares names case-sensitively, so it would never find {:?}; rename the account in the source first (or set target.auth_username_format = \"%u\" if the new Dovecot keeps the case)",
            mb.target_key.to_lowercase(),
            env.target.describe(),
            mb.target_key
        )));
    }
    let mut a = Assessment {
        mailbox: mb,
        source,
        state: State::Pending,
        scheme,
    };
    a.state = state_of(env, &a)?;
    Ok(a)
}

/// Where the mailbox stands, from its new login (and, where there are two
/// logins, whether the old one is refused).
fn state_of(env: &Env<'_>, a: &Assessment) -> Result<State, MailboxError> {
    let account = a.new_account(env);
    env.target.check_writable(&account)?;
    let in_place = env.target.in_place();
    Ok(match env.target.login(&env.source, &account)? {
        NewLogin::Live if in_place || a.source.refuses_login => State::AlreadyMigrated,
        // Resumed where a run stopped between staging and enabling: the
        // entry rewritten in place no longer names the old Maildir.
        NewLogin::Staged if in_place => State::Staged,
        NewLogin::Other => State::Conflict(format!(
            "{} already has a different entry for {}; not overwriting it",
            env.target.describe(),
            a.mailbox.target_key
        )),
        NewLogin::Live | NewLogin::Staged | NewLogin::Absent => {
            env.source.check_freezable(&a.mailbox.source_key)?;
            State::Pending
        }
    })
}

/// The old Maildir of an assessed mailbox: the one its source entry names,
/// or, once an in-place switch has rewritten that entry, the one the
/// switch recorded in the manifest.
pub(crate) fn old_maildir(env: &Env<'_>, a: &Assessment) -> Result<OldMaildir, MailboxError> {
    let switched = matches!(a.state, State::AlreadyMigrated | State::Staged);
    if !(env.target.in_place() && switched) {
        return env.open_source_maildir(&a.source, &a.mailbox);
    }
    let md = env
        .target_root
        .open_beneath(&a.mailbox.maildir_rel())
        .map_err(|e| MailboxError::io(&env.target_root_path.join(a.mailbox.maildir_rel()), e))?;
    match manifest::load(&md)?.and_then(|m| m.source) {
        Some(rel) => env.open_old_maildir(&rel),
        None => Err(MailboxError::Location(
            "switched in place, and no manifest records where the old Maildir was".into(),
        )),
    }
}

/// Read-only scan of the source folders (for `plan`).
pub fn scan_source(
    env: &Env<'_>,
    a: &Assessment,
) -> Result<(PathBuf, Option<(Dir, FolderScan)>), MailboxError> {
    let old = env.open_source_maildir(&a.source, &a.mailbox)?;
    let scanned = match old.dir {
        Some(d) => {
            let s = folders::scan(&d, &env.cfg.migration.classifier, env.cfg.source.layout)?;
            Some((d, s))
        }
        None => None,
    };
    Ok((old.path, scanned))
}

/// Whether the target Maildir could be claimed, without creating it.
pub fn target_status(env: &Env<'_>, mb: &Mailbox) -> Result<(PathBuf, Option<bool>), MailboxError> {
    let rel = mb.maildir_rel();
    let shown = env.cfg.target.mail_root.join(&rel);
    match env.target_root.open_beneath(&rel) {
        Ok(md) => Ok((shown, Some(folders::claimable(&md, &mb.user)?))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((shown, None)),
        Err(e) => Err(MailboxError::io(&shown, e)),
    }
}
