//! Folder names: Maildir++ directory names on disk ↔ decoded names.
//!
//! Dovecot stores folder names in IMAP modified UTF-7 (RFC 3501 §5.1.3) by
//! default; Courier 5 and Dovecot with `:UTF-8` store raw UTF-8, and a store
//! can hold both. A name is decoded once at the boundary into a
//! [`FolderName`] (one Unicode string per hierarchy level) and re-encoded
//! for the target.

use std::fmt;

use crate::shown;

/// How a directory name was stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameEncoding {
    Mutf7,
    Utf8,
}

/// Each variant holds the name as shown to people: escaped and cut to a
/// short excerpt ([`crate::shown`]), never the whole hostile input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("folder name {0:?} has an empty hierarchy level")]
    EmptyLevel(String),
    #[error("folder name {0:?} is neither modified UTF-7 nor UTF-8")]
    Undecodable(String),
    #[error("folder name {0:?} contains a control character")]
    ControlChar(String),
    #[error("{0:?} is not a Maildir++ folder directory name (must start with a single '.')")]
    NotAFolder(String),
}

impl NameError {
    /// What is wrong, without the name: for messages that show it already.
    pub fn problem(&self) -> &'static str {
        match self {
            NameError::EmptyLevel(_) => "has an empty hierarchy level",
            NameError::Undecodable(_) => "is neither modified UTF-7 nor UTF-8",
            NameError::ControlChar(_) => "contains a control character",
            NameError::NotAFolder(_) => "is not a Maildir++ folder directory name",
        }
    }
}

/// A folder below INBOX, as a list of decoded hierarchy levels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolderName {
    levels: Vec<String>,
}

impl FolderName {
    /// Decodes a Maildir++ directory name such as `.Archive.2019` or
    /// `.Ko&AWE-`. Each level may be mUTF-7 or raw UTF-8.
    pub fn from_dir_name(dir: &[u8]) -> Result<(FolderName, NameEncoding), NameError> {
        let shown = || shown::bytes(dir);
        let rest = match dir {
            [b'.', b'.', ..] | [b'.'] => return Err(NameError::NotAFolder(shown())),
            [b'.', rest @ ..] => rest,
            _ => return Err(NameError::NotAFolder(shown())),
        };
        let mut levels = Vec::new();
        let mut encoding = NameEncoding::Mutf7;
        for raw in rest.split(|&b| b == b'.') {
            if raw.is_empty() {
                return Err(NameError::EmptyLevel(shown()));
            }
            let (level, enc) = decode_level(raw)?;
            if enc == NameEncoding::Utf8 {
                encoding = NameEncoding::Utf8;
            }
            levels.push(level);
        }
        Ok((FolderName { levels }, encoding))
    }

    /// Builds a name from decoded levels, e.g. from a `/`-separated
    /// configuration entry.
    pub fn from_levels<I, S>(levels: I) -> Result<FolderName, NameError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let levels: Vec<String> = levels.into_iter().map(Into::into).collect();
        let shown = || shown::text(&levels.join("/"));
        if levels.is_empty() || levels.iter().any(|l| l.is_empty()) {
            return Err(NameError::EmptyLevel(shown()));
        }
        if levels.iter().any(|l| l.chars().any(char::is_control)) {
            return Err(NameError::ControlChar(shown()));
        }
        Ok(FolderName { levels })
    }

    pub fn levels(&self) -> &[String] {
        &self.levels
    }

    /// The Maildir++ directory name in the target's encoding.
    pub fn dir_name(&self, encoding: NameEncoding) -> String {
        let mut s = String::new();
        for l in &self.levels {
            s.push('.');
            s.push_str(&encode_level(l, encoding));
        }
        s
    }

    /// The levels in the target's storage encoding (for subscriptions).
    pub fn storage_levels(&self, encoding: NameEncoding) -> Vec<String> {
        self.levels
            .iter()
            .map(|l| encode_level(l, encoding))
            .collect()
    }

    /// All ancestors from the top level down, then the name itself.
    pub fn ancestors_and_self(&self) -> impl Iterator<Item = FolderName> + '_ {
        (1..=self.levels.len()).map(|n| FolderName {
            levels: self.levels.iter().take(n).cloned().collect(),
        })
    }
}

impl fmt::Display for FolderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.levels.join("/"))
    }
}

