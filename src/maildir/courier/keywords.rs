//! `courierimapkeywords/`: Courier's IMAP keywords, converted to
//! `dovecot-keywords` plus letters in the message file names.
//!
//! ```text
//! :list                  name table, an empty line, then `<base>:<idx> <idx>…`
//! .<N>.<base>            update: the message's whole keyword set, one per line
//! <base>                 newer update, not yet versioned
//! ```
//!
//! Courier folds updates into `:list` lazily, so the effective set of a
//! message is the plain `<base>` file if present, else the `.N.<base>` file
//! with the largest N, else its `:list` entry. An empty update file means
//! "no keywords". (Dovecot's migration script looks `.N.` files up under
//! their full name and silently loses them; here they are keyed by base.)

use super::{numbered_lines, shown};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::maildir::keywords::{self, Keywords};
use crate::maildir::split_once;

/// Dovecot can show at most this many keywords per folder from file names.
pub const MAX_LETTERS: usize = 26;
/// The longest keyword carried, in bytes. Real ones are words (Dovecot
/// creates none longer than 50 by default); the cap keeps 26 of them
/// within what `dovecot-keywords` may hold.
pub const MAX_KEYWORD: usize = 1024;
// Index, space and newline around each name.
const _: () = assert!(MAX_LETTERS * (MAX_KEYWORD + 4) <= keywords::MAX_BYTES);
/// The longest `:list` line: a name of at most [`MAX_KEYWORD`] bytes, or a
/// file name of at most 255 bytes with the indexes of thousands of
/// keywords. (The file itself grows with the folder.)
pub const MAX_LIST_LINE: usize = 64 << 10;
/// The largest update file: one message's keywords, one per line.
pub const MAX_UPDATE_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("courierimapkeywords/:list line {line}: {problem}")]
pub struct KeywordListError {
    pub line: usize,
    pub problem: String,
}

/// The effective keywords of a folder's messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergedKeywords {
    /// Base name → keywords; only messages with at least one keyword.
    /// Names are valid IMAP keywords, spelled as first seen when Courier
    /// had variants differing only in case.
    pub messages: BTreeMap<Vec<u8>, BTreeSet<String>>,
    /// Skipped update files, dropped names, case merges.
    pub warnings: Vec<String>,
}

impl MergedKeywords {
    /// Forgets messages that no longer exist (Courier keeps stale entries
    /// until its next scan); do this before [`assign_letters`] so they
    /// take no letter.
    pub fn retain_present(&mut self, present: &[Vec<u8>]) {
        let present: HashSet<&[u8]> = present.iter().map(|b| &b[..]).collect();
        self.messages.retain(|base, _| present.contains(&base[..]));
    }
}

/// A keyword Dovecot accepts: an IMAP atom (RFC 3501 `flag-keyword`),
/// i.e. printable ASCII without `( ) { % * " \ ]` and no space, and at
/// most [`MAX_KEYWORD`] bytes.
pub fn is_valid_keyword(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEYWORD
        && name.iter().all(|&b| {
            (0x21..=0x7e).contains(&b)
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
        })
}

/// Lines without the final empty piece and without a trailing CR each.
fn lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    numbered_lines(body).filter(move |_| !data.is_empty())
}

/// Text that is not UTF-8 or holds NUL bytes is damage (a crash can leave
/// zero-filled blocks), not keywords. Returns the offset and the problem.
fn garbled(data: &[u8]) -> Option<(usize, String)> {
    if let Some(p) = data.iter().position(|&b| b == 0) {
        return Some((p, format!("NUL byte at offset {p}")));
    }
    std::str::from_utf8(data).err().map(|e| {
        let p = e.valid_up_to();
        (p, format!("not UTF-8 at offset {p}"))
    })
}

/// Keeps names valid and case-insensitively unique, remembering why.
#[derive(Default)]
struct Names {
    /// ASCII-lowercased name → spelling kept.
    canon: HashMap<String, String>,
    invalid: BTreeSet<String>,
    merged: BTreeSet<(String, String)>,
}

