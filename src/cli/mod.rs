//! The command line: parses arguments (clap stays in this module), loads
//! and validates files, runs the engine, renders results, and maps every
//! outcome to a sysexits code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `println!` for what a command prints: a reader that went away
/// (`| head`) ends the program quietly with 0, as ripgrep does, where
/// `println!` would panic (Rust ignores SIGPIPE, so the write gets EPIPE).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::stdout_failed(e)
        }
    }};
}

mod demo;
mod man;
mod queue;

use crate::config::{self, Config};
use crate::job::{Domain, Job, JobId, LocalPart, Mode, RawJob};
use crate::migrate::{self, RunError};
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::report::{JobStatus, MailboxStatus, Report};
use crate::shown::bytes_human;
use crate::spool::{Spool, SpoolError};
use crate::throttle::Limiter;

use crate::exit;

/// Moves whole mail domains from an old Maildir storage to a new Dovecot,
/// keeping passwords, folders, flags, keywords, dates and UIDs.
#[derive(Debug, Parser)]
#[command(name = "maildir-migrate", version, about, max_term_width = 100)]
struct Cli {
    /// Configuration file [default: $MAILDIR_MIGRATE_CONFIG, else /etc/maildir-migrate/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job file in the foreground.
    ///
    /// Exit status: 0 every mailbox migrated (or already migrated), 1 some
    /// mailbox failed, 64 usage, 65 bad job file, 74 I/O error, 78 bad
    /// configuration.
    Run {
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// The job file (JSON); its stem is the job id.
        job: PathBuf,
    },
    /// Show what a job would do, writing nothing.
    Plan {
        #[command(flatten)]
        target: DomainArgs,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare source and target of a migrated domain, writing nothing.
    ///
    /// Exit status: 0 everything equal, 1 some mailbox differs (see the
    /// problems), 64 usage, 74 I/O error, 78 bad configuration.
    Verify {
        #[command(flatten)]
        target: DomainArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move mail delivered to the old Maildirs after the switch into the new ones.
    ///
    /// Exit status: 0 swept (see the report), 64 usage, 74 I/O error, 78
    /// bad configuration.
    Sweep {
        #[command(flatten)]
        target: DomainArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check, writing nothing, what jobs and the daemon need; one line per check.
    ///
    /// OK, WARN (works, but look at it) or FAIL (a job or the daemon would
    /// fail), each WARN and FAIL with its fix: the configuration loads;
    /// both userdbs are readable and writable by this user and readable by
    /// the user Dovecot's auth runs as (from doveadm config); both mail roots
    /// exist, their filesystems, O_TMPFILE and reflinks; with --domain,
    /// the room on the target for the domain; the target uid/gid exist;
    /// freeze_command is executable; the SMTP relay answers EHLO (and
    /// STARTTLS when required); SQL userdbs connect and their queries
    /// prepare; the spool's owner and modes. Run it as the daemon's user.
    /// The daemon logs the same lines when it starts. Exit status: 0 no
    /// FAIL (WARN allowed), 1 some check failed, 64 usage, 78 the
    /// configuration cannot be loaded.
    Check {
        /// Also check this domain's userdb files and the room it needs on the target.
        #[arg(long)]
        domain: Option<String>,
        /// Print JSON: {"status": "OK"|"WARN"|"FAIL", "checks": [{"status", "check", "found", "fix"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Work through the spool queue until SIGTERM (run it under systemd).
    ///
    /// Exit status: 0 stopped on request, 74 I/O error, 75 another daemon
    /// holds the spool, 78 bad configuration or unsafe spool.
    Daemon,
    /// Queue a job for the daemon; prints its id.
    ///
    /// Exit status: 0 queued, 64 usage, 65 invalid job, 73 id already
    /// used, 74 I/O error, 78 bad configuration or no spool.
    Submit {
        /// The domain to migrate.
        #[arg(long)]
        domain: String,
        /// move: content and passwords; recreate: empty mailboxes with the same passwords.
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Only these mailboxes (local parts); default: every mailbox of the domain.
        #[arg(long = "mailbox", value_name = "LOCAL")]
        mailboxes: Vec<String>,
        /// Address that gets the completion e-mail.
        #[arg(long, value_name = "EMAIL")]
        notify: Option<String>,
        /// Job id (A-Z a-z 0-9 . _ -, up to 64); default: generated.
        #[arg(long)]
        id: Option<String>,
        /// Copy ahead only ("cutover": false): both logins stay as they are.
        #[arg(long)]
        presync: bool,
        /// With [queue]: only a daemon serving this pool (where the source lives) takes it.
        #[arg(long, value_name = "NAME")]
        pool: Option<String>,
    },
    /// With [queue]: cancel a queued job, or stop a running one at its
    /// current mailbox (which gets its old login back).
    ///
    /// Exit status: 0 cancelled or stop requested, 65 already finished, 66
    /// no such job, 75 database unreachable, 78 no [queue].
    Cancel {
        /// The job's number in the queue (what `submit` printed).
        id: i64,
    },
    /// The PostgreSQL job queue's schema.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Show the queue, the running job's progress and the last finished jobs.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How many finished jobs to show.
        #[arg(long, default_value_t = 10)]
        last: usize,
    },
    /// Migrate the bundled demo host (fixtures/demo) in a scratch copy, through the daemon.
    ///
    /// Starts the daemon on the copy's spool, submits its jobs, waits for
    /// them, prints their reports and the status, and stops the daemon.
    /// Run it from the repository root, or name the demo host with
    /// --fixtures. Exit status: 0 migrated, 1 some mailbox failed, 64
    /// usage, 66 no demo host at --fixtures, 74 I/O error, 75 the daemon
    /// did not finish in time.
    Demo {
        /// Where to build the scratch copy (replaced if it is an earlier demo).
        #[arg(long, value_name = "DIR", default_value = "target/demo")]
        dir: PathBuf,
        /// The demo host to copy.
        #[arg(long, value_name = "DIR", default_value = "fixtures/demo")]
        fixtures: PathBuf,
    },
    /// Print a shell completion script to standard output, e.g.
    /// `maildir-migrate completions bash > /etc/bash_completion.d/maildir-migrate`
    /// (the Debian package installs them for bash, zsh and fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (for packaging): maildir-migrate.1, one
    /// maildir-migrate-<command>.1 per command and maildir-migrate.toml.5.
    #[command(hide = true)]
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Create or upgrade the queue's schema (idempotent), and grant roles
    /// their rights. Run it as the database owner.
    ///
    /// Exit status: 0 done, 74 refused by the database, 75 database
    /// unreachable, 78 no [queue].
    Init {
        /// Role the daemons log in as: it may claim and update jobs.
        #[arg(long, value_name = "ROLE")]
        daemon_role: Option<String>,
        /// Role the control panel logs in as: it may insert and read jobs and call cancel().
        #[arg(long, value_name = "ROLE")]
        panel_role: Option<String>,
    },
}

/// A domain, optionally narrowed to some of its mailboxes.
#[derive(Debug, clap::Args)]
struct DomainArgs {
    /// The domain.
    #[arg(long)]
    domain: String,
    /// Only these mailboxes (local parts); default: every mailbox of the domain.
    #[arg(long = "mailbox", value_name = "LOCAL")]
    mailboxes: Vec<String>,
}

impl DomainArgs {
    fn parse(self) -> Result<(Domain, Option<Vec<LocalPart>>), Failure> {
        let domain = Domain::parse(&self.domain).map_err(|e| Failure(exit::USAGE, e))?;
        if self.mailboxes.is_empty() {
            return Ok((domain, None));
        }
        let parsed: Result<Vec<_>, _> =
            self.mailboxes.iter().map(|m| LocalPart::parse(m)).collect();
        Ok((domain, Some(parsed.map_err(|e| Failure(exit::USAGE, e))?)))
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Move,
    Recreate,
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    ExitCode::from(match dispatch(cli) {
        Ok(code) => code,
        Err(Failure(code, msg)) => {
            eprintln!("maildir-migrate: {msg}");
            code
        }
    })
}

/// Standard output failed: a closed pipe ends quietly, anything else
/// (a full disk behind a redirect) is an I/O error.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(exit::OK.into());
    }
    eprintln!("maildir-migrate: standard output: {e}");
    std::process::exit(exit::IOERR.into());
}

/// A fatal error with its exit code.
struct Failure(u8, String);

impl From<RunError> for Failure {
    fn from(e: RunError) -> Failure {
        Failure(e.exit_code(), e.to_string())
    }
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(config::ENV_VAR).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

fn load_config(flag: Option<PathBuf>) -> Result<Config, Failure> {
    Config::load(&config_path(flag)).map_err(|e| Failure(exit::CONFIG, e.to_string()))
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Run {
            json,
            no_progress,
            job,
        } => run(cli.config, &job, json, no_progress),
        Command::Plan { target, json } => plan(cli.config, target, json),
        Command::Demo { dir, fixtures } => demo::run(&dir, &fixtures),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "maildir-migrate", &mut script);
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&script).and_then(|()| out.flush()) {
                stdout_failed(e)
            }
            Ok(exit::OK)
        }
        Command::Man { out } => {
            man::write_all(Cli::command(), &out)
                .map_err(|e| Failure(exit::IOERR, format!("{}: {e}", out.display())))?;
            Ok(exit::OK)
        }
        Command::Sweep { target, json } => sweep(cli.config, target, json),
        Command::Verify { target, json } => verify(cli.config, target, json),
        Command::Check { domain, json } => check(cli.config, domain, json),
        Command::Daemon => {
            init_logging(None);
            let path = config_path(cli.config);
            let cfg = Config::load(&path).map_err(|e| Failure(exit::CONFIG, e.to_string()))?;
            crate::daemon::run(&path, cfg).map_err(|e| Failure(e.exit_code(), e.to_string()))?;
            Ok(exit::OK)
        }
        Command::Submit {
            domain,
            mode,
            mailboxes,
            notify,
            id,
            presync,
            pool,
        } => {
            let job = RawJob {
                domain,
                mode: match mode {
                    ModeArg::Move => Mode::Move,
                    ModeArg::Recreate => Mode::Recreate,
                },
                mailboxes: (!mailboxes.is_empty()).then_some(mailboxes),
                notify,
                cutover: presync.then_some(false),
            };
            submit(cli.config, job, id, pool)
        }
        Command::Cancel { id } => queue::cancel(&load_config(cli.config)?, id),
        Command::Queue {
            command:
                QueueCommand::Init {
                    daemon_role,
                    panel_role,
                },
        } => queue::init(
            &load_config(cli.config)?,
            daemon_role.as_deref(),
            panel_role.as_deref(),
        ),
        Command::Status { json, last } => {
            let cfg = load_config(cli.config)?;
            if let Some(q) = &cfg.queue {
                return queue::status(q, json, last);
            }
            let spool = Spool::open(&cfg.spool_dir).map_err(spool_failure)?;
            let status = crate::status::gather(&spool, last).map_err(spool_failure)?;
            print_status(&status, json);
            Ok(exit::OK)
        }
    }
}

