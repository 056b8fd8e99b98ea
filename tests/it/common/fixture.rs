//! Builds old mail hosts in temporary directories for the integration
//! tests: a passwd-file userdb, Maildirs with folders, messages, control
//! files and traps, and a config file; runs the real binary on them.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_maildir-migrate");

pub struct Host {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub old: PathBuf,
    pub new: PathBuf,
    pub users_old: PathBuf,
    pub users_new: PathBuf,
    pub config: PathBuf,
}

impl Host {
    /// An empty host: `oldmail/`, `newmail/`, an empty `users.old` and a
    /// config with separate userdbs (`extra_config` is appended).
    pub fn new(extra_config: &str) -> Host {
        let tmp = tempfile::Builder::new()
            .prefix("mm-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let root = tmp.path().to_path_buf();
        let h = Host {
            old: root.join("oldmail"),
            new: root.join("newmail"),
            users_old: root.join("users.old"),
            users_new: root.join("users.new"),
            config: root.join("config.toml"),
            root,
            _tmp: tmp,
        };
        std::fs::create_dir_all(&h.old).unwrap();
        std::fs::create_dir_all(&h.new).unwrap();
        std::fs::write(&h.users_old, "# old users\n").unwrap();
        h.write_config(&format!(
            "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n\
             [target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\n{extra_config}"
        ));
        h
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Adds `user` to users.old with home `oldmail/<domain>/<local>` and
    /// returns its (not yet created) Maildir.
    pub fn add_user(&self, user: &str, hash: &str, extra: &str) -> Maildir {
        let (local, domain) = user.split_once('@').unwrap();
        let home = self.old.join(domain).join(local);
        let mut text = std::fs::read_to_string(&self.users_old).unwrap();
        text.push_str(&format!(
            "{user}:{hash}:1000:1000::{}::{extra}\n",
            home.display()
        ));
        std::fs::write(&self.users_old, text).unwrap();
        Maildir(home.join("Maildir"))
    }

    pub fn job(&self, name: &str, json: &str) -> PathBuf {
        let p = self.root.join(format!("{name}.json"));
        std::fs::write(&p, json).unwrap();
        p
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_with(&self.config, args)
    }

    /// Runs a job with `--json` and returns (exit code, report).
    pub fn run_job(&self, job: &Path) -> (i32, serde_json::Value) {
        let out = self.run(&["run", "--json", job.to_str().unwrap()]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), report)
    }

    pub fn target_maildir(&self, user: &str) -> PathBuf {
        let (local, domain) = user.split_once('@').unwrap();
        self.new.join(domain).join(local).join("Maildir")
    }
}

/// Runs the binary with `config` and `args` (log level warn).
pub fn run_with(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("MAILDIR_MIGRATE_LOG", "warn")
        .output()
        .unwrap()
}

pub struct Maildir(pub PathBuf);

impl Maildir {
    /// A folder by its on-disk directory name ("" for INBOX); created
    /// with cur/new/tmp (and maildirfolder below the root).
    pub fn folder(&self, dir: &str) -> Folder {
        let p = if dir.is_empty() {
            self.0.clone()
        } else {
            self.0.join(dir)
        };
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(p.join(sub)).unwrap();
        }
        if !dir.is_empty() {
            std::fs::write(p.join("maildirfolder"), "").unwrap();
        }
        Folder(p)
    }
}

pub struct Folder(pub PathBuf);

impl Folder {
    /// A message file in `sub` ("cur" or "new") with the given mtime.
    pub fn msg(&self, sub: &str, name: &str, body: &[u8], mtime: i64) -> &Folder {
        let p = self.0.join(sub).join(name);
        std::fs::write(&p, body).unwrap();
        set_mtime(&p, mtime);
        self
    }

    pub fn file(&self, name: &str, content: &[u8]) -> &Folder {
        std::fs::write(self.0.join(name), content).unwrap();
        self
    }
}

pub fn set_mtime(p: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

/// A body of about `n` bytes, with a header so it looks like mail.
pub fn body(tag: &str, n: usize) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\nFrom: a@example.net\n\n").into_bytes();
    while b.len() < n {
        b.extend_from_slice(tag.as_bytes());
        b.push(b'\n');
    }
    b
}

/// Every entry below `root`: relative path → (type, mode, uid, mtime, content).
pub fn tree(root: &Path) -> BTreeMap<String, (char, u32, u32, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, u32, i64, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, content) = if m.is_dir() {
                ('d', vec![])
            } else if m.file_type().is_symlink() {
                ('l', vec![])
            } else if m.is_file() {
                ('f', std::fs::read(&p).unwrap())
            } else {
                ('o', vec![])
            };
            out.insert(rel, (kind, m.mode() & 0o7777, m.uid(), m.mtime(), content));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// One string field of every element of a JSON array.
pub fn column<'a>(array: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    array
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {array}"))
        .iter()
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {e}"))
        })
        .collect()
}
