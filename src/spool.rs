//! The job queue on disk. Every state change is a rename, so after a crash
//! each job is in exactly one of `incoming/`, `active/`, `done/` or
//! `failed/`, and recovery is a directory listing.
//!
//! Job files are hostile input: they are opened without following links,
//! must be regular files of a trusted owner, and are size-limited.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::stat::FileStat;
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobError, JobId};
use crate::report::{Report, rfc3339};
use crate::safe_fs::{Dir, FileAttrs, Kind};

/// Larger job files are refused unread.
const MAX_JOB_BYTES: u64 = 64 * 1024;
const LOCK_FILE: &str = "daemon.pid";
const JOB_SUFFIX: &str = ".json";
pub const REPORT_SUFFIX: &str = ".report.json";
const PROGRESS_SUFFIX: &str = ".progress";
const SWEEP_SUFFIX: &str = ".sweep.json";

/// A sweep the daemon owes a finished job (kept beside its record, so a
/// restart keeps the schedule).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepDue {
    /// The record the sweep's result is added to (a file name in `done/`).
    pub record: String,
    pub domain: String,
    pub mailboxes: Option<Vec<String>>,
    /// Unix time when it is due.
    pub due: i64,
    /// The queue row of a job from the PostgreSQL queue (its record is
    /// the row, not a file: the sweep is logged as an event there).
    #[serde(default)]
    pub queue_job: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{}: {source}", crate::shown::path(path))]
    Io { path: PathBuf, source: io::Error },
    #[error("spool {}: {problem}", crate::shown::path(path))]
    Unsafe { path: PathBuf, problem: String },
    #[error(
        "another daemon already runs on spool {} (pid {pid})",
        crate::shown::path(path)
    )]
    Locked { path: PathBuf, pid: String },
    #[error("job id {id} is already used ({})", crate::shown::path(path))]
    Duplicate { id: String, path: PathBuf },
    #[error(transparent)]
    Job(#[from] JobError),
}

fn at(path: PathBuf) -> impl FnOnce(io::Error) -> SpoolError {
    move |source| SpoolError::Io { path, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    Incoming,
    Active,
    Done,
    Failed,
}

impl Place {
    pub const ALL: [Place; 4] = [Place::Incoming, Place::Active, Place::Done, Place::Failed];

    fn dir_name(self) -> &'static str {
        match self {
            Place::Incoming => "incoming",
            Place::Active => "active",
            Place::Done => "done",
            Place::Failed => "failed",
        }
    }
}

/// Who may own a job file.
#[derive(Debug, Clone, Copy)]
pub struct Trust {
    pub daemon_uid: u32,
    pub submit_gid: Option<u32>,
}

impl Trust {
    fn check(&self, uid: u32, gid: u32, mode: u32) -> Result<(), String> {
        if mode & 0o002 != 0 {
            return Err("untrusted job file: it is world-writable".into());
        }
        if uid == 0 || uid == self.daemon_uid || self.submit_gid == Some(gid) {
            return Ok(());
        }
        Err(format!(
            "untrusted job file: owned by uid {uid} gid {gid}, which is neither root, the daemon's uid {}{}",
            self.daemon_uid,
            match self.submit_gid {
                Some(g) => format!(", nor the submit group (gid {g})"),
                None => " (no submit_group is configured)".into(),
            }
        ))
    }
}

/// A file found in `incoming/` or `active/`, in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub place: Place,
    pub name: OsString,
    /// Submission time: the file's mtime (kept across the claim rename).
    pub submitted: i64,
}

impl Entry {
    /// The job id the name implies, when the name is a valid one.
    pub fn id(&self) -> Result<JobId, String> {
        let name = self.name.to_string_lossy();
        match name.strip_suffix(JOB_SUFFIX) {
            Some(stem) => JobId::parse(stem),
            None => Err(format!("{name:?} is not named <id>{JOB_SUFFIX}")),
        }
    }

    /// A name usable for the report even when the id is not valid.
    pub fn base(&self) -> String {
        let name = self.name.to_string_lossy();
        let stem = name.strip_suffix(JOB_SUFFIX).unwrap_or(&name);
        let mut s: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if s.is_empty() || s.starts_with('.') {
            s.insert(0, '_');
        }
        // A refused "x.report.json" must not be filed as x's record.
        if let Some(r) = crate::job::reserved_suffix(&s) {
            let dot = s.len() - r.len();
            s.replace_range(dot..=dot, "_");
        }
        s
    }

    /// The name without `.json`, as the daemon named the job's progress
    /// file (also for a job an earlier version accepted under an id that
    /// is refused now).
    fn stem(&self) -> String {
        let name = self.name.to_string_lossy();
        name.strip_suffix(JOB_SUFFIX).unwrap_or(&name).to_string()
    }
}

/// The record kept beside a finished job: the engine's report plus what
/// the queue knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The job file's name as it was found.
    pub file: String,
    pub status: RecordStatus,
    pub domain: Option<String>,
    /// Why the job failed as a whole (bad file, or the engine could not run).
    pub error: Option<String>,
    pub submitted: String,
    pub started: Option<String>,
    pub finished: String,
    pub queue_wait_secs: u64,
    pub run_secs: u64,
    /// The job was interrupted (stop or crash) and picked up again.
    pub resumed: bool,
    /// Engine report (absent when the job never ran).
    pub report: Option<Report>,
    /// The source/target comparison run after the job.
    #[serde(default)]
    pub verify: Option<crate::migrate::verify::Verification>,
    /// Outcome of the completion e-mail; `None` when the job names no address.
    pub notification: Option<Notification>,
    /// Late-delivery sweeps run after the job.
    #[serde(default)]
    pub sweeps: Vec<crate::migrate::sweep::Sweep>,
}

impl JobRecord {
    /// A record for `entry`, finished at `finished` (unix time), that never
    /// started; callers fill in what the job did.
    pub fn new(entry: &Entry, id: String, status: RecordStatus, finished: i64) -> JobRecord {
        JobRecord {
            id,
            file: entry.name.to_string_lossy().into_owned(),
            status,
            domain: None,
            error: None,
            submitted: rfc3339(entry.submitted),
            started: None,
            finished: rfc3339(finished),
            queue_wait_secs: (finished - entry.submitted).max(0) as u64,
            run_secs: 0,
            resumed: false,
            report: None,
            verify: None,
            notification: None,
            sweeps: Vec::new(),
        }
    }
}

