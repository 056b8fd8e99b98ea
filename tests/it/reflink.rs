//! Source and target on one reflink-capable filesystem (a loop-mounted
//! btrfs image made here): the copied messages share the source's extents
//! instead of duplicating them, and the migration still verifies.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture::{Host, body};

/// A loop-mounted filesystem image, unmounted when dropped (also on panic).
struct LoopFs(PathBuf);

impl LoopFs {
    fn mount(image: &Path, at: &Path, mkfs: &str) -> Result<LoopFs, String> {
        let run = |cmd: &mut Command| {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        std::fs::File::create(image)
            .and_then(|f| f.set_len(256 << 20))
            .map_err(|e| e.to_string())?;
        run(Command::new(mkfs).arg("-q").arg(image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at))?;
        Ok(LoopFs(at.to_path_buf()))
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Whether every extent of `path` is shared with another file (FIEMAP).
fn extents_shared(path: &Path) -> bool {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| n.trim().parse::<u32>().is_ok())
        })
        .collect();
    !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
}

#[test]
fn copies_on_a_reflink_filesystem_share_extents() {
    let h = Host::new("");
    let image = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reflink-{}.img", std::process::id()));
    let fs = match LoopFs::mount(&image, &h.root, "mkfs.btrfs") {
        Ok(fs) => fs,
        Err(e) => {
            let _ = std::fs::remove_file(&image);
            common::require::skip(&format!("needs to mount a btrfs image: {e}"));
            return;
        }
    };
    // The mount hides what Host::new wrote: lay the host out again.
    std::fs::create_dir_all(&h.old).unwrap();
    std::fs::create_dir_all(&h.new).unwrap();
    std::fs::write(&h.users_old, "# old users\n").unwrap();
    h.write_config(
        "[source]\nuserdb = \"users.old\"\nuserdb_format = \"passwd-file\"\nmail_root = \"oldmail\"\n\
         [target]\nuserdb = \"users.new\"\nuserdb_format = \"passwd-file\"\nmail_root = \"newmail\"\n",
    );
    let source = h.add_user("a@cow.cz", "{PLAIN}x", "");
    let (inbox, sent) = (source.folder(""), source.folder(".Sent"));
    // Bigger than btrfs inlines into metadata (2 KiB), so they have extents.
    for i in 0..20 {
        inbox.msg(
            "cur",
            &format!("{}.M{i}.h:2,S", 1_600_000_000 + i),
            &body(&format!("in-{i}"), 64 * 1024),
            1_600_000_000 + i as i64,
        );
        sent.msg(
            "cur",
            &format!("{}.M{i}.s:2,S", 1_600_000_000 + i),
            &body(&format!("sent-{i}"), 20_000),
            1_600_000_000 + i as i64,
        );
    }
    let job = h.job("j", r#"{"domain": "cow.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["mailboxes"][0]["messages"], 40, "{report:#}");
    let md = h.target_maildir("a@cow.cz");
    let mut checked = 0;
    for dir in [md.join("cur"), md.join(".Sent/cur")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            assert!(extents_shared(&p), "{} is not a reflink", p.display());
            checked += 1;
        }
    }
    assert_eq!(checked, 40);
    let out = h.run(&["verify", "--domain", "cow.cz"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(fs);
    std::fs::remove_file(&image).unwrap();
}
