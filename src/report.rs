//! The job report: what the engine returns, `run --json` prints and the
//! daemon stores beside a finished job.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::classify::SkipReason;
use crate::job::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Done,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxStatus {
    Done,
    /// A previous run completed it; nothing was changed.
    AlreadyMigrated,
    /// Copied ahead of the cutover (`"cutover": false`); still served by
    /// the old side.
    Presynced,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFolder {
    pub name: String,
    pub reason: String,
    pub kind: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxReport {
    pub user: String,
    pub status: MailboxStatus,
    pub error: Option<String>,
    pub messages: u64,
    pub bytes: u64,
    pub folders: u64,
    pub skipped_folders: Vec<SkippedFolder>,
    pub uids_preserved: bool,
    /// Things a sysadmin should know that did not fail the mailbox.
    pub warnings: Vec<String>,
    /// How long the user could not log in: from the freeze to the switch.
    #[serde(default)]
    pub freeze_ms: Option<u64>,
}

impl MailboxReport {
    pub fn new(user: String) -> MailboxReport {
        MailboxReport {
            user,
            status: MailboxStatus::Failed,
            error: None,
            messages: 0,
            bytes: 0,
            folders: 0,
            skipped_folders: Vec::new(),
            uids_preserved: false,
            warnings: Vec::new(),
            freeze_ms: None,
        }
    }

    pub fn failed(user: String, error: String) -> MailboxReport {
        MailboxReport {
            error: Some(error),
            ..MailboxReport::new(user)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub mailboxes: u64,
    pub failed_mailboxes: u64,
    pub messages: u64,
    pub bytes: u64,
    pub skipped_folders: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    pub domain: String,
    pub mode: Mode,
    pub status: JobStatus,
    pub mailboxes: Vec<MailboxReport>,
    pub totals: Totals,
    pub started: String,
    pub finished: String,
    /// What a sysadmin should know about the job as a whole (not in the
    /// customer's e-mail).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Report {
    pub fn finish(
        id: String,
        domain: String,
        mode: Mode,
        mailboxes: Vec<MailboxReport>,
        started: String,
    ) -> Report {
        let mut totals = Totals::default();
        for m in &mailboxes {
            totals.mailboxes += 1;
            totals.failed_mailboxes += u64::from(m.status == MailboxStatus::Failed);
            // Sizes come from file names a mail user can make up.
            totals.messages = totals.messages.saturating_add(m.messages);
            totals.bytes = totals.bytes.saturating_add(m.bytes);
            totals.skipped_folders += m.skipped_folders.len() as u64;
        }
        let status = if totals.failed_mailboxes == 0 {
            JobStatus::Done
        } else {
            JobStatus::Failed
        };
        Report {
            id,
            domain,
            mode,
            status,
            mailboxes,
            totals,
            started,
            finished: now_rfc3339(),
            warnings: Vec::new(),
        }
    }
}

/// The current time as RFC 3339 UTC with whole seconds.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    rfc3339(secs)
}

pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let rem = unix.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_500_000_000), "2017-07-14T02:40:00Z");
        assert_eq!(rfc3339(1_795_946_536), "2026-11-29T10:02:16Z");
    }

    #[test]
    fn totals_and_status() {
        let mut ok = MailboxReport::new("a@x".into());
        ok.status = MailboxStatus::Done;
        ok.messages = 3;
        let bad = MailboxReport::failed("b@x".into(), "boom".into());
        let r = Report::finish(
            "j".into(),
            "x".into(),
            Mode::Move,
            vec![ok, bad],
            "t".into(),
        );
        assert_eq!(r.status, JobStatus::Failed);
        assert_eq!(
            (
                r.totals.mailboxes,
                r.totals.failed_mailboxes,
                r.totals.messages
            ),
            (2, 1, 3)
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mailboxes"][1]["status"], "failed");
        assert_eq!(v["mode"], "move");
    }
}
