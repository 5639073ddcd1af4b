//! The consumer's side of the streams: blocking reads (on the readers' own connections),
//! taking over expired leases, and renewing the leases a worker holds.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::connection::{MAX_BLOCK, RedisBroker};
use super::reply::{id_list, parse_entries, stream_pairs, unexpected};
use crate::broker::Delivery;
use crate::keys::GROUP;

/// Up to `max` new jobs of `queues` in all for `consumer`, waiting up to `block` for one.
///
/// One queue is one `XREADGROUP ... COUNT max BLOCK block`. On several, a plain XREADGROUP
/// would take up to `max` from each (COUNT is per stream), so the `fetch.lua` script reads them
/// in the order given (the worker's priorities) within the budget; when none has anything
/// it waits with a blocking `XREAD` from the last delivered ids, which takes nothing, and reads
/// again once it wakes.
pub(super) async fn fetch(
    broker: &RedisBroker,
    consumer: &str,
    queues: &[String],
    max: usize,
    block: Duration,
) -> redis::RedisResult<Vec<Delivery>> {
    let block_ms = block.min(MAX_BLOCK).as_millis().max(1) as u64;
    match queues {
        [] => return Ok(Vec::new()),
        [queue] => return read_one(broker, consumer, queue, max, block_ms).await,
        _ if broker.spans_slots() => {
            return fetch_per_slot(broker, consumer, queues, max, block_ms).await;
        }
        _ => {}
    }
    let streams: Vec<String> = queues
        .iter()
        .map(|queue| broker.keys.stream(queue))
        .collect();
    let last_ids = match read_within(broker, consumer, &streams, max).await? {
        Within::Read(deliveries) => return Ok(deliveries),
        Within::Nothing { last_ids } => last_ids,
    };
    let mut wait = redis::cmd("XREAD");
    wait.arg("BLOCK")
        .arg(block_ms)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&streams)
        .arg(&last_ids);
    let mut conn = broker.readers.take().await?;
    let woken = wait.query_async::<Value>(&mut conn).await;
    if woken.is_ok() {
        broker.readers.give_back(conn).await;
    }
    if woken? == Value::Nil {
        return Ok(Vec::new());
    }
    match read_within(broker, consumer, &streams, max).await? {
        Within::Read(deliveries) => Ok(deliveries),
        // Another worker was quicker.
        Within::Nothing { .. } => Ok(Vec::new()),
    }
}

/// [`fetch`] on a cluster, where one script or `XREAD` may only name the streams of one slot:
/// the lanes of one queue share a slot, different queues do not. `fetch.lua` reads each
/// queue in the worker's order within what is left of the budget; when none has anything, a
/// blocking `XREAD` waits on each queue at once, each on a reader of its own, and the first
/// to wake makes it read again. The other waits are left to end by themselves (at most
/// `block` later), and give their readers back then.
async fn fetch_per_slot(
    broker: &RedisBroker,
    consumer: &str,
    lanes: &[String],
    max: usize,
    block_ms: u64,
) -> redis::RedisResult<Vec<Delivery>> {
    let slots: Vec<Vec<String>> = broker
        .per_slot(lanes, |lane| broker.keys.queue_tag(lane))
        .into_iter()
        .map(|group| {
            group
                .into_iter()
                .map(|(_, lane)| broker.keys.stream(lane))
                .collect()
        })
        .collect();
    let last_ids = match read_slots(broker, consumer, &slots, max).await? {
        Within::Read(deliveries) => return Ok(deliveries),
        Within::Nothing { last_ids } => last_ids,
    };
    let (woken_tx, mut woken) = tokio::sync::mpsc::channel(slots.len());
    let mut at = 0;
    for streams in &slots {
        let ids = &last_ids[at..at + streams.len()];
        at += streams.len();
        let mut wait = redis::cmd("XREAD");
        wait.arg("BLOCK")
            .arg(block_ms)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(streams)
            .arg(ids);
        let readers = broker.readers.clone();
        let woken_tx = woken_tx.clone();
        tokio::spawn(async move {
            let woke = async {
                let mut conn = readers.take().await?;
                let reply = wait.query_async::<Value>(&mut conn).await;
                if reply.is_ok() {
                    readers.give_back(conn).await;
                }
                Ok::<_, redis::RedisError>(reply? != Value::Nil)
            }
            .await;
            let _ = woken_tx.send(woke).await;
        });
    }
    drop(woken_tx);
    loop {
        match woken.recv().await {
            // Every wait ended with nothing.
            None => return Ok(Vec::new()),
            Some(Ok(false)) => continue,
            Some(Ok(true)) => break,
            Some(Err(err)) => return Err(err),
        }
    }
    match read_slots(broker, consumer, &slots, max).await? {
        Within::Read(deliveries) => Ok(deliveries),
        Within::Nothing { .. } => Ok(Vec::new()),
    }
}

