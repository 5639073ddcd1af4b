//! The dead-letter stream `{ns}:dead`: a dead letter as stream fields and back, reading it
//! page by page, replaying and purging.

use super::connection::RedisBroker;
use super::reply::range_entries;
use crate::broker::{
    DeadJob, DeadLetter, DeadLetterStats, DeadReason, FailureGroup, footprint, group_id,
};
use crate::keys::{DeadField, JOB_FIELD};

/// The fields of a dead-letter entry, in stream order (documented in `docs/protocol.md`), for
/// a letter from `entry_id` of `queue`, and what it takes against the byte budget (also the
/// last field, `bytes`).
pub(super) fn fields(
    dead: &DeadLetter,
    queue: &str,
    entry_id: &str,
) -> (Vec<(&'static str, Vec<u8>)>, u64) {
    let errors = rmp_serde::to_vec_named(&dead.errors).unwrap_or_else(|_| vec![0x90]);
    let mut fields = vec![
        (
            DeadField::Reason.as_str(),
            dead.reason.as_str().as_bytes().to_vec(),
        ),
        (DeadField::Error.as_str(), dead.error.as_bytes().to_vec()),
        (DeadField::Queue.as_str(), queue.as_bytes().to_vec()),
        (DeadField::Entry.as_str(), entry_id.as_bytes().to_vec()),
        (DeadField::At.as_str(), dead.at_ms.to_string().into_bytes()),
        (DeadField::Errors.as_str(), errors),
        (
            DeadField::Truncated.as_str(),
            if dead.truncated { b"1" } else { b"0" }.to_vec(),
        ),
    ];
    if let Some(id) = &dead.job_id {
        fields.push((DeadField::Id.as_str(), id.as_str().as_bytes().to_vec()));
    }
    if let Some(task) = &dead.task {
        fields.push((DeadField::Task.as_str(), task.as_bytes().to_vec()));
    }
    fields.push((DeadField::Group.as_str(), dead.group().into_bytes()));
    fields.push((JOB_FIELD, dead.payload.clone()));
    // The count itself is a field too: 20 digits at most.
    let length: usize = fields
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum::<usize>()
        + DeadField::Bytes.as_str().len()
        + 20;
    let bytes = footprint(length);
    fields.push((DeadField::Bytes.as_str(), bytes.to_string().into_bytes()));
    (fields, bytes)
}

/// A stored entry read back; fields it does not know are skipped, missing ones are empty.
fn decode(entry_id: String, fields: Vec<(String, Vec<u8>)>) -> DeadJob {
    let mut job = DeadJob {
        entry_id,
        job_id: None,
        task: None,
        queue: String::new(),
        reason: DeadReason::Unknown,
        error: String::new(),
        errors: Vec::new(),
        at_ms: 0,
        payload_size: 0,
        truncated: false,
        bytes: 0,
        group: String::new(),
        payload: Vec::new(),
    };
    for (name, value) in fields {
        let text = || String::from_utf8_lossy(&value).into_owned();
        if name == JOB_FIELD {
            job.payload_size = value.len();
            job.payload = value;
            continue;
        }
        match DeadField::from_wire(&name) {
            Some(DeadField::Id) => job.job_id = Some(text()),
            Some(DeadField::Task) => job.task = Some(text()),
            Some(DeadField::Queue) => job.queue = text(),
            Some(DeadField::Reason) => {
                job.reason = DeadReason::from_wire(&text()).unwrap_or(DeadReason::Unknown)
            }
            Some(DeadField::Error) => job.error = text(),
            Some(DeadField::Errors) => {
                job.errors = rmp_serde::from_slice(&value).unwrap_or_default()
            }
            Some(DeadField::At) => job.at_ms = text().parse().unwrap_or(0),
            Some(DeadField::Truncated) => job.truncated = value == b"1",
            Some(DeadField::Bytes) => job.bytes = text().parse().unwrap_or(0),
            Some(DeadField::Group) => job.group = text(),
            Some(DeadField::Entry) | None => {}
        }
    }
    if job.group.is_empty() {
        // Stored before letters carried their group.
        job.group = group_id(job.task.as_deref(), job.reason, &job.error);
    }
    job
}

/// Up to `count` dead letters after `after` (exclusive), or from the oldest, up to `until`
/// (inclusive).
pub(super) async fn page(
    broker: &RedisBroker,
    after: Option<&str>,
    until: Option<&str>,
    count: usize,
) -> redis::RedisResult<Vec<DeadJob>> {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    range(broker, &start, until.unwrap_or("+"), count).await
}

/// The id of the newest dead letter.
pub(super) async fn newest(broker: &RedisBroker) -> redis::RedisResult<Option<String>> {
    let reply = redis::cmd("XREVRANGE")
        .arg(broker.keys.dead())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut broker.conn())
        .await?;
    Ok(range_entries(reply).into_iter().next().map(|(id, _)| id))
}

