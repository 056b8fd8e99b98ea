//! `dovecot-uidlist`: the UID map that keeps IMAP clients from
//! re-downloading. Read in version 1 or 3, written as version 3.
//!
//! The parser enforces the rules that make Dovecot throw a file away and
//! silently renumber (broken header, unordered or out-of-range UIDs, a `/`
//! in a file name), so a carried file is one Dovecot will keep.

use std::fmt;
use std::io::{BufRead, Read};
use std::num::NonZeroU32;

use super::split_once;
use crate::shown;

/// The longest line accepted, without its LF. A line is a UID, a few
/// extension fields (sizes, a GUID, a POP3 UIDL) and one file name of at
/// most 255 bytes, so a few hundred bytes; anything near 8 KiB is damage.
pub const MAX_LINE: usize = 8 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// Extension fields (`W<vsize>`, `G<guid>`, `P<uidl>`, …) in file order.
    pub ext: Vec<(u8, Vec<u8>)>,
    /// The last known file name (base, possibly with a stale info part).
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidlist {
    /// Header fields in file order, including `V` and `N`.
    header: Vec<(u8, Vec<u8>)>,
    uid_validity: u32,
    next_uid: u32,
    pub records: Vec<Record>,
}

/// What is wrong, at which line; `problem` quotes the file only briefly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct UidlistError {
    pub line: usize,
    pub problem: String,
}

