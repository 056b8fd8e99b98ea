//! A Dovecot server, through its own `doveadm`: its configuration (the
//! inbox namespace its clients see), its users and its mailboxes' status,
//! and raising a mailbox's HIGHESTMODSEQ. The old and the new server each
//! have one when configured (`[source] doveadm`, `[verify] doveadm`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::maildir::Layout;
use crate::maildir::names::FolderName;

/// A doveadm and the configuration it reads (`-c`; none: its default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doveadm {
    pub bin: PathBuf,
    pub config: Option<PathBuf>,
}

/// How a server names mailboxes to its clients: the inbox namespace's
/// prefix and hierarchy separator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: String,
    pub separator: char,
}

impl Namespace {
    /// What Courier-IMAP's clients see: `INBOX.Sent`.
    pub fn courier() -> Namespace {
        Namespace {
            prefix: "INBOX.".into(),
            separator: '.',
        }
    }

    /// The name a client sees for a folder (`None`: INBOX).
    pub fn name(&self, folder: Option<&FolderName>) -> String {
        match folder {
            None => "INBOX".into(),
            Some(n) => format!(
                "{}{}",
                self.prefix,
                n.levels().join(&self.separator.to_string())
            ),
        }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prefix {:?} and separator {:?}",
            self.prefix, self.separator
        )
    }
}

/// One line of `doveadm mailbox status`: the mailbox and its fields.
pub type Status = HashMap<String, HashMap<String, String>>;

/// What `doveadm` printed and, when it exited non-zero, why (stderr).
struct Reply {
    stdout: String,
    failure: Option<String>,
    /// It exited saying it does not know the user.
    no_user: bool,
}

/// doveadm's exit status for a user the server does not know (EX_NOUSER).
const NO_USER: i32 = 67;

impl Doveadm {
    /// Runs `doveadm [-c config] args`; `what` names the command in errors.
    fn call(&self, what: &str, args: &[&str]) -> Result<Reply, String> {
        let mut cmd = Command::new(&self.bin);
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        let failure = (!out.status.success()).then(|| {
            format!(
                "doveadm {what} failed ({}): {}",
                out.status,
                crate::shown::bytes(out.stderr.trim_ascii())
            )
        });
        Ok(Reply {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            failure,
            no_user: out.status.code() == Some(NO_USER),
        })
    }

    fn run(&self, what: &str, args: &[&str]) -> Result<String, String> {
        let reply = self.call(what, args)?;
        match reply.failure {
            None => Ok(reply.stdout),
            Some(f) => Err(f),
        }
    }

    /// The inbox namespace of the server's configuration (`doveadm
    /// config -n` prints only what differs from the defaults: no separator
    /// means the mailbox format's, `.` for Maildir++ and `/` for `fs`).
    pub fn namespace(&self, layout: Layout) -> Result<Namespace, String> {
        let text = self.run("config", &["config", "-n"])?;
        Ok(parse_namespace(&text, layout))
    }

    /// One setting of the server's configuration (`doveadm config -h`),
    /// with a `$other` reference followed.
    pub fn setting(&self, key: &str) -> Result<String, String> {
        let value = self.run("config", &["config", "-h", key])?;
        match value.trim().strip_prefix('$') {
            Some(other) if other != key => self.setting(other),
            _ => Ok(value.trim().to_string()),
        }
    }

    /// `doveadm user`: the user's userdb fields; `None` for a user the
    /// server does not know.
    pub fn user(&self, user: &str) -> Result<Option<HashMap<String, String>>, String> {
        self.lookup("user", &["user", user])
    }

    /// `doveadm auth lookup`: the user's passdb fields (`nologin` among
    /// them when logins are refused); `None` for a user it does not know.
    pub fn passdb(&self, user: &str) -> Result<Option<HashMap<String, String>>, String> {
        self.lookup("auth lookup", &["auth", "lookup", user])
    }

    /// Fields printed as `key<tab>value` (userdb) or `  key : value`
    /// (passdb), one per line.
    fn lookup(&self, what: &str, args: &[&str]) -> Result<Option<HashMap<String, String>>, String> {
        let reply = self.call(what, args)?;
        match reply.failure {
            _ if reply.no_user => return Ok(None),
            Some(f) => return Err(f),
            None => {}
        }
        let field = |l: &str| {
            let (k, v) = l.split_once('\t').or_else(|| l.split_once(':'))?;
            Some((k.trim().to_string(), v.trim().to_string()))
        };
        let bare = |l: &str| {
            let k = l.trim();
            (!k.is_empty() && !k.contains(' ')).then(|| (k.to_string(), String::new()))
        };
        Ok(Some(
            reply
                .stdout
                .lines()
                .skip(1)
                .filter_map(|l| field(l).or_else(|| bare(l)))
                .collect(),
        ))
    }

    /// Forgets what the server's auth cache holds for `user` (harmless
    /// where no cache is configured).
    pub fn flush_auth_cache(&self, user: &str) -> Result<(), String> {
        self.run("auth cache flush", &["auth", "cache", "flush", user])
            .map(drop)
    }

