//! Password hashes carried unchanged, but always with an explicit Dovecot
//! `{SCHEME}` prefix: only passwd-file auto-detects bare `$1$`; every other
//! bare hash depends on a default scheme that the target may not share.

/// A hash as it will be written to the target, with the recognised scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedHash {
    /// Scheme name as it appears in the prefix (`None` for an empty field).
    pub scheme: Option<String>,
    /// The full value to write, including the prefix.
    pub value: String,
}

/// True for a valid scheme name such as `SHA512-CRYPT` or `PLAIN-MD5.b64`.
pub fn is_scheme_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Scheme for a bare modular-crypt string `$id$…`, if it is one.
fn crypt_scheme(hash: &str) -> Option<&'static str> {
    let rest = hash.strip_prefix('$')?;
    let (id, tail) = rest.split_once('$')?;
    if id.is_empty() || tail.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(match id {
        "1" => "MD5-CRYPT",
        "5" => "SHA256-CRYPT",
        "6" => "SHA512-CRYPT",
        "2a" | "2b" | "2y" => "BLF-CRYPT",
        "argon2id" => "ARGON2ID",
        "argon2i" => "ARGON2I",
        _ => "CRYPT",
    })
}

/// Gives `hash` an explicit prefix. A prefixed hash is kept as it is; a
/// bare crypt string gets the scheme that verifies it; anything else is
/// read the way the source passdb read it, with `default_scheme`.
pub fn carry(hash: &str, default_scheme: &str) -> CarriedHash {
    if hash.is_empty() {
        return CarriedHash {
            scheme: None,
            value: String::new(),
        };
    }
    if let Some(rest) = hash.strip_prefix('{')
        && let Some((scheme, _)) = rest.split_once('}')
        && is_scheme_name(scheme)
    {
        return CarriedHash {
            scheme: Some(scheme.to_string()),
            value: hash.to_string(),
        };
    }
    let scheme = crypt_scheme(hash).unwrap_or(default_scheme);
    CarriedHash {
        scheme: Some(scheme.to_string()),
        value: format!("{{{scheme}}}{hash}"),
    }
}

/// True for a traditional 13-character DES crypt string.
fn is_des_crypt(hash: &str) -> bool {
    hash.len() == 13
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
}

/// A Courier authlib password (field name and value) in the Dovecot form
/// that verifies it. Unlike `carry`, nothing unknown passes through: a
/// form Dovecot cannot verify is an error, never a silently dead login.
pub fn carry_courier(field: &str, value: &str) -> Result<CarriedHash, String> {
    let carried = |scheme: &str, body: &str| CarriedHash {
        scheme: Some(scheme.to_string()),
        value: format!("{{{scheme}}}{body}"),
    };
    if field == "hmac-md5pw" {
        // Courier's HMAC-MD5 state is Dovecot's CRAM-MD5 verbatim.
        return if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(carried("CRAM-MD5", value))
        } else {
            Err("hmac-md5pw is not 64 hex digits".into())
        };
    }
    if let Some(rest) = value.strip_prefix('{')
        && let Some((prefix, body)) = rest.split_once('}')
    {
        // Courier matches prefixes case-insensitively (PostfixAdmin writes them lower-case).
        return match prefix.to_ascii_uppercase().as_str() {
            "MD5" => Ok(carried("PLAIN-MD5.b64", body)),
            "MD5RAW" => Ok(carried("PLAIN-MD5", body)),
            p @ ("SHA" | "SHA256" | "SHA512" | "SSHA") => Ok(carried(p, body)),
            "CRYPT" => carry_courier_crypt(body),
            _ => Err(format!("unknown Courier hash form {{{prefix}}}")),
        };
    }
    carry_courier_crypt(value)
}

/// What Courier hands to libc crypt(): modular crypt strings and DES.
fn carry_courier_crypt(hash: &str) -> Result<CarriedHash, String> {
    let scheme = match crypt_scheme(hash) {
        Some(s) => s,
        None if is_des_crypt(hash) => "CRYPT",
        None => return Err("not a hash form Courier or Dovecot can verify".into()),
    };
    Ok(CarriedHash {
        scheme: Some(scheme.to_string()),
        value: format!("{{{scheme}}}{hash}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(h: &str) -> String {
        carry(h, "CRYPT").value
    }

    #[test]
    fn bare_crypt_strings() {
        assert_eq!(
            v("$1$abcdefgh$zqlK0cLw7wMRRO49PNOrq0"),
            "{MD5-CRYPT}$1$abcdefgh$zqlK0cLw7wMRRO49PNOrq0"
        );
        assert_eq!(v("$5$salt$x"), "{SHA256-CRYPT}$5$salt$x");
        assert_eq!(
            v("$6$rounds=5000$salt$x"),
            "{SHA512-CRYPT}$6$rounds=5000$salt$x"
        );
        for id in ["2a", "2b", "2y"] {
            assert_eq!(
                v(&format!("${id}$05$x")),
                format!("{{BLF-CRYPT}}${id}$05$x")
            );
        }
        assert_eq!(
            v("$argon2id$v=19$m=65536$x"),
            "{ARGON2ID}$argon2id$v=19$m=65536$x"
        );
        assert_eq!(v("$argon2i$v=19$x"), "{ARGON2I}$argon2i$v=19$x");
        assert_eq!(v("$y$j9T$fin6lo$ZCzY"), "{CRYPT}$y$j9T$fin6lo$ZCzY");
        assert_eq!(v("abgKKnhNqWYLA"), "{CRYPT}abgKKnhNqWYLA");
    }

    #[test]
    fn prefixed_hashes_are_kept() {
        for h in [
            "{SHA512-CRYPT}$6$a$b",
            "{ssha}6YO+9J9IzxY/+l8b0VDxKblp2nv6v104",
            "{PLAIN-MD5.b64}hqPmeKzc1l+K9J7N4wa5eQ==",
            "{PBKDF2}$1$salt$5000$abc",
        ] {
            let c = carry(h, "CRYPT");
            assert_eq!(c.value, h);
        }
        assert_eq!(carry("{SSHA}x", "CRYPT").scheme.as_deref(), Some("SSHA"));
    }

    #[test]
    fn non_crypt_bare_values_use_the_default_scheme() {
        assert_eq!(
            carry("86a3e678acdcd65f8af49ecde306b979", "PLAIN-MD5").value,
            "{PLAIN-MD5}86a3e678acdcd65f8af49ecde306b979"
        );
        assert_eq!(carry("!$6$locked$x", "CRYPT").value, "{CRYPT}!$6$locked$x");
        assert_eq!(
            carry("{not a scheme}x", "PLAIN").value,
            "{PLAIN}{not a scheme}x"
        );
        assert_eq!(carry("$$", "CRYPT").value, "{CRYPT}$$");
        assert_eq!(carry("", "CRYPT").scheme, None);
    }

    proptest! {
        #[test]
        fn always_prefixed_and_hash_kept(h in "[ -~]{1,60}") {
            let c = carry(&h, "CRYPT");
            let starts = c.value.starts_with('{');
            prop_assert!(starts);
            prop_assert!(c.value.ends_with(&h));
            let scheme = c.scheme.unwrap();
            let prefix = format!("{{{scheme}}}");
            prop_assert!(c.value.starts_with(&prefix));
        }
    }
}
