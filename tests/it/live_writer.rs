//! A live mailbox during the job: a writer delivers new mail (tmp → new),
//! changes flags and expunges until the old login is refused; after the
//! job the target holds exactly the source's final state.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::fixture::{Host, body};

#[test]
fn changes_while_copying_all_arrive_exactly_once() {
    let cfg_extra = "[cutover]\nfreeze_grace = 1\n";
    let h = Host::new("");
    let cfg = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&format!("{cfg}{cfg_extra}"));
    let md = h.add_user("busy@live.cz", "{PLAIN}x", "");
    let inbox = md.folder("");
    for i in 0..4000 {
        inbox.msg(
            "cur",
            &format!("{}.M{i}P1.h:2,S", 1_600_000_000 + i),
            &body(&format!("m{i}"), 300),
            1_600_000_000 + i as i64,
        );
    }
    // A second mailbox so the job is still copying when the writer starts.
    let other = h.add_user("quiet@live.cz", "{PLAIN}x", "").folder("");
    for i in 0..2000 {
        other.msg("cur", &format!("{i}.q:2,"), &body("q", 300), 1_600_000_000);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let root = inbox.0.clone();
        let users = h.users_old.clone();
        std::thread::spawn(move || writer(&root, &users, &stop))
    };
    let job = h.job("j", r#"{"domain": "live.cz", "mode": "move"}"#);
    let (code, report) = h.run_job(&job);
    stop.store(true, Ordering::SeqCst);
    let ops = writer.join().unwrap();
    assert_eq!(code, 0, "{report:#}");
    assert!(
        ops > 20,
        "the writer ran while the job copied ({ops} operations)"
    );

    let out = h.run(&["verify", "--domain", "live.cz", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // And explicitly: the final source listing equals the target's.
    let names = |p: &Path| {
        let mut v: Vec<String> = ["cur", "new"]
            .iter()
            .flat_map(|s| std::fs::read_dir(p.join(s)).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&inbox.0), names(&h.target_maildir("busy@live.cz")));
    let freeze = &report["mailboxes"][0]["freeze_ms"];
    assert!(
        freeze.as_u64().unwrap() >= 1000,
        "includes the 1 s grace: {freeze}"
    );
    eprintln!("{ops} writer operations during the job; target equals source; freeze {freeze} ms");
}

/// Delivers, flags and expunges in turn until the old entry says nologin
/// (the freeze); returns how many operations it made.
fn writer(root: &Path, users: &Path, stop: &AtomicBool) -> u64 {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if std::fs::read_to_string(users).is_ok_and(|t| t.contains("nologin")) {
            break;
        }
        match n % 3 {
            0 => {
                let name = format!("1700000000.M{n}P9.writer");
                let tmp = root.join("tmp").join(&name);
                std::fs::write(&tmp, body(&format!("late {n}"), 300)).unwrap();
                std::fs::rename(&tmp, root.join("new").join(&name)).unwrap();
            }
            1 => {
                let i = 1_600_000_000 + (n * 7) % 4000;
                let from = root
                    .join("cur")
                    .join(format!("{i}.M{}P1.h:2,S", i - 1_600_000_000));
                let to = root
                    .join("cur")
                    .join(format!("{i}.M{}P1.h:2,FS", i - 1_600_000_000));
                let _ = std::fs::rename(from, to);
            }
            _ => {
                let i = 1_600_000_000 + (n * 13 + 5) % 4000;
                let _ = std::fs::remove_file(
                    root.join("cur")
                        .join(format!("{i}.M{}P1.h:2,S", i - 1_600_000_000)),
                );
            }
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    n
}
