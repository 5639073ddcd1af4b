//! A service that only enqueues: it links no task and names them on the wire.
//!
//! Start a worker that has the task, then run the producer:
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p psw-cron-app -- worker &
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p psw-tasks-examples --example producer_only
//! ```

use std::time::Duration;

use psw_tasks::{Client, Config, EnqueueOptions, Error};

#[tokio::main]
async fn main() -> psw_tasks::Result<()> {
    let config = Config::from_env()?;
    if config.redis_url.is_none() {
        return Err(Error::Config {
            variable: "REDIS_URL".into(),
            value: String::new(),
            expected: "the URL of the Redis the workers use, like redis://127.0.0.1:6379".into(),
        });
    }
    let client = Client::connect(&config).await?;

    // The argument list is a tuple (a MessagePack array on the wire); the output type is the
    // producer's choice of how to read the result.
    let handle = client
        .enqueue_by_name::<String>(
            "psw_cron.ping",
            &("from producer_only",),
            EnqueueOptions::new().header("source", "producer_only"),
        )
        .await?;
    println!("enqueued psw_cron.ping as job {}", handle.id());
    match handle.wait(Duration::from_secs(10)).await {
        Ok(answer) => println!("result: {answer}"),
        Err(Error::Timeout { .. }) => {
            println!("no result within 10 s: is a worker (psw-cron-app worker) running?");
        }
        Err(err) => return Err(err),
    }
    Ok(())
}
