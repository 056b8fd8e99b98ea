//! `dovecot-keywords`: maps the letters `a`..`z` in file names to keyword
//! names, one `<index> <name>` per line.

use std::collections::BTreeMap;

/// The largest file accepted. It names at most 26 keywords (one per letter
/// `a`..`z`), so even long names stay far below 64 KiB.
pub const MAX_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keywords {
    by_index: BTreeMap<u32, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct KeywordsError {
    pub line: usize,
    pub problem: String,
}

impl Keywords {
    pub fn parse(data: &[u8]) -> Result<Keywords, KeywordsError> {
        if data.len() > MAX_BYTES {
            return Err(KeywordsError {
                line: line_at(data, MAX_BYTES),
                problem: format!(
                    "the file is larger than {MAX_BYTES} bytes (it lists at most 26 keywords)"
                ),
            });
        }
        let text = std::str::from_utf8(data).map_err(|e| KeywordsError {
            line: line_at(data, e.valid_up_to()),
            problem: "not valid UTF-8".into(),
        })?;
        let mut by_index = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let no = i + 1;
            let fail = |problem: &str| KeywordsError {
                line: no,
                problem: problem.to_string(),
            };
            if line.is_empty() {
                continue;
            }
            let (idx, name) = line
                .split_once(' ')
                .ok_or_else(|| fail("expected `<index> <keyword>`"))?;
            let idx: u32 = idx.parse().map_err(|_| fail("the index is not a number"))?;
            if name.is_empty() || name.chars().any(|c| c.is_control() || c == ' ') {
                return Err(fail("invalid keyword name"));
            }
            if by_index.insert(idx, name.to_string()).is_some() {
                return Err(fail("index listed twice"));
            }
        }
        Ok(Keywords { by_index })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (i, n) in &self.by_index {
            out.push_str(&format!("{i} {n}\n"));
        }
        out.into_bytes()
    }
}

/// The 1-based number of the line holding byte `offset`.
fn line_at(data: &[u8], offset: usize) -> usize {
    let before = data.get(..offset).unwrap_or(data);
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let data = b"0 $Label1\n1 Work\n2 $Junk\n3 $Forwarded\n";
        let k = Keywords::parse(data).unwrap();
        assert_eq!(k.by_index.get(&3).map(String::as_str), Some("$Forwarded"));
        assert_eq!(k.by_index.len(), 4);
        assert_eq!(k.to_bytes(), data);
    }

    #[test]
    fn errors_name_the_line() {
        for (data, line) in [
            (&b"0 a\nx b\n"[..], 2),
            (b"0 a\n0 b\n", 2),
            (b"0\n", 1),
            (b"0 \n", 1),
            (b"0 a b\n", 1),
            (b"0 a\n1 \xff\n", 2),
        ] {
            assert_eq!(Keywords::parse(data).unwrap_err().line, line);
        }
    }

    #[test]
    fn size_is_capped_and_errors_stay_brief() {
        let mut full = b"0 a\n".repeat(MAX_BYTES / 4);
        assert_eq!(full.len(), MAX_BYTES);
        assert!(
            Keywords::parse(&full)
                .unwrap_err()
                .problem
                .contains("index listed twice")
        );
        full.push(b'x');
        let e = Keywords::parse(&full).unwrap_err();
        assert_eq!(e.line, MAX_BYTES / 4 + 1);
        assert!(e.problem.contains("larger than 65536 bytes"), "{e}");
        let garbage = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        for data in [&garbage[..], &garbage[..MAX_BYTES], b"0 a\x1b\x00"] {
            let s = Keywords::parse(data).unwrap_err().to_string();
            assert!(s.len() < 1024 && !s.chars().any(char::is_control), "{s}");
        }
    }

    proptest! {
        #[test]
        fn parse_write_parse(entries in proptest::collection::btree_map(0u32..40, "[!-~]{1,12}", 0..10)) {
            let k = Keywords { by_index: entries };
            prop_assert_eq!(Keywords::parse(&k.to_bytes()).unwrap(), k);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Keywords::parse(&data);
        }
    }

    fn keywords_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"0"[..],
            b"1",
            b"25",
            b"4294967296",
            b"-1",
            b"+2",
            b" ",
            b"\n",
            b"\r\n",
            b"\r",
            b"\t",
            b"$Label1",
            b"Work",
            "é".as_bytes(),
            b"\0",
            b"\xff",
            "\u{85}".as_bytes(),
        ];
        crate::hostile::fragments(piece, 30)
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(
            data in crate::hostile::or_any_bytes(keywords_like(), 400),
        ) {
            if let Ok(k) = Keywords::parse(&data) {
                prop_assert_eq!(Keywords::parse(&k.to_bytes()), Ok(k));
            }
        }
    }
}
