//! Throughput of enqueue and drain against a real Redis (the test fixture's: `REDIS_URL`, else
//! 127.0.0.1:6379, else a server started for the run).
//!
//! ```text
//! cargo bench -p psw-tasks-benches --bench throughput -- [--jobs N] [--concurrency N]
//! ```
//! Prints a Markdown table. The full suite (bulk enqueue, latency, RSS, Redis ceilings) is
//! planned; this measures the basic rates.

use std::time::{Duration, Instant};

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, TaskError, Worker, task};

#[task(name = "bench.noop", retries = 0)]
async fn noop() -> Result<(), TaskError> {
    Ok(())
}

#[task(name = "bench.noop_ignored", retries = 0, ignore_result = true)]
async fn noop_ignored() -> Result<(), TaskError> {
    Ok(())
}

struct Args {
    jobs: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut parsed = Args {
        jobs: 50_000,
        concurrency: 100,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let mut value = |name: &str| -> usize {
            words
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a whole number"))
        };
        match word.as_str() {
            "--jobs" => parsed.jobs = value("--jobs"),
            "--concurrency" => parsed.concurrency = value("--concurrency"),
            // cargo bench passes --bench; anything else is a mistake worth saying.
            "--bench" => {}
            other => panic!("unknown flag {other}; known: --jobs N, --concurrency N"),
        }
    }
    parsed
}

fn rate(count: usize, elapsed: Duration) -> String {
    format!("{:.0}", count as f64 / elapsed.as_secs_f64())
}

async fn enqueue_sequential(client: &Client, count: usize, ignored: bool) -> Duration {
    let started = Instant::now();
    for _ in 0..count {
        if ignored {
            noop_ignored::enqueue(client).await.unwrap();
        } else {
            noop::enqueue(client).await.unwrap();
        }
    }
    started.elapsed()
}

async fn enqueue_concurrent(client: &Client, count: usize, ignored: bool) -> Duration {
    let started = Instant::now();
    let producers = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..producers {
        let client = client.clone();
        let share = count / producers + usize::from(p < count % producers);
        tasks.spawn(async move { enqueue_sequential(&client, share, ignored).await });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed()
}

async fn drain(client: &Client, count: usize, concurrency: usize) -> Duration {
    let worker = Worker::builder(client)
        .concurrency(concurrency)
        .build()
        .unwrap();
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    while (stats.succeeded() as usize) < count {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    elapsed
}

#[tokio::main]
async fn main() {
    let args = args();
    println!(
        "jobs {}, worker concurrency {}, Redis {}\n",
        args.jobs,
        args.concurrency,
        psw_tasks::testing::redis_url()
    );
    println!("| measurement | jobs | seconds | jobs/s |");
    println!("|---|---:|---:|---:|");
    for (label, ignored) in [("results stored", false), ("results off", true)] {
        let ns = TestNamespace::new("bench");
        let client = ns.client().await;
        let single = args.jobs.min(5_000);
        let elapsed = enqueue_sequential(&client, single, ignored).await;
        println!(
            "| enqueue, one at a time, awaited ({label}) | {single} | {:.2} | {} |",
            elapsed.as_secs_f64(),
            rate(single, elapsed)
        );
        let rest = args.jobs - single;
        let elapsed = enqueue_concurrent(&client, rest, ignored).await;
        println!(
            "| enqueue, 64 concurrent producers ({label}) | {rest} | {:.2} | {} |",
            elapsed.as_secs_f64(),
            rate(rest, elapsed)
        );
        let elapsed = drain(&client, args.jobs, args.concurrency).await;
        println!(
            "| drain a filled queue, no-op task ({label}) | {} | {:.2} | {} |",
            args.jobs,
            elapsed.as_secs_f64(),
            rate(args.jobs, elapsed)
        );
    }
}
