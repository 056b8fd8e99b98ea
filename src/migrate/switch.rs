//! Step 5, the switch, in two moves. The new login is first written
//! *staged*: the new server can look the user up, nobody can log in (a
//! passwd-file entry with `nologin`, an SQL row with the lock marker). With
//! the new server's doveadm configured, each folder's HIGHESTMODSEQ is
//! raised to the old server's and the new server is asked whether it serves
//! what was copied; only then is the login enabled. A failure before that
//! takes the staged login back where it can (a separate database keeps a
//! locked row, which the next run takes up) and the old login returns.

use crate::safe_fs::Dir;
use crate::userdb::NewLogin;

use super::assess::Assessment;
use super::env::Env;
use super::folders::{self, SourceFolder};
use super::server::{self, FolderFacts};
use super::{MailboxError, manifest};

/// With the new server's doveadm: raises each folder's HIGHESTMODSEQ to
/// the old server's, then asks the server whether it serves the staged
/// mailbox as copied. Any disagreement fails the mailbox before its login
/// is live.
pub(crate) fn ready_on_new_server(
    env: &Env<'_>,
    a: &Assessment,
    md: &Dir,
) -> Result<(), MailboxError> {
    let Some(doveadm) = &env.cfg.verify.doveadm else {
        return Ok(());
    };
    let new_server = |p: String| MailboxError::NewServer(p);
    let ns = doveadm
        .namespace(env.cfg.target.layout)
        .map_err(new_server)?;
    server::wait_for_user(doveadm, &a.mailbox.target_key).map_err(new_server)?;
    let facts = folder_facts(env, a, md)?;
    server::raise_modseqs(doveadm, &ns, &a.mailbox, &facts).map_err(new_server)?;
    let problems = server::check(
        doveadm,
        &ns,
        &a.mailbox,
        env.target.home_served(&a.new_account(env)).as_deref(),
        &facts,
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(new_server(problems.join("; ")))
    }
}

/// What the target holds of each folder the manifest names (the INBOX
/// alone without one), with the old server's HIGHESTMODSEQ.
fn folder_facts(env: &Env<'_>, a: &Assessment, md: &Dir) -> Result<Vec<FolderFacts>, MailboxError> {
    let listed = manifest::load(md)?.map(|m| m.mailboxes).unwrap_or_default();
    let mailboxes = if listed.is_empty() {
        vec![manifest::Mailbox {
            name: None,
            old_modseq: None,
        }]
    } else {
        listed
    };
    mailboxes
        .into_iter()
        .map(|m| facts_of(env, md, a.mailbox.owner.uid, m))
        .collect()
}

/// One target folder's messages and carried UIDs.
fn facts_of(
    env: &Env<'_>,
    md: &Dir,
    uid: u32,
    m: manifest::Mailbox,
) -> Result<FolderFacts, MailboxError> {
    let folder = SourceFolder {
        name: m.name,
        dir: None,
    };
    let rel = folder
        .target_dir(env.cfg.target.folder_names, env.cfg.target.layout)
        .map_err(MailboxError::Conflict)?;
    let dir = match &rel {
        None => md.reopen(),
        Some(r) => md.open_beneath(r),
    }
    .map_err(|e| MailboxError::io(&md.path().join(rel.unwrap_or_default()), e))?;
    let messages = crate::copy::list_messages(&dir)?.len() as u64;
    let uids = match folders::read_uidlist(&dir, uid)? {
        Some(Ok(l)) => Some((l.uid_validity(), l.next_uid())),
        _ => None,
    };
    Ok(FolderFacts {
        name: folder.name,
        messages,
        uids,
        old_modseq: m.old_modseq,
    })
}

/// After the switch, both userdbs are read back: another writer that
/// ignores our lock (a panel's read-modify-rename) may have undone the
/// freeze or dropped the new login. Whatever was undone is done again and
/// said in the mailbox's warnings.
pub(crate) fn read_back(env: &Env<'_>, a: &Assessment) -> Result<Vec<String>, MailboxError> {
    let mb = &a.mailbox;
    let account = a.new_account(env);
    let mut warnings = Vec::new();
    let undone = "another writer of the userdb (one that ignores its lock)";
    if env.target.login(&env.source, &account)? != NewLogin::Live {
        env.target.stage(&env.source, &account)?;
        env.target.enable(&account)?;
        warnings.push(format!("{undone} undid the new login; written again"));
    }
    if !env.target.in_place() {
        let now = env.source.account(&mb.source_key)?;
        if now.is_some_and(|s| !s.refuses_login) {
            env.source.freeze(&mb.source_key, env.cfg.migration.fsync)?;
            warnings.push(format!(
                "{undone} undid the refusal of the old login; refused again"
            ));
        }
    }
    Ok(warnings)
}
