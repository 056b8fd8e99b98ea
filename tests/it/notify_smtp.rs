//! The completion e-mail over a real SMTP dialogue with a loopback sink.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::smtp::{Options, SmtpSink, base64_decode, decode_rfc2047, parse_message, qp_decode};
use maildir_migrate::job::Mode;
use maildir_migrate::notify::{self, Facts, OutcomeStatus, RawSettings, Settings, StartTls};
use maildir_migrate::report::{MailboxReport, MailboxStatus, Report};

const TO: &str = "owner@example.org";
const WAIT: Duration = Duration::from_secs(20);

fn settings(raw: RawSettings) -> Settings {
    Settings::from_raw(raw, &Path::to_path_buf).unwrap()
}

fn raw(smtp: &str) -> RawSettings {
    RawSettings {
        smtp: Some(smtp.into()),
        from: Some("Migrace pošty <mm@example.net>".into()),
        timeout_secs: Some(10),
        retries: Some(0),
        ..RawSettings::default()
    }
}

/// One migrated and one failed mailbox.
fn mixed_report() -> Report {
    let mut jan = MailboxReport::new("jan@example.cz".into());
    jan.status = MailboxStatus::Done;
    jan.messages = 120;
    jan.bytes = 12_900_000;
    jan.folders = 4;
    let eva = MailboxReport::failed(
        "eva@example.cz".into(),
        "cannot read /srv/oldmail/example.cz/eva/cur: Permission denied".into(),
    );
    Report::finish(
        "job-42".into(),
        "example.cz".into(),
        Mode::Move,
        vec![jan, eva],
        "2026-01-01T00:00:00Z".into(),
    )
}

fn facts(report: Option<&Report>, succeeded: bool) -> Facts<'_> {
    Facts {
        job_id: "job-42",
        domain: "example.cz",
        mode: Mode::Move,
        succeeded,
        error: None,
        report,
    }
}

#[test]
fn sends_the_bilingual_mail_over_smtp() {
    let sink = SmtpSink::start();
    let s = settings(raw(&sink.addr()));
    let report = mixed_report();
    // The done template (the caller said so) and the failed one: both carry
    // the same facts, only the wording of the result differs.
    for (i, (succeeded, cs, en)) in [
        (true, "dokončena", "finished"),
        (false, "selhala", "failed"),
    ]
    .into_iter()
    .enumerate()
    {
        let outcome = notify::send(&s, TO, &facts(Some(&report), succeeded));
        assert_eq!(outcome.status, OutcomeStatus::Sent, "{outcome:?}");
        assert_eq!((outcome.attempts, outcome.error.as_deref()), (1, None));
        assert_eq!(outcome.to, TO);

        let got = sink.wait_for(i + 1, WAIT);
        let m = &got[i];
        assert_eq!(m.mail_from, "mm@example.net");
        assert_eq!(m.rcpt_to, [TO]);
        let p = parse_message(&m.data);
        assert_eq!(
            p.subject,
            format!("Migrace pošty example.cz {cs} / Mail migration of example.cz {en}")
        );
        assert_eq!(
            p.header("Content-Type"),
            Some("text/plain; charset=utf-8"),
            "{:?}",
            p.headers
        );
        assert_eq!(p.header("Auto-Submitted"), Some("auto-generated"));
        assert!(p.header("Date").is_some());
        assert!(p.header("Message-ID").unwrap().ends_with("@example.net>"));
        assert_eq!(
            decode_rfc2047(p.header("From").unwrap()),
            "Migrace pošty <mm@example.net>"
        );

        let body = &p.body;
        for needle in [
            "example.cz",
            "Přesunuté schránky:   1",
            "Neúspěšné schránky:   1",
            "Mailboxes migrated:   1",
            "Mailboxes failed:     1",
            "120 (12.3 MiB)",
            "  - eva@example.cz: cannot read /srv/oldmail/example.cz/eva/cur: Permission denied",
            "job-42",
            "přesun",
            "kontakty",
            "Spam",
            "koš",
            "Trash",
            "contacts",
            "černé a bílé listiny",
            "black- and whitelists",
            "automatická odpověď",
            "autoresponder",
            "Outlook",
            "Thunderbird",
            "993",
            "465",
            "587",
        ] {
            assert!(body.contains(needle), "{needle:?} missing from:\n{body}");
        }
        assert!(body.find("Dobrý den").unwrap() < body.find("Hello").unwrap());
    }
}