fn run(config: Option<PathBuf>, job: &Path, json: bool, no_progress: bool) -> Result<u8, Failure> {
    let cfg = load_config(config)?;
    let job = Job::load(job).map_err(|e| Failure(e.exit_code(), e.to_string()))?;
    let show_bar = !no_progress && std::io::stderr().is_terminal();
    let report = run_with_progress(&cfg, &job, show_bar)?;
    print_report(&report, json);
    Ok(if report.status == JobStatus::Done {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

fn plan(config: Option<PathBuf>, target: DomainArgs, json: bool) -> Result<u8, Failure> {
    init_logging(None);
    let cfg = load_config(config)?;
    let (domain, mailboxes) = target.parse()?;
    let plan = plan::plan(&cfg, domain, mailboxes)?;
    print_plan(&plan, json);
    // A cutover job would be refused as a configuration error.
    Ok(if plan.problems.is_empty() {
        exit::OK
    } else {
        exit::CONFIG
    })
}

fn sweep(config: Option<PathBuf>, target: DomainArgs, json: bool) -> Result<u8, Failure> {
    init_logging(None);
    let cfg = load_config(config)?;
    let (domain, mailboxes) = target.parse()?;
    let s = migrate::sweep::sweep(&cfg, domain, mailboxes)?;
    print_sweep(&s, json);
    Ok(exit::OK)
}

fn verify(config: Option<PathBuf>, target: DomainArgs, json: bool) -> Result<u8, Failure> {
    init_logging(None);
    let cfg = load_config(config)?;
    let (domain, mailboxes) = target.parse()?;
    let v = migrate::verify::verify(&cfg, domain, mailboxes)?;
    print_verify(&v, json);
    Ok(if v.ok { exit::OK } else { exit::PARTIAL })
}

fn check(config: Option<PathBuf>, domain: Option<String>, json: bool) -> Result<u8, Failure> {
    use crate::check::{Checks, Status};
    init_logging(None);
    let domain = domain
        .map(|d| Domain::parse(&d).map_err(|e| Failure(exit::USAGE, e)))
        .transpose()?;
    let path = config_path(config);
    let (checks, code) = match Config::load(&path) {
        Ok(cfg) => {
            let checks = crate::check::run(&cfg, &path, domain.as_ref());
            let failed = checks.status == Status::Fail;
            (checks, if failed { exit::PARTIAL } else { exit::OK })
        }
        Err(e) => (Checks::unusable_config(&e.to_string()), exit::CONFIG),
    };
    print_checks(&checks, json);
    Ok(code)
}

fn print_checks(c: &crate::check::Checks, json: bool) {
    if json {
        print_json(c);
        return;
    }
    for l in &c.checks {
        outln!("{:<4}  {:<22}  {}", l.status.label(), l.check, l.found);
        if let Some(fix) = &l.fix {
            outln!("{:<4}  {:<22}  fix: {fix}", "", "");
        }
    }
}

/// Files the job in the spool's queue under `id` (default: generated).
fn submit(
    config: Option<PathBuf>,
    job: RawJob,
    id: Option<String>,
    pool: Option<String>,
) -> Result<u8, Failure> {
    let cfg = load_config(config)?;
    if cfg.queue.is_some() {
        if id.is_some() {
            return Err(Failure(
                exit::USAGE,
                "--id is for the spool; the queue numbers its jobs".into(),
            ));
        }
        return queue::submit(&cfg, job, pool);
    }
    if pool.is_some() {
        queue::settings(&cfg, "--pool")?;
    }
    let spool = Spool::open(&cfg.spool_dir).map_err(spool_failure)?;
    let domain = Domain::parse(&job.domain).map_err(|e| Failure(exit::USAGE, e))?;
    let id = match id {
        Some(id) => JobId::parse(&id).map_err(|e| Failure(exit::USAGE, e))?,
        None => generated_id(&domain),
    };
    let job = RawJob {
        domain: domain.as_str().to_string(),
        ..job
    };
    let text = serde_json::to_string_pretty(&job).expect("serialisable") + "\n";
    spool.submit(&id, &text).map_err(spool_failure)?;
    outln!("{}", id.as_str());
    Ok(exit::OK)
}

fn spool_failure(e: SpoolError) -> Failure {
    Failure(e.exit_code(), e.to_string())
}

/// `<UTC time>-<domain>`, unique enough for a queue fed by people; a
/// clash is refused by `submit` like any duplicate.
fn generated_id(domain: &Domain) -> JobId {
    let stamp = crate::report::now_rfc3339().replace([':', '-'], "");
    let mut id = format!("{}-{}", stamp.trim_end_matches('Z'), domain);
    id.truncate(64);
    let mut id = id.trim_end_matches('.').to_string();
    // A domain like "x.report" must not give an id naming a daemon file.
    if let Some(r) = crate::job::reserved_suffix(&id) {
        let dot = id.len() - r.len();
        id.replace_range(dot..=dot, "_");
    }
    JobId::parse(&id).expect("time and domain are valid id characters")
}

/// Machine-readable output for `--json`.
fn print_json(value: &impl serde::Serialize) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("serialisable")
    );
}

fn print_sweep(s: &migrate::sweep::Sweep, json: bool) {
    if json {
        print_json(s);
        return;
    }
    for m in &s.mailboxes {
        outln!("  {:<32} {} late messages moved", m.user, m.moved);
        for p in &m.problems {
            outln!("      {p}");
        }
    }
    outln!("domain {}: {} late messages moved", s.domain, s.moved);
}

fn print_verify(v: &migrate::verify::Verification, json: bool) {
    if json {
        print_json(v);
        return;
    }
    for m in &v.mailboxes {
        outln!(
            "  {:<32} {:<8} {} folders, {} messages",
            m.user,
            if m.ok { "equal" } else { "DIFFERS" },
            m.folders,
            m.messages
        );
        for p in &m.problems {
            outln!("      {p}");
        }
    }
    outln!(
        "domain {}: {}",
        v.domain,
        if v.ok { "equal" } else { "DIFFERS" }
    );
}

fn print_status(s: &crate::status::Status, json: bool) {
    if json {
        print_json(s);
        return;
    }
    match &s.daemon_pid {
        Some(pid) => outln!("spool {}: daemon running (pid {pid})", s.spool),
        None => outln!("spool {}: NO daemon running", s.spool),
    }
    outln!("queued: {}", s.queued.len());
    for q in &s.queued {
        outln!(
            "  {:<40} {} {} submitted {}{}",
            q.id,
            q.mode.as_deref().unwrap_or("?"),
            q.domain.as_deref().unwrap_or("?"),
            q.submitted,
            q.problem
                .as_deref()
                .map(|p| format!(" — will be refused: {p}"))
                .unwrap_or_default()
        );
    }
    outln!("running: {}", s.running.len());
    for r in &s.running {
        outln!(
            "  {:<40} {} {} {}/{} mailboxes ({} failed), {} messages, {}{}{}{}",
            r.id,
            r.state,
            r.domain.as_deref().unwrap_or("?"),
            r.mailboxes_done,
            r.mailboxes_total,
            r.mailboxes_failed,
            r.messages,
            bytes_human(r.bytes),
            r.bytes_per_sec
                .map(|b| format!(" at {}/s", bytes_human(b)))
                .unwrap_or_default(),
            r.eta_secs
                .map(|e| format!(
                    ", about {} left",
                    indicatif::HumanDuration(std::time::Duration::from_secs(e))
                ))
                .unwrap_or_default(),
            r.current
                .as_deref()
                .map(|c| format!(", now {c}"))
                .unwrap_or_default()
        );
    }
    outln!("last finished: {}", s.finished.len());
    for f in &s.finished {
        outln!(
            "  {:<40} {:<6} {} {} {} mailboxes ({} failed), {} messages, {}{}{}",
            f.id,
            match f.status {
                crate::spool::RecordStatus::Done => "done",
                crate::spool::RecordStatus::Failed => "FAILED",
            },
            f.domain.as_deref().unwrap_or("?"),
            f.finished,
            f.mailboxes,
            f.failed_mailboxes,
            f.messages,
            bytes_human(f.bytes),
            f.notification
                .as_deref()
                .map(|n| format!(", e-mail {n}"))
                .unwrap_or_default(),
            f.error
                .as_deref()
                .map(|e| format!("\n      error: {e}"))
                .unwrap_or_default()
        );
    }
}

/// Renders engine progress as an indicatif bar over mailboxes, with the
/// messages and bytes copied so far.
struct Bar {
    bar: ProgressBar,
    messages: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Bar {
    fn new() -> Bar {
        let messages = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (m, b) = (messages.clone(), bytes.clone());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} mailboxes, {copied} ({rate}) {msg}",
        )
        .expect("valid template")
        .with_key("copied", move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(
                w,
                "{} messages, {}",
                m.load(Ordering::Relaxed),
                bytes_human(b.load(Ordering::Relaxed))
            );
        })
        .with_key("rate", {
            let b = bytes.clone();
            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let secs = s.elapsed().as_secs_f64().max(0.001);
                let _ = write!(
                    w,
                    "{}/s",
                    bytes_human((b.load(Ordering::Relaxed) as f64 / secs) as u64)
                );
            }
        });
        let bar =
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()).with_style(style);
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Bar {
            bar,
            messages,
            bytes,
        }
    }
}

