//! Crash safety of `run`: kill -9 at many moments of a job, then finish
//! it; the result must equal an uninterrupted run's, byte for byte.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fixture::{BIN, Host, body, tree};

const ROUNDS_ENV: &str = "MAILDIR_MIGRATE_KILL_ROUNDS";

fn host() -> Host {
    let h = Host::new("");
    for m in 0..3 {
        let md = h.add_user(&format!("u{m}@kill.cz"), "{PLAIN}x", "");
        let inbox = md.folder("");
        let sent = md.folder(".Sent");
        for i in 0..1500 {
            let f = if i % 3 == 0 { &sent } else { &inbox };
            f.msg(
                "cur",
                &format!("{}.M{i}P{m}.h,S=200:2,S", 1_600_000_000 + i),
                &body(&format!("u{m}-{i}"), 200),
                1_600_000_000 + i as i64,
            );
        }
        inbox.file(
            "dovecot-uidlist",
            format!("3 V1500000000 N{}\n", 900 + m).as_bytes(),
        );
    }
    h
}

/// Path → (type, mode, message mtime, content).
type Tree = BTreeMap<String, (char, u32, i64, Vec<u8>)>;

/// The target tree and both userdbs with the host's own root replaced,
/// so two hosts can be compared.
fn outcome(h: &Host) -> (Tree, String, String) {
    let root = h.root.to_str().unwrap();
    let t = tree(&h.new)
        .into_iter()
        .map(|(k, (kind, mode, _uid, mtime, content))| {
            // Messages keep their mtime (the IMAP date); control files and
            // directories are written when they are written.
            let is_message = ["cur/", "new/"]
                .iter()
                .any(|s| k.contains(&format!("/{s}")) || k.starts_with(s));
            let mtime = if kind == 'f' && is_message { mtime } else { 0 };
            (k, (kind, mode, mtime, content))
        })
        .collect();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().replace(root, "ROOT");
    (t, read(&h.users_old), read(&h.users_new))
}

#[test]
fn kill_9_at_any_moment_then_rerun_equals_an_uninterrupted_run() {
    let rounds: u64 = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let reference = host();
    let job = reference.job("j", r#"{"domain": "kill.cz", "mode": "move"}"#);
    let (code, report) = reference.run_job(&job);
    assert_eq!(code, 0, "{report:#}");
    let want = outcome(&reference);

    let h = host();
    let job = h.job("j", r#"{"domain": "kill.cz", "mode": "move"}"#);
    // A fixed sequence of kill moments from a few ms to well into the job.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut killed = 0;
    for _ in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(2 + seed % 50);
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&h.config)
            .args(["run", "--no-progress"])
            .arg(&job)
            .env("MAILDIR_MIGRATE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        // Userdbs are never partial: every line parses as an entry.
        for db in [&h.users_old, &h.users_new] {
            if let Ok(text) = std::fs::read_to_string(db) {
                assert!(text.is_empty() || text.ends_with('\n'), "{}", db.display());
                for l in text.lines().filter(|l| !l.starts_with('#')) {
                    assert!(l.split(':').count() >= 7, "partial line {l:?}");
                }
            }
        }
    }
    // Later rounds of a long soak may find the job already done.
    let wanted = rounds.min(20) / 2;
    assert!(
        killed >= wanted,
        "only {killed} of {rounds} runs were killed mid-job"
    );
    let (code, report) = h.run_job(&job);
    assert!(code == 0, "{report:#}");
    let got = outcome(&h);
    assert!(
        got.1 == want.1,
        "old userdb differs:\n{}\n---\n{}",
        got.1,
        want.1
    );
    assert!(
        got.2 == want.2,
        "new userdb differs:\n{}\n---\n{}",
        got.2,
        want.2
    );
    let (g, w) = (&got.0, &want.0);
    let differ: Vec<_> = g
        .keys()
        .chain(w.keys())
        .filter(|k| g.get(*k) != w.get(*k))
        .take(5)
        .collect();
    assert!(differ.is_empty(), "target differs at {differ:?}");
    eprintln!(
        "{killed} of {rounds} runs killed mid-job; the final state equals the uninterrupted run"
    );
}
