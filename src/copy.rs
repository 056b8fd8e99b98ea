//! Copying one folder's message files: byte for byte, base name, info part
//! and mtime (= IMAP INTERNALDATE) kept. Each file is written unnamed
//! (`O_TMPFILE`) in the target's `cur/` or `new/`; a batch of them is made
//! durable by one `syncfs` (or each by `fsync`: `migration.sync`), then
//! each gets its name by `linkat`, never replacing anything, so a crash
//! leaves no partial message under a final name. Syncing and naming a
//! batch run in the background while the next batch (of this folder or
//! the next) is copied. Where the filesystem refuses `O_TMPFILE` (NFS, old
//! kernels), a file is written under a temporary name in `tmp/` and
//! renamed instead. Files run in parallel on the job's rayon pool.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::copy_file_range;
use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;

use crate::maildir::filename;
use crate::progress::Progress;
use crate::safe_fs::{Dir, FileAttrs, Kind, Owner, apply_attrs};
use crate::throttle::{Stopped, Throttle};

pub const SUBDIRS: [&str; 2] = ["cur", "new"];
/// Prefix of our temporary files in a target folder's `tmp/`.
const TMP_PREFIX: &str = "maildir-migrate.";

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{}: {source}", crate::shown::path(path))]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{}: file changed size while being copied ({expected} → {got} bytes)",
        crate::shown::path(path)
    )]
    SizeChanged {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    /// A stop was requested (SIGTERM); files already copied are complete.
    #[error("interrupted by a stop request")]
    Interrupted,
    #[error(
        "{}: {} bytes is more than migration.max_message_size ({max} bytes)",
        crate::shown::path(path),
        size
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
}

impl From<Stopped> for CopyError {
    fn from(_: Stopped) -> CopyError {
        CopyError::Interrupted
    }
}

fn at(path: PathBuf) -> impl FnOnce(io::Error) -> CopyError {
    move |source| CopyError::Io { path, source }
}

#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    pub owner: Option<Owner>,
    pub fsync: bool,
    pub sync: SyncMethod,
    /// A bigger message is refused (a sparse file would become that many
    /// real blocks in the target).
    pub max_message_size: u64,
}

impl CopyOptions {
    /// The same, writing everything as `owner` (each mailbox's target
    /// belongs to the uid/gid its new entry names).
    pub fn with_owner(self, owner: Owner) -> CopyOptions {
        CopyOptions {
            owner: Some(owner),
            ..self
        }
    }

    /// The same, with every file on disk before it gets its name.
    pub fn durable(self) -> CopyOptions {
        CopyOptions {
            fsync: true,
            sync: SyncMethod::PerFile,
            ..self
        }
    }
}

/// How copied files are made durable before they get their final names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// One `syncfs` per batch of files: one journal commit instead of one
    /// per file. It also writes back other dirty data on that filesystem.
    #[default]
    Batch,
    /// `fsync` on every file.
    PerFile,
}

/// Message names of one folder, per subdirectory, sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    pub cur: Vec<OsString>,
    pub new: Vec<OsString>,
    /// Entries that are not regular files (symlinks, FIFOs, directories).
    pub not_files: Vec<PathBuf>,
    /// Target names that differ from the source's (Courier keywords
    /// become letters in the flags); absent: the same name.
    pub renames: HashMap<OsString, OsString>,
}

