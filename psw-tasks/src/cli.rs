//! The standard subcommands for any binary that links tasks: `worker`, `beat`, `all`,
//! `enqueue`, `result`, `tasks`, `schedules`, `stats`, `dlq`. Configuration comes from the
//! environment (see [`Config::from_env`]).
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     psw_tasks::cli::main().await
//! }
//! ```

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{Client, EnqueueOptions};
use crate::config::Config;
use crate::config::parse_duration;
use crate::error::{Error, Result};
use crate::priority::parse_queue_list;
use crate::redact;
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::worker::{Worker, WorkerBuilder};

/// Command-line interface of a psw-tasks binary.
#[derive(Debug, Parser)]
#[command(version, about = "Run and inspect psw-tasks jobs")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The standard subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Run a worker until SIGINT or SIGTERM.
    Worker {
        /// Queues to consume, comma-separated, each with an optional weight, like
        /// `high:5,default:2,low:1` (default: PSW_QUEUES, else every queue of the linked tasks).
        #[arg(long, value_delimiter = ',')]
        queues: Option<Vec<String>>,
        /// Jobs run at once (default: PSW_WORKER_CONCURRENCY, else 10).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Read the queues strictly in their order: the first always first (it can starve the
        /// others; default: PSW_STRICT_PRIORITY).
        #[arg(long)]
        strict_priority: bool,
        /// Celery queues to take jobs from too, comma-separated, like `celery,prices`: messages
        /// of the tasks linked here, sent by Python's `send_task` (default: PSW_CELERY_QUEUES;
        /// docs/celery.md).
        #[arg(long, value_delimiter = ',')]
        celery_queues: Option<Vec<String>>,
    },
    /// Enqueue a task by name with JSON arguments.
    Enqueue {
        /// The task's wire name (see `tasks`).
        task: String,
        /// The arguments as a JSON array, like '["AAPL", 3]'.
        #[arg(long, default_value = "[]")]
        args: String,
        /// Run no earlier than this long from now, like `10s`.
        #[arg(long)]
        countdown: Option<String>,
        /// Never run it if it has not started this long from now, like `1h`: it is recorded
        /// REVOKED (expired) instead.
        #[arg(long)]
        expires: Option<String>,
        /// Send to this queue instead of the task's own.
        #[arg(long)]
        queue: Option<String>,
        /// Send to this level of the queue instead of the task's own: `high`, `normal` or
        /// `low`.
        #[arg(long)]
        priority: Option<String>,
        /// Wait this long for the result and print it.
        #[arg(long)]
        wait: Option<String>,
    },
    /// Run the beat until SIGINT or SIGTERM: enqueue the jobs of the schedules (run it on every
    /// node if you like: each slot still fires once).
    Beat,
    /// Run a worker and the beat in one process until SIGINT or SIGTERM.
    All {
        /// Queues to consume, comma-separated, each with an optional weight, like
        /// `high:5,default:2,low:1` (default: PSW_QUEUES, else every queue of the linked tasks).
        #[arg(long, value_delimiter = ',')]
        queues: Option<Vec<String>>,
        /// Jobs run at once (default: PSW_WORKER_CONCURRENCY, else 10).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Read the queues strictly in their order: the first always first (it can starve the
        /// others; default: PSW_STRICT_PRIORITY).
        #[arg(long)]
        strict_priority: bool,
    },
    /// Print a job's record as JSON.
    Result {
        /// The job id.
        id: String,
    },
    /// Cancel a job: not run if no worker has started it (recorded REVOKED), told to its task
    /// if it runs.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Pause a queue: workers stop taking its jobs within a second, until it is resumed (the
    /// pause outlives worker restarts). Producers still enqueue.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        queue: String,
    },
    /// List the unique jobs' locks: key, the job that holds it, and how long it still lasts.
    Unique {
        /// Only keys that start with this (a task's name, say).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most locks listed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List the tasks linked into this binary, with their options.
    Tasks,
    /// Read, replay or purge the dead-letter queue.
    Dlq {
        /// What to do with it.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// List the schedules, each with its next five fire times in its zone and its last run.
    Schedules,
    /// Pause, resume or run a schedule now, or list its last runs.
    Schedule {
        /// What to do with it.
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Serve the dashboard's JSON API and `/metrics` (PSW_DASHBOARD_ADDR, default
    /// 127.0.0.1:5555; a login from PSW_DASHBOARD_AUTH or FLOWER_BASIC_AUTH) until
    /// SIGINT/SIGTERM.
    Dashboard {
        /// Listen here instead of PSW_DASHBOARD_ADDR.
        #[arg(long)]
        addr: Option<String>,
    },
    /// Print the workers, the queues, each task's outcomes and the dead letters as JSON
    /// (timestamps in ms since the Unix epoch).
    Stats {
        /// Sum task outcomes over this long, like `15m` (at most `1d`).
        #[arg(long, default_value = "15m")]
        window: String,
    },
}

/// What `schedule` does.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum ScheduleAction {
    /// Let its slots pass without a job until it is resumed (not caught up then).
    Pause {
        /// The schedule's name (the first column of `schedules`).
        name: String,
    },
    /// Fire its slots again.
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Enqueue its job now, out of turn, and print the job id.
    Run {
        /// The schedule's name.
        name: String,
    },
    /// Its last runs, newest first, as JSON lines.
    Runs {
        /// The schedule's name.
        name: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// What `dlq` does.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum DlqAction {
    /// The dead letters, oldest first, one line each.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter in full, as JSON.
    Show {
        /// Its entry id (the first column of `dlq list`).
        entry: String,
    },
    /// Put dead jobs back on their queues as fresh jobs.
    Replay {
        /// The entry to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        entry: Option<String>,
        /// Replay every dead letter (of `--task`, if given).
        #[arg(long)]
        all: bool,
        /// With `--all`: only dead letters of this task.
        #[arg(long, requires = "all")]
        task: Option<String>,
    },
    /// Delete every dead letter.
    Purge,
}

/// Parse the process arguments, run the command, and report errors on stderr.
pub async fn main() -> ExitCode {
    if let Err(err) = init_tracing() {
        eprintln!("error: {}", crate::error::chain(&err));
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", crate::error::chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Like [`main`] with explicit arguments (the first is the program name).
pub async fn main_from<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|err| {
        Error::config("arguments", err.to_string(), "valid arguments (see --help)")
    })?;
    run(cli.command).await
}

/// Log to stderr, filtered by `RUST_LOG` (default `info`): as text, in colour only on a terminal
/// (and never with `NO_COLOR` set), or with `PSW_LOG_FORMAT=json` as one JSON object per line,
/// for log collectors. Does nothing if a subscriber is set already. A `PSW_LOG_FORMAT` of
/// another form is an error that names it; logs then go out as text.
pub fn init_tracing() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = std::env::var("PSW_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.trim() {
        "json" => {
            let _ = builder.json().try_init();
            Ok(())
        }
        "" | "text" => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let _ = builder.with_ansi(colour).try_init();
            Ok(())
        }
        other => {
            let _ = builder.with_ansi(false).try_init();
            Err(Error::config("PSW_LOG_FORMAT", other, "`text` or `json`"))
        }
    }
}

