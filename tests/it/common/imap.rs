//! A small synchronous IMAP4rev1 client for tests (plaintext TCP, no TLS).
//!
//! It speaks just enough IMAP to fill and inspect a mailbox store through a
//! real server: LOGIN, AUTHENTICATE PLAIN (with SASL-IR), LIST, LSUB, CREATE,
//! SUBSCRIBE, SELECT/EXAMINE, UID FETCH, APPEND, UID STORE, EXPUNGE, LOGOUT,
//! and a QRESYNC resynchronisation (RFC 7162) as a CONDSTORE client does it.
//!
//! Mailbox names are UTF-8 Rust strings at this API; the client converts them
//! to and from IMAP modified UTF-7 (RFC 3501 §5.1.3) itself, see [`mutf7`].
//!
//! Server responses are read as "logical lines": a line whose end announces a
//! literal (`{n}` before CRLF) is continued with the `n` raw bytes and the rest
//! of the line, so FETCH bodies and names sent as literals are handled.
//!
//! Set `IMAP_DEBUG=1` to get the protocol exchange on stderr (credentials
//! are not printed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// How long a read from the server may block before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Refuse absurd literal sizes instead of allocating them.
const MAX_LITERAL: usize = 1 << 30;

// ---------------------------------------------------------------------------
// base64 (RFC 4648) and modified UTF-7 (the library's codec)
// ---------------------------------------------------------------------------

/// Standard base64 with padding (used for SASL).
pub fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// IMAP modified UTF-7 for mailbox names (RFC 3501 §5.1.3).
///
/// Printable US-ASCII (0x20..=0x7e) stands for itself except `&`, which is
/// written `&-`; every other run of characters is UTF-16BE, base64 with `,`
/// instead of `/` and no padding, between `&` and `-`.
pub mod mutf7 {
    use maildir_migrate::maildir::names::{mutf7_decode, mutf7_encode};

    /// UTF-8 -> modified UTF-7.
    pub fn encode(name: &str) -> String {
        mutf7_encode(name)
    }

    /// Modified UTF-7 -> UTF-8 (strict).
    pub fn decode(name: &str) -> Result<String, String> {
        mutf7_decode(name.as_bytes()).ok_or_else(|| format!("{name:?} is not modified UTF-7"))
    }
}

// ---------------------------------------------------------------------------
// Response tokens
// ---------------------------------------------------------------------------

/// One parsed value of a server response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An atom or number; `BODY[...]` sections are kept inside the atom.
    Atom(String),
    /// A quoted string or a literal, as raw bytes.
    Str(Vec<u8>),
    Nil,
    List(Vec<Token>),
}

impl Token {
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Token::Atom(a) => Some(a),
            _ => None,
        }
    }

    /// Atom or string as text (lossy UTF-8); `None` for NIL and lists.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Token::Atom(a) => Some(a.clone()),
            Token::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        self.as_atom()?.parse().ok()
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf, pos: 0 }
    }

    fn err(&self, what: &str) -> String {
        let start = self.pos.saturating_sub(20);
        let end = (self.pos + 20).min(self.buf.len());
        format!(
            "{what} at byte {} near {:?}",
            self.pos,
            String::from_utf8_lossy(&self.buf[start..end])
        )
    }

    fn skip_spaces(&mut self) {
        while self.buf.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// All values up to the end of the buffer.
    fn values(&mut self) -> Result<Vec<Token>, String> {
        let mut out = Vec::new();
        loop {
            self.skip_spaces();
            if self.at_end() {
                return Ok(out);
            }
            out.push(self.value()?);
        }
    }

    fn value(&mut self) -> Result<Token, String> {
        match self.buf.get(self.pos) {
            None => Err(self.err("value expected")),
            Some(b'(') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_spaces();
                    match self.buf.get(self.pos) {
                        None => return Err(self.err("unterminated list")),
                        Some(b')') => {
                            self.pos += 1;
                            return Ok(Token::List(items));
                        }
                        Some(_) => items.push(self.value()?),
                    }
                }
            }
            Some(b')') => Err(self.err("unexpected )")),
            Some(b'"') => {
                self.pos += 1;
                let mut s = Vec::new();
                loop {
                    match self.buf.get(self.pos) {
                        None => return Err(self.err("unterminated quoted string")),
                        Some(b'"') => {
                            self.pos += 1;
                            return Ok(Token::Str(s));
                        }
                        Some(b'\\') => {
                            let c = *self
                                .buf
                                .get(self.pos + 1)
                                .ok_or_else(|| self.err("dangling backslash"))?;
                            s.push(c);
                            self.pos += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            self.pos += 1;
                        }
                    }
                }
            }
            Some(b'{') => {
                let close = self.buf[self.pos..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or_else(|| self.err("unterminated literal length"))?;
                let digits = &self.buf[self.pos + 1..self.pos + close];
                let n: usize = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| self.err("bad literal length"))?;
                let data_start = self.pos + close + 1 + 2;
                if self.buf.get(self.pos + close + 1..data_start) != Some(b"\r\n") {
                    return Err(self.err("literal length not followed by CRLF"));
                }
                let data = self
                    .buf
                    .get(data_start..data_start + n)
                    .ok_or_else(|| self.err("literal shorter than announced"))?;
                self.pos = data_start + n;
                Ok(Token::Str(data.to_vec()))
            }
            Some(_) => {
                let start = self.pos;
                let mut depth = 0usize;
                while let Some(&c) = self.buf.get(self.pos) {
                    match c {
                        b'[' => depth += 1,
                        b']' => depth = depth.saturating_sub(1),
                        b' ' | b'(' | b')' if depth == 0 => break,
                        _ => {}
                    }
                    self.pos += 1;
                }
                let atom = String::from_utf8_lossy(&self.buf[start..self.pos]).into_owned();
                if atom.eq_ignore_ascii_case("NIL") {
                    Ok(Token::Nil)
                } else {
                    Ok(Token::Atom(atom))
                }
            }
        }
    }
}