impl Listing {
    pub fn len(&self) -> usize {
        self.cur.len() + self.new.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name a source message gets in the target.
    pub fn target_name<'a>(&'a self, name: &'a OsString) -> &'a OsString {
        self.renames.get(name).unwrap_or(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &OsString)> {
        self.cur
            .iter()
            .map(|n| (0, n))
            .chain(self.new.iter().map(|n| (1, n)))
    }
}

/// Lists `cur/` and `new/` of a folder; a missing subdirectory is empty.
/// Two files with one base name (one message's identity) are two messages
/// to Dovecot: it keeps the first under that name and gives the other a
/// new name and UID. So does this listing, as a rename: the first (in
/// order of inode, which a flag change keeps) keeps the base.
pub fn list_messages(folder: &Dir) -> Result<Listing, CopyError> {
    let mut l = Listing::default();
    let mut inodes: HashMap<OsString, u64> = HashMap::new();
    for (i, sub) in SUBDIRS.iter().enumerate() {
        let d = match folder.open_dir(sub) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(at(folder.child_path(sub))(e)),
        };
        let names = if i == 0 { &mut l.cur } else { &mut l.new };
        d.for_each_entry(|e| {
            if !filename::is_message_name(e.name.as_bytes()) {
                return Ok(());
            }
            match e.kind {
                Kind::File => {
                    inodes.insert(e.name.clone(), e.ino);
                    names.push(e.name);
                }
                _ => l.not_files.push(d.child_path(&e.name)),
            }
            Ok(())
        })
        .map_err(at(d.path().to_path_buf()))?;
        names.sort_unstable();
    }
    rename_duplicates(&mut l, &inodes);
    Ok(l)
}

/// Gives every message but the lowest-inode one of a shared base name a
/// base of its own, derived from its inode so every pass picks the same.
fn rename_duplicates(l: &mut Listing, inodes: &HashMap<OsString, u64>) {
    let mut by_base: HashMap<&[u8], Vec<&OsString>> = HashMap::new();
    for (_, name) in l.iter() {
        by_base
            .entry(filename::base(name.as_bytes()))
            .or_default()
            .push(name);
    }
    let mut renames = Vec::new();
    for (base, mut names) in by_base.into_iter().filter(|(_, n)| n.len() > 1) {
        names.sort_by_key(|n| (inodes.get(*n).copied().unwrap_or(u64::MAX), *n));
        for name in &names[1..] {
            let ino = inodes.get(*name).copied().unwrap_or_default();
            let info = &name.as_bytes()[base.len()..];
            renames.push(((*name).clone(), filename::with_new_base(base, ino, info)));
        }
    }
    for (from, to) in renames {
        l.renames
            .insert(from, OsStr::from_bytes(&to).to_os_string());
    }
}

/// Which folder a listing's sizes are read in: the source one (its own
/// names) or the target one (the names the messages got there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// Each message of a listing with its size: `,S=` from the name, else a
/// stat (Dovecot and Courier names carry `S=`, so this rarely stats).
pub fn message_sizes<'a>(
    folder: &Dir,
    listing: &'a Listing,
    side: Side,
) -> Result<Vec<(usize, &'a OsString, u64)>, CopyError> {
    let mut subs: [Option<Dir>; 2] = [None, None];
    let mut out = Vec::with_capacity(listing.len());
    for (sub, name) in listing.iter() {
        let here = match side {
            Side::Source => name,
            Side::Target => listing.target_name(name),
        };
        let size = match filename::size_from_name(here.as_bytes()) {
            Some(s) => s,
            None => {
                if subs[sub].is_none() {
                    subs[sub] = open_sub(folder, SUBDIRS[sub])?;
                }
                let path = || folder.child_path(SUBDIRS[sub]).join(here);
                let d = subs[sub]
                    .as_ref()
                    .ok_or_else(|| at(path())(io::Error::from(io::ErrorKind::NotFound)))?;
                match d.stat_at(here) {
                    Ok(st) => st.st_size as u64,
                    // Gone since the listing (a flag change): the next
                    // pass sees it under its new name.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(at(path())(e)),
                }
            }
        };
        out.push((sub, name, size));
    }
    Ok(out)
}

/// Total size of a listing's messages in `folder` (saturating: sizes come
/// from names, which a mail user can make up).
pub fn listing_bytes(folder: &Dir, listing: &Listing, side: Side) -> Result<u64, CopyError> {
    Ok(message_sizes(folder, listing, side)?
        .into_iter()
        .fold(0u64, |t, (_, _, size)| t.saturating_add(size)))
}

/// What one pass over a folder did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncStats {
    pub copied: u64,
    pub copied_bytes: u64,
    /// Present in the target under another name (flags changed).
    pub renamed: u64,
    /// In the target but no longer in the source (expunged since copied).
    pub removed: u64,
    /// Listed in the source but gone before they could be read.
    pub vanished: u64,
}

/// The target folder's cur/, new/ and tmp/, created if missing.
pub struct TargetFolder {
    pub dir: Dir,
    dest: Dest,
    /// Whether `O_TMPFILE` works here (cleared at the first refusal).
    anonymous: AtomicBool,
}

/// Where a target folder's staged files get their names: shared with the
/// batches being named in the background.
#[derive(Clone)]
struct Dest {
    subs: Arc<[Dir; 2]>,
    tmp: Arc<Dir>,
}

impl TargetFolder {
    pub fn open(dir: Dir, owner: Option<Owner>) -> Result<TargetFolder, CopyError> {
        let mk = |name: &str| {
            dir.ensure_dir(name, 0o700, owner)
                .map(|(d, _)| d)
                .map_err(at(dir.child_path(name)))
        };
        let subs = [mk("cur")?, mk("new")?];
        let tmp = mk("tmp")?;
        // Leftovers of an interrupted run: never under a final name.
        for e in tmp.entries().map_err(at(tmp.path().to_path_buf()))? {
            if e.name.as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                tmp.unlink_if_exists(&e.name)
                    .map_err(at(tmp.child_path(&e.name)))?;
            }
        }
        Ok(TargetFolder {
            dir,
            dest: Dest {
                subs: Arc::new(subs),
                tmp: Arc::new(tmp),
            },
            anonymous: AtomicBool::new(true),
        })
    }

    pub fn list(&self) -> Result<Listing, CopyError> {
        list_messages(&self.dir)
    }
}

/// Who does the copying, who hears about it, when to stop, and how fast
/// they may go.
#[derive(Clone, Copy)]
pub struct Workers<'a> {
    pub pool: &'a rayon::ThreadPool,
    pub progress: &'a dyn Progress,
    pub stop: &'a AtomicBool,
    /// `None`: no limit.
    pub throttle: Option<&'a Throttle>,
}

impl Workers<'_> {
    /// Runs `f` over `items` on every pool thread, each taking the next
    /// item as it finishes one. Copy work blocks in I/O, so this keeps a
    /// fixed queue depth without rayon's per-item splitting and idle spinning.
    fn each<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let next = AtomicUsize::new(0);
        let done = Mutex::new(Vec::with_capacity(items.len()));
        let threads = self.pool.current_num_threads().min(items.len());
        self.pool.scope(|s| {
            for _ in 0..threads {
                s.spawn(|_| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    done.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
                });
            }
        });
        let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    }
}

