//! Progress events from the engine. The engine never draws anything; the
//! command line renders a bar, the daemon a status line.

pub trait Progress: Sync {
    /// A job is about to work through `mailboxes` mailboxes.
    fn job_started(&self, _mailboxes: usize) {}
    fn mailbox_started(&self, _user: &str) {}
    /// The mailbox's old login was frozen; it stays frozen until
    /// `mailbox_finished` (switched, or thawed on failure).
    fn mailbox_frozen(&self) {}
    /// One message file was written to the target.
    fn message_copied(&self, _bytes: u64) {}
    fn mailbox_finished(&self, _report: &crate::report::MailboxReport) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
