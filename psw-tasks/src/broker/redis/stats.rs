//! What `Client::stats` and `Client::metrics` read and workers report: heartbeats in
//! `{ns}:workers`, counts in minute and ten-minute buckets, each task's recent executions,
//! the set of queue names and what each queue holds.

use std::collections::HashMap;

use super::connection::RedisBroker;
use super::slots::in_item_order;
use crate::broker::{MetricsBucket, QueueStats, WorkerEntry, WorkerReport};
use crate::keys::{GROUP, split_stats_field, stats_field};
use crate::metrics::{RECENT_EXECUTIONS, Resolution, SCHEDULE_RUNS, TaskCounts};

impl RedisBroker {
    /// The key of bucket `index` of `resolution`.
    fn bucket_key(&self, resolution: Resolution, index: i64) -> String {
        match resolution {
            Resolution::Minute => self.keys.stats(index),
            Resolution::TenMinutes => self.keys.stats_ten(index),
        }
    }
}

/// The heartbeat (or its removal), the counts and the executions, in one transaction.
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
        for resolution in Resolution::ALL {
            let bucket = broker.bucket_key(resolution, resolution.bucket_of(report.at_ms));
            for (task, tally, count) in &report.counts {
                pipe.cmd("HINCRBY")
                    .arg(&bucket)
                    .arg(stats_field(task, *tally))
                    .arg(*count)
                    .ignore();
            }
            pipe.cmd("EXPIRE")
                .arg(&bucket)
                .arg(resolution.kept().as_secs())
                .ignore();
        }
        let total = broker.keys.stats_total();
        for (task, tally, count) in &report.counts {
            pipe.cmd("HINCRBY")
                .arg(&total)
                .arg(stats_field(task, *tally))
                .arg(*count)
                .ignore();
        }
    }
    let lists =
        report
            .executions
            .iter()
            .map(|(task, executions)| (broker.keys.recent(task), RECENT_EXECUTIONS, executions))
            .chain(report.schedule_runs.iter().map(|(schedule, runs)| {
                (broker.keys.schedule_runs(schedule), SCHEDULE_RUNS, runs)
            }));
    for (recent, keep, executions) in lists {
        if executions.is_empty() {
            continue;
        }
        // Pushed oldest first, so the newest ends at the head.
        pipe.cmd("LPUSH").arg(&recent).arg(executions).ignore();
        pipe.cmd("LTRIM").arg(&recent).arg(0).arg(keep - 1).ignore();
        pipe.cmd("EXPIRE")
            .arg(&recent)
            .arg(Resolution::TenMinutes.kept().as_secs())
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
    // One script per slot: on one server the numbers of every queue agree with each other, on
    // a cluster those of each queue's lanes.
    let groups = broker.per_slot(queues, |queue| broker.keys.queue_tag(queue));
    let replies = futures_util::future::try_join_all(groups.into_iter().map(|group| async move {
        let mut invocation = broker.scripts.queue_stats.prepare_invoke();
        for (_, queue) in &group {
            invocation
                .key(broker.keys.stream(queue))
                .key(broker.keys.delayed(queue));
        }
        let counts: Vec<(u64, u64, u64, u64, i64)> = invocation
            .arg(GROUP)
            .invoke_async(&mut broker.conn())
            .await?;
        Ok::<_, redis::RedisError>(
            group
                .into_iter()
                .map(|(position, _)| position)
                .zip(counts)
                .collect::<Vec<_>>(),
        )
    }))
    .await?;
    let counts = in_item_order(replies);
    Ok(queues
        .iter()
        .zip(counts)
        .map(
            |(name, (ready, pending, delayed, consumers, oldest))| QueueStats {
                name: name.clone(),
                ready,
                pending,
                delayed,
                consumers,
                oldest_age_ms: u64::try_from(oldest).ok(),
                paused: false,
            },
        )
        .collect())
}

/// The buckets `from..=to` of `resolution` that hold anything, read in one pipeline; fields
/// this version does not know are skipped.
pub(super) async fn metrics(
    broker: &RedisBroker,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> redis::RedisResult<Vec<MetricsBucket>> {
    let mut pipe = redis::pipe();
    for index in from..=to {
        pipe.cmd("HGETALL")
            .arg(broker.bucket_key(resolution, index));
    }
    let stored: Vec<HashMap<String, u64>> = pipe.query_async(&mut broker.conn()).await?;
    Ok((from..=to)
        .zip(stored)
        .filter(|(_, fields)| !fields.is_empty())
        .map(|(index, fields)| (index, task_counts(&fields)))
        .collect())
}

/// The counts of every task in a stats hash; fields this version does not know are skipped.
fn task_counts(fields: &HashMap<String, u64>) -> Vec<TaskCounts> {
    let mut tasks: HashMap<&str, TaskCounts> = HashMap::new();
    for (field, count) in fields {
        if let Some((task, tally)) = split_stats_field(field) {
            tasks
                .entry(task)
                .or_insert_with(|| TaskCounts::of(task))
                .add(tally, *count);
        }
    }
    tasks.into_values().collect()
}

/// Every task's counts over all time.
pub(super) async fn metric_totals(broker: &RedisBroker) -> redis::RedisResult<Vec<TaskCounts>> {
    let fields: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(broker.keys.stats_total())
        .query_async(&mut broker.conn())
        .await?;
    Ok(task_counts(&fields))
}

/// The newest `limit` executions of `task`.
pub(super) async fn recent_executions(
    broker: &RedisBroker,
    task: &str,
    limit: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    newest(broker, broker.keys.recent(task), limit, RECENT_EXECUTIONS).await
}

/// The first `limit` entries of the list `key` (its newest: lists are pushed at the head),
/// never past `keep`, what it holds at most (a huge `limit` would be out of LRANGE's range).
pub(super) async fn newest(
    broker: &RedisBroker,
    key: String,
    limit: usize,
    keep: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let limit = limit.min(keep);
    if limit == 0 {
        return Ok(Vec::new());
    }
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(limit - 1)
        .query_async(&mut broker.conn())
        .await
}