/// Files copied per batch: one `syncfs` covers a batch before any of its
/// files is named, and its unnamed files stay open until then. Two batches
/// are open at a time, so the size follows the open-file limit (raised to
/// its hard limit first); 4,096 measured as good as larger batches.
static BATCH_FILES: LazyLock<usize> = LazyLock::new(|| {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() => hard,
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    };
    usize::try_from(soft.saturating_sub(256) / 3)
        .unwrap_or(usize::MAX)
        .clamp(16, 4096)
});

/// Makes the target folder hold exactly the source listing: copies what
/// is missing, renames what changed flags, removes what the source lost.
/// The last batch of copies may still be syncing and getting its names in
/// `naming` on return: `naming.finish()` waits for it (a later
/// `sync_folder` of this folder does so first).
pub fn sync_folder(
    src: &Dir,
    source: &Listing,
    dst: &TargetFolder,
    source_uid: u32,
    opts: &CopyOptions,
    workers: &Workers<'_>,
    naming: &Naming,
) -> Result<SyncStats, CopyError> {
    naming.finish_for(dst.dir.path())?;
    let mut stats = SyncStats::default();
    let to_copy = dst.reconcile(source, &mut stats)?;
    let src_subs = [open_sub(src, "cur")?, open_sub(src, "new")?];
    let stage = |&(sub, name): &Item<'_>| {
        // Checked per file: a stop waits only for files in flight.
        if workers.stop.load(Ordering::Relaxed) {
            return Err(CopyError::Interrupted);
        }
        let Some(src_sub) = &src_subs[sub] else {
            return Ok(None);
        };
        let s = dst.stage(src_sub, name, source_uid, sub, opts)?;
        if let Some(s) = &s {
            // Paid after the copy, when its size is exact; with debt
            // allowed the rate is the same as paying before.
            if let Some(t) = workers.throttle {
                t.pace(s.bytes, workers.stop)?;
            }
            workers.progress.message_copied(s.bytes);
        }
        Ok(s)
    };
    // Named in the background; what was copied is counted now.
    let to_name = |staged: Vec<Option<Staged>>, batch: &[Item<'_>]| {
        let mut named = Vec::with_capacity(staged.len());
        for (s, &(sub, name)) in staged.into_iter().zip(batch) {
            match s {
                Some(s) => {
                    stats.copied += 1;
                    stats.copied_bytes += s.bytes;
                    named.push((sub, source.target_name(name).clone(), s));
                }
                None => stats.vanished += 1,
            }
        }
        named
    };
    dst.copy_batches(&to_copy, opts, workers, naming, stage, to_name)?;
    // Renames and removals alone: the directories are synced here (a
    // batch syncs them after naming its files).
    if opts.fsync && stats.copied == 0 && stats != SyncStats::default() {
        dst.dest.sync_dirs()?;
    }
    Ok(stats)
}

/// A message of a listing: its subdirectory (index into `SUBDIRS`) and name.
type Item<'l> = (usize, &'l OsString);

impl TargetFolder {
    /// Brings what the target already holds in line with the source
    /// listing (renames for changed flags, removals for messages the
    /// source lost or holds once) and returns what is left to copy.
    fn reconcile<'l>(
        &self,
        source: &'l Listing,
        stats: &mut SyncStats,
    ) -> Result<Vec<Item<'l>>, CopyError> {
        let existing = self.list()?;
        let mut by_base: HashMap<&[u8], Item<'_>> = HashMap::with_capacity(existing.len());
        for (sub, name) in existing.iter() {
            let base = filename::base(name.as_bytes());
            if by_base.insert(base, (sub, name)).is_some() {
                // Two target files for one message: keep the first, drop this.
                self.remove(sub, name, stats)?;
            }
        }
        let mut to_copy = Vec::new();
        for (sub, name) in source.iter() {
            let want = source.target_name(name);
            match by_base.remove(filename::base(want.as_bytes())) {
                Some((tsub, tname)) if tsub == sub && tname == want => {}
                Some((tsub, tname)) => {
                    let subs = &self.dest.subs;
                    subs[tsub]
                        .rename_noreplace(tname, &subs[sub], want)
                        .map_err(at(subs[tsub].child_path(tname)))?;
                    stats.renamed += 1;
                }
                None => to_copy.push((sub, name)),
            }
        }
        for (sub, name) in by_base.into_values() {
            self.remove(sub, name, stats)?;
        }
        Ok(to_copy)
    }

    fn remove(&self, sub: usize, name: &OsStr, stats: &mut SyncStats) -> Result<(), CopyError> {
        let d = &self.dest.subs[sub];
        d.unlink_if_exists(name).map_err(at(d.child_path(name)))?;
        stats.removed += 1;
        Ok(())
    }

    /// Stages `to_copy` batch by batch and hands each batch (its files
    /// with their names, from `to_name`) to `naming`, which syncs (one
    /// `syncfs` when syncing by batch) and names it in the background while
    /// the next batch is copied: the disk flush never leaves the copy
    /// threads idle. Only a failed batch is dropped unnamed; the one before
    /// it is durable and gets its names.
    fn copy_batches<'l>(
        &self,
        to_copy: &'l [Item<'l>],
        opts: &CopyOptions,
        workers: &Workers<'_>,
        naming: &Naming,
        stage: impl Fn(&Item<'l>) -> Result<Option<Staged>, CopyError> + Sync,
        mut to_name: impl FnMut(Vec<Option<Staged>>, &'l [Item<'l>]) -> Vec<ToName>,
    ) -> Result<(), CopyError> {
        let batch_sync = opts.fsync && opts.sync == SyncMethod::Batch;
        for batch in to_copy.chunks(*BATCH_FILES) {
            let staged = workers.each(batch, &stage);
            let staged: Vec<Option<Staged>> = staged.into_iter().collect::<Result<_, _>>()?;
            let files = to_name(staged, batch);
            if files.is_empty() {
                continue;
            }
            let dest = self.dest.clone();
            let fsync = opts.fsync;
            naming.hand_over(self.dir.path(), move || {
                dest.name_batch(files, batch_sync, fsync)
            })?;
        }
        Ok(())
    }
}

