//! Throughput, latency and memory of psw-tasks against a real Redis, next to what Redis itself
//! does on the same machine.
//!
//! ```text
//! cargo bench -p psw-tasks-benches --bench throughput -- [--jobs N] [--concurrency N]
//!     [--workers N] [--payload BYTES] [--results on|off|both] [--task noop|sleep|cpu]
//!     [--latency-seconds S] [--scaling] [--history-ab PAIRS] [--cluster-queues 1,2,3]
//! ```
//! Redis is the test fixture's (`REDIS_URL`, else 127.0.0.1:6379, else one started for the run).
//! Workers are `bench-worker` processes, so their memory is measured alone. Results are printed
//! and written as Markdown and JSON to `target/bench/`. Method: `docs/performance.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, EnqueueOptions};
use psw_tasks_benches::{now_us, task_name};
use serde::Serialize;
use serde_bytes::ByteBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum ResultsMode {
    On,
    Off,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Noop,
    Sleep,
    Cpu,
    /// A no-op under a rate limit it never reaches (1,000,000/s).
    Limited,
    /// A no-op under a 5,000/s rate limit.
    Throttled,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Noop => "noop",
            Kind::Sleep => "sleep",
            Kind::Cpu => "cpu",
            Kind::Limited => "limited",
            Kind::Throttled => "throttled",
        }
    }
}

#[derive(Debug, Clone, Parser, Serialize)]
#[command(about = "psw-tasks throughput, latency and memory benchmark")]
struct Args {
    /// Jobs per drain, bulk enqueue and end-to-end run.
    #[arg(long, default_value_t = 200_000)]
    jobs: usize,
    /// Concurrency of each worker process.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Bytes of payload per job.
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Store results or not.
    #[arg(long, value_enum, default_value_t = ResultsMode::Both)]
    results: ResultsMode,
    /// What each job does.
    #[arg(long = "task", value_enum, default_value_t = Kind::Noop)]
    kind: Kind,
    /// Seconds of the steady 1,000 jobs/s latency run (0 skips it).
    #[arg(long, default_value_t = 5)]
    latency_seconds: u64,
    /// Run the scaling matrix (100k/300k/1M jobs x 1/2 workers x concurrency 1/10/100/1000,
    /// drain only, results off) instead of the full suite.
    #[arg(long)]
    scaling: bool,
    /// Drain only, PAIRS times with the metrics history on and PAIRS times off, alternating,
    /// for each results mode, instead of the full suite: the history's cost side by side.
    #[arg(long, value_name = "PAIRS")]
    history_ab: Option<usize>,
    /// Drain only, on the test Redis Cluster (three masters), with the jobs spread evenly over
    /// each of these numbers of queues, instead of the full suite: the rate and the commands
    /// each master ran.
    #[arg(long, value_name = "COUNTS", value_delimiter = ',')]
    cluster_queues: Option<Vec<usize>>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One measured rate.
#[derive(Debug, Clone, Serialize)]
struct Rate {
    name: String,
    jobs: usize,
    seconds: f64,
    per_second: f64,
    /// The rate divided by the matching Redis ceiling, when there is one.
    of_ceiling: Option<f64>,
}

impl Rate {
    fn new(name: impl Into<String>, jobs: usize, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Rate {
            name: name.into(),
            jobs,
            seconds,
            per_second: jobs as f64 / seconds,
            of_ceiling: None,
        }
    }

