//! Dovecot `subscriptions`: version 1 (one name per line, levels joined by
//! `.`) and version 2 (`V\t2\n\n` header, levels separated by TAB, each
//! level tab-escaped). Always written as version 2.

/// One subscribed name as hierarchy levels in storage encoding (raw bytes
/// as found; decoding is the caller's business).
pub type Entry = Vec<Vec<u8>>;

const V2_HEADER: &[u8] = b"V\t2\n\n";

pub fn parse(data: &[u8]) -> Vec<Entry> {
    let (v2, body) = match data.strip_prefix(V2_HEADER) {
        Some(rest) => (true, rest),
        None => (false, data),
    };
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(|l| {
            if v2 {
                l.split(|&b| b == b'\t').map(tab_unescape).collect()
            } else {
                l.split(|&b| b == b'.').map(<[u8]>::to_vec).collect()
            }
        })
        .collect()
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
        let e: Vec<_> = parse(data).iter().map(levels).collect();
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
            .iter()
            .map(levels)
            .collect();
        assert_eq!(
            e,
            vec![vec!["INBOX"], vec!["Archive", "2019"], vec!["Entwürfe"]]
        );
    }

    proptest! {
        #[test]
        fn v2_round_trip(entries in proptest::collection::vec(
            proptest::collection::vec("[^\n]{1,8}", 1..4), 0..6)) {
            let bytes = to_v2_bytes(&entries);
            let back: Vec<Vec<String>> = parse(&bytes).iter().map(levels).collect();
            prop_assert_eq!(back, entries);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse(&data);
        }
    }
}
