//! Message file names: `<base>[:2,<flags>]`.
//!
//! The base (everything before the first `:`) is a message's identity in
//! every UID map, so it is never changed; the info part carries the flags.

/// True for names Dovecot would treat as messages in `cur/` or `new/`.
pub fn is_message_name(name: &[u8]) -> bool {
    !matches!(name.first(), None | Some(b'.')) && !name.contains(&b'/') && !name.contains(&0)
}

/// The base name: everything before the first `:`.
pub fn base(name: &[u8]) -> &[u8] {
    super::split_once(name, b':').map_or(name, |(base, _)| base)
}

/// The flag letters of a `:2,` info part (up to a further `,`), if any.
pub fn flags(name: &[u8]) -> Option<&[u8]> {
    let info = name.get(base(name).len()..)?;
    let letters = info.strip_prefix(b":2,")?;
    Some(super::split_once(letters, b',').map_or(letters, |(flags, _)| flags))
}

/// A name for the second of two messages that share `base`: a base of
/// its own made from `id` (stable across passes), without the `,S=`/`,W=`
/// sizes of the other message's name, and the same info part (`info`
/// starts at the `:` or is empty).
pub fn with_new_base(base: &[u8], id: u64, info: &[u8]) -> Vec<u8> {
    let head = match base.iter().position(|&b| b == b',') {
        Some(p) => &base[..p],
        None => base,
    };
    let mut out = head.to_vec();
    out.extend_from_slice(format!("-dup{id}").as_bytes());
    out.extend_from_slice(info);
    out
}

/// The physical size from a `,S=<n>` field in the base, when present.
pub fn size_from_name(name: &[u8]) -> Option<u64> {
    let b = base(name);
    let pos = b.windows(3).position(|w| w == b",S=")?;
    let digits = b.get(pos + 3..)?;
    let end = digits
        .iter()
        .position(|d| !d.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_dovecot_and_courier_names() {
        let d = b"1795946589.M961066P13496.vm,S=118,W=125:2,STd";
        assert_eq!(base(d), b"1795946589.M961066P13496.vm,S=118,W=125");
        assert_eq!(flags(d), Some(&b"STd"[..]));
        assert_eq!(size_from_name(d), Some(118));

        let n = b"1795946853.M83722P16285V0I642.vm,S=125";
        assert_eq!(base(n), n);
        assert_eq!(flags(n), None);
        assert_eq!(flags(b"x:2,FS,extra"), Some(&b"FS"[..]));
        assert_eq!(flags(b"x:1,foo"), None);
        assert_eq!(size_from_name(b"x,W=5"), None);
        assert_eq!(size_from_name(b"x,S=12:2,S=99"), Some(12));
    }

    #[test]
    fn a_duplicate_gets_a_base_of_its_own() {
        let n = with_new_base(b"1700000000.M1P1.host,S=20", 77, b":2,S");
        assert_eq!(n, b"1700000000.M1P1.host-dup77:2,S");
        assert_eq!(base(&n), b"1700000000.M1P1.host-dup77");
        assert_eq!(size_from_name(&n), None);
        assert_eq!(with_new_base(b"x", 1, b""), b"x-dup1");
    }

    #[test]
    fn message_names() {
        assert!(is_message_name(b"123.abc:2,S"));
        assert!(!is_message_name(b".nfs000"));
        assert!(!is_message_name(b""));
    }

    proptest! {
        #[test]
        fn base_is_prefix_without_colon(name in proptest::collection::vec(any::<u8>(), 0..60)) {
            let b = base(&name);
            prop_assert!(name.starts_with(b));
            prop_assert!(!b.contains(&b':'));
            if let Some(f) = flags(&name) {
                prop_assert!(!f.contains(&b','));
            }
            let _ = size_from_name(&name);
        }
    }

    fn file_name_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"1795946589.M1P2.vm"[..],
            b",S=",
            b",S=18446744073709551616",
            b",S=12",
            b",W=5",
            b":",
            b":2,",
            b":1,",
            b",",
            b"FS",
            b".",
            b"/",
            b"\0",
            "é".as_bytes(),
            b"\xff",
        ];
        crate::hostile::fragments(piece, 12)
    }

    proptest! {
        #[test]
        fn name_functions_never_panic(
            name in crate::hostile::or_any_bytes(file_name_like(), 300),
        ) {
            let _ = is_message_name(&name);
            let b = base(&name);
            prop_assert!(name.starts_with(b));
            if let Some(f) = flags(&name) {
                prop_assert!(!f.contains(&b','));
                prop_assert!(name.get(b.len()..).is_some_and(|info| info.starts_with(b":2,")));
            }
            if let Some(size) = size_from_name(&name) {
                prop_assert!(b.windows(3).any(|w| w == b",S="), "{size}");
            }
        }
    }
}