    fn against(mut self, ceiling: f64) -> Self {
        self.of_ceiling = Some(self.per_second / ceiling);
        self
    }
}

#[derive(Debug, Default, Serialize)]
struct Ceilings {
    redis_benchmark_xadd_p1: Option<f64>,
    redis_benchmark_xadd_p64: Option<f64>,
    bare_xadd_awaited: f64,
    bare_xadd_awaited_us: f64,
    bare_xadd_batches_of_100: f64,
    bare_xreadgroup_100_xack: f64,
    /// Redis CPU per entry read and acknowledged by the bare client: Redis's share of a job
    /// when nothing else is done with it.
    bare_xreadgroup_redis_cpu_us: f64,
}

#[derive(Debug, Default, Serialize)]
struct Drain {
    rate: Option<Rate>,
    worker_peak_rss_mib: Vec<f64>,
    /// Worker RSS at 10 %, 50 % and 90 % of the drain: flat means constant cost per job.
    worker_rss_mib_by_progress: Vec<(u32, f64)>,
    redis_commands_per_job: f64,
    redis_command_counts_per_job: BTreeMap<String, f64>,
    /// CPU time per job during the drain: the worker processes' and the Redis server's. On
    /// two shared cores their sum bounds the rate.
    worker_cpu_us_per_job: f64,
    redis_cpu_us_per_job: f64,
}

#[derive(Debug, Default, Serialize)]
struct ModeReport {
    results: bool,
    enqueue_awaited: Option<Rate>,
    enqueue_awaited_us: f64,
    enqueue_awaited_vs_bare_xadd: f64,
    enqueue_concurrent: Option<Rate>,
    enqueue_bulk: Option<Rate>,
    redis_bytes_per_queued_job: f64,
    drain: Drain,
    end_to_end: Option<Rate>,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    jobs: usize,
    rate_per_second: f64,
    queue_wait_us: BTreeMap<String, u64>,
    total_us: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    args: Args,
    machine: String,
    redis_version: String,
    ceilings: Ceilings,
    modes: Vec<ModeReport>,
    latency: Option<Latency>,
}

/// A raw connection for measurements the library does not offer (INFO, XLEN, ceilings).
struct Raw {
    conn: redis::aio::MultiplexedConnection,
}

impl Raw {
    async fn connect() -> Raw {
        let client = redis::Client::open(psw_tasks::testing::redis_url()).unwrap();
        Raw {
            conn: client.get_multiplexed_async_connection().await.unwrap(),
        }
    }

    async fn info(&mut self, section: &str) -> String {
        info(&mut self.conn, section).await
    }

    async fn used_memory(&mut self) -> u64 {
        let info = self.info("memory").await;
        field(&info, "used_memory:").parse().unwrap()
    }

    /// Calls per command since the server started.
    async fn command_calls(&mut self) -> BTreeMap<String, u64> {
        self.info("commandstats")
            .await
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }

    async fn xlen(&mut self, key: &str) -> u64 {
        redis::cmd("XLEN")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }
}

async fn info(conn: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap()
}

/// CPU seconds the server has used (user + system, all its threads).
async fn server_cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info = info(conn, "cpu").await;
    ["used_cpu_user:", "used_cpu_sys:"]
        .iter()
        .map(|name| field(&info, name).parse::<f64>().unwrap_or(0.0))
        .sum()
}

fn field<'a>(info: &'a str, name: &str) -> &'a str {
    info.lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or("0")
        .trim()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `VmHWM` (peak) or `VmRSS` (now) of a process, in KiB.
