//! The daemon's side of the PostgreSQL job queue (`[queue]`).
//!
//! Three threads, none of them the main loop, so a database that stops
//! answering never holds up the copy or the spool:
//! * the agent claims jobs while the daemon has room, and keeps the
//!   lease of every job it holds alive with one short transaction per
//!   tick that also carries the progress. A job whose lease could not be
//!   renewed for two thirds of its length is stopped (its current mailbox
//!   gets its old login back) before the database lets anyone else claim
//!   it; a cancel request stops it the same way;
//! * the listener waits for NOTIFY and wakes the agent (the agent also
//!   polls every `rescan_interval`: notifications are lost across
//!   reconnects);
//! * the outbox sends the completion e-mails of every daemon's finished
//!   jobs, each claimed like a job so it goes out once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{Msg, Tracker};
use crate::job::Job;
use crate::notify;
use crate::queue::{
    Event, FinalState, Lease, LeaseState, Listener, NewJob, Progress, Queue, QueueError,
    QueueSettings,
};
use crate::report::{MailboxReport, MailboxStatus, Report};

/// How often leases are renewed and progress written.
const TICK: Duration = Duration::from_secs(1);
/// How long the agent keeps trying to file results after a stop.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// Delivery attempts of one e-mail across daemons (each one already
/// retries `[notify] retries` times).
const NOTIFY_ATTEMPTS: i32 = 5;

/// A job the agent claimed and validated, handed to the main loop.
pub(super) struct QueueJob {
    pub lease: Lease,
    pub job: Job,
    pub resumed: bool,
    pub done_before: Vec<MailboxReport>,
    pub first_started: i64,
    pub submitted: i64,
    pub tracker: Arc<Tracker>,
    /// This job's own stop flag (cancel, lost lease, daemon stop).
    pub stop: Arc<AtomicBool>,
}

/// What the job's row keeps for the next claimer: the mailboxes finished
/// so far (when it first started is the row's `started_at`).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Checkpoint {
    finished: Vec<MailboxReport>,
}

enum Cmd {
    /// The main loop's room may have changed, or NOTIFY came.
    Wake,
    /// A job ended with a verdict: `record` is the spool record's JSON.
    Finish {
        lease: Lease,
        state: FinalState,
        record: serde_json::Value,
        error: Option<String>,
    },
    /// A job stopped before its end: cancelled (if a cancel was seen),
    /// else handed back for the next claimer.
    Interrupted {
        lease: Lease,
        record: serde_json::Value,
    },
    Event(i64, Event),
    Shutdown,
}

/// The main loop's handle on the queue threads.
pub(super) struct Fleet {
    tx: Sender<Cmd>,
    /// Jobs the main loop can still take; the agent claims while > 0.
    room: Arc<AtomicUsize>,
    agent: Option<thread::JoinHandle<()>>,
}

impl Fleet {
    pub fn start(
        settings: QueueSettings,
        notify: notify::Settings,
        rescan: Duration,
        main: Sender<Msg>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Fleet> {
        let (tx, rx) = channel();
        let room = Arc::new(AtomicUsize::new(0));
        let listener = {
            let (settings, tx, stop) = (settings.clone(), tx.clone(), Arc::clone(&stop));
            move || listen(&settings, &tx, &stop)
        };
        thread::Builder::new()
            .name("queue-listen".into())
            .spawn(listener)?;
        let outbox = {
            let (settings, stop) = (settings.clone(), Arc::clone(&stop));
            move || outbox(&settings, &notify, &stop)
        };
        thread::Builder::new()
            .name("queue-outbox".into())
            .spawn(outbox)?;
        let watchdog = Watchdog::default();
        let watching = watchdog.clone();
        thread::Builder::new()
            .name("queue-watchdog".into())
            .spawn(move || watching.run())?;
        let agent = Agent {
            queue: None,
            watchdog,
            settings,
            tracked: HashMap::new(),
            pending: Vec::new(),
            main,
            room: Arc::clone(&room),
            rescan,
            stop,
        };
        let agent = thread::Builder::new()
            .name("queue-agent".into())
            .spawn(move || agent.run(&rx))?;
        Ok(Fleet {
            tx,
            room,
            agent: Some(agent),
        })
    }

    /// How many more jobs the main loop can take now.
    pub fn set_room(&self, n: usize) {
        let before = self.room.swap(n, Ordering::SeqCst);
        if n > before {
            let _ = self.tx.send(Cmd::Wake);
        }
    }

    pub fn finish(
        &self,
        lease: Lease,
        state: FinalState,
        record: serde_json::Value,
        error: Option<String>,
    ) {
        let _ = self.tx.send(Cmd::Finish {
            lease,
            state,
            record,
            error,
        });
    }

    pub fn interrupted(&self, lease: Lease, record: serde_json::Value) {
        let _ = self.tx.send(Cmd::Interrupted { lease, record });
    }

    pub fn event(&self, job: i64, event: Event) {
        let _ = self.tx.send(Cmd::Event(job, event));
    }

    /// Files what is left (within a budget) and ends the agent.
    pub fn shutdown(&mut self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(a) = self.agent.take() {
            let _ = a.join();
        }
    }
}

/// When each held job must stop, checked by a thread that never waits on
/// the database: a renewal hanging on a network that drops packets cannot
/// keep a job running past its lease.
#[derive(Clone, Default)]
struct Watchdog(Arc<Mutex<HashMap<i64, Watched>>>);

struct Watched {
    stop_at: Instant,
    stop: Arc<AtomicBool>,
    /// It stopped the job: the lease may be lost.
    fired: bool,
}

impl Watchdog {
    fn watch(&self, job: i64, stop_at: Instant, stop: &Arc<AtomicBool>) {
        let w = Watched {
            stop_at,
            stop: Arc::clone(stop),
            fired: false,
        };
        self.0.lock().expect("not poisoned").insert(job, w);
    }

