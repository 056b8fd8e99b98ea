//! The process exit status: the sysexits(3) codes by name, and the one map
//! from every fatal error to its code.

use std::io;

use crate::daemon::DaemonError;
use crate::job::JobError;
use crate::migrate::RunError;
use crate::spool::SpoolError;
use crate::userdb::passwd_file::UserdbError;

pub const OK: u8 = 0;
/// Some mailbox failed; the others were migrated (`check`: some check
/// failed).
pub const PARTIAL: u8 = 1;
pub const USAGE: u8 = 64;
pub const DATAERR: u8 = 65;
/// `demo`: no demo host where `--fixtures` points.
pub const NOINPUT: u8 = 66;
/// `submit`: the job id is already used.
pub const CANTCREAT: u8 = 73;
pub const IOERR: u8 = 74;
/// Interrupted, or another daemon holds the spool: try again later.
pub const TEMPFAIL: u8 = 75;
pub const CONFIG: u8 = 78;

impl RunError {
    /// What the configuration points at is a configuration error; a
    /// database that is down or restarting is worth another try.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Root { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                CONFIG
            }
            RunError::Config { .. } => CONFIG,
            RunError::Userdb(UserdbError::Missing { .. } | UserdbError::Symlink { .. }) => CONFIG,
            RunError::NoMailboxes { .. } => DATAERR,
            RunError::Userdb(UserdbError::Sql(e)) if e.is_transient() => TEMPFAIL,
            RunError::Interrupted => TEMPFAIL,
            _ => IOERR,
        }
    }
}

impl SpoolError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SpoolError::Duplicate { .. } => CANTCREAT,
            SpoolError::Job(e) => e.exit_code(),
            SpoolError::Unsafe { .. } => CONFIG,
            SpoolError::Locked { .. } => TEMPFAIL,
            SpoolError::Io { .. } => IOERR,
        }
    }
}

impl JobError {
    pub fn exit_code(&self) -> u8 {
        match self {
            JobError::Read { .. } => IOERR,
            JobError::Parse { .. } | JobError::Invalid { .. } => DATAERR,
        }
    }
}

impl DaemonError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Spool(e) => e.exit_code(),
            DaemonError::Signals(_) => IOERR,
        }
    }
}
