//! User databases, one file per format, and the format-neutral seam the
//! engine works through: the `Source` side (list, read, freeze, thaw) and
//! the `Target` side (assess, stage, enable, unstage, read back).

pub(crate) mod courier;
pub(crate) mod passwd_file;
pub mod scheme;
mod source;
pub(crate) mod sql;
pub(crate) mod target;

use std::path::Path;

use passwd_file::UserdbError;
use scheme::CarriedHash;

pub use source::Source;
pub use target::{Login, NewAccount, NewLogin, Previous, Target, TargetError};

/// A source account, whatever its userdb format, with the password already
/// in the Dovecot form that verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub key: String,
    pub hash: CarriedHash,
    pub uid: String,
    pub gid: String,
    pub home: String,
    /// An explicit mail location (`userdb_mail=` / Courier's `mail=`).
    pub mail: Option<String>,
    /// Fields carried into the target entry (`userdb_quota_rule=…`, passdb fields).
    pub extra: Vec<String>,
    pub refuses_login: bool,
    pub frozen_by_us: bool,
    /// Display name (gecos, or an SQL row's `name`).
    pub name: String,
    /// Whether mail is delivered (an SQL row's `active`; files: always).
    pub active: bool,
    /// An SQL row's `maildir`, as stored (relative to the mail root).
    pub sql_maildir: Option<String>,
}

fn missing(path: &Path, key: &str) -> UserdbError {
    UserdbError::BadEntry {
        path: path.to_path_buf(),
        line: 0,
        problem: format!("no entry for {key}"),
    }
}
