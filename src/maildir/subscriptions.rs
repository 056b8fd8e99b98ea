//! Dovecot `subscriptions`: version 1 (one name per line, levels joined by
//! `.`) and version 2 (`V\t2\n\n` header, levels separated by TAB, each
//! level tab-escaped). Always written as version 2.

/// One subscribed name as hierarchy levels in storage encoding (raw bytes
/// as found; decoding is the caller's business).
pub type Entry = Vec<Vec<u8>>;

const V2_HEADER: &[u8] = b"V\t2\n\n";

/// The largest file accepted: one line per subscribed folder, so even
/// thousands of long folder names stay far below 1 MiB.
pub const MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionsError {
    #[error("larger than {MAX_BYTES} bytes ({size} bytes), not a subscriptions file")]
    TooLarge { size: usize },
}

pub fn parse(data: &[u8]) -> Result<Vec<Entry>, SubscriptionsError> {
    if data.len() > MAX_BYTES {
        return Err(SubscriptionsError::TooLarge { size: data.len() });
    }
    let (v2, body) = match data.strip_prefix(V2_HEADER) {
        Some(rest) => (true, rest),
        None => (false, data),
    };
    let entries = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(|l| -> Entry {
            if v2 {
                l.split(|&b| b == b'\t').map(tab_unescape).collect()
            } else {
                l.split(|&b| b == b'.').map(<[u8]>::to_vec).collect()
            }
        })
        // A line that unescapes to nothing (a lone `\001`) names no folder
        // and would not survive being written back.
        .filter(|e| !matches!(&e[..], [only] if only.is_empty()))
        .collect();
    Ok(entries)
}

pub fn to_v2_bytes<S: AsRef<str>>(entries: &[Vec<S>]) -> Vec<u8> {
    let mut out = V2_HEADER.to_vec();
    for e in entries {
        for (i, level) in e.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            tab_escape(level.as_ref().as_bytes(), &mut out);
        }
        out.push(b'\n');
    }
    out
}

// Dovecot's str_tabescape: \001, TAB, CR and LF become \001 + 1/t/r/n.
fn tab_escape(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        match b {
            0x01 => out.extend_from_slice(b"\x011"),
            b'\t' => out.extend_from_slice(b"\x01t"),
            b'\r' => out.extend_from_slice(b"\x01r"),
            b'\n' => out.extend_from_slice(b"\x01n"),
            _ => out.push(b),
        }
    }
}

fn tab_unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        if b != 0x01 {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'1') => out.push(0x01),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(&other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn levels(e: &Entry) -> Vec<String> {
        e.iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn reads_v2() {
        let data = b"V\t2\n\nKo&AWE-\nArchive\t2019\nTom &- Jerry\nINBOX\n";
        let e: Vec<_> = parse(data).unwrap().iter().map(levels).collect();
        assert_eq!(
            e,
            vec![
                vec!["Ko&AWE-"],
                vec!["Archive", "2019"],
                vec!["Tom &- Jerry"],
                vec!["INBOX"]
            ]
        );
        assert_eq!(to_v2_bytes(&e), data);
    }

    #[test]
    fn reads_v1() {
        let e: Vec<_> = parse(b"INBOX\nArchive.2019\nEntw\xc3\xbcrfe\n")
            .unwrap()
            .iter()
            .map(levels)
            .collect();
        assert_eq!(
            e,
            vec![vec!["INBOX"], vec!["Archive", "2019"], vec!["Entwürfe"]]
        );
    }

    #[test]
    fn size_is_capped() {
        let full = b"INBOX\n".repeat(MAX_BYTES / 6);
        assert_eq!(parse(&full).unwrap().len(), MAX_BYTES / 6);
        let huge = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        let e = parse(&huge).unwrap_err().to_string();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        assert!(e.len() < 1024 && !e.chars().any(char::is_control), "{e}");
    }

    #[test]
    fn a_line_that_unescapes_to_nothing_is_dropped() {
        let e: Vec<_> = parse(b"V\t2\n\n\x01\nSent\n")
            .unwrap()
            .iter()
            .map(levels)
            .collect();
        assert_eq!(e, vec![vec!["Sent"]]);
    }

    proptest! {
        #[test]
        fn v2_round_trip(entries in proptest::collection::vec(
            proptest::collection::vec("[^\n]{1,8}", 1..4), 0..6)) {
            let bytes = to_v2_bytes(&entries);
            let back: Vec<Vec<String>> = parse(&bytes).unwrap().iter().map(levels).collect();
            prop_assert_eq!(back, entries);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert!(parse(&data).is_ok());
        }
    }

    fn subscriptions_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"V\t2\n\n"[..],
            b"V",
            b"\t",
            b"2",
            b"\n",
            b"\r",
            b"\x01",
            b"\x01t",
            b"\x01n",
            b"\x011",
            b".",
            b"INBOX",
            "Koš".as_bytes(),
            b"&AWE-",
            b"\xff",
            b"\0",
        ];
        crate::hostile::fragments(piece, 30)
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_utf8_entries_round_trip(
            data in crate::hostile::or_any_bytes(subscriptions_like(), 400),
        ) {
            let entries = parse(&data).unwrap();
            let text: Option<Vec<Vec<String>>> = entries
                .iter()
                .map(|e| e.iter().map(|l| String::from_utf8(l.clone()).ok()).collect())
                .collect();
            if let Some(text) = text {
                let back: Vec<Vec<String>> = parse(&to_v2_bytes(&text)).unwrap().iter().map(levels).collect();
                prop_assert_eq!(back, text);
            }
        }
    }
}