fn err(line: usize, problem: impl fmt::Display) -> UidlistError {
    UidlistError {
        line,
        problem: problem.to_string(),
    }
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn parse_uid(s: &[u8], line: usize) -> Result<u32, UidlistError> {
    match parse_u32(s) {
        Some(u) if u != 0 && u != u32::MAX => Ok(u),
        _ => Err(err(line, format!("invalid UID {:?}", shown::bytes(s)))),
    }
}

/// Numbered lines of at most [`MAX_LINE`] bytes, without their LF and a
/// CR before it. Of an over-long line no more than the cap is read.
struct Lines<R> {
    r: R,
    no: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn next(&mut self) -> Result<Option<(usize, &[u8])>, UidlistError> {
        self.no += 1;
        self.buf.clear();
        let n = (&mut self.r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| err(self.no, format!("cannot be read: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        let line = match self.buf.strip_suffix(b"\n") {
            Some(l) => l,
            None if self.buf.len() > MAX_LINE => {
                return Err(err(
                    self.no,
                    format!("longer than {MAX_LINE} bytes, not a uidlist line"),
                ));
            }
            None => &self.buf,
        };
        Ok(Some((self.no, line.strip_suffix(b"\r").unwrap_or(line))))
    }
}

impl Uidlist {
    /// An empty version 3 list.
    pub fn new(uid_validity: NonZeroU32, next_uid: NonZeroU32) -> Uidlist {
        Uidlist {
            header: vec![
                (b'V', uid_validity.to_string().into_bytes()),
                (b'N', next_uid.to_string().into_bytes()),
            ],
            uid_validity: uid_validity.get(),
            next_uid: next_uid.get(),
            records: Vec::new(),
        }
    }

    /// The same list without its messages (a folder emptied): UIDVALIDITY
    /// and the next UID kept, so a client sees its messages expunged.
    pub fn emptied(&self) -> Uidlist {
        Uidlist {
            header: self.header.clone(),
            uid_validity: self.uid_validity,
            next_uid: self.next_uid(),
            records: Vec::new(),
        }
    }

    pub fn uid_validity(&self) -> u32 {
        self.uid_validity
    }

    /// The next UID Dovecot will assign: never below the last UID + 1.
    pub fn next_uid(&self) -> u32 {
        let after_last = self.records.last().map_or(1, |r| r.uid.saturating_add(1));
        self.next_uid.max(after_last)
    }

    /// [`Uidlist::parse_reader`] over bytes already in memory.
    #[cfg(test)]
    pub fn parse(data: &[u8]) -> Result<Uidlist, UidlistError> {
        Uidlist::parse_reader(data)
    }

    /// Reads a uidlist line by line; a line longer than [`MAX_LINE`] is an
    /// error naming it, found without reading the rest of that line.
    pub fn parse_reader(r: impl BufRead) -> Result<Uidlist, UidlistError> {
        let mut lines = Lines {
            r,
            no: 0,
            buf: Vec::new(),
        };
        let (mut list, v1) = match lines.next()? {
            Some((_, head)) if !head.is_empty() => parse_header(head)?,
            _ => return Err(err(1, "empty file")),
        };
        let mut last = 0u32;
        while let Some((no, line)) = lines.next()? {
            if line.is_empty() {
                continue;
            }
            let record = parse_record(line, no, v1)?;
            let uid = record.uid;
            if uid <= last {
                return Err(err(no, format!("UIDs not ordered ({uid} after {last})")));
            }
            if v1 && uid >= list.next_uid {
                return Err(err(
                    no,
                    format!("UID {uid} is not below the next UID {}", list.next_uid),
                ));
            }
            last = uid;
            list.records.push(record);
        }
        Ok(list)
    }

    /// Serialises as version 3 with `N` raised to cover every record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.records.len() * 64);
        out.push(b'3');
        let next = self.next_uid().to_string().into_bytes();
        for (k, v) in &self.header {
            out.push(b' ');
            out.push(*k);
            out.extend_from_slice(if *k == b'N' { &next } else { v });
        }
        out.push(b'\n');
        for r in &self.records {
            out.extend_from_slice(r.uid.to_string().as_bytes());
            for (k, v) in &r.ext {
                out.push(b' ');
                out.push(*k);
                out.extend_from_slice(v);
            }
            out.extend_from_slice(b" :");
            out.extend_from_slice(&r.name);
            out.push(b'\n');
        }
        out
    }
}

/// The first line: the list without records, and whether it is version 1.
fn parse_header(head: &[u8]) -> Result<(Uidlist, bool), UidlistError> {
    let mut fields = head.split(|&b| b == b' ').filter(|f| !f.is_empty());
    match fields.next().unwrap_or_default() {
        b"3" => {
            let header: Vec<(u8, Vec<u8>)> = fields
                .filter_map(<[u8]>::split_first)
                .map(|(&k, v)| (k, v.to_vec()))
                .collect();
            let get = |k: u8| header.iter().find(|(key, _)| *key == k).map(|(_, v)| v);
            let v = get(b'V').and_then(|v| parse_u32(v)).filter(|&v| v != 0);
            let n = get(b'N').and_then(|v| parse_u32(v)).filter(|&n| n != 0);
            let (Some(uid_validity), Some(next_uid)) = (v, n) else {
                return Err(err(
                    1,
                    "broken header: V<uidvalidity> and N<nextuid> must be non-zero numbers",
                ));
            };
            let list = Uidlist {
                header,
                uid_validity,
                next_uid,
                records: Vec::new(),
            };
            Ok((list, false))
        }
        b"1" => {
            let v = fields.next().and_then(parse_u32).and_then(NonZeroU32::new);
            let n = fields.next().and_then(parse_u32).and_then(NonZeroU32::new);
            let (Some(uid_validity), Some(next_uid)) = (v, n) else {
                return Err(err(
                    1,
                    "broken version 1 header: expected `1 <uidvalidity> <nextuid>`",
                ));
            };
            Ok((Uidlist::new(uid_validity, next_uid), true))
        }
        other => Err(err(
            1,
            format!("unsupported version {:?}", shown::bytes(other)),
        )),
    }
}

/// `<uid> <name>` (version 1) or `<uid> [<key><value> …] :<name>` (3).
fn parse_record(line: &[u8], no: usize, v1: bool) -> Result<Record, UidlistError> {
    let (uid, mut rest) =
        split_once(line, b' ').ok_or_else(|| err(no, "record without a file name"))?;
    let uid = parse_uid(uid, no)?;
    let mut ext = Vec::new();
    let name = if v1 {
        rest.to_vec()
    } else {
        loop {
            match rest.split_first() {
                Some((b':', name)) => break name.to_vec(),
                Some((b' ', tail)) => rest = tail,
                Some((&key, tail)) => {
                    let (value, tail) = split_once(tail, b' ').unwrap_or((tail, b""));
                    ext.push((key, value.to_vec()));
                    rest = tail;
                }
                None => return Err(err(no, "record without ` :<filename>`")),
            }
        }
    };
    if name.is_empty() || name.contains(&b'/') {
        return Err(err(
            no,
            format!("invalid file name {:?}", shown::bytes(&name)),
        ));
    }
    Ok(Record { uid, ext, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V3: &[u8] = b"3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n\
25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,\n\
25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n";

    #[test]
    fn v3_round_trips_byte_for_byte() {
        let l = Uidlist::parse(V3).unwrap();
        assert_eq!(l.uid_validity, 1275660208);
        assert_eq!(l.next_uid(), 25022);
        assert_eq!(l.records.len(), 2);
        assert_eq!(l.records[1].ext, vec![(b'W', b"2481".to_vec())]);
        assert_eq!(l.to_bytes(), V3);
    }

    #[test]
    fn v1_is_upgraded() {
        let l = Uidlist::parse(b"1 777 8\n7 name,S=5\n").unwrap();
        assert_eq!(l.to_bytes(), b"3 V777 N8\n7 :name,S=5\n");
    }

    #[test]
    fn next_uid_is_raised() {
        let l = Uidlist::parse(b"3 V5 N1\n7 :a\n").unwrap();
        assert_eq!(l.next_uid(), 8);
        assert_eq!(l.to_bytes(), b"3 V5 N8\n7 :a\n");
    }

    #[test]
    fn crlf_and_blank_lines_are_tolerated() {
        let l = Uidlist::parse(b"3 V5 N9\r\n1 :a\r\n\r\n2 :b\r\n").unwrap();
        assert_eq!(l.to_bytes(), b"3 V5 N9\n1 :a\n2 :b\n");
    }

    #[test]
    fn rejects_what_dovecot_discards() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"", 1, "empty"),
            (b"3 V4242\n", 1, "broken header"),
            (b"3 V0 N5\n", 1, "broken header"),
            (b"2 V1 N5\n", 1, "unsupported"),
            (b"3 V1 N9\n5 :a\n3 :b\n", 3, "not ordered"),
            (b"3 V1 N9\n0 :a\n", 2, "invalid UID"),
            (b"3 V1 N9\n4294967295 :a\n", 2, "invalid UID"),
            (b"3 V1 N9\n1 :a/b\n", 2, "invalid file name"),
            (b"3 V1 N9\n1 W5\n", 2, "without"),
            (b"1 5 3\n4 a\n", 2, "not below"),
        ];
        for (data, line, text) in cases {
            let e = Uidlist::parse(data).unwrap_err();
            assert_eq!(e.line, *line, "{:?}", String::from_utf8_lossy(data));
            assert!(e.problem.contains(text), "{e}");
        }
    }

    #[test]
    fn over_long_lines_are_errors_naming_the_line() {
        let name = |len: usize| vec![b'x'; len - 3];
        let ok = [&b"3 V1 N9\n1 :"[..], &name(MAX_LINE), b"\n"].concat();
        assert_eq!(Uidlist::parse(&ok).unwrap().records.len(), 1);
        for data in [
            [&b"3 V1 N9\n1 :"[..], &name(MAX_LINE + 1), b"\n"].concat(),
            [&b"3 V1 N9\n1 :"[..], &name(MAX_LINE + 1)].concat(),
            [&b"3 V1 N9\r\n1 :"[..], &name(MAX_LINE), b"\r\n"].concat(),
        ] {
            let e = Uidlist::parse(&data).unwrap_err();
            assert_eq!(e.line, 2, "{e}");
            assert!(e.problem.contains("longer than 8192 bytes"), "{e}");
        }
        let e = Uidlist::parse(&vec![b'3'; MAX_LINE + 1]).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    /// Counts the bytes taken from an endless line.
    struct Counted<R>(R, std::rc::Rc<std::cell::Cell<usize>>);

    impl<R: std::io::Read> std::io::Read for Counted<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.set(self.1.get() + n);
            Ok(n)
        }
    }

    #[test]
    fn parse_reader_reads_no_more_of_an_over_long_line_than_the_cap() {
        for head in [&b""[..], b"3 V1 N9\n1 :"] {
            let read = std::rc::Rc::new(std::cell::Cell::new(0));
            let endless = head.chain(std::io::repeat(b'x'));
            let r = std::io::BufReader::with_capacity(4096, Counted(endless, read.clone()));
            let e = Uidlist::parse_reader(r).unwrap_err();
            assert!(e.problem.contains("longer than"), "{e}");
            assert!(
                read.get() <= MAX_LINE + 1 + 4096 + head.len(),
                "{}",
                read.get()
            );
        }
    }

    #[test]
    fn errors_quote_a_huge_line_briefly() {
        let garbage = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        let near_cap = &garbage[..MAX_LINE - 100];
        for data in [
            garbage.clone(),
            [&b"3 V1 N9\n"[..], &garbage].concat(),
            [near_cap, b"\n"].concat(),
            [&b"3 V1 N9\n"[..], near_cap, b" :a\n"].concat(),
            [&b"3 V1 N9\n1 :/"[..], near_cap, b"\n"].concat(),
        ] {
            let s = Uidlist::parse(&data).unwrap_err().to_string();
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    fn arb_list() -> impl Strategy<Value = Uidlist> {
        (
            1u32..u32::MAX - 1,
            proptest::collection::btree_set(1u32..1_000_000, 0..20),
            proptest::collection::vec(("[A-Z]", "[a-z0-9]{1,6}"), 0..3),
            "[a-zA-Z0-9.,=]{1,20}",
        )
            .prop_map(|(v, uids, ext, stem)| {
                let records: Vec<Record> = uids
                    .into_iter()
                    .map(|uid| Record {
                        uid,
                        ext: ext
                            .iter()
                            .map(|(k, v)| (k.as_bytes()[0], v.clone().into_bytes()))
                            .collect(),
                        name: format!("{stem}{uid}:2,S").into_bytes(),
                    })
                    .collect();
                let next = records.last().map_or(1, |r| r.uid + 1);
                Uidlist {
                    header: vec![
                        (b'V', v.to_string().into_bytes()),
                        (b'N', next.to_string().into_bytes()),
                    ],
                    uid_validity: v,
                    next_uid: next,
                    records,
                }
            })
    }

    proptest! {
        #[test]
        fn write_then_parse_is_identity(l in arb_list()) {
            prop_assert_eq!(Uidlist::parse(&l.to_bytes()).unwrap(), l);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(l) = Uidlist::parse(&data) {
                prop_assert!(Uidlist::parse(&l.to_bytes()).is_ok());
            }
        }
    }

    /// Pieces of uidlist lines, so generated input reaches every branch.
    fn uidlist_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"3"[..],
            b"1",
            b" ",
            b"V",
            b"N",
            b"G",
            b"W",
            b"5",
            b"0",
            b"4294967295",
            b"4294967296",
            b":",
            b" :",
            b"\n",
            b"\r",
            b"\r\n",
            b"/",
            b"a",
            "é".as_bytes(),
            b"\0",
            b"\xff",
        ];
        crate::hostile::fragments(piece, 40)
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_what_parses_re_encodes(
            data in crate::hostile::or_any_bytes(uidlist_like(), 400),
        ) {
            let parsed = Uidlist::parse(&data);
            // A reader that hands out a few bytes at a time gives the same.
            let small = std::io::BufReader::with_capacity(3, &data[..]);
            prop_assert_eq!(Uidlist::parse_reader(small), parsed.clone());
            if let Ok(l) = parsed {
                let bytes = l.to_bytes();
                let back = Uidlist::parse(&bytes);
                prop_assert!(back.is_ok(), "{:?} -> {:?}: {back:?}", String::from_utf8_lossy(&data), String::from_utf8_lossy(&bytes));
                let back = back.unwrap();
                // A CR that ends a line is taken as part of its line end,
                // so a name or header field ending in CR cannot survive.
                let cr_at_end = l.records.iter().any(|r| r.name.ends_with(b"\r"))
                    || l.header.last().is_some_and(|(_, v)| v.ends_with(b"\r"));
                if !cr_at_end {
                    prop_assert_eq!(&back.records, &l.records);
                }
                prop_assert_eq!(back.uid_validity(), l.uid_validity());
                prop_assert_eq!(back.next_uid(), l.next_uid());
                prop_assert_eq!(back.to_bytes(), bytes);
            }
        }
    }
}