/// What a record says about the job's completion e-mail: due when the
/// job is filed, then how sending went.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Notification {
    /// Tried first: a pending one lacks an outcome's fields.
    Finished(crate::notify::Outcome),
    Pending(PendingNotification),
}

/// `{"status": "pending", "to": …}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingNotification {
    status: PendingTag,
    pub to: String,
}

/// The one `status` a pending notification has (serde ignores a struct's
/// own tag when reading).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PendingTag {
    Pending,
}

impl Notification {
    pub fn pending(to: &str) -> Notification {
        Notification::Pending(PendingNotification {
            status: PendingTag::Pending,
            to: to.to_string(),
        })
    }

    /// The record's `status` value: pending, sent or failed.
    pub fn status(&self) -> &'static str {
        use crate::notify::OutcomeStatus;
        match self {
            Notification::Pending(_) => "pending",
            Notification::Finished(o) => match o.status {
                OutcomeStatus::Sent => "sent",
                OutcomeStatus::Failed => "failed",
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    Done,
    Failed,
}

/// Live progress of a running job, written by the daemon for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressFile {
    pub id: String,
    pub domain: String,
    pub pid: u32,
    /// When the job first started (kept across a resume).
    pub first_started: i64,
    /// When this run started.
    pub started: i64,
    pub updated: i64,
    pub mailboxes_total: u64,
    pub mailboxes_done: u64,
    pub mailboxes_failed: u64,
    pub messages: u64,
    pub bytes: u64,
    pub current: String,
    /// Checkpoint: mailboxes this job has finished, with their reports; a
    /// resumed job does not touch them again.
    #[serde(default)]
    pub finished: Vec<crate::report::MailboxReport>,
}

pub struct Spool {
    path: PathBuf,
    root: Dir,
    dirs: [Dir; 4],
    /// The daemon's uid (the spool's owner): the only writer of records,
    /// schedules and progress files.
    owner: u32,
    hints: NameHints,
}

/// Held for the daemon's lifetime; the kernel drops the lock on any exit.
pub struct Lock {
    _file: File,
}

impl Spool {
    /// Prepares the spool for the daemon: the directory must belong to us
    /// and be writable by us alone; the queue directories are made 0750
    /// (`incoming/` 2770 with the submit group, so members can drop jobs).
    /// Only `incoming/` may be writable by anyone else: whoever can write
    /// the root or `active/`, `done/`, `failed/` could replace the files
    /// the daemon (root) opens and writes there.
    pub fn prepare(path: &Path, submit_gid: Option<u32>) -> Result<Spool, SpoolError> {
        let unsafe_spool = |problem: String| SpoolError::Unsafe {
            path: path.to_path_buf(),
            problem,
        };
        let created = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .create(path)
                    .map_err(at(path.to_path_buf()))?;
                true
            }
            Err(e) => return Err(at(path.to_path_buf())(e)),
            Ok(_) => false,
        };
        let root = Dir::open_root(path).map_err(at(path.to_path_buf()))?;
        if created {
            root.chmod(0o750).map_err(at(path.to_path_buf()))?;
        }
        let st = root.stat().map_err(at(path.to_path_buf()))?;
        let me = nix::unistd::geteuid().as_raw();
        check_writers(&st, "the spool directory", path, me, false).map_err(unsafe_spool)?;
        let group = submit_gid.map(|gid| crate::safe_fs::Owner { uid: me, gid });
        if let Some(g) = group {
            root.chown(g).map_err(at(path.to_path_buf()))?;
        }
        let dirs = Place::ALL.map(|p| prepare_dir(&root, p, me, group));
        let [a, b, c, d] = dirs;
        let dirs = [a?, b?, c?, d?];
        Ok(Spool {
            path: path.to_path_buf(),
            root,
            dirs,
            owner: me,
            hints: NameHints::default(),
        })
    }

    /// Opens an existing spool (for `submit` and `status`).
    pub fn open(path: &Path) -> Result<Spool, SpoolError> {
        let root = Dir::open_root(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::Unsafe {
                path: path.to_path_buf(),
                problem: "does not exist; start the daemon once to create it".into(),
            },
            _ => at(path.to_path_buf())(e),
        })?;
        let dirs = collect_dirs(Place::ALL.map(|p| root.open_dir(p.dir_name())))
            .map_err(at(path.to_path_buf()))?;
        let owner = root.stat().map_err(at(path.to_path_buf()))?.st_uid;
        Ok(Spool {
            path: path.to_path_buf(),
            root,
            dirs,
            owner,
            hints: NameHints::default(),
        })
    }

    /// What `prepare` would refuse, without creating or changing anything
    /// (for `check`, run as the daemon's user): `Ok(false)` when the spool
    /// does not exist yet (the daemon creates it), `Unsafe` naming the
    /// fix for a directory others could write.
    pub fn inspect(path: &Path) -> Result<bool, SpoolError> {
        let unsafe_spool = |problem: String| SpoolError::Unsafe {
            path: path.to_path_buf(),
            problem,
        };
        let root = match Dir::open_root(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(at(path.to_path_buf())(e)),
        };
        let me = nix::unistd::geteuid().as_raw();
        let st = root.stat().map_err(at(path.to_path_buf()))?;
        check_writers(&st, "the spool directory", path, me, false).map_err(unsafe_spool)?;
        for place in Place::ALL {
            let sub = root.child_path(place.dir_name());
            let st = match root.open_dir(place.dir_name()).and_then(|d| d.stat()) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(at(sub)(e)),
            };
            let group_ok = place == Place::Incoming;
            check_writers(&st, "the queue directory", &sub, me, group_ok).map_err(unsafe_spool)?;
        }
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self, place: Place) -> &Dir {
        &self.dirs[place as usize]
    }

    /// Takes the spool's lock and records our pid in it; a second daemon
    /// gets `Locked` with the first one's pid. `daemon.pid` is opened
    /// without following links and only a file that can be our own (a
    /// regular file of ours, one link, holding a pid) is ever truncated.
    pub fn lock(&self) -> Result<Lock, SpoolError> {
        let path = self.root.child_path(LOCK_FILE);
        let refuse = |problem: String| SpoolError::Unsafe {
            path: self.path.clone(),
            problem: format!(
                "{LOCK_FILE} {problem}; the daemon did not make it and will not write to it. \
                 Check who put it there, remove it (rm {}) and start again",
                crate::shown::path(&path)
            ),
        };
        let (mut file, st, created) = match self.root.open_or_create_rw(LOCK_FILE, 0o644) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(refuse("is a symbolic link".into()));
            }
            Err(e) => return Err(at(path)(e)),
        };
        let me = nix::unistd::geteuid().as_raw();
        if !created {
            own_file_problem(&st, me).map_or(Ok(()), |p| Err(refuse(p)))?;
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = (&mut file).take(64).read_to_string(&mut pid);
                return Err(SpoolError::Locked {
                    path: self.path.clone(),
                    pid: pid.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(at(path)(e)),
        }
        if !created {
            let mut old = Vec::new();
            (&mut file)
                .take(64)
                .read_to_end(&mut old)
                .map_err(at(path.clone()))?;
            if old.len() >= 64 || !old.iter().all(|b| b.is_ascii_digit() || b" \n".contains(b)) {
                return Err(refuse("does not look like a pid file".into()));
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(at(path.clone()))?;
        file.set_len(0).map_err(at(path.clone()))?;
        file.rewind().map_err(at(path.clone()))?;
        writeln!(file, "{}", std::process::id()).map_err(at(path))?;
        Ok(Lock { _file: file })
    }

    /// The pid of the daemon holding the lock, if one does. A `daemon.pid`
    /// that is a link or not the spool owner's is not the daemon's.
    pub fn running_daemon(&self) -> Option<String> {
        let (mut file, st) = self.root.open_file(LOCK_FILE).ok()?;
        if own_file_problem(&st, self.owner).is_some() {
            return None;
        }
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => {
                let mut pid = String::new();
                let _ = (&mut file).take(64).read_to_string(&mut pid);
                Some(pid.trim().to_string())
            }
        }
    }

    /// Job files waiting in `place` (incoming or active), oldest first by
    /// mtime, then name. Temp names (`.x`, `x.tmp`) and progress files are
    /// not jobs.
    pub fn list(&self, place: Place) -> Result<Vec<Entry>, SpoolError> {
        let dir = self.dir(place);
        let mut out = Vec::new();
        for e in dir.entries().map_err(at(dir.path().to_path_buf()))? {
            let b = e.name.as_bytes();
            if b.starts_with(b".") || b.ends_with(b".tmp") {
                continue;
            }
            if place == Place::Active && !b.ends_with(JOB_SUFFIX.as_bytes()) {
                continue;
            }
            let st = match dir.stat_at(&e.name) {
                Ok(st) => st,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(at(dir.child_path(&e.name))(err)),
            };
            out.push(Entry {
                place,
                name: e.name,
                submitted: st.st_mtime,
            });
        }
        out.sort_by(|a, b| (a.submitted, &a.name).cmp(&(b.submitted, &b.name)));
        Ok(out)
    }

    /// Reads and validates a job file; `Err` says why it is not a job we
    /// will run. `trust: None` only reads (for `status`, which runs nothing).
    pub fn load(&self, entry: &Entry, trust: Option<&Trust>) -> Result<Job, Rejected> {
        self.read_job(entry, trust).map(|(job, ..)| job)
    }

    /// `load`, also returning the exact bytes validated and the stat of
    /// the file they were read from.
    fn read_job(
        &self,
        entry: &Entry,
        trust: Option<&Trust>,
    ) -> Result<(Job, Vec<u8>, FileStat), Rejected> {
        let dir = self.dir(entry.place);
        let path = dir.child_path(&entry.name);
        let reject = |why: String| Rejected(format!("{}: {why}", path.display()));
        let id = entry.id().map_err(reject)?;
        let st = dir
            .stat_at(&entry.name)
            .map_err(|e| reject(e.to_string()))?;
        if crate::safe_fs::kind_of(&st) != Kind::File {
            return Err(reject(
                "untrusted job file: not a regular file (symlinks are not followed)".into(),
            ));
        }
        let check = |st: &FileStat| match trust {
            Some(t) => t.check(st.st_uid, st.st_gid, st.st_mode),
            None => Ok(()),
        };
        check(&st).map_err(reject)?;
        let (file, st) = dir
            .open_file(&entry.name)
            .map_err(|e| reject(e.to_string()))?;
        // Checked again on the opened file: it may have been swapped.
        check(&st).map_err(reject)?;
        if st.st_size as u64 > MAX_JOB_BYTES {
            return Err(reject(format!("larger than {MAX_JOB_BYTES} bytes")));
        }
        let mut data = Vec::new();
        file.take(MAX_JOB_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| reject(e.to_string()))?;
        // It may have grown after the fstat.
        if data.len() as u64 > MAX_JOB_BYTES {
            return Err(reject(format!("larger than {MAX_JOB_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&data)
            .map_err(|_| reject("stream did not contain valid UTF-8".into()))?;
        let job = Job::parse(&path, id.as_str(), text).map_err(|e| Rejected(e.to_string()))?;
        Ok((job, data, st))
    }

    /// Makes a job in `active/` the daemon's own before it runs: the file
    /// is read once more (no-follow, size-limited, trust-checked),
    /// validated, and replaced by a new file of the daemon's (0640, written
    /// atomically, submission mtime kept) holding exactly those bytes; the
    /// returned job is what they say. After a claim the file is still the
    /// submitter's inode, which it could change (or hold open) at will;
    /// the copy it cannot. A file that already is the daemon's is left as
    /// it is. `Ok(Err(_))`: not a job to run; `Err(_)`: could not copy.
    pub fn adopt(&self, entry: &Entry, trust: &Trust) -> Result<Result<Job, Rejected>, SpoolError> {
        let (job, data, st) = match self.read_job(entry, Some(trust)) {
            Ok(read) => read,
            Err(r) => return Ok(Err(r)),
        };
        let me = nix::unistd::geteuid().as_raw();
        if own_file_problem(&st, me).is_none() && st.st_mode & 0o7777 == 0o640 {
            return Ok(Ok(job));
        }
        let dir = self.dir(entry.place);
        let attrs =
            record_attrs(true).with_mtime(Some(TimeSpec::new(st.st_mtime, st.st_mtime_nsec)));
        dir.write_atomic(&entry.name, &data, &attrs)
            .map_err(at(dir.child_path(&entry.name)))?;
        Ok(Ok(job))
    }

    /// Claims an incoming job by renaming it into `active/`. `Ok(false)`
    /// when it vanished or an active job already has the name.
    pub fn claim(&self, entry: &Entry) -> Result<bool, SpoolError> {
        let from = self.dir(Place::Incoming);
        match from.rename_noreplace(&entry.name, self.dir(Place::Active), &entry.name) {
            Ok(()) => {
                self.dir(Place::Active)
                    .sync()
                    .map_err(at(self.dir(Place::Active).path().to_path_buf()))?;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(at(from.child_path(&entry.name))(e)),
        }
    }

    /// Files a finished (or rejected) job: the record is written first,
    /// then the job file moves beside it. Returns the record's path.
    pub fn finish(&self, entry: &Entry, record: &JobRecord) -> Result<PathBuf, SpoolError> {
        let to = self.dir(place_of(record.status));
        let (base, _) = self.free_base(record.status, &entry.base())?;
        let report_name = OsString::from(format!("{base}{REPORT_SUFFIX}"));
        write_record(to, &report_name, record)?;
        let from = self.dir(entry.place);
        from.rename_noreplace(&entry.name, to, OsStr::new(&format!("{base}{JOB_SUFFIX}")))
            .map_err(at(from.child_path(&entry.name)))?;
        to.sync().map_err(at(to.path().to_path_buf()))?;
        if entry.place == Place::Active {
            self.remove_progress(&entry.stem());
        }
        Ok(to.child_path(report_name))
    }

    /// `base`, or `base~1`, `base~2`… when earlier jobs used the id (`~`
    /// is not allowed in ids, so no real id collides), in the directory a
    /// record of `status` goes to. Also returns the stat probes made: one
    /// or two when the hint is right, O(log n) when it is missing (after a
    /// restart) or wrong; never a scan from `base`.
    fn free_base(&self, status: RecordStatus, base: &str) -> Result<(String, u32), SpoolError> {
        let place = place_of(status);
        let dir = self.dir(place);
        let mut hints = self.hints.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (place, base.to_string());
        let start = hints.get(&key).copied().unwrap_or(0);
        let mut probes = 0;
        let n = first_free(start, |n| name_taken(dir, &suffixed(base, n), &mut probes))?
            .ok_or_else(|| SpoolError::Io {
                path: dir.child_path(base),
                source: io::Error::other("no free ~N suffix is left for this name"),
            })?;
        if hints.len() >= MAX_NAME_HINTS {
            hints.clear();
        }
        hints.insert(key, n.saturating_add(1));
        Ok((suffixed(base, n), probes))
    }

    /// Rewrites a finished job's record (to add the notification outcome).
    pub fn update_record(&self, path: &Path, record: &JobRecord) -> Result<(), SpoolError> {
        let (dir, name) = crate::safe_fs::split_file_path(path).map_err(at(path.to_path_buf()))?;
        let dir = Dir::open_root(dir).map_err(at(path.to_path_buf()))?;
        write_record(&dir, name, record)
    }

    /// Queues a job: validated, written under a temp name, synced, then
    /// renamed into `incoming/` without replacing anything.
    pub fn submit(&self, id: &JobId, text: &str) -> Result<PathBuf, SpoolError> {
        let name = OsString::from(format!("{}{JOB_SUFFIX}", id.as_str()));
        let incoming = self.dir(Place::Incoming);
        Job::parse(&incoming.child_path(&name), id.as_str(), text)?;
        for place in Place::ALL {
            let d = self.dir(place);
            match d.stat_at(&name) {
                Ok(_) => {
                    return Err(SpoolError::Duplicate {
                        id: id.as_str().to_string(),
                        path: d.child_path(&name),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(d.child_path(&name))(e)),
            }
        }
        let tmp = OsString::from(format!(".{}.{}.tmp", id.as_str(), std::process::id()));
        let result = (|| {
            let mut f = incoming.create_file(&tmp, 0o640)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            drop(f);
            incoming.rename_noreplace(&tmp, incoming, &name)?;
            incoming.sync()
        })();
        if let Err(e) = result {
            let _ = incoming.unlink_if_exists(&tmp);
            return Err(match e.kind() {
                io::ErrorKind::AlreadyExists => SpoolError::Duplicate {
                    id: id.as_str().to_string(),
                    path: incoming.child_path(&name),
                },
                _ => at(incoming.child_path(&name))(e),
            });
        }
        Ok(incoming.child_path(&name))
    }

    /// Schedules a sweep for the finished job whose record is `record`.
    pub fn schedule_sweep(&self, s: &SweepDue) -> Result<(), SpoolError> {
        let dir = self.dir(Place::Done);
        let base = s.record.strip_suffix(REPORT_SUFFIX).unwrap_or(&s.record);
        write_record(dir, OsStr::new(&format!("{base}{SWEEP_SUFFIX}")), s)
    }

    /// Sweeps that are due at `now`, with the file that schedules each.
    pub fn due_sweeps(&self, now: i64) -> Vec<(OsString, SweepDue)> {
        let dir = self.dir(Place::Done);
        let Ok(entries) = dir.entries() else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter(|e| e.name.as_bytes().ends_with(SWEEP_SUFFIX.as_bytes()))
            .filter_map(|e| {
                let s: SweepDue = serde_json::from_slice(&self.read_own(dir, &e.name)?).ok()?;
                (s.due <= now).then_some((e.name, s))
            })
            .collect()
    }

    /// Adds a sweep's result to its record and drops the schedule.
    pub fn sweep_done(
        &self,
        schedule: &OsStr,
        due: &SweepDue,
        result: crate::migrate::sweep::Sweep,
    ) -> Result<(), SpoolError> {
        let dir = self.dir(Place::Done);
        let name = OsStr::new(&due.record);
        if let Some(data) = self.read_own(dir, name)
            && let Ok(mut record) = serde_json::from_slice::<JobRecord>(&data)
        {
            record.sweeps.push(result);
            write_record(dir, name, &record)?;
        }
        dir.unlink_if_exists(schedule)
            .map_err(at(dir.child_path(schedule)))?;
        Ok(())
    }

    pub fn write_progress(&self, p: &ProgressFile) -> Result<(), SpoolError> {
        let dir = self.dir(Place::Active);
        let name = OsString::from(format!("{}{PROGRESS_SUFFIX}", p.id));
        let data = serde_json::to_vec_pretty(p).expect("serialisable");
        dir.write_atomic(&name, &data, &record_attrs(false))
            .map_err(at(dir.child_path(&name)))
    }

    pub fn read_progress(&self, id: &str) -> Option<ProgressFile> {
        let data = self.read_own(self.dir(Place::Active), format!("{id}{PROGRESS_SUFFIX}"))?;
        serde_json::from_slice(&data).ok()
    }

    fn remove_progress(&self, id: &str) {
        let _ = self
            .dir(Place::Active)
            .unlink_if_exists(format!("{id}{PROGRESS_SUFFIX}"));
    }

    /// Reads a daemon-written file: a regular file (links not followed) of
    /// the daemon's with one link. Anything else under such a name (a job
    /// file an earlier version filed as `done/x.sweep.json`, still its
    /// submitter's) is not the daemon's and is ignored.
    fn read_own(&self, dir: &Dir, name: impl AsRef<OsStr>) -> Option<Vec<u8>> {
        let (file, st) = dir.open_file(name).ok()?;
        if own_file_problem(&st, self.owner).is_some() {
            return None;
        }
        let mut data = Vec::new();
        file.take(16 << 20).read_to_end(&mut data).ok()?;
        Some(data)
    }

    /// Records of finished jobs in `place` (unreadable ones are skipped).
    pub fn records(&self, place: Place) -> Result<Vec<JobRecord>, SpoolError> {
        let dir = self.dir(place);
        let mut out = Vec::new();
        for e in dir.entries().map_err(at(dir.path().to_path_buf()))? {
            if e.kind != Kind::File || !e.name.as_bytes().ends_with(REPORT_SUFFIX.as_bytes()) {
                continue;
            }
            let Some(data) = self.read_own(dir, &e.name) else {
                continue;
            };
            if let Ok(r) = serde_json::from_slice::<JobRecord>(&data) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// Where a job with a record of `status` is filed.
fn place_of(status: RecordStatus) -> Place {
    match status {
        RecordStatus::Done => Place::Done,
        RecordStatus::Failed => Place::Failed,
    }
}

/// Why a file in the queue is not a job that can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub String);

fn collect_dirs(dirs: [io::Result<Dir>; 4]) -> io::Result<[Dir; 4]> {
    let [a, b, c, d] = dirs;
    Ok([a?, b?, c?, d?])
}

/// Refuses a spool directory that anyone but the daemon's user `me` could
/// write into (`group_ok`: `incoming/`, which the submit group writes).
fn check_writers(
    st: &FileStat,
    what: &str,
    path: &Path,
    me: u32,
    group_ok: bool,
) -> Result<(), String> {
    let shown = crate::shown::path(path);
    if st.st_uid != me {
        return Err(format!(
            "{what} is owned by uid {}, not by the daemon's uid {me}; refusing to take jobs from it. \
             Fix: chown {me} {shown}",
            st.st_uid
        ));
    }
    let bad = st.st_mode & if group_ok { 0o002 } else { 0o022 };
    if bad == 0 {
        return Ok(());
    }
    let who = if bad & 0o002 != 0 { "world" } else { "group" };
    Err(format!(
        "{what} {shown} is {who}-writable (mode {:o}); only incoming/ may be writable by anyone \
         but the daemon's user, or they could replace the files the daemon writes there. \
         Fix: chmod g-w,o-w {shown}",
        st.st_mode & 0o7777
    ))
}

/// Opens (creating) one queue directory and checks who may write it.
fn prepare_dir(
    root: &Dir,
    place: Place,
    me: u32,
    group: Option<crate::safe_fs::Owner>,
) -> Result<Dir, SpoolError> {
    let (mode, group_ok) = match (place, group) {
        (Place::Incoming, Some(_)) => (0o2770, true),
        // incoming/ without a submit group is narrowed to 0750 below.
        (Place::Incoming, None) => (0o750, true),
        _ => (0o750, false),
    };
    let path = root.child_path(place.dir_name());
    let (d, _) = root
        .ensure_dir(place.dir_name(), mode, group)
        .map_err(at(path.clone()))?;
    let st = d.stat().map_err(at(path.clone()))?;
    check_writers(&st, "the queue directory", &path, me, group_ok).map_err(|problem| {
        SpoolError::Unsafe {
            path: root.path().to_path_buf(),
            problem,
        }
    })?;
    if let Some(g) = group {
        d.chown(g).map_err(at(path.clone()))?;
    }
    // Also for a directory made by hand: no wider than intended.
    d.chmod(mode).map_err(at(path))?;
    Ok(d)
}

/// Why `st` cannot be a file the daemon (uid `me`) made for itself, if it
/// cannot: not regular, someone else's or hard-linked (an earlier run
/// under another umask may have left it group-writable; that is fixed).
fn own_file_problem(st: &FileStat, me: u32) -> Option<String> {
    if crate::safe_fs::kind_of(st) != Kind::File {
        return Some("is not a regular file".into());
    }
    if st.st_uid != me {
        return Some(format!(
            "is owned by uid {}, not by the daemon's uid {me}",
            st.st_uid
        ));
    }
    if st.st_nlink != 1 {
        return Some(format!(
            "has {} links (a hard link to another file)",
            st.st_nlink
        ));
    }
    None
}

fn record_attrs(fsync: bool) -> FileAttrs {
    FileAttrs::new(0o640, None, fsync)
}

fn write_record(dir: &Dir, name: &OsStr, record: &impl Serialize) -> Result<(), SpoolError> {
    let mut data = serde_json::to_vec_pretty(record).expect("serialisable");
    data.push(b'\n');
    dir.write_atomic(name, &data, &record_attrs(true))
        .map_err(at(dir.child_path(name)))
}

/// Whether `candidate` (`base` or `base~N`) is used in `dir`, by a record
/// or a job file; adds the stat calls made to `probes`. The record is
/// written first when a job is filed, so a used name costs one probe.
fn name_taken(dir: &Dir, candidate: &str, probes: &mut u32) -> Result<bool, SpoolError> {
    for suffix in [REPORT_SUFFIX, JOB_SUFFIX] {
        *probes += 1;
        let name = format!("{candidate}{suffix}");
        match dir.stat_at(&name) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(dir.child_path(name))(e)),
        }
    }
    Ok(false)
}

/// A free suffix number at or after `start` (0 meaning `base` itself):
/// `start` when it is free, else the next free one after a run of used
/// ones, found by doubling steps and then halving, O(log n) probes;
/// `None` when the u32 range is used up.
/// Suffixes are handed out in order, so the used ones form a run; were
/// there gaps, the number found is still free, just not the lowest.
fn first_free(
    start: u32,
    mut taken: impl FnMut(u32) -> Result<bool, SpoolError>,
) -> Result<Option<u32>, SpoolError> {
    if !taken(start)? {
        return Ok(Some(start));
    }
    // lo is used, hi is free.
    let (mut lo, mut step) = (start, 1u32);
    let mut hi = loop {
        let Some(candidate) = lo.checked_add(step) else {
            return Ok(None);
        };
        if !taken(candidate)? {
            break candidate;
        }
        lo = candidate;
        step = step.saturating_mul(2);
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if taken(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(hi))
}

fn suffixed(base: &str, n: u32) -> String {
    if n == 0 {
        base.to_string()
    } else {
        format!("{base}~{n}")
    }
}

/// Where the next free `base~N` probably is, per destination and base, so
/// that filing the n-th job of one name is one check, not n (a submitter
/// can queue thousands of refused files of one name, and filing runs in the
/// daemon's main loop). Only a hint: every name is still checked.
#[derive(Default)]
struct NameHints(Mutex<HashMap<(Place, String), u32>>);

/// Hints kept at most; beyond that they are dropped and rebuilt (each miss
/// costs O(log n) probes, so the map cannot grow without bound).
const MAX_NAME_HINTS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spool() -> (tempfile::TempDir, Spool) {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::prepare(&t.path().join("spool"), None).unwrap();
        (t, s)
    }

    fn trust() -> Trust {
        Trust {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            submit_gid: None,
        }
    }

    #[test]
    fn notifications_keep_their_record_shape() {
        let shapes = [
            serde_json::json!({"status": "pending", "to": "a@b.example"}),
            serde_json::json!({"status": "sent", "to": "a@b.example", "attempts": 1,
                "error": null, "finished": "2026-11-29T12:00:00Z"}),
            serde_json::json!({"status": "failed", "to": "a@b.example", "attempts": 2,
                "error": "connection refused", "finished": "2026-11-29T12:00:00Z"}),
        ];
        for (v, status) in shapes.iter().zip(["pending", "sent", "failed"]) {
            let n: Notification = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(n.status(), status);
            assert_eq!(&serde_json::to_value(&n).unwrap(), v);
        }
        assert_eq!(
            serde_json::to_value(Notification::pending("a@b.example")).unwrap(),
            shapes[0]
        );
        let odd = serde_json::json!({"status": "queued", "to": "a@b.example"});
        assert!(serde_json::from_value::<Notification>(odd).is_err());
    }

    #[test]
    fn prepare_creates_the_queue_and_refuses_a_world_writable_spool() {
        let (t, s) = spool();
        for p in Place::ALL {
            let m = std::fs::metadata(s.path().join(p.dir_name())).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o750, "{p:?}");
        }
        let spool_path = t.path().join("spool");
        std::fs::set_permissions(&spool_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Spool::prepare(&spool_path, None).err().unwrap().to_string();
        assert!(e.contains("world-writable"), "{e}");
    }

    #[test]
    fn submit_list_claim_finish() {
        let (_t, s) = spool();
        let text = r#"{"domain":"a.cz","mode":"move"}"#;
        let id = JobId::parse("j1").unwrap();
        s.submit(&id, text).unwrap();
        let e = s.submit(&id, text).unwrap_err().to_string();
        assert!(e.contains("already used"), "{e}");
        // Temp and hidden names are not jobs.
        std::fs::write(s.path().join("incoming/x.json.tmp"), text).unwrap();
        std::fs::write(s.path().join("incoming/.y.json"), text).unwrap();
        let list = s.list(Place::Incoming).unwrap();
        assert_eq!(list.len(), 1);
        let job = s.load(&list[0], Some(&trust())).unwrap();
        assert_eq!(job.domain.as_str(), "a.cz");
        assert!(s.claim(&list[0]).unwrap());
        assert!(!s.claim(&list[0]).unwrap());
        let active = s.list(Place::Active).unwrap();
        assert_eq!(active[0].name, "j1.json");
        let mut rec = JobRecord::new(&active[0], "j1".into(), RecordStatus::Done, 1);
        rec.domain = Some("a.cz".into());
        let p = s.finish(&active[0], &rec).unwrap();
        assert!(p.ends_with("done/j1.report.json"));
        assert!(s.path().join("done/j1.json").exists());
        // A rerun of the same id is filed beside the first.
        std::fs::write(s.path().join("active/j1.json"), text).unwrap();
        let active = s.list(Place::Active).unwrap();
        let p = s.finish(&active[0], &rec).unwrap();
        assert!(p.ends_with("done/j1~1.report.json"), "{}", p.display());
        assert_eq!(s.records(Place::Done).unwrap().len(), 2);
    }

    #[test]
    fn untrusted_and_malformed_files_are_rejected_with_reasons() {
        let (_t, s) = spool();
        let inc = s.path().join("incoming");
        std::fs::write(inc.join("ww.json"), r#"{"domain":"a.cz","mode":"move"}"#).unwrap();
        std::fs::set_permissions(inc.join("ww.json"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", inc.join("link.json")).unwrap();
        std::fs::write(inc.join("bad id!.json"), "{}").unwrap();
        std::fs::write(inc.join("mode.json"), r#"{"domain":"a.cz","mode":"copy"}"#).unwrap();
        std::fs::write(inc.join("notes.txt"), "hello").unwrap();
        let mut reasons = Vec::new();
        for e in s.list(Place::Incoming).unwrap() {
            reasons.push((e.base(), s.load(&e, Some(&trust())).unwrap_err().0));
        }
        reasons.sort();
        let find = |b: &str| &reasons.iter().find(|(n, _)| n == b).unwrap().1;
        assert!(find("ww").contains("world-writable"));
        assert!(find("link").contains("not a regular file"));
        assert!(find("bad_id_").contains("job id"));
        assert!(find("mode").contains("unknown variant"));
        assert!(find("notes.txt").contains("is not named"));
        let t = Trust {
            daemon_uid: 4242,
            submit_gid: Some(4343),
        };
        assert!(t.check(0, 0, 0o600).is_ok());
        assert!(t.check(4242, 1, 0o644).is_ok());
        assert!(t.check(1000, 4343, 0o660).is_ok());
        let e = t.check(1000, 1000, 0o600).unwrap_err();
        assert!(e.starts_with("untrusted job file"), "{e}");
    }

    #[test]
    fn queue_order_is_mtime_then_name_and_foreign_spools_are_refused() {
        let (t, s) = spool();
        let inc = s.path().join("incoming");
        for (name, mtime) in [("b.json", 100), ("a.json", 200), ("c.json", 100)] {
            let p = inc.join(name);
            std::fs::write(&p, "{}").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))
                .unwrap();
        }
        let order: Vec<_> = s
            .list(Place::Incoming)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(order, ["b.json", "c.json", "a.json"]);
        if nix::unistd::geteuid().is_root() {
            let spool_path = t.path().join("spool");
            std::os::unix::fs::chown(&spool_path, Some(4242), None).unwrap();
            let e = Spool::prepare(&spool_path, None).err().unwrap().to_string();
            assert!(e.contains("owned by uid 4242"), "{e}");
        }
    }

    fn chown(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }

    /// After the claim the job that runs is the daemon's own copy (0640,
    /// a new inode): what the submitter writes through a descriptor it kept
    /// open, before or after, never reaches it. Root only (chown).
    #[test]
    fn a_claimed_job_becomes_a_daemon_owned_copy() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (_t, s) = spool();
        let trust = Trust {
            daemon_uid: 0,
            submit_gid: Some(4343),
        };
        let inc = s.path().join("incoming/j.json");
        std::fs::write(&inc, r#"{"domain":"a.cz","mode":"move"}"#).unwrap();
        chown(&inc, 4321, 4343);
        std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o660)).unwrap();
        let f = std::fs::File::options().write(true).open(&inc).unwrap();
        let ino = std::fs::metadata(&inc).unwrap().ino();
        let entry = s.list(Place::Incoming).unwrap().remove(0);
        assert_eq!(
            s.load(&entry, Some(&trust)).unwrap().domain.as_str(),
            "a.cz"
        );
        // Changed between the check and the claim: the re-read decides.
        let b = br#"{"domain":"b.cz","mode":"move"}"#;
        f.set_len(0).unwrap();
        f.write_all_at(b, 0).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
            .unwrap();
        assert!(s.claim(&entry).unwrap());
        let active = s.list(Place::Active).unwrap().remove(0);
        let job = s.adopt(&active, &trust).unwrap().unwrap();
        assert_eq!(job.domain.as_str(), "b.cz");
        let path = s.path().join("active/j.json");
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777, m.nlink()), (0, 0o640, 1));
        assert_ne!(m.ino(), ino, "a new file, not the submitter's inode");
        assert_eq!(m.mtime(), 1_700_000_000, "the submission time is kept");
        f.set_len(0).unwrap();
        f.write_all_at(br#"{"domain":"victim.cz","mode":"move"}"#, 0)
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b);
        // Adopting again leaves the daemon's copy alone.
        s.adopt(&active, &trust).unwrap().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), m.ino());
        let rec = JobRecord::new(&active, "j".into(), RecordStatus::Done, 1);
        s.finish(&active, &rec).unwrap();
        let m = std::fs::metadata(s.path().join("done/j.json")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o640));
    }

    /// A job an earlier version left in `active/` (the submitter's inode)
    /// is adopted, and checked like a new one, before it resumes.
    #[test]
    fn a_resumed_job_of_another_owner_is_adopted_or_refused() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (_t, s) = spool();
        let trust = Trust {
            daemon_uid: 0,
            submit_gid: Some(4343),
        };
        let act = s.path().join("active");
        for (name, mode) in [("r.json", 0o660), ("ww.json", 0o666)] {
            std::fs::write(act.join(name), r#"{"domain":"a.cz","mode":"move"}"#).unwrap();
            chown(&act.join(name), 4321, 4343);
            std::fs::set_permissions(act.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let list = s.list(Place::Active).unwrap();
        assert_eq!(list.len(), 2);
        s.adopt(&list[0], &trust).unwrap().unwrap();
        let m = std::fs::metadata(act.join("r.json")).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o640));
        let why = s.adopt(&list[1], &trust).unwrap().unwrap_err().0;
        assert!(why.contains("world-writable"), "{why}");
        assert_eq!(std::fs::metadata(act.join("ww.json")).unwrap().uid(), 4321);
    }

    /// Names that no valid id produces are kept that way for refused files
    /// too: nothing in done/ or failed/ is named like a record or schedule
    /// unless the daemon wrote it.
    #[test]
    fn refused_files_never_take_a_record_or_schedule_name() {
        let (_t, s) = spool();
        let inc = s.path().join("incoming");
        let good = r#"{"domain":"a.cz","mode":"move"}"#;
        std::fs::write(inc.join("evil.sweep.json"), good).unwrap();
        std::fs::write(inc.join("x.REPORT.json"), good).unwrap();
        for e in s.list(Place::Incoming).unwrap() {
            let why = s.load(&e, Some(&trust())).unwrap_err().0;
            assert!(why.contains("reserved"), "{why}");
            let mut rec = JobRecord::new(&e, e.base(), RecordStatus::Failed, 1);
            rec.error = Some(why);
            s.finish(&e, &rec).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(s.path().join("failed"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "evil_sweep.json",
                "evil_sweep.report.json",
                "x_REPORT.json",
                "x_REPORT.report.json"
            ]
        );
        assert_eq!(s.records(Place::Failed).unwrap().len(), 2);
        // The spool's own suffixes are the ones ids may not end in.
        for suffix in [REPORT_SUFFIX, SWEEP_SUFFIX] {
            let id = format!("x{}", suffix.strip_suffix(JOB_SUFFIX).unwrap());
            assert!(JobId::parse(&id).is_err(), "{id}");
        }
    }

    /// A schedule or record the daemon did not write (a job file an earlier
    /// version filed under such a name, still its submitter's) is ignored.
    #[test]
    fn schedules_and_records_of_other_owners_are_ignored() {
        let (_t, s) = spool();
        let done = s.path().join("done");
        let due = r#"{"record":"j.report.json","domain":"victim.cz","mailboxes":null,"due":0}"#;
        std::fs::write(done.join("evil.sweep.json"), due).unwrap();
        let rec = JobRecord::new(
            &Entry {
                place: Place::Done,
                name: "y.json".into(),
                submitted: 0,
            },
            "y".into(),
            RecordStatus::Done,
            1,
        );
        std::fs::write(
            done.join("y.report.json"),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        assert_eq!(s.due_sweeps(1).len(), 1, "the daemon's own are read");
        assert_eq!(s.records(Place::Done).unwrap().len(), 1);
        if nix::unistd::geteuid().is_root() {
            chown(&done.join("evil.sweep.json"), 4321, 4343);
            chown(&done.join("y.report.json"), 4321, 4343);
            assert!(s.due_sweeps(1).is_empty());
            assert!(s.records(Place::Done).unwrap().is_empty());
        }
    }

    /// Filing is linear: 30,000 refused files of one name take at most
    /// two stat probes each (the old search began at `base` every time,
    /// 2n probes for the n-th, and blocked the main loop for seconds). The
    /// files are created with O_EXCL (no fsync, unlike `finish`): nothing
    /// is overwritten and every name is new.
    #[test]
    fn filing_many_jobs_of_one_name_is_linear() {
        let (_t, s) = spool();
        let dir = s.dir(Place::Failed);
        let mut names = std::collections::HashSet::new();
        let mut total = 0u64;
        for i in 0..30_000u64 {
            let (base, probes) = s.free_base(RecordStatus::Failed, "same").unwrap();
            total += u64::from(probes);
            assert!(total <= 2 * (i + 1), "{total} probes for {} files", i + 1);
            dir.create_file(format!("{base}{REPORT_SUFFIX}"), 0o640)
                .unwrap();
            dir.create_file(format!("{base}{JOB_SUFFIX}"), 0o640)
                .unwrap();
            assert!(names.insert(base));
        }
        eprintln!("30,000 files of one name: {total} probes");
        // A restarted daemon has no hints: a search, not a scan from 0.
        let again = Spool::open(s.path()).unwrap();
        let (base, probes) = again.free_base(RecordStatus::Failed, "same").unwrap();
        eprintln!("after a restart: {probes} probes for {base}");
        assert!(probes <= 64, "{probes}");
        assert!(!names.contains(&base));
        dir.create_file(format!("{base}{REPORT_SUFFIX}"), 0o640)
            .unwrap();
        // A stale hint (files added behind the spool's back) is corrected.
        dir.create_file("other.report.json", 0o640).unwrap();
        dir.create_file("other~1.report.json", 0o640).unwrap();
        assert_eq!(
            again.free_base(RecordStatus::Failed, "other").unwrap().0,
            "other~2"
        );
    }

    proptest::proptest! {
        /// Whatever names are used (gaps too), the number found is free and
        /// not below the hint.
        #[test]
        fn first_free_finds_a_free_number(
            used in proptest::collection::btree_set(0u32..300, 0..250),
            start in 0u32..300,
        ) {
            let n = first_free(start, |n| Ok(used.contains(&n))).unwrap().unwrap();
            proptest::prop_assert!(n >= start && !used.contains(&n));
        }
    }

    /// Only `incoming/` may be writable by the submit group: a member who
    /// can write the spool root could swap `daemon.pid` for a symlink.
    #[test]
    fn group_writable_spool_directories_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("spool");
        let gid = Some(nix::unistd::getegid().as_raw());
        Spool::prepare(&path, gid).unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        chmod(&path, 0o770);
        let e = Spool::prepare(&path, gid).err().unwrap();
        assert!(matches!(e, SpoolError::Unsafe { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("chmod g-w,o-w"),
            "{e}"
        );
        chmod(&path, 0o750);
        for dir in ["active", "done", "failed"] {
            let d = path.join(dir);
            chmod(&d, 0o770);
            let e = Spool::prepare(&path, gid).err().unwrap().to_string();
            assert!(
                e.contains(&d.display().to_string()) && e.contains("chmod g-w,o-w"),
                "{dir}: {e}"
            );
            chmod(&d, 0o750);
        }
        // incoming/ is the one directory the group writes.
        let s = Spool::prepare(&path, gid).unwrap();
        let m = std::fs::metadata(s.path().join("incoming")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o2770);
    }

    /// `daemon.pid` is never followed, and a file the daemon did not make
    /// is never truncated.
    #[test]
    fn lock_refuses_a_pid_file_it_did_not_make() {
        let (t, s) = spool();
        let pid = s.path().join(LOCK_FILE);
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let untouched = |what: &str| {
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n", "{what}");
        };
        std::os::unix::fs::symlink(&victim, &pid).unwrap();
        let e = s.lock().err().unwrap();
        assert!(matches!(e, SpoolError::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        untouched("symlink");
        std::fs::remove_file(&pid).unwrap();
        std::fs::hard_link(&victim, &pid).unwrap();
        let e = s.lock().err().unwrap().to_string();
        assert!(e.contains("links"), "{e}");
        untouched("hard link");
        std::fs::remove_file(&pid).unwrap();
        std::fs::write(&pid, "not a pid\n").unwrap();
        let e = s.lock().err().unwrap().to_string();
        assert!(e.contains("does not look like a pid file"), "{e}");
        assert_eq!(std::fs::read(&pid).unwrap(), b"not a pid\n");
        if nix::unistd::geteuid().is_root() {
            std::fs::write(&pid, "123\n").unwrap();
            std::os::unix::fs::chown(&pid, Some(4242), None).unwrap();
            let e = s.lock().err().unwrap().to_string();
            assert!(e.contains("owned by uid 4242"), "{e}");
            assert_eq!(std::fs::read(&pid).unwrap(), b"123\n");
        }
        // A stale pid file of an earlier run is taken over.
        std::fs::remove_file(&pid).unwrap();
        std::fs::write(&pid, "123\n").unwrap();
        let _held = s.lock().unwrap();
        let want = format!("{}\n", std::process::id());
        assert_eq!(std::fs::read_to_string(&pid).unwrap(), want);
    }

    /// `status` reads the lock without following a planted symlink.
    #[test]
    fn running_daemon_does_not_follow_a_symlink() {
        let (t, s) = spool();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "4711\n").unwrap();
        let held = std::fs::File::open(&victim).unwrap();
        held.lock().unwrap();
        std::os::unix::fs::symlink(&victim, s.path().join(LOCK_FILE)).unwrap();
        assert_eq!(s.running_daemon(), None);
    }

    #[test]
    fn one_lock_per_spool() {
        let (_t, s) = spool();
        let _held = s.lock().unwrap();
        assert_eq!(s.running_daemon(), Some(std::process::id().to_string()));
        let again = Spool::open(s.path()).unwrap();
        let e = again.lock().err().unwrap().to_string();
        assert!(e.contains("another daemon"), "{e}");
    }
}
