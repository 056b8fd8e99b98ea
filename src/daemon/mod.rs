//! The unattended daemon: works through the spool queue under systemd.
//!
//! One main loop owns the spool and all decisions. Other threads only
//! send it messages: the inotify watcher (hints that something changed),
//! the signal thread, job workers (one per running job) and notifiers
//! (one per completion e-mail). The loop re-lists the spool on start, on
//! every hint, after every job and every `rescan_interval`, because
//! inotify drops events under load and says nothing on NFS. With a
//! `[queue]`, jobs also come from PostgreSQL ([`fleet`]).

mod fleet;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::job::{Domain, Job, LocalPart};
use crate::metrics::{self, Snapshot};
use crate::migrate::sweep::Sweep;
use crate::migrate::verify::Verification;
use crate::migrate::{self, RunError};
use crate::notify;
use crate::progress::Progress;
use crate::queue::{self, Lease};
use crate::report::{JobStatus, MailboxReport, MailboxStatus, Report, rfc3339};
use crate::spool::{
    Entry, JobRecord, Lock, Notification, Place, ProgressFile, RecordStatus, Rejected, Spool,
    SpoolError, SweepDue, Trust,
};
use crate::throttle::Limiter;

/// A stop request must end the process within this (systemd waits longer).
const STOP_BUDGET: Duration = Duration::from_secs(9);
/// How often the running jobs' progress is published.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

enum Msg {
    /// Something changed in `incoming/` (a hint only).
    Changed,
    /// The watcher lost events.
    Overflow,
    Signal(i32),
    Finished {
        id: String,
        result: JobResult,
    },
    Notified {
        record: PathBuf,
        outcome: notify::Outcome,
    },
    Swept {
        schedule: std::ffi::OsString,
        due: SweepDue,
        result: Result<Sweep, String>,
    },
    /// The queue agent claimed a job for this daemon.
    Claimed(Box<fleet::QueueJob>),
}

/// Counts a running job's progress for `status` and systemd's STATUS=.
#[derive(Default)]
struct Tracker {
    total: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    /// The current mailbox's old login is frozen.
    frozen: AtomicBool,
    current: Mutex<String>,
    finished: Mutex<Vec<MailboxReport>>,
}

impl Progress for Tracker {
    fn job_started(&self, mailboxes: usize) {
        self.total.store(mailboxes as u64, Ordering::Relaxed);
    }
    fn mailbox_started(&self, user: &str) {
        *self.current.lock().expect("not poisoned") = user.to_string();
    }
    fn mailbox_frozen(&self) {
        self.frozen.store(true, Ordering::Relaxed);
    }
    fn message_copied(&self, bytes: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn mailbox_finished(&self, report: &MailboxReport) {
        self.frozen.store(false, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
        if report.status == MailboxStatus::Failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.finished
            .lock()
            .expect("not poisoned")
            .push(report.clone());
    }
}

/// How a job's worker thread ended.
enum JobResult {
    /// The report, and the verification after it (none after a pre-sync;
    /// a verify that could not run is an error, never a pass).
    Ran(Box<Report>, Option<Result<Verification, String>>),
    /// Stopped on request; stays in `active/` and resumes next start.
    Interrupted,
    Failed(String),
}

impl JobResult {
    /// Runs a job on the worker thread: the engine, then (for a cutover
    /// move) the check against the source before the job is filed; a
    /// pre-sync has nothing to verify yet, and a recreate leaves the
    /// content behind on purpose (its empty mailboxes always differ).
    fn run(
        cfg: &Config,
        job: &Job,
        progress: &dyn Progress,
        stop: &AtomicBool,
        limiter: &Limiter,
        done_before: &[MailboxReport],
    ) -> JobResult {
        // A panic is a failed job, not a job that runs forever.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let run = migrate::run_job(cfg, job, progress, stop, limiter, done_before);
            let mut r = JobResult::from(run);
            if let JobResult::Ran(_, v) = &mut r
                && job.cutover
                && job.mode == crate::job::Mode::Move
            {
                *v = Some(
                    migrate::verify::verify(cfg, job.domain.clone(), job.mailboxes.clone())
                        .map_err(|e| e.to_string()),
                );
            }
            r
        }))
        .unwrap_or_else(|_| JobResult::Failed("internal error (panic); see the log".into()))
    }
}

