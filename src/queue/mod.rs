//! The PostgreSQL job queue that a control panel feeds and a fleet of
//! daemons works through (`[queue]`). This module is every statement run
//! on it; the schema and its grants are in [`schema`]. Each call is one
//! short transaction, and only the database's clock (`now()`) decides
//! leases. A row here is raw input: the daemon checks it like a job file
//! before anything of it reaches a path or a command.

mod schema;
#[cfg(test)]
mod tests;

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Transaction};
use serde::Serialize;

use crate::db_url::{PgFailure, SqlUrl};

/// The schema `queue init` creates unless `[queue] schema` says otherwise.
pub const DEFAULT_SCHEMA: &str = "maildir_migrate";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per connection: no statement or lock wait may hold up a daemon's tick
/// for long, and no transaction stays open.
const SESSION: &str = "SET statement_timeout = '10s'; SET lock_timeout = '5s';
    SET idle_in_transaction_session_timeout = '60s'; SET TIME ZONE 'UTC';";
/// How long a daemon's outbox owns an e-mail it is sending.
const NOTIFY_LEASE_SECS: f64 = 600.0;
/// The first retry of an e-mail; doubled after each failed claim.
const NOTIFY_BACKOFF_SECS: f64 = 30.0;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job queue: {what}: {message}")]
    Db {
        what: &'static str,
        message: String,
        code: Option<String>,
        transient: bool,
    },
    #[error(
        "job queue schema {schema} is at version {found}; this maildir-migrate needs version {expected} (run `maildir-migrate queue init`)"
    )]
    Version {
        schema: String,
        found: i32,
        expected: i32,
    },
    #[error("role name {0:?}: between 1 and 63 characters, no control characters")]
    Role(String),
}

impl QueueError {
    /// The database could not be reached or restarted: try again later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            QueueError::Db {
                transient: true,
                ..
            }
        )
    }
}

/// Wraps a PostgreSQL error with what was being done.
fn db(what: &'static str) -> impl Fn(postgres::Error) -> QueueError {
    move |e| {
        let f = PgFailure::of(&e);
        QueueError::Db {
            what,
            message: f.message,
            code: f.code,
            transient: f.transient,
        }
    }
}

/// A schema name the SQL text holds unquoted: lower-case ASCII letters,
/// digits and `_`, not starting with a digit, at most 58 bytes (so the
/// NOTIFY channel `<schema>_jobs` fits PostgreSQL's 63).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn parse(s: &str) -> Result<SchemaName, String> {
        let byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        let first = |c: char| !c.is_ascii_digit();
        checked(s, 58, first, byte).map(SchemaName).ok_or_else(|| {
            format!(
                "{:?} is not a schema name: 1 to 58 of a-z, 0-9 and _, not starting with a digit",
                crate::shown::text(s)
            )
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where new and freed jobs are announced.
    fn channel(&self) -> String {
        format!("{}_jobs", self.0)
    }
}

/// A daemon's or a pool's name: 1 to 64 of ASCII letters, digits, `.`,
/// `-` and `_`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName(String);

impl HostName {
    pub fn parse(s: &str) -> Result<HostName, String> {
        let byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
        checked(s, 64, |c| c.is_ascii_alphanumeric(), byte)
            .map(HostName)
            .ok_or_else(|| {
                format!(
                    "{:?} is not a host or pool name: 1 to 64 of A-Z, a-z, 0-9, '.', '-', '_'",
                    crate::shown::text(s)
                )
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `s` when it is 1 to `max` bytes, each `byte`, the first `first`.
fn checked(
    s: &str,
    max: usize,
    first: impl Fn(char) -> bool,
    byte: impl Fn(u8) -> bool,
) -> Option<String> {
    let ok = !s.is_empty() && s.len() <= max && s.starts_with(first) && s.bytes().all(byte);
    ok.then(|| s.to_string())
}

/// `[queue]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    pub url: SqlUrl,
    pub schema: SchemaName,
    /// This daemon's name: the owner of what it claims.
    pub host: HostName,
    /// Jobs of these pools, and jobs without a pool, are this daemon's.
    pub pools: Vec<HostName>,
    pub lease: Duration,
}

/// A job as submitted: the columns a panel inserts. Unchecked.
#[derive(Debug, Clone, Serialize)]
pub struct NewJob {
    pub domain: String,
    pub mode: String,
    pub mailboxes: Option<Vec<String>>,
    pub notify: Option<String>,
    pub cutover: bool,
    pub pool: Option<String>,
}

/// One claim of one job: every write of its owner names it, and the row
/// takes the write only while the claim is the row's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job: i64,
    /// The row's claim counter when it was claimed.
    pub claim: i32,
}

/// A job this daemon now holds.
#[derive(Debug)]
pub struct Claimed {
    pub lease: Lease,
    pub job: NewJob,
    /// What the last owner left for a resume.
    pub checkpoint: Option<serde_json::Value>,
    /// Seconds since the epoch, on the database's clock.
    pub first_started: i64,
    pub submitted: i64,
    /// Claimed before: an earlier owner stopped or was lost.
    pub resumed: bool,
}

/// One line of a job's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub mailbox: Option<String>,
    pub detail: Option<String>,
}

/// A running job's progress, written with every lease renewal.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub phase: String,
    pub mailboxes_total: u64,
    pub mailboxes_done: u64,
    pub mailboxes_failed: u64,
    pub messages: u64,
    pub bytes: u64,
    pub rate_bytes_per_sec: f64,
    pub eta_seconds: Option<u64>,
    pub current_mailbox: String,
    /// What a resume starts from; `None` keeps the row's.
    pub checkpoint: Option<serde_json::Value>,
    /// Written as events in the same transaction.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Held {
        cancel_requested: bool,
    },
    /// Someone else claimed the job since, or it ended: stop at once.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalState {
    Done,
    Failed,
    Cancelled,
}

