//! `courierimapacl` (per folder) → `dovecot-acl` lines.
//!
//! Both are `<identifier> <rights>` per line with `-` before the identifier
//! for negative rights. Courier's rights `a c e i l r s t w x p` map to
//! Dovecot's with `c` (create subfolders) → `k`; the obsolete RFC 2086 `d`
//! becomes `t e x` as Courier expands it. Courier's default (owner and
//! administrators with everything) needs no Dovecot file: Dovecot's
//! default already gives the owner every right.

use std::collections::BTreeSet;

use crate::shown;

/// The largest file accepted: one short line per identifier granted rights
/// on one folder. Sharing goes to groups, so real files have a few lines;
/// 64 KiB holds a thousand users.
pub const MAX_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("courierimapacl is larger than {MAX_BYTES} bytes ({size} bytes)")]
    TooLarge { size: usize },
}

/// Dovecot's rights letters in its canonical order.
const DOVECOT_ORDER: &str = "lrwstipekxa";
/// Courier's ACL_ALL, mapped: what owner and administrators have by default.
const ALL: &str = "lrwstiekxa";
const ADMINS: &str = "group=administrators";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclConversion {
    /// `None` when the ACL is Courier's default (write no `dovecot-acl`),
    /// else the `dovecot-acl` lines.
    pub lines: Option<Vec<String>>,
    /// Entries or rights that could not be converted, and risky results.
    pub warnings: Vec<String>,
}

impl AclConversion {
    /// The `dovecot-acl` file contents, if one is needed.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        self.lines.as_ref().map(|lines| {
            let mut out = String::new();
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
            out.into_bytes()
        })
    }
}

struct Entry {
    negative: bool,
    id: String,
    rights: BTreeSet<char>,
}

fn identifier(raw: &str) -> Option<String> {
    // Courier itself rejects identifiers with spaces or control bytes.
    if raw.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    match raw {
        "owner" => Some("owner".into()),
        // Courier treats both as everybody, Dovecot calls it `anyone`.
        "anyone" | "anonymous" => Some("anyone".into()),
        "administrators" | ADMINS => Some(ADMINS.into()),
        _ => ["user=", "group="]
            .iter()
            .find(|p| raw.len() > p.len() && raw.starts_with(*p))
            .map(|_| raw.to_string()),
    }
}

fn rights(raw: &str, unknown: &mut BTreeSet<char>) -> BTreeSet<char> {
    let mut out = BTreeSet::new();
    for c in raw.chars() {
        match c {
            'c' => {
                out.insert('k');
            }
            'd' => out.extend(['t', 'e', 'x']),
            'a' | 'e' | 'i' | 'l' | 'r' | 's' | 't' | 'w' | 'x' | 'p' => {
                out.insert(c);
            }
            _ => {
                unknown.insert(c);
            }
        }
    }
    out
}

fn letters(set: &BTreeSet<char>) -> String {
    DOVECOT_ORDER.chars().filter(|c| set.contains(c)).collect()
}

/// Converts one folder's `courierimapacl`; only an over-sized file is an
/// error, anything else unusable is left out with a warning.
pub fn convert(data: &[u8]) -> Result<AclConversion, AclError> {
    if data.len() > MAX_BYTES {
        return Err(AclError::TooLarge { size: data.len() });
    }
    let mut warnings = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if let Some(entry) = entry(i + 1, line, &mut warnings) {
            add(&mut entries, entry);
        }
    }

    // Courier gives administrators every right whatever the file says.
    match entries.iter_mut().find(|e| !e.negative && e.id == ADMINS) {
        Some(e) => e.rights.extend(ALL.chars()),
        None => entries.push(Entry {
            negative: false,
            id: ADMINS.into(),
            rights: ALL.chars().collect(),
        }),
    }
    entries.retain(|e| !e.rights.is_empty());

    if is_default(&entries) {
        return Ok(AclConversion {
            lines: None,
            warnings,
        });
    }
    if !entries.iter().any(|e| !e.negative && e.id == "owner") {
        warnings.push(
            "courierimapacl has no owner entry: in Dovecot the owner gets only what other entries grant"
                .to_string(),
        );
    }
    let lines = entries
        .iter()
        .map(|e| {
            format!(
                "{}{} {}",
                if e.negative { "-" } else { "" },
                e.id,
                letters(&e.rights)
            )
        })
        .collect();
    Ok(AclConversion {
        lines: Some(lines),
        warnings,
    })
}

