//! The completion e-mail: after a daemon job that names a `notify` address,
//! one bilingual (Czech, then English) message through SMTP (or, with
//! `outbox_dir`, as a file in a directory) saying what was migrated, what
//! failed and what is deliberately left behind.
//!
//! The templates are files a sysadmin can override; they are parsed when the
//! configuration is loaded, so a broken template is a configuration error and
//! never a surprise after a long migration. Sending is blocking (the caller
//! gives it a thread) and never fails the job: the result is an [`Outcome`]
//! recorded in the report.

use std::fmt;
use std::net::Ipv6Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::Transport;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::file::FileTransport;
use lettre::transport::smtp::SmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::job::Mode;
use crate::report::{MailboxStatus, Report, now_rfc3339};

/// A settings problem: the `notify.` key and what is wrong with it (the
/// configuration's own shape; notify sits below `config`, which embeds
/// these settings).
type Invalid = (&'static str, String);

const DONE_TEMPLATE: &str = include_str!("done.txt");
const FAILED_TEMPLATE: &str = include_str!("failed.txt");

const DEFAULT_SMTP: &str = "127.0.0.1:25";
/// Backoff doubles, but a single wait never exceeds this.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// A template is a short letter; anything bigger is a wrong path.
const MAX_TEMPLATE_BYTES: u64 = 256 * 1024;
/// One failure line stays readable even if an error text is huge.
const MAX_FAILURE_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("recipient {to:?} is not an e-mail address: {reason}")]
    Recipient { to: String, reason: String },
    #[error("cannot build the message: {0}")]
    Message(#[from] lettre::error::Error),
    // The problem is an io::Error or our own text, never the file's content.
    #[error("{}: cannot read the SMTP password: {problem}", path.display())]
    PasswordFile { path: PathBuf, problem: String },
    #[error("TLS setup for {host}: {source}")]
    Tls {
        host: String,
        source: lettre::transport::smtp::Error,
    },
    #[error("SMTP {server}: {source}")]
    Smtp {
        server: String,
        source: lettre::transport::smtp::Error,
    },
    #[error("SMTP {server}: no answer to NOOP")]
    Probe { server: String },
    #[error("outbox {}: {source}", path.display())]
    Outbox {
        path: PathBuf,
        source: lettre::transport::file::Error,
    },
    #[error("the SMTP client panicked: {0}")]
    Panic(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// Plain SMTP (the default relay is the local MTA).
    #[default]
    Off,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS or no delivery.
    Required,
}

/// `[notify]` section of the config file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// `host:port` or `[ipv6]:port`; default `127.0.0.1:25`.
    pub smtp: Option<String>,
    /// Default `postmaster@<hostname>`.
    pub from: Option<String>,
    pub starttls: Option<StartTls>,
    /// PEM, one or more CA certificates trusted for STARTTLS besides the
    /// bundled Mozilla roots (a relay with a private CA).
    pub ca_file: Option<PathBuf>,
    /// AUTH needs both `username` and `password_file`.
    pub username: Option<String>,
    /// Its first line is the password; read at send time, never logged.
    pub password_file: Option<PathBuf>,
    /// Per attempt; default 30, 1..=600.
    pub timeout_secs: Option<u64>,
    /// Extra attempts after the first; default 3, 0..=10.
    pub retries: Option<u32>,
    /// First backoff delay, doubling each retry; default 5, 0..=3600.
    pub retry_delay_secs: Option<u64>,
    /// Default: the built-in `done.txt`.
    pub done_template: Option<PathBuf>,
    /// Default: the built-in `failed.txt`.
    pub failed_template: Option<PathBuf>,
    /// Instead of SMTP: each e-mail becomes `<uuid>.eml` in this existing,
    /// writable directory (hosts without a relay, the demo).
    pub outbox_dir: Option<PathBuf>,
}

/// The keys that only mean something for SMTP; `outbox_dir` excludes them.
fn smtp_keys_set(raw: &RawSettings) -> Vec<&'static str> {
    [
        ("notify.smtp", raw.smtp.is_some()),
        ("notify.starttls", raw.starttls.is_some()),
        ("notify.ca_file", raw.ca_file.is_some()),
        ("notify.username", raw.username.is_some()),
        ("notify.password_file", raw.password_file.is_some()),
        ("notify.timeout_secs", raw.timeout_secs.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// `notify.outbox_dir`: an existing directory this user may write into,
/// checked at load so that a wrong path never loses a mail after a job.
fn outbox_dir(raw: &RawSettings, dir: &Path) -> Result<PathBuf, Invalid> {
    let invalid = |problem: String| ("notify.outbox_dir", problem);
    let smtp = smtp_keys_set(raw);
    if !smtp.is_empty() {
        return Err(invalid(format!(
            "writes the e-mails into a directory instead of sending them; \
             remove {} (SMTP settings) or outbox_dir",
            smtp.join(", ")
        )));
    }
    let shown = dir.display();
    let meta = std::fs::metadata(dir).map_err(|e| invalid(format!("{shown}: {e}")))?;
    if !meta.is_dir() {
        return Err(invalid(format!("{shown}: is not a directory")));
    }
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| invalid(format!("{shown}: is not writable by this user ({e})")))?;
    Ok(dir.to_path_buf())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    /// Without brackets; an IPv6 literal is a valid `ToSocketAddrs` host.
    host: String,
    port: u16,
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Server {
    fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn parse(s: &str) -> Result<Server, String> {
        let bad = |why: &str| Err(format!("{s:?} {why}"));
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((host, port)) = rest.split_once("]:") else {
                return bad("must be [IPv6 address]:port");
            };
            if host.parse::<Ipv6Addr>().is_err() {
                return bad("has no valid IPv6 address between [ and ]");
            }
            (host, port)
        } else {
            let Some((host, port)) = s.rsplit_once(':') else {
                return bad("must be host:port");
            };
            if host.contains(':') {
                return bad("must write an IPv6 address as [address]:port");
            }
            let ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !ok {
                return bad("has no valid host name");
            }
            (host, port)
        };
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Server {
                host: host.to_string(),
                port,
            }),
            _ => bad("has no valid port (1-65535)"),
        }
    }
}

