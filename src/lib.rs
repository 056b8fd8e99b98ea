//! maildir-migrate: moves whole mail domains from an old Maildir storage
//! to a new Dovecot one, with passwords, folders, flags, keywords, dates
//! and UIDs kept, and Trash, Spam and Contacts deliberately left behind.
//!
//! The binary needs only `cli`; the integration tests also use a few
//! types of `job`, `maildir::names`, `notify`, `report` and
//! `userdb::scheme`. Everything else is crate-private, so the compiler
//! reports what nothing uses.

#![forbid(unsafe_code)]

pub(crate) mod classify;
pub mod cli;
pub(crate) mod config;
pub(crate) mod copy;
pub(crate) mod daemon;
pub(crate) mod dovecot;
pub(crate) mod exit;
#[cfg(test)]
mod hostile;
pub mod job;
pub mod maildir;
pub(crate) mod migrate;
pub mod notify;
pub(crate) mod plan;
pub(crate) mod progress;
pub mod report;
pub(crate) mod safe_fs;
pub(crate) mod shown;
pub(crate) mod spool;
pub(crate) mod status;
pub mod userdb;
pub(crate) mod vars;