fn memory_kib(pid: u32, field_name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field_name)
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> f64 {
    static TICKS_PER_SECOND: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces: fields are counted after its closing parenthesis,
    // where utime and stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|n| n.parse::<f64>().ok())
        .sum();
    ticks / *TICKS_PER_SECOND
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn payload(bytes: usize) -> ByteBuf {
    ByteBuf::from(vec![7u8; bytes])
}

struct Workers {
    children: Vec<Child>,
}

impl Workers {
    /// Start `count` worker processes; `history` turns their metrics history on or off.
    fn start(ns: &TestNamespace, count: usize, concurrency: usize, history: bool) -> Workers {
        Workers::start_on(ns, count, concurrency, history, "default")
    }

    /// As [`Workers::start`], on `queues` (`PSW_QUEUES`).
    fn start_on(
        ns: &TestNamespace,
        count: usize,
        concurrency: usize,
        history: bool,
        queues: &str,
    ) -> Workers {
        let children = (0..count)
            .map(|_| {
                // PSW_BENCH_WORKER_WRAPPER runs each worker under a profiler, like
                // "perf record -e cpu-clock -g -o /tmp/worker.perf --".
                let wrapper = std::env::var("PSW_BENCH_WORKER_WRAPPER").unwrap_or_default();
                let mut words = wrapper.split_whitespace();
                let mut command = match words.next() {
                    Some(program) => {
                        let mut command = Command::new(program);
                        command.args(words).arg(env!("CARGO_BIN_EXE_bench-worker"));
                        command
                    }
                    None => Command::new(env!("CARGO_BIN_EXE_bench-worker")),
                };
                command
                    .arg("worker")
                    .env("REDIS_URL", ns.url())
                    .env("PSW_NAMESPACE", ns.name())
                    .env("PSW_WORKER_CONCURRENCY", concurrency.to_string())
                    .env("PSW_QUEUES", queues)
                    .env("PSW_METRICS_HISTORY", if history { "on" } else { "off" })
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("start bench-worker")
            })
            .collect();
        Workers { children }
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    fn stop(mut self) {
        for child in &self.children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Wait until a worker runs jobs: a blocked XREADGROUP does not show its consumer in XINFO
/// on Redis 7.0, so ask a job instead.
async fn wait_for_worker(client: &Client) {
    client
        .enqueue_by_name::<u64>("bench.stamp", &(now_us(),), EnqueueOptions::new())
        .await
        .unwrap()
        .wait(Duration::from_secs(30))
        .await
        .expect("a worker answers within 30 s");
}

/// Poll the stream until it is empty (every entry acknowledged and deleted), sampling worker
/// memory along the way. Returns the time from the first job taken to the last settled.
async fn wait_drained(
    raw: &mut Raw,
    stream: &str,
    jobs: u64,
    pids: &[u32],
    rss: &mut Vec<(u32, f64)>,
) -> (Duration, u64) {
    let bar = bar(jobs, "drain");
    let mut polls = 0u64;
    let mut started: Option<Instant> = None;
    let mut marks = vec![10u32, 50, 90];
    loop {
        let left = raw.xlen(stream).await;
        polls += 1;
        if started.is_none() && left < jobs {
            started = Some(Instant::now());
        }
        let done = jobs - left.min(jobs);
        bar.set_position(done);
        if let Some(&mark) = marks.first()
            && done * 100 >= u64::from(mark) * jobs
        {
            let kib: u64 = pids.iter().map(|&pid| memory_kib(pid, "VmRSS:")).sum();
            rss.push((mark, mib(kib)));
            marks.remove(0);
        }
        if left == 0 {
            bar.finish_and_clear();
            let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
            return (elapsed, polls);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn redis_benchmark(key: &str, pipeline: usize, requests: usize) -> Option<f64> {
    let url = psw_tasks::testing::redis_url();
    let hostport = url.trim_start_matches("redis://");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "6379"));
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            host,
            "-p",
            port.trim_end_matches('/'),
            "-c",
            "1",
            "-q",
        ])
        .args(["-n", &requests.to_string(), "-P", &pipeline.to_string()])
        .args(["XADD", key, "*", "job", "0123456789abcdef"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "XADD ...: 74850.30 requests per second, p50=..." (the last \r-separated update).
    let last = text.rsplit('\r').next().unwrap_or(&text);
    last.split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

async fn ceilings(raw: &mut Raw, ns: &TestNamespace) -> Ceilings {
    let key = format!("{{{}}}:ceiling", ns.name());
    let mut ceilings = Ceilings {
        redis_benchmark_xadd_p1: redis_benchmark(&key, 1, 100_000),
        redis_benchmark_xadd_p64: redis_benchmark(&key, 64, 1_000_000),
        ..Ceilings::default()
    };
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw.conn)
        .await
        .unwrap();

    // The same client library and runtime as psw-tasks, without psw-tasks.
    let conn = &mut raw.conn;
    let count = 10_000;
    let started = Instant::now();
    for _ in 0..count {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("job")
            .arg(&b"0123456789abcdef"[..])
            .query_async(conn)
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    ceilings.bare_xadd_awaited = count as f64 / elapsed.as_secs_f64();
    ceilings.bare_xadd_awaited_us = elapsed.as_secs_f64() * 1e6 / count as f64;

    let count = 300_000;
    let started = Instant::now();
    for _ in 0..count / 100 {
        let mut pipe = redis::pipe();
        for _ in 0..100 {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("job")
                .arg(&b"0123456789abcdef"[..])
                .ignore();
        }
        pipe.exec_async(conn).await.unwrap();
    }
    ceilings.bare_xadd_batches_of_100 = count as f64 / started.elapsed().as_secs_f64();

    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .query_async(conn)
        .await
        .unwrap();
    let total: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(conn)
        .await
        .unwrap();
    let cpu_before = server_cpu_seconds(conn).await;
    let started = Instant::now();
    let mut read = 0u64;
    while read < total {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(conn)
            .await
            .unwrap();
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids.into_iter().map(|id| id.id))
            .collect();
        if ids.is_empty() {
            break;
        }
        read += ids.len() as u64;
        let _: u64 = redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&ids)
            .query_async(conn)
            .await
            .unwrap();
    }
    ceilings.bare_xreadgroup_100_xack = read as f64 / started.elapsed().as_secs_f64();
    ceilings.bare_xreadgroup_redis_cpu_us =
        (server_cpu_seconds(conn).await - cpu_before) * 1e6 / read.max(1) as f64;
    let _: () = redis::cmd("DEL").arg(&key).query_async(conn).await.unwrap();
    ceilings
}

async fn enqueue_awaited(client: &Client, task: &str, count: usize, bytes: usize) -> Duration {
    let args = (payload(bytes),);
    let started = Instant::now();
    for _ in 0..count {
        client
            .enqueue_by_name::<()>(task, &args, EnqueueOptions::new())
            .await
            .unwrap();
    }
    started.elapsed()
}

async fn enqueue_concurrent(
    client: &Client,
    task: &'static str,
    count: usize,
    bytes: usize,
) -> Duration {
    let producers = 64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..producers {
        let client = client.clone();
        let share = count / producers + usize::from(p < count % producers);
        tasks.spawn(async move { enqueue_awaited(&client, task, share, bytes).await });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed()
}

async fn enqueue_bulk(client: &Client, task: &str, count: usize, bytes: usize) -> Duration {
    let bar = bar(count as u64, "bulk enqueue");
    let chunk = 10_000;
    let started = Instant::now();
    let mut left = count;
    while left > 0 {
        let n = left.min(chunk);
        let args = (0..n).map(|_| (payload(bytes),));
        client
            .enqueue_many_by_name::<(), _>(task, args, EnqueueOptions::new())
            .await
            .unwrap();
        left -= n;
        bar.inc(n as u64);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    elapsed
}

async fn run_mode(args: &Args, results: bool, ceilings: &Ceilings) -> ModeReport {
    let ns = TestNamespace::new("bench");
    let client = ns.client().await;
    let mut raw = Raw::connect().await;
    let task = task_name(args.kind.name(), results);
    let stream = ns.stream_key("default");
    let label = if results {
        "results stored"
    } else {
        "results off"
    };
    let mut report = ModeReport {
        results,
        ..ModeReport::default()
    };

    // Producers, with no worker running: the queue only fills.
    let awaited = args.jobs.min(10_000);
    let elapsed = enqueue_awaited(&client, task, awaited, args.payload).await;
    report.enqueue_awaited_us = elapsed.as_secs_f64() * 1e6 / awaited as f64;
    report.enqueue_awaited_vs_bare_xadd = report.enqueue_awaited_us / ceilings.bare_xadd_awaited_us;
    report.enqueue_awaited = Some(
        Rate::new(
            format!("enqueue, one at a time, awaited ({label})"),
            awaited,
            elapsed,
        )
        .against(ceilings.bare_xadd_awaited),
    );
    let concurrent = args.jobs.min(100_000);
    let elapsed = enqueue_concurrent(&client, task, concurrent, args.payload).await;
    report.enqueue_concurrent = Some(Rate::new(
        format!("enqueue, 64 concurrent producers ({label})"),
        concurrent,
        elapsed,
    ));
    // Start the drain from a queue of exactly `jobs`.
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut raw.conn)
        .await
        .unwrap();

    let memory_before = raw.used_memory().await;
    let elapsed = enqueue_bulk(&client, task, args.jobs, args.payload).await;
    report.redis_bytes_per_queued_job =
        (raw.used_memory().await.saturating_sub(memory_before)) as f64 / args.jobs as f64;
    report.enqueue_bulk = Some(
        Rate::new(
            format!("enqueue_many, pipelined ({label})"),
            args.jobs,
            elapsed,
        )
        .against(ceilings.bare_xadd_batches_of_100),
    );

    // Drain the filled queue with worker processes.
    let calls_before = raw.command_calls().await;
    let redis_cpu_before = server_cpu_seconds(&mut raw.conn).await;
    let workers = Workers::start(&ns, args.workers, args.concurrency, true);
    let pids = workers.pids();
    let (elapsed, polls) = wait_drained(
        &mut raw,
        &stream,
        args.jobs as u64,
        &pids,
        &mut report.drain.worker_rss_mib_by_progress,
    )
    .await;
    let calls_after = raw.command_calls().await;
    let jobs = args.jobs as f64;
    report.drain.redis_cpu_us_per_job =
        (server_cpu_seconds(&mut raw.conn).await - redis_cpu_before) * 1e6 / jobs;
    report.drain.worker_cpu_us_per_job = pids
        .iter()
        .map(|&pid| process_cpu_seconds(pid))
        .sum::<f64>()
        * 1e6
        / jobs;
    report.drain.worker_peak_rss_mib = pids
        .iter()
        .map(|&pid| mib(memory_kib(pid, "VmHWM:")))
        .collect();
    let mut per_job = BTreeMap::new();
    let mut total = 0.0;
    for (command, after) in &calls_after {
        let mut delta = after - calls_before.get(command).copied().unwrap_or(0);
        // Leave out the benchmark's own polling and INFO calls.
        if command == "xlen" {
            delta = delta.saturating_sub(polls);
        }
        if command == "info" || delta == 0 {
            continue;
        }
        let value = delta as f64 / args.jobs as f64;
        total += value;
        per_job.insert(command.clone(), value);
    }
    report.drain.redis_commands_per_job = total;
    report.drain.redis_command_counts_per_job = per_job;
    report.drain.rate = Some(
        Rate::new(
            format!(
                "drain, {} worker(s) x concurrency {} ({label})",
                args.workers, args.concurrency
            ),
            args.jobs,
            elapsed,
        )
        .against(ceilings.bare_xreadgroup_100_xack),
    );

    // Produce and consume at once: the workers are still running (they just drained).
    let producer = {
        let client = client.clone();
        let jobs = args.jobs;
        let bytes = args.payload;
        tokio::spawn(async move { enqueue_bulk(&client, task, jobs, bytes).await })
    };
    let started = Instant::now();
    producer.await.unwrap();
    let mut ignored = Vec::new();
    let _ = wait_drained(&mut raw, &stream, 0, &[], &mut ignored).await;
    report.end_to_end = Some(Rate::new(
        format!("produce and consume at once ({label})"),
        args.jobs,
        started.elapsed(),
    ));
    workers.stop();
    report
}

async fn run_latency(args: &Args) -> Latency {
    let ns = TestNamespace::new("latency");
    let client = ns.client().await;
    let workers = Workers::start(&ns, 1, args.concurrency, true);
    wait_for_worker(&client).await;

    let rate = 1_000u64;
    let jobs = (args.latency_seconds * rate) as usize;
    let bar = bar(jobs as u64, "latency at 1,000/s");
    let mut waits = tokio::task::JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..jobs {
        ticks.tick().await;
        let enqueued = now_us();
        let handle = client
            .enqueue_by_name::<u64>("bench.stamp", &(enqueued,), EnqueueOptions::new())
            .await
            .unwrap();
        waits.spawn(async move {
            let started = handle.wait(Duration::from_secs(30)).await.unwrap();
            (
                started.saturating_sub(enqueued),
                now_us().saturating_sub(enqueued),
            )
        });
        bar.inc(1);
    }
    let mut queue_wait = Histogram::<u64>::new(3).unwrap();
    let mut total = Histogram::<u64>::new(3).unwrap();
    while let Some(outcome) = waits.join_next().await {
        let (wait_us, total_us) = outcome.unwrap();
        queue_wait.record(wait_us.max(1)).unwrap();
        total.record(total_us.max(1)).unwrap();
    }
    bar.finish_and_clear();
    workers.stop();
    let percentiles = |h: &Histogram<u64>| {
        [
            ("p50", 50.0),
            ("p90", 90.0),
            ("p99", 99.0),
            ("p99.9", 99.9),
            ("max", 100.0),
        ]
        .into_iter()
        .map(|(name, q)| (name.to_owned(), h.value_at_quantile(q / 100.0)))
        .collect()
    };
    Latency {
        jobs,
        rate_per_second: rate as f64,
        queue_wait_us: percentiles(&queue_wait),
        total_us: percentiles(&total),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn fmt_rate(rate: &Option<Rate>) -> String {
    match rate {
        Some(rate) => {
            let ceiling = rate.of_ceiling.map_or(String::new(), |c| {
                format!(" ({:.0} % of ceiling)", c * 100.0)
            });
            format!(
                "| {} | {} | {:.2} | {:.0}{ceiling} |",
                rate.name, rate.jobs, rate.seconds, rate.per_second
            )
        }
        None => String::new(),
    }
}

fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let a = &report.args;
    out.push_str(&format!(
        "Machine: {}; Redis {} on loopback. Jobs {}, task `{}`, payload {} B, {} worker process(es) x concurrency {}.\n\n",
        report.machine, report.redis_version, a.jobs, a.kind.name(), a.payload, a.workers, a.concurrency
    ));
    let c = &report.ceilings;
    out.push_str("| ceiling | ops/s |\n|---|---:|\n");
    if let Some(v) = c.redis_benchmark_xadd_p1 {
        out.push_str(&format!(
            "| redis-benchmark XADD, 1 client, no pipeline | {v:.0} |\n"
        ));
    }
    if let Some(v) = c.redis_benchmark_xadd_p64 {
        out.push_str(&format!(
            "| redis-benchmark XADD, 1 client, pipeline 64 | {v:.0} |\n"
        ));
    }
    out.push_str(&format!(
        "| bare redis-rs XADD awaited one at a time | {:.0} ({:.1} µs each) |\n",
        c.bare_xadd_awaited, c.bare_xadd_awaited_us
    ));
    out.push_str(&format!(
        "| bare redis-rs XADD, batches of 100 | {:.0} |\n",
        c.bare_xadd_batches_of_100
    ));
    out.push_str(&format!(
        "| bare redis-rs XREADGROUP COUNT 100 + XACK | {:.0} (Redis CPU {:.2} µs per entry) |\n\n",
        c.bare_xreadgroup_100_xack, c.bare_xreadgroup_redis_cpu_us
    ));
    out.push_str("| measurement | jobs | seconds | jobs/s |\n|---|---:|---:|---:|\n");
    for mode in &report.modes {
        for rate in [
            &mode.enqueue_awaited,
            &mode.enqueue_concurrent,
            &mode.enqueue_bulk,
            &mode.drain.rate,
            &mode.end_to_end,
        ] {
            out.push_str(&fmt_rate(rate));
            out.push('\n');
        }
    }
    out.push_str("\n| results | awaited enqueue vs bare XADD | Redis bytes per queued job | Redis commands per job (drain) | CPU µs per job in the drain: worker / Redis | worker peak RSS MiB | worker RSS MiB at 10/50/90 % |\n|---|---:|---:|---:|---:|---:|---|\n");
    for mode in &report.modes {
        let rss: Vec<String> = mode
            .drain
            .worker_rss_mib_by_progress
            .iter()
            .map(|(_, m)| format!("{m:.1}"))
            .collect();
        let peak: Vec<String> = mode
            .drain
            .worker_peak_rss_mib
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect();
        out.push_str(&format!(
            "| {} | {:.2}x ({:.1} µs) | {:.0} | {:.2} | {:.2} / {:.2} | {} | {} |\n",
            if mode.results { "on" } else { "off" },
            mode.enqueue_awaited_vs_bare_xadd,
            mode.enqueue_awaited_us,
            mode.redis_bytes_per_queued_job,
            mode.drain.redis_commands_per_job,
            mode.drain.worker_cpu_us_per_job,
            mode.drain.redis_cpu_us_per_job,
            peak.join(", "),
            rss.join(" / "),
        ));
    }
    for mode in &report.modes {
        let commands: Vec<String> = mode
            .drain
            .redis_command_counts_per_job
            .iter()
            .map(|(name, n)| format!("{name} {n:.3}"))
            .collect();
        out.push_str(&format!(
            "\nCommands per job, results {}: {}\n",
            if mode.results { "on" } else { "off" },
            commands.join(", ")
        ));
    }
    if let Some(latency) = &report.latency {
        out.push_str(&format!(
            "\nLatency at a steady {:.0} jobs/s ({} jobs, results on), µs:\n\n| | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|\n",
            latency.rate_per_second, latency.jobs
        ));
        for (name, h) in [
            ("enqueue to start", &latency.queue_wait_us),
            ("enqueue to result seen by the producer", &latency.total_us),
        ] {
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                h["p50"], h["p90"], h["p99"], h["p99.9"], h["max"]
            ));
        }
    }
    out
}

fn output_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_outputs(stem: &str, markdown: &str, json: &impl Serialize) {
    let dir = output_dir();
    std::fs::write(dir.join(format!("{stem}.md")), markdown).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(json).unwrap(),
    )
    .unwrap();
    eprintln!(
        "written: {}",
        dir.join(format!("{stem}.{{md,json}}")).display()
    );
}

async fn redis_version(raw: &mut Raw) -> String {
    field(&raw.info("server").await, "redis_version:").to_owned()
}

async fn scaling(args: &Args) {
    let mut rows = Vec::new();
    let mut out = String::from(
        "| jobs | worker processes | concurrency | seconds | jobs/s | peak RSS MiB (per worker) | commands/job |\n|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for jobs in [100_000, 300_000, 1_000_000] {
        for workers in [1, 2] {
            for concurrency in [1, 10, 100, 1000] {
                let run = Args {
                    jobs,
                    workers,
                    concurrency,
                    ..args.clone()
                };
                let report = drain_only(&run, false, true).await;
                let rate = report.rate.as_ref().unwrap();
                let peak: Vec<String> = report
                    .worker_peak_rss_mib
                    .iter()
                    .map(|m| format!("{m:.1}"))
                    .collect();
                let line = format!(
                    "| {jobs} | {workers} | {concurrency} | {:.2} | {:.0} | {} | {:.2} |\n",
                    rate.seconds,
                    rate.per_second,
                    peak.join(", "),
                    report.redis_commands_per_job
                );
                print!("{line}");
                out.push_str(&line);
                rows.push(((jobs, workers, concurrency), report));
            }
        }
    }
    write_outputs("scaling", &out, &rows);
}

/// Fill and drain only: the unit of the scaling matrix (results off, history on) and of the
/// history's side-by-side runs.
async fn drain_only(args: &Args, results: bool, history: bool) -> Drain {
    let ns = TestNamespace::new("scaling");
    let client = ns.client().await;
    let mut raw = Raw::connect().await;
    let stream = ns.stream_key("default");
    let task = task_name(args.kind.name(), results);
    enqueue_bulk(&client, task, args.jobs, args.payload).await;
    let calls_before = raw.command_calls().await;
    let workers = Workers::start(&ns, args.workers, args.concurrency, history);
    let pids = workers.pids();
    let mut drain = Drain::default();
    let (elapsed, polls) = wait_drained(
        &mut raw,
        &stream,
        args.jobs as u64,
        &pids,
        &mut drain.worker_rss_mib_by_progress,
    )
    .await;
    let calls_after = raw.command_calls().await;
    drain.worker_peak_rss_mib = pids
        .iter()
        .map(|&pid| mib(memory_kib(pid, "VmHWM:")))
        .collect();
    let commands: u64 = calls_after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, after)| after - calls_before.get(name).copied().unwrap_or(0))
        .sum::<u64>()
        .saturating_sub(polls);
    drain.redis_commands_per_job = commands as f64 / args.jobs as f64;
    drain.rate = Some(Rate::new("drain", args.jobs, elapsed));
    workers.stop();
    drain
}

/// Drain rates with the metrics history on and off in alternating runs, so that the machine's
/// drift favours neither: the median of each and their ratio, per results mode.
async fn history_ab(args: &Args, pairs: usize) {
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let mut out = format!(
        "Drain of {} jobs, {} worker(s) x concurrency {}, {pairs} runs each, alternating:\n\n| results | history on, median jobs/s (min-max) | history off, median jobs/s (min-max) | on / off |\n|---|---:|---:|---:|\n",
        args.jobs, args.workers, args.concurrency
    );
    let mut json = Vec::new();
    for results in result_modes(args) {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for pair in 0..pairs.max(1) {
            let order = if pair % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for history in order {
                eprintln!(
                    "results {}, history {}",
                    if results { "on" } else { "off" },
                    if history { "on" } else { "off" }
                );
                let rate = drain_only(args, results, history)
                    .await
                    .rate
                    .map_or(0.0, |rate| rate.per_second);
                if history {
                    on.push(rate)
                } else {
                    off.push(rate)
                }
            }
        }
        let range = |rates: &[f64]| {
            let (min, max) = rates
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
            format!("{min:.0}-{max:.0}")
        };
        let (on_range, off_range) = (range(&on), range(&off));
        let (on_median, off_median) = (median(&mut on), median(&mut off));
        out.push_str(&format!(
            "| {} | {on_median:.0} ({on_range}) | {off_median:.0} ({off_range}) | {:.3} |\n",
            if results { "stored" } else { "off" },
            on_median / off_median
        ));
        json.push(serde_json::json!({
            "results": results, "history_on": on, "history_off": off,
            "ratio_of_medians": on_median / off_median,
        }));
    }
    println!("{out}");
    write_outputs("history", &out, &json);
}

/// One drain on the cluster with the jobs spread over some queues.
#[derive(Debug, Serialize)]
struct SpreadRow {
    queues: usize,
    results: bool,
    rate: Rate,
    /// Commands each master ran during the drain (`total_commands_processed`), by address.
    commands_by_master: Vec<(String, u64)>,
}

/// `total_commands_processed` of the server at `url`.
fn commands_processed(url: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .expect("connect to a cluster node");
    let info: String = redis::cmd("INFO").arg("stats").query(&mut conn).unwrap();
    field(&info, "total_commands_processed:")
        .parse()
        .unwrap_or(0)
}

/// Drain `args.jobs` jobs on the test Redis Cluster, spread evenly over 1, 2, 3... queues
/// (key layout 2: each queue on a slot of its own), with `args.workers` worker processes on
/// all of them: the rate and how the commands spread over the masters.
async fn cluster_spread(args: &Args, counts: &[usize]) {
    let cluster = psw_tasks::testing::cluster();
    let masters: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|url| {
            let mut conn = redis::Client::open(url.as_str())
                .and_then(|client| client.get_connection())
                .expect("connect to a cluster node");
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut conn)
                .unwrap();
            field(&info, "role:") == "master"
        })
        .cloned()
        .collect();
    let mut out = format!(
        "Drain of {} jobs on a local Redis Cluster ({} masters), {} worker(s) x concurrency {}:\n\n| queues | results | seconds | jobs/s | commands per master (share) |\n|---:|---|---:|---:|---|\n",
        args.jobs,
        masters.len(),
        args.workers,
        args.concurrency
    );
    let mut rows = Vec::new();
    for results in result_modes(args) {
        for &count in counts {
            let ns = TestNamespace::on(cluster, "spread");
            let client = ns.client().await;
            let queues: Vec<String> = (0..count.max(1))
                .map(|n| match n {
                    0 => "default".to_owned(),
                    n => format!("spread{n}"),
                })
                .collect();
            let task = task_name(args.kind.name(), results);
            let per_queue = args.jobs / queues.len();
            for queue in &queues {
                let mut left = per_queue;
                while left > 0 {
                    let n = left.min(10_000);
                    client
                        .enqueue_many_by_name::<(), _>(
                            task,
                            (0..n).map(|_| (payload(args.payload),)),
                            EnqueueOptions::new().queue(queue.as_str()),
                        )
                        .await
                        .unwrap();
                    left -= n;
                }
            }
            let jobs = per_queue * queues.len();
            eprintln!(
                "{} queue(s), results {}",
                queues.len(),
                if results { "on" } else { "off" }
            );
            let before: Vec<u64> = masters.iter().map(|url| commands_processed(url)).collect();
            let workers = Workers::start_on(
                &ns,
                args.workers,
                args.concurrency,
                false,
                &queues.join(","),
            );
            let started = Instant::now();
            let streams: Vec<String> = queues.iter().map(|queue| ns.stream_key(queue)).collect();
            let mut conn = ns.connection();
            loop {
                let left: u64 = streams
                    .iter()
                    .map(|stream| {
                        redis::cmd("XLEN")
                            .arg(stream)
                            .query::<u64>(&mut *conn)
                            .unwrap()
                    })
                    .sum();
                if left == 0 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(900),
                    "the drain did not end: {left} jobs left"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let elapsed = started.elapsed();
            let after: Vec<u64> = masters.iter().map(|url| commands_processed(url)).collect();
            workers.stop();
            let commands: Vec<(String, u64)> = masters
                .iter()
                .zip(before.iter().zip(&after))
                .map(|(url, (before, after))| (url.clone(), after.saturating_sub(*before)))
                .collect();
            let total: u64 = commands.iter().map(|(_, n)| n).sum::<u64>().max(1);
            let spread = commands
                .iter()
                .map(|(url, n)| {
                    let port = url.rsplit(':').next().unwrap_or(url).trim_end_matches('/');
                    format!("{port}: {n} ({:.0}%)", *n as f64 * 100.0 / total as f64)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let rate = Rate::new("drain", jobs, elapsed);
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {spread} |\n",
                queues.len(),
                if results { "stored" } else { "off" },
                rate.seconds,
                rate.per_second
            ));
            rows.push(SpreadRow {
                queues: queues.len(),
                results,
                rate,
                commands_by_master: commands,
            });
        }
    }
    println!("{out}");
    write_outputs("cluster-spread", &out, &rows);
}

