//! Tasks that the integration tests enqueue, in process and in the `test-worker` binary.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use psw_tasks::{TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Adds two numbers.
#[task(name = "it.add")]
pub async fn add(a: i64, b: i64) -> Result<i64, TaskError> {
    Ok(a + b)
}

/// A nested argument type, to show structs survive the trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Title.
    pub title: String,
    /// Values.
    pub values: Vec<f64>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Optional note.
    pub note: Option<String>,
}

/// What `summarize` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Title, upper-cased.
    pub title: String,
    /// Sum of the values times the scale.
    pub total: f64,
    /// Number of tags.
    pub tags: usize,
    /// The job's id, as the task saw it.
    pub job_id: String,
}

/// Summarises a report.
#[task(name = "it.summarize")]
pub async fn summarize(ctx: TaskContext, report: Report, scale: f64) -> Result<Summary, TaskError> {
    Ok(Summary {
        title: report.title.to_uppercase(),
        total: report.values.iter().sum::<f64>() * scale,
        tags: report.tags.len(),
        job_id: ctx.job_id().to_owned(),
    })
}

fn gates() -> &'static Mutex<HashMap<String, &'static Notify>> {
    static GATES: OnceLock<Mutex<HashMap<String, &'static Notify>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// A named one-shot gate shared by tests and in-process tasks.
pub fn gate(name: &str) -> &'static Notify {
    gates()
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_insert_with(|| Box::leak(Box::new(Notify::new())))
}

/// Waits for the gate and then `sleep_ms`, and returns 7 (its record is kept).
#[task(name = "it.gated")]
pub async fn gated(gate_name: String, sleep_ms: u64) -> Result<u64, TaskError> {
    gate(&gate_name).notified().await;
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    Ok(7)
}

/// Waits for the gate and then `sleep_ms`; keeps no record, so its settlement is a bare
/// acknowledgement.
#[task(name = "it.gated_quiet", ignore_result = true)]
pub async fn gated_quiet(gate_name: String, sleep_ms: u64) -> Result<(), TaskError> {
    gate(&gate_name).notified().await;
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    Ok(())
}

/// Adds, unique until it ends: a second enqueue of the same arguments meanwhile adds nothing.
#[task(name = "it.unique_add", unique = "until_finished")]
pub async fn unique_add(a: i64, b: i64) -> Result<i64, TaskError> {
    Ok(a + b)
}

/// Returns its argument, unique for an hour whatever it does.
#[task(name = "it.unique_for_an_hour", unique = "for = 1h")]
pub async fn unique_for_an_hour(n: u64) -> Result<u64, TaskError> {
    Ok(n)
}

/// Reports progress 1 of `total`, waits for the gate, then finishes.
#[task(name = "it.progress")]
pub async fn stepwise(ctx: TaskContext, gate_name: String, total: u64) -> Result<u64, TaskError> {
    ctx.set_progress(1, total, serde_json::json!({"step": "first"}))
        .await?;
    gate(&gate_name).notified().await;
    ctx.set_progress(total, total, ()).await?;
    Ok(total)
}

/// Reports progress step by step: step `n` of `total`, then waits for the gate `<prefix>-<n>`;
/// finishes after the last.
#[task(name = "it.steps")]
pub async fn steps(ctx: TaskContext, prefix: String, total: u64) -> Result<u64, TaskError> {
    for step in 1..=total {
        ctx.set_progress(step, total, ()).await?;
        gate(&format!("{prefix}-{step}")).notified().await;
    }
    Ok(total)
}

/// Fails every attempt, with the attempt number in the message.
#[task(
    name = "it.flaky",
    retries = 3,
    backoff = "exp",
    backoff_base = "200ms",
    backoff_max = "10s",
    jitter = false
)]
pub async fn flaky(ctx: TaskContext) -> Result<(), TaskError> {
    Err(TaskError::retry(format!(
        "attempt {} failed",
        ctx.attempt()
    )))
}

/// Fails at once, for good.
#[task(name = "it.refuses", retries = 5)]
pub async fn refuses(reason: String) -> Result<(), TaskError> {
    Err(TaskError::permanent(reason))
}

