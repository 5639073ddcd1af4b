//! psw-cron-app: the PSW5 background jobs, run with psw-tasks.
//!
//! The real jobs (stock prices, portfolio values, reports, cleanup, alerts) come with their
//! own issue; for now the binary carries one demo task and the standard subcommands of
//! `psw_tasks::cli` (`worker`, `beat`, `all`, `enqueue`, `result`, `tasks`, `schedules`,
//! `dlq`).

use std::process::ExitCode;

use psw_tasks::{TaskContext, TaskError, task};

/// Answers with the message, to check a deployment end to end:
/// `psw-cron-app enqueue psw_cron.ping --args '["hello"]' --wait 10s`.
#[task(name = "psw_cron.ping", retries = 0)]
async fn ping(ctx: TaskContext, message: String) -> Result<String, TaskError> {
    Ok(format!("pong: {message} (job {})", ctx.job_id()))
}

#[tokio::main]
async fn main() -> ExitCode {
    psw_tasks::cli::main().await
}
