//! The integration tests, one binary: the real `maildir-migrate` binary on
//! generated hosts, real Dovecot, PostgreSQL, MariaDB and SMTP dialogues.
//! One module per area; [`common`] holds the shared helpers, among them
//! the one rule for optional parts that are missing ([`common::require`]).

mod common;

mod check;
mod cli;
mod clients;
mod courier_e2e;
mod daemon;
mod done_means_done;
mod dovecot_e2e;
mod enospc;
mod fleet;
mod kill_loop;
mod live_writer;
mod notify_smtp;
mod package;
mod reflink;
mod sql_e2e;
mod systemd_unit;