/// Panics.
#[task(name = "it.panics", retries = 0)]
pub async fn panics(n: u32) -> Result<(), TaskError> {
    panic!("boom {n}")
}

fn local_ledger() -> &'static Mutex<HashMap<String, u32>> {
    static LEDGER: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    LEDGER.get_or_init(Default::default)
}

/// Forget the runs of `ledger` in this process, for a test that runs its scenario again.
pub fn clear_local_runs(ledger: &str) {
    let prefix = format!("{ledger}/");
    local_ledger()
        .lock()
        .unwrap()
        .retain(|key, _| !key.starts_with(&prefix));
}

/// How often each job of `ledger` ran in this process.
pub fn local_runs(ledger: &str) -> HashMap<String, u32> {
    local_ledger()
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(key, n)| {
            key.strip_prefix(&format!("{ledger}/"))
                .map(|id| (id.to_owned(), *n))
        })
        .collect()
}

/// Sleeps, then counts its run in this process's ledger.
#[task(name = "it.count_local", retries = 0)]
pub async fn count_local(ctx: TaskContext, ledger: String, sleep_ms: u64) -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    *local_ledger()
        .lock()
        .unwrap()
        .entry(format!("{ledger}/{}", ctx.job_id()))
        .or_default() += 1;
    Ok(())
}

fn redis_client() -> &'static redis::Client {
    static CLIENT: OnceLock<redis::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        redis::Client::open(psw_tasks::testing::redis_url()).expect("test Redis URL")
    })
}

/// Sleeps, then counts its run in a Redis hash (`HINCRBY ledger <job id> 1`), so that runs in
/// several processes can be counted after the fact.
#[task(name = "it.count_redis", retries = 0)]
pub async fn count_redis(ctx: TaskContext, ledger: String, sleep_ms: u64) -> Result<(), TaskError> {
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    let mut conn = redis_client().get_multiplexed_async_connection().await?;
    redis::cmd("HINCRBY")
        .arg(&ledger)
        .arg(ctx.job_id())
        .arg(1)
        .exec_async(&mut conn)
        .await?;
    Ok(())
}

/// Counts its run in this process's ledger and stores nothing, on a queue of its own.
#[task(
    name = "it.fire_and_forget",
    queue = "low",
    ignore_result = true,
    retries = 0
)]
pub async fn fire_and_forget(ctx: TaskContext, ledger: String) -> Result<(), TaskError> {
    count_local(ctx, ledger, 0).await
}

/// Waits until the given time, for time limits.
#[task(name = "it.sleepy", retries = 1, backoff = "none", timeout = "200ms")]
pub async fn sleepy(ms: u64) -> Result<u64, TaskError> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(ms)
}

/// Fired by the beat every second; counts its run in this process's ledger `beat_tick` under
/// its slot (`TaskContext::slot_ms`, from the beat's `psw-slot-ms` header), so that duplicates
/// and gaps show.
#[task(name = "it.beat_tick", every = "1s", queue = "beat", retries = 0)]
pub async fn beat_tick(ctx: TaskContext) -> Result<(), TaskError> {
    let slot = ctx
        .slot_ms()
        .map_or_else(|| "none".to_owned(), |slot| slot.to_string());
    *local_ledger()
        .lock()
        .unwrap()
        .entry(format!("beat_tick/{slot}"))
        .or_default() += 1;
    Ok(())
}

/// A nightly schedule in Stockholm time, never due during a test: for listings.
#[task(
    name = "it.nightly",
    schedule = "30 2 * * *",
    tz = "Europe/Stockholm",
    misfire = "backfill(3)",
    overlap = false,
    queue = "beat"
)]
pub async fn nightly() -> Result<(), TaskError> {
    Ok(())
}

/// When each run started and ended, by ledger.
type Spans = Mutex<HashMap<String, Vec<(Instant, Instant)>>>;

fn spans() -> &'static Spans {
    static SPANS: OnceLock<Spans> = OnceLock::new();
    SPANS.get_or_init(Default::default)
}