/// A staged file with its subdirectory and final name.
type ToName = (usize, OsString, Staged);

impl Dest {
    /// Makes a batch durable (unless each file already is), names its
    /// files, then syncs the directories that hold the names.
    fn name_batch(
        &self,
        files: Vec<ToName>,
        sync_first: bool,
        fsync: bool,
    ) -> Result<(), CopyError> {
        if sync_first {
            let d = &self.subs[0];
            d.sync_filesystem().map_err(at(d.path().to_path_buf()))?;
        }
        for (sub, to, s) in files {
            self.publish(s, sub, &to)?;
        }
        if fsync {
            self.sync_dirs()?;
        }
        Ok(())
    }

    fn sync_dirs(&self) -> Result<(), CopyError> {
        for d in self.subs.iter() {
            d.sync().map_err(at(d.path().to_path_buf()))?;
        }
        Ok(())
    }
}

/// The batch being synced and named in the background (at most one), and
/// the target folder it belongs to. Dropping it waits for the batch.
#[derive(Default)]
pub struct Naming {
    pending: Mutex<Option<Pending>>,
}

/// A target folder and the thread naming a batch of its files.
type Pending = (PathBuf, JoinHandle<Result<(), CopyError>>);

impl Naming {
    /// Waits for the batch in the background, if any: its files are
    /// durable and named when this returns `Ok`.
    pub fn finish(&self) -> Result<(), CopyError> {
        let pending = self.lock().take();
        match pending {
            None => Ok(()),
            Some((_, h)) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        }
    }

    /// Waits only if the batch in the background is `folder`'s: a new
    /// listing of it must see those names.
    fn finish_for(&self, folder: &Path) -> Result<(), CopyError> {
        let mine = matches!(&*self.lock(), Some((f, _)) if f == folder);
        if mine { self.finish() } else { Ok(()) }
    }

    /// Waits for the previous batch (two batches' files open at most),
    /// then starts `job` on a thread of its own.
    fn hand_over(
        &self,
        folder: &Path,
        job: impl FnOnce() -> Result<(), CopyError> + Send + 'static,
    ) -> Result<(), CopyError> {
        self.finish()?;
        let h = std::thread::Builder::new()
            .name("naming".into())
            .spawn(job)
            .map_err(at(folder.to_path_buf()))?;
        *self.lock() = Some((folder.to_path_buf(), h));
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Naming {
    /// No batch outlives its pass (its outcome was reported, or an error
    /// that ended the pass is).
    fn drop(&mut self) {
        if let Some((_, h)) = self.lock().take() {
            let _ = h.join();
        }
    }
}

fn open_sub(folder: &Dir, name: &str) -> Result<Option<Dir>, CopyError> {
    match folder.open_dir(name) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(folder.child_path(name))(e)),
    }
}

/// A copied message that has no final name yet.
struct Staged {
    file: StagedFile,
    bytes: u64,
}

enum StagedFile {
    /// An `O_TMPFILE` inode in the destination subdirectory.
    Anonymous(File),
    /// A file in the folder's `tmp/` (filesystems without `O_TMPFILE`).
    Named(TmpName),
}

/// A name in a target `tmp/`, removed again unless it was renamed away.
struct TmpName {
    dir: Arc<Dir>,
    name: String,
    keep: bool,
}

