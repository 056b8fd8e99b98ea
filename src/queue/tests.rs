//! Against the real PostgreSQL (postgres@127.0.0.1:5432, trust), each
//! test in a database of its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::Duration;

use super::*;

/// A database dropped at the end of the test.
struct Db(String);

impl Db {
    fn new() -> Db {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mm_queue_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        Db(name)
    }

    /// A daemon's settings on this database, its schema initialised.
    fn daemon(&self, host: &str, pools: &[&str], lease: Duration) -> Queue {
        let settings = QueueSettings {
            url: SqlUrl::parse(&format!("postgresql://postgres@127.0.0.1/{}", self.0), None)
                .unwrap(),
            schema: SchemaName::parse(DEFAULT_SCHEMA).unwrap(),
            host: HostName::parse(host).unwrap(),
            pools: pools.iter().map(|p| HostName::parse(p).unwrap()).collect(),
            lease,
        };
        let mut q = Queue::connect(&settings).unwrap();
        q.init(None, None).unwrap();
        q
    }

    fn sql(&self) -> Client {
        Client::connect(
            &format!("host=127.0.0.1 user=postgres dbname={}", self.0),
            NoTls,
        )
        .unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = admin().batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.0));
    }
}

fn admin() -> Client {
    Client::connect("host=127.0.0.1 user=postgres dbname=postgres", NoTls).unwrap()
}

const LONG: Duration = Duration::from_secs(60);

fn job(domain: &str, pool: Option<&str>) -> NewJob {
    NewJob {
        domain: domain.into(),
        mode: "move".into(),
        mailboxes: None,
        notify: Some("admin@example.org".into()),
        cutover: true,
        pool: pool.map(str::to_string),
    }
}

fn claimed_domain(q: &mut Queue) -> Option<String> {
    q.claim().unwrap().map(|c| c.job.domain)
}

