//! What `Client::stats` reads and workers report: heartbeats in `{ns}:workers`, outcome counts
//! in per-minute buckets, the set of queue names and what each queue holds.

use std::collections::HashMap;

use super::connection::RedisBroker;
use crate::broker::{OutcomeCounts, QueueStats, WorkerEntry, WorkerReport};
use crate::keys::{BUCKET_TTL, GROUP, minute_of, split_stats_field, stats_field};

/// The heartbeat (or its removal) and the counts, in one transaction.
pub(super) async fn report_worker(
    broker: &RedisBroker,
    report: &WorkerReport,
) -> redis::RedisResult<()> {
    let workers = broker.keys.workers();
    let mut pipe = redis::pipe();
    pipe.atomic();
    match &report.info {
        Some(info) => pipe
            .cmd("HSET")
            .arg(&workers)
            .arg(&report.consumer)
            .arg(info)
            .ignore(),
        None => pipe
            .cmd("HDEL")
            .arg(&workers)
            .arg(&report.consumer)
            .ignore(),
    };
    if !report.counts.is_empty() {
        let bucket = broker.keys.stats(minute_of(report.at_ms));
        for (task, outcome, count) in &report.counts {
            pipe.cmd("HINCRBY")
                .arg(&bucket)
                .arg(stats_field(task, *outcome))
                .arg(*count)
                .ignore();
        }
        pipe.cmd("EXPIRE")
            .arg(&bucket)
            .arg(BUCKET_TTL.as_secs())
            .ignore();
    }
    pipe.exec_async(&mut broker.conn()).await
}

pub(super) async fn workers(broker: &RedisBroker) -> redis::RedisResult<Vec<WorkerEntry>> {
    let workers: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
        .arg(broker.keys.workers())
        .query_async(&mut broker.conn())
        .await?;
    Ok(workers.into_iter().collect())
}

pub(super) async fn forget_workers(
    broker: &RedisBroker,
    names: &[String],
) -> redis::RedisResult<()> {
    if names.is_empty() {
        return Ok(());
    }
    redis::cmd("HDEL")
        .arg(broker.keys.workers())
        .arg(names)
        .exec_async(&mut broker.conn())
        .await
}

pub(super) async fn queue_names(broker: &RedisBroker) -> redis::RedisResult<Vec<String>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(broker.keys.queues())
        .query_async(&mut broker.conn())
        .await?;
    names.sort();
    Ok(names)
}

/// Every queue's numbers, read in one `queue_stats.lua` call so that they agree.
pub(super) async fn queue_stats(
    broker: &RedisBroker,
    queues: &[String],
) -> redis::RedisResult<Vec<QueueStats>> {
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = broker.scripts.queue_stats.prepare_invoke();
    for queue in queues {
        invocation
            .key(broker.keys.stream(queue))
            .key(broker.keys.delayed(queue));
    }
    let counts: Vec<(u64, u64, u64, u64)> = invocation
        .arg(GROUP)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(queues
        .iter()
        .zip(counts)
        .map(|(name, (ready, pending, delayed, consumers))| QueueStats {
            name: name.clone(),
            ready,
            pending,
            delayed,
            consumers,
        })
        .collect())
}

/// The buckets of minutes `from..=to`, summed; fields of outcomes this version does not know
/// are skipped.
pub(super) async fn outcome_counts(
    broker: &RedisBroker,
    from: i64,
    to: i64,
) -> redis::RedisResult<OutcomeCounts> {
    let mut pipe = redis::pipe();
    for minute in from..=to {
        pipe.cmd("HGETALL").arg(broker.keys.stats(minute));
    }
    let buckets: Vec<HashMap<String, u64>> = pipe.query_async(&mut broker.conn()).await?;
    let mut sums = OutcomeCounts::new();
    for (field, count) in buckets.into_iter().flatten() {
        if let Some((task, outcome)) = split_stats_field(&field) {
            *sums.entry((task.to_owned(), outcome)).or_default() += count;
        }
    }
    Ok(sums)
}
