//! The queue's schema, owned by the tool: versioned migrations that
//! `queue init` applies in one transaction, and the grants of the daemon's
//! and the panel's roles.

use postgres::GenericClient;

use super::{QueueError, SchemaName, db};

/// The schema version this build reads and writes.
pub const VERSION: i32 = 1;

/// `MIGRATIONS[v]` takes the schema from version `v` to `v + 1`. `{s}` is
/// the schema, `{channel}` the NOTIFY channel.
const MIGRATIONS: &[&str] = &[V1];

const V1: &str = r#"
CREATE TABLE {s}.jobs (
    id bigserial PRIMARY KEY,
    -- What the panel inserts; checked like a job file when claimed.
    domain text NOT NULL,
    mode text NOT NULL,
    mailboxes text[],
    notify text,
    cutover boolean NOT NULL DEFAULT true,
    pool text,
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    submitted_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    -- The claim: who, which claim (a counter), until when.
    owner text,
    claims integer NOT NULL DEFAULT 0,
    lease_until timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- Progress, rewritten every tick by the owner.
    phase text,
    mailboxes_total bigint,
    mailboxes_done bigint,
    mailboxes_failed bigint,
    messages bigint,
    bytes bigint,
    rate_bytes_per_sec double precision,
    eta_seconds bigint,
    current_mailbox text,
    updated_at timestamptz,
    checkpoint jsonb,
    report jsonb,
    error text,
    -- The completion e-mail's outbox.
    notification_state text
        CHECK (notification_state IN ('pending', 'sending', 'sent', 'failed')),
    notification_attempts integer NOT NULL DEFAULT 0,
    notification_next timestamptz,
    notification_owner text,
    notification_lease_until timestamptz,
    notification_outcome jsonb,
    CHECK (state <> 'running' OR (owner IS NOT NULL AND lease_until IS NOT NULL))
);
-- The database, not a daemon's memory, refuses a second running job of a domain.
CREATE UNIQUE INDEX jobs_one_running_per_domain ON {s}.jobs (lower(domain))
    WHERE state = 'running';
CREATE INDEX jobs_open ON {s}.jobs (lower(domain), id) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_outbox ON {s}.jobs (id) WHERE notification_state IN ('pending', 'sending');
CREATE TABLE {s}.events (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES {s}.jobs (id) ON DELETE CASCADE,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    host text,
    kind text NOT NULL,
    mailbox text,
    detail text
);
CREATE INDEX events_job ON {s}.events (job_id, id);
-- New jobs wake the daemons at once.
CREATE FUNCTION {s}.wake() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$f$;
CREATE TRIGGER jobs_wake AFTER INSERT ON {s}.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.wake();
-- The panel's only way to change a job: a queued one ends at once, a
-- running one is asked to stop (its owner sees it at the next tick).
CREATE FUNCTION {s}.cancel(job bigint) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    st text;
BEGIN
    UPDATE {s}.jobs SET state = 'cancelled', finished_at = now(),
           error = 'cancelled before it started'
     WHERE id = job AND state = 'queued';
    IF FOUND THEN
        INSERT INTO {s}.events (job_id, host, kind, detail)
             VALUES (job, NULL, 'cancelled', 'before it started, by ' || session_user);
        PERFORM pg_notify('{channel}', '');
        RETURN 'cancelled';
    END IF;
    UPDATE {s}.jobs SET cancel_requested = true
     WHERE id = job AND state = 'running' AND NOT cancel_requested;
    IF FOUND THEN
        INSERT INTO {s}.events (job_id, host, kind, detail)
             VALUES (job, NULL, 'cancel_requested', 'by ' || session_user);
        RETURN 'requested';
    END IF;
    SELECT state INTO st FROM {s}.jobs WHERE id = job;
    IF NOT FOUND THEN
        RETURN 'not found';
    END IF;
    IF st = 'running' THEN
        RETURN 'requested';
    END IF;
    RETURN 'already ' || st;
