//! maildir-migrate: moves whole mail domains from an old Maildir storage
//! to a new Dovecot one, with passwords, folders, flags, keywords, dates
//! and UIDs kept, and Trash, Spam and Contacts deliberately left behind.

pub mod classify;
pub mod cli;
pub mod config;
pub mod copy;
pub mod daemon;
pub mod dovecot;
pub mod exit;
#[cfg(test)]
mod hostile;
pub mod job;
pub mod maildir;
pub mod migrate;
pub mod notify;
pub mod plan;
pub mod progress;
pub mod report;
pub mod safe_fs;
pub mod shown;
pub mod spool;
pub mod status;
pub mod userdb;
pub mod vars;
