//! Crash safety of `run`: kill -9 at many moments of a job, then finish
//! it; the result must equal an uninterrupted run's, byte for byte. The
//! moments are steps of the job (lines of its debug log: a copied message,
//! a finished mailbox, …), not delays, so a slow or loaded machine kills
//! as many runs mid-job as a fast one.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

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

/// What one run of the job did, from its log.
struct Round {
    status: ExitStatus,
    /// Log lines seen (one per step of the job).
    steps: usize,
    started: bool,
    finished: bool,
    last_lines: Vec<String>,
}

impl Round {
    /// Killed after the job had started and before it had finished.
    fn killed_mid_job(&self) -> bool {
        let sigkill = nix::sys::signal::Signal::SIGKILL as i32;
        self.started && !self.finished && self.status.signal() == Some(sigkill)
    }
}

/// Runs the job with its debug log on a pipe; with `kill_after`, kill -9
/// as soon as that many log lines have arrived.
fn run_logged(h: &Host, job: &Path, kill_after: Option<usize>) -> Round {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&h.config)
        .args(["run", "--no-progress"])
        .arg(job)
        .env("MAILDIR_MIGRATE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = BufReader::new(child.stderr.take().unwrap());
    let (mut steps, mut started, mut finished) = (0, false, false);
    let mut last_lines = Vec::new();
    for line in log.split(b'\n') {
        let line = String::from_utf8_lossy(&line.unwrap()).into_owned();
        steps += 1;
        started |= line.contains("job started");
        finished |= line.contains("job finished");
        last_lines.push(line);
        if last_lines.len() > 20 {
            last_lines.remove(0);
        }
        if kill_after == Some(steps) {
            child.kill().unwrap();
            break;
        }
    }
    Round {
        status: child.wait().unwrap(),
        steps,
        started,
        finished,
        last_lines,
    }
}

#[test]
fn kill_9_at_any_moment_then_rerun_equals_an_uninterrupted_run() {
    let rounds: u64 = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let reference = host();
    let job = reference.job("j", r#"{"domain": "kill.cz", "mode": "move"}"#);
    let full = run_logged(&reference, &job, None);
    assert_eq!(full.status.code(), Some(0), "{:#?}", full.last_lines);
    assert!(full.started && full.finished, "{:#?}", full.last_lines);
    let want = outcome(&reference);

    let h = host();
    let job = h.job("j", r#"{"domain": "kill.cz", "mode": "move"}"#);
    // A fixed sequence of kill moments, each within the first 2/rounds of
    // an uninterrupted run's steps: on average the rounds together take
    // the job to its end, so the kills spread over all of it.
    let window = (2 * full.steps as u64 / rounds.max(1)).max(1);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let (mut killed, mut with_work) = (0, 0);
    let mut done = false;
    for _ in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let r = run_logged(&h, &job, Some(1 + (seed % window) as usize));
        if !done {
            with_work += 1;
        }
        if r.killed_mid_job() {
            killed += 1;
        }
        done |= r.status.success();
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
    // Later rounds of a long soak may find the job already done; while it
    // was not, nearly every kill must have landed mid-job.
    let wanted = rounds.min(20) / 2;
    assert!(
        killed >= wanted,
        "only {killed} of {rounds} runs were killed mid-job"
    );
    assert!(
        killed * 4 >= with_work * 3,
        "only {killed} of the {with_work} runs before the job was done were killed mid-job"
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
        "{killed} of {rounds} runs killed mid-job ({with_work} before it was done); the final state equals the uninterrupted run"
    );
}
