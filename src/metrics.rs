//! The daemon's metrics for node_exporter's textfile collector: what the
//! daemon knows, rendered in the Prometheus text format and written
//! atomically (temp file, rename) so a scrape never sees half a file.
//! Counters count since the daemon started (a restart resets them, which
//! Prometheus' `rate()` and `increase()` handle).

use std::fmt::Write as _;
use std::path::Path;

use crate::report::MailboxStatus;
use crate::safe_fs::{Dir, FileAttrs};

/// Jobs by state: queued and running now, done and failed since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Jobs {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
}

/// Finished mailboxes by status, since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mailboxes {
    pub done: u64,
    pub already_migrated: u64,
    pub presynced: u64,
    pub failed: u64,
}

impl Mailboxes {
    pub fn count(&mut self, status: MailboxStatus) {
        let n = match status {
            MailboxStatus::Done => &mut self.done,
            MailboxStatus::AlreadyMigrated => &mut self.already_migrated,
            MailboxStatus::Presynced => &mut self.presynced,
            MailboxStatus::Failed => &mut self.failed,
        };
        *n += 1;
    }
}

/// Everything one metrics file says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub jobs: Jobs,
    pub messages_copied: u64,
    pub bytes_copied: u64,
    pub mailboxes: Mailboxes,
    /// Mailboxes whose old login a running job has frozen and not yet
    /// switched or thawed.
    pub frozen_mailboxes: u64,
    /// Filed jobs' durations (first start to filing): sum and count.
    pub job_seconds_sum: u64,
    pub jobs_timed: u64,
    /// When the last job was filed done (Unix seconds; 0: none yet).
    pub last_success: i64,
}

/// One metric family: its name, type, help and samples (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (suffix_and_labels, value) in samples {
        let _ = writeln!(out, "{name}{suffix_and_labels} {value}");
    }
}

/// The Prometheus text format of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let j = &s.jobs;
    family(
        &mut out,
        "maildir_migrate_jobs",
        "gauge",
        "Jobs by state: queued and running now; done and failed filed since the daemon started.",
        &[
            ("{state=\"queued\"}", j.queued.to_string()),
            ("{state=\"running\"}", j.running.to_string()),
            ("{state=\"done\"}", j.done.to_string()),
            ("{state=\"failed\"}", j.failed.to_string()),
        ],
    );
    family(
        &mut out,
        "maildir_migrate_messages_copied_total",
        "counter",
        "Message files written to the target since the daemon started.",
        &[("", s.messages_copied.to_string())],
    );
    family(
        &mut out,
        "maildir_migrate_bytes_copied_total",
        "counter",
        "Bytes of message files written to the target since the daemon started.",
        &[("", s.bytes_copied.to_string())],
    );
    let m = &s.mailboxes;
    family(
        &mut out,
        "maildir_migrate_mailboxes_total",
        "counter",
        "Mailboxes finished by status since the daemon started.",
        &[
            ("{status=\"done\"}", m.done.to_string()),
            (
                "{status=\"already_migrated\"}",
                m.already_migrated.to_string(),
            ),
            ("{status=\"presynced\"}", m.presynced.to_string()),
            ("{status=\"failed\"}", m.failed.to_string()),
        ],
    );
    family(
        &mut out,
        "maildir_migrate_frozen_mailboxes",
        "gauge",
        "Mailboxes whose old login is frozen now (between the freeze and the switch or thaw).",
        &[("", s.frozen_mailboxes.to_string())],
    );
    family(
        &mut out,
        "maildir_migrate_job_duration_seconds",
        "summary",
        "Filed jobs' time from their first start to filing, since the daemon started.",
        &[
            ("_sum", s.job_seconds_sum.to_string()),
            ("_count", s.jobs_timed.to_string()),
        ],
    );
    family(
        &mut out,
        "maildir_migrate_last_success_timestamp_seconds",
        "gauge",
        "When the last job was filed done (Unix time; 0: none since the daemon started).",
        &[("", s.last_success.to_string())],
    );
    family(
        &mut out,
        "maildir_migrate_build_info",
        "gauge",
        "The running version; always 1.",
        &[(
            &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            "1".into(),
        )],
    );
    out
}

/// Replaces `path` with `s` rendered (mode 0644: node_exporter reads it).
/// Not fsynced: it is rewritten every second and worthless after a crash.
pub fn write(path: &Path, s: &Snapshot) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("not a file path"));
    };
    Dir::open_root(dir)?.write_atomic(
        name,
        render(s).as_bytes(),
        &FileAttrs::new(0o644, None, false),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_type_and_only_state_status_version_labels() {
        let s = Snapshot {
            jobs: Jobs {
                queued: 2,
                running: 1,
                done: 3,
                failed: 1,
            },
            messages_copied: 40,
            bytes_copied: 4096,
            mailboxes: Mailboxes {
                done: 5,
                already_migrated: 1,
                presynced: 0,
                failed: 2,
            },
            frozen_mailboxes: 1,
            job_seconds_sum: 90,
            jobs_timed: 4,
            last_success: 1_764_000_000,
        };
        let version = env!("CARGO_PKG_VERSION");
        let expected = format!(
            "\
# HELP maildir_migrate_jobs Jobs by state: queued and running now; done and failed filed since the daemon started.
# TYPE maildir_migrate_jobs gauge
maildir_migrate_jobs{{state=\"queued\"}} 2
maildir_migrate_jobs{{state=\"running\"}} 1
maildir_migrate_jobs{{state=\"done\"}} 3
maildir_migrate_jobs{{state=\"failed\"}} 1
# HELP maildir_migrate_messages_copied_total Message files written to the target since the daemon started.
# TYPE maildir_migrate_messages_copied_total counter
maildir_migrate_messages_copied_total 40
# HELP maildir_migrate_bytes_copied_total Bytes of message files written to the target since the daemon started.
# TYPE maildir_migrate_bytes_copied_total counter
maildir_migrate_bytes_copied_total 4096
# HELP maildir_migrate_mailboxes_total Mailboxes finished by status since the daemon started.
# TYPE maildir_migrate_mailboxes_total counter
maildir_migrate_mailboxes_total{{status=\"done\"}} 5
maildir_migrate_mailboxes_total{{status=\"already_migrated\"}} 1
maildir_migrate_mailboxes_total{{status=\"presynced\"}} 0
maildir_migrate_mailboxes_total{{status=\"failed\"}} 2
# HELP maildir_migrate_frozen_mailboxes Mailboxes whose old login is frozen now (between the freeze and the switch or thaw).
# TYPE maildir_migrate_frozen_mailboxes gauge
maildir_migrate_frozen_mailboxes 1
# HELP maildir_migrate_job_duration_seconds Filed jobs' time from their first start to filing, since the daemon started.
# TYPE maildir_migrate_job_duration_seconds summary
maildir_migrate_job_duration_seconds_sum 90
maildir_migrate_job_duration_seconds_count 4
# HELP maildir_migrate_last_success_timestamp_seconds When the last job was filed done (Unix time; 0: none since the daemon started).
# TYPE maildir_migrate_last_success_timestamp_seconds gauge
maildir_migrate_last_success_timestamp_seconds 1764000000
# HELP maildir_migrate_build_info The running version; always 1.
# TYPE maildir_migrate_build_info gauge
maildir_migrate_build_info{{version=\"{version}\"}} 1
"
        );
        assert_eq!(render(&s), expected);
    }

    #[test]
    fn write_replaces_the_file_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        std::fs::write(&path, "old").unwrap();
        write(&path, &Snapshot::default()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("maildir_migrate_jobs{state=\"done\"} 0\n"),
            "{text}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
