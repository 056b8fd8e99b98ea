//! Maildir++ on-disk formats and where a user's Maildir lives.

pub mod courier;
pub mod filename;
pub mod keywords;
pub mod names;
pub mod subscriptions;
pub mod uidlist;

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
                "\"{}\" is neither \"maildir++\" nor \"fs\"",
                crate::shown::text(other)
            )),
        }
    }
}

pub const UIDLIST: &str = "dovecot-uidlist";
pub const KEYWORDS: &str = "dovecot-keywords";
pub const SUBSCRIPTIONS: &str = "subscriptions";
pub const MAILDIRFOLDER: &str = "maildirfolder";
/// Dovecot index files: rebuilt from the Maildir, never carried (they hold
/// the old tree's sync state and would hide a replaced uidlist).
pub const INDEX_FILES: &[&str] = &[
    "dovecot.index",
    "dovecot.index.log",
    "dovecot.index.log.2",
    "dovecot.index.cache",
    "dovecot.list.index",
    "dovecot.list.index.log",
    "dovecot.list.index.log.2",
];

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
                "home \"{}\" is not an absolute path and no userdb_mail is set",
                shown::text(home)
            ))
        }
    };
    let Some(mail) = mail else {
        return Ok(PathBuf::from(home_abs()?).join("Maildir"));
    };
    let location = format!("mail location \"{}\"", shown::text(mail));
    let mut parts = mail.split(':');
    let driver = parts.next().unwrap_or_default();
    if driver != "maildir" {
        return Err(format!(
            "{location} uses the \"{}\" format; only maildir is supported",
            shown::text(driver)
        ));
    }
    let raw_path = parts.next().unwrap_or_default();
    for opt in parts {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        if key == "LAYOUT" {
            let Some(value) = value else {
                return Err(format!(
                    "{location} has LAYOUT without a value (LAYOUT=maildir++ or LAYOUT=fs)"
                ));
            };
            let said = Layout::parse(&value.to_ascii_lowercase())
                .map_err(|e| format!("{location}: LAYOUT {e}"))?;
            if said != layout {
                return Err(format!(
                    "{location} says {} but [source] layout is {:?}",
                    shown::text(opt),
                    match layout {
                        Layout::MaildirPlusPlus => "maildir++",
                        Layout::Fs => "fs",
                    }
                ));
            }
            continue;
        }
        let fine = matches!(key, "INDEX" | "INDEXPVT" | "VOLATILEDIR" | "UTF-8" | "");
        if !fine {
            return Err(format!(
                "{location}: option \"{}\" is not supported (control files or messages would be elsewhere)",
                shown::text(opt)
            ));
        }
    }
    let mut path = String::new();
    let mut it = raw_path.chars().peekable();
    if it.peek() == Some(&'~') {
        it.next();
        path.push_str(home_abs()?);
    }
    while let Some(c) = it.next() {
        if c != '%' {
            path.push(c);
            continue;
        }
        let mut v = it.next();
        let lower = v == Some('L');
        if lower {
            v = it.next();
        }
        let value = match v {
            Some('u') => user.to_string(),
            Some('n') => local.to_string(),
            Some('d') => domain.to_string(),
            Some('h') => home_abs()?.to_string(),
            Some('%') => "%".to_string(),
            _ => {
                return Err(format!("{location} uses an unsupported variable"));
            }
        };
        path.push_str(&if lower { value.to_lowercase() } else { value });
    }
    if !path.starts_with('/') {
        return Err(format!("{location} is not an absolute path"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