END
$f$;
REVOKE ALL ON FUNCTION {s}.cancel(bigint) FROM PUBLIC;
"#;

/// Fills in the schema and the channel.
fn sql(template: &str, schema: &SchemaName) -> String {
    template
        .replace("{s}", schema.as_str())
        .replace("{channel}", &schema.channel())
}

/// The schema's version; 0 when there is none yet.
pub fn version(c: &mut impl GenericClient, schema: &SchemaName) -> Result<i32, postgres::Error> {
    let exists: bool = c
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{}.schema_version", schema.as_str())],
        )?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = c.query_one(
        &sql(
            "SELECT coalesce(max(version), 0) FROM {s}.schema_version",
            schema,
        ),
        &[],
    )?;
    Ok(row.get(0))
}

/// Creates or upgrades the schema and grants the roles; returns the
/// version before and after. Concurrent runs wait for each other.
pub fn init(
    c: &mut postgres::Client,
    schema: &SchemaName,
    daemon_role: Option<&str>,
    panel_role: Option<&str>,
) -> Result<(i32, i32), QueueError> {
    let daemon_role = daemon_role.map(role_ident).transpose()?;
    let panel_role = panel_role.map(role_ident).transpose()?;
    let mut tx = c.transaction().map_err(db("begin"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('maildir-migrate queue init'))",
        &[],
    )
    .map_err(db("lock"))?;
    tx.batch_execute(&sql(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL);",
        schema,
    ))
    .map_err(db("create the schema"))?;
    let before = version(&mut tx, schema).map_err(db("read the schema version"))?;
    if before > VERSION {
        return Err(QueueError::Version {
            schema: schema.as_str().to_string(),
            found: before,
            expected: VERSION,
        });
    }
    for m in &MIGRATIONS[before as usize..] {
        tx.batch_execute(&sql(m, schema))
            .map_err(db("upgrade the schema"))?;
    }
    tx.batch_execute(&sql(
        &format!(
            "DELETE FROM {{s}}.schema_version; INSERT INTO {{s}}.schema_version VALUES ({VERSION});"
        ),
        schema,
    ))
    .map_err(db("record the schema version"))?;
    if let Some(r) = &daemon_role {
        tx.batch_execute(&grants(DAEMON_GRANTS, schema, r))
            .map_err(db("grant the daemon role"))?;
    }
    if let Some(r) = &panel_role {
        tx.batch_execute(&grants(PANEL_GRANTS, schema, r))
            .map_err(db("grant the panel role"))?;
    }
    tx.commit().map_err(db("commit"))?;
    Ok((before, VERSION))
}

/// The daemon reads and updates rows and adds events; it never changes
/// the schema.
const DAEMON_GRANTS: &str = "
GRANT USAGE ON SCHEMA {s} TO {role};
GRANT SELECT ON {s}.schema_version TO {role};
GRANT SELECT, INSERT, UPDATE ON {s}.jobs, {s}.events TO {role};
GRANT USAGE, SELECT ON SEQUENCE {s}.jobs_id_seq, {s}.events_id_seq TO {role};
GRANT EXECUTE ON FUNCTION {s}.cancel(bigint) TO {role};";

/// The panel inserts jobs (those six columns only) and reads; its one
/// change to a job is `cancel()`.
const PANEL_GRANTS: &str = "
GRANT USAGE ON SCHEMA {s} TO {role};
GRANT SELECT ON {s}.jobs, {s}.events TO {role};
GRANT INSERT (domain, mode, mailboxes, notify, cutover, pool) ON {s}.jobs TO {role};
GRANT USAGE ON SEQUENCE {s}.jobs_id_seq TO {role};
GRANT EXECUTE ON FUNCTION {s}.cancel(bigint) TO {role};";

fn grants(template: &str, schema: &SchemaName, role: &str) -> String {
    sql(template, schema).replace("{role}", role)
}

/// A role name as a quoted SQL identifier.
fn role_ident(name: &str) -> Result<String, QueueError> {
    if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
        return Err(QueueError::Role(crate::shown::text(name).to_string()));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}