fn result_modes(args: &Args) -> Vec<bool> {
    match args.results {
        ResultsMode::On => vec![true],
        ResultsMode::Off => vec![false],
        ResultsMode::Both => vec![true, false],
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.scaling {
        scaling(&args).await;
        return;
    }
    if let Some(pairs) = args.history_ab {
        history_ab(&args, pairs).await;
        return;
    }
    if let Some(counts) = &args.cluster_queues {
        cluster_spread(&args, counts).await;
        return;
    }
    let mut raw = Raw::connect().await;
    let ns = TestNamespace::new("ceilings");
    eprintln!("measuring the Redis ceilings");
    let ceilings = ceilings(&mut raw, &ns).await;
    let mut reports = Vec::new();
    for results in result_modes(&args) {
        eprintln!("results {}", if results { "on" } else { "off" });
        reports.push(run_mode(&args, results, &ceilings).await);
    }
    let latency = if args.latency_seconds > 0 {
        eprintln!("latency");
        Some(run_latency(&args).await)
    } else {
        None
    };
    let report = Report {
        machine: machine(),
        redis_version: redis_version(&mut raw).await,
        args,
        ceilings,
        modes: reports,
        latency,
    };
    let text = markdown(&report);
    println!("{text}");
    write_outputs("throughput", &text, &report);
}