#[derive(Debug, Clone)]
struct Auth {
    username: String,
    password_file: PathBuf,
}

/// Validated `[notify]` settings, templates included.
#[derive(Debug, Clone)]
pub struct Settings {
    server: Server,
    from: Mailbox,
    starttls: StartTls,
    /// From `ca_file`; trusted besides the bundled roots.
    ca: Vec<Certificate>,
    auth: Option<Auth>,
    timeout: Duration,
    retries: u32,
    retry_delay: Duration,
    done: Template,
    failed: Template,
    /// `outbox_dir`: written there instead of sent (no SMTP key is set).
    outbox: Option<PathBuf>,
}

impl Settings {
    /// `resolve` turns a config-relative path into an absolute one.
    pub fn from_raw(
        raw: RawSettings,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Settings, Invalid> {
        let outbox = match &raw.outbox_dir {
            Some(dir) => Some(outbox_dir(&raw, &resolve(dir))?),
            None => None,
        };
        let server = Server::parse(raw.smtp.as_deref().unwrap_or(DEFAULT_SMTP))
            .map_err(|e| ("notify.smtp", e))?;
        let from = sender(raw.from)?;
        let auth = Auth::from_raw(raw.username, raw.password_file, resolve)?;
        let starttls = raw.starttls.unwrap_or_default();
        if auth.is_some() && starttls == StartTls::Off && !server.is_loopback() {
            return Err((
                "notify.starttls",
                format!(
                    "AUTH to {server} without STARTTLS would send the password in clear; \
                     set starttls = \"required\" (or \"opportunistic\")"
                ),
            ));
        }
        let ca = match raw.ca_file {
            Some(file) => ca_certificates(&resolve(&file), &server, starttls)?,
            None => Vec::new(),
        };
        let timeout = within(
            "notify.timeout_secs",
            raw.timeout_secs.unwrap_or(30),
            1,
            600,
        )?;
        let retries = within("notify.retries", raw.retries.unwrap_or(3), 0, 10)?;
        let retry_delay = within(
            "notify.retry_delay_secs",
            raw.retry_delay_secs.unwrap_or(5),
            0,
            3600,
        )?;
        Ok(Settings {
            server,
            from,
            starttls,
            ca,
            auth,
            timeout: Duration::from_secs(timeout),
            retries,
            retry_delay: Duration::from_secs(retry_delay),
            done: Template::load(
                raw.done_template.as_deref(),
                resolve,
                "done.txt",
                DONE_TEMPLATE,
            )
            .map_err(|e| ("notify.done_template", e))?,
            failed: Template::load(
                raw.failed_template.as_deref(),
                resolve,
                "failed.txt",
                FAILED_TEMPLATE,
            )
            .map_err(|e| ("notify.failed_template", e))?,
            outbox,
        })
    }

    fn smtp_error(&self, source: lettre::transport::smtp::Error) -> NotifyError {
        NotifyError::Smtp {
            server: self.server.to_string(),
            source,
        }
    }

    /// Where the e-mail goes, for log lines: the relay or the outbox.
    fn destination(&self) -> String {
        match &self.outbox {
            Some(dir) => dir.display().to_string(),
            None => self.server.to_string(),
        }
    }
}

/// `notify.ca_file`: its certificates, each already accepted by rustls as a
/// trust anchor, so that a bad file is a configuration error and never a
/// failed mail after a long migration.
fn ca_certificates(
    path: &Path,
    server: &Server,
    starttls: StartTls,
) -> Result<Vec<Certificate>, Invalid> {
    let invalid = |problem: String| ("notify.ca_file", format!("{}: {problem}", path.display()));
    if starttls == StartTls::Off {
        return Err(invalid(
            "is used only for STARTTLS; set starttls = \"required\" (or \"opportunistic\")".into(),
        ));
    }
    let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM: {e}")))?;
    if ders.is_empty() {
        return Err(invalid("has no PEM CERTIFICATE block".into()));
    }
    let ca = ders
        .into_iter()
        .map(|der| Certificate::from_der(der.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    tls_parameters(&server.host, &ca)
        .map_err(|e| invalid(format!("a certificate rustls refuses as a CA: {e}")))?;
    Ok(ca)
}

/// `notify.from`, by default `postmaster@<this host>`.
fn sender(from: Option<String>) -> Result<Mailbox, Invalid> {
    if let Some(f) = from {
        return f.parse::<Mailbox>().map_err(|e| {
            (
                "notify.from",
                format!("{f:?} is not an e-mail address: {e}"),
            )
        });
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let f = format!("postmaster@{host}");
    f.parse::<Mailbox>().map_err(|e| {
        (
            "notify.from",
            format!("the default {f:?} is not an e-mail address ({e}); set notify.from"),
        )
    })
}

impl Auth {
    /// `username` and `password_file` go together or not at all.
    fn from_raw(
        username: Option<String>,
        password_file: Option<PathBuf>,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<Option<Auth>, Invalid> {
        match (username, password_file) {
            (None, None) => Ok(None),
            (Some(username), Some(file)) => {
                if username.is_empty() || username.chars().any(char::is_control) {
                    return Err((
                        "notify.username",
                        "must be non-empty, without control characters".into(),
                    ));
                }
                Ok(Some(Auth {
                    username,
                    password_file: resolve(&file),
                }))
            }
            (Some(_), None) => Err((
                "notify.password_file",
                "set both username and password_file, or neither".into(),
            )),
            (None, Some(_)) => Err((
                "notify.username",
                "set both username and password_file, or neither".into(),
            )),
        }
    }
}

/// `value` if it is between `min` and `max` (both included).
fn within<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, Invalid> {
    if value < min || value > max {
        return Err((key, format!("{value} is not between {min} and {max}")));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Domain,
    Job,
    ModeCs,
    ModeEn,
    Mailboxes,
    FailedCount,
    Messages,
    Size,
    Failures,
    Error,
}

const VARS: [(&str, Var); 10] = [
    ("domain", Var::Domain),
    ("job", Var::Job),
    ("mode_cs", Var::ModeCs),
    ("mode_en", Var::ModeEn),
    ("mailboxes", Var::Mailboxes),
    ("failed_count", Var::FailedCount),
    ("messages", Var::Messages),
    ("size", Var::Size),
    ("failures", Var::Failures),
    ("error", Var::Error),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// `Subject: ...`, one empty line, the body.
#[derive(Debug, Clone)]
struct Template {
    subject: Vec<Piece>,
    body: Vec<Piece>,
}

impl Template {
    fn load(
        path: Option<&Path>,
        resolve: &dyn Fn(&Path) -> PathBuf,
        builtin_name: &str,
        builtin: &str,
    ) -> Result<Template, String> {
        let Some(path) = path else {
            return Template::parse(&format!("built-in {builtin_name}"), builtin);
        };
        let path = resolve(path);
        let name = path.display().to_string();
        let len = std::fs::metadata(&path)
            .map_err(|e| format!("{name}: {e}"))?
            .len();
        if len > MAX_TEMPLATE_BYTES {
            return Err(format!(
                "{name}: {len} bytes is too big for a template (at most {MAX_TEMPLATE_BYTES})"
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        Template::parse(&name, &text)
    }

    /// `name` is the file's path for error messages.
    fn parse(name: &str, text: &str) -> Result<Template, String> {
        let at = |line: usize, problem: &str| format!("{name} line {line}: {problem}");
        // Editors may add a BOM or CRLF line ends; neither belongs in a mail.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let text = text.replace("\r\n", "\n");
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        let subject = first
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("subject:"))
            .map(|_| first[8..].trim())
            .ok_or_else(|| at(1, "must be \"Subject: ...\""))?;
        if subject.is_empty() {
            return Err(at(1, "the subject is empty"));
        }
        let subject = parse_pieces(subject, 1).map_err(|(l, p)| at(l, &p))?;
        if subject.contains(&Piece::Var(Var::Failures)) {
            // A header is one line; {failures} is several.
            return Err(at(
                1,
                "{failures} spans several lines and cannot be in the subject",
            ));
        }
        let body = match rest.split_once('\n') {
            Some(("", body)) => body,
            _ => {
                return Err(at(
                    2,
                    "must be empty (it separates the subject from the body)",
                ));
            }
        };
        let body = parse_pieces(body, 3).map_err(|(l, p)| at(l, &p))?;
        Ok(Template { subject, body })
    }

    fn render(&self, values: &Values) -> (String, String) {
        let subject: String = render_pieces(&self.subject, values)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        // lettre ends DATA with CRLF.CRLF itself: a final newline here would
        // arrive as an extra empty line.
        let body = render_pieces(&self.body, values)
            .trim_end_matches('\n')
            .to_string();
        (subject, body)
    }
}

/// Splits text into literal runs and placeholders. Errors are (line, problem).
fn parse_pieces(text: &str, first_line: usize) -> Result<Vec<Piece>, (usize, String)> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut line = first_line;
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '{' if it.peek() == Some(&'{') => {
                it.next();
                lit.push('{');
            }
            '}' if it.peek() == Some(&'}') => {
                it.next();
                lit.push('}');
            }
            '}' => return Err((line, "a lone } (write }} for a literal brace)".into())),
            '{' => {
                let mut name = String::new();
                loop {
                    match it.next() {
                        Some('}') => break,
                        Some(c) if c != '\n' && c != '{' => name.push(c),
                        _ => {
                            return Err((
                                line,
                                "unterminated { (write {{ for a literal brace)".into(),
                            ));
                        }
                    }
                }
                let Some(&(_, var)) = VARS.iter().find(|(n, _)| *n == name) else {
                    let known: Vec<String> = VARS.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                    return Err((
                        line,
                        format!(
                            "unknown placeholder {{{name}}} (known: {})",
                            known.join(" ")
                        ),
                    ));
                };
                if !lit.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Var(var));
            }
            c => {
                if c == '\n' {
                    line += 1;
                }
                lit.push(c);
            }
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Text(lit));
    }
    Ok(pieces)
}

fn render_pieces(pieces: &[Piece], values: &Values) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(v) => out.push_str(values.get(*v)),
        }
    }
    out
}

/// Placeholder values, each already made safe for a text mail.
struct Values {
    domain: String,
    job: String,
    mode_cs: &'static str,
    mode_en: &'static str,
    mailboxes: String,
    failed_count: String,
    messages: String,
    size: String,
    failures: String,
    error: String,
}

impl Values {
    fn new(facts: &Facts) -> Values {
        let (mut migrated, mut failed, mut messages, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut failures = Vec::new();
        if let Some(e) = facts.error {
            failures.push(format!("  - {}", one_line(e)));
        }
        if let Some(r) = facts.report {
            for m in &r.mailboxes {
                match m.status {
                    MailboxStatus::Done | MailboxStatus::AlreadyMigrated => migrated += 1,
                    // A pre-sync moved nobody yet.
                    MailboxStatus::Presynced => {}
                    MailboxStatus::Failed => {
                        failed += 1;
                        let why = m.error.as_deref().unwrap_or("unknown error");
                        failures.push(format!("  - {}: {}", one_line(&m.user), one_line(why)));
                    }
                }
            }
            messages = r.totals.messages;
            bytes = r.totals.bytes;
        }
        if failures.is_empty() {
            failures.push("  -".into());
        }
        let (mode_cs, mode_en) = match facts.mode {
            Mode::Move => ("přesun", "move"),
            Mode::Recreate => ("obnovení prázdných schránek", "recreate empty"),
        };
        Values {
            domain: one_line(facts.domain),
            job: one_line(facts.job_id),
            mode_cs,
            mode_en,
            mailboxes: migrated.to_string(),
            failed_count: failed.to_string(),
            messages: messages.to_string(),
            size: crate::shown::bytes_human(bytes),
            failures: failures.join("\n"),
            error: facts.error.map(one_line).unwrap_or_default(),
        }
    }

    fn get(&self, var: Var) -> &str {
        match var {
            Var::Domain => &self.domain,
            Var::Job => &self.job,
            Var::ModeCs => self.mode_cs,
            Var::ModeEn => self.mode_en,
            Var::Mailboxes => &self.mailboxes,
            Var::FailedCount => &self.failed_count,
            Var::Messages => &self.messages,
            Var::Size => &self.size,
            Var::Failures => &self.failures,
            Var::Error => &self.error,
        }
    }
}

/// Control characters (newlines included) become spaces, so that a value
/// from an error message cannot break the layout or forge lines.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_FAILURE_CHARS)
        .collect();
    if s.trim().chars().count() > MAX_FAILURE_CHARS {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// Composing and sending
// ---------------------------------------------------------------------------

/// What the e-mail is about.
pub struct Facts<'a> {
    pub job_id: &'a str,
    pub domain: &'a str,
    pub mode: Mode,
    /// The whole job succeeded (picks the done or the failed template).
    pub succeeded: bool,
    /// Job-level error (the engine could not run at all), if any.
    pub error: Option<&'a str>,
    /// The engine's report when the engine ran.
    pub report: Option<&'a Report>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Sent,
    Failed,
}

/// How the notification went; stored in the job's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub status: OutcomeStatus,
    pub to: String,
    /// Delivery attempts made (0 when the message could not even be composed).
    pub attempts: u32,
    /// The last error, without secrets.
    pub error: Option<String>,
    pub finished: String,
}

/// Renders the message: subject and a text/plain UTF-8 body.
pub fn compose(settings: &Settings, to: &str, facts: &Facts) -> Result<Message, NotifyError> {
    // The address comes from a job file: parse it, never trust it.
    let rcpt = to.parse::<Mailbox>().map_err(|e| NotifyError::Recipient {
        to: one_line(to),
        reason: e.to_string(),
    })?;
    let template = if facts.succeeded {
        &settings.done
    } else {
        &settings.failed
    };
    let (subject, body) = template.render(&Values::new(facts));
    let mut message = Message::builder()
        .from(settings.from.clone())
        .to(rcpt)
        .subject(subject)
        .message_id(Some(message_id(&settings.from, facts.job_id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)?;
    // RFC 3834: autoresponders and vacation scripts must not answer this.
    message.headers_mut().insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str("Auto-Submitted"),
        "auto-generated".into(),
    ));
    Ok(message)
}

/// `<maildir-migrate.JOB.NANOS.PID.N@from-domain>`: unique per process and
/// call, with the sender's own domain as RFC 5322 suggests.
fn message_id(from: &Mailbox, job_id: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let job: String = job_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "<maildir-migrate.{job}.{nanos}.{}.{}@{}>",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        from.email.domain()
    )
}

/// Blocking: composes, then tries up to `1 + retries` times with doubling
/// backoff, each attempt bounded by the timeout (connect, every read and
/// every write). Never panics; the result goes into the report.
pub fn send(settings: &Settings, to: &str, facts: &Facts) -> Outcome {
    let outcome = |status, attempts, error: Option<String>| Outcome {
        status,
        to: to.to_string(),
        attempts,
        error,
        finished: now_rfc3339(),
    };
    let message = match compose(settings, to, facts) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(job = facts.job_id, error = %e, "notification not sent");
            return outcome(OutcomeStatus::Failed, 0, Some(e.to_string()));
        }
    };
    let max_attempts = settings.retries + 1;
    let mut delay = settings.retry_delay;
    let mut last_error = String::new();
    for attempt in 1..=max_attempts {
        let result = catch_unwind(AssertUnwindSafe(|| attempt_once(settings, &message)))
            .unwrap_or_else(|panic| Err(NotifyError::Panic(panic_text(&*panic))));
        match result {
            Ok(()) => {
                tracing::info!(job = facts.job_id, to, attempt, via = %settings.destination(), "notification sent");
                return outcome(OutcomeStatus::Sent, attempt, None);
            }
            Err(e) => {
                last_error = e.to_string();
                tracing::warn!(
                    job = facts.job_id,
                    to,
                    attempt,
                    max_attempts,
                    error = %e,
                    "notification attempt failed"
                );
            }
        }
        if attempt < max_attempts {
            std::thread::sleep(delay);
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }
    outcome(OutcomeStatus::Failed, max_attempts, Some(last_error))
}

