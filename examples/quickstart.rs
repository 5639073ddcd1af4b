//! Define two tasks, enqueue them, run a worker in this process and print the results.
//!
//! ```text
//! cargo run -p psw-tasks-examples --example quickstart
//! ```
//! Uses the Redis at `REDIS_URL` when it is set (in the namespace `quickstart`), else the
//! in-process broker, and says which on its first line.

use std::process::ExitCode;
use std::time::Duration;

use psw_tasks::{Client, Config, TaskContext, TaskError, Worker, task};
use serde::{Deserialize, Serialize};

/// Adds two numbers.
#[task(name = "quickstart.add")]
async fn add(a: i64, b: i64) -> Result<i64, TaskError> {
    Ok(a + b)
}

/// What `word_count` returns.
#[derive(Debug, Serialize, Deserialize)]
struct Counts {
    words: usize,
    longest: String,
}

/// Counts words line by line, reporting progress, retried with exponential backoff on failure.
#[task(
    name = "quickstart.word_count",
    retries = 3,
    backoff = "exp",
    backoff_base = "500ms"
)]
async fn word_count(ctx: TaskContext, lines: Vec<String>) -> Result<Counts, TaskError> {
    let mut words = 0;
    let mut longest = String::new();
    for (done, line) in lines.iter().enumerate() {
        for word in line.split_whitespace() {
            words += 1;
            if word.len() > longest.len() {
                longest = word.to_owned();
            }
        }
        ctx.set_progress(done as u64 + 1, lines.len() as u64, ())
            .await?;
    }
    Ok(Counts { words, longest })
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The error and each of its causes, once.
            let mut text = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(source) = cause {
                text.push_str(&format!(": {source}"));
                cause = source.source();
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> psw_tasks::Result<()> {
    psw_tasks::cli::init_tracing()?;
    let config = Config::from_env()?.with_namespace("quickstart");
    if config.redis_url.is_some() {
        println!("using the Redis at REDIS_URL, in the namespace `quickstart`");
    } else {
        println!(
            "REDIS_URL is not set: using the in-process broker (jobs live in this process; set \
             REDIS_URL=redis://127.0.0.1:6379 to run them on Redis)"
        );
    }
    let client = Client::connect(&config).await?;

    let sum = add::enqueue(&client, 2, 40).await?;
    let counts = word_count::enqueue(
        &client,
        vec![
            "background jobs for Rust services".to_owned(),
            "over Redis Streams".to_owned(),
        ],
    )
    .await?;

    let worker = Worker::builder(&client).concurrency(4).build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));

    println!("add(2, 40) = {}", sum.wait(Duration::from_secs(10)).await?);
    let counts = counts.wait(Duration::from_secs(10)).await?;
    println!(
        "word_count = {} words, longest {:?}",
        counts.words, counts.longest
    );

    let _ = stop.send(());
    running.await.expect("worker task")?;
    Ok(())
}