/// Line `no` as an entry: `None` for a blank line, an unusable one (with
/// a warning) or one Courier ignores itself.
fn entry(no: usize, line: &[u8], warnings: &mut Vec<String>) -> Option<Entry> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(|&b| b == b' ') {
        return None;
    }
    let Ok(line) = std::str::from_utf8(line) else {
        warnings.push(format!(
            "courierimapacl line {no}: not UTF-8, ignored: {:?}",
            shown::bytes(line)
        ));
        return None;
    };
    let (raw_id, raw_rights) = match line.split_once(' ') {
        Some((id, r)) => (id, r.trim_matches(' ')),
        None => (line, ""),
    };
    let (negative, bare) = match raw_id.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, raw_id),
    };
    let Some(id) = identifier(bare) else {
        warnings.push(format!(
            "courierimapacl line {no}: unknown identifier {:?}, entry ignored",
            shown::text(raw_id)
        ));
        return None;
    };
    // Courier drops negative administrator entries when it reads.
    if negative && id == ADMINS {
        return None;
    }
    let mut unknown = BTreeSet::new();
    let set = rights(raw_rights, &mut unknown);
    if !unknown.is_empty() {
        let u: String = unknown.into_iter().collect();
        warnings.push(format!(
            "courierimapacl line {no}: unknown rights {:?} for {:?} dropped",
            shown::text(&u),
            shown::text(raw_id)
        ));
    }
    Some(Entry {
        negative,
        id,
        rights: set,
    })
}

/// Courier keeps the last line for an identifier; the two spellings of
/// administrators are one Dovecot identifier.
fn add(entries: &mut Vec<Entry>, entry: Entry) {
    match entries
        .iter_mut()
        .find(|e| e.negative == entry.negative && e.id == entry.id)
    {
        Some(e) if entry.id == ADMINS => e.rights.extend(entry.rights),
        Some(e) => e.rights = entry.rights,
        None => entries.push(entry),
    }
}

