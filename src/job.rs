//! Job files: raw JSON from a spool or the command line → validated [`Job`].
//! Every name in a job ends up in paths and userdb lines, so each one is
//! checked here and nowhere trusted later.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::shown;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{}: {source}", crate::shown::path(path))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", crate::shown::path(path))]
    Parse { path: PathBuf, message: String },
    #[error("{}: {problem}", crate::shown::path(path))]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Content and password.
    Move,
    /// A new empty mailbox with the same name and password.
    Recreate,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Move => "move",
            Mode::Recreate => "recreate",
        })
    }
}

/// Endings no job id may have (any case): the spool files a job as
/// `<id>.json` beside the daemon's own `<id>.report.json` (its record) and
/// `<id>.sweep.json` (its sweep schedule), so a job `x.sweep` would be
/// filed as the schedule of a job `x`, and its submitter could rewrite it.
pub const RESERVED_ID_SUFFIXES: [&str; 2] = [".report", ".sweep"];

/// `[A-Za-z0-9._-]{1,64}`, taken from the job file's stem, not ending in a
/// [reserved suffix](RESERVED_ID_SUFFIXES).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn parse(s: &str) -> Result<JobId, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!(
                "job id {:?} must be 1-64 characters of A-Z a-z 0-9 . _ -",
                shown::text(s)
            ));
        }
        if let Some(r) = reserved_suffix(s) {
            return Err(format!(
                "job id {:?} ends in {r:?}, which is reserved for the daemon's own files \
                 (<id>{r}.json); choose another id",
                shown::text(s)
            ));
        }
        Ok(JobId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The reserved suffix `s` ends in, compared without regard to case (a
/// spool on a case-insensitive filesystem).
pub fn reserved_suffix(s: &str) -> Option<&'static str> {
    RESERVED_ID_SUFFIXES.into_iter().find(|r| {
        s.len() >= r.len() && s.as_bytes()[s.len() - r.len()..].eq_ignore_ascii_case(r.as_bytes())
    })
}

/// A lower-case ASCII domain name (IDNs in their xn-- form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Domain(String);

impl Domain {
    pub fn parse(s: &str) -> Result<Domain, String> {
        let d = s.to_ascii_lowercase();
        let bad = |why: &str| Err(format!("domain {:?} {why}", shown::text(s)));
        if d.is_empty() || d.len() > 253 {
            return bad("must be 1-253 characters");
        }
        if !d.is_ascii() {
            return bad("must be ASCII (write an IDN in its xn-- form)");
        }
        for label in d.split('.') {
            if label.is_empty() || label.len() > 63 {
                return bad("has an empty or over-long label");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("may contain only letters, digits, '-', '_' and '.'");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("has a label starting or ending with '-'");
            }
        }
        Ok(Domain(d))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part of an address before `@`: safe as a path component and as a
/// passwd-file user field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LocalPart(String);

impl LocalPart {
    pub fn parse(s: &str) -> Result<LocalPart, String> {
        let bad = |why: &str| Err(format!("mailbox name {:?} {why}", shown::text(s)));
        if s.is_empty() || s.len() > 64 {
            return bad("must be 1-64 bytes");
        }
        if s.starts_with('.') {
            return bad("must not start with '.'");
        }
        if let Some(c) = s
            .chars()
            .find(|&c| c.is_control() || c.is_whitespace() || "/\\:@%\"".contains(c))
        {
            return bad(&format!("must not contain {c:?}"));
        }
        Ok(LocalPart(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LocalPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job file as written: read by [`Job::parse`], written by `submit`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub domain: String,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailboxes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutover: Option<bool>,
}

/// What a command covers: a domain, and the listed mailboxes of it or
/// (`None`) every mailbox of the domain in the source userdb.
#[derive(Debug, Clone)]
pub struct Scope {
    pub domain: Domain,
    pub mailboxes: Option<Vec<LocalPart>>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub domain: Domain,
    pub mode: Mode,
    /// `None`: every mailbox of the domain in the source userdb.
    pub mailboxes: Option<Vec<LocalPart>>,
    pub notify: Option<String>,
    /// `false`: a pre-sync (bulk and delta passes only; both logins stay
    /// as they are, and a later job copies just the rest).
    pub cutover: bool,
}

impl Job {
    /// The domain and mailboxes the job covers.
    pub fn scope(&self) -> Scope {
        Scope {
            domain: self.domain.clone(),
            mailboxes: self.mailboxes.clone(),
        }
    }

    pub fn load(path: &Path) -> Result<Job, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        Job::parse(path, stem, &text)
    }

    pub fn parse(path: &Path, id: &str, text: &str) -> Result<Job, JobError> {
        let invalid = |problem: String| JobError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let raw: RawJob = serde_json::from_str(text).map_err(|e| JobError::Parse {
            path: path.to_path_buf(),
            message: json_problem(&e),
        })?;
        let id = JobId::parse(id).map_err(invalid)?;
        let domain = Domain::parse(&raw.domain).map_err(invalid)?;
        let mailboxes = match raw.mailboxes {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(invalid(
                        "\"mailboxes\" is empty; omit it to mean every mailbox of the domain"
                            .into(),
                    ));
                }
                let mut out: Vec<LocalPart> = Vec::with_capacity(list.len());
                for m in &list {
                    let lp = LocalPart::parse(m).map_err(invalid)?;
                    if out.contains(&lp) {
                        return Err(invalid(format!(
                            "mailbox {:?} is listed twice",
                            shown::text(m)
                        )));
                    }
                    out.push(lp);
                }
                Some(out)
            }
        };
        if let Some(n) = &raw.notify {
            let plausible = n.len() <= 254
                && n.split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
                && !n.chars().any(|c| c.is_control() || c.is_whitespace());
            if !plausible {
                return Err(invalid(format!(
                    "\"notify\" {:?} is not an e-mail address",
                    shown::text(n)
                )));
            }
        }
        Ok(Job {
            id,
            domain,
            mode: raw.mode,
            mailboxes,
            notify: raw.notify,
            cutover: raw.cutover.unwrap_or(true),
        })
    }
}

/// serde quotes an offending value whole (an unknown field or variant):
/// the position stays, the rest is cut short and escaped.
fn json_problem(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&at) {
        Some(message) => format!("{}{at}", shown::text(message)),
        None => shown::text(&full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Job, JobError> {
        Job::parse(Path::new("j.json"), "j", text)
    }

    #[test]
    fn full_job() {
        let j = parse(r#"{"domain":"Example.CZ","mode":"move","mailboxes":["jan","info"],"notify":"owner@example.org"}"#).unwrap();
        assert_eq!(j.domain.as_str(), "example.cz");
        assert_eq!(j.mode, Mode::Move);
        assert_eq!(j.mailboxes.unwrap().len(), 2);
        let j = parse(r#"{"domain":"example.cz","mode":"recreate"}"#).unwrap();
        assert!(j.mailboxes.is_none());
    }

    #[test]
    fn rejects_bad_jobs() {
        for (text, needle) in [
            (
                r#"{"domain":"example.cz","mode":"move","extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"domain":"example.cz","mode":"copy"}"#,
                "unknown variant",
            ),
            (r#"{"domain":"example.cz"}"#, "missing field"),
            (r#"{"domain":"../etc","mode":"move"}"#, "domain"),
            (r#"{"domain":"a/b","mode":"move"}"#, "domain"),
            (
                r#"{"domain":"example.cz","mode":"move","mailboxes":[".."]}"#,
                "'.'",
            ),
            (
                r#"{"domain":"example.cz","mode":"move","mailboxes":["a/b"]}"#,
                "'/'",
            ),
            (
                r#"{"domain":"example.cz","mode":"move","mailboxes":["a\u0000"]}"#,
                "must not contain",
            ),
            (
                r#"{"domain":"example.cz","mode":"move","mailboxes":["a:b"]}"#,
                "':'",
            ),
            (
                r#"{"domain":"example.cz","mode":"move","mailboxes":["a","a"]}"#,
                "twice",
            ),
            (
                r#"{"domain":"example.cz","mode":"move","mailboxes":[]}"#,
                "empty",
            ),
            (
                r#"{"domain":"example.cz","mode":"move","notify":"nobody"}"#,
                "notify",
            ),
            ("{", "EOF"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.starts_with("j.json: "), "{e}");
        }
        assert!(
            Job::parse(
                Path::new("x"),
                "bad id!",
                r#"{"domain":"a.cz","mode":"move"}"#
            )
            .is_err()
        );
        assert!(JobId::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn huge_garbage_gives_brief_errors() {
        let garbage = "\x1b[31m\0\t\r\u{85}é".repeat(450_000);
        let q = serde_json::to_string(&garbage).unwrap();
        let mut texts = vec![garbage.clone()];
        for template in [
            r#"{"domain":Q,"mode":"move"}"#,
            r#"{"domain":"a.cz","mode":Q}"#,
            r#"{"domain":"a.cz","mode":"move","mailboxes":[Q]}"#,
            r#"{"domain":"a.cz","mode":"move","mailboxes":["a","a",Q]}"#,
            r#"{"domain":"a.cz","mode":"move","notify":Q}"#,
            r#"{"domain":"a.cz","mode":"move",Q:1}"#,
        ] {
            texts.push(template.replace('Q', &q));
        }
        let mut errors: Vec<String> = texts
            .iter()
            .map(|t| parse(t).unwrap_err().to_string())
            .collect();
        let id = Job::parse(
            Path::new("j.json"),
            &garbage,
            r#"{"domain":"a.cz","mode":"move"}"#,
        );
        errors.push(id.unwrap_err().to_string());
        assert!(errors[2].contains("unknown variant") && errors[2].contains("at line 1 column"));
        for s in errors {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    /// The daemon files `<id>.report.json` and `<id>.sweep.json` beside a
    /// job `<id>.json`: an id ending in `.report` or `.sweep` would be
    /// filed under the name of another job's record or sweep schedule.
    #[test]
    fn ids_cannot_name_the_daemons_own_files() {
        for bad in ["evil.sweep", "x.report", "X.Sweep", "a.b.REPORT"] {
            let e = JobId::parse(bad).unwrap_err();
            assert!(e.contains("reserved"), "{bad}: {e}");
        }
        for ok in [
            "sweep",
            "report",
            "a.sweeper",
            "reports",
            "x.sweep-1",
            "a_sweep",
        ] {
            assert!(JobId::parse(ok).is_ok(), "{ok}");
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_safe_path_components(s in "\\PC{0,20}") {
            if let Ok(l) = LocalPart::parse(&s) {
                let p = Path::new(l.as_str());
                prop_assert_eq!(p.components().count(), 1);
                prop_assert!(matches!(p.components().next(), Some(std::path::Component::Normal(_))));
                prop_assert!(!l.as_str().contains(':'));
            }
            if let Ok(d) = Domain::parse(&s) {
                prop_assert!(!d.as_str().contains('/') && !d.as_str().contains(".."));
            }
        }
    }

    fn job_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("{"),
            Just("}"),
            Just("\"domain\":"),
            Just("\"mode\":"),
            Just("\"mailboxes\":"),
            Just("\"notify\":"),
            Just("\"cutover\":"),
            Just("\"move\""),
            Just("\"recreate\""),
            Just("\"copy\""),
            Just("\"example.cz\""),
            Just("\"a@b\""),
            Just("["),
            Just("]"),
            Just(","),
            Just("\"jan\""),
            Just("\"a\\u0000\""),
            Just("\"\\n\""),
            Just("true"),
            Just("null"),
            Just("1"),
            Just("\"é\""),
            Just("\""),
            Just("\u{0}"),
        ];
        proptest::collection::vec(piece, 0..20).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_errors_are_brief(
            text in prop_oneof![any::<String>(), job_like()],
            id in prop_oneof![Just("j".to_string()), any::<String>()],
        ) {
            if let Err(e) = Job::parse(Path::new("j.json"), &id, &text) {
                let s = e.to_string();
                prop_assert!(s.len() < 1024 && !s.chars().any(char::is_control), "{s}");
            }
        }
    }
}
