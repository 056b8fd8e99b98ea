//! Shared helpers for the integration tests.
//!
//! * [`imap`]: a small synchronous IMAP4rev1 client (plaintext, for tests)
//!   with account snapshots and a readable snapshot diff.
//! * [`dovecot`]: starts and stops private Dovecot instances for tests.
//! * [`require`]: the one rule for optional parts that are missing here.

pub mod daemon;
pub mod dovecot;
pub mod fixture;
pub mod imap;
pub mod pop3;
pub mod require;
pub mod scenario;
pub mod smtp;
pub mod sqldb;
