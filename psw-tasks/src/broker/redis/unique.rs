//! Unique jobs' locks: taken with the job's enqueue, released by the worker (at the start,
//! or with the job's settlement in `settle.lua`), listed for operators; and debounce keys,
//! which name the last job enqueued with them.

use std::time::Duration;

use super::connection::RedisBroker;
use super::queues::destination;
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
    push_keyed(broker, script, broker.keys.unique(key), job, id, hold).await
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
    let _: i64 = push_keyed(broker, script, broker.keys.debounce(key), job, id, hold).await?;
    Ok(())
}

/// Run one of the scripts that set a key to a job's id (for `hold`) and add the job; they
/// share their KEYS and ARGV.
async fn push_keyed<T: redis::FromRedisValue>(
    broker: &RedisBroker,
    script: &redis::Script,
    key: String,
    job: NewJob,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<T> {
    let (target, due) = destination(broker, &job);
    script
        .key(key)
        .key(target)
        .key(broker.keys.queues())
        .arg(id)
        .arg(hold.as_millis().max(1) as u64)
        .arg(&job.payload)
        .arg(due)
        .arg(&job.queue)
        .arg(JOB_FIELD)
        .invoke_async(&mut broker.conn())
        .await
}

/// Whether job `id` is the last of debounce key `key`, clearing the key if so
/// (`delete_if_holds.lua`).
pub(super) async fn take_debounce(
    broker: &RedisBroker,
    key: &str,
    id: &str,
) -> redis::RedisResult<bool> {
    let taken: i64 = broker
        .scripts
        .delete_if_holds
        .key(broker.keys.debounce(key))
        .arg(id)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(taken == 1)
}

/// Release the lock `key` if job `id` holds it (`delete_if_holds.lua`).
pub(super) async fn release_unique(
    broker: &RedisBroker,
    key: &str,
    id: &str,
) -> redis::RedisResult<()> {
    let _: i64 = broker
        .scripts
        .delete_if_holds
        .key(broker.keys.unique(key))
        .arg(id)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(())
}

/// The lock `key`, if a job holds it: one round trip (`GET` and `PTTL` pipelined).
pub(super) async fn unique_lock(
    broker: &RedisBroker,
    key: &str,
) -> redis::RedisResult<Option<UniqueLock>> {
    let locks = read_locks(broker, vec![(broker.keys.unique(key), key.to_owned())]).await?;
    Ok(locks.into_iter().next())
}

/// The locks stored at each (Redis key, lock key) that are still held, in one round trip
/// (`GET` and `PTTL` of each, pipelined).
async fn read_locks(
    broker: &RedisBroker,
    names: Vec<(String, String)>,
) -> redis::RedisResult<Vec<UniqueLock>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (name, _) in &names {
        pipe.get(name).pttl(name);
    }
    let replies: Vec<(Option<String>, i64)> = pipe.query_async(&mut broker.conn()).await?;
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

/// Up to `limit` locks whose key starts with `prefix`, each with its holder and TTL. Every key
/// of the namespace shares its hash tag, so on a cluster they all live on one node.
pub(super) async fn unique_locks(
    broker: &RedisBroker,
    prefix: &str,
    limit: usize,
) -> redis::RedisResult<Vec<UniqueLock>> {
    let base = broker.keys.unique_prefix();
    let pattern = format!("{base}{}*", glob_escape(prefix));
    let mut conn = broker.conn();
    let mut cursor: u64 = 0;
    let mut names = Vec::new();
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, batch): (u64, Vec<String>) = conn.on_node_of(&base, &scan).await?;
        names.extend(batch);
        cursor = next;
        if cursor == 0 || names.len() >= limit {
            break;
        }
    }
    names.sort();
    names.dedup();
    names.truncate(limit);
    let names = names
        .into_iter()
        .map(|name| {
            let key = name[base.len()..].to_owned();
            (name, key)
        })
        .collect();
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
