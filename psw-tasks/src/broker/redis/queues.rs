//! The queues themselves: their consumer groups, adding jobs (ready or delayed), moving due
//! delayed jobs in, and the consumers of workers that are gone.

use std::time::Duration;

use redis::Value;

use super::connection::RedisBroker;
use super::reply::range_entries;
use crate::broker::{NewJob, Promoted, QueuedJob};
use crate::envelope::now_ms;
use crate::keys::{GROUP, JOB_FIELD, LAYOUT_VERSION};

/// Create each queue's stream and group (from `0`: entries added before the first worker are
/// delivered too), and name the queues in the set of queue names.
pub(super) async fn prepare(broker: &RedisBroker, queues: &[String]) -> redis::RedisResult<()> {
    if !broker
        .layout_checked
        .swap(true, std::sync::atomic::Ordering::Relaxed)
        && let Err(err) = check_layout(broker, queues).await
    {
        broker
            .layout_checked
            .store(false, std::sync::atomic::Ordering::Relaxed);
        return Err(err);
    }
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

/// Once per process, at the first prepare: say so loudly when jobs wait in keys of key layout 1
/// (every key under `{ns}`), which this version does not read, or when the namespace was
/// written in a layout newer than this version's; then mark the namespace as layout 2.
async fn check_layout(broker: &RedisBroker, queues: &[String]) -> redis::RedisResult<()> {
    let mut conn = broker.conn();
    let stored: Option<u32> = redis::cmd("GET")
        .arg(broker.keys.layout())
        .query_async(&mut conn)
        .await?;
    if let Some(version) = stored.filter(|version| *version > LAYOUT_VERSION) {
        tracing::error!(
            key = broker.keys.layout(),
            found = version,
            reads = LAYOUT_VERSION,
            "this namespace was written in a newer key layout than this version reads: upgrade \
             this worker, or it may not see the jobs"
        );
        return Ok(());
    }
    // Every layout-1 key is under `{ns}`: one slot, so one pipeline. A drained stream stays
    // (empty, with its group), so lengths are read, not existence.
    if !queues.is_empty() {
        let mut pipe = redis::pipe();
        for lane in queues {
            pipe.cmd("XLEN")
                .arg(broker.keys.layout_1_stream(lane))
                .cmd("ZCARD")
                .arg(broker.keys.layout_1_delayed(lane));
        }
        let lengths: Vec<(u64, u64)> = pipe.query_async(&mut conn).await?;
        let found: Vec<String> = queues
            .iter()
            .zip(lengths)
            .flat_map(|(lane, (ready, delayed))| {
                [
                    (broker.keys.layout_1_stream(lane), ready),
                    (broker.keys.layout_1_delayed(lane), delayed),
                ]
            })
            .filter(|(_, jobs)| *jobs > 0)
            .map(|(key, jobs)| format!("{key} ({jobs} jobs)"))
            .collect();
        if !found.is_empty() {
            tracing::error!(
                keys = ?found,
                "jobs wait in keys of key layout 1, which this version does not read (a queue's \
                 keys now carry its own hash tag, `{{ns:queue}}`): drain them with the version \
                 that wrote them before moving its workers over (docs/protocol.md, Changes of \
                 the layout)"
            );
        }
    }
    if stored.is_none() {
        redis::cmd("SET")
            .arg(broker.keys.layout())
            .arg(LAYOUT_VERSION)
            .arg("NX")
            .exec_async(&mut conn)
            .await?;
    }
    Ok(())
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
    let new_queues = unannounced(broker, jobs.iter().map(|job| job.queue.as_str()));
    // One pipeline per slot: on one server that is one pipeline, on a cluster one per queue,
    // sent together. Not MULTI: a job is one command, added or not by itself.
    let groups = broker.per_slot(&jobs, |job| broker.keys.queue_tag(&job.queue));
    let announce_apart = broker.spans_slots();
    let new = &new_queues;
    futures_util::future::try_join_all(groups.into_iter().enumerate().map(
        |(n, group)| async move {
            let mut pipe = redis::pipe();
            for (_, job) in group {
                add_to(&mut pipe, broker, job, now);
            }
            if n == 0 && !announce_apart && !new.is_empty() {
                pipe.cmd("SADD").arg(broker.keys.queues()).arg(new).ignore();
            }
            pipe.exec_async(&mut broker.conn()).await
        },
    ))
    .await?;
    if announce_apart && !new_queues.is_empty() {
        redis::cmd("SADD")
            .arg(broker.keys.queues())
            .arg(&new_queues)
            .exec_async(&mut broker.conn())
            .await?;
    }
    mark_announced(broker, new_queues);
    Ok(())
}

/// `XADD` of `job` if ready at `now`, else `ZADD` to its delayed set.
fn add_to(pipe: &mut redis::Pipeline, broker: &RedisBroker, job: &NewJob, now: i64) {
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

/// The queues among `queues` this process has not yet named in the set of queue names.
fn unannounced<'q>(broker: &RedisBroker, queues: impl Iterator<Item = &'q str>) -> Vec<&'q str> {
    let announced = broker
        .announced
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut new: Vec<&str> = queues.filter(|queue| !announced.contains(*queue)).collect();
    new.sort_unstable();
    new.dedup();
    new
}

