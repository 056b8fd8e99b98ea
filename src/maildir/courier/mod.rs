//! Courier-IMAP's per-folder metadata, converted to Dovecot's.
//!
//! Pure conversions: bytes in, typed values out, no filesystem access. The
//! caller reads the files, decides per folder, writes the results, and
//! never copies any of [`COURIER_FILES`] to the target.
//!
//! * [`uiddb`]: `courierimapuiddb` (+ the POP3 list) → `dovecot-uidlist`
//! * [`keywords`]: `courierimapkeywords/` → `dovecot-keywords` + letters
//! * [`subscribed`]: `courierimapsubscribed` → subscribed folder names
//! * [`pop3`]: `courierpop3dsizelist` → POP3 UIDLs and order
//! * [`acl`]: `courierimapacl` → `dovecot-acl` lines

pub mod acl;

/// A decimal number as Courier writes it (digits only).
fn num(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Bytes for an error message or warning: escaped, and only a short
/// excerpt of anything long.
fn shown(b: &[u8]) -> String {
    crate::shown::bytes(b)
}

/// Lines with their 1-based numbers, CR before LF dropped.
fn numbered_lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}
pub mod keywords;
pub mod pop3;
pub mod subscribed;
pub mod uiddb;

/// Courier and SqWebMail files (or directories) in a Maildir or folder
/// that Dovecot never reads. They are converted (or deliberately dropped)
/// instead of being copied: left behind in the target they would be stale
/// the moment Dovecot changes anything, and would mislead a later
/// conversion run.
pub const COURIER_FILES: &[&str] = &[
    "courierimapuiddb",
    "courierimapkeywords",
    "courierimapacl",
    "courierimaphieracl",
    "courierimapsubscribed",
    "courierimapsnapshots",
    "courierpop3dsizelist",
    // Courier's filesystem-shared folders: no Dovecot equivalent on disk.
    "shared-maildirs",
    "shared-folders",
    // SqWebMail's address books and caches (the address book is user data,
    // handled separately as contacts, never as a Maildir file).
    "sqwebmail-addressbook",
    "sqwebmail-ldapaddressbook",
    "sqwebmail-curcache",
    "sqwebmail-curcnt",
    // Maildir++ quota: Courier does not count Trash, Dovecot does, so a
    // carried file would be wrong; Dovecot rebuilds it when missing.
    "maildirsize",
];

/// True if `name` (one directory entry of a Maildir or folder) is Courier
/// metadata that must not be copied.
pub fn is_courier_file(name: &[u8]) -> bool {
    COURIER_FILES.iter().any(|f| f.as_bytes() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn courier_files() {
        assert!(is_courier_file(b"courierimapuiddb"));
        assert!(is_courier_file(b"maildirsize"));
        assert!(!is_courier_file(b"dovecot-uidlist"));
        assert!(!is_courier_file(b"maildirfolder"));
        assert!(!is_courier_file(b"cur"));
    }
}