/// The dead letter with this entry id.
pub(super) async fn get(
    broker: &RedisBroker,
    entry_id: &str,
) -> redis::RedisResult<Option<DeadJob>> {
    Ok(range(broker, entry_id, entry_id, 1)
        .await?
        .into_iter()
        .find(|job| job.entry_id == entry_id))
}

/// Up to `count` dead letters before `before` (exclusive), or from the newest, newest first.
pub(super) async fn page_back(
    broker: &RedisBroker,
    before: Option<&str>,
    count: usize,
) -> redis::RedisResult<Vec<DeadJob>> {
    let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
    read(broker, "XREVRANGE", &end, "-", count).await
}

/// `XRANGE` of the dead letters from `start` to `end`, decoded.
async fn range(
    broker: &RedisBroker,
    start: &str,
    end: &str,
    count: usize,
) -> redis::RedisResult<Vec<DeadJob>> {
    read(broker, "XRANGE", start, end, count).await
}

/// `XRANGE` or `XREVRANGE` (`command`) of the dead letters between two ids, decoded.
async fn read(
    broker: &RedisBroker,
    command: &str,
    from: &str,
    to: &str,
    count: usize,
) -> redis::RedisResult<Vec<DeadJob>> {
    let reply = redis::cmd(command)
        .arg(broker.keys.dead())
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(&mut broker.conn())
        .await?;
    Ok(range_entries(reply)
        .into_iter()
        .map(|(id, fields)| decode(id, fields))
        .collect())
}

/// Length, trimmed and added counts, read together (`dead_stats.lua`).
pub(super) async fn stats(broker: &RedisBroker) -> redis::RedisResult<DeadLetterStats> {
    let (len, trimmed, added, bytes): (u64, u64, u64, u64) = broker
        .scripts
        .dead_stats
        .key(broker.keys.dead())
        .key(broker.keys.dead_trimmed())
        .key(broker.keys.dead_bytes())
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(DeadLetterStats {
        len,
        trimmed,
        added,
        bytes,
    })
}

/// Put the dead letter back on `queue` as `payload`, once (`replay.lua`).
///
/// On one server that is one step. On a cluster the letter (the namespace's slot) and the
/// queue (its own) are on different slots, so the job is added first, while the letter is
/// still there, and the letter removed after: a crash between leaves the letter to replay
/// again rather than losing the job, and two replays of one letter racing may both add it
/// (at least once, never lost).
pub(super) async fn replay(
    broker: &RedisBroker,
    entry_id: &str,
    queue: &str,
    job_id: &str,
    payload: Vec<u8>,
) -> redis::RedisResult<bool> {
    let mut invocation = broker.scripts.replay.prepare_invoke();
    invocation
        .key(broker.keys.dead())
        .key(broker.keys.record(job_id))
        .key(broker.keys.dead_bytes())
        .key(broker.keys.dead_groups());
    if broker.spans_slots() {
        let stored: Vec<redis::Value> = redis::cmd("XRANGE")
            .arg(broker.keys.dead())
            .arg(entry_id)
            .arg(entry_id)
            .query_async(&mut broker.conn())
            .await?;
        if stored.is_empty() {
            return Ok(false);
        }
        redis::cmd("XADD")
            .arg(broker.keys.stream(queue))
            .arg("*")
            .arg(JOB_FIELD)
            .arg(&payload)
            .exec_async(&mut broker.conn())
            .await?;
        let _: i64 = invocation
            .arg(entry_id)
            .arg(JOB_FIELD)
            .arg(&[] as &[u8])
            .invoke_async(&mut broker.conn())
            .await?;
        return Ok(true);
    }
    let replayed: i64 = invocation
        .key(broker.keys.stream(queue))
        .arg(entry_id)
        .arg(JOB_FIELD)
        .arg(payload)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(replayed == 1)
}