impl Drop for TmpName {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.dir.unlink_if_exists(&self.name);
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TargetFolder {
    /// Copies one message into an unnamed (or temporary) file with its
    /// mode, owner and times; synced now only in per-file mode. `Ok(None)`
    /// when the source file is gone (renamed or expunged since listed).
    fn stage(
        &self,
        src_dir: &Dir,
        name: &OsStr,
        source_uid: u32,
        sub: usize,
        opts: &CopyOptions,
    ) -> Result<Option<Staged>, CopyError> {
        let (src, st) = match src_dir.open_file_owned(name, source_uid) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(at(src_dir.child_path(name))(e)),
        };
        let dst_path = || self.dest.subs[sub].child_path(name);
        let size = st.st_size as u64;
        if size > opts.max_message_size {
            return Err(CopyError::TooLarge {
                path: src_dir.child_path(name),
                size,
                max: opts.max_message_size,
            });
        }
        let (dst, file) = self.create_staging(sub)?;
        let n = copy_data(&src, &dst, size).map_err(at(dst_path()))?;
        if n != size {
            return Err(CopyError::SizeChanged {
                path: src_dir.child_path(name),
                expected: size,
                got: n,
            });
        }
        apply_attrs(&dst, &FileAttrs::private(opts.owner, false)).map_err(at(dst_path()))?;
        let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
        let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        futimens(dst.as_fd(), &atime, &mtime).map_err(|e| at(dst_path())(e.into()))?;
        match (opts.fsync, opts.sync) {
            (true, SyncMethod::PerFile) => dst.sync_all().map_err(at(dst_path()))?,
            (true, SyncMethod::Batch) if n >= EARLY_WRITEBACK => start_writeback(&dst),
            _ => {}
        }
        Ok(Some(Staged {
            file: file.unwrap_or(StagedFile::Anonymous(dst)),
            bytes: n,
        }))
    }

    /// The file to copy into: unnamed where the filesystem allows, else a
    /// new name in `tmp/` (`Some` then, and the returned `File` is its).
    fn create_staging(&self, sub: usize) -> Result<(File, Option<StagedFile>), CopyError> {
        if self.anonymous.load(Ordering::Relaxed) {
            let d = &self.dest.subs[sub];
            match d.create_anonymous(0o600) {
                Ok(Some(f)) => return Ok((f, None)),
                Ok(None) => self.anonymous.store(false, Ordering::Relaxed),
                Err(e) => return Err(at(d.path().to_path_buf())(e)),
            }
        }
        let name = format!(
            "{TMP_PREFIX}{}.{}",
            *PID,
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let tmp_dir = &self.dest.tmp;
        let f = tmp_dir
            .create_file(&name, 0o600)
            .map_err(at(tmp_dir.child_path(&name)))?;
        let tmp = TmpName {
            dir: Arc::clone(tmp_dir),
            name,
            keep: false,
        };
        Ok((f, Some(StagedFile::Named(tmp))))
    }
}

impl Dest {
    /// Gives a staged message its final name in `cur/` or `new/`, never
    /// replacing a file: one already there has the same base, so it is
    /// the same message.
    fn publish(&self, s: Staged, sub: usize, to: &OsStr) -> Result<(), CopyError> {
        let d = &self.subs[sub];
        let r = match s.file {
            StagedFile::Anonymous(f) => d.link_anonymous(&f, to),
            StagedFile::Named(mut tmp) => {
                let r = self.tmp.rename_noreplace(OsStr::new(&tmp.name), d, to);
                tmp.keep = r.is_ok();
                r
            }
        };
        match r {
            Ok(()) => {
                tracing::debug!(file = %crate::shown::path(&d.child_path(to)), bytes = s.bytes, "copied");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(at(d.child_path(to))(e)),
        }
    }
}

impl TargetFolder {
    /// Moves one message here under its own name (same subdirectory): a
    /// durable copy first, then the source file is removed. `Ok(None)` when
    /// it is gone or the target already has that name.
    pub fn take(
        &self,
        src_sub: &Dir,
        sub: usize,
        name: &OsStr,
        source_uid: u32,
        opts: &CopyOptions,
    ) -> Result<Option<u64>, CopyError> {
        let durable = opts.durable();
        let Some(s) = self.stage(src_sub, name, source_uid, sub, &durable)? else {
            return Ok(None);
        };
        let n = s.bytes;
        self.dest.publish(s, sub, name)?;
        let d = &self.dest.subs[sub];
        d.sync().map_err(at(d.path().to_path_buf()))?;
        src_sub
            .unlink_if_exists(name)
            .map_err(at(src_sub.child_path(name)))?;
        Ok(Some(n))
    }
}

static PID: LazyLock<u32> = LazyLock::new(std::process::id);

/// Files of this size or more start being written back as soon as they
/// are copied: left to the batch's `syncfs`, a few large messages kept
/// the disk idle while the batch was read, then every thread waiting
/// while they were written.
const EARLY_WRITEBACK: u64 = 256 << 10;

/// Starts writing `f`'s dirty pages to disk without waiting for them: on
/// Linux, `POSIX_FADV_DONTNEED` first starts writeback of the range (then
/// drops the pages that are clean, which a copy does not read again). A
/// hint only: the batch's `syncfs` still makes the file durable, so a
/// failure here changes nothing.
fn start_writeback(f: &File) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let _ = posix_fadvise(f.as_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

/// Copies `size` bytes in the kernel (`copy_file_range`: no user-space
/// buffer, and a reflink where the filesystem can share extents). Asks for
/// one byte more, so a file that grew shows up as a size mismatch.
fn copy_data(src: &File, dst: &File, size: u64) -> io::Result<u64> {
    let want = size.saturating_add(1);
    let mut total = 0u64;
    while total < want {
        let len = usize::try_from(want - total).unwrap_or(usize::MAX);
        match copy_file_range(src, None, dst, None, len) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                // Files are read in one call unless large; a short count
                // at exactly the stat size is the end of the file.
                if total == size {
                    break;
                }
            }
            Err(Errno::EINTR) => {}
            // Not possible between these files: copy through user space.
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) if total == 0 => {
                let mut from = src.take(want);
                let mut to = dst;
                return io::copy(&mut from, &mut to);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// Differences between what the source listed and what the target holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub flags_differ: Vec<String>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.flags_differ.is_empty()
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = |v: &[String]| v.first().cloned().unwrap_or_default();
        write!(
            f,
            "{} missing (e.g. {:?}), {} extra (e.g. {:?}), {} with other flags or place (e.g. {:?})",
            self.missing.len(),
            first(&self.missing),
            self.extra.len(),
            first(&self.extra),
            self.flags_differ.len(),
            first(&self.flags_differ)
        )
    }
}

/// Checks that `target` holds exactly the source's messages (by base name)
/// in the same subdirectory with the same flags.
pub fn compare(source: &Listing, target: &Listing) -> Mismatch {
    let key = |sub: usize, n: &OsString| {
        let b = n.as_bytes();
        (
            filename::base(b).to_vec(),
            (sub, filename::flags(b).map(<[u8]>::to_vec)),
        )
    };
    let mut want: HashMap<Vec<u8>, (usize, Option<Vec<u8>>)> = source
        .iter()
        .map(|(s, n)| key(s, source.target_name(n)))
        .collect();
    let mut m = Mismatch::default();
    for (sub, name) in target.iter() {
        let (base, place) = key(sub, name);
        let shown = String::from_utf8_lossy(name.as_bytes()).into_owned();
        match want.remove(&base) {
            None => m.extra.push(shown),
            Some(p) if p != place => m.flags_differ.push(shown),
            Some(_) => {}
        }
    }
    m.missing = want
        .into_keys()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    m.missing.sort();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use std::os::unix::fs::MetadataExt;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    static NO_STOP: AtomicBool = AtomicBool::new(false);

    fn opts(fsync: bool, sync: SyncMethod) -> CopyOptions {
        CopyOptions {
            owner: None,
            fsync,
            sync,
            max_message_size: 1 << 30,
        }
    }

    /// `sync_folder` with its last batch named before it returns.
    fn sync_now(
        src: &Dir,
        source: &Listing,
        dst: &TargetFolder,
        uid: u32,
        opts: &CopyOptions,
        workers: &Workers<'_>,
    ) -> Result<SyncStats, CopyError> {
        let naming = Naming::default();
        let st = sync_folder(src, source, dst, uid, opts, workers, &naming)?;
        naming.finish()?;
        Ok(st)
    }

    fn workers(pool: &rayon::ThreadPool) -> Workers<'_> {
        Workers {
            pool,
            progress: &Silent,
            stop: &NO_STOP,
            throttle: None,
        }
    }

