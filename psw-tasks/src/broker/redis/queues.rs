//! The queues themselves: their consumer groups, adding jobs (ready or delayed), moving due
//! delayed jobs in, and the consumers of workers that are gone.

use std::time::Duration;

use redis::Value;

use super::connection::RedisBroker;
use super::reply::range_entries;
use crate::broker::{NewJob, Promoted, QueuedJob};
use crate::envelope::now_ms;
use crate::keys::{GROUP, JOB_FIELD};

/// Create each queue's stream and group (from `0`: entries added before the first worker are
/// delivered too), and name the queues in the set of queue names.
pub(super) async fn prepare(broker: &RedisBroker, queues: &[String]) -> redis::RedisResult<()> {
    let mut conn = broker.conn();
    for queue in queues {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(broker.keys.stream(queue))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(err) if err.code() == Some("BUSYGROUP") => {}
            Err(err) => return Err(err),
        }
    }
    redis::cmd("SADD")
        .arg(broker.keys.queues())
        .arg(queues)
        .exec_async(&mut conn)
        .await
}

/// Add the queue to the set of paused ones, or take it out; whether that changed it.
pub(super) async fn set_paused(
    broker: &RedisBroker,
    queue: &str,
    paused: bool,
) -> redis::RedisResult<bool> {
    let changed: u64 = redis::cmd(if paused { "SADD" } else { "SREM" })
        .arg(broker.keys.paused())
        .arg(queue)
        .query_async(&mut broker.conn())
        .await?;
    Ok(changed > 0)
}

/// The paused queues, sorted.
pub(super) async fn paused_queues(broker: &RedisBroker) -> redis::RedisResult<Vec<String>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(broker.keys.paused())
        .query_async(&mut broker.conn())
        .await?;
    names.sort();
    Ok(names)
}

/// Add jobs in one pipeline: `XADD` if ready, `ZADD` to the delayed set if due later; a queue
/// this process has not used yet is added to the set of queue names on the way.
pub(super) async fn push(broker: &RedisBroker, jobs: Vec<NewJob>) -> redis::RedisResult<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut pipe = redis::pipe();
    for job in &jobs {
        match job.due_ms {
            Some(due) if due > now => {
                pipe.cmd("ZADD")
                    .arg(broker.keys.delayed(&job.queue))
                    .arg(due)
                    .arg(&job.payload)
                    .ignore();
            }
            _ => {
                pipe.cmd("XADD")
                    .arg(broker.keys.stream(&job.queue))
                    .arg("*")
                    .arg(JOB_FIELD)
                    .arg(&job.payload)
                    .ignore();
            }
        }
    }
    let new_queues: Vec<&str> = {
        let announced = broker
            .announced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut new: Vec<&str> = jobs
            .iter()
            .map(|job| job.queue.as_str())
            .filter(|queue| !announced.contains(*queue))
            .collect();
        new.sort_unstable();
        new.dedup();
        new
    };
    if !new_queues.is_empty() {
        pipe.cmd("SADD")
            .arg(broker.keys.queues())
            .arg(&new_queues)
            .ignore();
    }
    pipe.exec_async(&mut broker.conn()).await?;
    if !new_queues.is_empty() {
        let mut announced = broker
            .announced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        announced.extend(new_queues.into_iter().map(str::to_owned));
    }
    Ok(())
}

