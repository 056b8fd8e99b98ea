//! `%` variables in templates, in Dovecot's syntax: the one expander behind
//! the configuration's user templates (`target.home`, the freeze command)
//! and a userdb's mail location.

use std::convert::Infallible;

use crate::job::{Domain, LocalPart};

/// What a template may say besides `%%` (a percent sign).
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    vars: &'static [char],
    /// `%L` before a variable lower-cases its value.
    lower: bool,
}

/// The configuration's templates: `%u` user@domain, `%d` domain, `%n`
/// local part.
pub const USER: Syntax = Syntax {
    vars: &['u', 'd', 'n'],
    lower: false,
};

/// A userdb's mail location: also `%h` the home, and Dovecot's `%L`.
pub const MAIL_LOCATION: Syntax = Syntax {
    vars: &['u', 'n', 'd', 'h'],
    lower: true,
};

/// Why a template could not be expanded.
#[derive(Debug, PartialEq, Eq)]
pub enum ExpandError<E> {
    /// `%` followed by this (`None`: by the end of the text).
    Unknown(Option<char>),
    /// The caller could not give a variable's value.
    Value(E),
}

/// Expands `template` left to right, asking `value` for each variable as
/// it comes, so the first problem in the text is the one reported.
pub fn expand<E>(
    template: &str,
    syntax: Syntax,
    mut value: impl FnMut(char) -> Result<String, E>,
) -> Result<String, ExpandError<E>> {
    let mut out = String::with_capacity(template.len());
    let mut it = template.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut v = it.next();
        let lower = syntax.lower && v == Some('L');
        if lower {
            v = it.next();
        }
        let text = match v {
            Some('%') => "%".to_string(),
            Some(v) if syntax.vars.contains(&v) => value(v).map_err(ExpandError::Value)?,
            other => return Err(ExpandError::Unknown(other)),
        };
        out.push_str(&if lower { text.to_lowercase() } else { text });
    }
    Ok(out)
}

/// A [`USER`] template for one mailbox.
pub fn expand_user(template: &str, local: &LocalPart, domain: &Domain) -> Result<String, String> {
    expand(template, USER, |v| {
        Ok(match v {
            'u' => format!("{local}@{domain}"),
            'd' => domain.to_string(),
            _ => local.to_string(),
        })
    })
    .map_err(user_error)
}

/// The variables a [`USER`] template uses, in order.
pub fn user_variables(template: &str) -> Result<Vec<char>, String> {
    let mut seen = Vec::new();
    expand(template, USER, |v| {
        seen.push(v);
        Ok(String::new())
    })
    .map_err(user_error)?;
    Ok(seen)
}

fn user_error(e: ExpandError<Infallible>) -> String {
    match e {
        ExpandError::Unknown(c) => format!(
            "unknown variable %{} (use %u, %d, %n or %%)",
            c.map(String::from).unwrap_or_default()
        ),
        ExpandError::Value(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_templates() {
        let (n, d) = (
            LocalPart::parse("Jan").unwrap(),
            Domain::parse("a.cz").unwrap(),
        );
        assert_eq!(
            expand_user("%d/%n %u 100%%", &n, &d).unwrap(),
            "a.cz/Jan Jan@a.cz 100%"
        );
        assert_eq!(
            expand_user("%Ln", &n, &d).unwrap_err(),
            "unknown variable %L (use %u, %d, %n or %%)"
        );
        assert_eq!(
            expand_user("x%", &n, &d).unwrap_err(),
            "unknown variable % (use %u, %d, %n or %%)"
        );
        assert_eq!(user_variables("%d/%%n/%u").unwrap(), ['d', 'u']);
    }

    #[test]
    fn lower_case_modifier_and_lazy_values() {
        let value = |v: char| match v {
            'u' => Ok("Jan@A.cz".to_string()),
            'h' => Err("no home"),
            _ => Ok(String::new()),
        };
        assert_eq!(
            expand("/%Lu/%L%", MAIL_LOCATION, value).unwrap(),
            "/jan@a.cz/%"
        );
        assert_eq!(
            expand("%h/%x", MAIL_LOCATION, value),
            Err(ExpandError::Value("no home"))
        );
        assert_eq!(
            expand("%x/%h", MAIL_LOCATION, value),
            Err(ExpandError::Unknown(Some('x')))
        );
        assert_eq!(
            expand("%L", MAIL_LOCATION, value),
            Err(ExpandError::Unknown(None))
        );
    }
}
