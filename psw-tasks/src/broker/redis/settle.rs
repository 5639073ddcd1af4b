//! Settling a batch: every record, retry, dead letter and acknowledgement of the writer's
//! batch in one `settle.lua` call, each write fenced on the delivery it is about.

use std::sync::Arc;
use std::time::Duration;

use super::connection::RedisBroker;
use super::dead::fields as dead_fields;
use crate::broker::{Applied, Write};
use crate::envelope::JobId;
use crate::keys::GROUP;

/// Most pending entries of one consumer the settle script reads to check ownership: far more
/// than any worker holds (concurrency + prefetch).
const PENDING_SCAN_LIMIT: u64 = 1_000_000;

/// How long a consumer's receipt of its last batch is kept: longer than any writer retries a
/// batch whose reply was lost, and it goes by itself with a consumer that is gone.
const RECEIPT_TTL: Duration = Duration::from_secs(24 * 3600);

pub(super) async fn apply(
    broker: &RedisBroker,
    consumer: &str,
    batch: u64,
    writes: &[Write],
    ttl: Duration,
) -> redis::RedisResult<Applied> {
    if writes.is_empty() {
        return Ok(Applied::default());
    }
    let mut keys = KeyList::default();
    keys.add(broker.keys.dead());
    keys.add(broker.keys.dead_trimmed());
    keys.add(broker.keys.dead_bytes());
    keys.add(broker.keys.receipt(consumer));
    keys.add(broker.keys.dead_groups());
    let mut streams = StreamRanges::default();
    // Write index of each op, for mapping the fenced positions back.
    let mut writing = Vec::new();
    let mut bare = Vec::new();
    let mut ops = Vec::new();
    for (index, write) in writes.iter().enumerate() {
        let (queue, entry_id) = write.delivery();
        let stream = streams.include(&mut keys, queue, entry_id, || broker.keys.stream(queue));
        match write {
            Write::Record {
                deliveries,
                id,
                record,
                ..
            } => {
                writing.push(index);
                ops.push(SettleOp {
                    stream,
                    entry_id,
                    deliveries: *deliveries,
                    ack: 0,
                    record_key: keys.add(broker.keys.record(id.as_str())),
                    record,
                    delayed_key: 0,
                    due_ms: 0,
                    retry: &[],
                    dead: Vec::new(),
                    dead_bytes: 0,
                    finished: "",
                    unlock_key: 0,
                    unlock_id: "",
                });
            }
            Write::Settle(settlement)
                if settlement.record.is_none()
                    && settlement.retry.is_none()
                    && settlement.dead.is_none()
                    && settlement.unlock.is_none() =>
            {
                bare.push((index, stream, entry_id, settlement.deliveries));
            }
            Write::Settle(settlement) => {
                let (record_key, record) = match &settlement.record {
                    Some((id, record)) => {
                        (keys.add(broker.keys.record(id.as_str())), record.as_slice())
                    }
                    None => (0, &[][..]),
                };
                let (delayed_key, due_ms, retry) = match &settlement.retry {
                    Some(retry) => (
                        keys.add_once(broker.keys.delayed(&retry.queue)),
                        retry.due_ms.unwrap_or(0),
                        retry.payload.as_slice(),
                    ),
                    None => (0, 0, &[][..]),
                };
                let (dead, dead_bytes) = settlement
                    .dead
                    .as_ref()
                    .map(|dead| dead_fields(dead, &settlement.queue, &settlement.entry_id))
                    .unwrap_or_default();
                let (unlock_key, unlock_id) = match settlement.unlock.as_deref() {
                    Some((key, id)) => (keys.add(broker.keys.unique(key)), id.as_str()),
                    None => (0, ""),
                };
                writing.push(index);
                ops.push(SettleOp {
                    stream,
                    entry_id,
                    deliveries: settlement.deliveries,
                    ack: 1,
                    unlock_key,
                    unlock_id,
                    record_key,
                    record,
                    delayed_key,
                    due_ms,
                    retry,
                    dead,
                    dead_bytes,
                    finished: settlement.finished.as_ref().map_or("", JobId::as_str),
                });
            }
        }
    }
    let mut invocation = broker.scripts.settle.prepare_invoke();
    for key in &keys.keys {
        invocation.key(key);
    }
    invocation
        .arg(GROUP)
        .arg(consumer)
        .arg(ttl.as_millis().max(1) as u64)
        .arg(broker.dead_letter_limits.max_len.max(1))
        .arg(broker.keys.finished_channel())
        .arg(encode_ops(&ops))
        .arg(streams.ranges.len())
        .arg(PENDING_SCAN_LIMIT)
        .arg(broker.dead_letter_limits.max_bytes)
        .arg(batch)
        .arg(RECEIPT_TTL.as_millis() as u64);
    for range in &streams.ranges {
        invocation
            .arg(range.key)
            .arg(range.first_arg())
            .arg(range.last_arg());
    }
    for (_, stream, entry_id, deliveries) in &bare {
        invocation.arg(*stream).arg(*entry_id).arg(*deliveries);
    }
    let (fenced, dead_trimmed, dead_entries, bare_fenced, missing, failed): SettleReply =
        invocation.invoke_async(&mut broker.conn()).await?;
    let mut fenced: Vec<usize> = fenced
        .into_iter()
        .filter_map(|op| writing.get(op).copied())
        .chain(
            bare_fenced
                .into_iter()
                .filter_map(|op| bare.get(op).map(|(index, ..)| *index)),
        )
        .collect();
    fenced.sort_unstable();
    let missing_queues = streams
        .ranges
        .iter()
        .filter(|range| missing.contains(&range.key))
        .map(|range| range.queue.clone())
        .collect();
    let failed = failed
        .into_iter()
        .filter_map(|(op, error)| writing.get(op).map(|&index| (index, error)))
        .collect();
    Ok(Applied {
        fenced,
        dead_trimmed,
        dead_entries,
        missing_queues,
        failed,
    })
}

