//! What a job (or a read-only command) needs that does not change per
//! mailbox: the configuration, the scope, both userdbs and both mail
//! roots opened; and a mailbox resolved against its source entry.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::job::{Domain, LocalPart, Scope};
use crate::maildir;
use crate::safe_fs::{Dir, Owner};
use crate::userdb::{Account, NewAccount, Source, Target};

use super::{MailboxError, Named, RunError, open_root};

pub struct Env<'a> {
    pub cfg: &'a Config,
    pub scope: Scope,
    pub source: Source,
    pub target: Target,
    source_root: Dir,
    source_root_path: PathBuf,
    pub(crate) target_root: Dir,
    pub(crate) target_root_path: PathBuf,
}

/// One mailbox resolved against its source entry: named exactly as the
/// source spells it, with the owner and home its target gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part as the source spells it (paths, `%n`).
    pub local: LocalPart,
    /// `local@domain` as the source spells it (reports, target keys).
    pub user: String,
    pub source_key: String,
    pub target_key: String,
    /// The uid/gid the new entry names; everything in the target is theirs.
    pub owner: Owner,
    /// The home, relative to the target mail root.
    pub home_rel: PathBuf,
}

impl Mailbox {
    pub fn maildir_rel(&self) -> PathBuf {
        self.home_rel.join("Maildir")
    }

    /// The mailbox as its new login needs it.
    pub fn new_account<'a>(&'a self, source: &'a Account, domain: &'a Domain) -> NewAccount<'a> {
        NewAccount {
            source,
            source_key: &self.source_key,
            target_key: &self.target_key,
            local: self.local.as_str(),
            domain: domain.as_str(),
            home_rel: &self.home_rel,
        }
    }
}

/// A source Maildir: where it is (for messages) and, if it exists, open.
pub(crate) struct OldMaildir {
    pub path: PathBuf,
    /// Below the source mail root (kept in the manifest).
    pub rel: PathBuf,
    pub dir: Option<Dir>,
}

