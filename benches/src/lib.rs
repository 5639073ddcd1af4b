//! The tasks the benchmarks run, linked into the `bench-worker` binary and the benchmark.

use std::time::{SystemTime, UNIX_EPOCH};

use psw_tasks::{TaskError, task};
use serde_bytes::ByteBuf;

/// Microseconds since the Unix epoch: the benchmark and the worker share the machine's clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn sleep_1ms() {
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
}

/// A small, fixed amount of CPU work (about ten microseconds), that the optimiser cannot drop.
fn burn(payload: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for round in 0..2_000u64 {
        let byte = payload
            .get(round as usize % payload.len().max(1))
            .copied()
            .unwrap_or(1);
        hash = (hash ^ u64::from(byte) ^ round).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

/// Does nothing; the result (nil) is stored.
#[task(name = "bench.noop", retries = 0)]
pub async fn noop(_payload: ByteBuf) -> Result<(), TaskError> {
    Ok(())
}

/// Does nothing and stores nothing.
#[task(name = "bench.noop.quiet", retries = 0, ignore_result = true)]
pub async fn noop_quiet(_payload: ByteBuf) -> Result<(), TaskError> {
    Ok(())
}

/// Sleeps 1 ms.
#[task(name = "bench.sleep", retries = 0)]
pub async fn sleep(_payload: ByteBuf) -> Result<(), TaskError> {
    sleep_1ms().await;
    Ok(())
}

/// Sleeps 1 ms and stores nothing.
#[task(name = "bench.sleep.quiet", retries = 0, ignore_result = true)]
pub async fn sleep_quiet(_payload: ByteBuf) -> Result<(), TaskError> {
    sleep_1ms().await;
    Ok(())
}

/// A little CPU work; its hash is the result.
#[task(name = "bench.cpu", retries = 0)]
pub async fn cpu(payload: ByteBuf) -> Result<u64, TaskError> {
    Ok(burn(&payload))
}

/// A little CPU work, storing nothing.
#[task(name = "bench.cpu.quiet", retries = 0, ignore_result = true)]
pub async fn cpu_quiet(payload: ByteBuf) -> Result<(), TaskError> {
    std::hint::black_box(burn(&payload));
    Ok(())
}

/// A no-op under a global rate limit it never reaches: what checking a limit costs.
#[task(name = "bench.limited", retries = 0, rate_limit = "1000000/s")]
pub async fn limited(_payload: ByteBuf) -> Result<(), TaskError> {
    Ok(())
}

/// The same, storing nothing.
#[task(
    name = "bench.limited.quiet",
    retries = 0,
    ignore_result = true,
    rate_limit = "1000000/s"
)]
pub async fn limited_quiet(_payload: ByteBuf) -> Result<(), TaskError> {
    Ok(())
}

/// A no-op under a global rate limit a backlog is held to: what waiting for a limit costs.
#[task(name = "bench.throttled", retries = 0, rate_limit = "5000/s")]
pub async fn throttled(_payload: ByteBuf) -> Result<(), TaskError> {
    Ok(())
}

/// The same, storing nothing.
#[task(
    name = "bench.throttled.quiet",
    retries = 0,
    ignore_result = true,
    rate_limit = "5000/s"
)]
pub async fn throttled_quiet(_payload: ByteBuf) -> Result<(), TaskError> {
    Ok(())
}

/// Returns when it started, in µs since the epoch, for latency measurements.
#[task(name = "bench.stamp", retries = 0)]
pub async fn stamp(_enqueued_us: u64) -> Result<u64, TaskError> {
    Ok(now_us())
}

/// The wire name of the task of `kind` (`noop`, `sleep`, `cpu`, `limited`, `throttled`), with results stored or not.
pub fn task_name(kind: &str, results: bool) -> &'static str {
    match (kind, results) {
        ("noop", true) => "bench.noop",
        ("noop", false) => "bench.noop.quiet",
        ("sleep", true) => "bench.sleep",
        ("sleep", false) => "bench.sleep.quiet",
        ("cpu", true) => "bench.cpu",
        ("cpu", false) => "bench.cpu.quiet",
        ("limited", true) => "bench.limited",
        ("limited", false) => "bench.limited.quiet",
        ("throttled", true) => "bench.throttled",
        ("throttled", false) => "bench.throttled.quiet",
        _ => panic!("unknown task kind {kind}; known: noop, sleep, cpu, limited, throttled"),
    }
}

/// Fails for good with a message of one of five shapes (numbers differ per job): dead letters
/// in five failure groups, for the dashboard benchmark.
#[task(name = "bench.refuses", retries = 0)]
pub async fn refuses(n: u64) -> Result<(), TaskError> {
    let message = match n % 5 {
        0 => format!("quote {n} for ticker T{n} refused"),
        1 => format!("timeout after {} ms", n % 997),
        2 => format!("row {n} of batch {} is bad", n / 100),
        3 => format!("provider answered 503 for job {n}"),
        _ => "disk full".to_owned(),
    };
    Err(TaskError::permanent(message))
}