    fn renewed(&self, job: i64, stop_at: Instant) {
        if let Some(w) = self.0.lock().expect("not poisoned").get_mut(&job) {
            w.stop_at = stop_at;
        }
    }

    fn fired(&self, job: i64) -> bool {
        let watched = self.0.lock().expect("not poisoned");
        watched.get(&job).is_some_and(|w| w.fired)
    }

    fn forget(&self, job: i64) {
        self.0.lock().expect("not poisoned").remove(&job);
    }

    /// Until the agent is gone.
    fn run(self) {
        while Arc::strong_count(&self.0) > 1 {
            thread::sleep(Duration::from_millis(200));
            let now = Instant::now();
            for (job, w) in self.0.lock().expect("not poisoned").iter_mut() {
                if now >= w.stop_at && !w.fired {
                    w.fired = true;
                    w.stop.store(true, Ordering::SeqCst);
                    error!(
                        job,
                        "the job's lease could not be renewed in time; stopping it before it runs out"
                    );
                }
            }
        }
    }
}

/// A job the agent holds a lease on.
struct Held {
    lease: Lease,
    tracker: Arc<Tracker>,
    stop: Arc<AtomicBool>,
    started: Instant,
    /// Finished mailboxes already written as events.
    reported: usize,
    /// Done under an earlier claim: the engine reports them again, their
    /// events are already in the row.
    done_before: HashSet<String>,
    cancelled: bool,
    lost: bool,
}

/// A write that must reach the database (retried every tick).
enum Pending {
    Finish {
        lease: Lease,
        state: FinalState,
        record: serde_json::Value,
        error: Option<String>,
        progress: Progress,
    },
    Release(Lease, Progress),
    Event(i64, Event),
}

struct Agent {
    queue: Option<Queue>,
    watchdog: Watchdog,
    settings: QueueSettings,
    tracked: HashMap<i64, Held>,
    pending: Vec<Pending>,
    main: Sender<Msg>,
    room: Arc<AtomicUsize>,
    rescan: Duration,
    stop: Arc<AtomicBool>,
}

impl Agent {
    fn run(mut self, rx: &Receiver<Cmd>) {
        let mut next_tick = Instant::now();
        let mut next_poll = Instant::now();
        let mut shutdown_by: Option<Instant> = None;
        loop {
            let wait = next_tick.min(next_poll);
            match rx.recv_timeout(wait.saturating_duration_since(Instant::now())) {
                Ok(Cmd::Wake) => next_poll = Instant::now(),
                Ok(Cmd::Shutdown) => shutdown_by = Some(Instant::now() + SHUTDOWN_BUDGET),
                Ok(cmd) => self.take(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    shutdown_by.get_or_insert(Instant::now() + SHUTDOWN_BUDGET);
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.flush();
                self.heartbeats();
                next_tick = now + TICK;
            }
            if let Some(by) = shutdown_by {
                self.flush();
                if self.pending.is_empty() || Instant::now() >= by {
                    if !self.pending.is_empty() {
                        warn!(
                            writes = self.pending.len(),
                            "the queue database did not take the last results; their leases run out and another claim resumes them"
                        );
                    }
                    return;
                }
                continue;
            }
            if now >= next_poll && !self.stop.load(Ordering::SeqCst) {
                self.claim();
                next_poll = now + self.rescan;
            }
        }
    }

    /// The connection, opened (again) when needed; `None` while the
    /// database cannot be reached.
    fn queue(&mut self) -> Option<&mut Queue> {
        if self.queue.is_none() {
            // A schema of another version is refused, not guessed at.
            let connected = Queue::connect(&self.settings).and_then(|mut q| {
                q.check_schema()?;
                Ok(q)
            });
            match connected {
                Ok(q) => {
                    info!(queue = %self.settings.url, "connected to the job queue");
                    self.queue = Some(q);
                }
                Err(e) => {
                    warn!("job queue: {e}");
                    return None;
                }
            }
        }
        self.queue.as_mut()
    }

    /// Keeps a connection after a transient error (the queue reconnects
    /// on its next call); drops it after any other.
    fn failed(&mut self, what: &str, e: &QueueError) {
        warn!("job queue: {what}: {e}");
        if !e.is_transient() {
            self.queue = None;
        }
    }

    fn take(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Finish {
                lease,
                state,
                record,
                error,
            } => {
                let progress = self.untrack(&lease);
                self.pending.push(Pending::Finish {
                    lease,
                    state,
                    record,
                    error,
                    progress,
                });
            }
            Cmd::Interrupted { lease, record } => {
                let cancelled = self.tracked.get(&lease.job).is_some_and(|h| h.cancelled);
                let lost = self.tracked.get(&lease.job).is_some_and(|h| h.lost);
                let progress = self.untrack(&lease);
                if cancelled {
                    self.pending.push(Pending::Finish {
                        lease,
                        state: FinalState::Cancelled,
                        record,
                        error: Some("cancelled on request".into()),
                        progress,
                    });
                } else if !lost {
                    self.pending.push(Pending::Release(lease, progress));
                }
            }
            Cmd::Event(job, event) => self.pending.push(Pending::Event(job, event)),
            Cmd::Wake | Cmd::Shutdown => {}
        }
        self.flush();
    }