    #[test]
    fn renamed_targets_are_copied_renamed_and_verified() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        put(&s, "cur/1.a,S=3:2,S", b"one", 1_500_000_000);
        put(&s, "cur/2.b:2,", b"two", 1_500_000_001);
        // An earlier pass copied 2.b before its keyword was known.
        put(&d, "cur/2.b:2,", b"two", 1_500_000_001);
        let src = Dir::open_root(&s).unwrap();
        let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
        let mut listing = list_messages(&src).unwrap();
        listing
            .renames
            .insert("1.a,S=3:2,S".into(), "1.a,S=3:2,Sa".into());
        listing.renames.insert("2.b:2,".into(), "2.b:2,b".into());
        let opts = opts(false, SyncMethod::Batch);
        let st = sync_now(&src, &listing, &dst, me(), &opts, &workers(&pool())).unwrap();
        assert_eq!((st.copied, st.renamed), (1, 1));
        let got = dst.list().unwrap();
        assert_eq!(got.cur, ["1.a,S=3:2,Sa", "2.b:2,b"]);
        assert!(compare(&listing, &got).is_empty());
        assert!(!compare(&list_messages(&src).unwrap(), &got).is_empty());
        assert_eq!(listing_bytes(&dst.dir, &listing, Side::Target).unwrap(), 6);
    }

