//! A loopback SMTP server for tests, and decoders for asserting on what it
//! received.
//!
//! [`SmtpSink`] listens on `127.0.0.1:<free port>`, serves each connection
//! on its own thread and records every accepted message as a [`Received`]:
//! greeting 220, EHLO/HELO (8BITMIME advertised), MAIL FROM, RCPT TO, DATA
//! (dot-unstuffed, ends at CRLF.CRLF), RSET, NOOP, QUIT. [`Options`] can add
//! AUTH PLAIN with fixed credentials and make the first sessions fail
//! temporarily, for retry tests. [`SmtpSink::start_tls`] offers STARTTLS
//! with a rustls server configuration (a certificate the test made).
//!
//! [`parse_message`] unfolds headers, decodes an RFC 2047 subject and a
//! quoted-printable / base64 / 7bit / 8bit body as UTF-8. The decoding is
//! done by the `base64` and `quoted_printable` crates, not by the encoder's
//! own (`email-encoding`, through lettre). RFC 2047 words are split here: the
//! crates for them (`rfc2047-decoder`, `mail-parser`) decode each word to
//! text on its own, and a character split across two words must still
//! come out whole.
//!
//! Set `SMTP_DEBUG=1` to get the dialogue on stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A session idle longer than this is dropped (its thread ends).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest command line accepted.
const MAX_LINE: usize = 4096;
/// Largest message accepted.
const MAX_MESSAGE: usize = 10 << 20;

/// One accepted message: the envelope and the raw DATA (CRLF line ends,
/// dot-unstuffed, without the final `.`).
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    /// It came after STARTTLS.
    pub tls: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Advertise AUTH PLAIN and accept mail only after these credentials.
    pub auth: Option<(String, String)>,
    /// Answer MAIL FROM with 451 in this many sessions before accepting.
    pub temp_fail_sessions: u32,
}

struct Shared {
    options: Options,
    /// Offer STARTTLS with this certificate and key.
    tls: Option<Arc<rustls::ServerConfig>>,
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    temp_failed: AtomicU32,
    stop: AtomicBool,
}

pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        SmtpSink::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> SmtpSink {
        SmtpSink::listen(options, None)
    }

    /// STARTTLS offered (and not required) with this server configuration.
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> SmtpSink {
        SmtpSink::listen(Options::default(), Some(config))
    }

    fn listen(options: Options, tls: Option<Arc<rustls::ServerConfig>>) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("SmtpSink: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("SmtpSink: local_addr");
        let shared = Arc::new(Shared {
            options,
            tls,
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            temp_failed: AtomicU32::new(0),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    // A client that goes away mid-dialogue is not our failure.
                    let _ = Session::new(stream, s).run();
                });
            }
        });
        SmtpSink { addr, shared }
    }

    /// `127.0.0.1:port`
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Every message received so far, once there are at least `n`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = self.shared.received.lock().unwrap();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "SmtpSink {}: expected {n} message(s) within {timeout:?}, got {}",
                    self.addr,
                    got.len()
                );
            }
            got = self.shared.arrived.wait_timeout(got, left).unwrap().0;
        }
        got.clone()
    }

    /// Messages received so far, without waiting.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // Wake the accept loop so that it sees the flag and ends.
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// The connection, before and after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

struct Session {
    conn: BufReader<Conn>,
    shared: Arc<Shared>,
    debug: bool,
    authenticated: bool,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Session {
        stream.set_read_timeout(Some(IDLE_TIMEOUT)).ok();
        Session {
            conn: BufReader::new(Conn::Plain(stream)),
            shared,
            debug: std::env::var_os("SMTP_DEBUG").is_some_and(|v| v == "1"),
            authenticated: false,
            mail_from: None,
            rcpt_to: Vec::new(),
        }
    }

    fn reply(&mut self, text: &str) -> std::io::Result<()> {
        if self.debug {
            eprintln!("S: {}", text.trim_end().replace("\r\n", "\nS: "));
        }
        let conn = self.conn.get_mut();
        conn.write_all(text.as_bytes())?;
        conn.flush()
    }

    fn is_tls(&self) -> bool {
        matches!(self.conn.get_ref(), Conn::Tls(_))
    }

    /// One line with its line end, or `None` at EOF.
    fn line(&mut self, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let n = (&mut self.conn)
            .take(limit as u64 + 2)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if !buf.ends_with(b"\n") {
            return Err(std::io::Error::other("line too long or cut off"));
        }
        Ok(Some(buf))
    }

