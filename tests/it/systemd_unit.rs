//! The shipped systemd unit and sample config are checked, not just shipped.

use crate::common;

use std::process::Command;

use common::fixture::BIN;
use common::require::{Need, require};

const UNIT: &str = include_str!("../../systemd/maildir-migrate.service");

/// `systemd-analyze verify` must print nothing at all: it reports bad
/// values as warnings and still exits 0.
#[test]
fn unit_verifies_cleanly() {
    require!(Need::SystemdAnalyze);
    // Verified against the binary just built (verify checks ExecStart).
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("maildir-migrate.service");
    std::fs::write(&unit, UNIT.replace("/usr/bin/maildir-migrate", BIN)).unwrap();
    // --man=no: the man pages in Documentation= exist only once the package
    // is installed (tests/it/package.rs verifies the installed unit with them).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn unit_has_the_promised_settings() {
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/spool/maildir-migrate",
        "PrivateTmp=yes",
        "ProtectHome=read-only",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_SETUID CAP_SETGID CAP_KILL",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "IOWeight=50",
        "CPUWeight=50",
        "Nice=10",
    ] {
        assert!(
            UNIT.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }
    // Every path the sample config writes to is writable under the unit.
    let config = include_str!("../../systemd/config.toml");
    let writable: Vec<&str> = UNIT
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(|l| l.split_whitespace())
        .map(|p| p.trim_start_matches('-'))
        .collect();
    for key in ["spool_dir", "userdb", "mail_root"] {
        for line in config
            .lines()
            .filter(|l| l.starts_with(&format!("{key} =")))
        {
            let path = line.split('"').nth(1).unwrap();
            assert!(
                writable.iter().any(|w| path.starts_with(w)),
                "{path} ({key}) is not under ReadWritePaths {writable:?}"
            );
        }
    }
}

/// The sample config is valid as shipped (`plan` loads it; its paths do
/// not exist here, so it stops at one of them, exit 74/78, not at the
/// config nor at the command line, exit 64).
#[test]
fn sample_config_parses() {
    let out = Command::new(BIN)
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/config.toml"),
        ])
        .args(["plan", "--domain", "example.cz"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("config.toml:"),
        "the sample config does not load: {err}"
    );
    assert_ne!(out.status.code(), Some(0), "no such host here: {err}");
    assert!(
        matches!(out.status.code(), Some(74 | 78)),
        "{:?}: {err}",
        out.status
    );
    assert!(
        ["/etc/mail-old/passwd", "/var/mail-old"]
            .iter()
            .any(|p| err.contains(p)),
        "stopped at one of the sample's paths: {err}"
    );
}