/// Run one command with the configuration from the environment.
pub async fn run(command: Command) -> Result<()> {
    run_with(command, &Setup::default()).await
}

type ConfigureWorker = Box<dyn Fn(WorkerBuilder) -> WorkerBuilder + Send + Sync>;
type ConfigureBeat = Box<dyn Fn(&mut Scheduler) -> Result<()> + Send + Sync>;

/// What an application adds to the workers and beats the standard commands make: shared state,
/// a dead-letter hook, schedules known only at run time.
#[derive(Default)]
pub struct Setup {
    client: Option<Client>,
    worker: Option<ConfigureWorker>,
    beat: Option<ConfigureBeat>,
}

impl Setup {
    /// Nothing added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run workers and beats on `client` instead of connecting from the configuration: the
    /// application's own parts (a health check reading [`Client::stats`]) then see the same
    /// broker, the in-process one included.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    async fn service_client(&self, config: &Config) -> Result<Client> {
        match &self.client {
            Some(client) => Ok(client.clone()),
            None => service_client(config).await,
        }
    }

    /// Pass each worker's builder through `configure` before it is built.
    pub fn worker<F>(mut self, configure: F) -> Self
    where
        F: Fn(WorkerBuilder) -> WorkerBuilder + Send + Sync + 'static,
    {
        self.worker = Some(Box::new(configure));
        self
    }

    /// Call `configure` on each scheduler once it is built (to [`Scheduler::add`] schedules).
    pub fn beat<F>(mut self, configure: F) -> Self
    where
        F: Fn(&mut Scheduler) -> Result<()> + Send + Sync + 'static,
    {
        self.beat = Some(Box::new(configure));
        self
    }

    fn scheduler(&self, client: &Client) -> Result<Scheduler> {
        let mut scheduler = Scheduler::builder(client).build()?;
        if let Some(configure) = &self.beat {
            configure(&mut scheduler)?;
        }
        Ok(scheduler)
    }
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("client", &self.client.is_some())
            .field("worker", &self.worker.is_some())
            .field("beat", &self.beat.is_some())
            .finish()
    }
}

