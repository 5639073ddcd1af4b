//! The dashboard under load: with 100,000 dead letters (five failure groups) and 1,000
//! schedules with their run history, each page's server time, and the Redis commands one
//! refresh of the dashboard's cache costs and one page view costs.
//!
//! ```text
//! cargo bench -p psw-tasks-benches --bench dashboard -- [--letters N] [--schedules N]
//!     [--views N]
//! ```
//! Redis is the test fixture's (`REDIS_URL`, else 127.0.0.1:6379, else one started for the
//! run); it should be otherwise idle, as the command counts are read from `INFO commandstats`.
//! Results are printed and written to `target/bench/dashboard.md`. Figures: `docs/dashboard.md`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, Dashboard, EnqueueOptions, Schedule, Scheduler, Worker};
use tokio::sync::oneshot;

#[derive(Debug, Parser)]
#[command(about = "psw-tasks dashboard benchmark")]
struct Args {
    /// Dead letters to fill the queue with.
    #[arg(long, default_value_t = 100_000)]
    letters: u64,
    /// Schedules, each fired every second for a while, so each has a run history.
    #[arg(long, default_value_t = 1_000)]
    schedules: usize,
    /// Loads of each page timed.
    #[arg(long, default_value_t = 20)]
    views: usize,
    /// Ignored: `cargo bench` passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Calls per command so far, from `INFO commandstats`.
async fn command_calls(redis: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Commands run between two readings, by name, without the `INFO` calls themselves.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, calls)| *calls > 0)
        .collect()
}