fn mark_announced(broker: &RedisBroker, queues: Vec<&str>) {
    if queues.is_empty() {
        return;
    }
    let mut announced = broker
        .announced
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    announced.extend(queues.into_iter().map(str::to_owned));
}

/// Name `queue` in the set of queue names unless this process did before: a command of its
/// own ahead of a conditional add, whose script is on the queue's slot and the set on the
/// namespace's.
pub(super) async fn announce(broker: &RedisBroker, queue: &str) -> redis::RedisResult<()> {
    let new = unannounced(broker, std::iter::once(queue));
    if new.is_empty() {
        return Ok(());
    }
    redis::cmd("SADD")
        .arg(broker.keys.queues())
        .arg(&new)
        .exec_async(&mut broker.conn())
        .await?;
    mark_announced(broker, new);
    Ok(())
}

/// Add `job`, whose id is `id`, unless that id has a record or is held (`push_once.lua`);
/// hold the id for `hold`. Whether it was added.
///
/// The record is on the namespace's slot, the hold and the add on the queue's, so the record
/// is checked first, on its own. The hold lasts through the job's delay and the result TTL,
/// as long as a record of a run would, so it is what keeps two adds apart; the record check
/// covers a hold deleted by hand, or one from before a longer result TTL.
pub(super) async fn push_once(
    broker: &RedisBroker,
    job: NewJob,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<bool> {
    let recorded: bool = redis::cmd("EXISTS")
        .arg(broker.keys.record(id))
        .query_async(&mut broker.conn())
        .await?;
    if recorded {
        return Ok(false);
    }
    announce(broker, &job.queue).await?;
    Ok(add_once(broker, &job, id, hold).await?.added)
}

/// What [`add_once`] did.
pub(super) struct AddedOnce {
    /// Whether this call added the job (else its id was held).
    pub(super) added: bool,
    /// The job's stream entry id, as added by this call or the one that first held the id;
    /// `None` for a delayed job.
    pub(super) entry_id: Option<String>,
}

/// `push_once.lua`: add `job` unless its id `id` is held, holding it for `hold`.
pub(super) async fn add_once(
    broker: &RedisBroker,
    job: &NewJob,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<AddedOnce> {
    let (target, due) = destination(broker, job);
    let (added, entry_id): (i64, String) = broker
        .scripts
        .push_once
        .key(broker.keys.id_hold(&job.queue, id))
        .key(target)
        .arg(&job.payload)
        .arg(due)
        .arg(hold.as_millis().max(1) as u64)
        .arg(JOB_FIELD)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(AddedOnce {
        added: added == 1,
        // `1`: the job was delayed, or the id held by a version that kept no entry id.
        entry_id: (entry_id.contains('-')).then_some(entry_id),
    })
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