    /// Stops tracking a job; its last progress goes with its result.
    fn untrack(&mut self, lease: &Lease) -> Progress {
        self.watchdog.forget(lease.job);
        match self.tracked.remove(&lease.job) {
            Some(h) => progress_of(&h).0,
            None => Progress::default(),
        }
    }

    /// Writes what is waiting, oldest first, until one fails.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            if self.queue().is_none() {
                return;
            }
            let Some(q) = self.queue.as_mut() else { return };
            let r = match &self.pending[0] {
                Pending::Finish {
                    lease,
                    state,
                    record,
                    error,
                    progress,
                } => q
                    .finish(lease, *state, Some(record), error.as_deref(), progress)
                    .map(|ours| {
                        if !ours {
                            warn!(job = lease.job, "the job's lease was lost; its result is not recorded (the next claimer runs it again)");
                        }
                    }),
                Pending::Release(lease, progress) => q.release(lease, progress).map(drop),
                Pending::Event(job, e) => q.event(*job, e),
            };
            match r {
                Ok(()) => {
                    self.pending.remove(0);
                }
                Err(e) => {
                    self.failed("cannot record a result (will retry)", &e);
                    return;
                }
            }
        }
    }

    /// Claims jobs while the main loop has room.
    fn claim(&mut self) {
        let room = Arc::clone(&self.room);
        while room.load(Ordering::SeqCst) > 0 {
            let Some(q) = self.queue() else { return };
            let claimed = match q.claim() {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    self.failed("cannot claim a job", &e);
                    return;
                }
            };
            let _ = room.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            let lease = claimed.lease.clone();
            let job = match validate(&claimed.lease, &claimed.job) {
                Ok(job) => job,
                Err(why) => {
                    warn!(job = lease.job, "queued job refused: {why}");
                    if let Err(e) = q.reject(&lease, &why) {
                        self.failed("cannot mark a refused job", &e);
                    }
                    continue;
                }
            };
            let checkpoint: Checkpoint = claimed
                .checkpoint
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let done_before: Vec<MailboxReport> = checkpoint
                .finished
                .into_iter()
                .filter(|r| r.status == MailboxStatus::Done)
                .collect();
            let held = Held {
                lease: lease.clone(),
                tracker: Arc::new(Tracker::default()),
                stop: Arc::new(AtomicBool::new(false)),
                started: Instant::now(),
                reported: 0,
                done_before: done_before.iter().map(|r| r.user.clone()).collect(),
                cancelled: false,
                lost: false,
            };
            info!(job = lease.job, domain = %job.domain, resumed = claimed.resumed, "claimed a job from the queue");
            let handed = QueueJob {
                lease: lease.clone(),
                job,
                resumed: claimed.resumed,
                done_before,
                first_started: claimed.first_started,
                submitted: claimed.submitted,
                tracker: Arc::clone(&held.tracker),
                stop: Arc::clone(&held.stop),
            };
            let stop_at = Instant::now() + self.settings.lease * 2 / 3;
            self.watchdog.watch(lease.job, stop_at, &held.stop);
            self.tracked.insert(lease.job, held);
            if self.main.send(Msg::Claimed(Box::new(handed))).is_err() {
                return;
            }
        }
    }

    /// Renews every lease with the job's progress; stops a job that was
    /// cancelled or lost its lease (the watchdog stops one whose lease
    /// may run out before it can stop).
    fn heartbeats(&mut self) {
        let lease_len = self.settings.lease;
        let ids: Vec<i64> = self.tracked.keys().copied().collect();
        for id in ids {
            let sent_at = Instant::now();
            let Some(held) = self.tracked.get_mut(&id) else {
                continue;
            };
            if held.lost {
                continue;
            }
            let (progress, seen) = progress_of(held);
            let lease = held.lease.clone();
            let result = self.queue().map(|q| q.heartbeat(&lease, &progress));
            let held = self.tracked.get_mut(&id).expect("still tracked");
            match result {
                Some(Ok(LeaseState::Held { cancel_requested })) => {
                    self.watchdog.renewed(id, sent_at + lease_len * 2 / 3);
                    held.reported = seen;
                    if cancel_requested && !held.cancelled {
                        info!(job = id, "cancel requested; stopping the job");
                        held.cancelled = true;
                        held.stop.store(true, Ordering::SeqCst);
                    }
                }
                Some(Ok(LeaseState::Lost)) => {
                    error!(job = id, "the job's lease was taken over; stopping it");
                    held.lost = true;
                    held.stop.store(true, Ordering::SeqCst);
                }
                Some(Err(e)) => self.failed("cannot renew a lease", &e),
                None => {}
            }
            let held = self.tracked.get_mut(&id).expect("still tracked");
            // The watchdog stopped it with a third of the lease left:
            // enough to roll the current mailbox back before anyone may
            // claim the job.
            if !held.lost && self.watchdog.fired(id) {
                held.lost = true;
                let ev = Event {
                    kind: "lease_lost",
                    mailbox: None,
                    detail: Some(self.settings.host.as_str().to_string()),
                };
                self.pending.push(Pending::Event(id, ev));
            }
        }
    }
}