/// What `settle.lua` returns: fenced writing ops, dead letters trimmed, ids of the dead letters
/// added, fenced bare acknowledgements, key positions of streams whose group is gone, refused
/// ops with Redis's reason.
type SettleReply = (
    Vec<usize>,
    u64,
    Vec<(String, u64)>,
    Vec<usize>,
    Vec<usize>,
    Vec<(usize, String)>,
);

/// The keys of one script call, numbered from 1 as Lua's KEYS are.
#[derive(Default)]
struct KeyList {
    keys: Vec<String>,
}

impl KeyList {
    /// Add a key that is new to the call (a record key: one per job).
    fn add(&mut self, key: String) -> usize {
        self.keys.push(key);
        self.keys.len()
    }

    /// Add a key once: a call names few distinct ones (a delayed set per queue), so a scan is
    /// cheaper than hashing.
    fn add_once(&mut self, key: String) -> usize {
        match self.keys.iter().position(|known| *known == key) {
            Some(position) => position + 1,
            None => self.add(key),
        }
    }
}

/// The streams of one settle call: each one's key position and the range of entry ids the
/// batch settles there, for a narrow `XPENDING`.
#[derive(Default)]
struct StreamRanges {
    ranges: Vec<StreamRange>,
}

struct StreamRange {
    queue: Arc<str>,
    key: usize,
    /// Lowest and highest entry id seen, as (milliseconds, sequence); `None` once an id did not
    /// parse (then the whole stream is read).
    bounds: Option<((u64, u64), (u64, u64))>,
}

impl StreamRanges {
    /// The key position of `queue`'s stream, widening its range to take in `entry_id`; `key`
    /// makes the stream's key name the first time the queue is seen.
    fn include(
        &mut self,
        keys: &mut KeyList,
        queue: &Arc<str>,
        entry_id: &str,
        key: impl FnOnce() -> String,
    ) -> usize {
        let id = parse_entry_id(entry_id);
        let at = match self
            .ranges
            .iter()
            .position(|range| Arc::ptr_eq(&range.queue, queue) || range.queue == *queue)
        {
            Some(at) => at,
            None => {
                self.ranges.push(StreamRange {
                    queue: queue.clone(),
                    key: keys.add_once(key()),
                    bounds: id.map(|id| (id, id)),
                });
                self.ranges.len() - 1
            }
        };
        let range = &mut self.ranges[at];
        range.bounds = match (range.bounds, id) {
            (Some((low, high)), Some(id)) => Some((low.min(id), high.max(id))),
            _ => None,
        };
        range.key
    }
}

impl StreamRange {
    fn first_arg(&self) -> String {
        self.bounds
            .map_or_else(|| "-".to_owned(), |((ms, seq), _)| format!("{ms}-{seq}"))
    }

    fn last_arg(&self) -> String {
        self.bounds
            .map_or_else(|| "+".to_owned(), |(_, (ms, seq))| format!("{ms}-{seq}"))
    }
}

/// A stream entry id `<ms>-<seq>` as numbers, which order as Redis orders ids.
fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One write as the settle script reads it: a positional MessagePack array (see `settle.lua`).
/// Key positions are 1-based; 0 means no such key.
struct SettleOp<'w> {
    stream: usize,
    entry_id: &'w str,
    deliveries: u64,
    ack: u8,
    record_key: usize,
    record: &'w [u8],
    delayed_key: usize,
    due_ms: i64,
    retry: &'w [u8],
    dead: Vec<(&'static str, Vec<u8>)>,
    /// What the dead letter takes against the byte budget.
    dead_bytes: u64,
    finished: &'w str,
    /// The unique lock to release (0: none) and the job id that must hold it.
    unlock_key: usize,
    unlock_id: &'w str,
}

/// The ops as MessagePack for Redis's Lua `cmsgpack`, which predates the `bin` types: bytes go
/// as `str` (Lua strings are byte strings, so nothing is lost).
fn encode_ops(ops: &[SettleOp<'_>]) -> Vec<u8> {
    use rmp::encode::{write_array_len, write_sint, write_str_len, write_uint};
    fn bytes(out: &mut Vec<u8>, value: &[u8]) {
        write_str_len(out, value.len() as u32).expect("writing to a Vec cannot fail");
        out.extend_from_slice(value);
    }
    let mut out = Vec::with_capacity(ops.len() * 128);
    let ok = "writing to a Vec cannot fail";
    write_array_len(&mut out, ops.len() as u32).expect(ok);
    for op in ops {
        write_array_len(&mut out, 14).expect(ok);
        write_uint(&mut out, op.stream as u64).expect(ok);
        bytes(&mut out, op.entry_id.as_bytes());
        write_uint(&mut out, op.deliveries).expect(ok);
        write_uint(&mut out, u64::from(op.ack)).expect(ok);
        write_uint(&mut out, op.record_key as u64).expect(ok);
        bytes(&mut out, op.record);
        write_uint(&mut out, op.delayed_key as u64).expect(ok);
        write_sint(&mut out, op.due_ms).expect(ok);
        bytes(&mut out, op.retry);
        write_array_len(&mut out, 2 * op.dead.len() as u32).expect(ok);
        for (name, value) in &op.dead {
            bytes(&mut out, name.as_bytes());
            bytes(&mut out, value);
        }
        bytes(&mut out, op.finished.as_bytes());
        write_uint(&mut out, op.dead_bytes).expect(ok);
        write_uint(&mut out, op.unlock_key as u64).expect(ok);
        bytes(&mut out, op.unlock_id.as_bytes());
    }
    out
}