fn encode_level(level: &str, encoding: NameEncoding) -> String {
    match encoding {
        NameEncoding::Mutf7 => mutf7_encode(level),
        NameEncoding::Utf8 => level.to_string(),
    }
}

/// Decodes one hierarchy level: strict mUTF-7 first, raw UTF-8 otherwise.
pub fn decode_level(raw: &[u8]) -> Result<(String, NameEncoding), NameError> {
    let shown = || shown::bytes(raw);
    let (s, enc) = match mutf7_decode(raw) {
        Some(s) => (s, NameEncoding::Mutf7),
        None => match std::str::from_utf8(raw) {
            Ok(s) => (s.to_string(), NameEncoding::Utf8),
            Err(_) => return Err(NameError::Undecodable(shown())),
        },
    };
    if s.chars().any(char::is_control) {
        return Err(NameError::ControlChar(shown()));
    }
    Ok((s, enc))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&x| x == c).map(|p| p as u32)
}

/// Encodes a string in IMAP modified UTF-7.
pub fn mutf7_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let mut bits: u32 = 0;
        let mut nbits = 0;
        for unit in pending.drain(..) {
            bits = (bits << 16) | unit as u32;
            nbits += 16;
            while nbits >= 6 {
                nbits -= 6;
                out.push(B64[((bits >> nbits) & 0x3f) as usize] as char);
            }
        }
        if nbits > 0 {
            out.push(B64[((bits << (6 - nbits)) & 0x3f) as usize] as char);
        }
        out.push('-');
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decodes strict modified UTF-7; `None` when `raw` is not valid mUTF-7
/// (8-bit bytes, a bad base64 run, non-zero padding bits, broken surrogates
/// or printable ASCII hidden in base64).
pub fn mutf7_decode(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&c, tail)) = rest.split_first() {
        if !(0x20..=0x7e).contains(&c) {
            return None;
        }
        if c != b'&' {
            out.push(c as char);
            rest = tail;
            continue;
        }
        let (run, after) = super::split_once(tail, b'-')?;
        rest = after;
        if run.is_empty() {
            out.push('&');
            continue;
        }
        let mut units = Vec::with_capacity(run.len() * 6 / 16);
        let mut bits: u32 = 0;
        let mut nbits = 0;
        for &b in run {
            bits = (bits << 6) | b64_value(b)?;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push(((bits >> nbits) & 0xffff) as u16);
            }
        }
        if nbits >= 6 || bits & ((1 << nbits) - 1) != 0 || units.is_empty() {
            return None;
        }
        for ch in char::decode_utf16(units) {
            let ch = ch.ok()?;
            if (' '..='~').contains(&ch) {
                return None;
            }
            out.push(ch);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_table() {
        for (name, disk) in [
            ("Koš", "Ko&AWE-"),
            ("Nevyžádaná pošta", "Nevy&AX4A4Q-dan&AOE- po&AWE-ta"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("Tom & Jerry", "Tom &- Jerry"),
            ("日本語", "&ZeVnLIqe-"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ] {
            assert_eq!(mutf7_encode(name), disk);
            assert_eq!(mutf7_decode(disk.as_bytes()).as_deref(), Some(name));
        }
    }

    #[test]
    fn rejects_invalid_mutf7() {
        for bad in [
            &b"Ko\xc5\xa1"[..],
            b"&AWE",
            b"&A-",
            b"&AGE-",
            b"&2D0-",
            b"&AWF-",
            b"a\x7fb",
        ] {
            assert_eq!(mutf7_decode(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn dir_names_decode_either_encoding() {
        let (n, e) = FolderName::from_dir_name(b".Ko&AWE-").unwrap();
        assert_eq!((n.to_string(), e), ("Koš".into(), NameEncoding::Mutf7));
        let (n, e) = FolderName::from_dir_name(".Koš.2020".as_bytes()).unwrap();
        assert_eq!((n.to_string(), e), ("Koš/2020".into(), NameEncoding::Utf8));
        assert_eq!(n.dir_name(NameEncoding::Mutf7), ".Ko&AWE-.2020");
        let (n, _) = FolderName::from_dir_name(b".Tom & Jerry").unwrap();
        assert_eq!(n.to_string(), "Tom & Jerry");
        assert_eq!(n.dir_name(NameEncoding::Mutf7), ".Tom &- Jerry");
    }

    #[test]
    fn bad_dir_names() {
        assert!(matches!(
            FolderName::from_dir_name(b".a..b"),
            Err(NameError::EmptyLevel(_))
        ));
        assert!(matches!(
            FolderName::from_dir_name(b"..x"),
            Err(NameError::NotAFolder(_))
        ));
        assert!(matches!(
            FolderName::from_dir_name(b".caf\xe9"),
            Err(NameError::Undecodable(_))
        ));
        assert!(matches!(
            FolderName::from_dir_name(b".a\x01b"),
            Err(NameError::Undecodable(_) | NameError::ControlChar(_))
        ));
    }

    #[test]
    fn errors_quote_a_huge_name_briefly() {
        let garbage = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        let dir = [&b"."[..], &garbage].concat();
        let text = String::from_utf8_lossy(&garbage).into_owned();
        let errors = [
            FolderName::from_dir_name(&dir).unwrap_err(),
            FolderName::from_dir_name(&[&dir[..], b".."].concat()).unwrap_err(),
            FolderName::from_dir_name(&garbage).unwrap_err(),
            FolderName::from_levels([text.as_str()]).unwrap_err(),
            FolderName::from_levels([text.as_str(), ""]).unwrap_err(),
        ];
        for e in errors {
            let s = e.to_string();
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    #[test]
    fn ancestry() {
        let a = FolderName::from_levels(["Trash", "2020"]).unwrap();
        let v: Vec<String> = a.ancestors_and_self().map(|n| n.to_string()).collect();
        assert_eq!(v, ["Trash", "Trash/2020"]);
    }

    proptest! {
        #[test]
        fn mutf7_round_trip(s in "\\PC*") {
            let enc = mutf7_encode(&s);
            prop_assert!(enc.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            prop_assert_eq!(mutf7_decode(enc.as_bytes()), Some(s));
        }

        #[test]
        fn mutf7_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(s) = mutf7_decode(&b) {
                // Whatever decodes must re-encode to a decodable form.
                prop_assert_eq!(mutf7_decode(mutf7_encode(&s).as_bytes()), Some(s));
            }
        }

        #[test]
        fn dir_name_round_trip(levels in proptest::collection::vec("[^./\\p{Cc}]{1,12}", 1..4)) {
            let n = FolderName::from_levels(levels).unwrap();
            // Raw UTF-8 with '&' can look like mUTF-7: only mUTF-7 is unambiguous.
            let encodings: &[NameEncoding] = if n.to_string().contains('&') {
                &[NameEncoding::Mutf7]
            } else {
                &[NameEncoding::Mutf7, NameEncoding::Utf8]
            };
            for &enc in encodings {
                let (back, _) = FolderName::from_dir_name(n.dir_name(enc).as_bytes()).unwrap();
                prop_assert_eq!(&back, &n);
            }
        }
    }

    fn dir_name_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"."[..],
            b"..",
            b"&",
            b"-",
            b"&-",
            b"&AWE-",
            b"&AWE",
            b"&2D0-",
            b"&ZeVnLIqe-",
            b"&,,,,-",
            b"&////-",
            b"a",
            b" ",
            b"/",
            "š".as_bytes(),
            b"\xc5",
            b"\x01",
            b"\0",
            b"\x7f",
            "\u{85}".as_bytes(),
        ];
        crate::hostile::fragments(piece, 16)
    }

    proptest! {
        #[test]
        fn decoding_never_panics_and_re_encodes(
            raw in crate::hostile::or_any_bytes(dir_name_like(), 80),
        ) {
            let _ = decode_level(&raw);
            if let Ok((n, _)) = FolderName::from_dir_name(&raw) {
                let (back, _) = FolderName::from_dir_name(n.dir_name(NameEncoding::Mutf7).as_bytes()).unwrap();
                prop_assert_eq!(&back, &n);
                if !n.to_string().contains('&') {
                    let (back, _) = FolderName::from_dir_name(n.dir_name(NameEncoding::Utf8).as_bytes()).unwrap();
                    prop_assert_eq!(&back, &n);
                }
                prop_assert_eq!(FolderName::from_levels(n.levels().to_vec()), Ok(n.clone()));
            }
        }

        #[test]
        fn from_levels_never_panics(levels in proptest::collection::vec(any::<String>(), 0..4)) {
            if let Ok(n) = FolderName::from_levels(levels) {
                let _ = n.dir_name(NameEncoding::Mutf7);
                let _ = n.storage_levels(NameEncoding::Utf8);
                prop_assert_eq!(n.ancestors_and_self().count(), n.levels().len());
            }
        }
    }
}
