//! Man pages: `maildir-migrate(1)` and one page per subcommand from the clap
//! definitions, and `maildir-migrate.toml(5)` from [`SECTIONS`], the
//! configuration reference (tests keep it equal to the parser's keys and
//! to the README's sample).

use std::path::Path;

use roff::{Roff, bold, italic, roman};

/// One key of the configuration file.
struct Key {
    name: &'static str,
    /// What applies when the key is left out.
    default: &'static str,
    /// A TOML value (the tests load every example).
    example: &'static str,
    about: &'static str,
}

/// A `[table]` of the configuration file (`""`: the top level).
struct Section {
    name: &'static str,
    about: &'static str,
    keys: &'static [Key],
}

const fn key(
    name: &'static str,
    default: &'static str,
    example: &'static str,
    about: &'static str,
) -> Key {
    Key {
        name,
        default,
        example,
        about,
    }
}

const REQUIRED: &str = "none (required)";
const UNSET: &str = "unset";

/// `[source.queries]` and `[target.queries]`: a custom SQL schema.
const QUERIES: &[Key] = &[
    key(
        "list_query",
        REQUIRED,
        r#""SELECT username FROM mailbox WHERE domain = %{domain}""#,
        "Lists a domain's accounts.",
    ),
    key(
        "user_query",
        REQUIRED,
        r#""SELECT username, password, maildir, quota FROM mailbox WHERE username = %{username}""#,
        "Reads one account.",
    ),
    key(
        "insert_query",
        REQUIRED,
        r#""INSERT INTO mailbox (username, password, maildir) VALUES (%{username}, %{password}, %{maildir})""#,
        "Creates the new account (target).",
    ),
    key(
        "update_location_query",
        REQUIRED,
        r#""UPDATE mailbox SET maildir = %{maildir} WHERE username = %{username} AND maildir = %{old_maildir}""#,
        "Moves an account in place; keep the guard on the old value.",
    ),
    key(
        "update_password_query",
        REQUIRED,
        r#""UPDATE mailbox SET password = %{password} WHERE username = %{username} AND password = %{old_password}""#,
        "Refuses or restores a login; keep the guard on the old value.",
    ),
];