fn attempt_once(settings: &Settings, message: &Message) -> Result<(), NotifyError> {
    if let Some(dir) = &settings.outbox {
        return FileTransport::new(dir)
            .send(message)
            .map(drop)
            .map_err(|source| NotifyError::Outbox {
                path: dir.clone(),
                source,
            });
    }
    smtp_transport(settings)?
        .send(message)
        .map(drop)
        .map_err(|source| settings.smtp_error(source))
}

/// Where the e-mail would go and that it could, sending nothing: the
/// outbox directory, or the relay answering EHLO (STARTTLS and AUTH as
/// configured) and NOOP, once, within the timeout.
pub fn probe(settings: &Settings) -> Result<String, NotifyError> {
    if let Some(dir) = &settings.outbox {
        return Ok(format!("e-mails are written to {}", dir.display()));
    }
    let answered = smtp_transport(settings)?
        .test_connection()
        .map_err(|source| settings.smtp_error(source))?;
    if !answered {
        return Err(NotifyError::Probe {
            server: settings.server.to_string(),
        });
    }
    Ok(format!(
        "SMTP {} answers EHLO{}{}",
        settings.server,
        match settings.starttls {
            StartTls::Off => "",
            StartTls::Opportunistic => " (STARTTLS when offered)",
            StartTls::Required => " and STARTTLS",
        },
        if settings.auth.is_some() {
            " and accepts the AUTH login"
        } else {
            ""
        }
    ))
}