/// Parses one logical response line (without the final CRLF) into tokens.
pub fn parse_tokens(line: &[u8]) -> Result<Vec<Token>, String> {
    Parser::new(line).values()
}

/// Length of the literal announced at the end of a line (`... {123}`).
fn trailing_literal_len(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let digits = &body[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Responses and commands
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

/// Everything the server said for one tagged command.
#[derive(Debug, Clone)]
pub struct Response {
    /// Untagged responses without the leading `* `, literals inlined as
    /// `{n}\r\n<bytes>` (use [`parse_tokens`]).
    pub untagged: Vec<Vec<u8>>,
    pub status: Status,
    /// Text after the status word, e.g. `[AUTHENTICATIONFAILED] Authentication failed.`
    pub text: String,
}

impl Response {
    /// `Ok(self)` for OK, `Err("NO text")`/`Err("BAD text")` otherwise.
    pub fn ok(self) -> Result<Response, String> {
        match self.status {
            Status::Ok => Ok(self),
            Status::No => Err(format!("NO {}", self.text)),
            Status::Bad => Err(format!("BAD {}", self.text)),
        }
    }

    /// Untagged responses whose first token after `* ` is `keyword`
    /// (or, for `* 3 EXISTS`/`* 1 FETCH`, whose second one is).
    pub fn untagged_with<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.untagged.iter().map(Vec::as_slice).filter(move |line| {
            let mut words = line.splitn(3, |&b| b == b' ');
            let first = words.next().unwrap_or_default();
            let second = words.next().unwrap_or_default();
            first.eq_ignore_ascii_case(keyword.as_bytes())
                || (first.iter().all(u8::is_ascii_digit)
                    && second.eq_ignore_ascii_case(keyword.as_bytes()))
        })
    }
}

/// A piece of a command: text sent as is, or a (synchronizing) literal.
#[derive(Debug, Clone)]
pub enum Part {
    Text(Vec<u8>),
    Literal(Vec<u8>),
}

impl Part {
    pub fn text(s: &str) -> Part {
        Part::Text(s.as_bytes().to_vec())
    }

    /// An IMAP string: quoted when it is 7-bit text without CR/LF/NUL,
    /// otherwise a literal.
    pub fn string(s: &[u8]) -> Part {
        let quotable = s
            .iter()
            .all(|&b| (0x01..=0x7f).contains(&b) && b != b'\r' && b != b'\n');
        if quotable {
            let mut q = Vec::with_capacity(s.len() + 2);
            q.push(b'"');
            for &b in s {
                if b == b'"' || b == b'\\' {
                    q.push(b'\\');
                }
                q.push(b);
            }
            q.push(b'"');
            Part::Text(q)
        } else {
            Part::Literal(s.to_vec())
        }
    }

    /// A mailbox name: encoded to modified UTF-7, then quoted.
    pub fn mailbox(name: &str) -> Part {
        Part::string(mutf7::encode(name).as_bytes())
    }
}

// ---------------------------------------------------------------------------
// Data returned by the client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Decoded to UTF-8 (kept raw if it is not valid modified UTF-7).
    pub name: String,
    /// As sent, e.g. `\HasNoChildren`, `\Noselect`.
    pub attributes: Vec<String>,
    /// `None` when the server says NIL.
    pub delimiter: Option<char>,
}

impl ListEntry {
    pub fn has_attribute(&self, attr: &str) -> bool {
        self.attributes.iter().any(|a| a.eq_ignore_ascii_case(attr))
    }

