//! Configuration: raw TOML → validated [`Config`]. Relative paths are
//! resolved against the configuration file's directory; unknown keys are
//! errors so that a typo never silently falls back to a default.

use std::num::NonZeroU64;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::classify::{Classifier, SkippedFolders};
use crate::copy::SyncMethod;
use crate::db_url::{Driver, SqlUrl};
use crate::dovecot::Doveadm;
use crate::job::{Domain, LocalPart};
use crate::maildir::Layout;
use crate::maildir::names::NameEncoding;
use crate::queue::{DEFAULT_SCHEMA, HostName, QueueSettings, SchemaName};
use crate::safe_fs::Owner;
use crate::throttle::Limits;
use crate::userdb::scheme::is_scheme_name;
use crate::userdb::sql::{CustomQueries, SqlSchema, SqlSettings};

pub const DEFAULT_PATH: &str = "/etc/maildir-migrate/config.toml";
pub const ENV_VAR: &str = "MAILDIR_MIGRATE_CONFIG";
/// Late mail is swept within a year of its job or not at all (and the
/// schedule's arithmetic stays far from overflowing).
const MAX_SWEEP_DELAY: u64 = 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {key}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// A bad value before the file's name is added: (config key, problem).
pub type Invalid = (&'static str, String);

/// Tags a problem with its key, for `map_err`.
fn invalid(key: &'static str) -> impl Fn(String) -> Invalid {
    move |problem| (key, problem)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserdbFormat {
    PasswdFile,
    /// Courier authlib's userdb text (a file or a directory); source only.
    CourierUserdb,
    /// PostgreSQL or MySQL/MariaDB (`userdb` is a URL).
    Sql,
}

/// The `[source.queries]` / `[target.queries]` of a custom SQL schema.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueries {
    list_query: String,
    user_query: String,
    insert_query: String,
    update_location_query: String,
    update_password_query: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    spool_dir: Option<PathBuf>,
    source: RawSource,
    target: RawTarget,
    #[serde(default)]
    migration: RawMigration,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    notify: crate::notify::RawSettings,
    #[serde(default)]
    cutover: RawCutover,
    #[serde(default)]
    verify: RawVerify,
    queue: Option<RawQueue>,
}

/// Every key the parser accepts, dotted (`spool_dir`, `source.queries.list_query`):
/// what the configuration reference must document.
#[cfg(test)]
pub(crate) fn accepted_keys() -> std::collections::BTreeSet<String> {
    crate::serde_keys::keys::<RawConfig>()
}

/// Parses `text` as far as keys and value types go (unknown keys are
/// errors), before any value is validated.
#[cfg(test)]
pub(crate) fn parse_keys(text: &str) -> Result<(), String> {
    toml::from_str::<RawConfig>(text)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    doveadm: Option<PathBuf>,
    doveadm_config: Option<PathBuf>,
}

/// The new Dovecot, when it can be asked (`[verify] doveadm`): `verify`
/// and the switch check through it what it serves, the switch raises
/// HIGHESTMODSEQ through it, and every job compares its namespace with
/// what the old server's clients saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySettings {
    /// `None`: only the files are compared.
    pub doveadm: Option<Doveadm>,
}