    /// How many IMAP/POP3 sessions of `user` the server has open.
    pub fn sessions(&self, user: &str) -> Result<usize, String> {
        let out = self.run("who", &["who", "-1", user])?;
        Ok(out
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(user))
            .count())
    }

    /// `doveadm mailbox status` of every mailbox of `user`.
    pub fn status(&self, user: &str, fields: &str) -> Result<Status, String> {
        let out = self.run("mailbox status", &status_args(user, fields))?;
        parse_status(&out)
    }

    /// Like [`Self::status`], for every mailbox the server can open, with
    /// its complaint about the others.
    pub fn status_readable(
        &self,
        user: &str,
        fields: &str,
    ) -> Result<(Status, Option<String>), String> {
        let reply = self.call("mailbox status", &status_args(user, fields))?;
        match parse_status(&reply.stdout) {
            Ok(status) => Ok((status, reply.failure)),
            Err(e) => Err(reply.failure.unwrap_or(e)),
        }
    }

    /// Raises a mailbox's HIGHESTMODSEQ to at least `modseq`.
    pub fn raise_modseq(&self, user: &str, mailbox: &str, modseq: u64) -> Result<(), String> {
        let min = modseq.to_string();
        let args = [
            "mailbox",
            "update",
            "-u",
            user,
            "--min-highest-modseq",
            &min,
            mailbox,
        ];
        self.run("mailbox update", &args).map(drop)
    }

    pub fn describe(&self) -> String {
        match &self.config {
            Some(c) => format!("{} -c {}", self.bin.display(), c.display()),
            None => self.bin.display().to_string(),
        }
    }
}

fn status_args<'a>(user: &'a str, fields: &'a str) -> [&'a str; 8] {
    ["-f", "tab", "mailbox", "status", "-u", user, fields, "*"]
}

/// `-f tab` output: a header line naming the columns, then one line per
/// mailbox.
fn parse_status(out: &str) -> Result<Status, String> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    if header.first() != Some(&"mailbox") {
        return Err(format!(
            "doveadm mailbox status printed no usable header ({:?})",
            crate::shown::text(&header.join(" "))
        ));
    }
    let mut status = Status::new();
    for l in lines {
        let cells: Vec<&str> = l.split('\t').collect();
        let Some((name, values)) = cells.split_first() else {
            continue;
        };
        let fields = header[1..]
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        status.insert(name.to_string(), fields);
    }
    Ok(status)
}

/// The `namespace … { inbox = yes … }` block of `doveconf -n` output.
fn parse_namespace(text: &str, layout: Layout) -> Namespace {
    let default_separator = match layout {
        Layout::MaildirPlusPlus => '.',
        Layout::Fs => '/',
    };
    let mut spaces: Vec<HashMap<&str, &str>> = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<HashMap<&str, &str>> = None;
    for line in text.lines().map(str::trim) {
        if line.ends_with('{') {
            if depth == 0 && line.starts_with("namespace ") {
                current = Some(HashMap::new());
            }
            depth += 1;
            continue;
        }
        if line == "}" {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                spaces.extend(current.take());
            }
            continue;
        }
        if depth == 1
            && let (Some(ns), Some((k, v))) = (current.as_mut(), line.split_once('='))
        {
            ns.insert(k.trim(), v.trim());
        }
    }
    let inbox = spaces
        .iter()
        .find(|ns| ns.get("inbox") == Some(&"yes"))
        .or(spaces.first());
    let get = |k: &str| inbox.and_then(|ns| ns.get(k).copied()).unwrap_or_default();
    Namespace {
        prefix: get("prefix").to_string(),
        separator: get("separator").chars().next().unwrap_or(default_separator),
    }
}

/// The path of a doveadm given as a key's value: absolute.
pub fn parse_bin(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Err(format!("{}: must be an absolute path", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_from_doveconf() {
        let debian = "namespace inbox {\n  inbox = yes\n  location = \n  mailbox Drafts {\n    special_use = \\Drafts\n  }\n  prefix = \n}\n";
        assert_eq!(
            parse_namespace(debian, Layout::MaildirPlusPlus),
            Namespace {
                prefix: String::new(),
                separator: '.'
            }
        );
        let courier = "mail_location = maildir:~/Maildir\nnamespace inbox {\n  inbox = yes\n  prefix = INBOX.\n  separator = .\n}\n";
        assert_eq!(parse_namespace(courier, Layout::Fs), Namespace::courier());
        let two = "namespace shared {\n  prefix = shared/\n  separator = /\n}\nnamespace inbox {\n  inbox = yes\n  separator = /\n}\n";
        let ns = parse_namespace(two, Layout::MaildirPlusPlus);
        assert_eq!((ns.prefix.as_str(), ns.separator), ("", '/'));
        assert_eq!(parse_namespace("", Layout::Fs).separator, '/');
        let archive = FolderName::from_levels(["Archive", "2019"]).unwrap();
        assert_eq!(
            Namespace::courier().name(Some(&archive)),
            "INBOX.Archive.2019"
        );
        assert_eq!(ns.name(None), "INBOX");
    }

    #[test]
    fn status_lines_by_column() {
        let s =
            parse_status("mailbox\tmessages\thighestmodseq\nINBOX\t3\t17\nA/b\t0\t1\n").unwrap();
        assert_eq!(s["INBOX"]["highestmodseq"], "17");
        assert_eq!(s["A/b"]["messages"], "0");
        assert!(parse_status("junk").is_err());
    }
}