/// A row becomes a job exactly as a job file does.
fn validate(lease: &Lease, row: &NewJob) -> Result<Job, String> {
    let raw = serde_json::json!({
        "domain": row.domain,
        "mode": row.mode,
        "mailboxes": row.mailboxes,
        "notify": row.notify,
        "cutover": row.cutover,
    });
    let mut raw = raw;
    // Absent, not null: the job file format has no nulls.
    if let Some(o) = raw.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    let name = format!("queue job {}", lease.job);
    Job::parse(Path::new(&name), &job_id(lease.job), &raw.to_string()).map_err(|e| {
        let text = e.to_string();
        text.strip_prefix(&format!("{name}: "))
            .unwrap_or(&text)
            .to_string()
    })
}

/// The job id a queue row runs under (the same on every daemon: the
/// target's claim markers name it).
pub(super) fn job_id(row: i64) -> String {
    format!("queue-{row}")
}

/// The job's progress now, with the mailboxes finished since the last
/// renewal as events, and how many finished mailboxes that covers.
fn progress_of(held: &Held) -> (Progress, usize) {
    let t = &held.tracker;
    let total = t.total.load(Ordering::Relaxed);
    // Finished, failed ones included (phase, ETA); the row counts them apart.
    let done = t.done.load(Ordering::Relaxed);
    let failed = t.failed.load(Ordering::Relaxed);
    let bytes = t.bytes.load(Ordering::Relaxed);
    let finished = t.finished.lock().expect("not poisoned");
    let seen = finished.len();
    let events: Vec<Event> = finished
        .iter()
        .skip(held.reported)
        .filter(|r| !(r.status == MailboxStatus::Done && held.done_before.contains(&r.user)))
        .map(|r| Event {
            kind: if r.status == MailboxStatus::Failed {
                "mailbox_failed"
            } else {
                "mailbox_done"
            },
            mailbox: Some(r.user.clone()),
            detail: r.error.clone(),
        })
        .collect();
    // Rewritten only when it grew; the row keeps the last one.
    let checkpoint = (seen > held.reported).then(|| {
        let c = Checkpoint {
            finished: finished.clone(),
        };
        serde_json::to_value(c).unwrap_or_default()
    });
    drop(finished);
    let secs = held.started.elapsed().as_secs_f64().max(0.001);
    let phase = if total == 0 {
        "starting"
    } else if done >= total {
        "verifying"
    } else if t.frozen.load(Ordering::Relaxed) {
        "switching"
    } else {
        "copying"
    };
    let progress = Progress {
        phase: phase.into(),
        mailboxes_total: total,
        mailboxes_done: done.saturating_sub(failed),
        mailboxes_failed: failed,
        messages: t.messages.load(Ordering::Relaxed),
        bytes,
        rate_bytes_per_sec: bytes as f64 / secs,
        eta_seconds: (done > 0 && done < total)
            .then(|| (secs * (total - done) as f64 / done as f64) as u64),
        current_mailbox: t.current.lock().expect("not poisoned").clone(),
        checkpoint,
        events,
    };
    (progress, seen)
}