fn per(counts: &BTreeMap<String, u64>, runs: u64) -> String {
    let total: u64 = counts.values().sum();
    let parts: Vec<String> = counts
        .iter()
        .map(|(name, calls)| format!("{name} {:.1}", *calls as f64 / runs as f64))
        .collect();
    format!("{:.1} ({})", total as f64 / runs as f64, parts.join(", "))
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // Named through the library, so that its tasks are linked into this binary.
    let noop = psw_tasks_benches::task_name("noop", true);
    let ns = TestNamespace::new("bench-dashboard");
    let mut config = ns.config();
    config.dead_letter_cap = args.letters + 1_000;
    config.dead_letter_max_bytes = 4 << 30;
    let client = Client::connect(&config).await.unwrap();

    println!("filling {} dead letters ...", args.letters);
    let started = Instant::now();
    let worker = Worker::builder(&client).concurrency(64).build().unwrap();
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run_until(async {
        let _ = worker_stopped.await;
    }));
    for chunk in (0..args.letters).collect::<Vec<_>>().chunks(10_000) {
        client
            .enqueue_many_by_name::<(), _>(
                "bench.refuses",
                chunk.iter().map(|n| (*n,)),
                EnqueueOptions::new(),
            )
            .await
            .unwrap();
    }
    let letters = client.dead_letters();
    wait_for("the dead letters", Duration::from_secs(600), async || {
        letters.stats().await.unwrap().len >= args.letters
    })
    .await;
    println!("  in {:.1} s", started.elapsed().as_secs_f64());
    let kinds = letters.groups().await.unwrap().len();
    assert_eq!(kinds, 5, "the five failure groups of bench.refuses");

    println!(
        "{} schedules, each firing every second for 8 s ...",
        args.schedules
    );
    let mut scheduler = Scheduler::builder(&client)
        .task_schedules(false)
        .build()
        .unwrap();
    for n in 0..args.schedules {
        scheduler
            .add(
                &format!("s-{n}"),
                noop,
                Schedule::every(Duration::from_secs(1)).unwrap(),
                (serde_bytes::ByteBuf::new(),),
            )
            .unwrap();
    }
    let (stop_beat, beat_stopped) = oneshot::channel::<()>();
    let beat = tokio::spawn(scheduler.run_until(async {
        let _ = beat_stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _ = stop_beat.send(());
    beat.await.unwrap().unwrap();
    // The worker finishes what the beat sent and reports the runs with its heartbeat.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();
    let runs = client.schedule_runs("s-0", 100).await.unwrap().len();
    println!("  s-0 has {runs} runs");
    assert!(runs > 0, "the schedules ran");

    let dashboard = Dashboard::bind_with(
        &client,
        |name| (name == "PSW_DASHBOARD_REFRESH").then(|| "2s".to_owned()),
        Some("127.0.0.1:0"),
    )
    .await
    .unwrap();
    let base = format!("http://{}", dashboard.local_addr().unwrap());
    let (stop_dashboard, dashboard_stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(dashboard.serve_until(async {
        let _ = dashboard_stopped.await;
    }));
    let http = reqwest::Client::new();
    let mut redis = redis::Client::open(ns.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // Commands per refresh: the cache's own reads over ten cadences, nothing else running.
    // Its slow part (the day and week histories) is read once a minute, counted over 60 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = command_calls(&mut redis).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let refresh = delta(&before, &command_calls(&mut redis).await);

    let groups = letters.groups().await.unwrap();
    let middle = letters
        .page(None, (args.letters / 2) as usize)
        .await
        .unwrap()
        .pop()
        .map(|letter| letter.entry_id)
        .unwrap();
    let job = letters.list(1).await.unwrap()[0].job_id.clone().unwrap();
    let pages = [
        "/".to_owned(),
        "/queues".to_owned(),
        "/workers".to_owned(),
        "/tasks".to_owned(),
        "/tasks/bench.refuses".to_owned(),
        // The oldest letter's job: the page looks among the newest 5,000 and stops (worst case).
        format!("/jobs/{job}"),
        "/failures".to_owned(),
        format!("/failures?after={middle}"),
        format!("/failures?group={}", groups[groups.len() - 1].id),
        "/schedules".to_owned(),
        "/schedules/s-0".to_owned(),
        "/audit".to_owned(),
        "/api/failures".to_owned(),
        format!("/api/dead?after={middle}&limit=100"),
        "/metrics".to_owned(),
    ];
    let mut table = String::from(
        "| page | server time min / median / max (ms) | Redis commands per view |\n|---|---|---|\n",
    );
    for path in &pages {
        let mut times = Vec::new();
        let before = command_calls(&mut redis).await;
        let window = Instant::now();
        for _ in 0..args.views {
            let start = Instant::now();
            let response = http.get(format!("{base}{path}")).send().await.unwrap();
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            let _ = response.bytes().await.unwrap();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        let mut commands = delta(&before, &command_calls(&mut redis).await);
        // The cache refreshes on its own meanwhile: take off what it runs in as long (its
        // rate per second, measured above over 60 s).
        let seconds = window.elapsed().as_secs_f64();
        for (name, calls) in commands.iter_mut() {
            let cache = refresh.get(name).copied().unwrap_or(0) as f64 * seconds / 60.0;
            *calls = (*calls as f64 - cache).max(0.0).round() as u64;
        }
        commands.retain(|_, calls| *calls > 0);
        times.sort_by(f64::total_cmp);
        let line = format!(
            "| `{path}` | {:.1} / {:.1} / {:.1} | {} |\n",
            times[0],
            times[times.len() / 2],
            times[times.len() - 1],
            per(&commands, args.views as u64)
        );
        print!("{line}");
        table.push_str(&line);
    }
    let _ = stop_dashboard.send(());
    served.await.unwrap().unwrap();
    let summary = format!(
        "# Dashboard benchmark\n\n{} dead letters in {} groups, {} schedules ({runs} runs of s-0), {} views per page.\n\nRedis commands of the cache per minute (30 refreshes at 2 s, one slow read): {}\n\nPer view, the cache's share over the same time taken off.\n\n{table}",
        args.letters,
        groups.len(),
        args.schedules,
        args.views,
        per(&refresh, 1),
    );
    println!("\n{summary}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("dashboard.md"), summary).unwrap();
}
