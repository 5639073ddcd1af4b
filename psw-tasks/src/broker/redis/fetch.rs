//! The consumer's side of the streams: blocking reads (on the readers' own connections),
//! taking over expired leases, and renewing the leases a worker holds.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::connection::{MAX_BLOCK, RedisBroker};
use super::reply::{id_list, parse_entries, stream_pairs, unexpected};
use crate::broker::Delivery;
use crate::keys::GROUP;

/// `XREADGROUP ... COUNT max BLOCK block STREAMS <queues> > ...` for `consumer`.
pub(super) async fn fetch(
    broker: &RedisBroker,
    consumer: &str,
    queues: &[String],
    max: usize,
    block: Duration,
) -> redis::RedisResult<Vec<Delivery>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(max.max(1))
        .arg("BLOCK")
        .arg(block.min(MAX_BLOCK).as_millis().max(1) as u64)
        .arg("STREAMS");
    for queue in queues {
        cmd.arg(broker.keys.stream(queue));
    }
    for _ in queues {
        cmd.arg(">");
    }
    let mut conn = broker.readers.take().await?;
    let reply = cmd.query_async::<Value>(&mut conn).await;
    if reply.is_ok() {
        broker.readers.give_back(conn).await;
    }
    let mut out = Vec::new();
    for (stream, entries) in stream_pairs(reply?) {
        let Some(queue) = stream.as_deref().and_then(|s| queue_of(broker, s)) else {
            continue;
        };
        let queue: Arc<str> = Arc::from(queue);
        parse_entries(entries, &queue, &mut out);
    }
    Ok(out)
}

/// The queue whose stream key is `stream`.
fn queue_of<'v>(broker: &RedisBroker, stream: &'v [u8]) -> Option<&'v str> {
    std::str::from_utf8(stream)
        .ok()?
        .strip_prefix(broker.queue_prefix.as_str())
}

/// Take over entries idle for `min_idle` (the `reclaim.lua` script), returning each with its
/// new delivery count.
pub(super) async fn reclaim(
    broker: &RedisBroker,
    consumer: &str,
    queue: &str,
    min_idle: Duration,
    max: usize,
    holds: &[String],
) -> redis::RedisResult<Vec<Delivery>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let reply: Value = broker
        .scripts
        .reclaim
        .key(broker.keys.stream(queue))
        .arg(GROUP)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(max)
        .arg(holds)
        .invoke_async(&mut broker.conn())
        .await?;
    let Value::Array(mut parts) = reply else {
        return Err(unexpected("reclaim"));
    };
    let deleted = parts.pop().map(id_list).unwrap_or_default();
    if !deleted.is_empty() {
        // Entries deleted from the stream while pending: XCLAIM has dropped them from the
        // group, and there is nothing left to run.
        tracing::warn!(queue, count = deleted.len(), ids = ?deleted, "pending entries were missing from the stream (trimmed or deleted by hand)");
    }
    let entries = parts.pop().ok_or_else(|| unexpected("reclaim"))?;
    let mut out = Vec::new();
    parse_entries(entries, &Arc::from(queue), &mut out);
    Ok(out)
}

/// Reset the idle time of the entries `consumer` still owns (`renew.lua`); how many it owned.
pub(super) async fn renew(
    broker: &RedisBroker,
    consumer: &str,
    queue: &str,
    entry_ids: &[String],
) -> redis::RedisResult<usize> {
    if entry_ids.is_empty() {
        return Ok(0);
    }
    let mut invocation = broker.scripts.renew.key(broker.keys.stream(queue));
    invocation.arg(GROUP).arg(consumer).arg(entry_ids);
    invocation.invoke_async(&mut broker.conn()).await
}
