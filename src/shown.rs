//! How hostile input appears in log lines, reports and e-mails: control
//! characters escaped (a newline in a file name must not forge a log
//! line), invalid UTF-8 as `\xNN`, and only a short excerpt of anything
//! long (a 40 MB one-line control file must not become a 40 MB log line).

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The most of one piece of input quoted anywhere, in bytes.
pub const MAX_QUOTE: usize = 200;
/// Paths are mostly trusted configuration; their user-made tail can be a
/// few names long, so they get more room (the middle is cut).
const MAX_PATH: usize = 400;

/// At most `MAX_QUOTE` bytes of `b`, escaped, with the full length when cut.
pub fn bytes(b: &[u8]) -> String {
    let mut out = String::new();
    escape_into(&mut out, &b[..b.len().min(MAX_QUOTE)]);
    if b.len() > MAX_QUOTE {
        out.push_str(&format!("… ({} bytes)", b.len()));
    }
    out
}

/// `bytes` for text.
pub fn text(s: &str) -> String {
    bytes(s.as_bytes())
}

/// A path (or name) for a message: escaped, the middle of a long one cut.
pub fn path(p: &Path) -> Shown<'_> {
    Shown(p.as_os_str().as_bytes())
}

/// See [`path`].
pub struct Shown<'a>(&'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let mut out = String::new();
        if b.len() <= MAX_PATH {
            escape_into(&mut out, b);
        } else {
            escape_into(&mut out, &b[..MAX_PATH / 4]);
            out.push('…');
            escape_into(&mut out, &b[b.len() - MAX_PATH * 3 / 4..]);
        }
        f.write_str(&out)
    }
}

/// Binary units with one decimal: "512 B", "12.3 MiB".
pub fn bytes_human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.95 would print as "1024.0"; move up a unit instead.
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// One log line as written: every control character escaped except the
/// final newline, so each event stays exactly one line.
pub fn log_line(line: &[u8]) -> Vec<u8> {
    let (body, nl) = match line.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (line, false),
    };
    // Colour codes of a terminal are ours, not input: keep ESC there.
    let mut out = String::with_capacity(line.len());
    escape_with(&mut out, body, |c| c == '\x1b');
    let mut out = out.into_bytes();
    if nl {
        out.push(b'\n');
    }
    out
}

fn escape_into(out: &mut String, b: &[u8]) {
    escape_with(out, b, |_| false);
}

fn escape_with(out: &mut String, mut b: &[u8], keep: impl Fn(char) -> bool) {
    while !b.is_empty() {
        let (valid, rest) = match std::str::from_utf8(b) {
            Ok(s) => (s, &b[b.len()..]),
            Err(e) => {
                let (ok, bad) = b.split_at(e.valid_up_to());
                (std::str::from_utf8(ok).unwrap_or_default(), bad)
            }
        };
        for c in valid.chars() {
            if c.is_control() && !keep(c) {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
        if let Some((&bad, tail)) = rest.split_first() {
            out.push_str(&format!("\\x{bad:02x}"));
            b = tail;
        } else {
            b = rest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_controls_and_bad_utf8_and_cuts() {
        assert_eq!(bytes(b"Ko\xc5\xa1 a\nb\x00\xff"), "Koš a\\nb\\0\\xff");
        let long = vec![b'x'; 40 << 20];
        let s = bytes(&long);
        assert!(s.len() < MAX_QUOTE + 30, "{}", s.len());
        assert!(s.ends_with("(41943040 bytes)"));
        let p = format!("/v/{}\n{}", "a".repeat(300), "b".repeat(300));
        let shown = path(Path::new(&p)).to_string();
        assert!(!shown.contains('\n') && shown.contains('…') && shown.len() < MAX_PATH + 10);
        assert_eq!(
            log_line(b"\x1b[1mINFO\x1b[0m x\nfake line\n"),
            b"\x1b[1mINFO\x1b[0m x\\nfake line\n"
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(bytes_human(0), "0 B");
        assert_eq!(bytes_human(1023), "1023 B");
        assert_eq!(bytes_human(1536), "1.5 KiB");
        assert_eq!(bytes_human(1_048_575), "1.0 MiB");
        assert_eq!(bytes_human(12_900_000), "12.3 MiB");
        assert_eq!(bytes_human(u64::MAX), "16.0 EiB");
    }

    proptest! {
        #[test]
        fn never_a_control_character_and_never_long(b in proptest::collection::vec(any::<u8>(), 0..1000)) {
            for s in [bytes(&b), path(Path::new(std::ffi::OsStr::from_bytes(&b))).to_string()] {
                prop_assert!(!s.chars().any(char::is_control), "{s:?}");
                prop_assert!(s.len() <= 4 * MAX_PATH + 40);
            }
            let l = log_line(&b);
            let nl = l.iter().filter(|&&c| c == b'\n').count();
            prop_assert!(nl <= 1);
        }
    }
}
