//! The per-mailbox protocol:
//!
//! 1. assess: resolve the mailbox against its source entry (its exact
//!    name, owner and home), read the target's; done already,
//!    conflicting, or pending — and refuse early what could not finish;
//! 2. bulk pass: copy the content while the mailbox is live;
//! 3. freeze: the source entry refuses logins (`nologin`), stays resolvable;
//! 4. final pass with verification, the manifest, owner and modes of the
//!    whole target asserted;
//! 5. switch: target entry written (or the shared entry rewritten), then
//!    both userdbs read back (a writer that ignores our lock may have
//!    undone the freeze);
//! 6. drop the "partial copy" marker from the target Maildir.
//!
//! A failure (or a panic) before the switch thaws the source entry again,
//! so a failed mailbox keeps its old login and gets no target entry.
//! Every step is idempotent, so re-running a job completes whatever was
//! left.
//!
//! Step 1 is `assess` (shared with the read-only commands); the userdbs
//! are written through `userdb::Source` and `userdb::Target`; the new
//! server's check before the login goes live is in `switch`.

use std::cell::RefCell;

use crate::classify::SkippedFolders;
use crate::copy::{CopyError, TargetFolder};
use crate::job::{Job, Mode};
use crate::report::{MailboxReport, MailboxStatus};
use crate::safe_fs::Dir;
use crate::throttle::sleep_unless_stopped;
use crate::userdb::{NewLogin, Previous};

use super::assess::{Assessment, State, assess};
use super::env::{Env, Mailbox, OldMaildir};
use super::folders::{self, FolderScan, MailboxSync, OWNER_MARKER, Pass, SyncContext};
use super::{MailboxError, Named, manifest, ownership, server, switch};

/// How far this run took a mailbox: what a failure (or a panic) must undo.
#[derive(Debug, Clone, Default)]
enum Stage {
    /// Not assessed, or in conflict: whatever an earlier run left stays
    /// (its new login may be live).
    #[default]
    Untouched,
    /// Pending and not switched: a failure gives the old login back (a
    /// no-op if it was never refused).
    Pending,
    /// The new login is written but refuses logins: a failure takes it
    /// back (as far as it can) and gives the old login back.
    Staged(Box<Previous>),
    /// Enabling the new login: if that is cut short (a lost connection
    /// around the commit, a panic), it may be live.
    Enabling,
    /// The new login may be live: the old one must stay refused.
    Switched,
}