impl VerifySettings {
    fn parse(
        raw: RawVerify,
        resolve: &impl Fn(&Path) -> PathBuf,
    ) -> Result<VerifySettings, Invalid> {
        Ok(VerifySettings {
            doveadm: doveadm(
                raw.doveadm.as_deref(),
                raw.doveadm_config.as_deref(),
                resolve,
            )
            .map_err(invalid("verify.doveadm"))?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCutover {
    freeze_command: Option<Vec<String>>,
    freeze_grace: Option<u64>,
    max_delta_passes: Option<u32>,
    delta_threshold: Option<u64>,
    sweep_delay: Option<u64>,
}

/// How a mailbox is switched over while it is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutover {
    /// Run right after the old login is refused (e.g. `doveadm kick %u`),
    /// as an argument vector with `%u`, `%d`, `%n`, `%%` expanded; no shell.
    pub freeze_command: Vec<String>,
    /// Wait after the freeze for deliveries already in flight.
    pub freeze_grace: Duration,
    /// Passes after the bulk copy while the mailbox is live, until one
    /// changes at most `delta_threshold` messages.
    pub max_delta_passes: u32,
    pub delta_threshold: u64,
    /// The daemon sweeps a domain this long after its job (`None`: never).
    pub sweep_delay: Option<Duration>,
}

impl Cutover {
    fn parse(raw: RawCutover) -> Result<Cutover, Invalid> {
        let freeze_command = raw.freeze_command.unwrap_or_default();
        if let Some(first) = freeze_command.first()
            && !first.starts_with('/')
        {
            return Err(invalid("cutover.freeze_command")(format!(
                "{first:?}: the program must be an absolute path (no shell, no PATH search)"
            )));
        }
        let probe = (
            LocalPart::parse("n").expect("valid"),
            Domain::parse("d.example").expect("valid"),
        );
        for a in &freeze_command {
            crate::vars::expand_user(a, &probe.0, &probe.1)
                .map_err(invalid("cutover.freeze_command"))?;
        }
        let max_delta_passes = raw.max_delta_passes.unwrap_or(3);
        if max_delta_passes > 20 {
            return Err(invalid("cutover.max_delta_passes")(format!(
                "{max_delta_passes} is more than 20"
            )));
        }
        let freeze_grace = raw.freeze_grace.unwrap_or(0);
        if freeze_grace > 600 {
            return Err(invalid("cutover.freeze_grace")(format!(
                "{freeze_grace} s is more than 600"
            )));
        }
        Ok(Cutover {
            freeze_command,
            freeze_grace: Duration::from_secs(freeze_grace),
            max_delta_passes,
            delta_threshold: raw.delta_threshold.unwrap_or(100),
            sweep_delay: match raw.sweep_delay.unwrap_or(600) {
                0 => None,
                s if s > MAX_SWEEP_DELAY => {
                    return Err(invalid("cutover.sweep_delay")(format!(
                        "{s} s is more than {MAX_SWEEP_DELAY} s (a year)"
                    )));
                }
                s => Some(Duration::from_secs(s)),
            },
        })
    }

    /// The freeze command for one user, `None` when none is configured.
    pub fn command_for(&self, local: &LocalPart, domain: &Domain) -> Option<Vec<String>> {
        if self.freeze_command.is_empty() {
            return None;
        }
        Some(
            self.freeze_command
                .iter()
                .map(|a| crate::vars::expand_user(a, local, domain).expect("validated"))
                .collect(),
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    submit_group: Option<String>,
    rescan_interval: Option<u64>,
    max_parallel_jobs: Option<usize>,
    inotify: Option<bool>,
    metrics_file: Option<PathBuf>,
}

/// `[queue]`: the PostgreSQL job queue shared by a fleet of daemons.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    url: String,
    password_file: Option<PathBuf>,
    schema: Option<String>,
    host: Option<String>,
    pools: Option<Vec<String>>,
    lease_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    userdb: String,
    userdb_format: UserdbFormat,
    mail_root: PathBuf,
    default_scheme: Option<String>,
    makeuserdb: Option<PathBuf>,
    layout: Option<String>,
    password_file: Option<PathBuf>,
    schema: Option<String>,
    queries: Option<RawQueries>,
    doveadm: Option<PathBuf>,
    doveadm_config: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    userdb: String,
    userdb_format: UserdbFormat,
    mail_root: PathBuf,
    home: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    folder_names: Option<String>,
    layout: Option<String>,
    password_file: Option<PathBuf>,
    schema: Option<String>,
    queries: Option<RawQueries>,
    auth_username_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    skipped_folders: Option<String>,
    max_message_size: Option<u64>,
    threads: Option<usize>,
    fsync: Option<bool>,
    sync: Option<String>,
    max_bytes_per_sec: Option<u64>,
    max_files_per_sec: Option<u64>,
    #[serde(default)]
    skip_folders: Vec<String>,
    #[serde(default)]
    keep_folders: Vec<String>,
}

/// A userdb path, possibly with `%d` (one file per domain, keyed by the
/// local part, as Dovecot does when the path names the domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserdbPath {
    template: String,
}

impl UserdbPath {
    fn parse(s: &str) -> Result<UserdbPath, String> {
        let mut it = s.chars();
        while let Some(c) = it.next() {
            if c == '%' && it.next() != Some('d') {
                return Err("only %d may be used in a userdb path".into());
            }
        }
        if !s.starts_with('/') {
            return Err("must be an absolute path".into());
        }
        Ok(UserdbPath {
            template: s.to_string(),
        })
    }

    pub fn per_domain(&self) -> bool {
        self.template.contains("%d")
    }

    pub fn for_domain(&self, domain: &Domain) -> PathBuf {
        PathBuf::from(self.template.replace("%d", domain.as_str()))
    }

    /// The user field of a domain's mailbox in this file.
    pub fn key(&self, local: &LocalPart, domain: &Domain) -> String {
        if self.per_domain() {
            local.to_string()
        } else {
            format!("{local}@{domain}")
        }
    }
}

/// Where a side's accounts live: a file (template) or an SQL database.
#[derive(Debug, Clone)]
pub enum Userdb {
    File(UserdbPath),
    Sql(Box<SqlSettings>),
}

impl Userdb {
    /// The user field of a domain's mailbox (SQL: the full address).
    pub fn key(&self, local: &LocalPart, domain: &Domain) -> String {
        match self {
            Userdb::File(p) => p.key(local, domain),
            Userdb::Sql(_) => format!("{local}@{domain}"),
        }
    }

    pub fn per_domain(&self) -> bool {
        matches!(self, Userdb::File(p) if p.per_domain())
    }

    /// The file of `domain`, or the database URL (without password).
    #[cfg(test)]
    pub fn describe(&self, domain: &Domain) -> String {
        match self {
            Userdb::File(p) => p.for_domain(domain).display().to_string(),
            Userdb::Sql(s) => s.url.to_string(),
        }
    }

    fn parse(
        side: &'static str,
        raw: RawUserdb<'_>,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Userdb, (&'static str, String)> {
        let key = |k: &'static str| -> &'static str {
            match (side, k) {
                ("source", "userdb") => "source.userdb",
                ("source", "password_file") => "source.password_file",
                ("source", "schema") => "source.schema",
                ("target", "userdb") => "target.userdb",
                ("target", "password_file") => "target.password_file",
                _ => "target.schema",
            }
        };
        let bad = |k: &'static str| move |problem: String| (k, problem);
        if raw.format != UserdbFormat::Sql {
            if raw.password_file.is_some() || raw.schema.is_some() || raw.queries.is_some() {
                return Err(bad(key("schema"))(
                    "password_file, schema and queries are for userdb_format = \"sql\"".into(),
                ));
            }
            let path = resolve(Path::new(raw.userdb))
                .to_string_lossy()
                .into_owned();
            return Ok(Userdb::File(
                UserdbPath::parse(&path).map_err(bad(key("userdb")))?,
            ));
        }
        let schema = match (raw.schema.unwrap_or("postfixadmin"), raw.queries) {
            ("postfixadmin", None) => SqlSchema::PostfixAdmin,
            ("custom", Some(q)) => SqlSchema::Custom(CustomQueries {
                list_query: q.list_query.clone(),
                user_query: q.user_query.clone(),
                insert_query: q.insert_query.clone(),
                update_location_query: q.update_location_query.clone(),
                update_password_query: q.update_password_query.clone(),
            }),
            ("postfixadmin", Some(_)) => {
                return Err(bad(key("schema"))(
                    "queries are only read with schema = \"custom\"".into(),
                ));
            }
            ("custom", None) => {
                return Err(bad(key("schema"))(format!(
                    "schema = \"custom\" needs a [{side}.queries] table"
                )));
            }
            (other, _) => {
                return Err(bad(key("schema"))(format!(
                    "{other:?} is neither \"postfixadmin\" nor \"custom\""
                )));
            }
        };
        let password_file = raw.password_file.map(&resolve);
        SqlSettings::parse(raw.userdb, password_file.as_deref(), schema)
            .map(|s| Userdb::Sql(Box::new(s)))
            .map_err(|e| (key("userdb"), e.to_string()))
    }
}

/// The userdb keys of one side, borrowed from the raw config.
struct RawUserdb<'a> {
    userdb: &'a str,
    format: UserdbFormat,
    password_file: Option<&'a Path>,
    schema: Option<&'a str>,
    queries: Option<&'a RawQueries>,
}

/// `home` relative to the target mail root, with `%d`, `%n`, `%u`, `%%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeTemplate(String);

impl HomeTemplate {
    fn parse(s: &str) -> Result<HomeTemplate, String> {
        let vars = crate::vars::user_variables(s)?;
        // Homes of two mailboxes (of any two domains) must never coincide.
        let names_both = vars.contains(&'u') || vars.contains(&'d') && vars.contains(&'n');
        if !names_both {
            return Err(
                "must contain %d and %n (or %u), or mailboxes of different domains would share a home"
                    .into(),
            );
        }
        let t = HomeTemplate(s.to_string());
        let probe = t.expand(
            &LocalPart::parse("n").expect("valid"),
            &Domain::parse("d.example").expect("valid"),
        )?;
        if probe.is_absolute() {
            return Err("must be relative to target.mail_root".into());
        }
        if probe
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
            || probe.as_os_str().is_empty()
        {
            return Err("must be a plain relative path without '.' or '..'".into());
        }
        Ok(t)
    }

    pub fn expand(&self, local: &LocalPart, domain: &Domain) -> Result<PathBuf, String> {
        crate::vars::expand_user(&self.0, local, domain).map(PathBuf::from)
    }
}

#[derive(Debug, Clone)]
pub struct Source {
    pub userdb: Userdb,
    pub userdb_format: UserdbFormat,
    pub mail_root: PathBuf,
    /// Scheme of bare hashes that are not crypt strings (`scheme=` of the
    /// source passdb; Dovecot's passwd-file default is CRYPT).
    pub default_scheme: String,
    /// Courier: rebuilds `userdb.dat` after each edit (authlib reads that).
    pub makeuserdb: Option<PathBuf>,
    pub layout: Layout,
    /// The old Dovecot, when it can be asked (`[source] doveadm`): each
    /// folder's HIGHESTMODSEQ before the switch, the namespace its clients
    /// see.
    pub doveadm: Option<Doveadm>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub userdb: Userdb,
    pub mail_root: PathBuf,
    pub home: HomeTemplate,
    pub owner: Option<Owner>,
    /// How folder directory names are stored: modified UTF-7 (Dovecot's
    /// default) or raw UTF-8 (`mail_location` with `:UTF-8`).
    pub folder_names: NameEncoding,
    pub layout: Layout,
    /// Whether the new Dovecot lower-cases logins before its lookup
    /// (`auth_username_format = %Lu`, its default) or keeps them (`%u`).
    pub lowercase_logins: bool,
}

impl Source {
    /// The inbox namespace the old server's clients saw: Courier's is
    /// fixed, an old Dovecot's is read through `[source] doveadm`; `None`
    /// where it cannot be known.
    pub fn clients_namespace(&self) -> Option<Result<crate::dovecot::Namespace, String>> {
        match (self.userdb_format, &self.doveadm) {
            (UserdbFormat::CourierUserdb, _) => Some(Ok(crate::dovecot::Namespace::courier())),
            (_, Some(d)) => Some(d.namespace(self.layout)),
            (_, None) => None,
        }
    }

    fn parse(raw: RawSource, resolve: &impl Fn(&Path) -> PathBuf) -> Result<Source, Invalid> {
        let default_scheme = raw.default_scheme.unwrap_or_else(|| "CRYPT".into());
        if !is_scheme_name(&default_scheme) {
            return Err(invalid("source.default_scheme")(format!(
                "{default_scheme:?} is not a password scheme name"
            )));
        }
        match (&raw.makeuserdb, raw.userdb_format) {
            (Some(_), UserdbFormat::PasswdFile | UserdbFormat::Sql) => {
                return Err(invalid("source.makeuserdb")(
                    "only for userdb_format = \"courier-userdb\"".into(),
                ));
            }
            (Some(p), _) if !p.is_absolute() => {
                return Err(invalid("source.makeuserdb")(
                    "must be an absolute path".into(),
                ));
            }
            _ => {}
        }
        let userdb = Userdb::parse(
            "source",
            RawUserdb {
                userdb: &raw.userdb,
                format: raw.userdb_format,
                password_file: raw.password_file.as_deref(),
                schema: raw.schema.as_deref(),
                queries: raw.queries.as_ref(),
            },
            resolve,
        )?;
        let doveadm = match raw.userdb_format {
            // Courier has no doveadm; its clients' view is known.
            UserdbFormat::CourierUserdb if raw.doveadm.is_some() => {
                return Err(invalid("source.doveadm")(
                    "a Courier source has no doveadm".into(),
                ));
            }
            _ => doveadm(
                raw.doveadm.as_deref(),
                raw.doveadm_config.as_deref(),
                resolve,
            )
            .map_err(invalid("source.doveadm"))?,
        };
        Ok(Source {
            userdb,
            userdb_format: raw.userdb_format,
            mail_root: resolve(&raw.mail_root),
            default_scheme,
            makeuserdb: raw.makeuserdb,
            layout: layout(raw.layout.as_deref()).map_err(invalid("source.layout"))?,
            doveadm,
        })
    }
}

impl Target {
    fn parse(raw: RawTarget, resolve: &impl Fn(&Path) -> PathBuf) -> Result<Target, Invalid> {
        let owner = match (raw.uid, raw.gid) {
            (None, None) => None,
            (Some(0), _) | (_, Some(0)) => {
                return Err(invalid("target.uid")(
                    "uid/gid 0 is refused by Dovecot's passwd-file; use the mail user's ids".into(),
                ));
            }
            (Some(uid), Some(gid)) => Some(Owner { uid, gid }),
            _ => {
                return Err(invalid("target.uid")(
                    "set both uid and gid, or neither".into(),
                ));
            }
        };
        if raw.userdb_format == UserdbFormat::CourierUserdb {
            return Err(invalid("target.userdb_format")(
                "the new Dovecot's userdb must be \"passwd-file\" or \"sql\"".into(),
            ));
        }
        let folder_names = match raw.folder_names.as_deref() {
            None | Some("mutf7") => NameEncoding::Mutf7,
            Some("utf8") => NameEncoding::Utf8,
            Some(other) => {
                return Err(invalid("target.folder_names")(format!(
                    "{other:?} is neither \"mutf7\" nor \"utf8\""
                )));
            }
        };
        let userdb = Userdb::parse(
            "target",
            RawUserdb {
                userdb: &raw.userdb,
                format: raw.userdb_format,
                password_file: raw.password_file.as_deref(),
                schema: raw.schema.as_deref(),
                queries: raw.queries.as_ref(),
            },
            resolve,
        )?;
        Ok(Target {
            userdb,
            mail_root: resolve(&raw.mail_root),
            home: HomeTemplate::parse(raw.home.as_deref().unwrap_or("%d/%n"))
                .map_err(invalid("target.home"))?,
            owner,
            folder_names,
            layout: layout(raw.layout.as_deref()).map_err(invalid("target.layout"))?,
            lowercase_logins: match raw.auth_username_format.as_deref() {
                None | Some("%Lu") => true,
                Some("%u") => false,
                Some(other) => {
                    return Err(invalid("target.auth_username_format")(format!(
                        "{other:?} is neither \"%Lu\" (Dovecot's default) nor \"%u\""
                    )));
                }
            },
        })
    }
}

/// What one side cannot check alone: a Courier userdb is never the
/// target, two sides in one database share a mail root, the new tree has
/// an owner to give, and the two stores stay apart.
fn check_sides(source: &Source, target: &Target) -> Result<(), Invalid> {
    if source.userdb_format == UserdbFormat::CourierUserdb
        && matches!((&source.userdb, &target.userdb), (Userdb::File(s), Userdb::File(t)) if s == t)
    {
        return Err(invalid("target.userdb")(
            "a Courier userdb cannot be rewritten in place; the target must be a passwd-file of its own".into(),
        ));
    }
    if let (Userdb::Sql(s), Userdb::Sql(t)) = (&source.userdb, &target.userdb)
        && same_database(s, t)
        && source.mail_root != target.mail_root
    {
        // The services read `maildir` relative to one base: rows
        // already switched and rows not yet switched must share it.
        return Err(invalid("target.mail_root")(
            "one SQL database for source and target (in place) needs one mail_root for both; give the new Maildirs their own home (e.g. home = \"v2/%d/%n\")".into(),
        ));
    }
    if matches!(source.userdb, Userdb::Sql(_))
        && matches!(target.userdb, Userdb::File(_))
        && target.owner.is_none()
    {
        return Err(invalid("target.uid")(
            "an SQL source has no uid/gid to carry; set target.uid and target.gid".into(),
        ));
    }
    if matches!(target.userdb, Userdb::Sql(_)) && target.owner.is_none() {
        // The new Dovecot's user_query names the owner, not the row:
        // the tree must be given exactly that uid/gid.
        return Err(invalid("target.uid")(
            "an SQL target's rows carry no uid/gid; set target.uid and target.gid to what the new Dovecot's user_query returns".into(),
        ));
    }
    check_roots(&source.mail_root, &target.mail_root)
}

#[derive(Debug, Clone)]
pub struct Migration {
    pub skipped_folders: SkippedFolders,
    /// A larger message fails its mailbox (a sparse or runaway file would
    /// otherwise become that many real blocks in the target).
    pub max_message_size: u64,
    pub threads: usize,
    pub fsync: bool,
    pub sync: SyncMethod,
    pub classifier: Classifier,
    /// The copy's I/O limits (a reload applies them from the next mailbox).
    pub limits: Limits,
}

impl Migration {
    fn parse(raw: RawMigration) -> Result<Migration, Invalid> {
        let threads = raw.threads.unwrap_or(8);
        if !(1..=256).contains(&threads) {
            return Err(invalid("migration.threads")(format!(
                "{threads} is not between 1 and 256"
            )));
        }
        for (key, list) in [
            ("migration.skip_folders", &raw.skip_folders),
            ("migration.keep_folders", &raw.keep_folders),
        ] {
            if let Some(bad) = list
                .iter()
                .find(|n| n.split('/').any(|l| l.trim().is_empty()))
            {
                return Err(invalid(key)(format!(
                    "{bad:?} is not a folder name (use / between levels)"
                )));
            }
        }
        Ok(Migration {
            skipped_folders: match raw.skipped_folders.as_deref() {
                None | Some("empty") => SkippedFolders::Empty,
                Some("absent") => SkippedFolders::Absent,
                Some(other) => {
                    return Err(invalid("migration.skipped_folders")(format!(
                        "{other:?} is neither \"empty\" nor \"absent\""
                    )));
                }
            },
            max_message_size: match raw.max_message_size.unwrap_or(1 << 30) {
                n if n < 1024 => {
                    return Err(invalid("migration.max_message_size")(format!(
                        "{n} bytes is less than 1024"
                    )));
                }
                n => n,
            },
            threads,
            fsync: raw.fsync.unwrap_or(true),
            sync: match raw.sync.as_deref() {
                None | Some("batch") => SyncMethod::Batch,
                Some("per-file") => SyncMethod::PerFile,
                Some(other) => {
                    return Err(invalid("migration.sync")(format!(
                        "{other:?} is neither \"batch\" nor \"per-file\""
                    )));
                }
            },
            classifier: Classifier::new(&raw.skip_folders, &raw.keep_folders),
            limits: Limits {
                bytes_per_sec: rate("migration.max_bytes_per_sec", raw.max_bytes_per_sec)?,
                files_per_sec: rate("migration.max_files_per_sec", raw.max_files_per_sec)?,
            },
        })
    }
}

/// A limit: left out is none, 0 is a mistake (it would never copy).
fn rate(key: &'static str, value: Option<u64>) -> Result<Option<NonZeroU64>, Invalid> {
    match value {
        None => Ok(None),
        Some(v) => NonZeroU64::new(v).map(Some).ok_or_else(|| {
            invalid(key)("0 would copy nothing; leave the key out for no limit".into())
        }),
    }
}

/// A group whose members may submit jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitGroup {
    pub name: String,
    pub gid: u32,
}

impl SubmitGroup {
    /// The host's group of that name.
    fn named(name: String) -> Result<SubmitGroup, String> {
        match nix::unistd::Group::from_name(&name) {
            Ok(Some(g)) => Ok(SubmitGroup {
                name,
                gid: g.gid.as_raw(),
            }),
            Ok(None) => Err(format!("no group named {name:?} on this host")),
            Err(e) => Err(format!("{name:?}: {e}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub submit_group: Option<SubmitGroup>,
    /// Full spool rescans happen at least this often (inotify is a hint).
    pub rescan_interval: Duration,
    pub max_parallel_jobs: usize,
    /// Watch `incoming/` with inotify (off for NFS, which sends no events).
    pub inotify: bool,
    /// Where the metrics for node_exporter's textfile collector go.
    pub metrics_file: Option<PathBuf>,
}

impl Daemon {
    fn parse(raw: RawDaemon, resolve: &impl Fn(&Path) -> PathBuf) -> Result<Daemon, Invalid> {
        let rescan = raw.rescan_interval.unwrap_or(30);
        if !(1..=3600).contains(&rescan) {
            return Err(invalid("daemon.rescan_interval")(format!(
                "{rescan} is not between 1 and 3600 seconds"
            )));
        }
        let max_parallel_jobs = raw.max_parallel_jobs.unwrap_or(1);
        if !(1..=64).contains(&max_parallel_jobs) {
            return Err(invalid("daemon.max_parallel_jobs")(format!(
                "{max_parallel_jobs} is not between 1 and 64"
            )));
        }
        let submit_group = match raw.submit_group {
            None => None,
            Some(name) => Some(SubmitGroup::named(name).map_err(invalid("daemon.submit_group"))?),
        };
        Ok(Daemon {
            submit_group,
            rescan_interval: Duration::from_secs(rescan),
            max_parallel_jobs,
            inotify: raw.inotify.unwrap_or(true),
            metrics_file: raw
                .metrics_file
                .map(|p| metrics_file(&resolve(&p)))
                .transpose()
                .map_err(invalid("daemon.metrics_file"))?,
        })
    }
}

/// `[queue]` checked: a PostgreSQL URL, names the SQL text may hold, a
/// lease long enough to renew several times.
fn queue_settings(
    raw: RawQueue,
    resolve: &impl Fn(&Path) -> PathBuf,
) -> Result<QueueSettings, Invalid> {
    let password_file = raw.password_file.map(|p| resolve(&p));
    let url = SqlUrl::parse(&raw.url, password_file.as_deref())
        .map_err(|e| invalid("queue.url")(e.to_string()))?;
    if url.driver != Driver::Postgres {
        return Err(invalid("queue.url")(
            "the job queue needs PostgreSQL (postgresql://…)".into(),
        ));
    }
    let schema = SchemaName::parse(raw.schema.as_deref().unwrap_or(DEFAULT_SCHEMA))
        .map_err(invalid("queue.schema"))?;
    let host = match raw.host {
        Some(h) => h,
        None => nix::unistd::gethostname()
            .map_err(|e| invalid("queue.host")(format!("no host name ({e}); set it")))?
            .to_string_lossy()
            .into_owned(),
    };
    let host = HostName::parse(&host).map_err(invalid("queue.host"))?;
    let pools = raw
        .pools
        .unwrap_or_default()
        .iter()
        .map(|p| HostName::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid("queue.pools"))?;
    let lease = raw.lease_secs.unwrap_or(30);
    if !(3..=3600).contains(&lease) {
        return Err(invalid("queue.lease_secs")(format!(
            "{lease} is not between 3 and 3600 seconds"
        )));
    }
    Ok(QueueSettings {
        url,
        schema,
        host,
        pools,
        lease: Duration::from_secs(lease),
    })
}

/// A file name in a directory that exists (the daemon writes it there
/// under a temporary name first).
fn metrics_file(path: &Path) -> Result<PathBuf, String> {
    let dir = path.parent().filter(|_| path.file_name().is_some());
    match dir {
        None => Err(format!("{} is not a file path", path.display())),
        Some(d) if !d.is_dir() => Err(format!("no directory {}", d.display())),
        Some(_) => Ok(path.to_path_buf()),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the daemon keeps its queue.
    pub spool_dir: PathBuf,
    pub source: Source,
    pub target: Target,
    pub migration: Migration,
    pub daemon: Daemon,
    /// The completion e-mail.
    pub notify: crate::notify::Settings,
    pub cutover: Cutover,
    pub verify: VerifySettings,
    /// Jobs also come from this PostgreSQL queue.
    pub queue: Option<QueueSettings>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |(key, problem): Invalid| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        let base = config_dir(path).map_err(|e| invalid(("path", e.to_string())))?;
        let resolve = |p: &Path| lexical_normalize(&base.join(p));
        Config::from_raw(raw, &resolve).map_err(invalid)
    }

    /// The sections one by one, then what ties the two sides together.
    fn from_raw(raw: RawConfig, resolve: &impl Fn(&Path) -> PathBuf) -> Result<Config, Invalid> {
        let source = Source::parse(raw.source, resolve)?;
        let target = Target::parse(raw.target, resolve)?;
        check_sides(&source, &target)?;
        Ok(Config {
            spool_dir: resolve(
                raw.spool_dir
                    .as_deref()
                    .unwrap_or(Path::new("/var/spool/maildir-migrate")),
            ),
            source,
            target,
            migration: Migration::parse(raw.migration)?,
            cutover: Cutover::parse(raw.cutover)?,
            daemon: Daemon::parse(raw.daemon, resolve)?,
            notify: crate::notify::Settings::from_raw(raw.notify, resolve)?,
            verify: VerifySettings::parse(raw.verify, resolve)?,
            queue: raw.queue.map(|q| queue_settings(q, resolve)).transpose()?,
        })
    }

    /// How message files are written (each mailbox then gets its owner).
    pub fn copy_options(&self) -> crate::copy::CopyOptions {
        crate::copy::CopyOptions {
            owner: self.target.owner,
            fsync: self.migration.fsync,
            sync: self.migration.sync,
            max_message_size: self.migration.max_message_size,
        }
    }

    /// True when source and target share one userdb file for `domain`, or
    /// one SQL database (the entry is rewritten in place).
    pub fn in_place(&self, domain: &Domain) -> bool {
        match (&self.source.userdb, &self.target.userdb) {
            (Userdb::File(s), Userdb::File(t)) => s.for_domain(domain) == t.for_domain(domain),
            (Userdb::Sql(s), Userdb::Sql(t)) => same_database(s, t),
            _ => false,
        }
    }

    /// The source userdb of `domain`.
    pub fn source_db(&self, domain: &Domain) -> crate::userdb::Source {
        let path = match &self.source.userdb {
            Userdb::Sql(settings) => {
                return crate::userdb::Source::Sql {
                    settings: settings.clone(),
                    default_scheme: self.source.default_scheme.clone(),
                    mail_root: self.source.mail_root.clone(),
                };
            }
            Userdb::File(p) => p.for_domain(domain),
        };
        match self.source.userdb_format {
            UserdbFormat::CourierUserdb => crate::userdb::Source::Courier {
                path,
                makeuserdb: self.source.makeuserdb.clone(),
            },
            _ => crate::userdb::Source::PasswdFile {
                path,
                default_scheme: self.source.default_scheme.clone(),
            },
        }
    }

    /// The target userdb of `domain`: where new logins are written.
    pub fn target_db(&self, domain: &Domain) -> crate::userdb::Target {
        use crate::userdb::target::{NewEntries, TargetDb};
        let db = match &self.target.userdb {
            Userdb::File(p) => TargetDb::File(p.for_domain(domain)),
            Userdb::Sql(s) => TargetDb::Sql(s.clone()),
        };
        let new = NewEntries {
            mail_root: self.target.mail_root.clone(),
            owner: self.target.owner,
            layout: self.target.layout,
            folder_names: self.target.folder_names,
            lowercase_logins: self.target.lowercase_logins,
            fsync: self.migration.fsync,
        };
        crate::userdb::Target::new(db, self.in_place(domain), new)
    }
}

/// The directory relative paths are read against: the config file's own,
/// made absolute.
fn config_dir(path: &Path) -> std::io::Result<PathBuf> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if base.as_os_str().is_empty() {
        return std::path::absolute(".");
    }
    std::path::absolute(&base)
}

/// One database: same server, database and schema (whoever logs in).
fn same_database(a: &SqlSettings, b: &SqlSettings) -> bool {
    let place = |s: &SqlSettings| {
        (
            s.url.driver,
            s.url.host.clone(),
            s.url.port,
            s.url.dbname.clone(),
        )
    };
    place(a) == place(b) && a.schema == b.schema
}

/// Neither mail root may be `/`, nor hold the other one: the job walks
/// and writes below them and must never meet the other side there. (One
/// root for both is fine: each mailbox's own Maildirs are checked apart.)
fn check_roots(source: &Path, target: &Path) -> Result<(), (&'static str, String)> {
    for (key, root) in [("source.mail_root", source), ("target.mail_root", target)] {
        if root.parent().is_none() {
            return Err((
                key,
                "must not be / (give the directory of the mail store)".into(),
            ));
        }
    }
    if source != target {
        for ((key, outer), inner) in [
            (("source.mail_root", source), target),
            (("target.mail_root", target), source),
        ] {
            if inner.starts_with(outer) {
                return Err((
                    key,
                    format!(
                        "{} contains the other side's mail root {}; keep the two stores apart",
                        outer.display(),
                        inner.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A server's doveadm from a section's `doveadm` and `doveadm_config`.
fn doveadm(
    bin: Option<&Path>,
    config: Option<&Path>,
    resolve: &impl Fn(&Path) -> PathBuf,
) -> Result<Option<Doveadm>, String> {
    match (bin, config) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("doveadm_config is only used with doveadm".into()),
        (Some(b), c) => Ok(Some(Doveadm {
            bin: crate::dovecot::parse_bin(b)?,
            config: c.map(resolve),
        })),
    }
}

fn layout(s: Option<&str>) -> Result<Layout, String> {
    s.map_or(Ok(Layout::MaildirPlusPlus), Layout::parse)
}

/// Removes `.` and resolves `..` textually (config paths need not exist).
pub fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[source]
userdb = "users.old"
userdb_format = "passwd-file"
mail_root = "old"
[target]
userdb = "/etc/dovecot/passwd/%d"
userdb_format = "passwd-file"
mail_root = "../new"
uid = 5000
gid = 5000
"#;

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let c = Config::parse(Path::new("/etc/mm/config.toml"), MINIMAL).unwrap();
        assert_eq!(c.source.mail_root, Path::new("/etc/mm/old"));
        assert_eq!(c.target.mail_root, Path::new("/etc/new"));
        let d = Domain::parse("example.cz").unwrap();
        assert_eq!(c.source.userdb.describe(&d), "/etc/mm/users.old");
        assert_eq!(
            c.target.userdb.describe(&d),
            "/etc/dovecot/passwd/example.cz"
        );
        let jan = LocalPart::parse("jan").unwrap();
        assert_eq!(c.source.userdb.key(&jan, &d), "jan@example.cz");
        assert_eq!(c.target.userdb.key(&jan, &d), "jan");
        assert_eq!(
            c.target.home.expand(&jan, &d).unwrap(),
            Path::new("example.cz/jan")
        );
        assert_eq!(c.migration.threads, 8);
        assert_eq!(c.migration.limits, Limits::default());
        assert!(c.migration.fsync);
        assert_eq!(c.source.default_scheme, "CRYPT");
        assert_eq!(c.daemon.rescan_interval, Duration::from_secs(30));
        assert_eq!(c.daemon.max_parallel_jobs, 1);
        assert!(c.daemon.inotify);
        assert_eq!(c.daemon.submit_group, None);
        assert_eq!(c.daemon.metrics_file, None);
        assert!(!c.in_place(&d));
    }

    #[test]
    fn io_limits_are_read() {
        let text = format!(
            "{MINIMAL}[migration]\nmax_bytes_per_sec = 50000000\nmax_files_per_sec = 500\n"
        );
        let c = Config::parse(Path::new("/etc/mm/config.toml"), &text).unwrap();
        assert_eq!(
            c.migration.limits.to_string(),
            "50000000 bytes/s (47.7 MiB/s), 500 files/s"
        );
    }

    // Long on purpose: a table of (config, expected error), one case a line.
    #[test]
    fn errors_name_the_file_and_the_problem() {
        let cases = [
            (format!("{MINIMAL}\nbogus = 1\n"), "unknown field"),
            (
                MINIMAL.replace(
                    "passwd-file\"\nmail_root = \"old",
                    "courier-imap\"\nmail_root = \"old",
                ),
                "unknown variant",
            ),
            (MINIMAL.replace("uid = 5000", "uid = 0"), "target.uid"),
            (MINIMAL.replace("gid = 5000", ""), "both"),
            (
                MINIMAL.replace("/etc/dovecot/passwd/%d", "/etc/%u"),
                "only %d",
            ),
            (format!("{MINIMAL}home = \"../%n\"\n"), "target.home"),
            (format!("{MINIMAL}home = \"%d\"\n"), "%d and %n"),
            (format!("{MINIMAL}home = \"%n\"\n"), "%d and %n"),
            (format!("{MINIMAL}home = \"%d/%%n\"\n"), "%d and %n"),
            (
                MINIMAL.replace("mail_root = \"../new\"", "mail_root = \"/\""),
                "target.mail_root: must not be /",
            ),
            (
                MINIMAL.replace("mail_root = \"../new\"", "mail_root = \"old/v2\""),
                "source.mail_root: /etc/mm/old contains",
            ),
            (
                format!("{MINIMAL}[cutover]\nsweep_delay = 9223372036854775807\n"),
                "cutover.sweep_delay",
            ),
            (
                format!("{MINIMAL}[migration]\nmax_message_size = 10\n"),
                "migration.max_message_size",
            ),
            (
                format!("{MINIMAL}auth_username_format = \"%n\"\n"),
                "target.auth_username_format",
            ),
            (
                format!("{MINIMAL}[verify]\ndoveadm = \"doveadm\"\n"),
                "verify.doveadm",
            ),
            (format!("{MINIMAL}home = \"%x/%n\"\n"), "unknown variable"),
            (
                format!("{MINIMAL}[migration]\nthreads = 0\n"),
                "migration.threads",
            ),
            (
                format!("{MINIMAL}[migration]\nmax_bytes_per_sec = 0\n"),
                "migration.max_bytes_per_sec: 0 would copy nothing",
            ),
            (
                format!("{MINIMAL}[migration]\nmax_files_per_sec = 0\n"),
                "migration.max_files_per_sec: 0 would copy nothing",
            ),
            (
                format!("{MINIMAL}[migration]\nskip_folders = [\"a//b\"]\n"),
                "skip_folders",
            ),
            (
                MINIMAL.replace(
                    "/etc/dovecot/passwd/%d\"\nuserdb_format = \"passwd-file",
                    "/x\"\nuserdb_format = \"courier-userdb",
                ),
                "target.userdb_format",
            ),
            (
                MINIMAL.replace(
                    "mail_root = \"old\"",
                    "mail_root = \"old\"\nmakeuserdb = \"/usr/sbin/makeuserdb\"",
                ),
                "source.makeuserdb",
            ),
            (
                format!("{MINIMAL}folder_names = \"latin2\"\n"),
                "target.folder_names",
            ),
            (format!("{MINIMAL}layout = \"mbox\"\n"), "target.layout"),
            (
                format!("{MINIMAL}[cutover]\nfreeze_command = [\"doveadm\", \"kick\", \"%u\"]\n"),
                "absolute path",
            ),
            (
                format!("{MINIMAL}[cutover]\nfreeze_command = [\"/bin/x\", \"%x\"]\n"),
                "unknown variable",
            ),
            (
                format!("{MINIMAL}[daemon]\nsubmit_group = \"no-such-group-x\"\n"),
                "daemon.submit_group",
            ),
            (
                format!("{MINIMAL}[daemon]\nrescan_interval = 0\n"),
                "daemon.rescan_interval",
            ),
            (
                format!("{MINIMAL}[daemon]\nmax_parallel_jobs = 0\n"),
                "daemon.max_parallel_jobs",
            ),
            (
                format!("{MINIMAL}[daemon]\nmetrics_file = \"/no/such/dir/m.prom\"\n"),
                "daemon.metrics_file",
            ),
            ("[source\n".to_string(), "line 1"),
        ];
        for (text, needle) in cases {
            let e = Config::parse(Path::new("/etc/mm/c.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/etc/mm/c.toml: "), "{e}");
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn same_file_is_in_place() {
        let t = MINIMAL.replace("/etc/dovecot/passwd/%d", "users.old");
        let c = Config::parse(Path::new("/x/c.toml"), &t).unwrap();
        assert!(c.in_place(&Domain::parse("a.cz").unwrap()));
    }

    const SQL: &str = r#"
[source]
userdb = "postgresql://postfix@127.0.0.1/postfix"
userdb_format = "sql"
mail_root = "/var/vmail"
[target]
userdb = "mysql://postfix@db2:3307/postfix"
userdb_format = "sql"
mail_root = "/srv/vmail"
uid = 5000
gid = 5000
"#;

    #[test]
    fn sql_userdbs_are_checked() {
        let p = Path::new("/c.toml");
        let c = Config::parse(p, SQL).unwrap();
        let d = Domain::parse("a.cz").unwrap();
        assert!(!c.in_place(&d));
        assert_eq!(
            c.source.userdb.describe(&d),
            "postgresql://postfix@127.0.0.1:5432/postfix"
        );
        assert_eq!(
            c.target.userdb.key(&LocalPart::parse("jan").unwrap(), &d),
            "jan@a.cz"
        );
        let same = SQL
            .replace(
                "mysql://postfix@db2:3307/postfix",
                "postgresql://other@127.0.0.1:5432/postfix",
            )
            .replace("/srv/vmail", "/var/vmail");
        assert!(Config::parse(p, &same).unwrap().in_place(&d));
        let custom = format!(
            "{}\nschema = \"custom\"\n[target.queries]\nlist_query = \"SELECT u FROM m WHERE d = %{{domain}}\"\n\
             user_query = \"SELECT * FROM m WHERE u = %{{username}}\"\n\
             insert_query = \"INSERT INTO m VALUES (%{{username}}, %{{password}}, %{{maildir}})\"\n\
             update_location_query = \"UPDATE m SET maildir = %{{maildir}}, password = %{{password}} WHERE u = %{{username}} AND maildir = %{{old_maildir}} AND password = %{{old_password}}\"\n\
             update_password_query = \"UPDATE m SET password = %{{password}} WHERE u = %{{username}} AND password = %{{old_password}}\"\n",
            SQL.trim_end()
        );
        Config::parse(p, &custom).unwrap();
        let cases = [
            (SQL.replace("/var/vmail", "/x"), ""),
            (
                same.replace("/var/vmail\"\n[target]", "/other\"\n[target]"),
                "one mail_root",
            ),
            (SQL.replace("postgresql://", "oracle://"), "unknown scheme"),
            (format!("{SQL}schema = \"mailcow\"\n"), "target.schema"),
            (format!("{SQL}schema = \"custom\"\n"), "[target.queries]"),
            (
                custom.replace(
                    " AND password = %{old_password}\"\nupdate_password",
                    "\"\nupdate_password",
                ),
                "old_password",
            ),
            (
                MINIMAL.replace(
                    "mail_root = \"old\"",
                    "mail_root = \"old\"\nschema = \"postfixadmin\"",
                ),
                "userdb_format = \"sql\"",
            ),
            (
                SQL.replace(
                    "mysql://postfix@db2:3307/postfix\"\nuserdb_format = \"sql",
                    "/etc/users\"\nuserdb_format = \"passwd-file",
                )
                .replace("uid = 5000\ngid = 5000\n", ""),
                "target.uid",
            ),
            (
                SQL.replace("uid = 5000\ngid = 5000\n", ""),
                "rows carry no uid/gid",
            ),
        ];
        for (text, want) in cases {
            let r = Config::parse(p, &text);
            if want.is_empty() {
                r.unwrap();
                continue;
            }
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