impl Names {
    fn get(&mut self, raw: &[u8]) -> Option<String> {
        if !is_valid_keyword(raw) {
            self.invalid.insert(shown(raw));
            return None;
        }
        // Valid keywords are ASCII.
        let name = String::from_utf8_lossy(raw).into_owned();
        let kept = self
            .canon
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| name.clone())
            .clone();
        if kept != name {
            self.merged.insert((name, kept.clone()));
        }
        Some(kept)
    }

    fn warnings(self, out: &mut Vec<String>) {
        for n in self.invalid {
            out.push(format!(
                "keyword {n:?} dropped: not a valid IMAP keyword, Dovecot cannot store it"
            ));
        }
        for (n, kept) in self.merged {
            out.push(format!(
                "keyword {:?} merged into {:?}: Dovecot compares keywords case-insensitively",
                crate::shown::text(&n),
                crate::shown::text(&kept)
            ));
        }
    }
}

/// One update file's name, decoded.
enum UpdateName<'a> {
    Plain(&'a [u8]),
    Versioned(u64, &'a [u8]),
    Ignored,
    Unknown,
}

fn update_name(name: &[u8]) -> UpdateName<'_> {
    match name {
        // `:list` and Courier's other internal names; `.tmp.*` is a file
        // being written.
        [] | [b':', ..] | b"." | b".." => UpdateName::Ignored,
        _ if name.starts_with(b".tmp.") => UpdateName::Ignored,
        [b'.', rest @ ..] => {
            let Some((digits, base)) = split_once(rest, b'.') else {
                return UpdateName::Unknown;
            };
            let n = std::str::from_utf8(digits)
                .ok()
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok());
            match n {
                Some(n) if n != 0 && valid_base(base) => UpdateName::Versioned(n, base),
                _ => UpdateName::Unknown,
            }
        }
        _ if valid_base(name) => UpdateName::Plain(name),
        _ => UpdateName::Unknown,
    }
}

fn valid_base(b: &[u8]) -> bool {
    !matches!(b.first(), None | Some(b'.')) && !b.contains(&b':') && !b.contains(&b'/')
}

/// Reads `:list` into base → names (valid names only).
fn parse_list(
    data: &[u8],
    names: &mut Names,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<Vec<u8>, BTreeSet<String>>, KeywordListError> {
    let fail = |line: usize, problem: String| KeywordListError { line, problem };
    if let Some((offset, problem)) = garbled(data) {
        let before = data.get(..offset).unwrap_or(data);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(fail(line, problem));
    }
    let too_long = |(no, line): (usize, &[u8])| {
        (line.len() > MAX_LIST_LINE).then(|| {
            fail(
                no,
                format!("longer than {MAX_LIST_LINE} bytes, not a keyword list line"),
            )
        })
    };
    if let Some(e) = lines(data).find_map(too_long) {
        return Err(e);
    }
    let mut table: Vec<Option<String>> = Vec::new();
    let mut it = lines(data);
    for (_, line) in it.by_ref() {
        if line.is_empty() {
            break;
        }
        table.push(names.get(line));
    }
    let mut out: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
    for (no, line) in it {
        if line.is_empty() {
            continue;
        }
        let Some((base, indexes)) = split_once(line, b':') else {
            return Err(fail(no, format!("entry without `:` {:?}", shown(line))));
        };
        if !valid_base(base) {
            return Err(fail(no, format!("invalid file name {:?}", shown(base))));
        }
        let mut set = BTreeSet::new();
        for idx in indexes.split(|&b| b == b' ').filter(|s| !s.is_empty()) {
            let i = std::str::from_utf8(idx)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| {
                    fail(
                        no,
                        format!("keyword index {:?} is not a number", shown(idx)),
                    )
                })?;
            let entry = table.get(i).ok_or_else(|| {
                fail(
                    no,
                    format!("keyword index {i} beyond the {} names listed", table.len()),
                )
            })?;
            if let Some(name) = entry {
                set.insert(name.clone());
            }
        }
        // Courier's reader lets a later line for the same file win.
        if out.insert(base.to_vec(), set).is_some() {
            warnings.push(format!(
                "courierimapkeywords/:list line {no}: {:?} listed again, this entry wins",
                shown(base)
            ));
        }
    }
    Ok(out)
}