/// Migrates one mailbox and reports the outcome. Never panics on bad
/// data; a panic anywhere in it fails only this mailbox, with its old
/// login back unless the new one may already be live.
pub fn migrate(env: &Env<'_>, job: &Job, ctx: &SyncContext<'_>, named: &Named) -> MailboxReport {
    let mut report = MailboxReport::new(named.user(&job.domain));
    let stage = RefCell::new(Stage::Untouched);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(env, job, ctx, named, &stage, &mut report.user)
    }))
    .unwrap_or_else(|_| {
        Err(MailboxError::Conflict(
            "internal error (a panic); see the log".into(),
        ))
    });
    let outcome = outcome.map_err(|e| undo(env, &report.user, named, stage.take(), e));
    match outcome {
        Ok((status, content)) => {
            report.status = status;
            if let Some(c) = content {
                report.messages = c.sync.messages;
                report.bytes = c.sync.bytes;
                report.folders = c.sync.folders;
                report.uids_preserved = c.sync.uids_preserved;
                report.freeze_ms = c.sync.freeze_ms;
                report.warnings = c.sync.warnings;
                report.skipped_folders = c.skipped;
            } else {
                report.uids_preserved = true;
            }
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

/// What a finished mailbox's report says of its content.
struct Content {
    sync: MailboxSync,
    skipped: Vec<crate::report::SkippedFolder>,
}

/// The protocol for one mailbox, from where it stands (`user` learns its
/// name as the source spells it; `stage` how far it got).
fn run(
    env: &Env<'_>,
    job: &Job,
    ctx: &SyncContext<'_>,
    named: &Named,
    stage: &RefCell<Stage>,
    user: &mut String,
) -> Result<(MailboxStatus, Option<Content>), MailboxError> {
    let a = assess(env, named)?;
    user.clone_from(&a.mailbox.user);
    let ctx = ctx.for_owner(a.mailbox.owner);
    let (md, content) = match &a.state {
        State::AlreadyMigrated => {
            // A crash after the switch may have left the marker behind.
            if let Ok(md) = env.target_root.open_beneath(&a.mailbox.maildir_rel()) {
                md.unlink_if_exists(OWNER_MARKER)
                    .map_err(|e| MailboxError::io(&md.child_path(OWNER_MARKER), e))?;
            }
            return Ok((MailboxStatus::AlreadyMigrated, None));
        }
        // Not thawed: if an earlier run froze the entry, the target entry
        // may be live, and two working logins are worse than none.
        State::Conflict(why) => return Err(MailboxError::Conflict(why.clone())),
        // An earlier run staged it in place and stopped: the copy is whole.
        State::Staged => {
            stage.replace(Stage::Staged(Box::default()));
            let md = env
                .target_root
                .open_beneath(&a.mailbox.maildir_rel())
                .map_err(|e| MailboxError::io(&a.mailbox.maildir_rel(), e))?;
            let warnings = go_live(env, &a, &md, stage)?;
            let mut sync = MailboxSync {
                uids_preserved: true,
                ..MailboxSync::default()
            };
            sync.warnings.extend(warnings);
            sync.warnings.push(
                "resumed after a run that stopped between staging and enabling the new login"
                    .into(),
            );
            let skipped = Vec::new();
            (md, Some(Content { sync, skipped }))
        }
        State::Pending => {
            stage.replace(Stage::Pending);
            match copy_and_switch(env, job, &ctx, &a, stage)? {
                Outcome::Presynced => return Ok((MailboxStatus::Presynced, None)),
                Outcome::Switched(md, content) => (md, content),
            }
        }
    };
    // Switched: the new entry is live; whatever happens now, no thaw.
    md.unlink_if_exists(OWNER_MARKER)
        .map_err(|e| MailboxError::io(&md.child_path(OWNER_MARKER), e))?;
    if ctx.copy.fsync {
        md.sync().map_err(|e| MailboxError::io(md.path(), e))?;
    }
    Ok((MailboxStatus::Done, content))
}

/// Where `copy_and_switch` stopped.
enum Outcome {
    /// A pre-sync job: copied, both logins untouched, marker kept.
    Presynced,
    /// The target Maildir and what was copied.
    Switched(Dir, Option<Content>),
}

/// Steps 2-5: claim the target, bulk pass, freeze, final pass with
/// verification, owner and modes, switch, read back.
fn copy_and_switch(
    env: &Env<'_>,
    job: &Job,
    ctx: &SyncContext<'_>,
    a: &Assessment,
    stage: &RefCell<Stage>,
) -> Result<Outcome, MailboxError> {
    let mb = &a.mailbox;
    let source = match job.mode {
        Mode::Move => Some(env.open_source_maildir(&a.source, mb)?),
        Mode::Recreate => None,
    };
    let target_md_path = env.target_root_path.join(mb.maildir_rel());
    if let Some(old) = &source
        && (old.path.starts_with(&target_md_path) || target_md_path.starts_with(&old.path))
    {
        return Err(MailboxError::Conflict(format!(
            "source Maildir {} and target Maildir {} overlap",
            crate::shown::path(&old.path),
            crate::shown::path(&target_md_path)
        )));
    }
    let home = ownership::ensure_home(&env.target_root, &env.target_root_path, mb)?;
    let claim = folders::claim_target(&home, mb.owner, job.id.as_str(), &mb.user, ctx.copy.fsync)?;
    let md = claim.md;

    let src_dir = source.as_ref().and_then(|old| old.dir.as_ref());
    match src_dir {
        Some(src) => bulk_passes(env, ctx, src, &md, claim.first)?,
        None => {
            TargetFolder::open(
                md.reopen().map_err(|e| MailboxError::io(md.path(), e))?,
                Some(mb.owner),
            )?;
        }
    }

    if !job.cutover {
        return Ok(Outcome::Presynced);
    }
    env.source.freeze(&mb.source_key, env.cfg.migration.fsync)?;
    ctx.workers.progress.mailbox_frozen();
    let frozen_at = std::time::Instant::now();
    let mut warnings = let_go_on_the_old_server(env, mb)?;
    // A stop during the grace must not wait it out while the old login is
    // refused: the mailbox is rolled back like one stopped mid-copy.
    sleep_unless_stopped(env.cfg.cutover.freeze_grace, ctx.workers.stop)
        .map_err(CopyError::from)?;
    let mut content = final_pass(env, ctx, a, source.as_ref(), &md)?;
    // Whatever an earlier run or a crash left: Dovecot, running as the
    // owner, must be able to read every part of it.
    ownership::repair(&home, mb.owner, !claim.owner_known)?;
    ownership::check_reachable(&env.target_root_path, &mb.maildir_rel(), mb.owner)
        .map_err(MailboxError::Conflict)?;
    // Staged before the write: a write cut short (a lost connection around
    // its commit, a panic) is taken back like a finished one.
    let account = a.new_account(env);
    stage.replace(Stage::Staged(Box::new(env.target.previous(&account)?)));
    env.target.stage(&env.source, &account)?;
    warnings.extend(go_live(env, a, &md, stage)?);
    if let Some(c) = &mut content {
        c.sync.warnings.extend(warnings);
        c.sync.freeze_ms = Some(frozen_at.elapsed().as_millis() as u64);
    }
    Ok(Outcome::Switched(md, content))
}

/// Step 2: the bulk pass, then delta passes while the mailbox is live, so
/// the frozen final pass has little left. The first run of a job that
/// writes into the target first makes sure the mailbox can be finished:
/// no message over the size limit, room on the target filesystem. (A
/// re-run, which has most of it already, skips that listing; its copy
/// still refuses an oversized file, and a full disk fails it cleanly.)
fn bulk_passes(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    src: &Dir,
    md: &Dir,
    first_claim: bool,
) -> Result<(), MailboxError> {
    let cut = &env.cfg.cutover;
    if first_claim {
        let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
        let max = env.cfg.migration.max_message_size;
        let need = folders::bytes_to_copy(ctx, src, md, &scan, max)?;
        ownership::check_room(md, need)?;
    }
    let mut passes = 0;
    loop {
        let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
        let changes = folders::sync_mailbox(ctx, src, md, &scan, Pass::Bulk)?.changes;
        if changes <= cut.delta_threshold || passes >= cut.max_delta_passes {
            return Ok(());
        }
        passes += 1;
    }
}

/// Step 4b: the old server lets go of the frozen mailbox. Asked through
/// `[source] doveadm`, it must refuse the login before the freeze command
/// runs (a client the command disconnects reconnects at once), and have no
/// session left after it; else the mailbox fails with its old login back.
fn let_go_on_the_old_server(env: &Env<'_>, mb: &Mailbox) -> Result<Vec<String>, MailboxError> {
    let old = env.cfg.source.doveadm.as_ref();
    if let Some(d) = old {
        server::wait_for_freeze(d, &mb.source_key, |p| env.source.freeze_seen(p))
            .map_err(MailboxError::OldServer)?;
    }
    let warnings = freeze_command(env, mb);
    if let Some(d) = old
        && !env.cfg.cutover.freeze_command.is_empty()
    {
        server::wait_for_sessions_to_end(d, &mb.source_key).map_err(MailboxError::OldServer)?;
    }
    Ok(warnings)
}

/// Runs `[cutover] freeze_command` for the user (no shell). Its failure is
/// reported, not fatal: the login is already refused.
fn freeze_command(env: &Env<'_>, mb: &Mailbox) -> Vec<String> {
    let Some(argv) = env.cfg.cutover.command_for(&mb.local, &env.scope.domain) else {
        return Vec::new();
    };
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Vec::new(),
        Ok(o) => vec![format!(
            "freeze command {:?} failed ({}): {}",
            argv[0],
            o.status,
            crate::shown::bytes(o.stderr.trim_ascii())
        )],
        Err(e) => vec![format!("freeze command {:?} could not run: {e}", argv[0])],
    }
}

/// Step 4, frozen: the last changes copied and verified, the manifest
/// (with the old server's HIGHESTMODSEQ of each folder).
fn final_pass(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    a: &Assessment,
    source: Option<&OldMaildir>,
    md: &Dir,
) -> Result<Option<Content>, MailboxError> {
    let inbox_only = || {
        vec![manifest::Mailbox {
            name: None,
            old_modseq: None,
        }]
    };
    let (rel, content) = match source {
        Some(OldMaildir {
            dir: Some(src),
            rel,
            ..
        }) => {
            let scan = folders::scan(src, ctx.classifier, env.cfg.source.layout)?;
            let mut sync = folders::sync_mailbox(ctx, src, md, &scan, Pass::Final)?;
            let mailboxes = old_modseqs(env, ctx, a, &scan, &mut sync.warnings);
            manifest::write(md, Some(rel), &sync, mailboxes, ctx.copy.fsync)?;
            let skipped = scan.skipped;
            return Ok(Some(Content { sync, skipped }));
        }
        Some(old) => (
            Some(old.rel.as_path()),
            Some(Content {
                sync: MailboxSync {
                    uids_preserved: true,
                    warnings: vec![
                        "the source Maildir does not exist; migrated as an empty mailbox".into(),
                    ],
                    ..MailboxSync::default()
                },
                skipped: Vec::new(),
            }),
        ),
        None => (None, None),
    };
    let empty = MailboxSync::default();
    manifest::write(md, rel, &empty, inbox_only(), ctx.copy.fsync)?;
    Ok(content)
}

/// Every folder the target will hold, with the HIGHESTMODSEQ the old
/// server gives it (read now, frozen, through `[source] doveadm`).
fn old_modseqs(
    env: &Env<'_>,
    ctx: &SyncContext<'_>,
    a: &Assessment,
    scan: &FolderScan,
    warnings: &mut Vec<String>,
) -> Vec<manifest::Mailbox> {
    let kept = scan.copy.iter();
    let emptied = scan
        .skip
        .iter()
        .filter(|_| ctx.skipped == SkippedFolders::Empty);
    let folders: Vec<&folders::SourceFolder> = kept.chain(emptied).collect();
    let Some(doveadm) = &env.cfg.source.doveadm else {
        return folders
            .into_iter()
            .map(|f| manifest::Mailbox {
                name: f.name.clone(),
                old_modseq: None,
            })
            .collect();
    };
    let status = doveadm.namespace(env.cfg.source.layout).and_then(|ns| {
        let (status, complaint) =
            doveadm.status_readable(&a.mailbox.source_key, "highestmodseq")?;
        Ok((ns, status, complaint))
    });
    let (ns, status, complaint) = match status {
        Ok((ns, status, complaint)) => (Some(ns), status, complaint),
        Err(e) => (None, Default::default(), Some(e)),
    };
    let listed: Vec<manifest::Mailbox> = folders
        .into_iter()
        .map(|f| manifest::Mailbox {
            name: f.name.clone(),
            old_modseq: ns.as_ref().and_then(|ns| {
                status
                    .get(&ns.name(f.name.as_ref()))
                    .and_then(|fields| fields.get("highestmodseq")?.parse().ok())
            }),
        })
        .collect();
    let unknown: Vec<String> = listed
        .iter()
        .filter(|m| m.old_modseq.is_none())
        .map(|m| {
            crate::shown::text(&m.name.as_ref().map_or("INBOX".into(), |n| n.to_string()))
                .to_string()
        })
        .collect();
    if !unknown.is_empty() {
        warnings.push(format!(
            "HIGHESTMODSEQ not carried for {} (the old server does not report it{})",
            unknown.join(", "),
            complaint.map(|c| format!(": {c}")).unwrap_or_default()
        ));
    }
    listed
}

/// From a staged login: the new server gets it ready and agrees (when it
/// can be asked), the login goes live, and both userdbs are read back.
fn go_live(
    env: &Env<'_>,
    a: &Assessment,
    md: &Dir,
    stage: &RefCell<Stage>,
) -> Result<Vec<String>, MailboxError> {
    switch::ready_on_new_server(env, a, md)?;
    let account = a.new_account(env);
    stage.replace(Stage::Enabling);
    match env.target.enable(&account).map_err(MailboxError::from) {
        Ok(()) => {
            stage.replace(Stage::Switched);
        }
        Err(e @ MailboxError::SwitchUnknown(_)) => return Err(e),
        // Still staged (as far as can be told): taken back on the way out.
        Err(e) => {
            if matches!(
                env.target.login(&env.source, &account),
                Ok(NewLogin::Staged)
            ) {
                stage.replace(Stage::Staged(Box::default()));
            }
            return Err(e);
        }
    }
    switch::read_back(env, a)
}

/// After a failure: a staged new login is taken back, and the old login
/// comes back (a no-op if this run never froze it), unless the new one may
/// be live.
fn undo(env: &Env<'_>, user: &str, named: &Named, stage: Stage, e: MailboxError) -> MailboxError {
    let failed_too = |what: &str, t: &dyn std::fmt::Display| {
        MailboxError::Conflict(format!("{e}; then {what} of {user} failed too: {t}"))
    };
    let previous = match stage {
        Stage::Pending => None,
        Stage::Staged(previous) => Some(*previous),
        Stage::Untouched | Stage::Enabling | Stage::Switched => return e,
    };
    let a = match assess(env, named) {
        Ok(a) => a,
        Err(t) => return failed_too("reading its entries again", &t),
    };
    if let Some(previous) = previous
        && let Err(t) = env.target.unstage(&a.new_account(env), &previous)
    {
        return failed_too("taking the staged login back", &MailboxError::from(t));
    }
    match env
        .source
        .thaw(&a.mailbox.source_key, env.cfg.migration.fsync)
    {
        // The staged write's outcome no longer matters: it is taken back.
        Ok(()) => match e {
            MailboxError::SwitchUnknown(cause) => MailboxError::Sql(cause),
            e => e,
        },
        Err(t) => failed_too("restoring the old login", &t),
    }
}