    /// Not `\Noselect` and not `\NonExistent`.
    pub fn selectable(&self) -> bool {
        !self.has_attribute("\\Noselect") && !self.has_attribute("\\NonExistent")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectInfo {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub exists: u32,
}

/// One message as seen over IMAP.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: u32,
    /// System flags and keywords, without the session-only `\Recent`.
    pub flags: BTreeSet<String>,
    /// As the server sends it, e.g. `14-Feb-2019 07:30:00 +0000`.
    pub internal_date: String,
    /// RFC822.SIZE.
    pub size: u64,
    /// BODY[] (the whole message).
    pub body: Vec<u8>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("uid", &self.uid)
            .field("flags", &self.flags)
            .field("internal_date", &self.internal_date)
            .field("size", &self.size)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSnapshot {
    pub name: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// Sorted by UID.
    pub messages: Vec<Message>,
}

impl MailboxSnapshot {
    pub fn message(&self, uid: u32) -> Option<&Message> {
        self.messages.iter().find(|m| m.uid == uid)
    }

    pub fn uids(&self) -> Vec<u32> {
        self.messages.iter().map(|m| m.uid).collect()
    }
}

/// Everything about one account that a migration must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSnapshot {
    /// Selectable mailboxes, sorted by name.
    pub mailboxes: Vec<MailboxSnapshot>,
    /// Subscribed names (LSUB), sorted.
    pub subscriptions: Vec<String>,
}

impl AccountSnapshot {
    pub fn mailbox(&self, name: &str) -> Option<&MailboxSnapshot> {
        self.mailboxes.iter().find(|m| m.name == name)
    }