/// Dead letters removed per call of `purge.lua` with a time: each call copies at most this
/// many letters (of at most `PSW_DLQ_MAX_PAYLOAD` each) into Lua.
const PURGE_PAGE: usize = 100;

/// Delete every dead letter, or those older than `before_ms` (`purge.lua`, a page per call).
pub(super) async fn purge(broker: &RedisBroker, before_ms: Option<i64>) -> redis::RedisResult<u64> {
    let Some(before_ms) = before_ms else {
        let mut purge = broker.scripts.purge.key(broker.keys.dead());
        purge
            .key(broker.keys.dead_bytes())
            .key(broker.keys.dead_groups());
        return purge.invoke_async(&mut broker.conn()).await;
    };
    let mut removed = 0;
    loop {
        let mut purge = broker.scripts.purge.key(broker.keys.dead());
        purge
            .key(broker.keys.dead_bytes())
            .key(broker.keys.dead_groups());
        // `(0-0` is no valid end; nothing is older than 1 ms after the epoch anyway.
        purge.arg(before_ms.max(1)).arg(PURGE_PAGE);
        let page: u64 = purge.invoke_async(&mut broker.conn()).await?;
        removed += page;
        if page == 0 {
            return Ok(removed);
        }
    }
}

/// The failure groups, from the index `settle.lua`, `replay.lua`, `purge.lua` and
/// `dead_remove.lua` keep beside the stream: one `HGETALL`, however many letters there are.
pub(super) async fn groups(broker: &RedisBroker) -> redis::RedisResult<Vec<FailureGroup>> {
    let index: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(broker.keys.dead_groups())
        .query_async(&mut broker.conn())
        .await?;
    let field = |id: &str, name: &str| index.get(&format!("{id}:{name}")).cloned();
    let mut groups: Vec<FailureGroup> = index
        .iter()
        .filter(|(name, _)| !name.contains(':'))
        .filter_map(|(id, count)| {
            let count: u64 = count.parse().ok().filter(|&n| n > 0)?;
            let reason = field(id, "reason")
                .and_then(|r| DeadReason::from_wire(&r))
                .unwrap_or(DeadReason::Unknown);
            let sample_error = field(id, "error").unwrap_or_default();
            Some(FailureGroup::new(
                id.clone(),
                field(id, "task"),
                reason,
                sample_error,
                count,
                field(id, "first").and_then(|t| t.parse().ok()).unwrap_or(0),
                field(id, "last").and_then(|t| t.parse().ok()).unwrap_or(0),
                field(id, "sample"),
            ))
        })
        .collect();
    FailureGroup::sort(&mut groups);
    Ok(groups)
}

/// Remove the dead letters with these entry ids, those still there (`dead_remove.lua`, a
/// page per call); returns how many went.
pub(super) async fn remove(broker: &RedisBroker, entry_ids: &[String]) -> redis::RedisResult<u64> {
    let mut removed = 0;
    for page in entry_ids.chunks(PURGE_PAGE) {
        let mut remove = broker.scripts.dead_remove.key(broker.keys.dead());
        remove
            .key(broker.keys.dead_bytes())
            .key(broker.keys.dead_groups());
        for id in page {
            remove.arg(id);
        }
        let gone: u64 = remove.invoke_async(&mut broker.conn()).await?;
        removed += gone;
    }
    Ok(removed)
}