    fn run(mut self) -> std::io::Result<()> {
        self.reply("220 sink.test ESMTP test sink\r\n")?;
        while let Some(raw) = self.line(MAX_LINE)? {
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            if self.debug {
                let shown = if line.to_ascii_uppercase().starts_with("AUTH") {
                    "AUTH ..."
                } else {
                    &line
                };
                eprintln!("C: {shown}");
            }
            let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
            match verb.to_ascii_uppercase().as_str() {
                "EHLO" => {
                    let auth = if self.shared.options.auth.is_some() {
                        "250-AUTH PLAIN\r\n"
                    } else {
                        ""
                    };
                    let starttls = if self.shared.tls.is_some() && !self.is_tls() {
                        "250-STARTTLS\r\n"
                    } else {
                        ""
                    };
                    self.reply(&format!(
                        "250-sink.test greets {arg}\r\n250-8BITMIME\r\n{auth}{starttls}250 SIZE {MAX_MESSAGE}\r\n"
                    ))?;
                }
                "HELO" => self.reply("250 sink.test\r\n")?,
                "STARTTLS" => self.starttls()?,
                "AUTH" => self.auth(arg)?,
                "MAIL" => self.mail(arg)?,
                "RCPT" => self.rcpt(arg)?,
                "DATA" => self.data()?,
                "RSET" => {
                    self.mail_from = None;
                    self.rcpt_to.clear();
                    self.reply("250 2.0.0 OK\r\n")?;
                }
                "NOOP" => self.reply("250 2.0.0 OK\r\n")?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye\r\n")?;
                    return Ok(());
                }
                _ => self.reply("500 5.5.1 Unrecognised command\r\n")?,
            }
        }
        Ok(())
    }

    /// RFC 3207: 220, then the TLS handshake on the same connection (it
    /// happens at the next read), then the client starts over with EHLO.
    fn starttls(&mut self) -> std::io::Result<()> {
        let (Some(config), Conn::Plain(tcp)) = (self.shared.tls.clone(), self.conn.get_ref())
        else {
            return self.reply("454 4.7.0 TLS not available\r\n");
        };
        let tcp = tcp.try_clone()?;
        if !self.conn.buffer().is_empty() {
            return self.reply("501 5.5.4 Nothing may follow STARTTLS\r\n");
        }
        self.reply("220 2.0.0 Ready to start TLS\r\n")?;
        let tls = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        // The plain stream is a clone of the same socket: dropping it with
        // the old reader leaves the connection open.
        self.conn = BufReader::new(Conn::Tls(Box::new(rustls::StreamOwned::new(tls, tcp))));
        self.authenticated = false;
        self.mail_from = None;
        self.rcpt_to.clear();
        if self.debug {
            eprintln!("-- TLS --");
        }
        Ok(())
    }

    fn auth(&mut self, arg: &str) -> std::io::Result<()> {
        let Some((user, pass)) = self.shared.options.auth.clone() else {
            return self.reply("502 5.5.1 AUTH not offered\r\n");
        };
        let (mech, initial) = arg.split_once(' ').unwrap_or((arg, ""));
        if !mech.eq_ignore_ascii_case("PLAIN") {
            return self.reply("504 5.5.4 Only PLAIN\r\n");
        }
        let response = if initial.is_empty() {
            self.reply("334 \r\n")?;
            match self.line(MAX_LINE)? {
                Some(l) => String::from_utf8_lossy(&l).trim_end().to_string(),
                None => return Ok(()),
            }
        } else {
            initial.to_string()
        };
        let decoded = base64_decode(response.as_bytes());
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        if parts.len() == 3 && parts[1] == user.as_bytes() && parts[2] == pass.as_bytes() {
            self.authenticated = true;
            self.reply("235 2.7.0 Authentication successful\r\n")
        } else {
            self.reply("535 5.7.8 Authentication credentials invalid\r\n")
        }
    }

    fn mail(&mut self, arg: &str) -> std::io::Result<()> {
        let Some(path) = path_arg(arg, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
        };
        if self.shared.options.auth.is_some() && !self.authenticated {
            return self.reply("530 5.7.0 Authentication required\r\n");
        }
        let wanted = self.shared.options.temp_fail_sessions;
        let failed =
            self.shared
                .temp_failed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < wanted).then_some(n + 1)
                });
        if failed.is_ok() {
            return self.reply("451 4.3.0 Try again later\r\n");
        }
        self.mail_from = Some(path);
        self.rcpt_to.clear();
        self.reply("250 2.1.0 OK\r\n")
    }

    fn rcpt(&mut self, arg: &str) -> std::io::Result<()> {
        if self.mail_from.is_none() {
            return self.reply("503 5.5.1 MAIL first\r\n");
        }
        let Some(path) = path_arg(arg, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>\r\n");
        };
        self.rcpt_to.push(path);
        self.reply("250 2.1.5 OK\r\n")
    }

    fn data(&mut self) -> std::io::Result<()> {
        if self.rcpt_to.is_empty() {
            return self.reply("503 5.5.1 RCPT first\r\n");
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>\r\n")?;
        let mut data = Vec::new();
        loop {
            let Some(line) = self.line(MAX_MESSAGE)? else {
                return Ok(()); // EOF inside DATA: nothing accepted.
            };
            if line == b".\r\n" {
                break;
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(line);
            if data.len() > MAX_MESSAGE {
                self.reply("552 5.3.4 Message too big\r\n")?;
                return Err(std::io::Error::other("message too big"));
            }
        }
        if self.debug {
            eprintln!("C: <{} bytes of DATA>", data.len());
        }
        let message = Received {
            mail_from: self.mail_from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data,
            tls: self.is_tls(),
        };
        // Reply first: the client counts the message as sent only then.
        self.reply("250 2.0.0 OK queued\r\n")?;
        self.shared.received.lock().unwrap().push(message);
        self.shared.arrived.notify_all();
        Ok(())
    }
}

/// `FROM:<a@b> SIZE=1` → `a@b` (also without the angle brackets).
fn path_arg(arg: &str, keyword: &str) -> Option<String> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let path = rest.split_whitespace().next().unwrap_or("");
    Some(
        path.strip_prefix('<')
            .and_then(|p| p.strip_suffix('>'))
            .unwrap_or(path)
            .to_string(),
    )
}

