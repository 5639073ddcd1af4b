//! Unique jobs' locks: taken with the job's enqueue, released by the worker (at the start,
//! or with the job's settlement in `settle.lua`), listed for operators; and debounce keys,
//! which name the last job enqueued with them.

use std::time::Duration;

use super::connection::RedisBroker;
use super::queues::{announce, destination};
use super::slots::{in_item_order, tag_of};
use crate::broker::{NewJob, UniqueLock};
use crate::keys::JOB_FIELD;

/// Keys read per `SCAN` step when listing locks.
const SCAN_COUNT: usize = 500;

/// Add `job` unless the lock `key` is held (`push_unique.lua`); `None` when added, else the
/// holder's job id.
pub(super) async fn push_unique(
    broker: &RedisBroker,
    job: NewJob,
    key: &str,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<Option<String>> {
    let script = &broker.scripts.push_unique;
    let lock = broker.keys.unique(&job.queue, key);
    push_keyed(broker, script, lock, job, id, hold).await
}

/// Add `job` as the last of debounce key `key` (`push_debounced.lua`).
pub(super) async fn push_debounced(
    broker: &RedisBroker,
    job: NewJob,
    key: &str,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<()> {
    let script = &broker.scripts.push_debounced;
    let debounce = broker.keys.debounce(&job.queue, key);
    let _: i64 = push_keyed(broker, script, debounce, job, id, hold).await?;
    Ok(())
}

/// Run one of the scripts that set a key to a job's id (for `hold`) and add the job; they
/// share their KEYS and ARGV. The key is on the queue's slot, as the add is.
async fn push_keyed<T: redis::FromRedisValue>(
    broker: &RedisBroker,
    script: &redis::Script,
    key: String,
    job: NewJob,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<T> {
    announce(broker, &job.queue).await?;
    let (target, due) = destination(broker, &job);
    script
        .key(key)
        .key(target)
        .arg(id)
        .arg(hold.as_millis().max(1) as u64)
        .arg(&job.payload)
        .arg(due)
        .arg(JOB_FIELD)
        .invoke_async(&mut broker.conn())
        .await
}

/// Whether job `id` is the last of debounce key `key`, clearing the key if so
/// (`delete_if_holds.lua`).
pub(super) async fn take_debounce(
    broker: &RedisBroker,
    queue: &str,
    key: &str,
    id: &str,
) -> redis::RedisResult<bool> {
    let taken: i64 = broker
        .scripts
        .delete_if_holds
        .key(broker.keys.debounce(queue, key))
        .arg(id)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(taken == 1)
}

/// Release the lock `key` if job `id` holds it (`delete_if_holds.lua`).
pub(super) async fn release_unique(
    broker: &RedisBroker,
    queue: &str,
    key: &str,
    id: &str,
) -> redis::RedisResult<()> {
    let _: i64 = broker
        .scripts
        .delete_if_holds
        .key(broker.keys.unique(queue, key))
        .arg(id)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(())
}

/// The lock `key`, if a job holds it. Locks are kept per queue (on the queue's slot), so
/// this asks every queue in the set of queue names, in one pipeline (`GET` and `PTTL` of
/// each); the first queue by name that has it answers.
pub(super) async fn unique_lock(
    broker: &RedisBroker,
    key: &str,
) -> redis::RedisResult<Option<UniqueLock>> {
    let names = known_queues(broker)
        .await?
        .iter()
        .map(|queue| (broker.keys.unique(queue, key), key.to_owned()))
        .collect();
    let locks = read_locks(broker, names).await?;
    Ok(locks.into_iter().next())
}

/// The queues (never lanes: a queue's lanes share its locks) in the set of queue names,
/// sorted.
async fn known_queues(broker: &RedisBroker) -> redis::RedisResult<Vec<String>> {
    let names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(broker.keys.queues())
        .query_async(&mut broker.conn())
        .await?;
    let mut queues: Vec<String> = names
        .iter()
        .map(|name| crate::priority::split_lane(name).0.to_owned())
        .collect();
    queues.sort();
    queues.dedup();
    Ok(queues)
}

/// The locks stored at each (Redis key, lock key) that are still held, in one round trip
/// (`GET` and `PTTL` of each, pipelined: one pipeline per slot).
async fn read_locks(
    broker: &RedisBroker,
    names: Vec<(String, String)>,
) -> redis::RedisResult<Vec<UniqueLock>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let groups = broker.per_slot(&names, |(name, _)| tag_of(name).to_owned());
    let replies = futures_util::future::try_join_all(groups.into_iter().map(|group| async move {
        let mut pipe = redis::pipe();
        for (_, (name, _)) in &group {
            pipe.get(name).pttl(name);
        }
        let replies: Vec<(Option<String>, i64)> = pipe.query_async(&mut broker.conn()).await?;
        Ok::<_, redis::RedisError>(
            group
                .into_iter()
                .map(|(position, _)| position)
                .zip(replies)
                .collect::<Vec<_>>(),
        )
    }))
    .await?;
    let replies = in_item_order(replies);
    Ok(names
        .into_iter()
        .zip(replies)
        // None: released or expired before the read.
        .filter_map(|((_, key), (holder, ttl))| {
            holder.map(|job_id| UniqueLock {
                key,
                job_id,
                expires_in: u64::try_from(ttl).ok().map(Duration::from_millis),
            })
        })
        .collect())
}

/// Up to `limit` locks whose key starts with `prefix`, each with its holder and TTL, sorted by
/// key. A queue's locks share its hash tag, so each queue's are one `SCAN` on the node of its
/// slot.
pub(super) async fn unique_locks(
    broker: &RedisBroker,
    prefix: &str,
    limit: usize,
) -> redis::RedisResult<Vec<UniqueLock>> {
    let mut conn = broker.conn();
    let mut names = Vec::new();
    for queue in known_queues(broker).await? {
        let base = broker.keys.unique_prefix(&queue);
        let pattern = format!("{}{}*", glob_escape(&base), glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut found = Vec::new();
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, batch): (u64, Vec<String>) = conn.on_node_of(&base, &scan).await?;
            found.extend(batch);
            cursor = next;
            if cursor == 0 || found.len() >= limit {
                break;
            }
        }
        found.sort();
        found.dedup();
        names.extend(found.into_iter().map(|name| {
            let key = name[base.len()..].to_owned();
            (name, key)
        }));
    }
    names.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    names.truncate(limit);
    read_locks(broker, names).await
}

/// `text` with the glob characters of `SCAN MATCH` escaped, to match it literally.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