impl FinalState {
    fn as_str(self) -> &'static str {
        match self {
            FinalState::Done => "done",
            FinalState::Failed => "failed",
            FinalState::Cancelled => "cancelled",
        }
    }
}

/// A completion e-mail this daemon's outbox now owns.
#[derive(Debug)]
pub struct NotificationClaim {
    pub job: i64,
    pub domain: String,
    pub to: String,
    /// The job's final state.
    pub state: String,
    pub error: Option<String>,
    /// The job's record (the spool record's JSON).
    pub report: Option<serde_json::Value>,
    attempt: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It had not started: cancelled.
    Cancelled,
    /// It runs: its owner stops it at the next mailbox boundary.
    Requested,
    Finished,
    NotFound,
}

/// A job as `status` shows it.
#[derive(Debug, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub state: String,
    pub domain: String,
    pub mode: String,
    pub pool: Option<String>,
    pub owner: Option<String>,
    pub submitted: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub phase: Option<String>,
    pub mailboxes_done: Option<i64>,
    pub mailboxes_total: Option<i64>,
    pub mailboxes_failed: Option<i64>,
    pub messages: Option<i64>,
    pub bytes: Option<i64>,
    pub eta_seconds: Option<i64>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub notification_state: Option<String>,
}

/// A connection to the queue, opened again after the database restarted.
pub struct Queue {
    client: Client,
    settings: QueueSettings,
}

fn connect_client(settings: &QueueSettings) -> Result<Client, QueueError> {
    let mut client = settings
        .url
        .postgres_config(CONNECT_TIMEOUT)
        // A database host that vanishes without a reset fails the call in
        // seconds instead of leaving the daemon waiting on the socket.
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10))
        .connect(NoTls)
        .map_err(db("connect"))?;
    client.batch_execute(SESSION).map_err(db("connect"))?;
    Ok(client)
}

/// Saturating: counters in the row are `bigint`.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Timestamps as `status` and the panel show them.
const RFC3339: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS"Z"'"#;

impl Queue {
    pub fn connect(settings: &QueueSettings) -> Result<Queue, QueueError> {
        Ok(Queue {
            client: connect_client(settings)?,
            settings: settings.clone(),
        })
    }

    /// The connection, reopened when the last one was lost.
    fn client(&mut self) -> Result<&mut Client, QueueError> {
        if self.client.is_closed() {
            self.client = connect_client(&self.settings)?;
        }
        Ok(&mut self.client)
    }

    /// A statement with the schema filled in.
    fn sql(&self, template: &str) -> String {
        template
            .replace("{s}", self.settings.schema.as_str())
            .replace("{rfc3339}", RFC3339)
    }