impl<'a> Env<'a> {
    pub fn open(cfg: &'a Config, scope: Scope) -> Result<Env<'a>, RunError> {
        let (source_root, source_root_path) = open_root("source.mail_root", &cfg.source.mail_root)?;
        let (target_root, target_root_path) = open_root("target.mail_root", &cfg.target.mail_root)?;
        let source = cfg.source_db(&scope.domain);
        source
            .check_reachable()
            .map_err(|e| RunError::userdb("source.userdb", e))?;
        let target = cfg.target_db(&scope.domain);
        target.check_usable().map_err(|e| match e {
            crate::userdb::target::TargetUnusable::File(problem) => RunError::Config {
                key: "target.userdb",
                problem,
            },
            crate::userdb::target::TargetUnusable::Userdb(e) => RunError::Userdb(e),
        })?;
        Ok(Env {
            cfg,
            scope,
            target,
            source,
            source_root,
            source_root_path,
            target_root,
            target_root_path,
        })
    }

    /// Reads the source entry of `named` and settles the mailbox's exact
    /// name (a case-insensitive database finds `MIXED` for `mixed`), its
    /// owner and its home.
    pub(crate) fn resolve(&self, named: &Named) -> Result<(Mailbox, Account), MailboxError> {
        let account =
            self.source
                .account(&named.source_key)?
                .ok_or_else(|| MailboxError::NotInSource {
                    user: named.source_key.clone(),
                    db: self.source.describe(),
                })?;
        let domain = &self.scope.domain;
        let (local, user) = if self.cfg.source.userdb.per_domain() {
            (named.local.clone(), format!("{}@{domain}", named.local))
        } else {
            let (l, d) = account.key.rsplit_once('@').ok_or_else(|| {
                MailboxError::Conflict(format!(
                    "source entry {:?} is not an address",
                    crate::shown::text(&account.key)
                ))
            })?;
            if !d.eq_ignore_ascii_case(domain.as_str()) {
                return Err(MailboxError::Conflict(format!(
                    "source entry {:?} belongs to another domain than {domain}",
                    crate::shown::text(&account.key)
                )));
            }
            let local = LocalPart::parse(l).map_err(MailboxError::Conflict)?;
            (local, account.key.clone())
        };
        let target_key = if self.cfg.target.userdb.per_domain() {
            local.to_string()
        } else {
            user.clone()
        };
        let home_rel = self
            .cfg
            .target
            .home
            .expand(&local, domain)
            .map_err(MailboxError::Conflict)?;
        let owner = self.owner_for(&account)?;
        let mailbox = Mailbox {
            local,
            user,
            source_key: account.key.clone(),
            target_key,
            owner,
            home_rel,
        };
        Ok((mailbox, account))
    }

    /// The uid/gid of the new entry: the configured ones, else the source
    /// entry's. This run must be able to give files to them.
    fn owner_for(&self, account: &Account) -> Result<Owner, MailboxError> {
        let owner = match self.cfg.target.owner {
            Some(o) => o,
            None => Owner {
                uid: id_of(&account.uid, "uid", |n| {
                    nix::unistd::User::from_name(n).map(|u| u.map(|u| u.uid.as_raw()))
                })?,
                gid: id_of(&account.gid, "gid", |n| {
                    nix::unistd::Group::from_name(n).map(|g| g.map(|g| g.gid.as_raw()))
                })?,
            },
        };
        let me = nix::unistd::geteuid();
        if !me.is_root() && owner.uid != me.as_raw() {
            return Err(MailboxError::Conflict(format!(
                "the new entry names uid {}, but this run (uid {me}) cannot give files to another user; run as root or set target.uid/gid",
                owner.uid
            )));
        }
        Ok(owner)
    }

    /// The source Maildir named by the source entry, opened without
    /// following any symlink below the source mail root.
    pub(crate) fn open_source_maildir(
        &self,
        account: &Account,
        mb: &Mailbox,
    ) -> Result<OldMaildir, MailboxError> {
        let path = maildir::maildir_path(
            self.cfg.source.layout,
            account.mail.as_deref(),
            &account.home,
            &mb.source_key,
            mb.local.as_str(),
            self.scope.domain.as_str(),
        )
        .map_err(MailboxError::Location)?;
        let rel = [&self.cfg.source.mail_root, &self.source_root_path]
            .iter()
            .find_map(|root| path.strip_prefix(root).ok())
            .ok_or_else(|| {
                MailboxError::Location(format!(
                    "{} is outside source.mail_root {}",
                    crate::shown::path(&path),
                    self.cfg.source.mail_root.display()
                ))
            })?
            .to_path_buf();
        self.open_old_maildir(&rel)
    }

    /// The old Maildir at `rel` below the source mail root. `dir: None`:
    /// it does not exist (never used).
    pub(crate) fn open_old_maildir(&self, rel: &Path) -> Result<OldMaildir, MailboxError> {
        let path = self.source_root_path.join(rel);
        let dir = match self.source_root.open_beneath(rel) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e)
                if e.raw_os_error() == Some(nix::libc::ELOOP)
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
            {
                return Err(MailboxError::Location(format!(
                    "{} is or passes through a symlink or a non-directory; refusing to follow it",
                    crate::shown::path(&path)
                )));
            }
            Err(e) => return Err(MailboxError::io(&path, e)),
        };
        Ok(OldMaildir {
            path,
            rel: rel.to_path_buf(),
            dir,
        })
    }
}

/// A numeric uid/gid field, or a name the system resolves; never 0.
fn id_of(
    field: &str,
    what: &str,
    by_name: impl Fn(&str) -> nix::Result<Option<u32>>,
) -> Result<u32, MailboxError> {
    let id = match field.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) if field.is_empty() => None,
        Err(_) => by_name(field).ok().flatten(),
    };
    match id {
        Some(0) => Err(MailboxError::Conflict(format!(
            "the source entry's {what} is 0, which Dovecot refuses; set target.uid/gid"
        ))),
        Some(n) => Ok(n),
        None => Err(MailboxError::Conflict(format!(
            "the source entry's {what} {:?} is not a number or a known name; set target.uid/gid",
            crate::shown::text(field)
        ))),
    }
}