    pub fn mailbox_names(&self) -> Vec<&str> {
        self.mailboxes.iter().map(|m| m.name.as_str()).collect()
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn describe_message(m: &Message) -> String {
    format!(
        "flags {:?}, date {:?}, size {}, body {} bytes",
        m.flags,
        m.internal_date,
        m.size,
        m.body.len()
    )
}

/// Human-readable differences between two snapshots, one line each; empty
/// when they are equal. Bodies are compared as bytes and shown as lengths.
pub fn diff(a: &AccountSnapshot, b: &AccountSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    let subs_a: BTreeSet<&String> = a.subscriptions.iter().collect();
    let subs_b: BTreeSet<&String> = b.subscriptions.iter().collect();
    for s in subs_a.difference(&subs_b) {
        out.push(format!("subscription {s:?}: only in a"));
    }
    for s in subs_b.difference(&subs_a) {
        out.push(format!("subscription {s:?}: only in b"));
    }
    if a.subscriptions != b.subscriptions && subs_a == subs_b {
        out.push(format!(
            "subscriptions: same names, different lists: a={:?} b={:?}",
            a.subscriptions, b.subscriptions
        ));
    }

    let names: BTreeSet<&str> = a
        .mailbox_names()
        .into_iter()
        .chain(b.mailbox_names())
        .collect();
    for name in names {
        let (ma, mb) = match (a.mailbox(name), b.mailbox(name)) {
            (Some(ma), Some(mb)) => (ma, mb),
            (Some(ma), None) => {
                out.push(format!(
                    "mailbox {name:?}: only in a ({} messages)",
                    ma.messages.len()
                ));
                continue;
            }
            (None, Some(mb)) => {
                out.push(format!(
                    "mailbox {name:?}: only in b ({} messages)",
                    mb.messages.len()
                ));
                continue;
            }
            (None, None) => unreachable!(),
        };
        if ma.uidvalidity != mb.uidvalidity {
            out.push(format!(
                "mailbox {name:?}: UIDVALIDITY a={} b={}",
                ma.uidvalidity, mb.uidvalidity
            ));
        }
        if ma.uidnext != mb.uidnext {
            out.push(format!(
                "mailbox {name:?}: UIDNEXT a={} b={}",
                ma.uidnext, mb.uidnext
            ));
        }
        let uids: BTreeSet<u32> = ma.uids().into_iter().chain(mb.uids()).collect();
        for uid in uids {
            let at = format!("mailbox {name:?} uid {uid}");
            match (ma.message(uid), mb.message(uid)) {
                (Some(x), None) => out.push(format!("{at}: only in a ({})", describe_message(x))),
                (None, Some(y)) => out.push(format!("{at}: only in b ({})", describe_message(y))),
                (Some(x), Some(y)) => {
                    if x.flags != y.flags {
                        out.push(format!("{at}: flags a={:?} b={:?}", x.flags, y.flags));
                    }
                    if x.internal_date != y.internal_date {
                        out.push(format!(
                            "{at}: INTERNALDATE a={:?} b={:?}",
                            x.internal_date, y.internal_date
                        ));
                    }
                    if x.size != y.size {
                        out.push(format!("{at}: RFC822.SIZE a={} b={}", x.size, y.size));
                    }
                    if x.body != y.body {
                        out.push(format!(
                            "{at}: body differs (a {} bytes, b {} bytes, first difference \
                             at byte {})",
                            x.body.len(),
                            y.body.len(),
                            first_difference(&x.body, &y.body)
                        ));
                    }
                }
                (None, None) => unreachable!(),
            }
        }
    }
    out
}

/// Panics with the [`diff`] when the snapshots differ.
#[track_caller]
pub fn assert_snapshots_equal(a: &AccountSnapshot, b: &AccountSnapshot) {
    let d = diff(a, b);
    if !d.is_empty() || a != b {
        panic!("account snapshots differ:\n  {}", d.join("\n  "));
    }
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

pub struct ImapClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
    capabilities: Vec<String>,
    debug: bool,
}

fn capabilities_from_text(text: &str) -> Option<Vec<String>> {
    let start = text.find("[CAPABILITY ")? + "[CAPABILITY ".len();
    let end = start + text[start..].find(']')?;
    Some(
        text[start..end]
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

fn decode_name(raw: &str) -> String {
    mutf7::decode(raw).unwrap_or_else(|_| raw.to_owned())
}

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl ImapClient {
    /// Connects to 127.0.0.1:`port` and reads the greeting, which must be
    /// `* OK`.
    pub fn connect(port: u16) -> io::Result<ImapClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut client = ImapClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_tag: 1,
            capabilities: Vec::new(),
            debug: std::env::var_os("IMAP_DEBUG").is_some_and(|v| !v.is_empty() && v != "0"),
        };
        let greeting = client.read_logical_line()?;
        let text = String::from_utf8_lossy(&greeting).into_owned();
        if !text.starts_with("* OK") {
            return Err(protocol_error(format!("unexpected greeting: {text}")));
        }
        if let Some(caps) = capabilities_from_text(&text) {
            client.capabilities = caps;
        }
        Ok(client)
    }

    /// Capabilities from the greeting or the last CAPABILITY response.
    pub fn capabilities(&mut self) -> io::Result<Vec<String>> {
        if self.capabilities.is_empty() {
            self.refresh_capabilities()?;
        }
        Ok(self.capabilities.clone())
    }

    pub fn has_capability(&mut self, cap: &str) -> io::Result<bool> {
        Ok(self
            .capabilities()?
            .iter()
            .any(|c| c.eq_ignore_ascii_case(cap)))
    }

    fn refresh_capabilities(&mut self) -> io::Result<()> {
        let resp = self.command("CAPABILITY")?;
        if let Some(line) = resp.untagged_with("CAPABILITY").next() {
            let text = String::from_utf8_lossy(line);
            self.capabilities = text.split_whitespace().skip(1).map(str::to_owned).collect();
        }
        Ok(())
    }

    fn debug_line(&self, dir: &str, line: &[u8]) {
        if self.debug {
            let shown = String::from_utf8_lossy(&line[..line.len().min(300)]).into_owned();
            let more = if line.len() > 300 { " ..." } else { "" };
            eprintln!("IMAP {dir} {}{more}", shown.trim_end());
        }
    }

    /// One response line, continued across literals; without the final CRLF.
    fn read_logical_line(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line)? == 0 || !line.ends_with(b"\n") {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed by server after {:?}",
                        String::from_utf8_lossy(&out)
                    ),
                ));
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.extend_from_slice(&line);
            match trailing_literal_len(&line) {
                Some(n) if n > MAX_LITERAL => {
                    return Err(protocol_error(format!("literal of {n} bytes is too big")));
                }
                Some(n) => {
                    let mut data = vec![0; n];
                    self.reader.read_exact(&mut data)?;
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                }
                None => {
                    self.debug_line("S:", &out);
                    return Ok(out);
                }
            }
        }
    }

    fn write_all(&mut self, data: &[u8], secret: bool) -> io::Result<()> {
        if secret {
            self.debug_line("C:", b"<credentials>");
        } else {
            self.debug_line("C:", data);
        }
        self.writer.write_all(data)
    }

    /// Runs a simple command (no literals) and reads up to its tagged reply.
    pub fn command(&mut self, cmd: &str) -> io::Result<Response> {
        self.command_parts(&[Part::text(cmd)])
    }

    /// Runs a command made of parts separated by single spaces, sending
    /// literals as synchronizing literals (waits for `+` each time).
    pub fn command_parts(&mut self, parts: &[Part]) -> io::Result<Response> {
        self.command_parts_inner(parts, false)
    }

    fn command_parts_inner(&mut self, parts: &[Part], secret: bool) -> io::Result<Response> {
        let tag = format!("A{:04}", self.next_tag);
        self.next_tag += 1;
        let mut untagged = Vec::new();
        let mut pending: Vec<u8> = format!("{tag} ").into_bytes();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                pending.push(b' ');
            }
            match part {
                Part::Text(t) => pending.extend_from_slice(t),
                Part::Literal(data) => {
                    pending.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
                    self.write_all(&pending, secret)?;
                    pending.clear();
                    // The server may refuse the literal (tagged NO/BAD).
                    if let Some(refused) = self.await_continuation(&tag, &mut untagged)? {
                        return Ok(refused);
                    }
                    self.write_all(data, secret)?;
                }
            }
        }
        pending.extend_from_slice(b"\r\n");
        self.write_all(&pending, secret)?;
        self.read_until_tagged(&tag, untagged)
    }

    fn read_until_tagged(&mut self, tag: &str, mut untagged: Vec<Vec<u8>>) -> io::Result<Response> {
        loop {
            let line = self.read_logical_line()?;
            if let Some(rest) = line.strip_prefix(b"* ") {
                untagged.push(rest.to_vec());
            } else if line.starts_with(b"+") {
                return Err(protocol_error(format!(
                    "unexpected continuation request {:?}",
                    String::from_utf8_lossy(&line)
                )));
            } else {
                return self.finish_tagged(tag, &line, untagged);
            }
        }
    }

    fn finish_tagged(
        &mut self,
        tag: &str,
        line: &[u8],
        untagged: Vec<Vec<u8>>,
    ) -> io::Result<Response> {
        let text = String::from_utf8_lossy(line).into_owned();
        let rest = text
            .strip_prefix(tag)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| protocol_error(format!("expected tag {tag}, got {text:?}")))?;
        let (word, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let status = match word.to_ascii_uppercase().as_str() {
            "OK" => Status::Ok,
            "NO" => Status::No,
            "BAD" => Status::Bad,
            _ => return Err(protocol_error(format!("bad tagged status in {line:?}"))),
        };
        if let Some(caps) = capabilities_from_text(text) {
            self.capabilities = caps;
        }
        Ok(Response {
            untagged,
            status,
            text: text.to_owned(),
        })
    }

    /// Turns a login reply into the API result. Dovecot answers
    /// `OK Logged in, but initialization failed.` when the mail process could
    /// not start (bad uid, unreadable home...): that is reported as an error.
    fn login_result(&mut self, resp: io::Result<Response>) -> Result<(), String> {
        let resp = resp.map_err(|e| format!("I/O error: {e}"))?.ok()?;
        if resp.text.contains("initialization failed") {
            return Err(resp.text);
        }
        if !resp.text.contains("[CAPABILITY ") {
            // The pre-login capability list is stale now.
            self.capabilities.clear();
        }
        Ok(())
    }

    /// LOGIN; user and password are quoted, or literals when they are not
    /// 7-bit text.
    pub fn login(&mut self, user: &str, pass: &str) -> Result<(), String> {
        let parts = [
            Part::text("LOGIN"),
            Part::string(user.as_bytes()),
            Part::string(pass.as_bytes()),
        ];
        let resp = self.command_parts_inner(&parts, true);
        self.login_result(resp)
    }

    /// AUTHENTICATE PLAIN with the initial response in the command (SASL-IR)
    /// when the server offers it, else after the `+` continuation.
    pub fn authenticate_plain(&mut self, user: &str, pass: &str) -> Result<(), String> {
        let mut blob = vec![0u8];
        blob.extend_from_slice(user.as_bytes());
        blob.push(0);
        blob.extend_from_slice(pass.as_bytes());
        let encoded = base64_encode(&blob);
        let sasl_ir = self
            .has_capability("SASL-IR")
            .map_err(|e| format!("I/O error: {e}"))?;
        let resp = if sasl_ir {
            self.command_parts_inner(
                &[Part::text(&format!("AUTHENTICATE PLAIN {encoded}"))],
                true,
            )
        } else {
            self.authenticate_plain_without_ir(&encoded)
        };
        self.login_result(resp)
    }

    /// Reads until the server's `+` continuation request (collecting
    /// untagged lines); `Some(response)` when it answers with the tagged
    /// status instead.
    fn await_continuation(
        &mut self,
        tag: &str,
        untagged: &mut Vec<Vec<u8>>,
    ) -> io::Result<Option<Response>> {
        loop {
            let line = self.read_logical_line()?;
            if line.starts_with(b"+") {
                return Ok(None);
            }
            if let Some(rest) = line.strip_prefix(b"* ") {
                untagged.push(rest.to_vec());
                continue;
            }
            return self
                .finish_tagged(tag, &line, std::mem::take(untagged))
                .map(Some);
        }
    }

    fn authenticate_plain_without_ir(&mut self, encoded: &str) -> io::Result<Response> {
        let tag = format!("A{:04}", self.next_tag);
        self.next_tag += 1;
        self.write_all(format!("{tag} AUTHENTICATE PLAIN\r\n").as_bytes(), false)?;
        let mut untagged = Vec::new();
        if let Some(refused) = self.await_continuation(&tag, &mut untagged)? {
            return Ok(refused);
        }
        self.write_all(format!("{encoded}\r\n").as_bytes(), true)?;
        self.read_until_tagged(&tag, untagged)
    }

    fn parse_list_lines(resp: &Response, keyword: &str) -> Result<Vec<ListEntry>, String> {
        let mut out = Vec::new();
        for line in resp.untagged_with(keyword) {
            let tokens = parse_tokens(line)?;
            let bad = || {
                format!(
                    "malformed {keyword} response {:?}",
                    String::from_utf8_lossy(line)
                )
            };
            let [_, Token::List(attrs), delim, name] = tokens.as_slice() else {
                return Err(bad());
            };
            let attributes = attrs
                .iter()
                .map(|a| a.as_text().ok_or_else(bad))
                .collect::<Result<_, _>>()?;
            let delimiter = match delim {
                Token::Nil => None,
                d => d.as_text().and_then(|s| s.chars().next()),
            };
            let name = decode_name(&name.as_text().ok_or_else(bad)?);
            out.push(ListEntry {
                name,
                attributes,
                delimiter,
            });
        }
        Ok(out)
    }

    /// `LIST "" "*"`; panics on failure.
    pub fn list(&mut self) -> Vec<ListEntry> {
        let resp = self
            .command(r#"LIST "" "*""#)
            .expect("LIST: I/O error")
            .ok()
            .expect("LIST failed");
        Self::parse_list_lines(&resp, "LIST").expect("LIST: unparsable response")
    }

    /// Subscribed names (`LSUB "" "*"`), sorted; panics on failure.
    pub fn lsub(&mut self) -> Vec<String> {
        let resp = self
            .command(r#"LSUB "" "*""#)
            .expect("LSUB: I/O error")
            .ok()
            .expect("LSUB failed");
        let mut names: Vec<String> = Self::parse_list_lines(&resp, "LSUB")
            .expect("LSUB: unparsable response")
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        names
    }

    fn simple_mailbox_command(&mut self, verb: &str, name: &str) -> Result<(), String> {
        self.command_parts(&[Part::text(verb), Part::mailbox(name)])
            .map_err(|e| format!("I/O error: {e}"))?
            .ok()
            .map(drop)
    }

    pub fn create(&mut self, name: &str) -> Result<(), String> {
        self.simple_mailbox_command("CREATE", name)
    }

    pub fn subscribe(&mut self, name: &str) -> Result<(), String> {
        self.simple_mailbox_command("SUBSCRIBE", name)
    }

    fn open_mailbox(&mut self, verb: &str, name: &str) -> Result<SelectInfo, String> {
        let resp = self
            .command_parts(&[Part::text(verb), Part::mailbox(name)])
            .map_err(|e| format!("I/O error: {e}"))?
            .ok()?;
        let (mut uidvalidity, mut uidnext, mut exists) = (None, None, None);
        for line in &resp.untagged {
            let text = String::from_utf8_lossy(line);
            let words: Vec<&str> = text.split_whitespace().collect();
            match words.as_slice() {
                [n, kw, ..] if kw.eq_ignore_ascii_case("EXISTS") => exists = n.parse().ok(),
                ["OK", code, value, ..] => {
                    let value = value.trim_end_matches(']').parse().ok();
                    if code.eq_ignore_ascii_case("[UIDVALIDITY") {
                        uidvalidity = value;
                    } else if code.eq_ignore_ascii_case("[UIDNEXT") {
                        uidnext = value;
                    }
                }
                _ => {}
            }
        }
        let missing = |what: &str| format!("{verb} {name:?}: no {what} in the response");
        Ok(SelectInfo {
            uidvalidity: uidvalidity.ok_or_else(|| missing("UIDVALIDITY"))?,
            uidnext: uidnext.ok_or_else(|| missing("UIDNEXT"))?,
            exists: exists.ok_or_else(|| missing("EXISTS"))?,
        })
    }

    /// SELECT (read-write); `Err` with the server text on NO/BAD.
    pub fn try_select(&mut self, name: &str) -> Result<SelectInfo, String> {
        self.open_mailbox("SELECT", name)
    }

    /// SELECT; panics on failure.
    pub fn select(&mut self, name: &str) -> SelectInfo {
        self.try_select(name)
            .unwrap_or_else(|e| panic!("SELECT {name:?}: {e}"))
    }

    /// EXAMINE (read-only: keeps `\Recent` and never sets `\Seen`); panics
    /// on failure.
    pub fn examine(&mut self, name: &str) -> SelectInfo {
        self.open_mailbox("EXAMINE", name)
            .unwrap_or_else(|e| panic!("EXAMINE {name:?}: {e}"))
    }

    /// All messages of the selected mailbox, sorted by UID, with
    /// `UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])`.
    /// Panics on failure.
    pub fn uid_fetch_all(&mut self) -> Vec<Message> {
        let resp = self
            .command("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
            .expect("UID FETCH: I/O error")
            .ok()
            .expect("UID FETCH failed");
        let mut messages = Vec::new();
        for line in resp.untagged_with("FETCH") {
            let tokens = parse_tokens(line).unwrap_or_else(|e| panic!("FETCH response: {e}"));
            let Some(Token::List(items)) = tokens.get(2) else {
                panic!(
                    "malformed FETCH response {:?}",
                    String::from_utf8_lossy(line)
                );
            };
            let (mut uid, mut flags, mut date, mut size, mut body) = (None, None, None, None, None);
            for pair in items.chunks(2) {
                let [key, value] = pair else { break };
                let key = key.as_atom().unwrap_or_default().to_ascii_uppercase();
                match key.as_str() {
                    "UID" => uid = value.as_u64().and_then(|v| u32::try_from(v).ok()),
                    "FLAGS" => {
                        if let Token::List(fl) = value {
                            let set: BTreeSet<String> = fl
                                .iter()
                                .filter_map(Token::as_text)
                                .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                                .collect();
                            flags = Some(set);
                        }
                    }
                    "INTERNALDATE" => date = value.as_text(),
                    "RFC822.SIZE" => size = value.as_u64(),
                    "BODY[]" => {
                        body = match value {
                            Token::Str(b) => Some(b.clone()),
                            Token::Nil => Some(Vec::new()),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            // Unsolicited FETCH (e.g. a flag update) lacks most items: skip it.
            if let (Some(uid), Some(flags), Some(internal_date), Some(size), Some(body)) =
                (uid, flags, date, size, body)
            {
                messages.push(Message {
                    uid,
                    flags,
                    internal_date,
                    size,
                    body,
                });
            }
        }
        messages.sort_by_key(|m| m.uid);
        messages.dedup_by_key(|m| m.uid);
        messages
    }

    /// APPEND with optional flags/keywords and INTERNALDATE
    /// (`"14-Feb-2019 08:30:00 +0100"` form, without the quotes).
    pub fn append(
        &mut self,
        mailbox: &str,
        flags: &[&str],
        internal_date: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let mut parts = vec![Part::text("APPEND"), Part::mailbox(mailbox)];
        if !flags.is_empty() {
            parts.push(Part::text(&format!("({})", flags.join(" "))));
        }
        if let Some(date) = internal_date {
            parts.push(Part::string(date.as_bytes()));
        }
        parts.push(Part::Literal(body.to_vec()));
        self.command_parts(&parts)
            .map_err(|e| format!("I/O error: {e}"))?
            .ok()
            .map(drop)
    }

    /// `UID STORE <uid> <op> (<flags>)`, op being e.g. `+FLAGS`, `-FLAGS`,
    /// `FLAGS` or a `.SILENT` variant.
    pub fn uid_store(&mut self, uid: u32, op: &str, flags: &[&str]) -> Result<(), String> {
        self.command(&format!("UID STORE {uid} {op} ({})", flags.join(" ")))
            .map_err(|e| format!("I/O error: {e}"))?
            .ok()
            .map(drop)
    }

    /// EXPUNGE in the selected mailbox.
    pub fn expunge(&mut self) -> Result<(), String> {
        self.command("EXPUNGE")
            .map_err(|e| format!("I/O error: {e}"))?
            .ok()
            .map(drop)
    }

    /// LOGOUT (reads the BYE and the tagged OK) and closes the connection.
    pub fn logout(&mut self) -> Result<(), String> {
        let resp = self
            .command("LOGOUT")
            .map_err(|e| format!("I/O error: {e}"))?;
        let _ = self.writer.shutdown(Shutdown::Both);
        resp.ok().map(drop)
    }

    /// Every selectable mailbox (skipping `\Noselect`/`\NonExistent`) with
    /// its UIDVALIDITY, UIDNEXT and messages, plus the sorted LSUB list.
    /// Mailboxes are opened with EXAMINE so the snapshot changes no flags.
    pub fn snapshot(&mut self) -> AccountSnapshot {
        let mut names: Vec<String> = self
            .list()
            .into_iter()
            .filter(ListEntry::selectable)
            .map(|e| e.name)
            .collect();
        names.sort();
        names.dedup();
        let mut mailboxes = Vec::new();
        for name in names {
            let info = self.examine(&name);
            let messages = if info.exists == 0 {
                Vec::new()
            } else {
                self.uid_fetch_all()
            };
            mailboxes.push(MailboxSnapshot {
                name,
                uidvalidity: info.uidvalidity,
                uidnext: info.uidnext,
                messages,
            });
        }
        AccountSnapshot {
            mailboxes,
            subscriptions: self.lsub(),
        }
    }
}

/// What a QRESYNC client learns when it re-opens a mailbox with the
/// UIDVALIDITY and HIGHESTMODSEQ it remembers (RFC 7162 §3.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub exists: u32,
    pub highestmodseq: u64,
    /// `VANISHED (EARLIER)`: messages expunged since the remembered state.
    pub vanished: BTreeSet<u32>,
    /// UID → flags of every message changed since the remembered modseq.
    pub changed: BTreeMap<u32, BTreeSet<String>>,
}

/// `1:3,7` → {1, 2, 3, 7}.
fn uid_set(text: &str) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for range in text.split(',') {
        let (a, b) = range.split_once(':').unwrap_or((range, range));
        let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
        set.extend(a.min(b)..=a.max(b));
    }
    set
}

impl ImapClient {
    /// `ENABLE QRESYNC`; panics when the server does not confirm it.
    pub fn enable_qresync(&mut self) {
        let resp = self.command("ENABLE QRESYNC").unwrap().ok().unwrap();
        assert!(
            resp.untagged_with("ENABLED").next().is_some(),
            "QRESYNC not enabled: {:?}",
            resp.untagged
        );
    }

    /// SELECT with `(CONDSTORE)`, or with `(QRESYNC (uidvalidity modseq))`
    /// when the client remembers a state (after [`Self::enable_qresync`]).
    pub fn select_resync(
        &mut self,
        name: &str,
        remembered: Option<(u32, u64)>,
    ) -> Result<Resync, String> {
        let tail = match remembered {
            None => "(CONDSTORE)".to_string(),
            Some((uv, modseq)) => format!("(QRESYNC ({uv} {modseq}))"),
        };
        let resp = self
            .command_parts(&[Part::text("SELECT"), Part::mailbox(name), Part::text(&tail)])
            .map_err(|e| format!("I/O error: {e}"))?
            .ok()?;
        let mut r = Resync {
            uidvalidity: 0,
            uidnext: 0,
            exists: 0,
            highestmodseq: 0,
            vanished: BTreeSet::new(),
            changed: BTreeMap::new(),
        };
        for line in &resp.untagged {
            let text = String::from_utf8_lossy(line);
            let words: Vec<&str> = text.split_whitespace().collect();
            let number = |w: &str| w.trim_end_matches(']').parse::<u64>().unwrap_or(0);
            match words.as_slice() {
                [n, kw, ..] if kw.eq_ignore_ascii_case("EXISTS") => r.exists = number(n) as u32,
                ["OK", "[UIDVALIDITY", v, ..] => r.uidvalidity = number(v) as u32,
                ["OK", "[UIDNEXT", v, ..] => r.uidnext = number(v) as u32,
                ["OK", "[HIGHESTMODSEQ", v, ..] => r.highestmodseq = number(v),
                ["VANISHED", "(EARLIER)", set] => r.vanished.extend(uid_set(set)),
                [_, kw, ..] if kw.eq_ignore_ascii_case("FETCH") => {
                    let (uid, flags) = fetched_flags(line)?;
                    r.changed.insert(uid, flags);
                }
                _ => {}
            }
        }
        Ok(r)
    }
}

/// The UID and flags of a `* n FETCH (UID u FLAGS (...) MODSEQ (m))`.
fn fetched_flags(line: &[u8]) -> Result<(u32, BTreeSet<String>), String> {
    let tokens = parse_tokens(line)?;
    let Some(Token::List(items)) = tokens.get(2) else {
        return Err(format!(
            "malformed FETCH {:?}",
            String::from_utf8_lossy(line)
        ));
    };
    let (mut uid, mut flags) = (None, BTreeSet::new());
    for pair in items.chunks(2) {
        match (
            pair[0].as_atom().map(str::to_ascii_uppercase).as_deref(),
            pair.get(1),
        ) {
            (Some("UID"), Some(v)) => uid = v.as_u64().map(|u| u as u32),
            (Some("FLAGS"), Some(Token::List(fl))) => {
                flags = fl
                    .iter()
                    .filter_map(Token::as_text)
                    .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                    .collect()
            }
            _ => {}
        }
    }
    let uid =
        uid.ok_or_else(|| format!("FETCH without UID: {:?}", String::from_utf8_lossy(line)))?;
    Ok((uid, flags))
}