    #[test]
    fn a_stop_request_copies_nothing_more() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        put(&s, "cur/1.a:2,S", b"one", 1_500_000_000);
        let src = Dir::open_root(&s).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
        let listing = list_messages(&src).unwrap();
        let stop = AtomicBool::new(true);
        let pool = pool();
        let w = Workers {
            stop: &stop,
            ..workers(&pool)
        };
        let opts = opts(false, SyncMethod::Batch);
        let e = sync_now(&src, &listing, &dst, me(), &opts, &w).unwrap_err();
        assert!(matches!(e, CopyError::Interrupted), "{e}");
        assert!(dst.list().unwrap().is_empty());
    }

    /// A worker waiting for tokens lets go at a stop request: at 1 file/s
    /// these five files would take four seconds more.
    #[test]
    fn a_stop_request_ends_a_wait_for_tokens() {
        use crate::throttle::{Limiter, Limits};
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        for i in 0..5 {
            put(&s, &format!("cur/{i}.a:2,S"), b"x", 1);
        }
        std::fs::create_dir_all(&d).unwrap();
        let src = Dir::open_root(&s).unwrap();
        let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
        let listing = list_messages(&src).unwrap();
        let one_per_sec = Limits {
            files_per_sec: std::num::NonZeroU64::new(1),
            ..Limits::default()
        };
        let (_, throttle) = Limiter::new(one_per_sec).current();
        let stop = AtomicBool::new(false);
        let pool = pool();
        let w = Workers {
            stop: &stop,
            throttle: throttle.as_deref(),
            ..workers(&pool)
        };
        let opts = opts(false, SyncMethod::Batch);
        let e = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                stop.store(true, Ordering::Relaxed);
            });
            sync_folder(&src, &listing, &dst, me(), &opts, &w, &Naming::default()).unwrap_err()
        });
        assert!(matches!(e, CopyError::Interrupted), "{e}");
        assert!(dst.list().unwrap().is_empty());
    }

    fn put(dir: &std::path::Path, rel: &str, body: &[u8], mtime: i64) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        let t = TimeSpec::new(mtime, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn sync_copies_renames_removes_and_keeps_mtime() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        put(&s, "cur/1.a:2,S", b"one", 1_500_000_000);
        put(&s, "cur/2.b:2,FS", b"two", 1_500_000_001);
        put(&s, "new/3.c", b"three", 1_500_000_002);
        std::fs::create_dir_all(s.join("tmp")).unwrap();
        std::fs::write(s.join("tmp/junk"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.join("cur/4.evil:2,")).unwrap();
        put(&d, "cur/2.b:2,S", b"two", 1_500_000_001);
        put(&d, "cur/9.gone:2,", b"old", 1);
        put(&d, "tmp/maildir-migrate.1.1", b"partial", 1);

        let src = Dir::open_root(&s).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
        let listing = list_messages(&src).unwrap();
        assert_eq!(listing.len(), 3);
        assert_eq!(listing.not_files.len(), 1);
        let opts = opts(true, SyncMethod::Batch);
        let st = sync_now(&src, &listing, &dst, me(), &opts, &workers(&pool())).unwrap();
        assert_eq!(
            (st.copied, st.renamed, st.removed, st.vanished),
            (2, 1, 1, 0)
        );
        assert_eq!(std::fs::read(d.join("new/3.c")).unwrap(), b"three");
        let m = std::fs::metadata(d.join("cur/1.a:2,S")).unwrap();
        assert_eq!((m.mtime(), m.mode() & 0o777), (1_500_000_000, 0o600));
        assert!(!d.join("cur/4.evil:2,").exists());
        assert!(!d.join("tmp/maildir-migrate.1.1").exists());
        assert!(compare(&listing, &dst.list().unwrap()).is_empty());

        // A second pass changes nothing.
        let st = sync_now(&src, &listing, &dst, me(), &opts, &workers(&pool())).unwrap();
        assert_eq!(st, SyncStats::default());
    }

    /// Several batches (synced while the next is copied), each sync method,
    /// and the `tmp/` path used where `O_TMPFILE` is refused.
    #[test]
    fn batches_methods_and_the_named_fallback_copy_everything() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("s");
        let n = *BATCH_FILES * 2 + 7;
        for i in 0..n {
            put(
                &s,
                &format!("cur/{i}.m:2,S"),
                format!("m{i}").as_bytes(),
                1_500_000_000 + i as i64,
            );
        }
        let src = Dir::open_root(&s).unwrap();
        let listing = list_messages(&src).unwrap();
        for (k, (sync, anonymous)) in [
            (SyncMethod::Batch, true),
            (SyncMethod::PerFile, true),
            (SyncMethod::Batch, false),
        ]
        .into_iter()
        .enumerate()
        {
            let d = t.path().join(format!("d{k}"));
            std::fs::create_dir_all(&d).unwrap();
            let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
            dst.anonymous.store(anonymous, Ordering::Relaxed);
            let opts = opts(true, sync);
            let st = sync_now(&src, &listing, &dst, me(), &opts, &workers(&pool())).unwrap();
            assert_eq!(st.copied, n as u64, "{sync:?} {anonymous}");
            assert!(compare(&listing, &dst.list().unwrap()).is_empty());
            let m = std::fs::metadata(d.join(format!("cur/{}.m:2,S", n - 1))).unwrap();
            assert_eq!(m.mtime(), 1_500_000_000 + n as i64 - 1);
            assert_eq!(std::fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        }
    }

    /// A folder's last batch is named in the background: a second pass
    /// over that folder waits for it (and copies nothing again), another
    /// folder goes on meanwhile, and `finish` leaves both complete. A
    /// large message (written back early) arrives intact.
    #[test]
    fn the_last_batch_is_named_in_the_background_and_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..EARLY_WRITEBACK + 3).map(|i| (i % 251) as u8).collect();
        let s = t.path().join("s");
        put(&s, "cur/1.a:2,S", b"one", 1);
        put(&s, "cur/2.big:2,S", &big, 2);
        let src = Dir::open_root(&s).unwrap();
        let listing = list_messages(&src).unwrap();
        let pool = pool();
        let opts = opts(true, SyncMethod::Batch);
        let naming = Naming::default();
        let folder = |name: &str| {
            let d = t.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap()
        };
        let (a, b) = (folder("a"), folder("b"));
        let sync = |dst: &TargetFolder| {
            sync_folder(&src, &listing, dst, me(), &opts, &workers(&pool), &naming).unwrap()
        };
        assert_eq!(sync(&a).copied, 2);
        assert_eq!(sync(&a), SyncStats::default(), "waited for its own batch");
        assert_eq!(sync(&b).copied, 2);
        naming.finish().unwrap();
        for d in [&a, &b] {
            assert!(compare(&listing, &d.list().unwrap()).is_empty());
            assert_eq!(
                std::fs::read(d.dir.path().join("cur/2.big:2,S")).unwrap(),
                big
            );
        }
    }

    #[test]
    fn a_failed_batch_names_none_of_its_files() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        put(&s, "cur/1.a:2,S", b"one", 1);
        put(&s, "cur/2.b:2,S", b"two", 1);
        std::fs::create_dir_all(&d).unwrap();
        let src = Dir::open_root(&s).unwrap();
        let mut listing = list_messages(&src).unwrap();
        // A name the source lists but cannot open as a file: it fails.
        std::fs::create_dir(s.join("cur/3.c:2,S")).unwrap();
        listing.cur.push("3.c:2,S".into());
        for anonymous in [true, false] {
            let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
            dst.anonymous.store(anonymous, Ordering::Relaxed);
            let opts = opts(true, SyncMethod::Batch);
            assert!(sync_now(&src, &listing, &dst, me(), &opts, &workers(&pool())).is_err());
            assert!(dst.list().unwrap().is_empty());
            assert_eq!(std::fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        }
    }

    /// Two files with one base name are two messages: both arrive, the
    /// second under a base of its own, and a second pass changes nothing
    /// (it used to fail the mailbox with ENOENT).
    #[test]
    fn two_files_with_one_base_are_both_kept() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        put(&s, "cur/1.a,S=3:2,S", b"one", 1_500_000_000);
        put(&s, "cur/1.a,S=3:2,F", b"two", 1_500_000_001);
        std::fs::create_dir_all(&d).unwrap();
        let src = Dir::open_root(&s).unwrap();
        let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
        for pass in 0..2 {
            let listing = list_messages(&src).unwrap();
            assert_eq!(listing.renames.len(), 1, "{listing:?}");
            let st = sync_now(
                &src,
                &listing,
                &dst,
                me(),
                &opts(false, SyncMethod::Batch),
                &workers(&pool()),
            )
            .unwrap();
            assert_eq!(st.copied, if pass == 0 { 2 } else { 0 }, "pass {pass}");
            assert!(compare(&listing, &dst.list().unwrap()).is_empty());
        }
        let got = dst.list().unwrap().cur;
        assert_eq!(got.len(), 2, "{got:?}");
        let bodies: std::collections::BTreeSet<Vec<u8>> = got
            .iter()
            .map(|n| std::fs::read(d.join("cur").join(n)).unwrap())
            .collect();
        assert_eq!(bodies.len(), 2, "both bodies arrived");
        assert!(got.iter().any(|n| n.as_bytes().starts_with(b"1.a,S=3:2,")));
        assert!(got.iter().any(|n| n.as_bytes().starts_with(b"1.a-dup")));
    }

    #[test]
    fn vanished_source_files_are_counted_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        put(&s, "cur/1.a:2,S", b"one", 1);
        std::fs::create_dir_all(&d).unwrap();
        let src = Dir::open_root(&s).unwrap();
        let listing = list_messages(&src).unwrap();
        std::fs::rename(s.join("cur/1.a:2,S"), s.join("cur/1.a:2,RS")).unwrap();
        let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
        let opts = opts(false, SyncMethod::Batch);
        let st = sync_now(&src, &listing, &dst, me(), &opts, &workers(&pool())).unwrap();
        assert_eq!((st.copied, st.vanished), (0, 1));
    }

    #[test]
    fn files_of_another_owner_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        put(&s, "cur/1.a:2,S", b"secret", 1);
        std::os::unix::fs::chown(s.join("cur/1.a:2,S"), Some(4242), None).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        let src = Dir::open_root(&s).unwrap();
        let listing = list_messages(&src).unwrap();
        let dst = TargetFolder::open(Dir::open_root(&d).unwrap(), None).unwrap();
        let opts = opts(false, SyncMethod::Batch);
        let e = sync_now(&src, &listing, &dst, 0, &opts, &workers(&pool())).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 4242"), "{e}");
        assert!(dst.list().unwrap().is_empty());
    }

    #[test]
    fn compare_reports_each_kind() {
        let l = |cur: &[&str], new: &[&str]| Listing {
            cur: cur.iter().map(OsString::from).collect(),
            new: new.iter().map(OsString::from).collect(),
            ..Listing::default()
        };
        let m = compare(
            &l(&["a:2,S", "b:2,F"], &["c"]),
            &l(&["a:2,S", "b:2,", "x:2,"], &[]),
        );
        assert_eq!(m.missing, ["c"]);
        assert_eq!(m.extra, ["x:2,"]);
        assert_eq!(m.flags_differ, ["b:2,"]);
        assert!(compare(&l(&["a:2,S"], &[]), &l(&["a:2,S"], &[])).is_empty());
        assert!(!compare(&l(&[], &["a"]), &l(&["a:2,"], &[])).is_empty());
    }
}
