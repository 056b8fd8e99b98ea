//! Shared helpers for the integration tests.
//!
//! * [`imap`]: a small synchronous IMAP4rev1 client (plaintext, for tests)
//!   with account snapshots and a readable snapshot diff.
//! * [`dovecot`]: starts and stops private Dovecot instances for tests.

pub mod daemon;
pub mod dovecot;
pub mod fixture;
pub mod imap;
pub mod pop3;
pub mod scenario;
pub mod smtp;
pub mod sqldb;