fn kinds(db: &Db, job: i64) -> Vec<String> {
    db.sql()
        .query(
            "SELECT kind FROM maildir_migrate.events WHERE job_id = $1 ORDER BY id",
            &[&job],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn init_is_idempotent_and_a_newer_schema_is_refused() {
    let db = Db::new();
    let mut q = db.daemon("h1", &[], LONG);
    assert_eq!(q.init(None, None).unwrap(), (1, 1));
    q.check_schema().unwrap();
    db.sql()
        .batch_execute("UPDATE maildir_migrate.schema_version SET version = 99")
        .unwrap();
    let e = q.check_schema().unwrap_err();
    assert!(e.to_string().contains("version 99"), "{e}");
    assert!(matches!(
        q.init(None, None),
        Err(QueueError::Version { found: 99, .. })
    ));
}

#[test]
fn a_daemon_claims_in_submission_order_only_its_pools_and_pool_less_jobs() {
    let db = Db::new();
    let mut q = db.daemon("h1", &["p1"], LONG);
    for (d, p) in [("a.cz", Some("p2")), ("b.cz", Some("p1")), ("c.cz", None)] {
        q.submit(&job(d, p)).unwrap();
    }
    assert_eq!(claimed_domain(&mut q).as_deref(), Some("b.cz"));
    assert_eq!(claimed_domain(&mut q).as_deref(), Some("c.cz"));
    assert_eq!(claimed_domain(&mut q), None);
}

#[test]
fn one_domain_runs_once_across_daemons_and_in_submission_order() {
    let db = Db::new();
    let mut q1 = db.daemon("h1", &[], LONG);
    let mut q2 = db.daemon("h2", &[], LONG);
    let first = q1.submit(&job("Example.cz", None)).unwrap();
    let second = q1.submit(&job("example.CZ", None)).unwrap();
    q1.submit(&job("other.cz", None)).unwrap();
    let c1 = q1.claim().unwrap().unwrap();
    assert_eq!(c1.lease.job, first);
    // The second job of the domain waits; the other domain goes.
    assert_eq!(claimed_domain(&mut q2).as_deref(), Some("other.cz"));
    assert_eq!(claimed_domain(&mut q2), None);
    // The database itself refuses a second running job of the domain.
    let e = db
        .sql()
        .execute(
            "UPDATE maildir_migrate.jobs SET state = 'running', owner = 'x', lease_until = now()
              WHERE id = $1",
            &[&second],
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(&postgres::error::SqlState::UNIQUE_VIOLATION));
    assert!(
        q1.finish(
            &c1.lease,
            FinalState::Done,
            None,
            None,
            &Progress::default()
        )
        .unwrap()
    );
    assert_eq!(q2.claim().unwrap().unwrap().lease.job, second);
}

#[test]
fn a_lapsed_lease_is_resumed_elsewhere_and_the_old_owner_is_shut_out() {
    let db = Db::new();
    let mut q1 = db.daemon("h1", &[], Duration::from_secs(1));
    let mut q2 = db.daemon("h2", &[], LONG);
    let id = q1.submit(&job("a.cz", None)).unwrap();
    let c1 = q1.claim().unwrap().unwrap();
    assert!(!c1.resumed);
    let progress = Progress {
        checkpoint: Some(serde_json::json!({"finished": ["jan"]})),
        events: vec![Event {
            kind: "mailbox_done",
            mailbox: Some("jan".into()),
            detail: None,
        }],
        ..Progress::default()
    };
    assert_eq!(
        q1.heartbeat(&c1.lease, &progress).unwrap(),
        LeaseState::Held {
            cancel_requested: false
        }
    );
    assert!(q2.claim().unwrap().is_none(), "the lease still holds");
    sleep(Duration::from_millis(1300));
    let c2 = q2.claim().unwrap().unwrap();
    assert!(c2.resumed);
    assert_eq!(
        c2.checkpoint,
        Some(serde_json::json!({"finished": ["jan"]}))
    );
    assert_eq!(
        q1.heartbeat(&c1.lease, &progress).unwrap(),
        LeaseState::Lost
    );
    assert!(
        !q1.finish(&c1.lease, FinalState::Done, None, None, &progress)
            .unwrap()
    );
    assert!(!q1.release(&c1.lease, &Progress::default()).unwrap());
    assert!(
        q2.finish(
            &c2.lease,
            FinalState::Done,
            None,
            None,
            &Progress::default()
        )
        .unwrap()
    );
    assert_eq!(
        kinds(&db, id),
        ["started", "mailbox_done", "resumed", "done"]
    );
}

#[test]
fn a_released_job_is_claimable_at_once() {
    let db = Db::new();
    let mut q1 = db.daemon("h1", &[], LONG);
    let mut q2 = db.daemon("h2", &[], LONG);
    q1.submit(&job("a.cz", None)).unwrap();
    let c1 = q1.claim().unwrap().unwrap();
    let last = Progress {
        checkpoint: Some(serde_json::json!({"finished": ["jan", "eva"]})),
        ..Progress::default()
    };
    assert!(q1.release(&c1.lease, &last).unwrap());
    let c2 = q2.claim().unwrap().unwrap();
    assert_eq!((c2.lease.job, c2.resumed), (c1.lease.job, true));
    assert_eq!(
        c2.checkpoint, last.checkpoint,
        "the last progress goes with the job"
    );
    assert_eq!(kinds(&db, c1.lease.job), ["started", "released", "resumed"]);
}

#[test]
fn a_rejected_row_fails_with_its_reason_and_frees_its_domain() {
    let db = Db::new();
    let mut q = db.daemon("h1", &[], LONG);
    let bad = q.submit(&job("a.cz", None)).unwrap();
    q.submit(&job("a.cz", None)).unwrap();
    let c = q.claim().unwrap().unwrap();
    assert!(q.reject(&c.lease, "unknown mode \"teleport\"").unwrap());
    let rows = q.jobs(10).unwrap();
    assert_eq!(rows[0].id, bad);
    assert_eq!(rows[0].state, "failed");
    assert_eq!(rows[0].error.as_deref(), Some("unknown mode \"teleport\""));
    assert_eq!(kinds(&db, bad), ["started", "rejected"]);
    assert!(
        q.claim().unwrap().is_some(),
        "the next job of the domain goes"
    );
}

#[test]
fn cancel_ends_a_queued_job_and_asks_a_running_one_to_stop() {
    let db = Db::new();
    let mut q = db.daemon("h1", &[], LONG);
    let running = q.submit(&job("a.cz", None)).unwrap();
    let queued = q.submit(&job("b.cz", Some("elsewhere"))).unwrap();
    let c = q.claim().unwrap().unwrap();
    assert_eq!(q.cancel(queued).unwrap(), CancelOutcome::Cancelled);
    assert_eq!(q.cancel(queued).unwrap(), CancelOutcome::Finished);
    assert_eq!(q.cancel(running).unwrap(), CancelOutcome::Requested);
    assert_eq!(q.cancel(12345).unwrap(), CancelOutcome::NotFound);
    assert_eq!(
        q.heartbeat(&c.lease, &Progress::default()).unwrap(),
        LeaseState::Held {
            cancel_requested: true
        }
    );
    let p = Progress::default();
    assert!(
        q.finish(
            &c.lease,
            FinalState::Cancelled,
            None,
            Some("cancelled on request"),
            &p
        )
        .unwrap()
    );
    // A cancelled job sends no e-mail.
    assert!(q.claim_notification().unwrap().is_none());
}

#[test]
fn the_completion_email_is_claimed_once_and_retried_with_backoff() {
    let db = Db::new();
    let mut q1 = db.daemon("h1", &[], LONG);
    let mut q2 = db.daemon("h2", &[], LONG);
    let id = q1.submit(&job("a.cz", None)).unwrap();
    let c = q1.claim().unwrap().unwrap();
    let record = serde_json::json!({"id": "queue-1", "report": null});
    assert!(
        q1.finish(
            &c.lease,
            FinalState::Done,
            Some(&record),
            None,
            &Progress::default()
        )
        .unwrap()
    );
    let n = q2.claim_notification().unwrap().unwrap();
    assert_eq!(
        (n.job, n.to.as_str(), n.state.as_str()),
        (id, "admin@example.org", "done")
    );
    assert_eq!(n.report, Some(record));
    assert!(q1.claim_notification().unwrap().is_none(), "owned by h2");
    let failed = serde_json::json!({"status": "failed", "error": "451 try later"});
    q2.notification_done(&n, false, &failed, 5).unwrap();
    assert!(q1.claim_notification().unwrap().is_none(), "backing off");
    db.sql()
        .batch_execute("UPDATE maildir_migrate.jobs SET notification_next = now()")
        .unwrap();
    let again = q1.claim_notification().unwrap().unwrap();
    q1.notification_done(&again, true, &serde_json::json!({"status": "sent"}), 5)
        .unwrap();
    assert!(q2.claim_notification().unwrap().is_none());
    assert_eq!(
        q1.jobs(1).unwrap()[0].notification_state.as_deref(),
        Some("sent")
    );
    assert_eq!(
        kinds(&db, id),
        ["started", "done", "notify_failed", "notified"]
    );
}

#[test]
fn new_jobs_wake_a_listener() {
    let db = Db::new();
    let mut q = db.daemon("h1", &[], LONG);
    let mut l = Listener::connect(&q.settings).unwrap();
    assert!(!l.wait(Duration::from_millis(100)).unwrap());
    q.submit(&job("a.cz", None)).unwrap();
    q.submit(&job("b.cz", None)).unwrap();
    assert!(l.wait(Duration::from_secs(5)).unwrap());
}

#[test]
fn names_are_checked() {
    assert!(SchemaName::parse("maildir_migrate").is_ok());
    for bad in ["", "1x", "Mm", "a-b", "a;drop", &"x".repeat(59)] {
        assert!(SchemaName::parse(bad).is_err(), "{bad}");
    }
    assert!(HostName::parse("store-1.example.cz").is_ok());
    for bad in ["", "-x", "a b", "a/b", "ä", &"x".repeat(65)] {
        assert!(HostName::parse(bad).is_err(), "{bad}");
    }
}
