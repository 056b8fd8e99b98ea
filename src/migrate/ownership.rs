//! Who may read the target tree. Dovecot serves a mailbox as the uid/gid
//! its userdb entry names, so that uid/gid must own every directory (0700)
//! and file (0600) of the new Maildir, and be able to get there from `/`.
//! A run asserts this on everything it owns before the switch (a crash
//! between `mkdir` and `fchown` must not leave a part Dovecot cannot
//! read); `verify` checks it.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::safe_fs::{Dir, Kind, Owner};

use super::MailboxError;
use super::env::Mailbox;
use super::manifest::MANIFEST;

pub(crate) const DIR_MODE: u32 = 0o700;
pub(crate) const FILE_MODE: u32 = 0o600;
/// Directories above the homes that the tool creates: every mail uid can
/// pass through them, none can list them.
const PARENT_MODE: u32 = 0o711;
/// Folder nesting (fs layout) deeper than this is not the tool's.
const MAX_DEPTH: usize = 40;
/// A report lists this many wrong entries, then counts the rest.
const LISTED: usize = 10;

/// Creates the mailbox's home (0700, its owner) and the directories above
/// it that are missing (0711, the tool's own). A directory above it that
/// the tool's user owns but no one else may enter (one a crash left
/// between `mkdir` and `chmod`, under a strict umask) is opened up for
/// search only.
pub(crate) fn ensure_home(root: &Dir, root_path: &Path, mb: &Mailbox) -> Result<Dir, MailboxError> {
    let io = |e| MailboxError::io(&root_path.join(&mb.home_rel), e);
    let mut levels: Vec<_> = mb.home_rel.components().collect();
    let Some(std::path::Component::Normal(home_name)) = levels.pop() else {
        return Err(io(std::io::ErrorKind::InvalidInput.into()));
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut at = root.reopen().map_err(io)?;
    for level in levels {
        let std::path::Component::Normal(name) = level else {
            return Err(io(std::io::ErrorKind::InvalidInput.into()));
        };
        let (dir, _) = at.ensure_dir(name, PARENT_MODE, None).map_err(io)?;
        let st = dir.stat().map_err(io)?;
        let mode = st.st_mode & 0o7777;
        if st.st_uid == me && mode & 0o011 != 0o011 {
            dir.chmod(mode | 0o011).map_err(io)?;
        }
        at = dir;
    }
    let (home, _) = at
        .ensure_dir(home_name, DIR_MODE, Some(mb.owner))
        .map_err(io)?;
    Ok(home)
}

/// Gives the home itself and everything in its Maildir the owner and
/// modes Dovecot needs. Something that is neither a regular file nor a
/// directory in a Maildir the tool wrote fails the mailbox.
///
/// `messages: false` leaves out the message files (not their
/// directories): each is given its owner and mode before it gets its name,
/// so where every one was written for this owner (see `claim_target`),
/// only a directory can be wrong (a crash between `mkdir` and `fchown`).
pub(crate) fn repair(home: &Dir, owner: Owner, messages: bool) -> Result<(), MailboxError> {
    Walk::new(true, messages).home(home, owner).map(drop)
}

/// The problems `repair` would fix, for `verify` (reads only).
pub(crate) fn audit(home: &Dir, owner: Owner) -> Result<Vec<String>, MailboxError> {
    Walk::new(false, true).home(home, owner)
}

/// One pass over a home: fixing what is wrong, or only listing it.
struct Walk {
    repair: bool,
    /// Whether the files in cur/, new/ and tmp/ are looked at.
    messages: bool,
    problems: Vec<String>,
    /// Wrong entries beyond the listed ones.
    more: usize,
}

impl Walk {
    fn new(repair: bool, messages: bool) -> Walk {
        Walk {
            repair,
            messages,
            problems: Vec::new(),
            more: 0,
        }
    }

    fn home(mut self, home: &Dir, owner: Owner) -> Result<Vec<String>, MailboxError> {
        self.dir(home, owner)?;
        let md = home
            .open_dir("Maildir")
            .map_err(|e| MailboxError::io(&home.child_path("Maildir"), e))?;
        self.tree(&md, owner, 0)?;
        if self.more > 0 {
            let more = self.more;
            self.problems.push(format!(
                "… and {more} more entries with the wrong owner or mode"
            ));
        }
        Ok(self.problems)
    }

    fn tree(&mut self, dir: &Dir, owner: Owner, depth: usize) -> Result<(), MailboxError> {
        if depth > MAX_DEPTH {
            return self.strange(dir.path(), "nested deeper than any Maildir");
        }
        self.dir(dir, owner)?;
        let leaf = matches!(
            dir.path().file_name().and_then(|n| n.to_str()),
            Some("cur" | "new" | "tmp")
        );
        if leaf && !self.messages {
            return Ok(());
        }
        let entries = dir.entries().map_err(|e| MailboxError::io(dir.path(), e))?;
        for e in entries {
            let path = dir.child_path(&e.name);
            match e.kind {
                Kind::Dir => {
                    let sub = dir
                        .open_dir(&e.name)
                        .map_err(|err| MailboxError::io(&path, err))?;
                    self.tree(&sub, owner, depth + 1)?;
                }
                // The tool's own record: its owner is the tool's user.
                Kind::File if depth == 0 && e.name.as_bytes() == MANIFEST.as_bytes() => {
                    let me = Owner {
                        uid: nix::unistd::geteuid().as_raw(),
                        gid: nix::unistd::getegid().as_raw(),
                    };
                    self.file(dir, &e.name, me)?;
                }
                Kind::File => self.file(dir, &e.name, owner)?,
                Kind::Other => self.strange(&path, "neither a regular file nor a directory")?,
            }
        }
        Ok(())
    }

    fn dir(&mut self, dir: &Dir, owner: Owner) -> Result<(), MailboxError> {
        let io = |e| MailboxError::io(dir.path(), e);
        let st = dir.stat().map_err(io)?;
        let has = (st.st_uid, st.st_gid, st.st_mode & 0o7777);
        if self.fine(has, owner, DIR_MODE) {
            return Ok(());
        }
        if self.repair {
            dir.chown(owner).map_err(io)?;
            return dir.chmod(DIR_MODE).map_err(io);
        }
        self.wrong(dir.path(), has, (owner.uid, owner.gid, DIR_MODE));
        Ok(())
    }

    fn file(
        &mut self,
        dir: &Dir,
        name: &std::ffi::OsStr,
        owner: Owner,
    ) -> Result<(), MailboxError> {
        let path = dir.child_path(name);
        let st = match dir.stat_at(name) {
            Ok(st) => st,
            // Gone meanwhile (Dovecot renamed it): nothing to check.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(MailboxError::io(&path, e)),
        };
        let has = (st.st_uid, st.st_gid, st.st_mode & 0o7777);
        if self.fine(has, owner, FILE_MODE) {
            return Ok(());
        }
        if self.repair {
            return dir
                .set_owner_and_mode(name, owner, FILE_MODE)
                .map_err(|e| MailboxError::io(&path, e));
        }
        self.wrong(&path, has, (owner.uid, owner.gid, FILE_MODE));
        Ok(())
    }

    /// A repair makes modes exact. An audit accepts what Dovecot itself
    /// leaves once it served the mailbox (in a 0700 tree its files take no
    /// group or other bits, but some are read-only, like
    /// `dovecot-uidvalidity.*`): the owner's bits it needs, nothing for
    /// anyone else.
    fn fine(&self, has: (u32, u32, u32), owner: Owner, want: u32) -> bool {
        if (has.0, has.1) != (owner.uid, owner.gid) {
            return false;
        }
        if self.repair {
            return has.2 == want;
        }
        let needed = if want == DIR_MODE { 0o700 } else { 0o400 };
        has.2 & needed == needed && has.2 & 0o077 == 0
    }

    fn wrong(&mut self, path: &Path, has: (u32, u32, u32), want: (u32, u32, u32)) {
        if self.problems.len() >= LISTED {
            self.more += 1;
            return;
        }
        self.problems.push(format!(
            "{}: uid {} gid {} mode {:o}; Dovecot needs uid {} gid {} mode {:o}",
            crate::shown::path(path),
            has.0,
            has.1,
            has.2,
            want.0,
            want.1,
            want.2
        ));
    }

    fn strange(&mut self, path: &Path, what: &str) -> Result<(), MailboxError> {
        let problem = format!("{} is {what}", crate::shown::path(path));
        if self.repair {
            return Err(MailboxError::Conflict(format!(
                "{problem}; not touching it"
            )));
        }
        self.problems.push(problem);
        Ok(())
    }
}

/// Whether `owner` can walk from `/` down to `root/rel`: the search
/// permission of every directory on the way, as the kernel would decide it
/// for that uid, its primary group and its supplementary groups.
pub(crate) fn check_reachable(root: &Path, rel: &Path, owner: Owner) -> Result<(), String> {
    if owner.uid == 0 {
        return Ok(());
    }
    let groups = groups_of(owner);
    let full = root.join(rel);
    let mut at = PathBuf::from("/");
    let mut dirs = vec![at.clone()];
    for c in full.components().skip(1) {
        at.push(c);
        dirs.push(at.clone());
    }
    // The last one is the Maildir itself, which `repair` gave the owner.
    dirs.pop();
    for d in dirs {
        let m = std::fs::metadata(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        if !permits(&m, owner.uid, &groups, 0o1) {
            let mode = m.mode();
            return Err(format!(
                "{} (uid {} gid {} mode {:o}) cannot be entered by uid {} gid {}, which Dovecot reads the mailbox as",
                crate::shown::path(&d),
                m.uid(),
                m.gid(),
                mode & 0o7777,
                owner.uid,
                owner.gid
            ));
        }
    }
    Ok(())
}

/// Whether the kernel grants `uid` with `groups` the permission `bit`
/// (0o4 read, 0o2 write, 0o1 search/execute) on the file `m` describes:
/// the owner's bits, else the group's, else the others'.
pub(crate) fn permits(m: &std::fs::Metadata, uid: u32, groups: &[u32], bit: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let mode = m.mode();
    let bits = if m.uid() == uid {
        mode >> 6
    } else if groups.contains(&m.gid()) {
        mode >> 3
    } else {
        mode
    };
    bits & bit != 0
}

/// The primary group and, for a uid with a passwd entry, its
/// supplementary groups (as the IMAP process will have them).
pub(crate) fn groups_of(owner: Owner) -> Vec<u32> {
    let mut groups = vec![owner.gid];
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner.uid));
    if let Ok(Some(u)) = user
        && let Ok(name) = std::ffi::CString::new(u.name)
        && let Ok(list) = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(owner.gid))
    {
        groups.extend(list.into_iter().map(|g| g.as_raw()));
    }
    groups
}

/// Fails a mailbox early when its target filesystem has less room than
/// what is still to copy.
pub(crate) fn check_room(md: &Dir, need: u64) -> Result<(), MailboxError> {
    let free = md
        .available_bytes()
        .map_err(|e| MailboxError::io(md.path(), e))?;
    if need > free {
        return Err(MailboxError::NoRoom {
            path: md.path().to_path_buf(),
            need,
            free,
        });
    }
    Ok(())
}