/// The relay with the configured STARTTLS, timeout and AUTH.
fn smtp_transport(settings: &Settings) -> Result<SmtpTransport, NotifyError> {
    let host = &settings.server.host;
    let tls_params = || {
        tls_parameters(host, &settings.ca).map_err(|source| NotifyError::Tls {
            host: host.clone(),
            source,
        })
    };
    let tls = match settings.starttls {
        StartTls::Off => Tls::None,
        StartTls::Opportunistic => Tls::Opportunistic(tls_params()?),
        StartTls::Required => Tls::Required(tls_params()?),
    };
    let mut builder = SmtpTransport::builder_dangerous(host.as_str())
        .port(settings.server.port)
        .timeout(Some(settings.timeout))
        .tls(tls);
    if let Some(auth) = &settings.auth {
        builder = builder.credentials(Credentials::new(
            auth.username.clone(),
            read_password(&auth.password_file)?,
        ));
    }
    Ok(builder.build())
}

/// STARTTLS trusts the Mozilla roots bundled into the binary (webpki-roots)
/// and the `ca_file` certificates, not the host's store: the same binary
/// trusts the same CAs on every host and in the tests, needs no
/// ca-certificates package, and a relay with a private CA is named in the
/// configuration instead of depending on what the host happens to hold.
fn tls_parameters(
    host: &str,
    ca: &[Certificate],
) -> Result<TlsParameters, lettre::transport::smtp::Error> {
    ca.iter()
        .cloned()
        .fold(
            TlsParameters::builder(host.to_string())
                .certificate_store(CertificateStore::WebpkiRoots),
            |builder, cert| builder.add_root_certificate(cert),
        )
        .build()
}