impl Progress for Bar {
    fn job_started(&self, mailboxes: usize) {
        self.bar.set_length(mailboxes as u64);
    }
    fn mailbox_started(&self, user: &str) {
        self.bar.set_message(user.to_string());
    }
    fn message_copied(&self, bytes: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn mailbox_finished(&self, _report: &crate::report::MailboxReport) {
        self.bar.inc(1);
    }
}

fn run_with_progress(cfg: &Config, job: &Job, show_bar: bool) -> Result<Report, Failure> {
    let stop = stop_on_signals()?;
    let limiter = Limiter::new(cfg.migration.limits);
    if !show_bar {
        init_logging(None);
        let silent = &crate::progress::Silent;
        return Ok(migrate::run_job(cfg, job, silent, &stop, &limiter, &[])?);
    }
    let bar = Bar::new();
    init_logging(Some(bar.bar.clone()));
    let report = migrate::run_job(cfg, job, &bar, &stop, &limiter, &[]);
    bar.bar.finish_and_clear();
    Ok(report?)
}

/// Ctrl-C or SIGTERM: finish the files in flight, roll back the current
/// mailbox, exit 75; a second one exits at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>, Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
            .map_err(|e| Failure(exit::IOERR, format!("cannot install signal handlers: {e}")))?;
    }
    Ok(stop)
}

