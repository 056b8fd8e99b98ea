//! Step 5, the switch, in two moves. The new login is first written
//! *staged*: the new server can look the user up, nobody can log in (a
//! passwd-file entry with `nologin`, an SQL row with the lock marker). With
//! the new server's doveadm configured, each folder's HIGHESTMODSEQ is
//! raised to the old server's and the new server is asked whether it serves
//! what was copied; only then is the login enabled. A failure before that
//! takes the staged login back where it can (a separate database keeps a
//! locked row, which the next run takes up) and the old login returns.

use crate::safe_fs::Dir;
use crate::userdb::SourceDb;
use crate::userdb::passwd_file::{self, Change, Entry, PasswdFile};
use crate::userdb::sql;

use super::folders::{self, SourceFolder};
use super::mailbox::{Assessment, Env, Placement};
use super::server::{self, FolderFacts};
use super::{MailboxError, manifest};

/// Where a mailbox's new login stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewLogin {
    Absent,
    /// A separate userdb has another entry under that name.
    Other,
    /// Written, refusing logins.
    Staged,
    Live,
}

/// What staging replaced in a userdb rewritten in place, to put it back.
#[derive(Debug, Clone, Default)]
pub(crate) struct Previous {
    entry: Option<Entry>,
    sql_maildir: Option<String>,
}

/// A transient failure of a transaction that may have committed.
fn unknown(e: sql::SqlError) -> MailboxError {
    if e.is_transient() {
        MailboxError::SwitchUnknown(e)
    } else {
        e.into()
    }
}

/// Where the new login stands, as the target userdb says now.
pub(crate) fn login(env: &Env<'_>, a: &Assessment) -> Result<NewLogin, MailboxError> {
    let mb = &a.mailbox;
    let of = |exists: bool, live: bool, staged: bool| match (live, staged, exists) {
        (true, _, _) => NewLogin::Live,
        (_, true, _) => NewLogin::Staged,
        (_, _, true) => NewLogin::Other,
        _ => NewLogin::Absent,
    };
    Ok(match &env.target {
        Placement::PasswdFile(path) => {
            let expected = env.target_entry(&a.source, mb);
            let found = PasswdFile::load(path)?
                .find(&expected.user)?
                .map(|(_, e)| e);
            of(
                found.is_some(),
                found.as_ref() == Some(&expected),
                found == Some(expected.frozen()),
            )
        }
        Placement::PasswdFileInPlace(_) => {
            let current = env.passwd_entry(mb)?;
            let live = env.switched_in_place(&current, mb);
            of(false, current == live, current == live.frozen())
        }
        Placement::Sql(s) => {
            let expected = env.target_row(&a.source, mb)?;
            let found = sql::with_retry(s, |db| db.mailbox(&expected.username))?;
            let unlocked = found.as_ref().map(|r| sql::MailboxRow {
                password: sql::strip_lock(&r.password).to_string(),
                ..r.clone()
            });
            let locked = found.as_ref().is_some_and(sql::is_locked);
            let same = unlocked.as_ref() == Some(&expected);
            of(found.is_some(), same && !locked, same && locked)
        }
        Placement::SqlInPlace(_) => {
            let row = env.source.account(&mb.source_key)?;
            let new = env.target_maildir_rel(mb);
            let here = row
                .as_ref()
                .is_some_and(|r| r.sql_maildir.as_deref() == Some(&new));
            let locked = row.is_some_and(|r| r.refuses_login);
            of(false, here && !locked, here && locked)
        }
    })
}

/// What staging will replace in a userdb rewritten in place, read before
/// it writes.
pub(crate) fn previous(env: &Env<'_>, a: &Assessment) -> Result<Previous, MailboxError> {
    Ok(match &env.target {
        Placement::PasswdFileInPlace(_) => Previous {
            entry: Some(env.passwd_entry(&a.mailbox)?),
            sql_maildir: None,
        },
        Placement::SqlInPlace(_) => Previous {
            entry: None,
            sql_maildir: Some(a.source.sql_maildir.clone().unwrap_or_default()),
        },
        Placement::PasswdFile(_) | Placement::Sql(_) => Previous::default(),
    })
}

/// Writes the new login staged (idempotent).
pub(crate) fn stage(env: &Env<'_>, a: &Assessment) -> Result<(), MailboxError> {
    let mb = &a.mailbox;
    let fsync = env.cfg.migration.fsync;
    match &env.target {
        Placement::PasswdFile(path) => {
            let staged = env.target_entry(&a.source, mb).frozen();
            let live = env.target_entry(&a.source, mb);
            let line = passwd_file::check_writable(&staged).map_err(MailboxError::Conflict)?;
            // A new file takes the source file's owner and mode.
            let like = match &env.source {
                SourceDb::PasswdFile { path, .. } | SourceDb::Courier { path, .. } => {
                    Some(path.as_path())
                }
                SourceDb::Sql { .. } => None,
            };
            passwd_file::edit(path, like, fsync, |file: &PasswdFile| {
                match file.find(&staged.user)? {
                    Some((_, e)) if e == staged || e == live => Ok(None),
                    Some((no, _)) => Err(MailboxError::Conflict(format!(
                        "{} line {no} already has a different entry for {}; not overwriting it",
                        path.display(),
                        staged.user
                    ))),
                    None => Ok(Some(Change::Append(line.clone()))),
                }
            })?;
        }
        Placement::PasswdFileInPlace(path) => {
            rewrite_in_place(env, path, a, |e| env.switched_in_place(e, mb).frozen())?;
        }
        Placement::Sql(s) => {
            let row = env.target_row(&a.source, mb)?;
            sql::with_retry(s, |db| db.insert_staged(&row)).map_err(unknown)?;
        }
        Placement::SqlInPlace(s) => {
            let old = a.source.sql_maildir.clone().unwrap_or_default();
            let new = env.target_maildir_rel(mb);
            sql::with_retry(s, |db| db.move_locked(&mb.source_key, &old, &new)).map_err(unknown)?;
        }
    }
    Ok(())
}

