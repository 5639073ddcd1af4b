//! Unique jobs' locks: taken with the job's enqueue, released by the worker (at the start,
//! or with the job's settlement in `settle.lua`), listed for operators; and debounce keys,
//! which name the last job enqueued with them.

use std::time::Duration;

use super::connection::RedisBroker;
use crate::broker::{NewJob, UniqueLock};
use crate::envelope::now_ms;
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
    let (target, due) = match job.due_ms {
        Some(due) if due > now_ms() => (broker.keys.delayed(&job.queue), due.to_string()),
        _ => (broker.keys.stream(&job.queue), String::new()),
    };
    broker
        .scripts
        .push_unique
        .key(broker.keys.unique(key))
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

/// Add `job` as the last of debounce key `key` (`push_debounced.lua`).
pub(super) async fn push_debounced(
    broker: &RedisBroker,
    job: NewJob,
    key: &str,
    id: &str,
    hold: Duration,
) -> redis::RedisResult<()> {
    let (target, due) = match job.due_ms {
        Some(due) if due > now_ms() => (broker.keys.delayed(&job.queue), due.to_string()),
        _ => (broker.keys.stream(&job.queue), String::new()),
    };
    let _: i64 = broker
        .scripts
        .push_debounced
        .key(broker.keys.debounce(key))
        .key(target)
        .key(broker.keys.queues())
        .arg(id)
        .arg(hold.as_millis().max(1) as u64)
        .arg(&job.payload)
        .arg(due)
        .arg(&job.queue)
        .arg(JOB_FIELD)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(())
}

/// Whether job `id` is the last of debounce key `key`, clearing the key if so
/// (`release_unique.lua`, which deletes a key that holds the id).
pub(super) async fn take_debounce(
    broker: &RedisBroker,
    key: &str,
    id: &str,
) -> redis::RedisResult<bool> {
    let taken: i64 = broker
        .scripts
        .release_unique
        .key(broker.keys.debounce(key))
        .arg(id)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(taken == 1)
}

/// Release the lock `key` if job `id` holds it (`release_unique.lua`).
pub(super) async fn release_unique(
    broker: &RedisBroker,
    key: &str,
    id: &str,
) -> redis::RedisResult<()> {
    let _: i64 = broker
        .scripts
        .release_unique
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
    let name = broker.keys.unique(key);
    read_lock(&mut broker.conn(), &name, key.to_owned()).await
}

/// The lock stored at `name` (whose key is `key`), if it is still held.
async fn read_lock(
    conn: &mut impl redis::aio::ConnectionLike,
    name: &str,
    key: String,
) -> redis::RedisResult<Option<UniqueLock>> {
    let (holder, ttl): (Option<String>, i64) =
        redis::pipe().get(name).pttl(name).query_async(conn).await?;
    Ok(holder.map(|job_id| UniqueLock {
        key,
        job_id,
        expires_in: u64::try_from(ttl).ok().map(Duration::from_millis),
    }))
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
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut conn)
            .await?;
        names.extend(batch);
        cursor = next;
        if cursor == 0 || names.len() >= limit {
            break;
        }
    }
    names.sort();
    names.dedup();
    names.truncate(limit);
    let mut locks = Vec::with_capacity(names.len());
    for name in names {
        let key = name[base.len()..].to_owned();
        // None: released or expired between the scan and the read.
        locks.extend(read_lock(&mut conn, &name, key).await?);
    }
    Ok(locks)
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