/// Courier's default: the owner with every right, administrators, nobody
/// else (Dovecot's default then says the same without a file).
fn is_default(entries: &[Entry]) -> bool {
    entries.iter().all(|e| {
        !e.negative
            && (e.id == ADMINS || (e.id == "owner" && ALL.chars().all(|c| e.rights.contains(&c))))
    }) && entries.iter().any(|e| e.id == "owner")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn courier_default_needs_no_file() {
        for data in [
            &b"owner aceilrstwx\nadministrators aceilrstwx\n"[..],
            b"owner aceilrstwx\n",
            b"owner aceilrstwxp\r\ngroup=administrators lr\n",
            b"administrators aceilrstwx\nowner aceilrstwx\n-administrators l\nanyone \n",
        ] {
            let c = convert(data).unwrap();
            assert_eq!(c.lines, None, "{:?}", String::from_utf8_lossy(data));
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
            assert_eq!(c.to_bytes(), None);
        }
    }

    #[test]
    fn sharing_is_converted() {
        let c = convert(
            b"owner aceilrstwx\nadministrators aceilrstwx\nuser=mary lrs\n-user=bob w\nanonymous lr\ngroup=staff lrc\n",
        ).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            String::from_utf8(c.to_bytes().unwrap()).unwrap(),
            "owner lrwstiekxa\ngroup=administrators lrwstiekxa\nuser=mary lrs\n-user=bob w\nanyone lr\ngroup=staff lrk\n"
        );
    }

    #[test]
    fn restricted_owner_and_obsolete_delete() {
        let c = convert(b"owner lrd\n").unwrap();
        assert_eq!(
            c.lines.unwrap(),
            ["owner lrtex", "group=administrators lrwstiekxa"]
        );
    }

    #[test]
    fn unknown_entries_are_reported() {
        let c = convert(
            b"owner aceilrstwx\nuser=ann lrZ9\nrobot lr\nuser= lr\nauthenticated r\n\xff r\n",
        )
        .unwrap();
        assert_eq!(
            c.lines.unwrap(),
            [
                "owner lrwstiekxa",
                "user=ann lr",
                "group=administrators lrwstiekxa"
            ]
        );
        let all = c.warnings.join("\n");
        assert!(all.contains("line 2: unknown rights \"9Z\""), "{all}");
        assert!(
            all.contains("line 3: unknown identifier \"robot\""),
            "{all}"
        );
        assert!(
            all.contains("line 4: unknown identifier \"user=\""),
            "{all}"
        );
        assert!(
            all.contains("line 5: unknown identifier \"authenticated\""),
            "{all}"
        );
        assert!(all.contains("line 6: not UTF-8"), "{all}");
    }

    #[test]
    fn later_lines_win_and_missing_owner_is_flagged() {
        let c = convert(b"user=a lr\nuser=a r\n").unwrap();
        assert_eq!(
            c.lines.unwrap(),
            ["user=a r", "group=administrators lrwstiekxa"]
        );
        assert!(c.warnings[0].contains("no owner entry"));
    }

    #[test]
    fn size_is_capped_and_warnings_are_brief() {
        let full = b"owner aceilrstwx\n".repeat(MAX_BYTES / 17);
        assert_eq!(convert(&full).unwrap().lines, None);
        let garbage = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        let e = convert(&garbage).unwrap_err().to_string();
        assert!(e.contains("larger than 65536 bytes"), "{e}");
        let near_cap = &garbage[..MAX_BYTES - 100];
        let text = String::from_utf8_lossy(&near_cap[..MAX_BYTES / 2]).replace(' ', "");
        let mut messages = vec![e];
        for data in [
            near_cap.to_vec(),
            text.clone().into_bytes(),
            format!("user=x {text}").into_bytes(),
        ] {
            messages.extend(convert(&data).unwrap().warnings);
        }
        for s in messages {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    proptest! {
        #[test]
        fn lines_are_well_formed(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let c = convert(&data).unwrap();
            for l in c.lines.iter().flatten() {
                let (id, rights) = l.split_once(' ').unwrap();
                prop_assert!(!id.is_empty() && !id.contains(['\n', '\r', ' ']));
                prop_assert!(!rights.is_empty());
                prop_assert!(rights.chars().all(|r| DOVECOT_ORDER.contains(r)));
            }
        }

        #[test]
        fn owner_with_all_rights_plus_admins_is_default(extra in "[acdeilprstwx]{0,5}") {
            let data = format!("owner aceilrstwx{extra}\nadministrators {extra}\n");
            prop_assert_eq!(convert(data.as_bytes()).unwrap().lines, None);
        }
    }

    fn acl_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"owner"[..],
            b"-",
            b"anyone",
            b"anonymous",
            b"administrators",
            b"group=administrators",
            b"user=",
            b"group=",
            b"mary",
            b" ",
            b"aceilrstwx",
            b"d",
            b"p",
            b"Z",
            b"\n",
            b"\r\n",
            "é".as_bytes(),
            b"\xff",
            b"\0",
            b"\t",
        ];
        crate::hostile::fragments(piece, 30)
    }

    proptest! {
        #[test]
        fn convert_never_panics_on_hostile_files(
            data in crate::hostile::or_any_bytes(acl_like(), 400),
        ) {
            let c = convert(&data).unwrap();
            for w in &c.warnings {
                prop_assert!(!w.chars().any(char::is_control), "{w}");
            }
            if let Some(bytes) = c.to_bytes() {
                let text = String::from_utf8(bytes).unwrap();
                prop_assert_eq!(text.lines().count(), c.lines.as_ref().map_or(0, Vec::len));
            }
        }
    }
}
