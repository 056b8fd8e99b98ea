//! The dry run: what a job would do, computed by the same code the run
//! uses, with nothing written anywhere.

use serde::Serialize;

use crate::config::Config;
use crate::copy;
use crate::job::{Domain, LocalPart, Scope};
use crate::migrate::assess::{self, State};
use crate::migrate::{Env, MailboxError, Named, RunError, select_mailboxes, server};
use crate::report::SkippedFolder;

#[derive(Debug, Clone, Serialize)]
pub struct FolderPlan {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Pending,
    AlreadyMigrated,
    Conflict,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct MailboxPlan {
    pub user: String,
    pub status: PlanStatus,
    pub problems: Vec<String>,
    pub hash_scheme: Option<String>,
    pub source_maildir: Option<String>,
    pub target_maildir: Option<String>,
    pub folders: Vec<FolderPlan>,
    pub skipped_folders: Vec<SkippedFolder>,
    pub messages: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub domain: String,
    /// What stops the job as a whole (a cutover would be refused).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub in_place: bool,
    pub source_userdb: String,
    pub target_userdb: String,
    pub mailboxes: Vec<MailboxPlan>,
    pub messages: u64,
    pub bytes: u64,
}

pub fn plan(
    cfg: &Config,
    domain: Domain,
    mailboxes: Option<Vec<LocalPart>>,
) -> Result<Plan, RunError> {
    let env = Env::open(cfg, Scope { domain, mailboxes })?;
    let (problems, warnings) = match server::compare_namespaces(cfg) {
        server::Namespaces::Same => (Vec::new(), Vec::new()),
        server::Namespaces::Unknown(why) => (Vec::new(), vec![why]),
        server::Namespaces::Differ(why) => (vec![why], Vec::new()),
    };
    let mut out = Plan {
        domain: env.scope.domain.to_string(),
        problems,
        warnings,
        in_place: env.target.in_place(),
        source_userdb: env.source.describe(),
        target_userdb: env.target.describe(),
        mailboxes: Vec::new(),
        messages: 0,
        bytes: 0,
    };
    for sel in select_mailboxes(&env)? {
        let mp = match sel {
            Ok(named) => plan_mailbox(&env, &named),
            Err((user, why)) => MailboxPlan {
                problems: vec![why],
                ..empty(user, PlanStatus::Error)
            },
        };
        out.messages += mp.messages;
        out.bytes += mp.bytes;
        out.mailboxes.push(mp);
    }
    Ok(out)
}

fn empty(user: String, status: PlanStatus) -> MailboxPlan {
    MailboxPlan {
        user,
        status,
        problems: Vec::new(),
        hash_scheme: None,
        source_maildir: None,
        target_maildir: None,
        folders: Vec::new(),
        skipped_folders: Vec::new(),
        messages: 0,
        bytes: 0,
        warnings: Vec::new(),
    }
}

fn plan_mailbox(env: &Env<'_>, named: &Named) -> MailboxPlan {
    let mut p = empty(named.user(&env.scope.domain), PlanStatus::Pending);
    if let Err(e) = fill(env, named, &mut p) {
        p.status = PlanStatus::Error;
        p.problems.push(e.to_string());
    }
    p
}

fn fill(env: &Env<'_>, named: &Named, p: &mut MailboxPlan) -> Result<(), MailboxError> {
    let a = assess::assess(env, named)?;
    p.user.clone_from(&a.mailbox.user);
    p.hash_scheme = a.scheme.clone();
    match &a.state {
        State::AlreadyMigrated => {
            p.status = PlanStatus::AlreadyMigrated;
            return Ok(());
        }
        State::Conflict(why) => {
            p.status = PlanStatus::Conflict;
            p.problems.push(why.clone());
        }
        State::Staged => {
            p.warnings.push(
                "staged in place by a run that stopped: the job enables it after its checks".into(),
            );
            return Ok(());
        }
        State::Pending => {}
    }
    let (target, claimable) = assess::target_status(env, &a.mailbox)?;
    p.target_maildir = Some(target.display().to_string());
    if claimable == Some(false) {
        p.status = PlanStatus::Conflict;
        p.problems
            .push(MailboxError::TargetNotOurs { path: target }.to_string());
    }
    let (source, scanned) = assess::scan_source(env, &a)?;
    p.source_maildir = Some(source.display().to_string());
    let Some((dir, scan)) = scanned else {
        p.warnings.push(
            "the source Maildir does not exist; it would be migrated as an empty mailbox".into(),
        );
        return Ok(());
    };
    p.warnings.extend(scan.warnings.iter().cloned());
    p.skipped_folders = scan.skipped.clone();
    for f in &scan.copy {
        let fdir = f.open(&dir).map_err(|e| MailboxError::io(dir.path(), e))?;
        let listing = copy::list_messages(&fdir)?;
        let bytes = copy::listing_bytes(&fdir, &listing, copy::Side::Source)?;
        p.messages += listing.len() as u64;
        p.bytes += bytes;
        p.folders.push(FolderPlan {
            name: f.display(),
            messages: listing.len() as u64,
            bytes,
        });
    }
    Ok(())
}