#[test]
fn unreachable_server_fails_after_the_retries() {
    // A port that was free a moment ago: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = settings(RawSettings {
        retries: Some(1),
        retry_delay_secs: Some(1),
        ..raw(&format!("127.0.0.1:{port}"))
    });
    let started = Instant::now();
    let outcome = notify::send(&s, TO, &facts(None, false));
    let took = started.elapsed();
    assert_eq!(outcome.status, OutcomeStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.attempts, 2);
    let error = outcome.error.unwrap();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(took >= Duration::from_secs(1), "no backoff: {took:?}");
    assert!(took < Duration::from_secs(8), "too slow: {took:?}");
    let v = serde_json::to_value(notify::send(&s, "not an address", &facts(None, false))).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["attempts"].as_u64()),
        (Some("failed"), Some(0))
    );
}

#[test]
fn a_custom_done_template_is_used() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("done.txt"),
        "Subject: Hotovo {domain} ({mode_en})\n\nVlastní šablona {{ok}}: {mailboxes}/{failed_count}, {messages} zpráv, {size}, úloha {job}.\n{failures}\n",
    )
    .unwrap();
    let sink = SmtpSink::start();
    let base = dir.path().to_path_buf();
    let resolve = move |p: &Path| -> PathBuf { base.join(p) };
    let s = Settings::from_raw(
        RawSettings {
            done_template: Some("done.txt".into()),
            ..raw(&sink.addr())
        },
        &resolve,
    )
    .unwrap();
    let report = mixed_report();
    let outcome = notify::send(&s, TO, &facts(Some(&report), true));
    assert_eq!(outcome.status, OutcomeStatus::Sent, "{outcome:?}");
    let p = parse_message(&sink.wait_for(1, WAIT)[0].data);
    assert_eq!(p.subject, "Hotovo example.cz (move)");
    assert_eq!(
        p.body,
        "Vlastní šablona {ok}: 1/1, 120 zpráv, 12.3 MiB, úloha job-42.\n  - eva@example.cz: cannot read /srv/oldmail/example.cz/eva/cur: Permission denied\n"
    );
    // The failed template stays the built-in one.
    notify::send(&s, TO, &facts(Some(&report), false));
    let p = parse_message(&sink.wait_for(2, WAIT)[1].data);
    assert!(p.subject.contains("selhala"), "{}", p.subject);
}

#[test]
fn auth_and_a_temporary_failure_then_success() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("smtp.password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let sink = SmtpSink::start_with(Options {
        auth: Some(("mm".into(), "s3cret".into())),
        temp_fail_sessions: 1,
    });
    let with_password_file = |file: &Path| {
        settings(RawSettings {
            username: Some("mm".into()),
            password_file: Some(file.to_path_buf()),
            retries: Some(2),
            retry_delay_secs: Some(0),
            ..raw(&sink.addr())
        })
    };

    let outcome = notify::send(&with_password_file(&pw), TO, &facts(None, true));
    assert_eq!(outcome.status, OutcomeStatus::Sent, "{outcome:?}");
    assert_eq!(outcome.attempts, 2, "the first session got 451");
    assert_eq!(sink.wait_for(1, WAIT)[0].rcpt_to, [TO]);

    // A wrong password: every attempt is refused, and no secret is shown.
    std::fs::write(&pw, "wrong-pass\n").unwrap();
    let outcome = notify::send(&with_password_file(&pw), TO, &facts(None, true));
    assert_eq!(
        (outcome.status, outcome.attempts),
        (OutcomeStatus::Failed, 3)
    );
    let error = outcome.error.unwrap();
    assert!(error.contains("535"), "{error}");
    assert!(
        !error.contains("wrong-pass") && !error.contains("s3cret"),
        "{error}"
    );

    // An unreadable password file is a failed attempt naming the file.
    let missing = dir.path().join("missing.password");
    let outcome = notify::send(&with_password_file(&missing), TO, &facts(None, true));
    assert_eq!(
        (outcome.status, outcome.attempts),
        (OutcomeStatus::Failed, 3)
    );
    assert!(outcome.error.unwrap().contains("missing.password"));
    assert_eq!(sink.received().len(), 1);
}

#[test]
fn the_test_decoders_decode() {
    assert_eq!(base64_decode(b"cG/FoXR5"), "pošty".as_bytes());
    assert_eq!(base64_decode(b"YQ==\r\n"), b"a");
    assert_eq!(qp_decode(b"p=C5=99e=\r\nsun"), "přesun".as_bytes());
    assert_eq!(
        decode_rfc2047(
            "Migrace =?utf-8?b?cG/FoXR5?= x =?utf-8?b?ZG9rb27EjWVu?=\r\n =?utf-8?b?YQ==?= / ok"
        ),
        "Migrace pošty x dokončena / ok"
    );
    assert_eq!(decode_rfc2047("=?UTF-8?Q?ko=C5=A1_a?= b"), "koš a b");
    // A character split across two encoded words.
    assert_eq!(decode_rfc2047("=?utf-8?b?xQ==?= =?utf-8?b?oQ==?="), "š");
    let p = parse_message(b"Subject: =?utf-8?q?a?=\r\n =?utf-8?q?b?=\r\nX-Folded: one\r\n two\r\nContent-Transfer-Encoding: base64\r\n\r\nxaE=\r\n");
    assert_eq!(p.subject, "ab");
    assert_eq!(p.header("x-folded"), Some("one two"));
    assert_eq!(p.body, "š");
}