/// Applies Courier's three layers. `list` is `:list` (if present);
/// `updates` are the other entries of `courierimapkeywords/` as (file
/// name, content), `:list` and scratch files among them are ignored.
/// A garbled `:list` is an error; a garbled update file is skipped (the
/// next older layer applies) with a warning.
pub fn merge(
    list: Option<&[u8]>,
    updates: &[(Vec<u8>, Vec<u8>)],
) -> Result<MergedKeywords, KeywordListError> {
    let mut names = Names::default();
    let mut warnings = Vec::new();
    let mut messages = match list {
        Some(data) => parse_list(data, &mut names, &mut warnings)?,
        None => BTreeMap::new(),
    };

    // base → (plain update, versioned updates)
    type Layers<'a> = (Option<&'a [u8]>, Vec<(u64, &'a [u8], &'a [u8])>);
    let mut by_base: BTreeMap<&[u8], Layers<'_>> = BTreeMap::new();
    let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = updates.iter().collect();
    // Sorted so that the spelling kept for case variants does not depend
    // on directory order.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (fname, content) in sorted {
        match update_name(fname) {
            UpdateName::Ignored => {}
            UpdateName::Unknown => warnings.push(format!(
                "courierimapkeywords/{}: not an update file, ignored",
                shown(fname)
            )),
            UpdateName::Plain(base) => by_base.entry(base).or_default().0 = Some(content),
            UpdateName::Versioned(n, base) => {
                by_base.entry(base).or_default().1.push((n, fname, content));
            }
        }
    }
    for (base, (plain, mut versioned)) in by_base {
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        let candidates = plain
            .map(|c| (base, c))
            .into_iter()
            .chain(versioned.iter().map(|&(_, f, c)| (f, c)));
        for (fname, content) in candidates {
            if content.len() > MAX_UPDATE_BYTES {
                warnings.push(format!(
                    "courierimapkeywords/{}: larger than {MAX_UPDATE_BYTES} bytes; skipped, an older state applies",
                    shown(fname)
                ));
                continue;
            }
            if let Some((_, problem)) = garbled(content) {
                warnings.push(format!(
                    "courierimapkeywords/{}: {problem}; skipped, an older state applies",
                    shown(fname)
                ));
                continue;
            }
            // Courier stops reading at the first empty line.
            let set: BTreeSet<String> = lines(content)
                .map(|(_, l)| l)
                .take_while(|l| !l.is_empty())
                .filter_map(|l| names.get(l))
                .collect();
            messages.insert(base.to_vec(), set);
            break;
        }
    }
    messages.retain(|_, set| !set.is_empty());
    let mut all = Vec::new();
    names.warnings(&mut all);
    all.extend(warnings);
    Ok(MergedKeywords {
        messages,
        warnings: all,
    })
}

/// Letters for one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// `dovecot-keywords`: index → name, at most 26.
    pub keywords: Keywords,
    /// Base name → its keyword letters, sorted; only messages with some.
    pub letters: HashMap<Vec<u8>, Vec<u8>>,
    /// Keywords that got no letter, with how many messages lose them.
    pub dropped: Vec<(String, usize)>,
}