/// Wakes the agent on NOTIFY; reconnects after a lost connection.
fn listen(settings: &QueueSettings, agent: &Sender<Cmd>, stop: &AtomicBool) {
    let mut listener: Option<Listener> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(l) = listener.as_mut() else {
            match Listener::connect(settings) {
                Ok(l) => {
                    listener = Some(l);
                    // Whatever was notified while we were away.
                    let _ = agent.send(Cmd::Wake);
                }
                Err(_) => thread::sleep(Duration::from_secs(2)),
            }
            continue;
        };
        match l.wait(Duration::from_secs(1)) {
            Ok(true) => {
                if agent.send(Cmd::Wake).is_err() {
                    return;
                }
            }
            Ok(false) => {}
            Err(e) => {
                warn!("job queue listener: {e}; reconnecting");
                listener = None;
            }
        }
    }
}

/// Sends the completion e-mails of finished queue jobs, each claimed first
/// so that one daemon sends it.
fn outbox(settings: &QueueSettings, notify: &notify::Settings, stop: &AtomicBool) {
    let mut queue: Option<Queue> = None;
    while !stop.load(Ordering::SeqCst) {
        if queue.is_none() {
            queue = Queue::connect(settings).ok();
        }
        let Some(q) = queue.as_mut() else {
            thread::sleep(Duration::from_secs(2));
            continue;
        };
        match q.claim_notification() {
            Ok(Some(claim)) => {
                let report: Option<Report> = claim
                    .report
                    .as_ref()
                    .and_then(|r| r.get("report"))
                    .and_then(|r| serde_json::from_value(r.clone()).ok());
                let facts = notify::Facts {
                    job_id: &job_id(claim.job),
                    domain: &claim.domain,
                    mode: report.as_ref().map_or(crate::job::Mode::Move, |r| r.mode),
                    succeeded: claim.state == "done",
                    error: claim.error.as_deref(),
                    report: report.as_ref(),
                };
                let outcome = notify::send(notify, &claim.to, &facts);
                let sent = outcome.status == notify::OutcomeStatus::Sent;
                let value = serde_json::to_value(&outcome).unwrap_or_default();
                if let Err(e) = q.notification_done(&claim, sent, &value, NOTIFY_ATTEMPTS) {
                    warn!(job = claim.job, "cannot record the e-mail's outcome: {e}");
                    queue = None;
                }
            }
            Ok(None) => sleep_unless(stop, Duration::from_secs(2)),
            Err(e) => {
                warn!("job queue outbox: {e}");
                queue = None;
                sleep_unless(stop, Duration::from_secs(2));
            }
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let _ = crate::throttle::sleep_unless_stopped(d, stop);
}
