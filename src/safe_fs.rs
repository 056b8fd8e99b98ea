//! Directory-fd-relative file operations that never follow symlinks.
//!
//! The daemon runs with privilege inside trees that mail users control, so
//! every path below a configured root is resolved one component at a time
//! with `O_NOFOLLOW`, files are created with `O_EXCL`, and ownership is set
//! on descriptors, never on path strings.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, linkat, syncfs, unlinkat};

/// Numeric owner applied to everything written into a target tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Owner {
        use std::os::unix::fs::MetadataExt;
        Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// What kind of directory entry a name is, read without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Other,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: OsString,
    pub kind: Kind,
    /// The inode number, as the directory lists it.
    pub ino: u64,
}

/// An open directory plus the path it was reached by (for messages only;
/// the path is never used to access the directory again).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io(e: Errno) -> io::Error {
    io::Error::from(e)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Rejects names that could leave the directory or are not plain names.
fn plain_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing unsafe file name {:?}", name),
        ));
    }
    Ok(name)
}

impl Dir {
    /// Opens a trusted root from the configuration. Symlinks in the root's
    /// own path are allowed (the administrator chose it); nothing below it
    /// may be a symlink.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn child_path(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// A second, independent handle (its own read position for listing).
    pub fn reopen(&self) -> io::Result<Dir> {
        let fd = openat(self.fd.as_fd(), ".", DIR_FLAGS, Mode::empty()).map_err(io)?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// Opens a subdirectory; fails with ELOOP/ENOTDIR if it is a symlink.
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let name = plain_name(name.as_ref())?;
        let fd = openat(self.fd.as_fd(), name, DIR_FLAGS, Mode::empty()).map_err(io)?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Walks a relative path one component at a time without following
    /// any symlink. `..` and `.` components are refused.
    pub fn open_beneath(&self, rel: &Path) -> io::Result<Dir> {
        let mut cur = self.reopen()?;
        for c in rel.components() {
            match c {
                Component::Normal(name) => cur = cur.open_dir(name)?,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "path {} is not a plain relative path",
                            crate::shown::path(rel)
                        ),
                    ));
                }
            }
        }
        Ok(cur)
    }

    /// Opens `name` as a directory, creating it (mode, owner) if missing.
    /// Returns the directory and whether it was created.
    pub fn ensure_dir(
        &self,
        name: impl AsRef<OsStr>,
        mode: u32,
        owner: Option<Owner>,
    ) -> io::Result<(Dir, bool)> {
        let name = plain_name(name.as_ref())?;
        let created = match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(io(e)),
        };
        let dir = self.open_dir(name)?;
        if created {
            // mkdir honours the umask; set the exact mode on the fd.
            fchmod(dir.fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(io)?;
            if let Some(o) = owner {
                dir.chown(o)?;
            }
        }
        Ok((dir, created))
    }

    /// Creates every missing component of `rel` below this directory.
    pub fn ensure_beneath(&self, rel: &Path, mode: u32, owner: Option<Owner>) -> io::Result<Dir> {
        let mut cur = self.reopen()?;
        for c in rel.components() {
            match c {
                Component::Normal(name) => cur = cur.ensure_dir(name, mode, owner)?.0,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "path {} is not a plain relative path",
                            crate::shown::path(rel)
                        ),
                    ));
                }
            }
        }
        Ok(cur)
    }

    pub fn chown(&self, owner: Owner) -> io::Result<()> {
        fchown(
            self.fd.as_fd(),
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )
        .map_err(io)
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        fchmod(self.fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(io)
    }

    pub fn stat(&self) -> io::Result<FileStat> {
        fstat(self.fd.as_fd()).map_err(io)
    }

    /// Opens a regular file that must belong to `uid`. Reading as root, we
    /// must not pass on what the mailbox owner could not read themselves
    /// (a hard link to a system file planted in a Maildir).
    pub fn open_file_owned(
        &self,
        name: impl AsRef<OsStr>,
        uid: u32,
    ) -> io::Result<(File, FileStat)> {
        let name = name.as_ref();
        let (f, st) = self.open_file(name)?;
        if st.st_uid != uid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to the mailbox owner (uid {uid}); refusing to copy it",
                    crate::shown::path(&self.child_path(name)),
                    st.st_uid
                ),
            ));
        }
        Ok((f, st))
    }

    /// lstat-like: information about `name` itself, links not followed.
    pub fn stat_at(&self, name: impl AsRef<OsStr>) -> io::Result<FileStat> {
        let name = plain_name(name.as_ref())?;
        fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io)
    }

    /// Lists the directory (without `.` and `..`), resolving unknown entry
    /// types with a no-follow stat.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.for_each_entry(|e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams the directory entries to `f` without collecting them first.
    pub fn for_each_entry(&self, mut f: impl FnMut(Entry) -> io::Result<()>) -> io::Result<()> {
        use nix::dir::Type;
        let fd = openat(self.fd.as_fd(), ".", DIR_FLAGS, Mode::empty()).map_err(io)?;
        let mut d = nix::dir::Dir::from_fd(fd).map_err(io)?;
        for ent in d.iter() {
            let ent = ent.map_err(io)?;
            let name = OsStr::from_bytes(ent.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let kind = match ent.file_type() {
                Some(Type::File) => Kind::File,
                Some(Type::Directory) => Kind::Dir,
                Some(_) => Kind::Other,
                None => match self.stat_at(name) {
                    Ok(st) => kind_of(&st),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                },
            };
            f(Entry {
                name: name.to_os_string(),
                kind,
                ino: ent.ino(),
            })?;
        }
        Ok(())
    }

    /// Opens a regular file for reading. Symlinks, FIFOs and devices are
    /// refused (O_NONBLOCK keeps a swapped-in FIFO from blocking the open).
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> io::Result<(File, FileStat)> {
        let name = plain_name(name.as_ref())?;
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let st = fstat(fd.as_fd()).map_err(io)?;
        if kind_of(&st) != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a regular file",
                    crate::shown::path(&self.child_path(name))
                ),
            ));
        }
        Ok((File::from(fd), st))
    }

    /// Gives the regular file `name` (never a link's target) an owner and
    /// a mode, through a descriptor of that very file.
    pub fn set_owner_and_mode(&self, name: &OsStr, owner: Owner, mode: u32) -> io::Result<()> {
        let (f, _) = self.open_file(name)?;
        apply_attrs(&f, &FileAttrs::new(mode, Some(owner), false))
    }

    /// Bytes an unprivileged writer may still use on this filesystem.
    pub fn available_bytes(&self) -> io::Result<u64> {
        let st = nix::sys::statvfs::fstatvfs(&self.fd).map_err(io)?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// Reads a whole small regular file owned by `uid`; `Ok(None)` when it
    /// does not exist.
    pub fn read_file(
        &self,
        name: impl AsRef<OsStr>,
        limit: u64,
        uid: u32,
    ) -> io::Result<Option<Vec<u8>>> {
        let name = name.as_ref();
        let (file, st) = match self.open_file_owned(name, uid) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if st.st_size as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is larger than {} bytes",
                    crate::shown::path(&self.child_path(name)),
                    limit
                ),
            ));
        }
        let mut buf = Vec::with_capacity(st.st_size as usize);
        file.take(limit).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Opens `name` for reading and writing, creating it (`mode`) when it
    /// is missing; never through a symlink (ELOOP), never truncating.
    /// Returns the file, its stat and whether this call created it; what
    /// an existing file may be is the caller's decision.
    pub fn open_or_create_rw(
        &self,
        name: impl AsRef<OsStr>,
        mode: u32,
    ) -> io::Result<(File, FileStat, bool)> {
        let name = plain_name(name.as_ref())?;
        let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let create = flags | OFlag::O_CREAT | OFlag::O_EXCL;
        let (fd, created) = match openat(
            self.fd.as_fd(),
            name,
            create,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => (fd, true),
            // O_NONBLOCK: a FIFO or device swapped in must not block us.
            Err(Errno::EEXIST) => (
                openat(
                    self.fd.as_fd(),
                    name,
                    flags | OFlag::O_NONBLOCK,
                    Mode::empty(),
                )
                .map_err(io)?,
                false,
            ),
            Err(e) => return Err(io(e)),
        };
        let st = fstat(fd.as_fd()).map_err(io)?;
        Ok((File::from(fd), st, created))
    }

    /// Creates a new file that must not exist yet.
    pub fn create_file(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let name = plain_name(name.as_ref())?;
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(io)?;
        Ok(File::from(fd))
    }

    /// Creates an unnamed file here (`O_TMPFILE`): it has no name until
    /// `link_anonymous` gives it one, and vanishes if we crash first.
    /// `Ok(None)` where the filesystem cannot do that (NFS, old kernels).
    pub fn create_anonymous(&self, mode: u32) -> io::Result<Option<File>> {
        match openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::EOPNOTSUPP) | Err(Errno::EISDIR) | Err(Errno::EINVAL) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Names a file made by `create_anonymous` (in this directory) `to`,
    /// never replacing anything: an existing `to` is `AlreadyExists`.
    pub fn link_anonymous(&self, f: &File, to: &OsStr) -> io::Result<()> {
        let to = plain_name(to)?;
        match linkat(f.as_fd(), "", self.fd.as_fd(), to, AtFlags::AT_EMPTY_PATH) {
            Ok(()) => Ok(()),
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc does not.
            Err(Errno::ENOENT) | Err(Errno::EPERM) => {
                use std::os::fd::AsRawFd;
                let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
                linkat(
                    nix::fcntl::AT_FDCWD,
                    proc_path.as_str(),
                    self.fd.as_fd(),
                    to,
                    AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(io)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes back everything dirty on this directory's filesystem.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        syncfs(self.fd.as_fd()).map_err(io)
    }

    /// Renames `from` (here) to `to` (in `dest`) unless `to` exists; an
    /// existing target is reported as `AlreadyExists`.
    pub fn rename_noreplace(&self, from: &OsStr, dest: &Dir, to: &OsStr) -> io::Result<()> {
        let from = plain_name(from)?;
        let to = plain_name(to)?;
        match renameat2(
            self.fd.as_fd(),
            from,
            dest.fd.as_fd(),
            to,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            // Filesystems without RENAME_NOREPLACE: link() is no-clobber too.
            Err(Errno::EINVAL) | Err(Errno::ENOSYS) => {
                linkat(self.fd.as_fd(), from, dest.fd.as_fd(), to, AtFlags::empty()).map_err(io)?;
                self.unlink(from)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Renames within or across directories, replacing any existing target.
    pub fn rename_replace(&self, from: &OsStr, dest: &Dir, to: &OsStr) -> io::Result<()> {
        let from = plain_name(from)?;
        let to = plain_name(to)?;
        renameat(self.fd.as_fd(), from, dest.fd.as_fd(), to).map_err(io)
    }

    pub fn unlink(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = plain_name(name.as_ref())?;
        unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(io)
    }

    /// Unlinks a file, treating "already gone" as success.
    pub fn unlink_if_exists(&self, name: impl AsRef<OsStr>) -> io::Result<bool> {
        match self.unlink(name) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a directory tree below this one without following links.
    /// `depth` bounds the recursion (Maildir folders are two levels deep).
    pub fn remove_tree(&self, name: impl AsRef<OsStr>, depth: usize) -> io::Result<()> {
        let name = plain_name(name.as_ref())?;
        let sub = self.open_dir(name)?;
        for e in sub.entries()? {
            match e.kind {
                Kind::Dir if depth > 0 => sub.remove_tree(&e.name, depth - 1)?,
                Kind::Dir => {
                    return Err(io::Error::other(format!(
                        "{} is nested deeper than expected; not removing it",
                        crate::shown::path(&sub.child_path(&e.name))
                    )));
                }
                _ => sub.unlink(&e.name)?,
            }
        }
        unlinkat(self.fd.as_fd(), name, UnlinkatFlags::RemoveDir).map_err(io)
    }

    pub fn sync(&self) -> io::Result<()> {
        fsync(self.fd.as_fd()).map_err(io)
    }

    /// Replaces `name` atomically: temp file in this directory, mode and
    /// owner set, data written and synced, renamed over, directory synced.
    pub fn write_atomic(&self, name: &OsStr, data: &[u8], attrs: &FileAttrs) -> io::Result<()> {
        let name = plain_name(name)?;
        let tmp = atomic_tmp_name(name);
        let result = self.write_new(&tmp, data, attrs).and_then(|()| {
            self.rename_replace(&tmp, self, name)?;
            if attrs.fsync {
                self.sync()?;
            }
            Ok(())
        });
        if result.is_err() {
            let _ = self.unlink_if_exists(&tmp);
        }
        result
    }

    /// Writes `data` as a new file `name` (a leftover of that name is
    /// replaced) with `attrs`; on failure nothing is left under `name`.
    pub fn write_new(&self, name: &OsStr, data: &[u8], attrs: &FileAttrs) -> io::Result<()> {
        self.unlink_if_exists(name)?;
        let result = (|| {
            let mut f = self.create_file(name, attrs.mode)?;
            apply_attrs(&f, attrs)?;
            f.write_all(data)?;
            finish_file(&f, attrs)
        })();
        if result.is_err() {
            let _ = self.unlink_if_exists(name);
        }
        result
    }
}

/// Opens (creating 0600, never through a symlink) and exclusively locks a
/// lock file; the lock lasts as long as the returned file.
pub fn lock_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    f.lock()?;
    Ok(f)
}

/// The temporary name `write_atomic` writes `name` under before renaming.
pub fn atomic_tmp_name(name: &OsStr) -> OsString {
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".maildir-migrate.tmp");
    tmp
}

/// Mode, owner, mtime and durability for a file written by `write_atomic`.
#[derive(Debug, Clone)]
pub struct FileAttrs {
    pub mode: u32,
    pub owner: Option<Owner>,
    pub mtime: Option<TimeSpec>,
    pub fsync: bool,
}

impl FileAttrs {
    /// `mode` and `owner` (`None`: the writer's), the mtime of the write.
    pub fn new(mode: u32, owner: Option<Owner>, fsync: bool) -> FileAttrs {
        FileAttrs {
            mode,
            owner,
            mtime: None,
            fsync,
        }
    }

    /// A file for its owner's eyes only (0600): mail, manifests, markers.
    pub fn private(owner: Option<Owner>, fsync: bool) -> FileAttrs {
        FileAttrs::new(0o600, owner, fsync)
    }

    /// The mode and owner of the file `meta` describes, for its replacement.
    pub fn like(meta: &std::fs::Metadata, fsync: bool) -> FileAttrs {
        use std::os::unix::fs::MetadataExt;
        FileAttrs::new(meta.mode() & 0o7777, Some(Owner::of(meta)), fsync)
    }

    /// The same, with the mtime set to `mtime` (`None`: of the write).
    pub fn with_mtime(self, mtime: Option<TimeSpec>) -> FileAttrs {
        FileAttrs { mtime, ..self }
    }
}

/// After the last write: the mtime `attrs` asks for, and durability.
pub fn finish_file(f: &File, attrs: &FileAttrs) -> io::Result<()> {
    if let Some(mtime) = attrs.mtime {
        futimens(f.as_fd(), &TimeSpec::UTIME_NOW, &mtime).map_err(io)?;
    }
    if attrs.fsync {
        f.sync_all()?;
    }
    Ok(())
}

/// Sets the exact mode (creation honours the umask) and the owner.
pub fn apply_attrs(f: &File, attrs: &FileAttrs) -> io::Result<()> {
    fchmod(f.as_fd(), Mode::from_bits_truncate(attrs.mode)).map_err(io)?;
    if let Some(o) = attrs.owner {
        fchown(
            f.as_fd(),
            Some(Uid::from_raw(o.uid)),
            Some(Gid::from_raw(o.gid)),
        )
        .map_err(io)?;
    }
    Ok(())
}

pub fn kind_of(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        _ => Kind::Other,
    }
}

/// Splits a trusted absolute path into its parent directory and file name.
pub fn split_file_path(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) if !p.as_os_str().is_empty() => Ok((p, n)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_beneath_refuses_symlinks_and_dotdot() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("link")).unwrap();
        let root = Dir::open_root(t.path()).unwrap();
        assert!(root.open_beneath(Path::new("a/b")).is_ok());
        assert!(root.open_beneath(Path::new("link/b")).is_err());
        assert!(root.open_beneath(Path::new("a/../a")).is_err());
    }

    #[test]
    fn open_file_refuses_links_and_fifos() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(t.path().join("f"), t.path().join("l")).unwrap();
        nix::unistd::mkfifo(&t.path().join("p"), Mode::from_bits_truncate(0o600)).unwrap();
        let d = Dir::open_root(t.path()).unwrap();
        assert!(d.open_file("f").is_ok());
        assert!(d.open_file("l").is_err());
        assert!(d.open_file("p").is_err());
        assert!(d.open_file("../f").is_err());
    }

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_root(t.path()).unwrap();
        let attrs = FileAttrs::new(0o640, None, true);
        d.write_atomic(OsStr::new("x"), b"one", &attrs).unwrap();
        d.write_atomic(OsStr::new("x"), b"two", &attrs).unwrap();
        assert_eq!(std::fs::read(t.path().join("x")).unwrap(), b"two");
        let st = d.stat_at("x").unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o640);
        let names: Vec<_> = d.entries().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![OsString::from("x")]);
    }

    #[test]
    fn rename_noreplace_keeps_existing() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"a").unwrap();
        std::fs::write(t.path().join("b"), b"b").unwrap();
        let d = Dir::open_root(t.path()).unwrap();
        let e = d
            .rename_noreplace(OsStr::new("a"), &d, OsStr::new("b"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(t.path().join("b")).unwrap(), b"b");
    }
}