/// When each run of `ledger`'s jobs started and ended in this process, in order of ending.
pub fn runs_of(ledger: &str) -> Vec<(Instant, Instant)> {
    spans()
        .lock()
        .unwrap()
        .get(ledger)
        .cloned()
        .unwrap_or_default()
}

/// Runs for `ms` and records when it started and ended.
#[task(name = "it.timed", retries = 0)]
pub async fn timed(ledger: String, ms: u64) -> Result<(), TaskError> {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    spans()
        .lock()
        .unwrap()
        .entry(ledger)
        .or_default()
        .push((started, Instant::now()));
    Ok(())
}

/// Sleeps `seconds` unless cancelled first; whether it was.
#[task(name = "it.cancellable", retries = 0)]
pub async fn cancellable(ctx: TaskContext, seconds: u64) -> Result<bool, TaskError> {
    tokio::select! {
        () = ctx.cancelled() => Ok(ctx.is_cancelled()),
        () = tokio::time::sleep(Duration::from_secs(seconds)) => Ok(false),
    }
}

/// As `timed`, on the high level of its queue unless the caller says otherwise.
#[task(name = "it.urgent", priority = "high", queue = "levels", retries = 0)]
pub async fn urgent(ledger: String) -> Result<(), TaskError> {
    timed(ledger, 0).await
}

/// Sleeps, counts its run in a Redis hash like `count_redis`, and returns the id of the
/// process that ran it: which worker's result was stored.
#[task(name = "it.whoami", retries = 0)]
pub async fn whoami(ctx: TaskContext, ledger: String, sleep_ms: u64) -> Result<u32, TaskError> {
    count_redis(ctx, ledger, sleep_ms).await?;
    Ok(std::process::id())
}

fn open_flags() -> &'static Mutex<std::collections::HashSet<String>> {
    static FLAGS: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    FLAGS.get_or_init(Default::default)
}

/// Let `fails_until(flag)` succeed from now on.
pub fn open_flag(flag: &str) {
    open_flags().lock().unwrap().insert(flag.to_owned());
}

/// Fails (retryably, but with no retries) until its flag is opened.
#[task(name = "it.fails_until", retries = 0)]
pub async fn fails_until(flag: String) -> Result<String, TaskError> {
    if open_flags().lock().unwrap().contains(&flag) {
        Ok(format!("{flag} is open"))
    } else {
        Err(TaskError::retry(format!("{flag} is still closed")))
    }
}

/// Ends its process at once, as a segfault or an OOM kill would.
#[task(name = "it.abort", retries = 3)]
pub async fn abort_process() -> Result<(), TaskError> {
    std::process::abort()
}

/// The names every binary that links this crate must see registered.
pub const TASK_NAMES: &[&str] = &[
    "it.add",
    "it.summarize",
    "it.progress",
    "it.flaky",
    "it.refuses",
    "it.panics",
    "it.count_local",
    "it.count_redis",
    "it.sleepy",
    "it.fire_and_forget",
    "it.whoami",
    "it.fails_until",
    "it.abort",
    "it.beat_tick",
    "it.nightly",
    "it.timed",
];

