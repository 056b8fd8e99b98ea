//! maildir-migrate: moves whole mail domains from an old Maildir storage
//! to a new Dovecot one, with passwords, folders, flags, keywords, dates
//! and UIDs kept, and Trash, Spam and Contacts deliberately left behind.
//!
//! The binary needs only `cli`; the integration tests also use a few
//! types of `job`, `maildir::names`, `notify`, `report` and
//! `userdb::scheme`. Everything else is crate-private, so the compiler
//! reports what nothing uses.

#![forbid(unsafe_code)]

pub(crate) mod check;
pub(crate) mod classify;
pub mod cli;
pub(crate) mod config;
pub(crate) mod copy;
pub(crate) mod daemon;
pub(crate) mod db_url;
pub(crate) mod dovecot;
pub(crate) mod exit;
#[cfg(test)]
mod hostile;
pub mod job;
pub mod maildir;
pub(crate) mod metrics;
pub(crate) mod migrate;
pub mod notify;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod queue;
pub mod report;
pub(crate) mod safe_fs;
#[cfg(test)]
mod serde_keys;
pub(crate) mod shown;
pub(crate) mod spool;
pub(crate) mod status;
pub(crate) mod throttle;
pub mod userdb;
pub(crate) mod vars;

/// The README's Architecture section, checked: a module uses modules of
/// its own group or of groups further down, never of a group above it.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// The README's groups, top first.
    const GROUPS: &[&[&str]] = &[
        &["cli", "check", "daemon", "metrics", "status", "exit"],
        &["spool"],
        &["migrate", "plan"],
        &["config"],
        &["notify", "queue"],
        &["userdb"],
        &[
            "maildir", "copy", "dovecot", "classify", "report", "progress", "throttle",
        ],
        &["job", "vars", "safe_fs", "shown", "db_url"],
    ];

    fn layer(module: &str) -> Option<usize> {
        GROUPS.iter().position(|g| g.contains(&module))
    }

    /// The modules `code` names as `crate::<module>`.
    fn used(code: &str) -> impl Iterator<Item = &str> {
        code.split("crate::").skip(1).map(|rest| {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
    }

    #[test]
    fn modules_use_only_their_own_group_or_lower_ones() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut upwards = Vec::new();
        for entry in walkdir::WalkDir::new(&src) {
            let path = entry.unwrap().into_path();
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let module = rel.split(['/', '.']).next().unwrap().to_string();
            let Some(own) = layer(&module) else { continue };
            if !rel.ends_with(".rs") || rel.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests may reach anywhere.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            for other in used(code) {
                if layer(other).is_some_and(|l| l < own) {
                    upwards.push(format!("{rel} uses crate::{other}"));
                }
            }
        }
        assert!(
            GROUPS
                .iter()
                .flat_map(|g| g.iter())
                .all(|m| { src.join(format!("{m}.rs")).exists() || src.join(m).is_dir() })
        );
        assert_eq!(upwards, Vec::<String>::new());
    }
}
