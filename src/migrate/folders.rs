//! A mailbox's content: which folders exist and which are skipped, and one
//! pass that makes the target Maildir match the source (messages plus the
//! control files that keep UIDs, keywords and subscriptions).

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::classify::{Classifier, SkippedFolders};
use crate::copy::{self, CopyOptions, Naming, TargetFolder, Workers};
use crate::maildir::courier::keywords::{Assignment, MergedKeywords};
use crate::maildir::keywords::{self, Keywords};
use crate::maildir::names::{FolderName, NameEncoding, decode_level};
use crate::maildir::uidlist::Uidlist;
use crate::maildir::{self, Layout, subscriptions};
use crate::report::SkippedFolder;
use crate::safe_fs::{Dir, FileAttrs, Kind, Owner};
use crate::throttle::Throttle;

use super::MailboxError;
use super::courier;

/// Dovecot's ACL file (converted from `courierimapacl`).
const DOVECOT_ACL: &str = "dovecot-acl";

/// A source that keeps renaming files faster than we can copy them.
const MAX_PASSES_PER_FOLDER: usize = 5;

#[derive(Debug, Clone)]
pub struct SourceFolder {
    /// `None` for INBOX (the Maildir root itself).
    pub name: Option<FolderName>,
    /// Directory below the Maildir root (`None` for the root itself):
    /// `.A.b` in Maildir++, `A/b` in the fs layout.
    pub dir: Option<PathBuf>,
}

impl SourceFolder {
    pub fn display(&self) -> String {
        self.name
            .as_ref()
            .map_or_else(|| "INBOX".to_string(), ToString::to_string)
    }

    /// Where the folder goes in the target, relative to its Maildir.
    pub(crate) fn target_dir(
        &self,
        names: NameEncoding,
        layout: Layout,
    ) -> Result<Option<PathBuf>, String> {
        let Some(n) = &self.name else {
            return Ok(None);
        };
        Ok(Some(match layout {
            Layout::MaildirPlusPlus => {
                // `.` separates levels on disk; a name with one (possible in
                // the fs layout) would come back as another folder.
                if let Some(l) = n.levels().iter().find(|l| l.contains('.')) {
                    return Err(format!(
                        "folder {n:?}: level {l:?} contains '.', which Maildir++ cannot store"
                    ));
                }
                PathBuf::from(n.dir_name(names))
            }
            Layout::Fs => {
                let levels = n.storage_levels(names);
                if let Some(l) = levels.iter().find(|l| is_reserved_fs_level(l)) {
                    return Err(format!(
                        "folder {n:?}: level {l:?} cannot be stored in the fs layout"
                    ));
                }
                levels.iter().collect()
            }
        }))
    }