    fn begin(&mut self) -> Result<Transaction<'_>, QueueError> {
        self.client()?.transaction().map_err(db("begin"))
    }

    /// Creates or upgrades the schema; grants the roles given.
    pub fn init(
        &mut self,
        daemon_role: Option<&str>,
        panel_role: Option<&str>,
    ) -> Result<(i32, i32), QueueError> {
        let schema = self.settings.schema.clone();
        schema::init(self.client()?, &schema, daemon_role, panel_role)
    }

    /// Refuses a schema of another version than this build's.
    pub fn check_schema(&mut self) -> Result<(), QueueError> {
        let schema = self.settings.schema.clone();
        let found =
            schema::version(self.client()?, &schema).map_err(db("read the schema version"))?;
        if found == schema::VERSION {
            Ok(())
        } else {
            Err(QueueError::Version {
                schema: schema.as_str().to_string(),
                found,
                expected: schema::VERSION,
            })
        }
    }

    pub fn submit(&mut self, job: &NewJob) -> Result<i64, QueueError> {
        let sql = self.sql(
            "INSERT INTO {s}.jobs (domain, mode, mailboxes, notify, cutover, pool)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        );
        let row = self
            .client()?
            .query_one(
                &sql,
                &[
                    &job.domain,
                    &job.mode,
                    &job.mailboxes,
                    &job.notify,
                    &job.cutover,
                    &job.pool,
                ],
            )
            .map_err(db("submit a job"))?;
        Ok(row.get(0))
    }

    /// Claims the oldest job this daemon may run: of its pools, its domain
    /// not running anywhere, no older job of its domain still open; a
    /// running job whose lease ran out is claimed again (a resume).
    pub fn claim(&mut self) -> Result<Option<Claimed>, QueueError> {
        let sql = self.sql(
            "WITH c AS (
                SELECT j.id FROM {s}.jobs j
                 WHERE (j.state = 'queued' OR (j.state = 'running' AND j.lease_until <= now()))
                   AND (j.pool IS NULL OR j.pool = ANY($2))
                   AND NOT EXISTS (SELECT 1 FROM {s}.jobs o
                                    WHERE lower(o.domain) = lower(j.domain) AND o.id <> j.id
                                      AND (o.state = 'running'
                                           OR (o.state = 'queued' AND o.id < j.id)))
                 ORDER BY j.id LIMIT 1
                 FOR UPDATE OF j SKIP LOCKED)
             UPDATE {s}.jobs SET state = 'running', owner = $1, claims = jobs.claims + 1,
                    lease_until = now() + make_interval(secs => $3),
                    started_at = coalesce(jobs.started_at, now()), updated_at = now()
               FROM c WHERE jobs.id = c.id
             RETURNING jobs.id, jobs.claims, jobs.domain, jobs.mode, jobs.mailboxes, jobs.notify,
                       jobs.cutover, jobs.pool, jobs.checkpoint::text,
                       extract(epoch FROM jobs.started_at)::bigint,
                       extract(epoch FROM jobs.submitted_at)::bigint",
        );
        let (host, event_sql) = (self.host(), self.event_sql());
        let pools: Vec<String> = self.settings.pools.iter().map(|p| p.0.clone()).collect();
        let lease = self.settings.lease.as_secs_f64();
        let mut tx = self.begin()?;
        let row = match tx.query_opt(&sql, &[&host, &pools, &lease]) {
            Ok(r) => r,
            // Another daemon's claim of the domain won the race.
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {
                return Ok(None);
            }
            Err(e) => return Err(db("claim a job")(e)),
        };
        let Some(row) = row else {
            tx.commit().map_err(db("claim a job"))?;
            return Ok(None);
        };
        let claims: i32 = row.get(1);
        let claimed = Claimed {
            lease: Lease {
                job: row.get(0),
                claim: claims,
            },
            job: NewJob {
                domain: row.get(2),
                mode: row.get(3),
                mailboxes: row.get(4),
                notify: row.get(5),
                cutover: row.get(6),
                pool: row.get(7),
            },
            checkpoint: json_column(&row, 8),
            first_started: row.get(9),
            submitted: row.get(10),
            resumed: claims > 1,
        };
        let start = Event {
            kind: if claimed.resumed {
                "resumed"
            } else {
                "started"
            },
            mailbox: None,
            detail: None,
        };
        insert_event(&mut tx, &event_sql, claimed.lease.job, &host, &start)?;
        tx.commit().map_err(db("claim a job"))?;
        Ok(Some(claimed))
    }

    /// Renews the lease and writes the progress and its events.
    pub fn heartbeat(&mut self, lease: &Lease, p: &Progress) -> Result<LeaseState, QueueError> {
        let secs = self.settings.lease.as_secs_f64();
        self.renew(lease, p, secs, None)
    }

    /// Hands a stopped job back with its last progress: its lease ends
    /// now, so the next claim (here or on another daemon) resumes it from
    /// this checkpoint.
    pub fn release(&mut self, lease: &Lease, p: &Progress) -> Result<bool, QueueError> {
        let released = Event {
            kind: "released",
            mailbox: None,
            detail: None,
        };
        let state = self.renew(lease, p, 0.0, Some(&released))?;
        Ok(state != LeaseState::Lost)
    }

    /// The lease set to `secs` from now, with the progress; `last` ends
    /// the transaction with an event and wakes the other daemons.
    fn renew(
        &mut self,
        lease: &Lease,
        p: &Progress,
        secs: f64,
        last: Option<&Event>,
    ) -> Result<LeaseState, QueueError> {
        let sql = self.sql(&format!(
            "UPDATE {{s}}.jobs SET lease_until = now() + make_interval(secs => $4), {PROGRESS}
              WHERE id = $1 AND owner = $2 AND claims = $3 AND state = 'running'
             RETURNING cancel_requested"
        ));
        let row = self.owned_write(lease, &sql, &[&secs], Some(p), last, "renew a lease")?;
        Ok(match row {
            Some(row) => LeaseState::Held {
                cancel_requested: row.get(0),
            },
            None => LeaseState::Lost,
        })
    }

    /// Files the job's end, if the claim still holds; an e-mail to send
    /// goes to the outbox. Returns whether the row took it.
    pub fn finish(
        &mut self,
        lease: &Lease,
        state: FinalState,
        record: Option<&serde_json::Value>,
        error: Option<&str>,
        p: &Progress,
    ) -> Result<bool, QueueError> {
        let sql = self.sql(&format!(
            "UPDATE {{s}}.jobs SET state = $4, finished_at = now(), lease_until = NULL,
                    report = $15::text::jsonb, error = $16,
                    notification_state = CASE WHEN notify IS NULL OR $4 = 'cancelled'
                                              THEN NULL ELSE 'pending' END,
                    notification_next = now(), {PROGRESS}
              WHERE id = $1 AND owner = $2 AND claims = $3 AND state = 'running'
             RETURNING id"
        ));
        let record = record.map(ToString::to_string);
        let end = Event {
            kind: state.as_str(),
            mailbox: None,
            detail: error.map(str::to_string),
        };
        let args: [&(dyn ToSql + Sync); 3] = [&state.as_str(), &record, &error];
        let row = self.owned_write(
            lease,
            &sql,
            &args,
            Some(p),
            Some(&end),
            "file a finished job",
        )?;
        Ok(row.is_some())
    }

    /// Fails a claimed row that is not a valid job, with the reason.
    pub fn reject(&mut self, lease: &Lease, why: &str) -> Result<bool, QueueError> {
        let sql = self.sql(
            "UPDATE {s}.jobs SET state = 'failed', finished_at = now(), lease_until = NULL,
                    error = $4, updated_at = now()
              WHERE id = $1 AND owner = $2 AND claims = $3 AND state = 'running'
             RETURNING id",
        );
        let ev = Event {
            kind: "rejected",
            mailbox: None,
            detail: Some(why.to_string()),
        };
        let row = self.owned_write(lease, &sql, &[&why], None, Some(&ev), "reject a job")?;
        Ok(row.is_some())
    }

    /// The owner's write to its row, taken only while the claim holds
    /// (`None` when it does not): `$1`..`$3` name the claim, `args[0]` is
    /// `$4`; with a progress, `$5`..`$14` are its columns and the rest of
    /// `args` follow, and its events are added. `last` is added after
    /// them and announced to the waiting daemons.
    fn owned_write(
        &mut self,
        lease: &Lease,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
        p: Option<&Progress>,
        last: Option<&Event>,
        what: &'static str,
    ) -> Result<Option<postgres::Row>, QueueError> {
        let (host, event_sql, wake) = (self.host(), self.event_sql(), self.wake_sql());
        let counts = p.map(|p| {
            let n = [
                p.mailboxes_total,
                p.mailboxes_done,
                p.mailboxes_failed,
                p.messages,
                p.bytes,
            ];
            (
                n.map(big),
                p.eta_seconds.map(big),
                p.checkpoint.as_ref().map(ToString::to_string),
            )
        });
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&lease.job, &host, &lease.claim];
        all.extend(args.first().copied());
        if let (Some(p), Some((n, eta, checkpoint))) = (p, &counts) {
            all.extend([
                &p.phase as &(dyn ToSql + Sync),
                &n[0],
                &n[1],
                &n[2],
                &n[3],
                &n[4],
            ]);
            all.extend([
                &p.rate_bytes_per_sec as &(dyn ToSql + Sync),
                eta,
                &p.current_mailbox,
                checkpoint,
            ]);
        }
        all.extend(args.iter().skip(1).copied());
        let mut tx = self.begin()?;
        let Some(row) = tx.query_opt(sql, &all).map_err(db(what))? else {
            return Ok(None);
        };
        let events = p.map(|p| p.events.as_slice()).unwrap_or_default();
        for e in events.iter().chain(last) {
            insert_event(&mut tx, &event_sql, lease.job, &host, e)?;
        }
        if last.is_some() {
            tx.batch_execute(&wake).map_err(db(what))?;
        }
        tx.commit().map_err(db(what))?;
        Ok(Some(row))
    }

    /// Adds a line to a job's history.
    pub fn event(&mut self, job: i64, e: &Event) -> Result<(), QueueError> {
        let (host, sql) = (self.host(), self.event_sql());
        let mut tx = self.begin()?;
        insert_event(&mut tx, &sql, job, &host, e)?;
        tx.commit().map_err(db("add an event"))
    }

    /// Claims the oldest e-mail due, for this daemon's outbox.
    pub fn claim_notification(&mut self) -> Result<Option<NotificationClaim>, QueueError> {
        let sql = self.sql(
            "WITH c AS (
                SELECT id FROM {s}.jobs
                 WHERE (notification_state = 'pending' AND notification_next <= now())
                    OR (notification_state = 'sending' AND notification_lease_until <= now())
                 ORDER BY id LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             UPDATE {s}.jobs SET notification_state = 'sending', notification_owner = $1,
                    notification_attempts = jobs.notification_attempts + 1,
                    notification_lease_until = now() + make_interval(secs => $2)
               FROM c WHERE jobs.id = c.id
             RETURNING jobs.id, jobs.domain, jobs.notify, jobs.state, jobs.error,
                       jobs.report::text, jobs.notification_attempts",
        );
        let host = self.host();
        let row = self
            .client()?
            .query_opt(&sql, &[&host, &NOTIFY_LEASE_SECS])
            .map_err(db("claim an e-mail"))?;
        Ok(row.map(|r| NotificationClaim {
            job: r.get(0),
            domain: r.get(1),
            to: r.get::<_, Option<String>>(2).unwrap_or_default(),
            state: r.get(3),
            error: r.get(4),
            report: json_column(&r, 5),
            attempt: r.get(6),
        }))
    }

    /// Stores how an e-mail went: sent, to be retried later (backoff), or
    /// given up after `max_attempts` claims.
    pub fn notification_done(
        &mut self,
        claim: &NotificationClaim,
        sent: bool,
        outcome: &serde_json::Value,
        max_attempts: i32,
    ) -> Result<(), QueueError> {
        let sql = self.sql(
            "UPDATE {s}.jobs SET notification_outcome = $5::text::jsonb,
                    notification_lease_until = NULL,
                    notification_state = CASE WHEN $4 THEN 'sent'
                        WHEN notification_attempts >= $6 THEN 'failed' ELSE 'pending' END,
                    notification_next = now() + make_interval(
                        secs => $7 * power(2, notification_attempts - 1))
              WHERE id = $1 AND notification_owner = $2 AND notification_attempts = $3
                AND notification_state = 'sending'
             RETURNING notification_state",
        );
        let host = self.host();
        let event_sql = self.event_sql();
        let mut tx = self.begin()?;
        let row = tx
            .query_opt(
                &sql,
                &[
                    &claim.job,
                    &host,
                    &claim.attempt,
                    &sent,
                    &outcome.to_string(),
                    &max_attempts,
                    &NOTIFY_BACKOFF_SECS,
                ],
            )
            .map_err(db("store an e-mail's outcome"))?;
        if row.is_none() {
            return Ok(());
        }
        let detail = outcome
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| claim.to.clone(), |e| format!("{}: {e}", claim.to));
        let ev = Event {
            kind: if sent { "notified" } else { "notify_failed" },
            mailbox: None,
            detail: Some(detail),
        };
        insert_event(&mut tx, &event_sql, claim.job, &host, &ev)?;
        tx.commit().map_err(db("store an e-mail's outcome"))
    }

    /// Cancels a queued job, or asks a running one's owner to stop it.
    pub fn cancel(&mut self, id: i64) -> Result<CancelOutcome, QueueError> {
        let sql = self.sql("SELECT {s}.cancel($1)");
        let row = self
            .client()?
            .query_one(&sql, &[&id])
            .map_err(db("cancel a job"))?;
        Ok(match row.get::<_, String>(0).as_str() {
            "cancelled" => CancelOutcome::Cancelled,
            "requested" => CancelOutcome::Requested,
            "not found" => CancelOutcome::NotFound,
            _ => CancelOutcome::Finished,
        })
    }

    /// The newest `last` jobs, oldest first.
    pub fn jobs(&mut self, last: i64) -> Result<Vec<JobRow>, QueueError> {
        let sql = self.sql(
            "SELECT * FROM (
               SELECT id, state, domain, mode, pool, owner,
                      to_char(submitted_at, {rfc3339}), to_char(started_at, {rfc3339}),
                      to_char(finished_at, {rfc3339}), phase, mailboxes_done, mailboxes_total,
                      mailboxes_failed, messages, bytes, eta_seconds, cancel_requested, error,
                      notification_state
                 FROM {s}.jobs ORDER BY id DESC LIMIT $1) newest
             ORDER BY id",
        );
        let rows = self
            .client()?
            .query(&sql, &[&last])
            .map_err(db("list the jobs"))?;
        Ok(rows
            .iter()
            .map(|r| JobRow {
                id: r.get(0),
                state: r.get(1),
                domain: r.get(2),
                mode: r.get(3),
                pool: r.get(4),
                owner: r.get(5),
                submitted: r.get(6),
                started: r.get(7),
                finished: r.get(8),
                phase: r.get(9),
                mailboxes_done: r.get(10),
                mailboxes_total: r.get(11),
                mailboxes_failed: r.get(12),
                messages: r.get(13),
                bytes: r.get(14),
                eta_seconds: r.get(15),
                cancel_requested: r.get(16),
                error: r.get(17),
                notification_state: r.get(18),
            })
            .collect())
    }

    fn host(&self) -> String {
        self.settings.host.as_str().to_string()
    }

    fn event_sql(&self) -> String {
        self.sql(
            "INSERT INTO {s}.events (job_id, host, kind, mailbox, detail)
             VALUES ($1, $2, $3, $4, $5)",
        )
    }

    /// Announces a freed domain or a new job to the waiting daemons.
    fn wake_sql(&self) -> String {
        format!("NOTIFY {}", self.settings.schema.channel())
    }
}