/// One `fetch.lua` pass per slot, in order, within `max` in all; when none read anything,
/// the last delivered ids of every stream, in the order of `slots` flattened.
async fn read_slots(
    broker: &RedisBroker,
    consumer: &str,
    slots: &[Vec<String>],
    max: usize,
) -> redis::RedisResult<Within> {
    let mut read = Vec::new();
    let mut last_ids = Vec::new();
    for streams in slots {
        if read.len() >= max.max(1) {
            break;
        }
        match read_within(broker, consumer, streams, max.max(1) - read.len()).await? {
            Within::Read(deliveries) => read.extend(deliveries),
            Within::Nothing { last_ids: ids } => last_ids.extend(ids),
        }
    }
    Ok(if read.is_empty() {
        Within::Nothing { last_ids }
    } else {
        Within::Read(read)
    })
}

/// `XREADGROUP ... COUNT max BLOCK block STREAMS <queue> >` for `consumer`.
async fn read_one(
    broker: &RedisBroker,
    consumer: &str,
    queue: &str,
    max: usize,
    block_ms: u64,
) -> redis::RedisResult<Vec<Delivery>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(max.max(1))
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(broker.keys.stream(queue))
        .arg(">");
    let mut conn = broker.readers.take().await?;
    let reply = cmd.query_async::<Value>(&mut conn).await;
    if reply.is_ok() {
        broker.readers.give_back(conn).await;
    }
    Ok(deliveries_of(broker, reply?))
}

/// What one pass of `fetch.lua` found.
enum Within {
    Read(Vec<Delivery>),
    /// Nothing new anywhere; the streams' last delivered ids, to wait from.
    Nothing {
        last_ids: Vec<String>,
    },
}

async fn read_within(
    broker: &RedisBroker,
    consumer: &str,
    streams: &[String],
    max: usize,
) -> redis::RedisResult<Within> {
    let mut invocation = broker.scripts.fetch.prepare_invoke();
    for stream in streams {
        invocation.key(stream);
    }
    invocation.arg(GROUP).arg(consumer).arg(max.max(1));
    let reply: Value = invocation.invoke_async(&mut broker.conn()).await?;
    match reply {
        Value::Array(mut parts)
            if parts.len() == 2 && matches!(&parts[0], Value::Array(read) if read.is_empty()) =>
        {
            let last_ids = id_list(parts.pop().expect("len checked"));
            if last_ids.len() != streams.len() {
                return Err(unexpected("fetch.lua"));
            }
            Ok(Within::Nothing { last_ids })
        }
        reply => Ok(Within::Read(deliveries_of(broker, reply))),
    }
}

/// The deliveries of an XREADGROUP-shaped reply, `[[stream, entries]...]`.
fn deliveries_of(broker: &RedisBroker, reply: Value) -> Vec<Delivery> {
    let mut out = Vec::new();
    for (stream, entries) in stream_pairs(reply) {
        let lane = stream
            .as_deref()
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| broker.keys.lane_of_stream(s));
        let Some(queue) = lane else {
            continue;
        };
        let queue: Arc<str> = Arc::from(queue);
        parse_entries(entries, &queue, &mut out);
    }
    out
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