/// A private CA made for the test, as a relay's own CA would be.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// The relay's side: a certificate for `name` signed by this CA.
    fn server(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// STARTTLS required, the relay's CA given as `ca_file`.
fn starttls_settings(sink: &SmtpSink, ca: &TestCa, dir: &Path) -> Settings {
    let ca_file = dir.join("relay-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    settings(RawSettings {
        starttls: Some(StartTls::Required),
        ca_file: Some(ca_file),
        ..raw(&sink.addr())
    })
}

#[test]
fn starttls_with_a_private_ca_from_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Relay CA");
    let sink = SmtpSink::start_tls(ca.server("127.0.0.1"));
    let s = starttls_settings(&sink, &ca, dir.path());
    let outcome = notify::send(&s, TO, &facts(None, true));
    assert_eq!(outcome.status, OutcomeStatus::Sent, "{outcome:?}");
    let got = sink.wait_for(1, WAIT);
    assert!(got[0].tls, "the mail came without STARTTLS");
    assert_eq!(got[0].rcpt_to, [TO]);
}

/// `check`'s SMTP line: the relay answers EHLO, STARTTLS when required
/// (with the `ca_file` trusted), and nothing is sent; a relay that offers
/// no STARTTLS fails a `required` probe.
#[test]
fn the_probe_sends_nothing_and_needs_starttls_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Relay CA");
    let sink = SmtpSink::start_tls(ca.server("127.0.0.1"));
    let found = notify::probe(&starttls_settings(&sink, &ca, dir.path())).unwrap();
    assert_eq!(
        found,
        format!("SMTP {} answers EHLO and STARTTLS", sink.addr())
    );
    let plain = SmtpSink::start();
    assert_eq!(
        notify::probe(&settings(raw(&plain.addr()))).unwrap(),
        format!("SMTP {} answers EHLO", plain.addr())
    );
    let e = notify::probe(&starttls_settings(&plain, &ca, dir.path())).unwrap_err();
    assert!(e.to_string().contains(&plain.addr()), "{e}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(sink.received().is_empty() && plain.received().is_empty());
}

#[test]
fn starttls_refuses_a_certificate_it_cannot_trust() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TestCa::new("Relay CA");
    let stranger = TestCa::new("Some other CA");
    for (case, server) in [
        ("another name", trusted.server("relay.example.net")),
        ("another CA", stranger.server("127.0.0.1")),
    ] {
        let sink = SmtpSink::start_tls(server);
        let s = starttls_settings(&sink, &trusted, dir.path());
        let outcome = notify::send(&s, TO, &facts(None, true));
        assert_eq!(
            (outcome.status, outcome.attempts),
            (OutcomeStatus::Failed, 1),
            "{case}: {outcome:?}"
        );
        let error = outcome.error.unwrap();
        assert!(
            error.contains(&sink.addr()) && error.contains("invalid peer certificate"),
            "{case}: {error}"
        );
        assert!(sink.received().is_empty(), "{case}: delivered anyway");
    }
}

/// With `outbox_dir` the same mail is written as `<id>.eml` instead of
/// being sent (hosts without a relay, the demo).
#[test]
fn outbox_dir_writes_the_mail_as_a_file() {
    let t = tempfile::tempdir().unwrap();
    let s = settings(RawSettings {
        from: Some("Migrace pošty <mm@example.net>".into()),
        outbox_dir: Some(t.path().to_path_buf()),
        ..RawSettings::default()
    });
    let report = mixed_report();
    let outcome = notify::send(&s, TO, &facts(Some(&report), true));
    assert_eq!(outcome.status, OutcomeStatus::Sent, "{outcome:?}");
    assert_eq!((outcome.attempts, outcome.error.as_deref()), (1, None));
    let files: Vec<PathBuf> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].extension().is_some_and(|x| x == "eml"),
        "{files:?}"
    );
    let p = parse_message(&std::fs::read(&files[0]).unwrap());
    assert_eq!(
        p.subject,
        "Migrace pošty example.cz dokončena / Mail migration of example.cz finished"
    );
    assert_eq!(p.header("To"), Some(TO));
    for needle in ["Dobrý den", "Hello", "Přesunuté schránky:   1", "job-42"] {
        assert!(
            p.body.contains(needle),
            "{needle:?} missing from:\n{}",
            p.body
        );
    }
}
