//! Maildir++ on-disk formats and where a user's Maildir lives.

pub(crate) mod courier;
pub(crate) mod filename;
pub(crate) mod keywords;
pub mod names;
pub(crate) mod subscriptions;
pub(crate) mod uidlist;

use std::path::PathBuf;

use crate::shown;

/// How folders sit below the Maildir root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `.Sent`, `.Archive.2019` (Courier's and Dovecot's default).
    MaildirPlusPlus,
    /// `Sent/`, `Archive/2019/` (Dovecot's `LAYOUT=fs`).
    Fs,
}

impl Layout {
    pub fn parse(s: &str) -> Result<Layout, String> {
        match s {
            "maildir++" => Ok(Layout::MaildirPlusPlus),
            "fs" => Ok(Layout::Fs),
            other => Err(format!(
                "{:?} is neither \"maildir++\" nor \"fs\"",
                shown::text(other)
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::MaildirPlusPlus => "maildir++",
            Layout::Fs => "fs",
        }
    }
}

pub const UIDLIST: &str = "dovecot-uidlist";
pub const KEYWORDS: &str = "dovecot-keywords";
pub const SUBSCRIPTIONS: &str = "subscriptions";
pub const MAILDIRFOLDER: &str = "maildirfolder";
/// Dovecot index files: rebuilt from the Maildir, never carried with a
/// folder's messages (they hold the old tree's sync state and would hide a
/// replaced uidlist). Only an emptied skipped folder gets the first three
/// (see `EXPUNGE_RECORD`).
pub const INDEX_FILES: &[&str] = &[
    "dovecot.index",
    "dovecot.index.log",
    "dovecot.index.log.2",
    "dovecot.index.cache",
    "dovecot.list.index",
    "dovecot.list.index.log",
    "dovecot.list.index.log.2",
];
/// The index of a folder whose messages are not migrated: carried into its
/// emptied copy, the new Dovecot finds every message it lists gone and
/// records their expunge above the old HIGHESTMODSEQ, so a QRESYNC client
/// is told (`VANISHED`) rather than left with copies it would upload again.
pub const EXPUNGE_RECORD: &[&str] = &["dovecot.index", "dovecot.index.log", "dovecot.index.log.2"];
/// Larger index files are not carried (the folder is emptied all the same).
pub const MAX_INDEX_FILE: u64 = 256 << 20;

/// `s` split at the first `sep`, which belongs to neither part
/// (`<[u8]>::split_once` is not stable yet).
pub(crate) fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// Names a user's Maildir: `userdb_mail=maildir:PATH[:OPTIONS]` when set,
/// else `<home>/Maildir`. Returns an absolute path or why it cannot be used.
/// Both strings come from user databases: errors quote them only briefly.
pub fn maildir_path(
    layout: Layout,
    mail: Option<&str>,
    home: &str,
    user: &str,
    local: &str,
    domain: &str,
) -> Result<PathBuf, String> {
    let home_abs = || -> Result<&str, String> {
        if home.starts_with('/') {
            Ok(home)
        } else {
            Err(format!(
                "home {:?} is not an absolute path and no userdb_mail is set",
                shown::text(home)
            ))
        }
    };
    let Some(mail) = mail else {
        return Ok(PathBuf::from(home_abs()?).join("Maildir"));
    };
    let location = format!("mail location {:?}", shown::text(mail));
    let mut parts = mail.split(':');
    let driver = parts.next().unwrap_or_default();
    // Each message quotes one excerpt, so it stays short whatever the input.
    if driver != "maildir" {
        return Err(format!(
            "mail location format {:?} is not supported; only maildir is",
            shown::text(driver)
        ));
    }
    let raw_path = parts.next().unwrap_or_default();
    for opt in parts {
        check_location_option(opt, layout, &location)?;
    }
    let (tilde, rest) = match raw_path.strip_prefix('~') {
        Some(rest) => (home_abs()?, rest),
        None => ("", raw_path),
    };
    let expanded = crate::vars::expand(rest, crate::vars::MAIL_LOCATION, |v| match v {
        'u' => Ok(user.to_string()),
        'n' => Ok(local.to_string()),
        'd' => Ok(domain.to_string()),
        _ => home_abs().map(str::to_string),
    })
    .map_err(|e| match e {
        crate::vars::ExpandError::Unknown(_) => format!("{location} uses an unsupported variable"),
        crate::vars::ExpandError::Value(e) => e,
    })?;
    let path = format!("{tilde}{expanded}");
    if !path.starts_with('/') {
        return Err(format!("{location} is not an absolute path"));
    }
    Ok(PathBuf::from(path))
}

/// One `:OPTION` of a mail location: `LAYOUT` must agree with the
/// configured layout; only options that move index files are fine.
fn check_location_option(opt: &str, layout: Layout, location: &str) -> Result<(), String> {
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    if key != "LAYOUT" {
        let fine = matches!(key, "INDEX" | "INDEXPVT" | "VOLATILEDIR" | "UTF-8" | "");
        if !fine {
            return Err(format!(
                "mail location option {:?} is not supported (control files or messages would be elsewhere)",
                shown::text(opt)
            ));
        }
        return Ok(());
    }
    let Some(value) = value else {
        return Err(format!(
            "{location} has LAYOUT without a value (LAYOUT=maildir++ or LAYOUT=fs)"
        ));
    };
    let said = Layout::parse(&value.to_ascii_lowercase())
        .map_err(|_| format!("{location}: its LAYOUT is neither \"maildir++\" nor \"fs\""))?;
    if said != layout {
        return Err(format!(
            "{location} says LAYOUT={} but [source] layout is {:?}",
            said.name(),
            layout.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(mail: Option<&str>, home: &str) -> Result<PathBuf, String> {
        maildir_path(
            Layout::MaildirPlusPlus,
            mail,
            home,
            "Jan@example.cz",
            "Jan",
            "example.cz",
        )
    }

    #[test]
    fn locations() {
        assert_eq!(p(None, "/h/jan").unwrap(), PathBuf::from("/h/jan/Maildir"));
        assert_eq!(
            p(Some("maildir:~/Mail"), "/h/jan").unwrap(),
            PathBuf::from("/h/jan/Mail")
        );
        assert_eq!(
            p(Some("maildir:/srv/%d/%Ln:INDEX=/idx/%u:UTF-8"), "").unwrap(),
            PathBuf::from("/srv/example.cz/jan")
        );
        assert_eq!(
            p(Some("maildir:%h/M"), "/h").unwrap(),
            PathBuf::from("/h/M")
        );
    }

    #[test]
    fn layout_option_must_match_the_config() {
        let fs = maildir_path(
            Layout::Fs,
            Some("maildir:~/M:LAYOUT=fs"),
            "/h",
            "u",
            "u",
            "d",
        );
        assert_eq!(fs.unwrap(), PathBuf::from("/h/M"));
        assert!(
            maildir_path(
                Layout::Fs,
                Some("maildir:~/M:LAYOUT=maildir++"),
                "/h",
                "u",
                "u",
                "d"
            )
            .is_err()
        );
    }

    #[test]
    fn layout_option_without_a_value_is_an_error_not_a_panic() {
        let e = p(Some("maildir:~/Maildir:LAYOUT"), "/h").unwrap_err();
        assert!(e.contains("LAYOUT"), "{e}");
        assert!(e.contains("maildir:~/Maildir:LAYOUT"), "{e}");
    }

    #[test]
    fn errors_quote_a_huge_location_briefly() {
        let garbage = "\x1b[31m\0\t\r\u{85}é".repeat(450_000);
        for (mail, home) in [
            (Some(format!("maildir:{garbage}")), "/h"),
            (Some(format!("{garbage}:x")), "/h"),
            (Some(format!("maildir:~/M:LAYOUT={garbage}")), "/h"),
            (Some(format!("maildir:~/M:{garbage}=1")), "/h"),
            (Some(format!("maildir:~/M:LAYOUT:{garbage}")), "/h"),
            (None, garbage.as_str()),
        ] {
            let e = p(mail.as_deref(), home).unwrap_err();
            assert!(e.len() < 1024, "{}", e.len());
            assert!(!e.chars().any(char::is_control), "{e}");
        }
    }

    #[test]
    fn refused_locations() {
        for (mail, home, needle) in [
            (None, "rel", "absolute"),
            (Some("mdbox:~/mdbox"), "/h", "mdbox"),
            (
                Some("maildir:~/M:LAYOUT=fs"),
                "/h",
                "layout is \"maildir++\"",
            ),
            (Some("maildir:~/M:LAYOUT=mbox"), "/h", "neither"),
            (Some("maildir:~/M:CONTROL=/c"), "/h", "CONTROL"),
            (Some("maildir:%x"), "/h", "variable"),
            (Some("maildir:M"), "/h", "absolute"),
        ] {
            let e = p(mail, home).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    /// Mail locations built from the pieces the parser looks for.
    fn location_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("maildir:"),
            Just("mdbox:"),
            Just("~/"),
            Just("~"),
            Just("/"),
            Just("%"),
            Just("%L"),
            Just("%u"),
            Just("%n"),
            Just("%d"),
            Just("%h"),
            Just("%%"),
            Just("%Lu"),
            Just(":LAYOUT"),
            Just(":LAYOUT="),
            Just("="),
            Just("fs"),
            Just("FS"),
            Just("maildir++"),
            Just(":UTF-8"),
            Just(":INDEX="),
            Just(":INDEXPVT="),
            Just(":CONTROL="),
            Just(":"),
            Just("Maildir"),
            Just("é"),
            Just("日本"),
            Just("\n"),
            Just("\0"),
            Just("\u{85}"),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..60)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    proptest! {
        #[test]
        fn maildir_path_never_panics_and_errors_are_brief(
            mail in proptest::option::of(prop_oneof![location_like(), any_text()]),
            home in prop_oneof![Just("/h".to_string()), Just(String::new()), Just("rel".to_string()), any_text()],
            fs in any::<bool>(),
        ) {
            let layout = if fs { Layout::Fs } else { Layout::MaildirPlusPlus };
            match maildir_path(layout, mail.as_deref(), &home, "Jan@x.cz", "Jan", "x.cz") {
                Ok(path) => prop_assert!(path.is_absolute()),
                Err(e) => prop_assert!(e.len() < 1024 && !e.chars().any(char::is_control), "{e}"),
            }
        }
    }
}
