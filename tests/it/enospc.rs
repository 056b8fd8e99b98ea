//! A target filesystem that runs full: the job fails with a clear error,
//! the source is untouched, and once there is room a re-run completes.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture::{Host, body, tree};

/// A size-limited tmpfs, unmounted when dropped (also on panic).
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_target_fails_cleanly_and_a_rerun_completes() {
    let h = Host::new("");
    let Some(fs) = Tmpfs::mount(&h.new, "400k") else {
        common::require::skip("needs to mount a tmpfs (root)");
        return;
    };
    for m in 0..3 {
        let inbox = h
            .add_user(&format!("u{m}@full.cz"), "{PLAIN}x", "")
            .folder("");
        // 4,097 bytes take two 4 KiB pages: the room check (by bytes)
        // passes for the first mailbox, and the copy itself runs out.
        for i in 0..60 {
            let mut b = body(&format!("u{m}-{i}"), 4097);
            b.truncate(4097);
            inbox.msg(
                "cur",
                &format!("{}.M{i}P{m}.h:2,S", 1_600_000_000 + i),
                &b,
                1_600_000_000 + i as i64,
            );
        }
    }
    let source_before = tree(&h.old);
    let users_before = std::fs::read_to_string(&h.users_old).unwrap();
    let job = h.job("j", r#"{"domain": "full.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "{report:#}");
    let failed: Vec<&serde_json::Value> = report["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "failed")
        .collect();
    assert!(!failed.is_empty(), "{report:#}");
    for m in &failed {
        let e = m["error"].as_str().unwrap();
        assert!(e.contains("No space left on device"), "{e}");
        // The failed mailbox keeps its old login.
        let user = m["user"].as_str().unwrap();
        let line = users_before.lines().find(|l| l.starts_with(user)).unwrap();
        let now = std::fs::read_to_string(&h.users_old).unwrap();
        assert!(now.contains(line), "{user} must keep its old entry");
    }
    assert!(tree(&h.old) == source_before, "the source is untouched");

    fs.resize("20m");
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let out = h.run(&["verify", "--domain", "full.cz"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(tree(&h.old) == source_before);
    drop(fs);
}

/// A mailbox bigger than the room left on the target fails before
/// anything is copied, saying how much it needs and how much is free.
#[test]
fn a_mailbox_that_cannot_fit_fails_before_copying() {
    let h = Host::new("");
    let Some(fs) = Tmpfs::mount(&h.new, "400k") else {
        common::require::skip("needs to mount a tmpfs (root)");
        return;
    };
    let inbox = h.add_user("big@full.cz", "{PLAIN}x", "").folder("");
    for i in 0..60 {
        inbox.msg(
            "cur",
            &format!("{}.M{i}P1.h,S=8000:2,S", 1_600_000_000 + i),
            &body(&format!("big-{i}"), 8000)[..8000],
            1_600_000_000 + i as i64,
        );
    }
    let job = h.job("j", r#"{"domain": "full.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 1, "{report:#}");
    let e = report["mailboxes"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("468.8 KiB still to copy, but only")
            && e.contains("free on the target filesystem"),
        "{e}"
    );
    let copied = std::fs::read_dir(h.target_maildir("big@full.cz").join("cur"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(copied, 0, "nothing copied");
    drop(fs);
}
