//! The commands that talk to the PostgreSQL job queue (`[queue]`):
//! `queue init`, and `submit`, `status`, `cancel` when a queue is set.

use std::path::Path;

use super::{Failure, print_json};
use crate::config::Config;
use crate::exit;
use crate::job::{Job, RawJob};
use crate::queue::{CancelOutcome, JobRow, NewJob, Queue, QueueError, QueueSettings};

/// The queue of `cfg`, or a usage error naming what needs it.
pub(super) fn settings<'a>(cfg: &'a Config, what: &str) -> Result<&'a QueueSettings, Failure> {
    cfg.queue.as_ref().ok_or_else(|| {
        Failure(
            exit::CONFIG,
            format!("{what} needs a [queue] section in the configuration"),
        )
    })
}

fn failure(e: QueueError) -> Failure {
    let code = if e.is_transient() {
        exit::TEMPFAIL
    } else {
        exit::IOERR
    };
    Failure(code, e.to_string())
}

fn connect(settings: &QueueSettings) -> Result<Queue, Failure> {
    Queue::connect(settings).map_err(failure)
}

/// Creates or upgrades the schema, and grants the two roles their rights.
pub(super) fn init(
    cfg: &Config,
    daemon_role: Option<&str>,
    panel_role: Option<&str>,
) -> Result<u8, Failure> {
    let settings = settings(cfg, "queue init")?;
    let mut q = connect(settings)?;
    let (before, after) = q.init(daemon_role, panel_role).map_err(failure)?;
    let schema = settings.schema.as_str();
    if before == after {
        outln!("schema {schema} is already at version {after}");
    } else if before == 0 {
        outln!("schema {schema} created at version {after}");
    } else {
        outln!("schema {schema} upgraded from version {before} to {after}");
    }
    for (what, role) in [("daemon", daemon_role), ("panel", panel_role)] {
        if let Some(r) = role {
            outln!("granted the {what} rights to role {r}");
        }
    }
    Ok(exit::OK)
}

/// Inserts a job row after checking it exactly as the daemon will.
pub(super) fn submit(cfg: &Config, job: RawJob, pool: Option<String>) -> Result<u8, Failure> {
    let settings = settings(cfg, "submit --pool")?;
    let text = serde_json::to_string(&job).expect("serialisable");
    Job::parse(Path::new("the job"), "submit", &text)
        .map_err(|e| Failure(exit::DATAERR, e.to_string()))?;
    if let Some(p) = &pool {
        crate::queue::HostName::parse(p)
            .map_err(|e| Failure(exit::USAGE, format!("--pool: {e}")))?;
    }
    let row = NewJob {
        domain: job.domain,
        mode: job.mode.to_string(),
        mailboxes: job.mailboxes,
        notify: job.notify,
        cutover: job.cutover.unwrap_or(true),
        pool,
    };
    let id = connect(settings)?.submit(&row).map_err(failure)?;
    outln!("{id}");
    Ok(exit::OK)
}

/// Cancels a queued job, or asks a running one to stop.
pub(super) fn cancel(cfg: &Config, id: i64) -> Result<u8, Failure> {
    let settings = settings(cfg, "cancel")?;
    match connect(settings)?.cancel(id).map_err(failure)? {
        CancelOutcome::Cancelled => {
            outln!("job {id} cancelled before it started");
            Ok(exit::OK)
        }
        CancelOutcome::Requested => {
            outln!(
                "job {id} is running: it stops at its current mailbox, which gets its old login back"
            );
            Ok(exit::OK)
        }
        CancelOutcome::Finished => Err(Failure(
            exit::DATAERR,
            format!("job {id} has already finished"),
        )),
        CancelOutcome::NotFound => Err(Failure(exit::NOINPUT, format!("no job {id} in the queue"))),
    }
}

/// The newest `last` jobs of the queue, running ones with their progress.
pub(super) fn status(settings: &QueueSettings, json: bool, last: usize) -> Result<u8, Failure> {
    let rows = connect(settings)?
        .jobs(i64::try_from(last).unwrap_or(i64::MAX))
        .map_err(failure)?;
    if json {
        print_json(&rows);
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        outln!("queue {}: no jobs", settings.url);
    }
    for r in &rows {
        outln!("{}", line(r));
    }
    Ok(exit::OK)
}

/// One job in `status`: id, state, domain, where and how far.
fn line(r: &JobRow) -> String {
    let mut s = format!(
        "{:>6} {:<9} {:<28} {:<8}",
        r.id,
        r.state,
        crate::shown::text(&r.domain),
        crate::shown::text(&r.mode)
    );
    if let Some(owner) = &r.owner {
        s.push_str(&format!(" on {}", crate::shown::text(owner)));
    }
    if r.state == "running" {
        s.push_str(&format!(
            " {}: {}/{} mailboxes, {} messages, {}",
            r.phase.as_deref().unwrap_or("starting"),
            r.mailboxes_done.unwrap_or(0),
            r.mailboxes_total.unwrap_or(0),
            r.messages.unwrap_or(0),
            crate::shown::bytes_human(r.bytes.unwrap_or(0).max(0) as u64),
        ));
    }
    if let Some(e) = &r.error {
        s.push_str(&format!(" — {}", crate::shown::text(e)));
    }
    s
}