/// The progress columns; `$5`..`$15` in the statements that write them.
const PROGRESS: &str = "phase = $5, mailboxes_total = $6, mailboxes_done = $7,
    mailboxes_failed = $8, messages = $9, bytes = $10, rate_bytes_per_sec = $11,
    eta_seconds = $12, current_mailbox = $13,
    checkpoint = coalesce($14::text::jsonb, checkpoint),
    updated_at = now()";

/// A `jsonb` column read as text (`…::text` in the query).
fn json_column(row: &postgres::Row, i: usize) -> Option<serde_json::Value> {
    row.get::<_, Option<String>>(i)
        .and_then(|t| serde_json::from_str(&t).ok())
}

fn insert_event(
    tx: &mut Transaction<'_>,
    sql: &str,
    job: i64,
    host: &str,
    e: &Event,
) -> Result<(), QueueError> {
    tx.execute(sql, &[&job, &host, &e.kind, &e.mailbox, &e.detail])
        .map(drop)
        .map_err(db("add an event"))
}

/// Waits for NOTIFY on the queue's channel, on a connection of its own.
pub struct Listener {
    client: Client,
}

impl Listener {
    pub fn connect(settings: &QueueSettings) -> Result<Listener, QueueError> {
        let mut client = connect_client(settings)?;
        client
            .batch_execute(&format!("LISTEN {}", settings.schema.channel()))
            .map_err(db("listen"))?;
        Ok(Listener { client })
    }

    /// Whether a notification came within `timeout`; an error when the
    /// connection is lost (reconnect, and look at the queue: what was
    /// announced meanwhile is gone).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, QueueError> {
        let got = {
            let mut n = self.client.notifications();
            let got = n
                .timeout_iter(timeout)
                .next()
                .map_err(db("wait for notifications"))?
                .is_some();
            // Several at once wake once.
            while let Ok(Some(_)) = n.iter().next() {}
            got
        };
        if self.client.is_closed() {
            return Err(QueueError::Db {
                what: "wait for notifications",
                message: "the connection was closed".into(),
                code: None,
                transient: true,
            });
        }
        Ok(got)
    }
}