/// Log lines go to stderr; while a bar is drawn they are printed above it.
fn init_logging(bar: Option<ProgressBar>) {
    struct Line {
        bar: Option<ProgressBar>,
        buf: Vec<u8>,
    }
    impl Write for Line {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Drop for Line {
        fn drop(&mut self) {
            // Names from mail users reach log lines: one event, one line.
            let out = |buf: &[u8]| {
                let _ = std::io::stderr().write_all(&crate::shown::log_line(buf));
            };
            match &self.bar {
                Some(b) => b.suspend(|| out(&self.buf)),
                None => out(&self.buf),
            }
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILDIR_MIGRATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(move || Line {
            bar: bar.clone(),
            buf: Vec::new(),
        })
        .try_init();
}

fn print_report(report: &Report, json: bool) {
    if json {
        print_json(report);
        return;
    }
    outln!(
        "job {} ({} {}): {}",
        report.id,
        report.mode,
        report.domain,
        match report.status {
            JobStatus::Done => "done",
            JobStatus::Failed => "FAILED",
        }
    );
    for m in &report.mailboxes {
        let status = match m.status {
            MailboxStatus::Done => "migrated",
            MailboxStatus::AlreadyMigrated => {
                outln!("  {:<32} already migrated by an earlier run", m.user);
                continue;
            }
            MailboxStatus::Failed => "FAILED",
            MailboxStatus::Presynced => "presynced",
        };
        outln!(
            "  {:<32} {:<16} {:>7} messages {:>10} in {} folders{}",
            m.user,
            status,
            m.messages,
            bytes_human(m.bytes),
            m.folders,
            if m.uids_preserved || m.status != MailboxStatus::Done {
                ""
            } else {
                ", UIDs NOT preserved"
            }
        );
        if let Some(e) = &m.error {
            outln!("      error: {e}");
        }
        for s in &m.skipped_folders {
            outln!("      skipped {:?}: {}", s.name, s.reason);
        }
        for w in &m.warnings {
            outln!("      warning: {w}");
        }
    }
    for w in &report.warnings {
        outln!("warning: {w}");
    }
    let t = &report.totals;
    outln!(
        "{} mailboxes ({} failed), {} messages, {}, {} folders skipped",
        t.mailboxes,
        t.failed_mailboxes,
        t.messages,
        bytes_human(t.bytes),
        t.skipped_folders
    );
}

fn print_plan(plan: &Plan, json: bool) {
    if json {
        print_json(plan);
        return;
    }
    outln!(
        "domain {}: {} → {}{}",
        plan.domain,
        plan.source_userdb,
        plan.target_userdb,
        if plan.in_place {
            " (rewritten in place)"
        } else {
            ""
        }
    );
    for p in &plan.problems {
        outln!("  PROBLEM: {p}");
    }
    for w in &plan.warnings {
        outln!("  warning: {w}");
    }
    for m in &plan.mailboxes {
        outln!(
            "  {} [{:?}] hash {} — {} messages, {}",
            m.user,
            m.status,
            m.hash_scheme.as_deref().unwrap_or("(empty)"),
            m.messages,
            bytes_human(m.bytes)
        );
        if let (Some(s), Some(t)) = (&m.source_maildir, &m.target_maildir) {
            outln!("      {s} → {t}");
        }
        for f in &m.folders {
            outln!(
                "      copy {:?}: {} messages, {}",
                f.name,
                f.messages,
                bytes_human(f.bytes)
            );
        }
        for s in &m.skipped_folders {
            outln!("      skip {:?}: {}", s.name, s.reason);
        }
        for p in &m.problems {
            outln!("      problem: {p}");
        }
        for w in &m.warnings {
            outln!("      warning: {w}");
        }
    }
    outln!(
        "{} mailboxes, {} messages, {}",
        plan.mailboxes.len(),
        plan.messages,
        bytes_human(plan.bytes)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn generated_ids_never_end_in_a_reserved_suffix() {
        for d in ["x.report", "mail.sweep", "a.cz"] {
            let id = generated_id(&Domain::parse(d).unwrap());
            assert!(crate::job::reserved_suffix(id.as_str()).is_none(), "{id:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
