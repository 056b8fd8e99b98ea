//! What `status` shows: the queue, the running jobs with their progress,
//! and the last finished jobs, read from the spool (nothing is changed).

use serde::Serialize;

use crate::report::rfc3339;
use crate::spool::{Place, RecordStatus, Spool, SpoolError};

#[derive(Debug, Serialize)]
pub struct Status {
    pub spool: String,
    /// Pid of the daemon holding the spool lock, if one runs.
    pub daemon_pid: Option<String>,
    pub queued: Vec<Queued>,
    pub running: Vec<RunningJob>,
    pub finished: Vec<Finished>,
}

#[derive(Debug, Serialize)]
pub struct Queued {
    pub id: String,
    pub file: String,
    pub submitted: String,
    pub domain: Option<String>,
    pub mode: Option<String>,
    /// Why the daemon will refuse it, when it is visibly not a valid job.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunningJob {
    pub id: String,
    pub domain: Option<String>,
    /// `running`, or `interrupted` when no daemon works on it (it resumes
    /// at the next start).
    pub state: &'static str,
    pub mailboxes_done: u64,
    pub mailboxes_total: u64,
    pub mailboxes_failed: u64,
    pub messages: u64,
    pub bytes: u64,
    pub current: Option<String>,
    pub started: Option<String>,
    pub bytes_per_sec: Option<u64>,
    /// Estimated from the share of mailboxes done.
    pub eta_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Finished {
    pub id: String,
    pub status: RecordStatus,
    pub domain: Option<String>,
    pub finished: String,
    pub error: Option<String>,
    pub mailboxes: u64,
    pub failed_mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
    pub notification: Option<String>,
}

pub fn gather(spool: &Spool, last: usize) -> Result<Status, SpoolError> {
    let daemon_pid = spool.running_daemon();
    Ok(Status {
        spool: spool.path().display().to_string(),
        queued: queued(spool)?,
        running: running(spool, daemon_pid.as_deref())?,
        finished: finished(spool, last)?,
        daemon_pid,
    })
}

/// The submitted jobs, with why the daemon will refuse one.
fn queued(spool: &Spool) -> Result<Vec<Queued>, SpoolError> {
    let mut queued = Vec::new();
    for e in spool.list(Place::Incoming)? {
        let (domain, mode, problem) = match spool.load(&e, None) {
            Ok(j) => (Some(j.domain.to_string()), Some(j.mode.to_string()), None),
            Err(r) => (None, None, Some(r.0)),
        };
        queued.push(Queued {
            id: e.base(),
            file: e.name.to_string_lossy().into_owned(),
            submitted: rfc3339(e.submitted),
            domain,
            mode,
            problem,
        });
    }
    Ok(queued)
}

/// The jobs the daemon took up: running, or interrupted with its daemon.
fn running(spool: &Spool, daemon_pid: Option<&str>) -> Result<Vec<RunningJob>, SpoolError> {
    let mut running = Vec::new();
    for e in spool.list(Place::Active)? {
        let id = e.base();
        let p = spool.read_progress(&id);
        let live = matches!((daemon_pid, &p), (Some(pid), Some(p)) if pid == p.pid.to_string());
        let mut job = RunningJob {
            domain: spool.load(&e, None).ok().map(|j| j.domain.to_string()),
            id,
            state: if live { "running" } else { "interrupted" },
            mailboxes_done: 0,
            mailboxes_total: 0,
            mailboxes_failed: 0,
            messages: 0,
            bytes: 0,
            current: None,
            started: None,
            bytes_per_sec: None,
            eta_secs: None,
        };
        if let Some(p) = p {
            let elapsed = (p.updated - p.started).max(0) as u64;
            job.mailboxes_done = p.mailboxes_done;
            job.mailboxes_total = p.mailboxes_total;
            job.mailboxes_failed = p.mailboxes_failed;
            job.messages = p.messages;
            job.bytes = p.bytes;
            job.current = (!p.current.is_empty()).then_some(p.current);
            job.started = Some(rfc3339(p.first_started));
            job.bytes_per_sec = (elapsed > 0).then(|| p.bytes / elapsed);
            job.eta_secs = (live && p.mailboxes_done > 0)
                .then(|| elapsed * (p.mailboxes_total - p.mailboxes_done) / p.mailboxes_done);
        }
        running.push(job);
    }
    Ok(running)
}

/// The `last` finished jobs, newest first.
fn finished(spool: &Spool, last: usize) -> Result<Vec<Finished>, SpoolError> {
    let mut finished: Vec<Finished> = Vec::new();
    for place in [Place::Done, Place::Failed] {
        for r in spool.records(place)? {
            let totals = r.report.map(|rep| rep.totals).unwrap_or_default();
            finished.push(Finished {
                mailboxes: totals.mailboxes,
                failed_mailboxes: totals.failed_mailboxes,
                messages: totals.messages,
                bytes: totals.bytes,
                id: r.id,
                status: r.status,
                domain: r.domain,
                finished: r.finished,
                error: r.error,
                notification: r.notification.as_ref().map(|n| n.status().to_string()),
            });
        }
    }
    finished.sort_by(|a, b| b.finished.cmp(&a.finished).then(b.id.cmp(&a.id)));
    finished.truncate(last);
    Ok(finished)
}