/// Run one command with the configuration from the environment, with the application's
/// additions to workers and beats.
pub async fn run_with(command: Command, setup: &Setup) -> Result<()> {
    let mut config = Config::from_env()?;
    match command {
        Command::Dlq { action } => dlq(&shared_client(&config).await?, action).await,
        Command::Tasks => {
            print!("{}", task_table(&Registry::from_linked()?));
            Ok(())
        }
        Command::Worker {
            queues,
            concurrency,
            strict_priority,
            celery_queues,
        } => {
            if let Some(celery_queues) = celery_queues {
                for queue in &celery_queues {
                    crate::keys::validate_name("--celery-queues", queue)?;
                }
                config.celery_queues = celery_queues;
            }
            let client = setup.service_client(&config).await?;
            worker(&client, queues, concurrency, strict_priority, setup)?
                .run()
                .await
        }
        Command::Beat => {
            let client = setup.service_client(&config).await?;
            setup.scheduler(&client)?.run().await
        }
        Command::All {
            queues,
            concurrency,
            strict_priority,
        } => {
            let client = setup.service_client(&config).await?;
            let worker = worker(&client, queues, concurrency, strict_priority, setup)?;
            let scheduler = setup.scheduler(&client)?;
            // One signal stops both; either one ending stops the other.
            let stop = tokio_util::sync::CancellationToken::new();
            let signal = tokio::spawn({
                let stop = stop.clone();
                async move {
                    crate::process::shutdown_signal().await;
                    stop.cancel();
                }
            });
            let (worked, beat) = tokio::join!(
                async {
                    let outcome = worker.run_until(stop.cancelled()).await;
                    stop.cancel();
                    outcome
                },
                async {
                    let outcome = scheduler.run_until(stop.cancelled()).await;
                    stop.cancel();
                    outcome
                },
            );
            signal.abort();
            worked.and(beat)
        }
        Command::Dashboard { addr } => {
            let client = shared_client(&config).await?;
            let dashboard = crate::dashboard::Dashboard::bind(&client, addr.as_deref()).await?;
            dashboard
                .serve_until(crate::process::shutdown_signal())
                .await
        }
        Command::Stats { window } => {
            let window = parse_duration("--window", &window)?;
            let stats = shared_client(&config).await?.stats(window).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&stats).map_err(|err| Error::encode("stats", err))?
            );
            Ok(())
        }
        Command::Schedule { action } => {
            let client = shared_client(&config).await?;
            match action {
                ScheduleAction::Pause { name } => {
                    client.pause_schedule(&name).await?;
                    println!("paused {}", redact::printable(&name));
                }
                ScheduleAction::Resume { name } => {
                    client.resume_schedule(&name).await?;
                    println!("resumed {}", redact::printable(&name));
                }
                ScheduleAction::Run { name } => {
                    let handle = client.run_schedule(&name).await?;
                    println!("{}", handle.id());
                }
                ScheduleAction::Runs { name, limit } => {
                    for run in client.schedule_runs(&name, limit).await? {
                        println!(
                            "{}",
                            serde_json::to_string(&run)
                                .map_err(|err| Error::encode("a schedule run", err))?
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Schedules => {
            let client = Client::connect(&config).await?;
            let listings =
                crate::scheduler::listing::listings(&client, crate::envelope::now_ms(), 5).await?;
            print!("{}", schedule_table(&listings));
            Ok(())
        }
        Command::Enqueue {
            task,
            args,
            countdown,
            expires,
            queue,
            priority,
            wait,
        } => {
            let args: serde_json::Value = serde_json::from_str(&args).map_err(|err| {
                Error::config(
                    "--args",
                    args.clone(),
                    format!("a JSON array of the task's arguments ({err})"),
                )
            })?;
            if !args.is_array() {
                return Err(Error::config(
                    "--args",
                    args.to_string(),
                    "a JSON array of the task's arguments, like '[\"AAPL\", 3]'",
                ));
            }
            let mut options = EnqueueOptions::new();
            if let Some(countdown) = countdown {
                options = options.countdown(parse_duration("--countdown", &countdown)?);
            }
            if let Some(expires) = expires {
                options = options.expires(parse_duration("--expires", &expires)?);
            }
            if let Some(queue) = queue {
                options = options.queue(queue);
            }
            if let Some(priority) = priority {
                let level = crate::rules::parse_priority(&priority).map_err(|_| {
                    Error::config("--priority", priority.clone(), crate::rules::PRIORITY_FORM)
                })?;
                options = options.priority(level);
            }
            let wait = wait.map(|w| parse_duration("--wait", &w)).transpose()?;
            let client = shared_client(&config).await?;
            let handle = client
                .enqueue_by_name::<serde_json::Value>(&task, &args, options)
                .await?;
            println!("{}", handle.id());
            if let Some(timeout) = wait {
                let result = handle.wait(timeout).await?;
                println!("{result}");
            }
            Ok(())
        }
        Command::Unique { prefix, limit } => {
            let client = shared_client(&config).await?;
            let locks = client.unique_locks(&prefix, limit).await?;
            println!("{} unique lock(s)", locks.len());
            for lock in locks {
                let expires = lock.expires_in.map_or_else(
                    || "no expiry".to_owned(),
                    |left| {
                        format!(
                            "expires in {}",
                            humantime::format_duration(round_to_seconds(left))
                        )
                    },
                );
                // Keys come from producers: escaped, so a terminal shows them as they are.
                println!(
                    "{}  job {}  {expires}",
                    redact::printable(&lock.key),
                    redact::printable(&lock.job_id)
                );
            }
            Ok(())
        }
        Command::Cancel { id } => {
            let client = shared_client(&config).await?;
            client.cancel(&id).await?;
            println!("cancelled {id}");
            Ok(())
        }
        Command::Pause { queue } => {
            let client = shared_client(&config).await?;
            let changed = client.pause_queue(&queue).await?;
            println!(
                "{} {queue}",
                if changed { "paused" } else { "already paused:" }
            );
            Ok(())
        }
        Command::Resume { queue } => {
            let client = shared_client(&config).await?;
            let changed = client.resume_queue(&queue).await?;
            println!(
                "{} {queue}",
                if changed {
                    "resumed"
                } else {
                    "was not paused:"
                }
            );
            Ok(())
        }
        Command::Result { id } => {
            let client = shared_client(&config).await?;
            let Some(record) = client.record(&id).await? else {
                println!("{}", serde_json::json!({"id": id, "state": "PENDING"}));
                return Ok(());
            };
            let json = record.to_json()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("JSON values always serialize")
            );
            Ok(())
        }
    }
}

/// The client of a long-running service (worker, beat), which may run on the in-process broker.
async fn service_client(config: &Config) -> Result<Client> {
    match &config.redis_url {
        Some(url) => {
            tracing::info!(redis = %redact::url(url), namespace = %config.namespace, "connecting");
        }
        None => tracing::warn!(
            "REDIS_URL is not set: running on the in-process broker, which only sees jobs enqueued by this process"
        ),
    }
    Client::connect(config).await
}

fn worker(
    client: &Client,
    queues: Option<Vec<String>>,
    concurrency: Option<usize>,
    strict_priority: bool,
    setup: &Setup,
) -> Result<Worker> {
    let mut builder = Worker::builder(client);
    if let Some(configure) = &setup.worker {
        builder = configure(builder);
    }
    if let Some(queues) = queues {
        let (queues, weights) = parse_queue_list("--queues", &queues.join(","))?;
        builder = if weights.is_empty() {
            builder.queues(queues)
        } else {
            builder.weighted_queues(
                queues
                    .into_iter()
                    .map(|queue| {
                        let weight = weights.get(&queue).copied().unwrap_or(1);
                        (queue, weight)
                    })
                    .collect::<Vec<_>>(),
            )
        };
    }
    if strict_priority {
        builder = builder.strict_priority(true);
    }
    if let Some(concurrency) = concurrency {
        builder = builder.concurrency(concurrency);
    }
    builder.build()
}

async fn dlq(client: &Client, action: DlqAction) -> Result<()> {
    let dead = client.dead_letters();
    match action {
        DlqAction::List { limit } => {
            let stats = dead.stats().await?;
            println!(
                "{} dead letter(s){}",
                stats.len,
                if stats.trimmed > 0 {
                    format!(
                        ", {} older ones removed by the caps (PSW_DLQ_MAX_LEN, PSW_DLQ_MAX_BYTES)",
                        stats.trimmed
                    )
                } else {
                    String::new()
                }
            );
            // Every field but the entry id came from a producer or a task: escaped, so that
            // none can forge a line or send escape sequences to the terminal.
            for job in dead.list(limit).await? {
                println!(
                    "{}  {}  {}  {}  {}  {}",
                    job.entry_id,
                    job.reason,
                    redact::printable(&job.queue),
                    redact::printable(job.task.as_deref().unwrap_or("-")),
                    redact::printable(job.job_id.as_deref().unwrap_or("-")),
                    redact::printable(job.error.lines().next().unwrap_or(""))
                );
            }
            Ok(())
        }
        DlqAction::Show { entry } => {
            let job = dead
                .get(&entry)
                .await?
                .ok_or(Error::NotDeadLettered(entry))?;
            let json = job.to_json();
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("JSON values always serialize")
            );
            Ok(())
        }
        DlqAction::Replay { entry, all, task } => {
            if all {
                let report = dead.replay_all(task.as_deref()).await?;
                println!("replayed {} dead letter(s)", report.replayed);
                if report.truncated > 0 {
                    println!(
                        "left {} whose bytes were cut at the cap (they cannot be replayed)",
                        report.truncated
                    );
                }
                if report.unreadable > 0 {
                    println!(
                        "left {} whose bytes are not a job envelope",
                        report.unreadable
                    );
                }
            } else if let Some(entry) = entry {
                let id = dead.replay(&entry).await?;
                println!("{id}");
            }
            Ok(())
        }
        DlqAction::Purge => {
            println!("purged {} dead letter(s)", dead.purge().await?);
            Ok(())
        }
    }
}

/// A client on Redis: a job enqueued or looked up on this process's own in-process broker would
/// vanish with the process.
async fn shared_client(config: &Config) -> Result<Client> {
    if config.redis_url.is_none() {
        return Err(Error::config(
            "REDIS_URL",
            "",
            "the URL of the Redis the workers use, like redis://127.0.0.1:6379 (CELERY_BROKER_URL is read too)",
        ));
    }
    Client::connect(config).await
}

/// The registry as an aligned table.
fn task_table(registry: &Registry) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "QUEUE".to_owned(),
        "RETRIES".to_owned(),
        "BACKOFF".to_owned(),
        "TIMEOUT".to_owned(),
        "RESULT".to_owned(),
        "DEFINED AT".to_owned(),
    ]];
    for task in registry.iter() {
        let options = task.options();
        let backoff = &options.backoff;
        rows.push([
            task.name().to_owned(),
            options.queue.to_owned(),
            options.retries.to_string(),
            format!(
                "{} {}..{}{}",
                backoff.kind.as_str(),
                humantime::format_duration(backoff.base),
                humantime::format_duration(backoff.max),
                if backoff.jitter { " jitter" } else { "" }
            ),
            options.timeout.map_or("-".to_owned(), |t| {
                humantime::format_duration(t).to_string()
            }),
            if options.ignore_result {
                "ignored"
            } else {
                "kept"
            }
            .to_owned(),
            task.location(),
        ]);
    }
    let mut out = String::new();
    for line in aligned(&rows) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Rows as lines of left-aligned columns, two spaces apart.