impl From<Result<Report, RunError>> for JobResult {
    fn from(r: Result<Report, RunError>) -> JobResult {
        match r {
            Ok(report) => JobResult::Ran(Box::new(report), None),
            Err(RunError::Interrupted) => JobResult::Interrupted,
            Err(e) => JobResult::Failed(e.to_string()),
        }
    }
}

/// How a finished job is filed.
#[derive(Debug)]
struct Verdict {
    status: RecordStatus,
    report: Option<Report>,
    verification: Option<Verification>,
    /// Why the job failed as a whole.
    error: Option<String>,
}

impl Verdict {
    /// `None` for an interrupted job (it is not filed). Done means every
    /// mailbox done and a verification that ran and found nothing.
    fn of(result: JobResult) -> Option<Verdict> {
        let (report, verification, mut error) = match result {
            JobResult::Interrupted => return None,
            JobResult::Ran(r, Some(Err(e))) => {
                (Some(*r), None, Some(format!("verify could not run: {e}")))
            }
            JobResult::Ran(r, v) => (Some(*r), v.and_then(Result::ok), None),
            JobResult::Failed(e) => (None, None, Some(e)),
        };
        if verification.as_ref().is_some_and(|v| !v.ok) {
            error =
                Some("verify found differences between source and target; see \"verify\"".into());
        }
        let status = match &report {
            Some(r) if r.status == JobStatus::Done && error.is_none() => RecordStatus::Done,
            _ => RecordStatus::Failed,
        };
        Some(Verdict {
            status,
            report,
            verification,
            error,
        })
    }
}

struct Running {
    /// A queue job's stand-in entry is `queue:<row id>`.
    entry: Entry,
    job: Job,
    tracker: Arc<Tracker>,
    /// The job's stop flag: the daemon's for a spool job, its own for a
    /// queue job (cancel, lost lease), set on a daemon stop too.
    stop: Arc<AtomicBool>,
    /// The queue claim, for a queue job.
    lease: Option<Lease>,
    /// When this run started, and when the job first started.
    started: i64,
    first_started: i64,
    resumed: bool,
    /// Set once the thread runs.
    handle: Option<thread::JoinHandle<()>>,
}

struct Daemon {
    config_path: PathBuf,
    cfg: Arc<Config>,
    /// The copy's I/O limits, one for all jobs (a reload changes them).
    limiter: Limiter,
    spool: Spool,
    trust: Trust,
    tx: Sender<Msg>,
    running: HashMap<String, Running>,
    notifiers: usize,
    stop: Arc<AtomicBool>,
    stopping: bool,
    /// Schedules whose sweep is running.
    sweeping: std::collections::HashSet<std::ffi::OsString>,
    /// Last STATUS= sent to systemd (sent again only when it changes).
    last_status: String,
    /// The metrics counted since start: jobs filed and their mailboxes,
    /// durations and copies (running jobs are added when written).
    counted: Snapshot,
    /// The last metrics write failed (logged once, not every second).
    metrics_failing: bool,
    /// The PostgreSQL queue's threads, with `[queue]`.
    fleet: Option<fleet::Fleet>,
    /// Queue jobs claimed but not started (their domain is busy here).
    waiting: Vec<fleet::QueueJob>,
}