/// Add `job`, whose id is `id`, unless that id is held or has a record (`push_once.lua`);
/// hold the id for `hold`. Whether it was added.
pub(super) async fn push_once(
    broker: &RedisBroker,
    job: NewJob,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<bool> {
    let (target, due) = destination(broker, &job);
    let added: i64 = broker
        .scripts
        .push_once
        .key(broker.keys.id_hold(id))
        .key(broker.keys.record(id))
        .key(target)
        .key(broker.keys.queues())
        .arg(&job.payload)
        .arg(due)
        .arg(hold.as_millis().max(1) as u64)
        .arg(&job.queue)
        .arg(JOB_FIELD)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(added == 1)
}

/// Where a job that one of the conditional push scripts adds goes (`add_job.lua`): its
/// queue's stream when due now, else its delayed set with the due time as the score.
pub(super) fn destination(broker: &RedisBroker, job: &NewJob) -> (String, String) {
    match job.due_ms {
        Some(due) if due > now_ms() => (broker.keys.delayed(&job.queue), due.to_string()),
        _ => (broker.keys.stream(&job.queue), String::new()),
    }
}

/// Move up to `limit` due delayed jobs into the queue (`promote.lua`).
pub(super) async fn promote_due(
    broker: &RedisBroker,
    queues: &[String],
    now_ms: i64,
    limit: usize,
) -> redis::RedisResult<Promoted> {
    if queues.is_empty() {
        return Ok(Promoted {
            moved: 0,
            next_due_ms: None,
        });
    }
    let mut invocation = broker.scripts.promote.prepare_invoke();
    for queue in queues {
        invocation
            .key(broker.keys.delayed(queue))
            .key(broker.keys.stream(queue));
    }
    invocation.arg(now_ms).arg(limit).arg(JOB_FIELD);
    let (moved, next): (usize, i64) = invocation.invoke_async(&mut broker.conn()).await?;
    Ok(Promoted {
        moved,
        next_due_ms: (next >= 0).then_some(next),
    })
}

/// Remove `consumer` from each queue's group if it owns nothing there (`retire.lua`).
pub(super) async fn retire_consumer(
    broker: &RedisBroker,
    consumer: &str,
    queues: &[String],
) -> redis::RedisResult<()> {
    let mut conn = broker.conn();
    for queue in queues {
        let _: i64 = broker
            .scripts
            .retire
            .key(broker.keys.stream(queue))
            .arg(GROUP)
            .arg(consumer)
            .invoke_async(&mut conn)
            .await?;
    }
    Ok(())
}

/// Remove the consumers other than `me` that own nothing and were idle for `idle`
/// (`prune.lua`); their names.
pub(super) async fn prune_consumers(
    broker: &RedisBroker,
    queue: &str,
    me: &str,
    idle: Duration,
) -> redis::RedisResult<Vec<String>> {
    broker
        .scripts
        .prune
        .key(broker.keys.stream(queue))
        .arg(GROUP)
        .arg(me)
        .arg(idle.as_millis() as u64)
        .invoke_async(&mut broker.conn())
        .await
}

/// Whether the entry is still in the queue's stream.
/// The first `count` entries of a lane's stream and members of its delayed set, in one
/// round trip (`XRANGE - + COUNT`, `ZRANGE 0 count-1 WITHSCORES`).
pub(super) async fn queued(
    broker: &RedisBroker,
    lane: &str,
    count: usize,
) -> redis::RedisResult<Vec<QueuedJob>> {
    let count = count.max(1);
    let (stream, delayed): (Value, Vec<(Vec<u8>, f64)>) = redis::pipe()
        .cmd("XRANGE")
        .arg(broker.keys.stream(lane))
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .cmd("ZRANGE")
        .arg(broker.keys.delayed(lane))
        .arg(0)
        .arg(count - 1)
        .arg("WITHSCORES")
        .query_async(&mut broker.conn())
        .await?;
    let ready = range_entries(stream).into_iter().filter_map(|(_, fields)| {
        let (_, payload) = fields.into_iter().find(|(name, _)| name == JOB_FIELD)?;
        Some(QueuedJob {
            lane: lane.to_owned(),
            due_ms: None,
            payload,
        })
    });
    let due = delayed.into_iter().map(|(payload, score)| QueuedJob {
        lane: lane.to_owned(),
        due_ms: Some(score as i64),
        payload,
    });
    Ok(ready.chain(due).collect())
}

pub(super) async fn in_stream(
    broker: &RedisBroker,
    queue: &str,
    entry_id: &str,
) -> redis::RedisResult<bool> {
    let found: Value = redis::cmd("XRANGE")
        .arg(broker.keys.stream(queue))
        .arg(entry_id)
        .arg(entry_id)
        .arg("COUNT")
        .arg(1)
        .query_async(&mut broker.conn())
        .await?;
    Ok(matches!(found, Value::Array(entries) if !entries.is_empty()))
}