/// The configuration reference, in the order of the README's sample.
const SECTIONS: &[Section] = &[
    Section {
        name: "",
        about: "Keys before the first table.",
        keys: &[key(
            "spool_dir",
            r#""/var/spool/maildir-migrate""#,
            r#""/var/spool/maildir-migrate""#,
            "The daemon's job queue.",
        )],
    },
    Section {
        name: "source",
        about: "The old server: its user database and Maildirs.",
        keys: &[
            key(
                "userdb",
                REQUIRED,
                r#""/etc/dovecot/users.old""#,
                "A passwd-file or Courier userdb path (may contain %d: one file per domain), or an SQL URL.",
            ),
            key(
                "userdb_format",
                REQUIRED,
                r#""passwd-file""#,
                "passwd-file, courier-userdb or sql.",
            ),
            key(
                "mail_root",
                REQUIRED,
                r#""/srv/oldmail""#,
                "Every source Maildir must resolve inside it, without symlinks.",
            ),
            key(
                "default_scheme",
                r#""CRYPT""#,
                r#""MD5-CRYPT""#,
                "Scheme of bare hashes that are not crypt strings (the passdb's scheme=).",
            ),
            key(
                "makeuserdb",
                UNSET,
                r#""/usr/sbin/makeuserdb""#,
                "courier-userdb only: rebuilds userdb.dat after each edit.",
            ),
            key(
                "layout",
                r#""maildir++""#,
                r#""fs""#,
                "maildir++ or fs (Dovecot LAYOUT=fs).",
            ),
            key(
                "password_file",
                UNSET,
                r#""/etc/maildir-migrate/old-db-password""#,
                "sql only: the database password, first line; mode 0600 or 0400.",
            ),
            key(
                "schema",
                r#""postfixadmin""#,
                r#""custom""#,
                "sql only: postfixadmin, or custom with a [source.queries] table.",
            ),
            key(
                "doveadm",
                UNSET,
                r#""/usr/bin/doveadm""#,
                "The old Dovecot's doveadm (HIGHESTMODSEQ, namespace, freeze); not for Courier.",
            ),
            key(
                "doveadm_config",
                "doveadm's own",
                r#""/etc/dovecot-old/dovecot.conf""#,
                "The old Dovecot's configuration.",
            ),
        ],
    },
    Section {
        name: "source.queries",
        about: "The source's SQL queries for schema = \"custom\"; parameters %{name} are always bound.",
        keys: QUERIES,
    },
    Section {
        name: "target",
        about: "The new server: its user database and Maildirs.",
        keys: &[
            key(
                "userdb",
                REQUIRED,
                r#""/etc/dovecot/users""#,
                "As source.userdb; the same file as source.userdb rewrites entries in place.",
            ),
            key(
                "userdb_format",
                REQUIRED,
                r#""passwd-file""#,
                "passwd-file or sql.",
            ),
            key(
                "mail_root",
                REQUIRED,
                r#""/var/vmail""#,
                "Where the new Maildirs are made.",
            ),
            key(
                "home",
                r#""%d/%n""#,
                r#""v2/%d/%n""#,
                "Relative to mail_root; must use %d and %n, or %u; %% is a %.",
            ),
            key(
                "uid",
                "each source entry's",
                "5000",
                "Owner of the new Maildirs; both uid and gid or neither; required for an SQL side.",
            ),
            key(
                "gid",
                "each source entry's",
                "5000",
                "Group of the new Maildirs.",
            ),
            key(
                "folder_names",
                r#""mutf7""#,
                r#""utf8""#,
                "mutf7, or utf8 for raw UTF-8 folder directories.",
            ),
            key("layout", r#""maildir++""#, r#""fs""#, "maildir++ or fs."),
            key(
                "password_file",
                UNSET,
                r#""/etc/maildir-migrate/new-db-password""#,
                "sql only: the database password, first line.",
            ),
            key(
                "schema",
                r#""postfixadmin""#,
                r#""custom""#,
                "sql only: postfixadmin, or custom with a [target.queries] table.",
            ),
            key(
                "auth_username_format",
                r#""%Lu""#,
                r#""%u""#,
                "The new Dovecot's: %Lu lower-cases logins, %u keeps them.",
            ),
        ],
    },
    Section {
        name: "target.queries",
        about: "The target's SQL queries for schema = \"custom\".",
        keys: QUERIES,
    },
    Section {
        name: "migration",
        about: "How mail is copied.",
        keys: &[
            key(
                "max_message_size",
                "1073741824",
                "536870912",
                "Bytes; a larger message fails its mailbox.",
            ),
            key("threads", "8", "4", "Copy workers."),
            key(
                "fsync",
                "true",
                "false",
                "Every file and directory durable before the switch.",
            ),
            key(
                "sync",
                r#""batch""#,
                r#""per-file""#,
                "batch: one syncfs per batch of files; per-file: fsync each.",
            ),
            key(
                "max_bytes_per_sec",
                UNSET,
                "50000000",
                "Bytes copied per second, all copy workers together (the daemon: all jobs); SIGHUP applies a change from each job's next mailbox.",
            ),
            key(
                "max_files_per_sec",
                UNSET,
                "2000",
                "Message files copied per second, likewise.",
            ),
            key(
                "skip_folders",
                "[]",
                r#"["Archive/Old Spam"]"#,
                "Extra folders to skip, /-separated.",
            ),
            key(
                "keep_folders",
                "[]",
                r#"["Junk"]"#,
                "Folders never skipped, overriding the built-in lists.",
            ),
            key(
                "skipped_folders",
                r#""empty""#,
                r#""absent""#,
                "Skipped folders created empty (old UIDVALIDITY) or left out.",
            ),
        ],
    },
    Section {
        name: "cutover",
        about: "Switching a live mailbox.",
        keys: &[
            key(
                "freeze_command",
                "[]",
                r#"["/usr/bin/doveadm", "kick", "%u"]"#,
                "Run once the old login is refused; argv, no shell; %u %d %n %%.",
            ),
            key(
                "freeze_grace",
                "0",
                "5",
                "Seconds to wait after the freeze for deliveries in flight (at most 600).",
            ),
            key(
                "max_delta_passes",
                "3",
                "5",
                "Live passes after the bulk copy (at most 20) ...",
            ),
            key(
                "delta_threshold",
                "100",
                "50",
                "... until one changes at most this many messages.",
            ),
            key(
                "sweep_delay",
                "600",
                "3600",
                "Seconds after a job until the daemon sweeps late mail (0: never).",
            ),
        ],
    },
    Section {
        name: "verify",
        about: "The new Dovecot, asked before each login goes live and by verify.",
        keys: &[
            key(
                "doveadm",
                UNSET,
                r#""/usr/bin/doveadm""#,
                "The new Dovecot's doveadm; unset: only the files are compared.",
            ),
            key(
                "doveadm_config",
                "doveadm's own",
                r#""/etc/dovecot/dovecot.conf""#,
                "The new Dovecot's configuration.",
            ),
        ],
    },
    Section {
        name: "daemon",
        about: "The queue worker.",
        keys: &[
            key(
                "submit_group",
                UNSET,
                r#""mailadmin""#,
                "Members may queue jobs (incoming/ becomes 2770 with this group).",
            ),
            key(
                "rescan_interval",
                "30",
                "60",
                "Seconds between full spool rescans.",
            ),
            key(
                "max_parallel_jobs",
                "1",
                "2",
                "Jobs at once; never two for one domain.",
            ),
            key("inotify", "true", "false", "false for a spool on NFS."),
            key(
                "metrics_file",
                UNSET,
                r#""/var/lib/prometheus/node-exporter/maildir-migrate.prom""#,
                "Prometheus metrics for node_exporter's textfile collector, rewritten every second.",
            ),
        ],
    },
    Section {
        name: "queue",
        about: "Optional: also take jobs from a PostgreSQL queue shared by a fleet of daemons (see the README, Many hosts).",
        keys: &[
            key(
                "url",
                "required in [queue]",
                r#""postgresql://migrate@db.example/panel""#,
                "The queue's database; PostgreSQL only, TCP, no TLS.",
            ),
            key(
                "password_file",
                UNSET,
                r#""/etc/maildir-migrate/queue-password""#,
                "The password, first line; mode 600 or 400.",
            ),
            key(
                "schema",
                r#""maildir_migrate""#,
                r#""migrations""#,
                "The schema `queue init` creates.",
            ),
            key(
                "host",
                "the host name",
                r#""store-3""#,
                "This daemon's name in the queue (owner of its claims).",
            ),
            key(
                "pools",
                "[]",
                r#"["old-store-1"]"#,
                "Pools this daemon serves; a job without a pool goes to any daemon.",
            ),
            key(
                "lease_secs",
                "30",
                "60",
                "A claim lasts this long unless renewed (every second); a job whose lease cannot be renewed stops after two thirds of it.",
            ),
        ],
    },
    Section {
        name: "notify",
        about: "The completion e-mail.",
        keys: &[
            key(
                "smtp",
                r#""127.0.0.1:25""#,
                r#""[2001:db8::25]:587""#,
                "host:port or [v6]:port.",
            ),
            key(
                "from",
                "postmaster@<hostname>",
                r#""postmaster@hosting.example""#,
                "The sender.",
            ),
            key(
                "starttls",
                r#""off""#,
                r#""required""#,
                "off, opportunistic or required.",
            ),
            key(
                "ca_file",
                UNSET,
                r#""/etc/maildir-migrate/relay-ca.pem""#,
                "PEM file with the CA certificate(s) of a relay with a private CA, trusted besides the bundled Mozilla roots; needs starttls.",
            ),
            key(
                "username",
                UNSET,
                r#""migrate""#,
                "AUTH: both username and password_file, or neither.",
            ),
            key(
                "password_file",
                UNSET,
                r#""/etc/maildir-migrate/smtp-password""#,
                "First line; never logged.",
            ),
            key(
                "timeout_secs",
                "30",
                "10",
                "Connect and every read/write (1 to 600).",
            ),
            key("retries", "3", "5", "Attempts after the first (0 to 10)."),
            key(
                "retry_delay_secs",
                "5",
                "30",
                "Doubles after each retry (0 to 3600).",
            ),
            key(
                "done_template",
                "built in",
                r#""done.txt""#,
                "Template of the message for a finished job.",
            ),
            key(
                "failed_template",
                "built in",
                r#""failed.txt""#,
                "Template of the message for a failed job.",
            ),
            key(
                "outbox_dir",
                UNSET,
                r#""/var/lib/maildir-migrate/outbox""#,
                "Instead of SMTP: each e-mail is written as <id>.eml into this existing, writable directory; excludes smtp, starttls, ca_file, username, password_file and timeout_secs.",
            ),
        ],
    },
];

/// Writes every page into `out` (created if missing).
pub(super) fn write_all(cmd: clap::Command, out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    clap_mangen::generate_to(cmd, out)?;
    std::fs::write(out.join("maildir-migrate.toml.5"), config_page())
}

/// `maildir-migrate.toml(5)`.
fn config_page() -> String {
    let mut page = Roff::new();
    page.control("TH", ["MAILDIR-MIGRATE.TOML", "5"])
        .control("SH", ["NAME"])
        .text([roman(
            "maildir-migrate.toml - configuration of maildir-migrate",
        )])
        .control("SH", ["DESCRIPTION"])
        .text([roman(
            "The file is TOML: --config PATH, else $MAILDIR_MIGRATE_CONFIG, else \
             /etc/maildir-migrate/config.toml. Relative paths are relative to its directory. \
             Unknown keys, a missing required key and out-of-range values are errors that \
             name the key (exit 78).",
        )]);
    for section in SECTIONS {
        let title = match section.name {
            "" => "TOP LEVEL".to_string(),
            name => format!("[{name}]"),
        };
        page.control("SH", [title.as_str()])
            .text([roman(section.about)]);
        for k in section.keys {
            page.control("TP", [])
                .text([bold(k.name)])
                .text([roman(k.about)])
                .control("br", [])
                .text([italic("Default:"), roman(format!(" {}", k.default))])
                .control("br", [])
                .text([
                    italic("Example:"),
                    roman(format!(" {} = {}", k.name, k.example)),
                ]);
        }
    }
    page.control("SH", ["SEE ALSO"]).text([roman(
        "maildir-migrate(1), and the README's Configuration section.",
    )]);
    page.render()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every documented key, dotted as the parser names it.
    fn documented() -> BTreeSet<String> {
        SECTIONS
            .iter()
            .flat_map(|s| s.keys.iter().map(|k| dotted(s.name, k.name)))
            .collect()
    }

    fn dotted(section: &str, key: &str) -> String {
        match section {
            "" => key.to_string(),
            s => format!("{s}.{key}"),
        }
    }

    /// Asserts two key sets equal, naming only the differences.
    fn same(left: &BTreeSet<String>, right: &BTreeSet<String>, what: &str) {
        let only_left: Vec<_> = left.difference(right).collect();
        let only_right: Vec<_> = right.difference(left).collect();
        assert!(
            only_left.is_empty() && only_right.is_empty(),
            "{what}: only in the first {only_left:?}, only in the second {only_right:?}"
        );
    }

    /// A configuration setting every key to its example.
    fn every_example() -> String {
        let mut text = String::new();
        for s in SECTIONS {
            if !s.name.is_empty() {
                text += &format!("[{}]\n", s.name);
            }
            for k in s.keys {
                text += &format!("{} = {}\n", k.name, k.example);
            }
        }
        text
    }

    #[test]
    fn the_reference_documents_exactly_the_keys_the_parser_accepts() {
        // The parser's keys come from serde's derive (each struct names its
        // fields), so a new field without a reference entry fails here;
        // loading the examples proves each documented key (and its example's
        // type) is accepted, unknown keys being errors.
        same(
            &documented(),
            &crate::config::accepted_keys(),
            "reference vs parser",
        );
        crate::config::parse_keys(&every_example()).unwrap();
    }

    /// The keys of the README's Configuration samples: `key =` lines (also
    /// commented out, `# key =`) under `[section]` headers of its toml blocks.
    fn readme_keys() -> BTreeSet<String> {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Configuration section");
        let mut keys = BTreeSet::new();
        for block in section.split("```toml\n").skip(1) {
            let mut table = String::new();
            for line in block.split("\n```").next().unwrap_or("").lines() {
                let line = line.trim_start_matches('#').trim_start();
                if let Some(name) = line.strip_prefix('[').and_then(|l| l.split_once(']')) {
                    table = name.0.to_string();
                } else if let Some((name, _)) = line.split_once('=')
                    && !name.trim().is_empty()
                    && name
                        .trim()
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    keys.insert(dotted(&table, name.trim()));
                }
            }
        }
        keys
    }

    #[test]
    fn the_readme_shows_every_documented_key() {
        same(&readme_keys(), &documented(), "README vs reference");
    }

    #[test]
    fn every_section_has_keys_and_no_key_twice() {
        for s in SECTIONS {
            let names: BTreeSet<_> = s.keys.iter().map(|k| k.name).collect();
            assert!(
                !names.is_empty() && names.len() == s.keys.len(),
                "{}",
                s.name
            );
        }
    }
}