/// Runs the daemon until SIGTERM/SIGINT. Returns once every job is either
/// finished or left in `active/` for the next start.
pub fn run(config_path: &Path, cfg: Config) -> Result<(), DaemonError> {
    let stop = Arc::new(AtomicBool::new(false));
    // Registered before anything else: the first TERM/INT sets `stop`, a
    // second one (with `stop` already set) exits at once.
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .map_err(DaemonError::Signals)?;
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(DaemonError::Signals)?;
    }
    let (tx, rx) = channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(DaemonError::Signals)?;
    {
        let tx = tx.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(Msg::Signal(sig)).is_err() {
                        break;
                    }
                }
            })
            .map_err(DaemonError::Signals)?;
    }

    let spool = Spool::prepare(
        &cfg.spool_dir,
        cfg.daemon.submit_group.as_ref().map(|g| g.gid),
    )?;
    let _lock: Lock = spool.lock()?;
    // The preflight's lines in the log; in the background, as a relay
    // or database that does not answer takes its timeout.
    let (check_cfg, check_path) = (cfg.clone(), config_path.to_path_buf());
    let spawned = thread::Builder::new()
        .name("check".into())
        .spawn(move || crate::check::run(&check_cfg, &check_path, None).log());
    if let Err(e) = spawned {
        warn!("cannot run the start-up checks: {e}");
    }
    let _watcher = if cfg.daemon.inotify {
        watch(&spool, tx.clone())
    } else {
        info!(
            "inotify is off; the spool is rescanned every {:?}",
            cfg.daemon.rescan_interval
        );
        None
    };
    let trust = Trust {
        daemon_uid: nix::unistd::geteuid().as_raw(),
        submit_gid: cfg.daemon.submit_group.as_ref().map(|g| g.gid),
    };
    let fleet = match cfg.queue.clone() {
        Some(q) => {
            info!(queue = %q.url, host = q.host.as_str(), "taking jobs from the queue too");
            Some(
                fleet::Fleet::start(
                    q,
                    cfg.notify.clone(),
                    cfg.daemon.rescan_interval,
                    tx.clone(),
                    Arc::clone(&stop),
                )
                .map_err(DaemonError::Signals)?,
            )
        }
        None => None,
    };
    info!(spool = %spool.path().display(), pid = std::process::id(), "daemon started");
    let mut d = Daemon {
        config_path: config_path.to_path_buf(),
        limiter: Limiter::new(cfg.migration.limits),
        cfg: Arc::new(cfg),
        spool,
        trust,
        tx,
        running: HashMap::new(),
        notifiers: 0,
        stop,
        stopping: false,
        sweeping: std::collections::HashSet::new(),
        last_status: String::new(),
        counted: Snapshot::default(),
        metrics_failing: false,
        fleet,
        waiting: Vec::new(),
    };
    d.schedule();
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    d.main_loop(&rx);
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    d.drain(&rx);
    if let Some(f) = d.fleet.as_mut() {
        f.shutdown();
    }
    d.write_metrics();
    info!("daemon stopped");
    Ok(())
}