fn aligned<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let widths: Vec<usize> = (0..N)
        .map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            line.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// The schedules as an aligned table, each row followed by its next fire times.
fn schedule_table(listings: &[crate::scheduler::listing::Listing]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "TASK".to_owned(),
        "SCHEDULE".to_owned(),
        "ZONE".to_owned(),
        "MISFIRE".to_owned(),
        "OVERLAP".to_owned(),
        "LAST RUN".to_owned(),
        "OUTCOME".to_owned(),
        "SKIPPED".to_owned(),
        "STATE".to_owned(),
    ]];
    for listing in listings {
        rows.push([
            listing.name.clone(),
            listing.task.clone(),
            listing.schedule.clone(),
            listing.zone.clone(),
            listing.misfire.clone(),
            listing.overlap.clone(),
            listing.last.clone().unwrap_or_else(|| "-".to_owned()),
            listing.outcome.clone(),
            listing.skipped.to_string(),
            if listing.paused { "paused" } else { "active" }.to_owned(),
        ]);
    }
    let mut out = String::new();
    for (i, line) in aligned(&rows).into_iter().enumerate() {
        out.push_str(&line);
        out.push('\n');
        if let Some(listing) = i.checked_sub(1).and_then(|i| listings.get(i)) {
            out.push_str(&format!("  next: {}\n", listing.next.join(", ")));
        }
    }
    out
}

/// `duration` to whole seconds, for people to read.
fn round_to_seconds(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(duration.as_secs())
}
