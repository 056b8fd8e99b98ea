//! `dovecot-uidlist`: the UID map that keeps IMAP clients from
//! re-downloading. Read in version 1 or 3, written as version 3.
//!
//! The parser enforces the rules that make Dovecot throw a file away and
//! silently renumber (broken header, unordered or out-of-range UIDs, a `/`
//! in a file name), so a carried file is one Dovecot will keep.

use std::fmt;

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
        _ => Err(err(
            line,
            format!("invalid UID {:?}", String::from_utf8_lossy(s)),
        )),
    }
}

impl Uidlist {
    pub fn uid_validity(&self) -> u32 {
        self.uid_validity
    }

    /// The next UID Dovecot will assign: never below the last UID + 1.
    pub fn next_uid(&self) -> u32 {
        let after_last = self.records.last().map_or(1, |r| r.uid.saturating_add(1));
        self.next_uid.max(after_last)
    }

    pub fn parse(data: &[u8]) -> Result<Uidlist, UidlistError> {
        let mut lines = data
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)));
        let (_, head) = lines
            .next()
            .filter(|(_, l)| !l.is_empty())
            .ok_or_else(|| err(1, "empty file"))?;
        let mut fields = head.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let version = fields.next().unwrap_or_default();
        let mut list = match version {
            b"3" => {
                let header: Vec<(u8, Vec<u8>)> = fields.map(|f| (f[0], f[1..].to_vec())).collect();
                let get = |k: u8| header.iter().find(|(key, _)| *key == k).map(|(_, v)| v);
                let v = get(b'V').and_then(|v| parse_u32(v)).filter(|&v| v != 0);
                let n = get(b'N').and_then(|v| parse_u32(v)).filter(|&n| n != 0);
                let (Some(uid_validity), Some(next_uid)) = (v, n) else {
                    return Err(err(
                        1,
                        "broken header: V<uidvalidity> and N<nextuid> must be non-zero numbers",
                    ));
                };
                Uidlist {
                    header,
                    uid_validity,
                    next_uid,
                    records: Vec::new(),
                }
            }
            b"1" => {
                let v = fields.next().and_then(parse_u32).filter(|&v| v != 0);
                let n = fields.next().and_then(parse_u32).filter(|&n| n != 0);
                let (Some(uid_validity), Some(next_uid)) = (v, n) else {
                    return Err(err(
                        1,
                        "broken version 1 header: expected `1 <uidvalidity> <nextuid>`",
                    ));
                };
                Uidlist {
                    header: vec![
                        (b'V', uid_validity.to_string().into_bytes()),
                        (b'N', next_uid.to_string().into_bytes()),
                    ],
                    uid_validity,
                    next_uid,
                    records: Vec::new(),
                }
            }
            other => {
                return Err(err(
                    1,
                    format!("unsupported version {:?}", String::from_utf8_lossy(other)),
                ));
            }
        };
        let v1 = version == b"1";
        let mut last = 0u32;
        for (no, line) in lines {
            if line.is_empty() {
                continue;
            }
            let sp = line
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| err(no, "record without a file name"))?;
            let uid = parse_uid(&line[..sp], no)?;
            let mut rest = &line[sp + 1..];
            let mut ext = Vec::new();
            let name = if v1 {
                rest.to_vec()
            } else {
                loop {
                    match rest.first() {
                        Some(b':') => break rest[1..].to_vec(),
                        Some(b' ') => rest = &rest[1..],
                        Some(&key) => {
                            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                            ext.push((key, rest[1..end].to_vec()));
                            rest = &rest[end..];
                        }
                        None => return Err(err(no, "record without ` :<filename>`")),
                    }
                }
            };
            if name.is_empty() || name.contains(&b'/') {
                return Err(err(
                    no,
                    format!("invalid file name {:?}", String::from_utf8_lossy(&name)),
                ));
            }
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
            list.records.push(Record { uid, ext, name });
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
}