/// Watches `incoming/`; without inotify the periodic rescan still works.
fn watch(spool: &Spool, tx: Sender<Msg>) -> Option<::notify::RecommendedWatcher> {
    use ::notify::EventKind;
    use ::notify::Watcher;
    use ::notify::event::{AccessKind, AccessMode};
    let handler = move |ev: ::notify::Result<::notify::Event>| {
        let msg = match ev {
            Ok(e) if e.need_rescan() => Msg::Overflow,
            // Only a finished write means anything; opens and reads (our
            // own listing included) would make the loop chase its tail.
            Ok(e)
                if matches!(
                    e.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                ) =>
            {
                Msg::Changed
            }
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
            Ok(_) => Msg::Changed,
            Err(_) => Msg::Overflow,
        };
        let _ = tx.send(msg);
    };
    let incoming = spool.dir(Place::Incoming).path().to_path_buf();
    let result = ::notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&incoming, ::notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match result {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(
                "cannot watch {}: {e}; relying on the periodic rescan",
                incoming.display()
            );
            None
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Daemon {
    fn main_loop(&mut self, rx: &Receiver<Msg>) {
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut next_rescan = Instant::now() + self.cfg.daemon.rescan_interval;
        let mut next_progress = Instant::now();
        let mut next_watchdog = Instant::now();
        loop {
            let now = Instant::now();
            if let Some(w) = watchdog
                && now >= next_watchdog
            {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                next_watchdog = now + w;
            }
            if now >= next_progress {
                self.publish_progress();
                self.write_metrics();
                next_progress = now + PROGRESS_EVERY;
            }
            if now >= next_rescan {
                self.schedule();
                next_rescan = now + self.cfg.daemon.rescan_interval;
            }
            let mut wait = next_rescan.min(next_progress);
            if watchdog.is_some() {
                wait = wait.min(next_watchdog);
            }
            let wait = wait.saturating_duration_since(Instant::now());
            let msg = match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut rescan = self.handle(msg);
            // Coalesce a burst of hints into one listing.
            while let Ok(m) = rx.try_recv() {
                rescan |= self.handle(m);
            }
            if self.stopping {
                return;
            }
            if rescan {
                self.schedule();
                next_rescan = Instant::now() + self.cfg.daemon.rescan_interval;
            }
        }
    }

    /// Handles one message; true when the spool should be re-listed.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Changed => true,
            Msg::Overflow => {
                warn!("the spool watcher lost events; rescanning");
                true
            }
            Msg::Signal(SIGHUP) => {
                self.reload();
                true
            }
            Msg::Signal(_) => {
                if !self.stopping {
                    info!(
                        running = self.running.len(),
                        "stop requested; finishing the files in flight"
                    );
                }
                self.stop.store(true, Ordering::SeqCst);
                for r in self.running.values() {
                    r.stop.store(true, Ordering::SeqCst);
                }
                // Claimed, never started: handed back at once.
                for q in std::mem::take(&mut self.waiting) {
                    if let Some(f) = &self.fleet {
                        f.interrupted(q.lease, serde_json::Value::Null);
                    }
                }
                self.stopping = true;
                false
            }
            Msg::Claimed(q) => {
                self.waiting.push(*q);
                true
            }
            Msg::Finished { id, result } => {
                self.finished(&id, result);
                true
            }
            Msg::Notified { record, outcome } => {
                self.notifiers -= 1;
                self.record_notification(&record, outcome);
                false
            }
            Msg::Swept {
                schedule,
                due,
                result,
            } => {
                self.sweeping.remove(&schedule);
                match result {
                    Ok(s) => {
                        info!(domain = %due.domain, moved = s.moved, "sweep finished");
                        if let (Some(f), Some(job)) = (&self.fleet, due.queue_job) {
                            let detail = format!("{} late messages moved", s.moved);
                            f.event(
                                job,
                                queue::Event {
                                    kind: "swept",
                                    mailbox: None,
                                    detail: Some(detail),
                                },
                            );
                        }
                        if let Err(e) = self.spool.sweep_done(&schedule, &due, s) {
                            error!("cannot record the sweep: {e}");
                        }
                    }
                    // Kept scheduled: the next rescan tries again.
                    Err(e) => error!(domain = %due.domain, "sweep failed: {e}"),
                }
                false
            }
        }
    }

    /// Starts the sweeps that are due, each in its own thread.
    fn start_sweeps(&mut self) {
        for (schedule, due) in self.spool.due_sweeps(now()) {
            if !self.sweeping.insert(schedule.clone()) {
                continue;
            }
            let (cfg, tx) = (Arc::clone(&self.cfg), self.tx.clone());
            let spawned = thread::Builder::new().name("sweep".into()).spawn(move || {
                let result = (|| {
                    let domain = Domain::parse(&due.domain)?;
                    let mailboxes = due
                        .mailboxes
                        .as_ref()
                        .map(|v| v.iter().map(|m| LocalPart::parse(m)).collect())
                        .transpose()?;
                    migrate::sweep::sweep(&cfg, domain, mailboxes).map_err(|e| e.to_string())
                })();
                let _ = tx.send(Msg::Swept {
                    schedule,
                    due,
                    result,
                });
            });
            if let Err(e) = spawned {
                error!("cannot start a sweep: {e}");
            }
        }
    }

    /// After a stop request: waits (within the budget) for running jobs to
    /// let go and for e-mails in flight; what is left resumes next start.
    fn drain(&mut self, rx: &Receiver<Msg>) {
        let deadline = Instant::now() + STOP_BUDGET;
        while !self.running.is_empty() || self.notifiers > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                warn!(
                    jobs = self.running.len(),
                    emails = self.notifiers,
                    "stop budget used up; leaving the rest for the next start"
                );
                return;
            };
            match rx.recv_timeout(left) {
                Ok(Msg::Finished { id, result }) => self.finished(&id, result),
                Ok(Msg::Notified { record, outcome }) => {
                    self.notifiers -= 1;
                    self.record_notification(&record, outcome);
                }
                Ok(Msg::Claimed(q)) => {
                    if let Some(f) = &self.fleet {
                        f.interrupted(q.lease, serde_json::Value::Null);
                    }
                }
                Ok(_) => {}
                Err(_) => {}
            }
        }
    }

    fn reload(&mut self) {
        match Config::load(&self.config_path) {
            Ok(new) if new.spool_dir != self.cfg.spool_dir => error!(
                "reload: spool_dir cannot change while running (restart the daemon); keeping the old configuration"
            ),
            Ok(new) if new.queue != self.cfg.queue => error!(
                "reload: [queue] cannot change while running (restart the daemon); keeping the old configuration"
            ),
            Ok(new) => {
                self.trust.submit_gid = new.daemon.submit_group.as_ref().map(|g| g.gid);
                self.limiter.set(new.migration.limits);
                info!(config = %self.config_path.display(), io_limit = %new.migration.limits, "configuration reloaded; I/O limits apply from each job's next mailbox");
                self.cfg = Arc::new(new);
            }
            Err(e) => error!("reload failed, keeping the old configuration: {e}"),
        }
    }

    fn busy_domain(&self, domain: &Domain) -> bool {
        self.running.values().any(|r| &r.job.domain == domain)
    }

    /// Lists the queue and starts what may start: interrupted jobs in
    /// `active/` first, then `incoming/` in submission order.
    fn schedule(&mut self) {
        if self.stopping {
            return;
        }
        let mut queue = Vec::new();
        for place in [Place::Active, Place::Incoming] {
            match self.spool.list(place) {
                Ok(list) => queue.extend(list),
                Err(e) => error!("cannot list the spool: {e}"),
            }
        }
        self.start_sweeps();
        self.start_waiting();
        for entry in queue {
            if self.running.len() + self.waiting.len() >= self.cfg.daemon.max_parallel_jobs {
                break;
            }
            if entry.place == Place::Active && self.running.contains_key(&entry.base()) {
                continue;
            }
            if let Some((entry, job, resumed)) = self.take(entry) {
                self.start(entry, job, resumed);
            }
        }
        if let Some(f) = &self.fleet {
            let busy = self.running.len() + self.waiting.len();
            f.set_room(self.cfg.daemon.max_parallel_jobs.saturating_sub(busy));
        }
        self.publish_progress();
    }

    /// Starts the claimed queue jobs whose domain is free here.
    fn start_waiting(&mut self) {
        for q in std::mem::take(&mut self.waiting) {
            if self.must_wait(&q.job) || self.running.len() >= self.cfg.daemon.max_parallel_jobs {
                self.waiting.push(q);
                continue;
            }
            let entry = Entry {
                place: Place::Active,
                name: format!("queue:{}", q.lease.job).into(),
                submitted: q.submitted,
            };
            if q.resumed {
                info!(
                    job = q.job.id.as_str(),
                    mailboxes = q.done_before.len(),
                    "resuming a queue job"
                );
            }
            let run = Running {
                entry,
                job: q.job,
                tracker: q.tracker,
                stop: q.stop,
                lease: Some(q.lease),
                started: now(),
                first_started: q.first_started,
                resumed: q.resumed,
                handle: None,
            };
            self.spawn(run, q.done_before);
        }
    }

    /// Never two jobs for one domain (or id) at once; it waits its turn.
    fn must_wait(&self, job: &Job) -> bool {
        self.busy_domain(&job.domain) || self.running.contains_key(job.id.as_str())
    }

    /// Makes `entry` a job that may start now: checked, claimed into
    /// `active/` when it is new, and adopted as the daemon's own copy.
    /// `None` when it was refused, is gone, or waits its turn. Returns the
    /// active entry, the job and whether it resumes an interrupted run.
    fn take(&mut self, entry: Entry) -> Option<(Entry, Job, bool)> {
        let resumed = entry.place == Place::Active;
        if !resumed {
            match self.spool.load(&entry, Some(&self.trust)) {
                Ok(job) if self.must_wait(&job) => return None,
                Ok(_) => {}
                Err(Rejected(why)) => {
                    self.reject(&entry, why);
                    return None;
                }
            }
            match self.spool.claim(&entry) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    error!("cannot claim {}: {e}", entry.name.to_string_lossy());
                    return None;
                }
            }
        }
        let entry = Entry {
            place: Place::Active,
            ..entry
        };
        // What runs is the daemon's own copy, read again after the claim:
        // the submitter may have changed its file since it was loaded.
        let job = match self.spool.adopt(&entry, &self.trust) {
            Ok(Ok(job)) => job,
            Ok(Err(Rejected(why))) => {
                self.reject(&entry, why);
                return None;
            }
            Err(e) => {
                error!("cannot take over {}: {e}", entry.name.to_string_lossy());
                return None;
            }
        };
        // Changed to a busy domain since it was loaded: it waits in active/.
        if self.must_wait(&job) {
            return None;
        }
        Some((entry, job, resumed))
    }

    fn reject(&mut self, entry: &Entry, why: String) {
        warn!(file = %entry.name.to_string_lossy(), "job refused: {why}");
        let mut record = JobRecord::new(entry, entry.base(), RecordStatus::Failed, now());
        record.error = Some(why);
        match self.spool.finish(entry, &record) {
            Ok(_) => self.counted.jobs.failed += 1,
            Err(e) => error!("cannot move the refused job to failed/: {e}"),
        }
    }

    fn start(&mut self, entry: Entry, job: Job, resumed: bool) {
        let started = now();
        let (first_started, done_before) = self.resume_point(job.id.as_str(), resumed, started);
        let run = Running {
            entry,
            job,
            tracker: Arc::new(Tracker::default()),
            stop: Arc::clone(&self.stop),
            lease: None,
            started,
            first_started,
            resumed,
            handle: None,
        };
        self.spawn(run, done_before);
    }

    /// Runs the job on its own thread; it reports back with `Finished`.
    fn spawn(&mut self, mut run: Running, done_before: Vec<MailboxReport>) {
        let id = run.job.id.as_str().to_string();
        let worker = {
            let (cfg, job, tracker, stop, limiter, tx) = (
                Arc::clone(&self.cfg),
                run.job.clone(),
                Arc::clone(&run.tracker),
                Arc::clone(&run.stop),
                self.limiter.clone(),
                self.tx.clone(),
            );
            let id = id.clone();
            move || {
                let result = JobResult::run(&cfg, &job, &*tracker, &stop, &limiter, &done_before);
                let _ = tx.send(Msg::Finished { id, result });
            }
        };
        match thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(worker)
        {
            Ok(h) => run.handle = Some(h),
            Err(e) => {
                error!(job = %id, "cannot start a job thread: {e}");
                if let (Some(f), Some(lease)) = (&self.fleet, run.lease) {
                    f.interrupted(lease, serde_json::Value::Null);
                }
                return;
            }
        }
        self.running.insert(id, run);
    }

    /// When a job first started and the mailboxes it already finished:
    /// from its checkpoint when it resumes, else none and `started`.
    fn resume_point(&self, id: &str, resumed: bool, started: i64) -> (i64, Vec<MailboxReport>) {
        let checkpoint = if resumed {
            self.spool.read_progress(id)
        } else {
            None
        };
        let first_started = checkpoint.as_ref().map_or(started, |p| p.first_started);
        let done_before: Vec<MailboxReport> = checkpoint
            .map(|p| p.finished)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.status == MailboxStatus::Done)
            .collect();
        if !done_before.is_empty() {
            info!(job = %id, mailboxes = done_before.len(), "resuming after the checkpoint");
        }
        if resumed {
            info!(job = %id, "resuming a job interrupted by a stop or crash");
        }
        (first_started, done_before)
    }

    fn finished(&mut self, id: &str, result: JobResult) {
        let Some(mut run) = self.running.remove(id) else {
            return;
        };
        if matches!(result, JobResult::Interrupted) && run.lease.is_none() {
            // The checkpoint the resumed run starts from.
            self.publish_one(&run);
        }
        if let Some(h) = run.handle.take() {
            let _ = h.join();
        }
        self.counted.messages_copied += run.tracker.messages.load(Ordering::Relaxed);
        self.counted.bytes_copied += run.tracker.bytes.load(Ordering::Relaxed);
        let Some(Verdict {
            status,
            report,
            verification,
            error,
        }) = Verdict::of(result)
        else {
            match (&self.fleet, &run.lease) {
                (Some(f), Some(lease)) => {
                    info!(job = %id, "queue job stopped");
                    let record = self.record(&run, RecordStatus::Failed, now());
                    f.interrupted(
                        lease.clone(),
                        serde_json::to_value(&record).unwrap_or_default(),
                    );
                }
                _ => {
                    info!(job = %id, "job interrupted; it stays in active/ and resumes at the next start")
                }
            }
            return;
        };
        let t = now();
        let mut record = self.record(&run, status, t);
        record.error = error;
        record.report = report;
        record.verify = verification;
        if let Some(e) = &record.error {
            error!(job = %id, "job failed: {e}");
        }
        let path = match (&self.fleet, &run.lease) {
            // Its e-mail goes from whichever daemon's outbox claims it.
            (Some(f), Some(lease)) => {
                let state = match status {
                    RecordStatus::Done => queue::FinalState::Done,
                    RecordStatus::Failed => queue::FinalState::Failed,
                };
                let value = serde_json::to_value(&record).unwrap_or_default();
                f.finish(lease.clone(), state, value, record.error.clone());
                None
            }
            _ => match self.spool.finish(&run.entry, &record) {
                Ok(p) => Some(p),
                Err(e) => {
                    error!(job = %id, "cannot file the finished job: {e}");
                    return;
                }
            },
        };
        self.count_filed(&record, t);
        if run.job.cutover
            && record.report.is_some()
            && let Some(delay) = self.cfg.cutover.sweep_delay
        {
            let due = SweepDue {
                record: path
                    .as_deref()
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("{id}{}", crate::spool::REPORT_SUFFIX)),
                queue_job: run.lease.as_ref().map(|l| l.job),
                domain: run.job.domain.to_string(),
                mailboxes: run
                    .job
                    .mailboxes
                    .as_ref()
                    .map(|v| v.iter().map(ToString::to_string).collect()),
                due: t + delay.as_secs() as i64,
            };
            if let Err(e) = self.spool.schedule_sweep(&due) {
                error!(job = %id, "cannot schedule the sweep: {e}");
            }
        }
        if let (Some(to), Some(path)) = (run.job.notify.clone(), path) {
            self.send_notification(path, to, record);
        }
    }

    /// The record of a run that ended at `t`; callers add the outcome.
    fn record(&self, run: &Running, status: RecordStatus, t: i64) -> JobRecord {
        let id = run.job.id.as_str().to_string();
        let mut record = JobRecord::new(&run.entry, id, status, t);
        record.domain = Some(run.job.domain.to_string());
        record.started = Some(rfc3339(run.first_started));
        record.queue_wait_secs = (run.first_started - run.entry.submitted).max(0) as u64;
        record.run_secs = (t - run.first_started).max(0) as u64;
        record.resumed = run.resumed;
        if let Some(to) = &run.job.notify {
            record.notification = Some(Notification::pending(to));
        }
        record
    }

    /// A filed job in the metrics.
    fn count_filed(&mut self, record: &JobRecord, finished: i64) {
        let c = &mut self.counted;
        match record.status {
            RecordStatus::Done => {
                c.jobs.done += 1;
                c.last_success = finished;
            }
            RecordStatus::Failed => c.jobs.failed += 1,
        }
        c.job_seconds_sum += record.run_secs;
        c.jobs_timed += 1;
        for m in record.report.iter().flat_map(|r| &r.mailboxes) {
            c.mailboxes.count(m.status);
        }
    }

    /// Sends the completion e-mail from its own thread; the queue goes on.
    fn send_notification(&mut self, record_path: PathBuf, to: String, record: JobRecord) {
        let settings = self.cfg.notify.clone();
        let tx = self.tx.clone();
        let spawned = thread::Builder::new().name("notify".into()).spawn(move || {
            let facts = notify::Facts {
                job_id: &record.id,
                domain: record.domain.as_deref().unwrap_or_default(),
                mode: record
                    .report
                    .as_ref()
                    .map_or(crate::job::Mode::Move, |r| r.mode),
                succeeded: record.status == RecordStatus::Done,
                error: record.error.as_deref(),
                report: record.report.as_ref(),
            };
            let outcome = notify::send(&settings, &to, &facts);
            let _ = tx.send(Msg::Notified {
                record: record_path,
                outcome,
            });
        });
        match spawned {
            Ok(_) => self.notifiers += 1,
            Err(e) => error!("cannot start the notification thread: {e}"),
        }
    }

    fn record_notification(&self, path: &Path, outcome: notify::Outcome) {
        let result = (|| -> Result<(), String> {
            let data = std::fs::read(path).map_err(|e| e.to_string())?;
            let mut record: JobRecord = serde_json::from_slice(&data).map_err(|e| e.to_string())?;
            record.notification = Some(Notification::Finished(outcome));
            self.spool
                .update_record(path, &record)
                .map_err(|e| e.to_string())
        })();
        if let Err(e) = result {
            error!("cannot record the notification in {}: {e}", path.display());
        }
    }

    fn publish_progress(&mut self) {
        for run in self.running.values() {
            self.publish_one(run);
        }
        let status = match self.running.values().next() {
            None => "idle; waiting for jobs".to_string(),
            Some(r) => {
                let t = &r.tracker;
                format!(
                    "job {} ({}): {}/{} mailboxes, {} messages, {} copied{}",
                    r.job.id.as_str(),
                    r.job.domain,
                    t.done.load(Ordering::Relaxed),
                    t.total.load(Ordering::Relaxed),
                    t.messages.load(Ordering::Relaxed),
                    crate::shown::bytes_human(t.bytes.load(Ordering::Relaxed)),
                    match self.running.len() {
                        1 => String::new(),
                        n => format!(" (+{} more jobs)", n - 1),
                    }
                )
            }
        };
        if status != self.last_status {
            let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }

    /// Writes `[daemon] metrics_file`, when set: what was counted plus
    /// the queue and the running jobs as they are now.
    fn write_metrics(&mut self) {
        let Some(path) = self.cfg.daemon.metrics_file.clone() else {
            return;
        };
        let mut s = self.counted.clone();
        s.jobs.queued = self.queued();
        s.jobs.running = self.running.len() as u64;
        for r in self.running.values() {
            let t = &r.tracker;
            s.messages_copied += t.messages.load(Ordering::Relaxed);
            s.bytes_copied += t.bytes.load(Ordering::Relaxed);
            s.frozen_mailboxes += u64::from(t.frozen.load(Ordering::Relaxed));
        }
        match metrics::write(&path, &s) {
            Ok(()) if self.metrics_failing => {
                info!(file = %path.display(), "metrics written again");
                self.metrics_failing = false;
            }
            Ok(()) => {}
            Err(e) if !self.metrics_failing => {
                warn!(file = %path.display(), "cannot write the metrics: {e}");
                self.metrics_failing = true;
            }
            Err(_) => {}
        }
    }

    /// Jobs waiting: in `incoming/`, or in `active/` and not running.
    fn queued(&self) -> u64 {
        let mut n = 0;
        for place in [Place::Active, Place::Incoming] {
            if let Ok(list) = self.spool.list(place) {
                n += list
                    .iter()
                    .filter(|e| e.place == Place::Incoming || !self.running.contains_key(&e.base()))
                    .count() as u64;
            }
        }
        n
    }

    fn publish_one(&self, r: &Running) {
        let t = &r.tracker;
        let p = ProgressFile {
            id: r.job.id.as_str().to_string(),
            domain: r.job.domain.to_string(),
            pid: std::process::id(),
            first_started: r.first_started,
            started: r.started,
            updated: now(),
            mailboxes_total: t.total.load(Ordering::Relaxed),
            mailboxes_done: t.done.load(Ordering::Relaxed),
            mailboxes_failed: t.failed.load(Ordering::Relaxed),
            messages: t.messages.load(Ordering::Relaxed),
            bytes: t.bytes.load(Ordering::Relaxed),
            current: t.current.lock().expect("not poisoned").clone(),
            finished: t.finished.lock().expect("not poisoned").clone(),
        };
        if let Err(e) = self.spool.write_progress(&p) {
            warn!("cannot write progress: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Mode;

    fn done_report() -> Report {
        Report::finish(
            "j".into(),
            "a.cz".into(),
            Mode::Move,
            Vec::new(),
            "t".into(),
        )
    }

    /// A verify that could not run must never let a job be filed as done
    /// (it used to be filed done with `verify: null`).
    #[test]
    fn a_verify_that_errors_fails_the_job() {
        let v = Verdict::of(JobResult::Ran(
            Box::new(done_report()),
            Some(Err("boom".into())),
        ))
        .unwrap();
        assert_eq!(v.status, RecordStatus::Failed);
        assert_eq!(v.error.as_deref(), Some("verify could not run: boom"));
        let ok = Verification {
            domain: "a.cz".into(),
            ok: true,
            mailboxes: Vec::new(),
        };
        let v = Verdict::of(JobResult::Ran(Box::new(done_report()), Some(Ok(ok)))).unwrap();
        assert_eq!(v.status, RecordStatus::Done);
        let presync = Verdict::of(JobResult::Ran(Box::new(done_report()), None)).unwrap();
        assert_eq!(presync.status, RecordStatus::Done);
        assert!(Verdict::of(JobResult::Interrupted).is_none());
    }
}