    pub fn open(&self, root: &Dir) -> std::io::Result<Dir> {
        match &self.dir {
            Some(d) => root.open_beneath(d),
            None => root.reopen(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FolderScan {
    pub copy: Vec<SourceFolder>,
    /// Why each skipped folder is skipped (for the report)...
    pub skipped: Vec<SkippedFolder>,
    /// ...and where it is (to create it empty in the target).
    pub skip: Vec<SourceFolder>,
    pub warnings: Vec<String>,
}

/// In the fs layout these names are the Maildir's own subdirectories (or
/// would leave it).
fn is_reserved_fs_level(l: &str) -> bool {
    matches!(l, "cur" | "new" | "tmp" | "." | "..") || l.starts_with('.')
}

/// Folder nesting deeper than this in the fs layout is not followed.
const MAX_FS_DEPTH: usize = 32;

/// Directories of an fs-layout Maildir: (decoded name, relative path).
fn fs_folders(
    dir: &Dir,
    prefix: &Path,
    levels: &[String],
    out: &mut Vec<(FolderName, PathBuf)>,
    warnings: &mut Vec<String>,
) -> Result<(), MailboxError> {
    if levels.len() >= MAX_FS_DEPTH {
        warnings.push(format!(
            "{}: nested too deep; not followed",
            crate::shown::path(prefix)
        ));
        return Ok(());
    }
    for e in dir.entries().map_err(|e| MailboxError::io(dir.path(), e))? {
        let raw = e.name.as_bytes();
        let shown = String::from_utf8_lossy(raw).into_owned();
        if is_reserved_fs_level(&shown) || crate::maildir::courier::is_courier_file(raw) {
            continue;
        }
        match e.kind {
            Kind::Dir => {}
            Kind::Other => {
                warnings.push(format!(
                    "\"{}\" is not a directory (symlink?); not followed",
                    crate::shown::path(&prefix.join(&e.name))
                ));
                continue;
            }
            Kind::File => continue,
        }
        let (level, _) = decode_level(raw).map_err(|err| MailboxError::FolderName {
            dir: dir.child_path(&e.name),
            err,
        })?;
        let mut name_levels = levels.to_vec();
        name_levels.push(level);
        let name = FolderName::from_levels(name_levels.clone()).map_err(|err| {
            MailboxError::FolderName {
                dir: dir.child_path(&e.name),
                err,
            }
        })?;
        let rel = prefix.join(&e.name);
        let sub = dir
            .open_dir(&e.name)
            .map_err(|err| MailboxError::io(&dir.child_path(&e.name), err))?;
        out.push((name, rel.clone()));
        fs_folders(&sub, &rel, &name_levels, out, warnings)?;
    }
    Ok(())
}

/// Lists and classifies the folders of a source Maildir.
pub fn scan(
    src: &Dir,
    classifier: &Classifier,
    layout: Layout,
) -> Result<FolderScan, MailboxError> {
    let mut scan = FolderScan {
        copy: vec![SourceFolder {
            name: None,
            dir: None,
        }],
        ..FolderScan::default()
    };
    let mut candidates: Vec<(FolderName, PathBuf)> = Vec::new();
    match layout {
        Layout::Fs => fs_folders(src, Path::new(""), &[], &mut candidates, &mut scan.warnings)?,
        Layout::MaildirPlusPlus => maildirpp_folders(src, &mut candidates, &mut scan.warnings)?,
    }
    for (name, dir) in unique(candidates)? {
        if let Some(reason) = classifier.classify(&name) {
            scan.skipped.push(SkippedFolder {
                name: name.to_string(),
                reason: reason.to_string(),
                kind: reason,
            });
            scan.skip.push(SourceFolder {
                name: Some(name),
                dir: Some(dir),
            });
            continue;
        }
        match holds_mail(src, &dir)? {
            // Just deleted.
            None => continue,
            Some(true) => {}
            Some(false) => {
                // In the fs layout a parent without mail of its own is normal.
                if layout == Layout::MaildirPlusPlus {
                    scan.warnings.push(format!(
                        "{:?} has no cur/ or new/; not a Maildir folder, not copied",
                        dir.display()
                    ));
                }
                continue;
            }
        }
        scan.copy.push(SourceFolder {
            name: Some(name),
            dir: Some(dir),
        });
    }
    Ok(scan)
}

/// The `.`-directories of a Maildir++ root: (decoded name, relative path).
fn maildirpp_folders(
    src: &Dir,
    out: &mut Vec<(FolderName, PathBuf)>,
    warnings: &mut Vec<String>,
) -> Result<(), MailboxError> {
    for e in src.entries().map_err(|e| MailboxError::io(src.path(), e))? {
        let raw = e.name.as_bytes();
        if raw.first() != Some(&b'.') || raw == b"." || raw == b".." {
            continue;
        }
        let shown = String::from_utf8_lossy(raw).into_owned();
        match e.kind {
            Kind::Dir => {}
            Kind::Other => {
                warnings.push(format!(
                    "{shown:?} is not a directory (symlink?); not followed"
                ));
                continue;
            }
            // Maildir++ readers ignore dot-files in the root.
            Kind::File => continue,
        }
        let (name, _) = FolderName::from_dir_name(raw).map_err(|err| MailboxError::FolderName {
            dir: src.child_path(&e.name),
            err,
        })?;
        out.push((name, PathBuf::from(&e.name)));
    }
    Ok(())
}

/// The folders sorted for the report (by decoded name, parents before
/// children); two directories decoding to one name are an error.
fn unique(
    candidates: Vec<(FolderName, PathBuf)>,
) -> Result<Vec<(FolderName, PathBuf)>, MailboxError> {
    let mut seen: HashMap<FolderName, PathBuf> = HashMap::new();
    let mut found = Vec::new();
    for (name, dir) in candidates {
        if let Some(other) = seen.insert(name.clone(), dir.clone()) {
            return Err(MailboxError::NameConflict {
                name: name.to_string(),
                first: other.display().to_string(),
                second: dir.display().to_string(),
            });
        }
        found.push((name, dir));
    }
    found.sort();
    Ok(found)
}

/// Whether the folder at `dir` has a `cur/` or `new/` (`None`: it
/// was just deleted). A folder we cannot read fails the mailbox: skipping
/// it would lose its mail without anyone noticing.
fn holds_mail(src: &Dir, dir: &Path) -> Result<Option<bool>, MailboxError> {
    let unreadable = |e: std::io::Error| MailboxError::io(&src.path().join(dir), e);
    let d = match src.open_beneath(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let mut is_folder = false;
    for s in copy::SUBDIRS {
        match d.stat_at(s) {
            Ok(st) => is_folder |= crate::safe_fs::kind_of(&st) == Kind::Dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    Ok(Some(is_folder))
}

/// What a pass over a whole mailbox found and did.
#[derive(Debug, Default, Clone)]
pub struct MailboxSync {
    /// Messages copied, renamed or removed in the target by this pass.
    pub changes: u64,
    /// From the freeze to the switch (set by the mailbox protocol).
    pub freeze_ms: Option<u64>,
    /// Final pass: each source folder (its dir, "" for INBOX) with the
    /// base names it held, for the sweep to tell late mail from old.
    pub manifest: Vec<(String, Vec<Vec<u8>>)>,
    pub folders: u64,
    pub messages: u64,
    pub bytes: u64,
    pub uids_preserved: bool,
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy)]
pub struct SyncContext<'a> {
    pub classifier: &'a Classifier,
    pub copy: CopyOptions,
    pub workers: Workers<'a>,
    /// Encoding of the target's folder directory names.
    pub names: NameEncoding,
    pub layout: Layout,
    pub skipped: SkippedFolders,
}

impl SyncContext<'_> {
    /// The same context writing everything as `owner` (each mailbox's
    /// target belongs to the uid/gid its new entry names).
    pub(crate) fn for_owner(&self, owner: Owner) -> SyncContext<'_> {
        SyncContext {
            copy: self.copy.with_owner(owner),
            ..*self
        }
    }

    /// The same context with its copy workers paced by `throttle`.
    pub(crate) fn with_throttle<'t>(&'t self, throttle: Option<&'t Throttle>) -> SyncContext<'t> {
        SyncContext {
            workers: Workers {
                throttle,
                ..self.workers
            },
            ..*self
        }
    }

    /// Whether a folder of this name is left out of the target (and so
    /// out of the subscriptions).
    pub(crate) fn drops(&self, name: &FolderName) -> bool {
        self.skipped == SkippedFolders::Absent && self.classifier.classify(name).is_some()
    }

    pub(crate) fn attrs(&self) -> FileAttrs {
        FileAttrs::private(self.copy.owner, self.copy.fsync)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Messages only, while the mailbox is live.
    Bulk,
    /// After the freeze: messages, then verification, control files and
    /// subscriptions, and the totals for the report.
    Final,
}

/// One pass: every kept folder is brought in line with the source. In the
/// final pass each folder is verified right after it is synced (so no
/// listing outlives its folder). In the bulk pass a folder's last copies
/// are made durable and named while the next folder is copied.
pub fn sync_mailbox(
    ctx: &SyncContext<'_>,
    src: &Dir,
    dst: &Dir,
    scan: &FolderScan,
    pass: Pass,
) -> Result<MailboxSync, MailboxError> {
    let mut out = MailboxSync {
        uids_preserved: true,
        warnings: scan.warnings.clone(),
        ..MailboxSync::default()
    };
    // Everything read from the source must belong to the mailbox owner.
    let uid = src
        .stat()
        .map_err(|e| MailboxError::io(src.path(), e))?
        .st_uid;
    let mut kept_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let naming = Naming::default();
    for folder in &scan.copy {
        let Some(src_dir) = open_source_folder(src, folder, &mut out.warnings)? else {
            continue;
        };
        let rel = folder
            .target_dir(ctx.names, ctx.layout)
            .map_err(MailboxError::Conflict)?;
        let dst_dir = match rel {
            None => dst.reopen().map_err(|e| MailboxError::io(dst.path(), e))?,
            Some(rel) => {
                let d = dst
                    .ensure_beneath(&rel, 0o700, ctx.copy.owner)
                    .map_err(|e| MailboxError::io(&dst.path().join(&rel), e))?;
                kept_dirs.insert(rel);
                d
            }
        };
        let target = TargetFolder::open(dst_dir, ctx.copy.owner)?;
        let to = (&target, &naming);
        pass_folder(ctx, &src_dir, uid, to, folder, pass, &mut out)?;
    }
    naming.finish()?;
    if ctx.skipped == SkippedFolders::Empty {
        for folder in &scan.skip {
            let rel = empty_skipped_folder(ctx, src, uid, dst, folder, pass, &mut out)?;
            kept_dirs.extend(rel);
        }
    }
    match ctx.layout {
        Layout::MaildirPlusPlus => remove_stale_folders(dst, &kept_dirs)?,
        Layout::Fs => remove_stale_fs_folders(dst, Path::new(""), &kept_dirs)?,
    }
    if pass == Pass::Final {
        carry_subscriptions(ctx, src, uid, dst, &mut out)?;
        courier::root_warnings(src, &mut out.warnings);
    }
    Ok(out)
}

/// A kept source folder, open; `None` when the user deleted it since the
/// scan (its target copy is then removed as a stale folder).
fn open_source_folder(
    src: &Dir,
    folder: &SourceFolder,
    warnings: &mut Vec<String>,
) -> Result<Option<Dir>, MailboxError> {
    match folder.open(src) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && folder.name.is_some() => {
            warnings.push(format!(
                "{}: deleted in the source during the pass",
                folder.display()
            ));
            Ok(None)
        }
        Err(e) => Err(MailboxError::io(
            &src.path()
                .join(folder.dir.as_deref().unwrap_or(Path::new(""))),
            e,
        )),
    }
}

/// One folder in one pass: its messages synced; in the final pass also
/// verified, counted, listed for the manifest, and its control files
/// carried.
fn pass_folder(
    ctx: &SyncContext<'_>,
    src_dir: &Dir,
    uid: u32,
    (target, naming): (&TargetFolder, &Naming),
    folder: &SourceFolder,
    pass: Pass,
    out: &mut MailboxSync,
) -> Result<(), MailboxError> {
    let shown = folder.display();
    // Courier keywords become letters in the names; a Dovecot
    // keywords file, where one exists, already says what they mean.
    let courier_keywords = match src_dir.stat_at(maildir::KEYWORDS) {
        Ok(_) => None,
        Err(_) => courier::read_keywords(src_dir, uid, &shown, &mut out.warnings)?,
    };
    let keywords = courier_keywords.as_ref();
    let (listing, assignment, changes) =
        sync_folder_until_stable(ctx, src_dir, uid, (target, naming), &shown, keywords)?;
    out.changes += changes;
    for p in &listing.not_files {
        out.warnings.push(format!(
            "{}: not a regular file; not copied",
            crate::shown::path(p)
        ));
    }
    if pass == Pass::Bulk {
        return Ok(());
    }
    naming.finish()?;
    let m = copy::compare(&listing, &target.list()?);
    if !m.is_empty() {
        return Err(MailboxError::Verify {
            folder: shown,
            mismatch: m,
        });
    }
    out.folders += 1;
    out.messages += listing.len() as u64;
    out.bytes = out.bytes.saturating_add(copy::listing_bytes(
        &target.dir,
        &listing,
        copy::Side::Target,
    )?);
    let present = courier::present_bases(&listing);
    out.manifest.push((
        folder
            .dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default(),
        present.clone(),
    ));
    let has_cur = !listing.cur.is_empty();
    drop(listing);
    let found = FolderFacts {
        present: &present,
        has_cur,
        courier_keywords: assignment,
    };
    carry_folder_files(ctx, src_dir, uid, &target.dir, folder, found, out)
}

/// A skipped folder in the target: there, but empty. The final pass gives
/// it the source's UIDVALIDITY and next UID, so a client that had synced
/// it sees every message expunged. Returns its directory below the Maildir.
fn empty_skipped_folder(
    ctx: &SyncContext<'_>,
    src: &Dir,
    uid: u32,
    dst: &Dir,
    folder: &SourceFolder,
    pass: Pass,
    out: &mut MailboxSync,
) -> Result<Option<PathBuf>, MailboxError> {
    let Some(rel) = folder
        .target_dir(ctx.names, ctx.layout)
        .map_err(MailboxError::Conflict)?
    else {
        return Ok(None);
    };
    let dir = dst
        .ensure_beneath(&rel, 0o700, ctx.copy.owner)
        .map_err(|e| MailboxError::io(&dst.child_path(&rel), e))?;
    let target = TargetFolder::open(dir, ctx.copy.owner)?;
    // Whatever a message of it the target holds goes (an earlier
    // configuration may have kept the folder).
    for (sub, name) in target.list()?.iter() {
        let d = target.dir.child_path(copy::SUBDIRS[sub]);
        target
            .dir
            .open_dir(copy::SUBDIRS[sub])
            .and_then(|d| d.unlink_if_exists(name))
            .map_err(|e| MailboxError::io(&d.join(name), e))?;
    }
    if pass == Pass::Final {
        let shown = folder.display();
        let src_dir = folder.open(src).ok();
        let uids = match &src_dir {
            Some(d) => emptied_uidlist(d, uid, &shown, &mut out.warnings)?,
            None => None,
        };
        let attrs = ctx.attrs();
        for idx in maildir::INDEX_FILES {
            target
                .dir
                .unlink_if_exists(idx)
                .map_err(|e| MailboxError::io(&target.dir.child_path(idx), e))?;
        }
        if uids.is_some()
            && let Some(d) = &src_dir
        {
            carry_expunge_record(d, uid, &target.dir, &attrs, &shown, &mut out.warnings)?;
        }
        put_control(&target.dir, maildir::UIDLIST, uids, &attrs)?;
        if ctx.layout == Layout::MaildirPlusPlus {
            put_control(
                &target.dir,
                maildir::MAILDIRFOLDER,
                Some(Vec::new()),
                &attrs,
            )?;
        }
    }
    Ok(Some(rel))
}

/// Copies the old Dovecot's index of a skipped folder into its emptied
/// copy (see `maildir::EXPUNGE_RECORD`); a folder without one (Courier, or
/// indexes kept elsewhere) has nothing to carry.
fn carry_expunge_record(
    src: &Dir,
    uid: u32,
    dst: &Dir,
    attrs: &FileAttrs,
    shown: &str,
    warnings: &mut Vec<String>,
) -> Result<(), MailboxError> {
    for name in maildir::EXPUNGE_RECORD {
        match src.read_file(name, maildir::MAX_INDEX_FILE, uid) {
            Ok(data) => put_control(dst, name, data, attrs)?,
            Err(e) => {
                warnings.push(format!(
                    "{shown}: {name} not carried ({e}); a QRESYNC client is not told its messages are gone"
                ));
                for name in maildir::EXPUNGE_RECORD {
                    put_control(dst, name, None, attrs)?;
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The header of a skipped folder's uidlist (Dovecot's, else Courier's
/// uiddb): its UIDVALIDITY and next UID, and no message.
fn emptied_uidlist(
    src: &Dir,
    uid: u32,
    shown: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Vec<u8>>, MailboxError> {
    match read_uidlist(src, uid)? {
        Some(Ok(list)) => Ok(Some(list.emptied().to_bytes())),
        Some(Err(e)) => {
            warnings.push(format!(
                "{shown}: {} {e}; created empty with a new UIDVALIDITY",
                maildir::UIDLIST
            ));
            Ok(None)
        }
        None => Ok(courier::uidlist(src, uid, shown, &[], false, warnings)?.map(|(b, _)| b)),
    }
}

fn sync_folder_until_stable(
    ctx: &SyncContext<'_>,
    src: &Dir,
    uid: u32,
    (target, naming): (&TargetFolder, &Naming),
    shown: &str,
    courier_keywords: Option<&MergedKeywords>,
) -> Result<(copy::Listing, Option<Assignment>, u64), MailboxError> {
    let mut changes = 0;
    for _ in 0..MAX_PASSES_PER_FOLDER {
        let mut listing = copy::list_messages(src)?;
        let assignment = courier_keywords.map(|k| courier::apply_keywords(&mut listing, k));
        let w = &ctx.workers;
        let stats = copy::sync_folder(src, &listing, target, uid, &ctx.copy, w, naming)?;
        changes += stats.copied + stats.renamed + stats.removed;
        if stats.vanished == 0 {
            return Ok((listing, assignment, changes));
        }
    }
    Err(MailboxError::Unstable {
        folder: shown.to_string(),
    })
}

/// What the final pass learned about a folder's messages.
struct FolderFacts<'a> {
    /// Base names of the messages, in Courier's order.
    present: &'a [Vec<u8>],
    has_cur: bool,
    /// Courier keywords as letters, when the folder had them.
    courier_keywords: Option<Assignment>,
}

/// `dovecot-uidlist`, `dovecot-keywords`, `dovecot-acl` and
/// `maildirfolder`, from Dovecot's files or else Courier's; stale index
/// files in the target are removed so Dovecot reads the carried uidlist.
fn carry_folder_files(
    ctx: &SyncContext<'_>,
    src: &Dir,
    uid: u32,
    dst: &Dir,
    folder: &SourceFolder,
    found: FolderFacts<'_>,
    out: &mut MailboxSync,
) -> Result<(), MailboxError> {
    let shown = folder.display();
    let attrs = ctx.attrs();
    for idx in maildir::INDEX_FILES {
        dst.unlink_if_exists(idx)
            .map_err(|e| MailboxError::io(&dst.child_path(idx), e))?;
    }
    let uid_bytes = carried_uidlist(src, uid, &shown, folder, &found, out)?;
    put_control(dst, maildir::UIDLIST, uid_bytes, &attrs)?;
    let kw_bytes = carried_keywords(src, uid, &shown, found.courier_keywords, out)?;
    put_control(dst, maildir::KEYWORDS, kw_bytes, &attrs)?;
    let acl = courier::acl(src, uid, &shown, &mut out.warnings)?;
    put_control(dst, DOVECOT_ACL, acl, &attrs)?;

    if folder.name.is_some() && ctx.layout == Layout::MaildirPlusPlus {
        match dst.create_file(maildir::MAILDIRFOLDER, 0o600) {
            Ok(f) => crate::safe_fs::apply_attrs(&f, &attrs),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| MailboxError::io(&dst.child_path(maildir::MAILDIRFOLDER), e))?;
    }
    Ok(())
}

/// The `dovecot-uidlist` to write: Dovecot's own, else one built from
/// Courier's; `None` (with a warning where messages lose their UIDs)
/// when neither is usable.
fn carried_uidlist(
    src: &Dir,
    uid: u32,
    shown: &str,
    folder: &SourceFolder,
    found: &FolderFacts<'_>,
    out: &mut MailboxSync,
) -> Result<Option<Vec<u8>>, MailboxError> {
    Ok(match read_uidlist(src, uid)? {
        Some(Ok(l)) => Some(l.to_bytes()),
        Some(Err(e)) => {
            out.uids_preserved = false;
            out.warnings.push(format!(
                "{shown}: {} {e}; not carried, Dovecot will assign new UIDs",
                maildir::UIDLIST
            ));
            None
        }
        None => match courier::uidlist(
            src,
            uid,
            shown,
            found.present,
            folder.name.is_none(),
            &mut out.warnings,
        )? {
            Some((bytes, preserved)) => {
                out.uids_preserved &= preserved;
                Some(bytes)
            }
            None if found.has_cur => {
                out.uids_preserved = false;
                out.warnings.push(format!(
                    "{shown}: no {}; its messages will get new UIDs",
                    maildir::UIDLIST
                ));
                None
            }
            None => None,
        },
    })
}

/// The `dovecot-keywords` to write: Dovecot's own, else Courier's
/// keywords as letters (at most 26; the rest are reported dropped).
fn carried_keywords(
    src: &Dir,
    uid: u32,
    shown: &str,
    courier_keywords: Option<Assignment>,
    out: &mut MailboxSync,
) -> Result<Option<Vec<u8>>, MailboxError> {
    let keywords = read_control(src, maildir::KEYWORDS, uid, keywords::MAX_BYTES)?
        .map(|d| Keywords::parse(&d));
    Ok(match keywords {
        Some(Ok(k)) => Some(k.to_bytes()),
        Some(Err(e)) => {
            out.warnings.push(format!(
                "{shown}: {} {e}; keywords of this folder are not carried",
                maildir::KEYWORDS
            ));
            None
        }
        None => courier_keywords.map(|a| {
            for (name, n) in &a.dropped {
                out.warnings.push(format!(
                    "{shown}: keyword {name:?} ({n} messages) dropped: Dovecot keeps at most 26 per folder"
                ));
            }
            a.keywords.to_bytes()
        }),
    })
}

/// At most `limit + 1` bytes of a control file: one larger than its
/// format allows is refused by its parser (and not carried), never read
/// whole.
fn read_control(
    dir: &Dir,
    name: &str,
    uid: u32,
    limit: usize,
) -> Result<Option<Vec<u8>>, MailboxError> {
    use std::io::Read;
    let io = |e| MailboxError::io(&dir.child_path(name), e);
    let (file, _) = match dir.open_file_owned(name, uid) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut data = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut data)
        .map_err(io)?;
    Ok(Some(data))
}

/// A folder's `dovecot-uidlist`, parsed as it is read (it grows with the
/// folder: no need to hold the whole file, and an over-long line is
/// refused after its cap).
pub(crate) fn read_uidlist(
    dir: &Dir,
    uid: u32,
) -> Result<Option<Result<Uidlist, crate::maildir::uidlist::UidlistError>>, MailboxError> {
    let (file, _) = match dir.open_file_owned(maildir::UIDLIST, uid) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MailboxError::io(&dir.child_path(maildir::UIDLIST), e)),
    };
    Ok(Some(Uidlist::parse_reader(std::io::BufReader::new(file))))
}

/// Writes a control file atomically, or removes a stale one.
fn put_control(
    dir: &Dir,
    name: &str,
    data: Option<Vec<u8>>,
    attrs: &FileAttrs,
) -> Result<(), MailboxError> {
    let r = match data {
        Some(d) => dir.write_atomic(OsStr::new(name), &d, attrs),
        None => dir.unlink_if_exists(name).map(drop),
    };
    r.map_err(|e| MailboxError::io(&dir.child_path(name), e))
}

/// Target folders whose source folder is gone (deleted, or now skipped).
fn remove_stale_folders(dst: &Dir, kept: &BTreeSet<PathBuf>) -> Result<(), MailboxError> {
    let entries = dst.entries().map_err(|e| MailboxError::io(dst.path(), e))?;
    for e in entries {
        let b = e.name.as_bytes();
        if e.kind == Kind::Dir && b.len() > 1 && b[0] == b'.' && !kept.contains(Path::new(&e.name))
        {
            dst.remove_tree(&e.name, 2)
                .map_err(|err| MailboxError::io(&dst.child_path(&e.name), err))?;
        }
    }
    Ok(())
}

/// The fs-layout twin: a directory that is neither a kept folder nor the
/// parent of one goes; cur/new/tmp are the folders' own.
fn remove_stale_fs_folders(
    dir: &Dir,
    prefix: &Path,
    kept: &BTreeSet<PathBuf>,
) -> Result<(), MailboxError> {
    let entries = dir.entries().map_err(|e| MailboxError::io(dir.path(), e))?;
    for e in entries {
        if e.kind != Kind::Dir || is_reserved_fs_level(&e.name.to_string_lossy()) {
            continue;
        }
        let rel = prefix.join(&e.name);
        let io = |err| MailboxError::io(&dir.child_path(&e.name), err);
        if kept.iter().any(|k| k.starts_with(&rel)) {
            let sub = dir.open_dir(&e.name).map_err(io)?;
            remove_stale_fs_folders(&sub, &rel, kept)?;
        } else {
            dir.remove_tree(&e.name, MAX_FS_DEPTH + 2).map_err(io)?;
        }
    }
    Ok(())
}

/// `subscriptions` without skipped folders, re-encoded for the target.
fn carry_subscriptions(
    ctx: &SyncContext<'_>,
    src: &Dir,
    uid: u32,
    dst: &Dir,
    out: &mut MailboxSync,
) -> Result<(), MailboxError> {
    let Some(data) = read_control(src, maildir::SUBSCRIPTIONS, uid, subscriptions::MAX_BYTES)?
    else {
        let courier =
            courier::subscriptions(src, uid, ctx.names, |n| ctx.drops(n), &mut out.warnings)?;
        let bytes = courier.map(|kept| subscriptions::to_v2_bytes(&kept));
        return put_control(dst, maildir::SUBSCRIPTIONS, bytes, &ctx.attrs());
    };
    let entries = match subscriptions::parse(&data) {
        Ok(entries) => entries,
        Err(e) => {
            out.warnings
                .push(format!("{}: {e}; not carried", maildir::SUBSCRIPTIONS));
            return put_control(dst, maildir::SUBSCRIPTIONS, None, &ctx.attrs());
        }
    };
    let mut kept: Vec<Vec<String>> = Vec::new();
    for entry in entries {
        let shown = || crate::shown::bytes(&entry.join(&b'/'));
        let levels = match &entry[..] {
            [one] if one.eq_ignore_ascii_case(b"INBOX") => vec!["INBOX".to_string()],
            _ => {
                let decoded: Result<Vec<String>, _> = entry
                    .iter()
                    .map(|l| decode_level(l).map(|(s, _)| s))
                    .collect();
                match decoded.and_then(FolderName::from_levels) {
                    Ok(name) if ctx.drops(&name) => continue,
                    Ok(name) => name.storage_levels(ctx.names),
                    Err(e) => {
                        out.warnings
                            .push(format!("subscription {:?} dropped: {e}", shown()));
                        continue;
                    }
                }
            }
        };
        if !kept.contains(&levels) {
            kept.push(levels);
        }
    }
    put_control(
        dst,
        maildir::SUBSCRIPTIONS,
        Some(subscriptions::to_v2_bytes(&kept)),
        &ctx.attrs(),
    )
}

/// The target Maildir must be ours before anything is written into it:
/// created by this tool (marker file present) or empty.
pub const OWNER_MARKER: &str = ".maildir-migrate-partial";

/// A claimed target Maildir.
pub struct Claim {
    pub md: Dir,
    /// This run of this job is the first to write into it (a re-run finds
    /// its own marker).
    pub first: bool,
    /// Every message file in it was written for this same owner: an empty
    /// Maildir, or one whose marker names the owner.
    pub owner_known: bool,
}

/// Claims the target Maildir for `user`; the marker names the job, the
/// user and the owner everything is written for.
pub fn claim_target(
    home: &Dir,
    owner: Owner,
    job_id: &str,
    user: &str,
    fsync: bool,
) -> Result<Claim, MailboxError> {
    let (md, created) = home
        .ensure_dir("Maildir", crate::migrate::ownership::DIR_MODE, Some(owner))
        .map_err(|e| MailboxError::io(&home.child_path("Maildir"), e))?;
    if !created && !claimable(&md, user)? {
        return Err(MailboxError::TargetNotOurs {
            path: md.path().to_path_buf(),
        });
    }
    let marker_text = format!(
        "job {job_id}\nuser {user}\nowner {}:{}\n",
        owner.uid, owner.gid
    );
    // Whoever owns the Maildir now (an earlier run's owner) wrote it.
    let md_uid = md
        .stat()
        .map_err(|e| MailboxError::io(md.path(), e))?
        .st_uid;
    let old = match md.read_file(OWNER_MARKER, 4096, md_uid) {
        Ok(m) => m,
        // There, but not readable as ours: vouches for nothing.
        Err(_) => Some(Vec::new()),
    };
    let owner_line = format!("owner {}:{}", owner.uid, owner.gid);
    let owner_known = old
        .as_ref()
        .is_none_or(|m| m.split(|&b| b == b'\n').any(|l| l == owner_line.as_bytes()));
    // A re-run of the same job finds its own marker: no rewrite (and no
    // fsync), which is most of a no-op pre-sync's cost.
    if !created && old.as_deref() == Some(marker_text.as_bytes()) {
        return Ok(Claim {
            md,
            first: false,
            owner_known,
        });
    }
    md.write_atomic(
        OsStr::new(OWNER_MARKER),
        marker_text.as_bytes(),
        &FileAttrs::private(Some(owner), fsync),
    )
    .map_err(|e| MailboxError::io(&md.child_path(OWNER_MARKER), e))?;
    Ok(Claim {
        md,
        first: true,
        owner_known,
    })
}

/// An existing target Maildir may be written into when an earlier run of
/// ours left its marker for this same user, or when it holds nothing but
/// empty cur/new/tmp (and perhaps the marker's temporary file: a run killed
/// while writing it). A marker naming another user is someone else's
/// partial copy, never ours to finish.
pub fn claimable(md: &Dir, user: &str) -> Result<bool, MailboxError> {
    let entries = md.entries().map_err(|e| MailboxError::io(md.path(), e))?;
    let marker_tmp = crate::safe_fs::atomic_tmp_name(OsStr::new(OWNER_MARKER));
    let mut empty = true;
    for e in entries {
        if e.name == OWNER_MARKER && e.kind == Kind::File {
            return marker_names(md, user);
        }
        if e.name == marker_tmp && e.kind == Kind::File {
            continue;
        }
        let sub = matches!(e.name.to_str(), Some("cur" | "new" | "tmp")) && e.kind == Kind::Dir;
        empty = empty
            && sub
            && md
                .open_dir(&e.name)
                .and_then(|d| d.entries())
                .map_err(|err| MailboxError::io(&md.child_path(&e.name), err))?
                .is_empty();
    }
    Ok(empty)
}

/// Whether the marker in `md` was left for `user`.
fn marker_names(md: &Dir, user: &str) -> Result<bool, MailboxError> {
    let uid = md
        .stat()
        .map_err(|e| MailboxError::io(md.path(), e))?
        .st_uid;
    let text = md
        .read_file(OWNER_MARKER, 4096, uid)
        .map_err(|e| MailboxError::io(&md.child_path(OWNER_MARKER), e))?
        .unwrap_or_default();
    let wanted = format!("user {user}");
    Ok(text.split(|&b| b == b'\n').any(|l| l == wanted.as_bytes()))
}

/// Bytes the first pass will copy into `dst` (what it lacks of `src`),
/// refusing a message over `max`: a mailbox that cannot be finished fails
/// before anything is copied. Sizes come from `,S=` where a name has one
/// (the copy itself refuses a file bigger than `max` whatever its name).
pub fn bytes_to_copy(
    ctx: &SyncContext<'_>,
    src: &Dir,
    dst: &Dir,
    scan: &FolderScan,
    max: u64,
) -> Result<u64, MailboxError> {
    let mut need = 0u64;
    for folder in &scan.copy {
        let Ok(src_dir) = folder.open(src) else {
            continue;
        };
        let listing = copy::list_messages(&src_dir)?;
        let there: std::collections::HashSet<Vec<u8>> = folder
            .target_dir(ctx.names, ctx.layout)
            .map_err(MailboxError::Conflict)?
            .map_or_else(|| dst.reopen(), |rel| dst.open_beneath(&rel))
            .ok()
            .and_then(|d| copy::list_messages(&d).ok())
            .map(|l| {
                l.iter()
                    .map(|(_, n)| crate::maildir::filename::base(n.as_bytes()).to_vec())
                    .collect()
            })
            .unwrap_or_default();
        for (sub, name, mut size) in copy::message_sizes(&src_dir, &listing, copy::Side::Source)? {
            let path = || src_dir.child_path(copy::SUBDIRS[sub]).join(name);
            if size > max {
                // A name can claim any size; only the file's own counts.
                size = src_dir
                    .open_dir(copy::SUBDIRS[sub])
                    .and_then(|d| d.stat_at(name))
                    .map_err(|e| MailboxError::io(&path(), e))?
                    .st_size as u64;
            }
            if size > max {
                return Err(copy::CopyError::TooLarge {
                    path: path(),
                    size,
                    max,
                }
                .into());
            }
            let target = listing.target_name(name);
            if !there.contains(crate::maildir::filename::base(target.as_bytes())) {
                need = need.saturating_add(size);
            }
        }
    }
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maildir_left_by_a_killed_claim_is_claimable_others_are_not() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        let tmp = crate::safe_fs::atomic_tmp_name(OsStr::new(OWNER_MARKER));
        std::fs::write(md.join(&tmp), "job j\n").unwrap();
        assert!(claimable(&Dir::open_root(&md).unwrap(), "j@a.cz").unwrap());
        std::fs::write(md.join("cur/1.a:2,S"), "mail").unwrap();
        assert!(!claimable(&Dir::open_root(&md).unwrap(), "j@a.cz").unwrap());
        std::fs::remove_file(md.join("cur/1.a:2,S")).unwrap();
        let with_marker = |user: &str| {
            std::fs::write(md.join(OWNER_MARKER), format!("job j\nuser {user}\n")).unwrap();
            claimable(&Dir::open_root(&md).unwrap(), "j@a.cz").unwrap()
        };
        assert!(with_marker("j@a.cz"));
        assert!(!with_marker("eva@b.cz"), "another user's partial copy");
        std::fs::remove_file(md.join(OWNER_MARKER)).unwrap();
        std::fs::write(md.join("subscriptions"), "INBOX\n").unwrap();
        assert!(!claimable(&Dir::open_root(&md).unwrap(), "j@a.cz").unwrap());
    }

    #[test]
    fn scan_classifies_and_refuses_conflicts() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path();
        for d in [
            ".Sent/cur",
            ".Trash/cur",
            ".Trash.2020/new",
            ".Ko&AWE-/cur",
            ".Trash 2020/cur",
            ".Empty",
        ] {
            std::fs::create_dir_all(md.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("/etc", md.join(".Evil")).unwrap();
        std::fs::write(md.join(".hidden-file"), b"").unwrap();
        let c = Classifier::new(&[], &[]);
        let s = scan(&Dir::open_root(md).unwrap(), &c, Layout::MaildirPlusPlus).unwrap();
        let copied: Vec<String> = s.copy.iter().map(SourceFolder::display).collect();
        assert_eq!(copied, ["INBOX", "Sent", "Trash 2020"]);
        let skipped: Vec<(&str, &str)> = s
            .skipped
            .iter()
            .map(|f| (f.name.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("Koš", "trash folder (not migrated)"),
                ("Trash", "trash folder (not migrated)"),
                ("Trash/2020", "inside skipped folder \"Trash\"")
            ]
        );
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);

        std::fs::create_dir_all(md.join(".Koš/cur")).unwrap();
        let e = scan(&Dir::open_root(md).unwrap(), &c, Layout::MaildirPlusPlus).unwrap_err();
        assert!(matches!(e, MailboxError::NameConflict { .. }), "{e}");
    }

    #[test]
    fn a_folder_deleted_during_a_pass_is_dropped_not_fatal() {
        use crate::copy::{CopyOptions, Workers};
        use std::sync::atomic::AtomicBool;
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("s"), t.path().join("d"));
        for d in ["cur", ".Keep/cur", ".Gone/cur"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        std::fs::write(src.join(".Gone/cur/1.x:2,S"), b"x").unwrap();
        std::fs::create_dir_all(dst.join(".Gone/cur")).unwrap();
        let c = Classifier::new(&[], &[]);
        let s_dir = Dir::open_root(&src).unwrap();
        let scan = scan(&s_dir, &c, Layout::MaildirPlusPlus).unwrap();
        std::fs::remove_dir_all(src.join(".Gone")).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let stop = AtomicBool::new(false);
        let ctx = SyncContext {
            classifier: &c,
            copy: CopyOptions {
                owner: None,
                fsync: false,
                sync: crate::copy::SyncMethod::Batch,
                max_message_size: 1 << 30,
            },
            workers: Workers {
                pool: &pool,
                progress: &crate::progress::Silent,
                stop: &stop,
                throttle: None,
            },
            names: NameEncoding::Mutf7,
            layout: Layout::MaildirPlusPlus,
            skipped: SkippedFolders::Empty,
        };
        let d_dir = Dir::open_root(&dst).unwrap();
        let out = sync_mailbox(&ctx, &s_dir, &d_dir, &scan, Pass::Final).unwrap();
        assert!(
            out.warnings.iter().any(|w| w.contains("Gone: deleted")),
            "{:?}",
            out.warnings
        );
        assert!(dst.join(".Keep/cur").is_dir());
        assert!(!dst.join(".Gone").exists(), "the target follows the source");
    }

    #[test]
    fn fs_layout_scan_and_target_paths() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path();
        for d in [
            "cur",
            "Sent/cur",
            "Archive/2019/cur",
            "Archive.old/new",
            "Trash/Deep/cur",
            "courierimapkeywords",
            ".hidden/cur",
        ] {
            std::fs::create_dir_all(md.join(d)).unwrap();
        }
        let c = Classifier::new(&[], &[]);
        let s = scan(&Dir::open_root(md).unwrap(), &c, Layout::Fs).unwrap();
        let copied: Vec<String> = s.copy.iter().map(SourceFolder::display).collect();
        assert_eq!(copied, ["INBOX", "Archive/2019", "Archive.old", "Sent"]);
        assert_eq!(s.skipped.len(), 2, "Trash and Trash/Deep: {:?}", s.skipped);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let a2019 = &s.copy[1];
        assert_eq!(a2019.dir.as_deref(), Some(Path::new("Archive/2019")));
        let fs_path = a2019.target_dir(NameEncoding::Mutf7, Layout::Fs).unwrap();
        assert_eq!(fs_path.as_deref(), Some(Path::new("Archive/2019")));
        let pp = a2019
            .target_dir(NameEncoding::Mutf7, Layout::MaildirPlusPlus)
            .unwrap();
        assert_eq!(pp.as_deref(), Some(Path::new(".Archive.2019")));
        let dotted = &s.copy[2];
        assert!(
            dotted
                .target_dir(NameEncoding::Mutf7, Layout::MaildirPlusPlus)
                .is_err()
        );
        let reserved = SourceFolder {
            name: Some(FolderName::from_levels(["a", "cur"]).unwrap()),
            dir: None,
        };
        assert!(
            reserved
                .target_dir(NameEncoding::Mutf7, Layout::Fs)
                .is_err()
        );
    }
}
