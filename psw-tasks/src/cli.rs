//! The standard subcommands for any binary that links tasks: `worker`, `enqueue`, `result`,
//! `tasks`. Configuration comes from the environment (see [`Config::from_env`]).
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     psw_tasks::cli::main().await
//! }
//! ```

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::parse_duration;
use crate::{Client, Config, EnqueueOptions, Error, Registry, Result, Worker};

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
        /// Queues to consume, comma-separated (default: every queue of the linked tasks).
        #[arg(long, value_delimiter = ',')]
        queues: Option<Vec<String>>,
        /// Jobs run at once (default: PSW_WORKER_CONCURRENCY, else 10).
        #[arg(long)]
        concurrency: Option<usize>,
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
        /// Send to this queue instead of the task's own.
        #[arg(long)]
        queue: Option<String>,
        /// Wait this long for the result and print it.
        #[arg(long)]
        wait: Option<String>,
    },
    /// Print a job's record as JSON.
    Result {
        /// The job id.
        id: String,
    },
    /// List the tasks linked into this binary, with their options.
    Tasks,
}

/// Parse the process arguments, run the command, and report errors on stderr.
pub async fn main() -> ExitCode {
    init_tracing();
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

/// Log to stderr, filtered by `RUST_LOG` (default `info`). Does nothing if a subscriber is set.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run one command with the configuration from the environment.
pub async fn run(command: Command) -> Result<()> {
    let config = Config::from_env()?;
    match command {
        Command::Tasks => {
            print!("{}", task_table(&Registry::from_linked()?));
            Ok(())
        }
        Command::Worker {
            queues,
            concurrency,
        } => {
            if config.redis_url.is_none() {
                tracing::warn!(
                    "REDIS_URL is not set: running on the in-process broker, which only sees jobs enqueued by this process"
                );
            }
            if let Some(url) = &config.redis_url {
                tracing::info!(redis = %crate::broker::redis::redact_url(url), namespace = %config.namespace, "connecting");
            }
            let client = Client::connect(&config).await?;
            let mut builder = Worker::builder(&client);
            if let Some(queues) = queues {
                builder = builder.queues(queues);
            }
            if let Some(concurrency) = concurrency {
                builder = builder.concurrency(concurrency);
            }
            builder.build()?.run().await
        }
        Command::Enqueue {
            task,
            args,
            countdown,
            queue,
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
            if let Some(queue) = queue {
                options = options.queue(queue);
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
        Command::Result { id } => {
            let client = shared_client(&config).await?;
            let Some(record) = client.record(&id).await? else {
                println!("{}", serde_json::json!({"id": id, "state": "PENDING"}));
                return Ok(());
            };
            let json = serde_json::json!({
                "id": record.id,
                "task": record.task,
                "state": record.state.as_str(),
                "attempt": record.attempt,
                "result": record.result_json()?,
                "errors": record.errors,
                "progress": record.progress,
                "created_ms": record.created_ms,
                "started_ms": record.started_ms,
                "finished_ms": record.finished_ms,
                "retry_at_ms": record.retry_at_ms,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("JSON values always serialize")
            );
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
    let widths: Vec<usize> = (0..7)
        .map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