/// Takes a staged login back after a failure, as far as that can be done:
/// a separate passwd-file loses the staged line, an entry rewritten in
/// place gets back what it had; a separate database keeps its locked row
/// (no query deletes rows), which the next run takes up.
pub(crate) fn unstage(
    env: &Env<'_>,
    a: &Assessment,
    previous: &Previous,
) -> Result<(), MailboxError> {
    let mb = &a.mailbox;
    let fsync = env.cfg.migration.fsync;
    let cannot = || {
        MailboxError::Conflict(
            "the staged login could not be taken back (the run that staged it stopped); both logins stay refused until the job runs again".into(),
        )
    };
    match &env.target {
        Placement::PasswdFile(path) => {
            let staged = env.target_entry(&a.source, mb).frozen();
            // A staging write that never happened leaves nothing to edit
            // (and the file may not be writable at all).
            if PasswdFile::load(path)?.find(&staged.user)?.map(|(_, e)| e) != Some(staged.clone()) {
                return Ok(());
            }
            passwd_file::edit(path, None, fsync, |file: &PasswdFile| {
                Ok::<_, MailboxError>(match file.find(&staged.user)? {
                    Some((_, e)) if e == staged => Some(Change::Remove {
                        user: staged.user.clone(),
                    }),
                    _ => None,
                })
            })?;
        }
        Placement::PasswdFileInPlace(path) => {
            let before = previous.entry.clone().ok_or_else(cannot)?;
            rewrite_in_place(env, path, a, |_| before.clone())?;
        }
        Placement::Sql(_) => {}
        Placement::SqlInPlace(s) => {
            let old = previous.sql_maildir.clone().ok_or_else(cannot)?;
            let new = env.target_maildir_rel(mb);
            sql::with_retry(s, |db| db.move_locked(&mb.source_key, &new, &old))?;
        }
    }
    Ok(())
}

/// Makes the staged login live.
pub(crate) fn enable(env: &Env<'_>, a: &Assessment) -> Result<(), MailboxError> {
    let mb = &a.mailbox;
    let fsync = env.cfg.migration.fsync;
    match &env.target {
        Placement::PasswdFile(path) => {
            let live = env.target_entry(&a.source, mb);
            let line = passwd_file::check_writable(&live).map_err(MailboxError::Conflict)?;
            passwd_file::edit(path, None, fsync, |file: &PasswdFile| {
                match file.find(&live.user)? {
                    Some((_, e)) if e == live => Ok::<_, MailboxError>(None),
                    Some(_) => Ok(Some(Change::Replace {
                        user: live.user.clone(),
                        line: line.clone(),
                    })),
                    None => Ok(Some(Change::Append(line.clone()))),
                }
            })?;
        }
        Placement::PasswdFileInPlace(path) => {
            rewrite_in_place(env, path, a, Entry::thawed)?;
        }
        Placement::Sql(s) => {
            let username = env.target_row(&a.source, mb)?.username;
            sql::with_retry(s, |db| db.unlock(&username)).map_err(unknown)?;
        }
        Placement::SqlInPlace(s) => {
            sql::with_retry(s, |db| db.unlock(&mb.source_key)).map_err(unknown)?;
        }
    }
    Ok(())
}

/// Rewrites the shared passwd-file entry with `f`; returns it as it was.
fn rewrite_in_place(
    env: &Env<'_>,
    path: &std::path::Path,
    a: &Assessment,
    f: impl Fn(&Entry) -> Entry,
) -> Result<Entry, MailboxError> {
    let key = &a.mailbox.source_key;
    let mut before = None;
    passwd_file::edit(path, None, env.cfg.migration.fsync, |file: &PasswdFile| {
        let Some((_, current)) = file.find(key)? else {
            return Err(MailboxError::NotInSource {
                user: key.clone(),
                db: path.display().to_string(),
            });
        };
        let new = f(&current);
        before = Some(current.clone());
        if new == current {
            return Ok(None);
        }
        let line = passwd_file::check_writable(&new).map_err(MailboxError::Conflict)?;
        Ok(Some(Change::Replace {
            user: key.clone(),
            line,
        }))
    })?;
    before.ok_or_else(|| MailboxError::NotInSource {
        user: key.clone(),
        db: path.display().to_string(),
    })
}

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
        env.home_served(&a.mailbox).as_deref(),
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
    let fsync = env.cfg.migration.fsync;
    let mut warnings = Vec::new();
    let undone = "another writer of the userdb (one that ignores its lock)";
    if login(env, a)? != NewLogin::Live {
        stage(env, a)?;
        enable(env, a)?;
        warnings.push(format!("{undone} undid the new login; written again"));
    }
    if !env.target.in_place() {
        let now = env.source.account(&mb.source_key)?;
        if now.is_some_and(|s| !s.refuses_login) {
            env.source.freeze(&mb.source_key, fsync)?;
            warnings.push(format!(
                "{undone} undid the refusal of the old login; refused again"
            ));
        }
    }
    Ok(warnings)
}
