//! `dovecot-keywords`: maps the letters `a`..`z` in file names to keyword
//! names, one `<index> <name>` per line.

use std::collections::BTreeMap;

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
        let text = std::str::from_utf8(data).map_err(|e| KeywordsError {
            line: data[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
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
}