/// Gives the 26 most used keywords (ties by name) the letters `a`..`z`,
/// most used first, and reports the rest: Dovecot keeps keywords beyond
/// 26 only in its index, which a migration does not carry.
pub fn assign_letters(merged: &MergedKeywords) -> Assignment {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for set in merged.messages.values() {
        for name in set {
            *counts.entry(name).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let (given, rest) = ranked.split_at(ranked.len().min(MAX_LETTERS));

    let mut file = String::new();
    let mut letter_of: HashMap<&str, u8> = HashMap::new();
    for (i, (name, _)) in given.iter().enumerate() {
        file.push_str(&format!("{i} {name}\n"));
        letter_of.insert(name, b'a' + i as u8);
    }
    // At most 26 atoms of at most MAX_KEYWORD bytes: `Keywords::parse`
    // accepts them (the size is checked at compile time above).
    let keywords = Keywords::parse(file.as_bytes()).unwrap_or_default();

    let mut letters = HashMap::new();
    for (base, set) in &merged.messages {
        let mut l: Vec<u8> = set
            .iter()
            .filter_map(|n| letter_of.get(n.as_str()).copied())
            .collect();
        l.sort_unstable();
        if !l.is_empty() {
            letters.insert(base.clone(), l);
        }
    }
    Assignment {
        keywords,
        letters,
        dropped: rest.iter().map(|&(n, c)| (n.to_string(), c)).collect(),
    }
}

/// Merges keyword letters (`a`..`z`; other bytes are ignored) into a
/// message file name's `:2,` flags, keeping them sorted and unique and any
/// `,`-separated extra info intact; adds `:2,` when there is no info part.
/// The base never changes. A name whose info part is not `2,` is returned
/// unchanged (it cannot carry flags); so is any name when `letters` is
/// empty.
pub fn add_letters(name: &[u8], letters: &[u8]) -> Vec<u8> {
    let add: Vec<u8> = letters
        .iter()
        .copied()
        .filter(u8::is_ascii_lowercase)
        .collect();
    if add.is_empty() {
        return name.to_vec();
    }
    let base = crate::maildir::filename::base(name);
    let info = name.get(base.len()..).unwrap_or_default();
    let (flags, extra): (&[u8], &[u8]) = if info.is_empty() {
        (b"", b"")
    } else if let Some(rest) = info.strip_prefix(b":2,") {
        // The extra info keeps its leading `,`.
        let comma = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
        rest.split_at_checked(comma).unwrap_or((rest, b""))
    } else {
        return name.to_vec();
    };
    let all: BTreeSet<u8> = flags.iter().chain(&add).copied().collect();
    let mut out = Vec::with_capacity(name.len() + add.len() + 3);
    out.extend_from_slice(base);
    out.extend_from_slice(b":2,");
    out.extend(all);
    out.extend_from_slice(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::filename;
    use proptest::prelude::*;

    fn kw(m: &MergedKeywords, base: &str) -> Vec<String> {
        m.messages
            .get(base.as_bytes())
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn upd(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(n, c)| (n.as_bytes().to_vec(), c.as_bytes().to_vec()))
            .collect()
    }

    const LIST: &[u8] = b"Work\n$Label1\nNonJunk\n\nm1:1 0\nm2:0\nm3:2\nm4:1\n";

    #[test]
    fn list_only() {
        let m = merge(Some(LIST), &[]).unwrap();
        assert_eq!(kw(&m, "m1"), ["$Label1", "Work"]);
        assert_eq!(kw(&m, "m2"), ["Work"]);
        assert_eq!(kw(&m, "m3"), ["NonJunk"]);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn three_layers() {
        let updates = upd(&[
            // plain beats every versioned file
            ("m1", "NonJunk\n"),
            (".5986489.m1", "Work\n"),
            // the largest N wins, not the first or the last listed
            (".5986480.m2", "A\n"),
            (".5986490.m2", "B\nC\n"),
            (".5986485.m2", "D\n"),
            // an empty update clears
            (".5986489.m3", ""),
            // a message only in updates
            ("m9", "$Forwarded\n\nignored after the empty line\n"),
            (":list", "junk"),
            (".tmp.1795946536.x", "junk"),
        ]);
        let m = merge(Some(LIST), &updates).unwrap();
        assert_eq!(kw(&m, "m1"), ["NonJunk"]);
        assert_eq!(kw(&m, "m2"), ["B", "C"]);
        assert!(!m.messages.contains_key(&b"m3"[..]));
        assert_eq!(kw(&m, "m4"), ["$Label1"]);
        assert_eq!(kw(&m, "m9"), ["$Forwarded"]);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn garbled_updates_fall_back_a_layer() {
        let updates = upd(&[
            ("m1", "Bad\0\0\0"),
            (".7.m1", "Older\n"),
            (".9.m2", "x\u{0}"),
            (".x.m3", "Nope\n"),
            (".0.m3", "Nope\n"),
            (".5.", "Nope\n"),
        ]);
        let mut updates = updates;
        updates.push((b".8.m4".to_vec(), b"\xff\xfe\n".to_vec()));
        let m = merge(Some(LIST), &updates).unwrap();
        assert_eq!(kw(&m, "m1"), ["Older"]);
        assert_eq!(kw(&m, "m2"), ["Work"], "falls back to :list");
        assert_eq!(kw(&m, "m3"), ["NonJunk"]);
        assert_eq!(kw(&m, "m4"), ["$Label1"]);
        let all = m.warnings.join("\n");
        for needle in [
            "courierimapkeywords/m1: NUL byte",
            "courierimapkeywords/.9.m2: NUL",
            "courierimapkeywords/.8.m4: not UTF-8",
            "courierimapkeywords/.x.m3: not an update file",
            "courierimapkeywords/.0.m3: not an update file",
            "courierimapkeywords/.5.: not an update file",
        ] {
            assert!(all.contains(needle), "{needle} in {all}");
        }
    }

    #[test]
    fn invalid_names_dropped_case_variants_merged() {
        let list = b"Work\nbad name\n\\Seen\n\nm1:0 1 2\n";
        let updates = upd(&[
            ("m2", "WORK\nwork\nok\n"),
            ("m3", "Nebezpe\u{10d}n\u{e9}\n"),
        ]);
        let m = merge(Some(list), &updates).unwrap();
        assert_eq!(kw(&m, "m1"), ["Work"]);
        assert_eq!(kw(&m, "m2"), ["Work", "ok"]);
        assert!(!m.messages.contains_key(&b"m3"[..]));
        let all = m.warnings.join("\n");
        assert!(all.contains("\"bad name\" dropped"), "{all}");
        assert!(all.contains("\"\\\\Seen\" dropped"), "{all}");
        assert!(all.contains("\"Nebezpečné\" dropped"), "{all}");
        assert!(all.contains("\"WORK\" merged into \"Work\""), "{all}");
        assert!(all.contains("\"work\" merged into \"Work\""), "{all}");
    }

    #[test]
    fn garbled_list_is_an_error() {
        for (data, line, text) in [
            (&b"A\n\nm1 0\n"[..], 3, "without `:`"),
            (b"A\n\nm1:x\n", 3, "not a number"),
            (b"A\n\nm1:0\nm2:1\n", 4, "beyond the 1 names"),
            (b"A\n\n:0\n", 3, "invalid file name"),
            (b"A\nB\n\nm1:0\nm2:\xff\n", 5, "not UTF-8"),
            (b"A\n\0\n", 2, "NUL byte"),
        ] {
            let e = merge(Some(data), &[]).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.problem.contains(text), "{e}");
        }
        // Table without entries, a message with no indexes, a repeated
        // file: all fine.
        assert!(merge(Some(b"A\nB\n"), &[]).unwrap().messages.is_empty());
        let m = merge(Some(b"A\n\nm1:\nm2:0\nm2:0 0\n"), &[]).unwrap();
        assert_eq!(kw(&m, "m2"), ["A"]);
        assert!(!m.messages.contains_key(&b"m1"[..]));
    }

    #[test]
    fn caps_fit_the_format() {
        // A :list line beyond the cap fails the list, naming the line.
        let long = [&b"A\n\nm1:"[..], &b"0 ".repeat(MAX_LIST_LINE / 2), b"\n"].concat();
        let e = merge(Some(&long), &[]).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.problem.contains("longer than 65536 bytes"), "{e}");
        // An over-sized update file is skipped like a garbled one.
        let big = [&b"Big\n"[..], &vec![b'x'; MAX_UPDATE_BYTES]].concat();
        let m = merge(Some(LIST), &[(b"m1".to_vec(), big)]).unwrap();
        assert_eq!(kw(&m, "m1"), ["$Label1", "Work"]);
        assert!(
            m.warnings[0].contains("larger than 65536 bytes"),
            "{:?}",
            m.warnings
        );
        // 26 keywords of the longest length still make a dovecot-keywords.
        let mut m = MergedKeywords::default();
        for i in 0..MAX_LETTERS {
            let name = format!("{i:02}{}", "k".repeat(MAX_KEYWORD - 2));
            m.messages.entry(b"m".to_vec()).or_default().insert(name);
        }
        let a = assign_letters(&m);
        assert_eq!(Keywords::parse(&a.keywords.to_bytes()).unwrap(), a.keywords);
        assert_eq!(a.letters[&b"m"[..]].len(), MAX_LETTERS);
        // A longer name is dropped, with a short warning.
        let list = [&b"x"[..], &vec![b'k'; MAX_KEYWORD], b"\n\nm:0\n"].concat();
        let m = merge(Some(&list), &[]).unwrap();
        assert!(m.messages.is_empty());
        assert!(m.warnings[0].contains("dropped") && m.warnings[0].len() < 1024);
    }

    #[test]
    fn huge_garbage_gives_brief_messages() {
        let garbage = b"\x1b[31m\t\r\xc3\xa9\xff".repeat(5 << 17);
        let text = String::from_utf8_lossy(&garbage).into_owned().into_bytes();
        let near_cap = &text[..MAX_LIST_LINE - 10];
        let mut messages = Vec::new();
        for list in [
            garbage.clone(),
            text.clone(),
            [&b"A\n\n"[..], near_cap].concat(),
            [&b"A\n\n."[..], near_cap, b":0"].concat(),
            [&b"A\n\nm:"[..], near_cap].concat(),
        ] {
            messages.push(merge(Some(&list), &[]).unwrap_err().to_string());
        }
        let name = [&b"A\n"[..], &text[..MAX_KEYWORD - 1], b"\n"].concat();
        let m = merge(Some(&name), &[(b"m:x".to_vec(), garbage.clone())]).unwrap();
        messages.extend(m.warnings);
        for s in messages {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    #[test]
    fn retain_present_forgets_stale() {
        let mut m = merge(Some(LIST), &[]).unwrap();
        m.retain_present(&[b"m1".to_vec(), b"other".to_vec()]);
        assert_eq!(m.messages.len(), 1);
    }

    #[test]
    fn letters_by_use() {
        let mut m = MergedKeywords::default();
        for i in 0..30u32 {
            // keyword kN is on N+1 messages, plus a tie pair.
            for j in 0..=i {
                m.messages
                    .entry(format!("msg{j}").into_bytes())
                    .or_default()
                    .insert(format!("k{i:02}"));
            }
        }
        m.messages
            .entry(b"msg0".to_vec())
            .or_default()
            .insert("tie".into());
        let a = assign_letters(&m);
        let file = String::from_utf8(a.keywords.to_bytes()).unwrap();
        assert!(file.starts_with("0 k29\n1 k28\n"), "{file}");
        assert!(file.ends_with("25 k04\n"), "{file}");
        // k00 (1 message) and "tie" (1 message): ties ordered by name.
        assert_eq!(
            a.dropped,
            vec![
                ("k03".to_string(), 4),
                ("k02".to_string(), 3),
                ("k01".to_string(), 2),
                ("k00".to_string(), 1),
                ("tie".to_string(), 1)
            ]
        );
        assert_eq!(a.letters[&b"msg29"[..]], b"a");
        assert_eq!(a.letters[&b"msg0"[..]], b"abcdefghijklmnopqrstuvwxyz");
        assert!(!a.letters.contains_key(&b"msg30"[..]));
    }

    #[test]
    fn letters_round_trip_through_dovecot_keywords() {
        let m = merge(Some(LIST), &[]).unwrap();
        let a = assign_letters(&m);
        let k = Keywords::parse(&a.keywords.to_bytes()).unwrap();
        assert_eq!(k, a.keywords);
        // Work and $Label1 are on two messages each: ties go by name.
        assert_eq!(a.keywords.to_bytes(), b"0 $Label1\n1 Work\n2 NonJunk\n");
        assert_eq!(a.letters[&b"m1"[..]], b"ab");
        assert!(a.dropped.is_empty());
    }

    #[test]
    fn add_letters_cases() {
        for (name, letters, want) in [
            (&b"1.M1.h,S=5"[..], &b"b"[..], &b"1.M1.h,S=5:2,b"[..]),
            (b"1.M1.h:2,", b"ca", b"1.M1.h:2,ac"),
            (b"1.M1.h:2,SF", b"a", b"1.M1.h:2,FSa"),
            (b"1.M1.h:2,RSa", b"ab", b"1.M1.h:2,RSab"),
            (b"1.M1.h:2,S,extra,more", b"d", b"1.M1.h:2,Sd,extra,more"),
            (b"1.M1.h:1,weird", b"a", b"1.M1.h:1,weird"),
            (b"1.M1.h", b"", b"1.M1.h"),
            (b"1.M1.h:2,S", b"A!", b"1.M1.h:2,S"),
        ] {
            assert_eq!(
                add_letters(name, letters),
                want,
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }

    proptest! {
        #[test]
        fn add_letters_properties(
            base in "[0-9A-Za-z.,=_]{1,20}",
            info in prop_oneof![
                Just(String::new()),
                "[A-Za-z]{0,6}".prop_map(|f| format!(":2,{f}")),
                "[A-Za-z]{0,4},[ -~]{0,6}".prop_map(|f| format!(":2,{f}")),
            ],
            letters in proptest::collection::vec(b'a'..=b'z', 1..6),
        ) {
            let name = format!("{base}{info}").into_bytes();
            let out = add_letters(&name, &letters);
            prop_assert_eq!(filename::base(&out), filename::base(&name));
            prop_assert_eq!(add_letters(&out, &letters), out.clone());
            let flags = filename::flags(&out).unwrap();
            prop_assert!(flags.windows(2).all(|w| w[0] < w[1]), "{:?}", String::from_utf8_lossy(&out));
            for l in &letters {
                prop_assert!(flags.contains(l));
            }
            // Extra info after the flags survives.
            if let Some(p) = info.find(',').and_then(|p| info[p + 1..].find(',').map(|q| p + 1 + q)) {
                prop_assert!(out.ends_with(&info.as_bytes()[p..]));
            }
        }

        #[test]
        fn merge_never_panics(
            list in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
            updates in proptest::collection::vec(
                (prop_oneof!["[a-c]", "\\.[0-9]{1,3}\\.[a-c]", "[ -~]{0,5}"].prop_map(String::into_bytes),
                 proptest::collection::vec(any::<u8>(), 0..20)),
                0..6),
        ) {
            if let Ok(m) = merge(list.as_deref(), &updates) {
                let a = assign_letters(&m);
                prop_assert!(a.keywords.to_bytes().iter().filter(|&&b| b == b'\n').count() <= MAX_LETTERS);
                prop_assert!(Keywords::parse(&a.keywords.to_bytes()).is_ok());
                for (base, l) in &a.letters {
                    prop_assert!(m.messages.contains_key(base));
                    prop_assert!(l.windows(2).all(|w| w[0] < w[1]));
                    prop_assert!(l.iter().all(u8::is_ascii_lowercase));
                }
            }
        }
    }

    fn list_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"Work"[..],
            b"$Label1",
            b"bad name",
            b"\n",
            b"\n\n",
            b"\r\n",
            b"m1",
            b":",
            b" ",
            b"0",
            b"1",
            b"99999999999999999999999",
            b"/",
            "é".as_bytes(),
            b"\xff",
            b"\0",
            b".",
        ];
        crate::hostile::fragments(piece, 30)
    }

    proptest! {
        #[test]
        fn merge_never_panics_on_hostile_files(
            list in proptest::option::of(crate::hostile::or_any_bytes(list_like(), 300)),
            updates in proptest::collection::vec(
                (crate::hostile::or_any_bytes(list_like(), 20),
                 crate::hostile::or_any_bytes(list_like(), 60)),
                0..6),
        ) {
            if let Ok(m) = merge(list.as_deref(), &updates) {
                for w in &m.warnings {
                    prop_assert!(!w.chars().any(char::is_control), "{w}");
                }
                let a = assign_letters(&m);
                prop_assert!(Keywords::parse(&a.keywords.to_bytes()).is_ok());
                for (base, letters) in &a.letters {
                    let named = add_letters(base, letters);
                    prop_assert_eq!(filename::base(&named), &base[..]);
                }
            }
        }

        #[test]
        fn add_letters_never_panics(
            name in crate::hostile::or_any_bytes(list_like(), 60),
            letters in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let out = add_letters(&name, &letters);
            prop_assert_eq!(filename::base(&out), filename::base(&name));
        }
    }
}
