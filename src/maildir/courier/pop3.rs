//! `courierpop3dsizelist` (root Maildir only): Courier's POP3 message list
//! with sizes and, from version /1 on, POP3 UIDs.
//!
//! ```text
//! v0: no header            lines "<filename> <size>"
//! /1 <nextuid>             lines "<filename> <size> <uid>"
//! /2 <nextuid> <uidv>      lines "<filename> <size> <uid>:<uidv>"
//! /3 <nextuid> <uidv>      lines "<filename> <size> <uid>:<uidv>:<utf8 0|1>"
//! ```
//!
//! The UIDL a POP3 client has seen is derived the way Courier's
//! `print_uidl` does it, so Dovecot can announce the same one (`P` field of
//! `dovecot-uidlist`).

use super::{num, numbered_lines, shown};
use crate::maildir::filename;

/// The longest line accepted, without its LF: a file name of at most 255
/// bytes and three numbers, so 8 KiB (as for uidlist lines) is generous.
pub const MAX_LINE: usize = 8 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Entry {
    /// The message's base name (the file name up to the first `:`).
    pub base: Vec<u8>,
    /// The UIDL Courier announced for it.
    pub uidl: String,
    /// 1-based position in the list = Courier's POP3 message order.
    pub order: u32,
    /// Courier's POP3 size. Not Dovecot's vsize (see `uiddb::to_uidlist`).
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3List {
    /// 0 (no header) to 3.
    pub version: u8,
    pub entries: Vec<Pop3Entry>,
    /// Lines Courier itself would have ignored, and repeated names.
    pub skipped: Vec<Pop3Error>,
    /// The header's next POP3 UID and UIDVALIDITY (versions 1 to 3).
    pub next: Option<(u64, u64)>,
}

impl Pop3List {
    /// Adds the messages the list does not know yet, numbered the way
    /// Courier's pop3d numbers them at the next login: from the header's
    /// next UID upward in `present` order (file name order).
    pub fn extend_for(&mut self, present: &[Vec<u8>]) {
        let known: std::collections::HashSet<Vec<u8>> =
            self.entries.iter().map(|e| e.base.clone()).collect();
        for base in present.iter().filter(|b| !known.contains(*b)) {
            let order = u32::try_from(self.entries.len() + 1).unwrap_or(u32::MAX);
            let uidl = match &mut self.next {
                Some((next, uidv)) => {
                    let u = uidl(base, *next, *uidv);
                    // Courier's counter is an unsigned long: it wraps.
                    *next = next.wrapping_add(1);
                    u
                }
                None => uidl(base, 0, 0),
            };
            self.entries.push(Pop3Entry {
                base: base.clone(),
                uidl,
                order,
                size: 0,
            });
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("courierpop3dsizelist line {line}: {problem}")]
pub struct Pop3Error {
    pub line: usize,
    pub problem: String,
}

fn err(line: usize, problem: impl Into<String>) -> Pop3Error {
    Pop3Error {
        line,
        problem: problem.into(),
    }
}

/// Parses the list. A header that starts with `/` but is not a known
/// version, or is over-long, is an error (the UIDLs cannot be known);
/// unreadable or over-long record lines are skipped and listed, as Courier
/// skips them.
pub fn parse(data: &[u8]) -> Result<Pop3List, Pop3Error> {
    let too_long = || format!("longer than {MAX_LINE} bytes, not a POP3 list line");
    let mut lines = numbered_lines(data).peekable();
    let mut next = None;
    let version = match lines.peek() {
        Some((_, head)) if head.first() == Some(&b'/') && head.len() > MAX_LINE => {
            return Err(err(1, too_long()));
        }
        Some((_, head)) if head.first() == Some(&b'/') => {
            let fields: Vec<&[u8]> = head
                .strip_prefix(b"/")
                .unwrap_or(head)
                .split(|&b| b == b' ')
                .filter(|f| !f.is_empty())
                .collect();
            let numeric = |n: usize| fields.len() == n && fields.iter().all(|f| num(f).is_some());
            let version = match fields.first().map(|v| &v[..]) {
                Some(b"1") if numeric(2) => 1,
                Some(b"2") if numeric(3) => 2,
                Some(b"3") if numeric(3) => 3,
                Some(v @ (b"1" | b"2" | b"3")) => {
                    return Err(err(
                        1,
                        format!("broken /{} header {:?}", shown(v), shown(head)),
                    ));
                }
                _ => {
                    return Err(err(1, format!("unknown version header {:?}", shown(head))));
                }
            };
            let field = |i: usize| fields.get(i).and_then(|f| num(f)).unwrap_or(0);
            next = Some((field(1), field(2)));
            lines.next();
            version
        }
        _ => 0,
    };

    let mut list = Pop3List {
        version,
        entries: Vec::new(),
        skipped: Vec::new(),
        next,
    };
    let mut seen = std::collections::HashSet::new();
    for (no, line) in lines {
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            list.skipped.push(err(no, too_long()));
            continue;
        }
        match parse_line(line, version) {
            Ok((base, size, uid, uidv)) => {
                if !seen.insert(base.to_vec()) {
                    list.skipped
                        .push(err(no, format!("{:?} listed again", shown(base))));
                    continue;
                }
                let order = u32::try_from(list.entries.len() + 1).unwrap_or(u32::MAX);
                list.entries.push(Pop3Entry {
                    base: base.to_vec(),
                    uidl: uidl(base, uid, uidv),
                    order,
                    size,
                });
            }
            Err(problem) => list.skipped.push(err(no, problem)),
        }
    }
    Ok(list)
}

type Fields<'a> = (&'a [u8], u64, u64, u64);

/// Splits from the right like Courier does, so the file name (leftmost)
/// may in theory contain spaces.
fn parse_line(line: &[u8], version: u8) -> Result<Fields<'_>, String> {
    let bad = || format!("unreadable line {:?}", shown(line));
    let mut parts = line.rsplitn(if version == 0 { 2 } else { 3 }, |&b| b == b' ');
    let (uid, uidv) = if version == 0 {
        (0, 0)
    } else {
        let ids = parts.next().ok_or_else(bad)?;
        let mut f = ids.split(|&b| b == b':');
        let uid = f.next().and_then(num).ok_or_else(bad)?;
        let uidv = match version {
            1 => 0,
            _ => f.next().and_then(num).ok_or_else(bad)?,
        };
        // /3 adds a UTF-8 marker; Courier also reads /2 lines in a /3 file.
        match (version, f.next(), f.next()) {
            (1, None, _) | (2 | 3, None, _) => {}
            (3, Some(b"0" | b"1"), None) => {}
            _ => return Err(bad()),
        }
        (uid, uidv)
    };
    let size = parts.next().and_then(num).ok_or_else(bad)?;
    let name = parts.next().ok_or_else(bad)?;
    let base = filename::base(name);
    if base.is_empty() || base.contains(&b'/') {
        return Err(format!("invalid file name {:?}", shown(name)));
    }
    Ok((base, size, uid, uidv))
}