/// Reports progress every 100 ms for `seconds`, as a long job does; a report that cannot be
/// stored ends it with that error.
#[task(name = "it.reports_progress", retries = 0)]
pub async fn reports_progress(ctx: TaskContext, seconds: u64) -> Result<(), TaskError> {
    let steps = seconds * 10;
    for step in 0..steps {
        ctx.set_progress(step, steps, ()).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Returns `size` bytes.
#[task(name = "it.bytes", retries = 0)]
pub async fn bytes(size: usize) -> Result<Vec<u8>, TaskError> {
    Ok(vec![7; size])
}

/// Fails every attempt with a 4 KiB message, whatever its (large) payload.
#[task(name = "it.fails_big", retries = 3, backoff = "none")]
pub async fn fails_big(payload: Vec<u8>) -> Result<(), TaskError> {
    Err(TaskError::retry(format!(
        "{} bytes in, and this went wrong: {}",
        payload.len(),
        "x".repeat(4096)
    )))
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Starts at most 10 times a second across every worker; says when it started (ms).
#[task(name = "it.rate_limited", rate_limit = "10/s", retries = 0)]
pub async fn rate_limited(n: u32) -> Result<i64, TaskError> {
    let _ = n;
    Ok(wall_ms())
}

/// Takes one start of the shared limit `quota` (declared on the worker), then says when (ms).
#[task(name = "it.shared_quota", retries = 0)]
pub async fn shared_quota(ctx: TaskContext, n: u32) -> Result<i64, TaskError> {
    let _ = n;
    ctx.rate_limit("quota").await?;
    Ok(wall_ms())
}

fn at_once() -> &'static Mutex<HashMap<String, (u32, u32)>> {
    static AT_ONCE: OnceLock<Mutex<HashMap<String, (u32, u32)>>> = OnceLock::new();
    AT_ONCE.get_or_init(Mutex::default)
}

/// At most two run at once across every worker; sleeps, counting how many of `ledger` run at
/// once in this process.
#[task(name = "it.paired", concurrency = 2, retries = 0)]
pub async fn paired(ledger: String, sleep_ms: u64) -> Result<(), TaskError> {
    {
        let mut counts = at_once().lock().unwrap();
        let (now, most) = counts.entry(ledger.clone()).or_default();
        *now += 1;
        *most = (*most).max(*now);
    }
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    at_once().lock().unwrap().get_mut(&ledger).unwrap().0 -= 1;
    Ok(())
}

/// The most jobs of `ledger` that ran at once in this process.
pub fn most_at_once(ledger: &str) -> u32 {
    at_once()
        .lock()
        .unwrap()
        .get(ledger)
        .map_or(0, |(_, most)| *most)
}

/// Holds the one slot of its concurrency limit while it sleeps.
#[task(name = "it.alone", concurrency = 1, retries = 0)]
pub async fn alone(sleep_ms: u64) -> Result<u64, TaskError> {
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    Ok(sleep_ms)
}

/// The Celery interop's tasks (`tests/it/celery.rs`), in a queue of their own: Python calls
/// them by these names with `send_task`.
pub const CELERY_QUEUE: &str = "celery-it";

/// What the PSW5 services call to check a deployment end to end, as Python knows it.
#[task(name = "psw_cron.ping", queue = "celery-it", retries = 0)]
pub async fn celery_ping(word: String) -> Result<String, TaskError> {
    Ok(format!("pong {word}"))
}

/// Keyword arguments map onto these parameters by name.
#[task(name = "it.celery_quote", queue = "celery-it", retries = 0)]
pub async fn celery_quote(symbol: String, force: bool) -> Result<String, TaskError> {
    Ok(format!("{symbol} force={force}"))
}

/// Fails for good, with the message Python raises.
#[task(name = "it.celery_fails", queue = "celery-it", retries = 0)]
pub async fn celery_fails(why: String) -> Result<(), TaskError> {
    Err(TaskError::permanent(why))
}

/// Fails on its first attempt (a retry Python sees), succeeds on the next.
#[task(
    name = "it.celery_flaky",
    queue = "celery-it",
    retries = 2,
    backoff = "none"
)]
pub async fn celery_flaky(ctx: TaskContext) -> Result<u32, TaskError> {
    if ctx.attempt() == 0 {
        return Err(TaskError::retry("not yet"));
    }
    Ok(ctx.attempt())
}

/// The second step of a chain: takes the first step's result.
#[task(name = "it.celery_shout", queue = "celery-it", retries = 0)]
pub async fn celery_shout(text: String) -> Result<String, TaskError> {
    Ok(format!("{}!", text.to_uppercase()))
}

/// An errback, called as Celery calls one on another worker: with the failed task's id.
#[task(name = "it.celery_on_error", queue = "celery-it", retries = 0)]
pub async fn celery_on_error(failed_id: String) -> Result<String, TaskError> {
    Ok(format!("noted {failed_id}"))
}

/// Runs long enough for a test to kill its worker mid-job.
#[task(name = "it.celery_slow", queue = "celery-it", retries = 0)]
pub async fn celery_slow(word: String) -> Result<String, TaskError> {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(format!("slept {word}"))
}