/// The first line of the file. Errors name the file, never its content.
fn read_password(path: &Path) -> Result<String, NotifyError> {
    let failed = |problem: String| NotifyError::PasswordFile {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(line.to_string()),
        _ => Err(failed("the first line is empty".into())),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::MailboxReport;

    fn same(p: &Path) -> PathBuf {
        p.to_path_buf()
    }

    fn settings(raw: RawSettings) -> Settings {
        Settings::from_raw(raw, &same).unwrap()
    }

    fn raw_from(from: &str) -> RawSettings {
        RawSettings {
            from: Some(from.into()),
            ..RawSettings::default()
        }
    }

    fn mixed_report() -> Report {
        let mut ok = MailboxReport::new("jan@example.cz".into());
        ok.status = MailboxStatus::Done;
        ok.messages = 120;
        ok.bytes = 12_900_000;
        let mut again = MailboxReport::new("info@example.cz".into());
        again.status = MailboxStatus::AlreadyMigrated;
        let bad = MailboxReport::failed(
            "eva@example.cz".into(),
            "cannot read cur/x\nInjected: header".into(),
        );
        Report::finish(
            "j1".into(),
            "example.cz".into(),
            Mode::Move,
            vec![ok, again, bad],
            "t".into(),
        )
    }

    fn facts<'a>(report: Option<&'a Report>, succeeded: bool) -> Facts<'a> {
        Facts {
            job_id: "j1",
            domain: "example.cz",
            mode: Mode::Move,
            succeeded,
            error: None,
            report,
        }
    }

    fn render(t: &Template, f: &Facts) -> (String, String) {
        t.render(&Values::new(f))
    }

    #[test]
    fn template_errors_name_the_file_and_the_line() {
        for (text, needle) in [
            (
                "Subject: x\n\nok\nbad {foo} here\n",
                "t.txt line 4: unknown placeholder {foo}",
            ),
            ("Subject: x {domain\n\n", "t.txt line 1: unterminated {"),
            (
                "Subject: x\n\na\n{domain\n}\n",
                "t.txt line 4: unterminated {",
            ),
            ("Subject: x\n\na }\n", "t.txt line 3: a lone }"),
            ("Subject: x {failures}\n\n", "t.txt line 1: {failures}"),
            (
                "Subject:   \n\nbody\n",
                "t.txt line 1: the subject is empty",
            ),
            ("Hello\n\nbody\n", "t.txt line 1: must be \"Subject"),
            ("Subject: x\nbody\n", "t.txt line 2: must be empty"),
            ("Subject: x", "t.txt line 2: must be empty"),
        ] {
            let e = Template::parse("t.txt", text).unwrap_err();
            assert!(e.starts_with(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn braces_escape_and_crlf_is_accepted() {
        let t = Template::parse(
            "t",
            "\u{feff}subject: {{{domain}}}\r\n\r\n{{x}} {job}: {mode_en}/{mode_cs}\r\n{error}.",
        )
        .unwrap();
        let f = Facts {
            error: Some("no\nuserdb"),
            ..facts(None, false)
        };
        let (subject, body) = render(&t, &f);
        assert_eq!(subject, "{example.cz}");
        assert_eq!(body, "{x} j1: move/přesun\nno userdb.");
    }

    #[test]
    fn renders_counts_sizes_and_failures() {
        let r = mixed_report();
        let t = Template::parse(
            "t",
            "Subject: {domain}\n\n{mailboxes} {failed_count} {messages} {size}\n{failures}\n",
        )
        .unwrap();
        let (_, body) = render(&t, &facts(Some(&r), false));
        assert_eq!(
            body,
            "2 1 120 12.3 MiB\n  - eva@example.cz: cannot read cur/x Injected: header"
        );

        // No report, a job-level error: it is the failure line.
        let f = Facts {
            error: Some("source userdb missing"),
            mode: Mode::Recreate,
            ..facts(None, false)
        };
        let (_, body) = render(&t, &f);
        assert_eq!(body, "0 0 0 0 B\n  - source userdb missing");
        // Nothing failed.
        let (_, body) = render(&t, &facts(None, true));
        assert!(body.ends_with("\n  -"), "{body}");
    }

    #[test]
    fn builtins_are_bilingual_and_complete() {
        let s = settings(raw_from("mm@example.net"));
        let r = mixed_report();
        for (t, cs, en) in [
            (&s.done, "dokončena", "finished"),
            (&s.failed, "selhala", "failed"),
        ] {
            let (subject, body) = render(t, &facts(Some(&r), true));
            assert_eq!(
                subject,
                format!("Migrace pošty example.cz {cs} / Mail migration of example.cz {en}")
            );
            for needle in [
                "kontakty",
                "složka Spam",
                "koš",
                "filtry/pravidla",
                "černé a bílé listiny",
                "přeposílání",
                "aliasy",
                "SMS notifikace",
                "automatická odpověď",
                "contacts",
                "the Spam folder",
                "Trash",
                "filters/rules",
                "black- and whitelists",
                "forwards",
                "aliases",
                "SMS notifications",
                "autoresponder",
                "Outlook",
                "Thunderbird",
                "IMAPS 993",
                "465 nebo 587",
                "465 or 587",
                "Přesunuté schránky:   2",
                "Mailboxes migrated:   2",
                "120 (12.3 MiB)",
                "  - eva@example.cz: cannot read cur/x",
                "přesun",
                "move",
            ] {
                assert!(body.contains(needle), "{needle} missing:\n{body}");
            }
            // Czech first.
            assert!(body.find("Dobrý den").unwrap() < body.find("Hello").unwrap());
            assert!(!body.contains('{') && !body.contains('}'), "{body}");
        }
    }

    /// The job's warnings are for the sysadmin (e.g. open sessions not
    /// ended at the freeze), never in the customer's e-mail.
    #[test]
    fn job_warnings_stay_out_of_the_mail() {
        let s = settings(raw_from("mm@example.net"));
        let mut r = mixed_report();
        r.warnings
            .push("no [cutover] freeze_command: sessions".into());
        for t in [&s.done, &s.failed] {
            let (_, body) = render(t, &facts(Some(&r), true));
            assert!(!body.contains("freeze_command"), "{body}");
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::from_raw(RawSettings::default(), &same).unwrap();
        assert_eq!(
            s.server,
            Server {
                host: "127.0.0.1".into(),
                port: 25
            }
        );
        assert!(s.from.email.to_string().starts_with("postmaster@"));
        assert_eq!(s.starttls, StartTls::Off);
        assert!(s.auth.is_none());
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.retries, 3);
        assert_eq!(s.retry_delay, Duration::from_secs(5));
    }

    #[test]
    fn parses_values_and_resolves_paths() {
        let raw: RawSettings = toml::from_str(
            r#"
smtp = "[::1]:587"
from = "Migrace <mm@example.net>"
starttls = "required"
username = "mm"
password_file = "secret"
timeout_secs = 600
retries = 0
retry_delay_secs = 0
"#,
        )
        .unwrap();
        let s = Settings::from_raw(raw, &|p| Path::new("/etc/mm").join(p)).unwrap();
        assert_eq!(s.server.to_string(), "[::1]:587");
        assert_eq!(s.starttls, StartTls::Required);
        assert_eq!(s.auth.unwrap().password_file, Path::new("/etc/mm/secret"));
        assert_eq!(s.from.email.to_string(), "mm@example.net");
        assert!(toml::from_str::<RawSettings>("startls = \"off\"").is_err());
        assert!(toml::from_str::<RawSettings>("starttls = \"yes\"").is_err());
    }

    #[test]
    fn invalid_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("done.txt");
        std::fs::write(&broken, "Subject: {domain}\n\nok\n\n{oops}\n").unwrap();
        let resolve = |p: &Path| dir.path().join(p);
        for (toml_text, key, needle) in [
            ("smtp = \"localhost\"", "notify.smtp", "host:port"),
            ("smtp = \"localhost:0\"", "notify.smtp", "port"),
            ("smtp = \"localhost:x\"", "notify.smtp", "port"),
            ("smtp = \"::1:25\"", "notify.smtp", "[address]"),
            ("smtp = \"[nope]:25\"", "notify.smtp", "IPv6"),
            ("smtp = \"a b:25\"", "notify.smtp", "host name"),
            ("from = \"not an address\"", "notify.from", "not an e-mail"),
            (
                "from = \"a@b\\r\\nBcc: x@y\"",
                "notify.from",
                "not an e-mail",
            ),
            ("timeout_secs = 0", "notify.timeout_secs", "0 is not"),
            ("timeout_secs = 601", "notify.timeout_secs", "601"),
            ("retries = 11", "notify.retries", "11"),
            ("retry_delay_secs = 3601", "notify.retry_delay_secs", "3601"),
            ("username = \"u\"", "notify.password_file", "both"),
            ("password_file = \"p\"", "notify.username", "both"),
            (
                "smtp = \"mail.example.net:587\"\nusername = \"u\"\npassword_file = \"p\"",
                "notify.starttls",
                "in clear",
            ),
            (
                "done_template = \"done.txt\"",
                "notify.done_template",
                "done.txt line 5: unknown placeholder {oops}",
            ),
            (
                "failed_template = \"nope.txt\"",
                "notify.failed_template",
                "nope.txt: ",
            ),
        ] {
            let raw: RawSettings = toml::from_str(toml_text).unwrap();
            let (k, problem) = Settings::from_raw(raw, &resolve).unwrap_err();
            assert_eq!(k, key, "{toml_text}: {problem}");
            assert!(problem.contains(needle), "{toml_text}: {problem}");
        }
        let raw = RawSettings {
            done_template: Some(broken.clone()),
            ..RawSettings::default()
        };
        let (_, problem) = Settings::from_raw(raw, &same).unwrap_err();
        assert!(
            problem.starts_with(&format!("{} line 5", broken.display())),
            "{problem}"
        );
    }

    /// A file rustls would refuse is a configuration error, never a failed
    /// mail after the migration (a good file: tests/it/notify_smtp.rs).
    #[test]
    fn ca_file_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("no-cert.pem", "no certificate here\n"),
            (
                "bad-base64.pem",
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            ),
            (
                "not-x509.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let resolve = |p: &Path| dir.path().join(p);
        for (toml_text, needle) in [
            ("ca_file = \"missing.pem\"", "missing.pem: No such file"),
            (
                "ca_file = \"no-cert.pem\"",
                "no-cert.pem: has no PEM CERTIFICATE",
            ),
            ("ca_file = \"bad-base64.pem\"", "bad-base64.pem: not PEM"),
            (
                "ca_file = \"not-x509.pem\"",
                "not-x509.pem: a certificate rustls refuses as a CA",
            ),
        ] {
            let raw: RawSettings =
                toml::from_str(&format!("starttls = \"required\"\n{toml_text}")).unwrap();
            let (k, problem) = Settings::from_raw(raw, &resolve).unwrap_err();
            assert_eq!(k, "notify.ca_file", "{toml_text}: {problem}");
            assert!(problem.contains(needle), "{toml_text}: {problem}");
        }
        let raw: RawSettings = toml::from_str("ca_file = \"no-cert.pem\"").unwrap();
        let (k, problem) = Settings::from_raw(raw, &resolve).unwrap_err();
        assert_eq!(k, "notify.ca_file");
        assert!(problem.contains("only for STARTTLS"), "{problem}");
    }

    /// A missing, non-directory or unwritable outbox, or one beside SMTP
    /// settings, is a configuration error naming `notify.outbox_dir`.
    #[test]
    fn outbox_dir_is_checked_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        std::fs::create_dir(dir.path().join("outbox")).unwrap();
        let resolve = |p: &Path| dir.path().join(p);
        let mut cases = vec![
            ("outbox_dir = \"missing\"", "missing: No such file"),
            ("outbox_dir = \"file\"", "file: is not a directory"),
            (
                "outbox_dir = \"outbox\"\nsmtp = \"127.0.0.1:25\"",
                "remove notify.smtp (SMTP",
            ),
            (
                "outbox_dir = \"outbox\"\nusername = \"u\"\npassword_file = \"p\"",
                "remove notify.username, notify.password_file",
            ),
        ];
        // Root may write anywhere; access(2) says so.
        if !nix::unistd::geteuid().is_root() {
            cases.push(("outbox_dir = \"locked\"", "locked: is not writable"));
        }
        for (toml_text, needle) in cases {
            let raw: RawSettings = toml::from_str(toml_text).unwrap();
            let (k, problem) = Settings::from_raw(raw, &resolve).unwrap_err();
            assert_eq!(k, "notify.outbox_dir", "{toml_text}: {problem}");
            assert!(problem.contains(needle), "{toml_text}: {problem}");
        }
        let raw: RawSettings = toml::from_str("outbox_dir = \"outbox\"\nretries = 0").unwrap();
        let s = Settings::from_raw(raw, &resolve).unwrap();
        assert_eq!(
            s.outbox.as_deref(),
            Some(dir.path().join("outbox").as_path())
        );
    }

    #[test]
    fn compose_builds_a_text_mail() {
        let s = settings(raw_from("Migrace <mm@example.net>"));
        let r = mixed_report();
        let m = compose(&s, "owner@example.org", &facts(Some(&r), true)).unwrap();
        assert_eq!(m.envelope().from().unwrap().to_string(), "mm@example.net");
        assert_eq!(m.envelope().to()[0].to_string(), "owner@example.org");
        let text = String::from_utf8(m.formatted()).unwrap();
        let headers = text.split("\r\n\r\n").next().unwrap();
        for needle in [
            "Content-Type: text/plain; charset=utf-8",
            "Auto-Submitted: auto-generated",
            "Date: ",
            "To: owner@example.org",
        ] {
            assert!(headers.contains(needle), "{needle}:\n{headers}");
        }
        assert!(
            headers.contains("Message-ID: <maildir-migrate.j1."),
            "{headers}"
        );
        assert!(headers.contains("@example.net>"), "{headers}");
        let n = compose(&s, "owner@example.org", &facts(Some(&r), true)).unwrap();
        assert_ne!(
            m.headers().get_raw("Message-ID"),
            n.headers().get_raw("Message-ID")
        );
    }

    #[test]
    fn hostile_recipient_is_an_error_not_a_panic() {
        let s = settings(raw_from("mm@example.net"));
        for to in ["nobody", "a@b\r\nBcc: evil@x", "", "@@"] {
            let e = compose(&s, to, &facts(None, true)).unwrap_err();
            assert!(matches!(e, NotifyError::Recipient { .. }), "{to:?}: {e}");
            let o = send(&s, to, &facts(None, true));
            assert_eq!((o.status, o.attempts), (OutcomeStatus::Failed, 0));
            assert!(o.error.unwrap().contains("not an e-mail address"));
        }
    }

    #[test]
    fn password_file_errors_do_not_leak_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\r\nignored\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret");
        std::fs::write(&p, "\ns3cret\n").unwrap();
        let e = read_password(&p).unwrap_err().to_string();
        assert!(
            e.contains("pw") && e.contains("empty") && !e.contains("s3cret"),
            "{e}"
        );
        std::fs::write(&p, b"s3cret\xff\n").unwrap();
        let e = read_password(&p).unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let e = read_password(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn outcome_serializes() {
        let o = Outcome {
            status: OutcomeStatus::Sent,
            to: "a@b".into(),
            attempts: 1,
            error: None,
            finished: "t".into(),
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["status"], "sent");
        assert_eq!(v["attempts"], 1);
    }
}
