//! `courierimapsubscribed` (Maildir root): one full IMAP name per line,
//! with Courier's `INBOX.` prefix and `.` as the hierarchy separator:
//!
//! ```text
//! INBOX
//! INBOX.Sent
//! INBOX.Koš            (UTF-8 in Courier ≥ 5.0; INBOX.Ko&AWE- before)
//! INBOX.Archive.2019
//! ```
//!
//! Each level is decoded with the same rules as folder directory names
//! ([`decode_level`]), so a subscription names the same [`FolderName`] as
//! the directory it refers to; re-encoding for the target is the caller's
//! choice ([`Subscription::storage_levels`]).

use crate::maildir::names::{FolderName, NameEncoding, decode_level};
use crate::shown;

/// The largest file accepted: one line per subscribed folder, as for
/// Dovecot's `subscriptions`.
pub const MAX_BYTES: usize = crate::maildir::subscriptions::MAX_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribedError {
    #[error("courierimapsubscribed is larger than {MAX_BYTES} bytes ({size} bytes)")]
    TooLarge { size: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscription {
    Inbox,
    Folder(FolderName),
}

impl Subscription {
    /// Levels for Dovecot's `subscriptions` file in the target's encoding
    /// (see [`crate::maildir::subscriptions::to_v2_bytes`]).
    pub fn storage_levels(&self, encoding: NameEncoding) -> Vec<String> {
        match self {
            Subscription::Inbox => vec!["INBOX".to_string()],
            Subscription::Folder(name) => name.storage_levels(encoding),
        }
    }
}

/// A line that produced no subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    pub line: usize,
    /// The line as found, escaped and cut short ([`crate::shown`]).
    pub raw: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribed {
    /// In file order, each once.
    pub entries: Vec<Subscription>,
    /// Deliberately not converted: shared and public folders, names
    /// outside `INBOX.`.
    pub skipped: Vec<SkippedLine>,
    /// Names that cannot be decoded into a folder name.
    pub invalid: Vec<SkippedLine>,
}

/// Courier namespaces that are not the user's own folders. `shared.` is
/// the filesystem-shared namespace, `#shared.` the ACL-shared one and
/// `public` SMAP's; none has a Dovecot equivalent on disk.
const OTHER_NAMESPACES: &[(&[u8], &str)] = &[
    (b"#shared", "Courier ACL-shared folder (#shared namespace)"),
    (
        b"shared",
        "Courier filesystem-shared folder (shared namespace)",
    ),
    (b"public", "Courier SMAP public folder (public namespace)"),
];

fn namespace(line: &[u8], prefix: &[u8]) -> bool {
    line.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        && matches!(line.get(prefix.len()), None | Some(b'.'))
}

pub fn parse(data: &[u8]) -> Result<Subscribed, SubscribedError> {
    if data.len() > MAX_BYTES {
        return Err(SubscribedError::TooLarge { size: data.len() });
    }
    let mut out = Subscribed::default();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let no = i + 1;
        let skip = |reason: &str| SkippedLine {
            line: no,
            raw: shown::bytes(line),
            reason: reason.to_string(),
        };
        let sub = if line.eq_ignore_ascii_case(b"INBOX") {
            Subscription::Inbox
        } else if namespace(line, b"INBOX") {
            match folder(line.get(b"INBOX.".len()..).unwrap_or_default()) {
                Ok(name) => Subscription::Folder(name),
                Err(reason) => {
                    out.invalid.push(skip(&reason));
                    continue;
                }
            }
        } else if let Some((_, reason)) = OTHER_NAMESPACES.iter().find(|(p, _)| namespace(line, p))
        {
            out.skipped.push(skip(reason));
            continue;
        } else {
            out.skipped.push(skip("not in Courier's INBOX. namespace"));
            continue;
        };
        if !out.entries.contains(&sub) {
            out.entries.push(sub);
        }
    }
    Ok(out)
}

/// The reason quotes nothing: the line is already shown beside it.
fn folder(rest: &[u8]) -> Result<FolderName, String> {
    let mut levels = Vec::new();
    for raw in rest.split(|&b| b == b'.') {
        if raw.is_empty() {
            return Err("empty hierarchy level".to_string());
        }
        let (level, _) = decode_level(raw).map_err(|e| format!("a level {}", e.problem()))?;
        // A directory name cannot hold '/', so no folder matches it.
        if level.contains('/') {
            return Err("a level contains '/'".to_string());
        }
        levels.push(level);
    }
    FolderName::from_levels(levels).map_err(|e| format!("the name {}", e.problem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_ok(data: &[u8]) -> Subscribed {
        parse(data).unwrap()
    }

    fn shown(s: &Subscribed) -> Vec<String> {
        s.entries
            .iter()
            .map(|e| match e {
                Subscription::Inbox => "INBOX".to_string(),
                Subscription::Folder(n) => n.to_string(),
            })
            .collect()
    }

    #[test]
    fn courier_5_file() {
        let s = parse_ok("INBOX\nINBOX.Sent\nINBOX.Koš\nINBOX.Archive.2019\n".as_bytes());
        assert_eq!(shown(&s), ["INBOX", "Sent", "Koš", "Archive/2019"]);
        assert!(s.skipped.is_empty() && s.invalid.is_empty());
        let levels: Vec<Vec<String>> = s
            .entries
            .iter()
            .map(|e| e.storage_levels(NameEncoding::Mutf7))
            .collect();
        assert_eq!(
            levels,
            vec![
                vec!["INBOX"],
                vec!["Sent"],
                vec!["Ko&AWE-"],
                vec!["Archive", "2019"]
            ]
        );
    }

    #[test]
    fn old_courier_mutf7_and_odd_lines() {
        let s = parse_ok(
            b"inbox\r\nINBOX.Ko&AWE-\nInbox.Tom & Jerry\nINBOX.Ko\xc5\xa1\n\nINBOX.Sent\nINBOX.Sent\n",
        );
        // Both encodings of one name collapse into one entry.
        assert_eq!(shown(&s), ["INBOX", "Koš", "Tom & Jerry", "Sent"]);
    }

    #[test]
    fn shared_and_foreign_lines_are_skipped() {
        let s = parse_ok(b"shared.bob.Inbox\n#shared.alice.Sent\n#shared\npublic.x\nSent\nsharedstuff\nINBOX.ok\n");
        assert_eq!(shown(&s), ["ok"]);
        let reasons: Vec<(usize, &str)> = s
            .skipped
            .iter()
            .map(|l| (l.line, l.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 6);
        assert!(reasons[0].1.contains("filesystem-shared"));
        assert!(reasons[1].1.contains("ACL-shared"));
        assert!(reasons[2].1.contains("ACL-shared"));
        assert!(reasons[3].1.contains("public"));
        assert_eq!(reasons[4], (5, "not in Courier's INBOX. namespace"));
        assert_eq!(reasons[5].0, 6);
    }

    #[test]
    fn undecodable_lines_are_reported() {
        let s =
            parse_ok(b"INBOX.\nINBOX.a..b\nINBOX.caf\xe9\nINBOX.a\x01b\nINBOX.a/b\nINBOX.fine\n");
        assert_eq!(shown(&s), ["fine"]);
        let lines: Vec<usize> = s.invalid.iter().map(|l| l.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5]);
        assert!(
            s.invalid[2].reason.contains("neither"),
            "{:?}",
            s.invalid[2]
        );
        assert!(s.invalid[4].reason.contains('/'));
    }

    #[test]
    fn size_is_capped_and_messages_are_brief() {
        let full = b"INBOX\n".repeat(MAX_BYTES / 6);
        assert_eq!(parse_ok(&full).entries.len(), 1);
        let garbage = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        let e = parse(&garbage).unwrap_err().to_string();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        let near_cap = &garbage[..MAX_BYTES - 100];
        let mut messages = vec![e];
        for data in [
            near_cap.to_vec(),
            [&b"INBOX."[..], near_cap].concat(),
            format!("INBOX.a/{}", "é".repeat(400_000)).into_bytes(),
            [&b"INBOX.a.."[..], near_cap].concat(),
        ] {
            let s = parse_ok(&data);
            let l = s.skipped.iter().chain(&s.invalid).next().unwrap();
            messages.push(format!(
                "subscription {:?} (line {}) dropped: {}",
                l.raw, l.line, l.reason
            ));
        }
        for s in messages {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_accounts_for_every_line(
            data in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let s = parse_ok(&data);
            let nonempty = data
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty() && *l != b"\r")
                .count();
            prop_assert!(s.entries.len() + s.skipped.len() + s.invalid.len() <= nonempty);
            prop_assert!(s.skipped.len() + s.invalid.len() <= nonempty);
        }

        #[test]
        fn folder_names_round_trip(
            names in proptest::collection::vec(
                proptest::collection::vec("[^./\\p{Cc}&]{1,8}", 1..3), 0..5),
        ) {
            let mut data = Vec::new();
            for levels in &names {
                data.extend_from_slice(b"INBOX.");
                data.extend_from_slice(levels.join(".").as_bytes());
                data.push(b'\n');
            }
            let s = parse_ok(&data);
            prop_assert!(s.invalid.is_empty(), "{:?}", s.invalid);
            let mut want: Vec<FolderName> = Vec::new();
            for levels in names {
                let n = FolderName::from_levels(levels).unwrap();
                if !want.contains(&n) {
                    want.push(n);
                }
            }
            let got: Vec<FolderName> = s.entries.into_iter().map(|e| match e {
                Subscription::Folder(n) => n,
                Subscription::Inbox => unreachable!(),
            }).collect();
            prop_assert_eq!(got, want);
        }
    }

    fn subscribed_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"INBOX"[..],
            b"inbox",
            b"INBOX.",
            b".",
            b"shared.",
            b"#shared",
            b"public",
            b"Sent",
            b"&AWE-",
            b"&-",
            b"&",
            "Koš".as_bytes(),
            b"/",
            b"\n",
            b"\r\n",
            b"\xff",
            b"\0",
            b"\x01",
        ];
        crate::hostile::fragments(piece, 20)
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_entries_round_trip_through_dovecot(
            data in crate::hostile::or_any_bytes(subscribed_like(), 400),
        ) {
            let s = parse_ok(&data);
            for l in s.skipped.iter().chain(&s.invalid) {
                prop_assert!(!l.raw.chars().any(char::is_control), "{l:?}");
                prop_assert!(!l.reason.chars().any(char::is_control), "{l:?}");
            }
            // What Dovecot's subscriptions file gets names the same folder.
            for e in &s.entries {
                let levels = e.storage_levels(NameEncoding::Mutf7);
                let bytes = crate::maildir::subscriptions::to_v2_bytes(&[levels]);
                let back = crate::maildir::subscriptions::parse(&bytes).unwrap();
                prop_assert_eq!(back.len(), 1);
                match e {
                    Subscription::Inbox => prop_assert_eq!(&back[0], &vec![b"INBOX".to_vec()]),
                    Subscription::Folder(name) => {
                        let decoded: Vec<String> = back[0]
                            .iter()
                            .map(|l| decode_level(l).map(|(s, _)| s))
                            .collect::<Result<_, _>>()
                            .unwrap();
                        prop_assert_eq!(&FolderName::from_levels(decoded).unwrap(), name);
                    }
                }
            }
        }
    }
}