/// Courier's UIDL: `UID<n>-<uidv>`, `UID<n>`, or (no UID, version 0) the
/// base name with bytes outside `!`..`~` and `'`, `"`, `+` written as
/// `+XX` (uppercase hex, `%02X` in Courier's pop3dserver.c).
pub fn uidl(base: &[u8], uid: u64, uidv: u64) -> String {
    if uid != 0 {
        return if uidv != 0 {
            format!("UID{uid}-{uidv}")
        } else {
            format!("UID{uid}")
        };
    }
    let mut out = String::with_capacity(base.len());
    for &b in base {
        if !(0x21..=0x7e).contains(&b) || matches!(b, b'\'' | b'"' | b'+') {
            out.push_str(&format!("+{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_new_to_pop3_are_numbered_like_courier_would() {
        let mut l = parse(
            b"/3 7 1795958096
a:2,S 10 1:1795958096:0
",
        )
        .unwrap();
        l.extend_for(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let got: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.uidl.as_str(), e.order))
            .collect();
        assert_eq!(
            got,
            [
                ("UID1-1795958096", 1),
                ("UID7-1795958096", 2),
                ("UID8-1795958096", 3)
            ]
        );
        let mut v0 = parse(
            b"a 10
",
        )
        .unwrap();
        v0.extend_for(&[b"b+x".to_vec()]);
        assert_eq!(v0.entries[1].uidl, "b+2Bx");
    }
    use proptest::prelude::*;

    #[test]
    fn next_uid_at_the_top_of_u64_is_not_a_panic() {
        let mut l = parse(b"/1 18446744073709551615\n").unwrap();
        l.extend_for(&[b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(l.entries[0].uidl, "UID18446744073709551615");
        // Courier's unsigned counter wraps to 0, which means "no UID".
        assert_eq!(l.entries[1].uidl, "b");
    }

    #[test]
    fn over_long_lines_and_huge_garbage() {
        let line = |len: usize| [vec![b'x'; len - 4], b" 5 1".to_vec()].concat();
        let data = [&b"/1 9\n"[..], &line(MAX_LINE), b"\n", &line(MAX_LINE + 1)].concat();
        let l = parse(&data).unwrap();
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.skipped[0].line, 3);
        assert!(l.skipped[0].problem.contains("longer than 8192"));
        let head = [&b"/1 "[..], &vec![b'9'; MAX_LINE]].concat();
        assert!(parse(&head).unwrap_err().problem.contains("longer than"));

        let garbage = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        let near_cap = &garbage[..MAX_LINE - 10];
        let mut messages = Vec::new();
        for data in [
            [&b"/"[..], &garbage].concat(),
            [&b"/2 "[..], near_cap].concat(),
        ] {
            messages.push(parse(&data).unwrap_err().to_string());
        }
        let data = [
            &garbage[..],
            b"\n",
            near_cap,
            b"\n",
            near_cap,
            b" 5\n",
            near_cap,
            b" 5\n",
        ]
        .concat();
        let l = parse(&data).unwrap();
        assert_eq!((l.entries.len(), l.skipped.len()), (1, 3));
        messages.extend(l.skipped.iter().map(ToString::to_string));
        for s in messages {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    fn uidls(l: &Pop3List) -> Vec<(&[u8], &str, u32, u64)> {
        l.entries
            .iter()
            .map(|e| (&e.base[..], e.uidl.as_str(), e.order, e.size))
            .collect()
    }

    #[test]
    fn version_3() {
        let l = parse(
            b"/3 5 1795946000\n\
              1795946536.M1.vm,S=118:2,S 122 1:1795946000:0\n\
              1795946537.M2.vm,S=132 140 4:1795946000:1\n\
              1795946538.M3.vm 99 3:1795946000\n",
        )
        .unwrap();
        assert_eq!(l.version, 3);
        assert!(l.skipped.is_empty());
        assert_eq!(
            uidls(&l),
            vec![
                (&b"1795946536.M1.vm,S=118"[..], "UID1-1795946000", 1, 122),
                (b"1795946537.M2.vm,S=132", "UID4-1795946000", 2, 140),
                (b"1795946538.M3.vm", "UID3-1795946000", 3, 99),
            ]
        );
    }

    #[test]
    fn versions_2_and_1() {
        let l = parse(b"/2 9 777\na:2,S 10 7:777\nb 11 8:0\n").unwrap();
        assert_eq!(l.version, 2);
        assert_eq!(
            uidls(&l),
            vec![(&b"a"[..], "UID7-777", 1, 10), (b"b", "UID8", 2, 11)]
        );
        let l = parse(b"/1 3\nx 5 1\ny 6 2\n").unwrap();
        assert_eq!(l.version, 1);
        assert_eq!(
            uidls(&l),
            vec![(&b"x"[..], "UID1", 1, 5), (b"y", "UID2", 2, 6)]
        );
    }

    #[test]
    fn version_0_uidl_comes_from_the_name() {
        let l = parse(b"12.M1.host:2,S 100\n12.a+b'c\"d\xc5\xa1 e.h 7\n").unwrap();
        assert_eq!(l.version, 0);
        assert_eq!(
            uidls(&l),
            vec![
                (&b"12.M1.host"[..], "12.M1.host", 1, 100),
                (
                    b"12.a+b'c\"d\xc5\xa1 e.h",
                    "12.a+2Bb+27c+22d+C5+A1+20e.h",
                    2,
                    7
                ),
            ]
        );
        // A UID of 0 in a later version also falls back to the name.
        assert_eq!(uidl(b"n", 0, 5), "n");
    }

    #[test]
    fn bad_lines_are_skipped_bad_headers_fail() {
        let l = parse(b"/2 9 777\ngood 10 7:777\nnouid 10\nx 1 2:3:4\nx 1 2:3\ngood 5 9:777\n")
            .unwrap();
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.entries[1].base, b"x");
        let lines: Vec<usize> = l.skipped.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 6]);
        assert!(l.skipped[2].problem.contains("again"));

        for (data, text) in [
            (&b"/4 1 2\n"[..], "unknown version"),
            (b"/2 1\n", "broken /2"),
            (b"/1 x\n", "broken /1"),
            (b"/\n", "unknown version"),
        ] {
            let e = parse(data).unwrap_err();
            assert_eq!(e.line, 1);
            assert!(e.problem.contains(text), "{e}");
        }
        assert!(parse(b"").unwrap().entries.is_empty());
    }

    proptest! {
        #[test]
        fn uidls_are_printable_without_spaces(
            base in proptest::collection::vec(any::<u8>(), 0..40),
            uid in prop_oneof![Just(0u64), any::<u64>()],
            uidv in any::<u64>(),
        ) {
            let u = uidl(&base, uid, uidv);
            prop_assert!(u.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{:?}", u);
        }

        #[test]
        fn parse_never_panics_and_uidls_are_clean(
            data in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(l) = parse(&data) {
                for (i, e) in l.entries.iter().enumerate() {
                    prop_assert_eq!(e.order as usize, i + 1);
                    prop_assert!(!e.base.is_empty());
                    prop_assert!(e.uidl.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                }
            }
        }

        #[test]
        fn version_0_uidls_are_injective(
            a in proptest::collection::vec(any::<u8>(), 1..20),
            b in proptest::collection::vec(any::<u8>(), 1..20),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(uidl(&a, 0, 0), uidl(&b, 0, 0));
        }
    }

    fn pop3_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"/1 "[..],
            b"/2 ",
            b"/3 ",
            b"/",
            b"/1 18446744073709551615\n",
            b"/3 18446744073709551615 7\n",
            b" ",
            b":",
            b"0",
            b"1",
            b"18446744073709551615",
            b"18446744073709551616",
            b"\n",
            b"\r\n",
            b"a",
            b":2,S",
            b"/",
            "é".as_bytes(),
            b"\xff",
            b"\0",
        ];
        crate::hostile::fragments(piece, 30)
    }

    proptest! {
        #[test]
        fn parse_and_extend_never_panic(
            data in crate::hostile::or_any_bytes(pop3_like(), 400),
            present in proptest::collection::vec(prop_oneof![
                "[a-c]".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..6),
            ], 0..5),
        ) {
            if let Ok(mut l) = parse(&data) {
                for e in &l.skipped {
                    let s = e.to_string();
                    prop_assert!(!s.chars().any(char::is_control), "{s}");
                }
                l.extend_for(&present);
                for e in &l.entries {
                    prop_assert!(e.uidl.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                }
            }
        }
    }
}