// ---------------------------------------------------------------------------
// Decoding what was received
// ---------------------------------------------------------------------------

/// A received message, decoded for assertions.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// In order, unfolded; values raw (still RFC 2047 encoded).
    pub headers: Vec<(String, String)>,
    /// The Subject, RFC 2047 decoded.
    pub subject: String,
    /// The body, transfer-decoded, as UTF-8 with `\n` line ends.
    pub body: String,
}

impl Parsed {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse_message(data: &[u8]) -> Parsed {
    let text = data.strip_suffix(b"\r\n").unwrap_or(data);
    let split = find(text, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find(text, b"\n\n").map(|i| (i, i + 2)))
        .unwrap_or((text.len(), text.len()));
    let head = std::str::from_utf8(&text[..split.0]).expect("message headers are not UTF-8");
    let raw_body = &data[split.1.min(data.len())..];

    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.starts_with([' ', '\t']) {
            // Unfolding: the line break goes, the whitespace stays.
            let last = headers.last_mut().expect("continuation before any header");
            last.1.push_str(line);
        } else {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header line without ':': {line:?}"));
            headers.push((name.trim().to_string(), value.trim_start().to_string()));
        }
    }
    let find_header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let subject = decode_rfc2047(&find_header("Subject").unwrap_or_default());
    let cte = find_header("Content-Transfer-Encoding")
        .unwrap_or_else(|| "7bit".into())
        .trim()
        .to_ascii_lowercase();
    let bytes = match cte.as_str() {
        "quoted-printable" => qp_decode(raw_body),
        "base64" => base64_decode(raw_body),
        "7bit" | "8bit" | "binary" => raw_body.to_vec(),
        other => panic!("unknown Content-Transfer-Encoding {other:?}"),
    };
    let body = String::from_utf8(bytes)
        .expect("body is not UTF-8")
        .replace("\r\n", "\n");
    Parsed {
        headers,
        subject,
        body,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// RFC 2047: `=?charset?B|Q?text?=` words; whitespace between two encoded
/// words is dropped, and their bytes are joined before UTF-8 decoding (a
/// character may be split across words).
pub fn decode_rfc2047(value: &str) -> String {
    let mut out = String::new();
    let mut pending_ws = String::new();
    let mut encoded: Vec<u8> = Vec::new();
    let flush = |out: &mut String, encoded: &mut Vec<u8>| {
        if !encoded.is_empty() {
            out.push_str(
                &String::from_utf8(std::mem::take(encoded)).expect("encoded-word is not UTF-8"),
            );
        }
    };
    let mut rest = value;
    while !rest.is_empty() {
        let ws_len = rest.len() - rest.trim_start().len();
        if ws_len > 0 {
            pending_ws.push_str(&rest[..ws_len]);
            rest = &rest[ws_len..];
            continue;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        rest = tail;
        match decode_word(word) {
            Some(bytes) => {
                if encoded.is_empty() {
                    out.push_str(&pending_ws);
                }
                encoded.extend(bytes);
            }
            None => {
                flush(&mut out, &mut encoded);
                out.push_str(&pending_ws);
                out.push_str(word);
            }
        }
        pending_ws.clear();
    }
    flush(&mut out, &mut encoded);
    out.push_str(&pending_ws);
    out
}

fn decode_word(word: &str) -> Option<Vec<u8>> {
    let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut parts = inner.splitn(3, '?');
    let (charset, encoding, text) = (parts.next()?, parts.next()?, parts.next()?);
    let charset = charset.split('*').next().unwrap_or("").to_ascii_lowercase();
    assert!(
        charset == "utf-8" || charset == "us-ascii",
        "encoded-word charset {charset:?} in {word:?}"
    );
    match encoding {
        "B" | "b" => Some(base64_decode(text.as_bytes())),
        "Q" | "q" => Some(qp_decode(text.replace('_', " ").as_bytes())),
        _ => None,
    }
}

/// Quoted-printable (RFC 2045 §6.7): `=XX` escapes, `=` before a line end
/// is a soft break.
pub fn qp_decode(data: &[u8]) -> Vec<u8> {
    quoted_printable::decode(data, quoted_printable::ParseMode::Strict).unwrap_or_else(|e| {
        panic!(
            "bad quoted-printable {:?}: {e}",
            String::from_utf8_lossy(data)
        )
    })
}

/// Standard base64 with padding; whitespace (line breaks) ignored.
pub fn base64_decode(data: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(&text)
        .unwrap_or_else(|e| panic!("bad base64 {:?}: {e}", String::from_utf8_lossy(data)))
}
