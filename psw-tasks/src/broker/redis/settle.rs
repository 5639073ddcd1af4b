//! Settling a batch: every record, retry, dead letter and acknowledgement of the writer's
//! batch in one `settle.lua` call, each write fenced on the delivery it is about. On a
//! cluster, where one call keeps to one slot, the batch settles per slot in an order that
//! keeps the same promises (`per_slot`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::connection::RedisBroker;
use super::dead::fields as dead_fields;
use crate::broker::{Applied, Settlement, Write};
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
    if broker.spans_slots() {
        return per_slot(broker, consumer, batch, writes, ttl).await;
    }
    let mut keys = KeyList::default();
    keys.add(broker.keys.receipt(consumer));
    add_dead_letter_keys(broker, &mut keys);
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
                    Some((key, id)) => (
                        keys.add(broker.keys.unique(&settlement.queue, key)),
                        id.as_str(),
                    ),
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
    let bare_acks: Vec<_> = bare
        .iter()
        .map(|(_, stream, entry_id, deliveries)| (*stream, *entry_id, *deliveries))
        .collect();
    let call = SettleCall {
        consumer,
        batch,
        ttl,
        keys: &keys,
        ops: &ops,
        streams: &streams,
        bare: &bare_acks,
    };
    let (fenced, dead_trimmed, dead_entries, bare_fenced, missing, failed) =
        call.invoke(broker).await?;
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

/// [`apply`] on a cluster. A queue's streams, delayed sets and unique locks share its slot;
/// records and dead letters are on the namespace's. The promise kept is the one-call
/// settle's: a delivery is acknowledged only once its outcome is stored, and only by its
/// holder. So, in this order:
///
/// 1. The deliveries with an outcome to store are checked, on their queues' slots: does this
///    consumer still hold them, with the delivery count it saw (`XPENDING`)?
/// 2. The records and dead letters of those it holds are written, with the finished
///    announcement, in one `settle.lua` call on the namespace's slot (no stream there: the
///    ops are applied unfenced, having been checked in step 1).
/// 3. Per queue slot, one `settle.lua` call checks the holder again and acknowledges, adding
///    retries and releasing unique locks in the same step. A delivery whose outcome was not
///    stored (not held in step 1, or refused in step 2) is sent with delivery count 0, which
///    no delivery has, so it is fenced there.
///
/// A crash between 2 and 3 leaves stored outcomes of pending deliveries, which run again (at
/// least once, as always). A takeover between 1 and 3 is caught by the second check: that
/// delivery is not acknowledged, and its outcome stays stored beside the new holder's run.
/// Each call keeps its receipt (the namespace's, and each queue's), and each op keeps its
/// position in its call whatever step 1 finds on a retry of the batch (a skipped op is sent as
/// one that writes nothing, or with delivery count 0), so a batch applied again returns what it
/// returned first.
async fn per_slot(
    broker: &RedisBroker,
    consumer: &str,
    batch: u64,
    writes: &[Write],
    ttl: Duration,
) -> redis::RedisResult<Applied> {
    // Whether a settlement has an outcome to store on the namespace's slot.
    let settlement_stores = |settlement: &Settlement| {
        settlement.record.is_some() || settlement.dead.is_some() || settlement.finished.is_some()
    };
    let stores = |write: &Write| match write {
        Write::Record { .. } => true,
        Write::Settle(settlement) => settlement_stores(settlement),
    };
    // Step 1.
    let mut scratch = KeyList::default();
    let mut checked = StreamRanges::default();
    for write in writes.iter().filter(|write| stores(write)) {
        let (queue, entry_id) = write.delivery();
        checked.include(&mut scratch, queue, entry_id, || broker.keys.stream(queue));
    }
    let pending = futures_util::future::try_join_all(checked.ranges.iter().map(|range| {
        let stream = &scratch.keys[range.key - 1];
        async move {
            let reply: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
                .arg(stream)
                .arg(GROUP)
                .arg(range.first_arg())
                .arg(range.last_arg())
                .arg(PENDING_SCAN_LIMIT)
                .arg(consumer)
                .query_async(&mut broker.conn())
                .await;
            match reply {
                Ok(entries) => Ok((range.queue.clone(), Some(entries))),
                Err(err) if err.code() == Some("NOGROUP") => Ok((range.queue.clone(), None)),
                Err(err) => Err(err),
            }
        }
    }))
    .await?;
    let mut held: HashMap<(&str, &str), u64> = HashMap::new();
    let mut missing_queues: Vec<Arc<str>> = Vec::new();
    for (queue, entries) in &pending {
        match entries {
            Some(entries) => {
                for (entry_id, _, _, deliveries) in entries {
                    held.insert((&**queue, entry_id.as_str()), *deliveries);
                }
            }
            None => missing_queues.push(queue.clone()),
        }
    }
    let holds = |write: &Write| {
        let (queue, entry_id) = write.delivery();
        let deliveries = match write {
            Write::Record { deliveries, .. } => *deliveries,
            Write::Settle(settlement) => settlement.deliveries,
        };
        held.get(&(&**queue, entry_id)) == Some(&deliveries)
    };
    // Step 2.
    let mut applied = Applied::default();
    let mut not_stored: HashSet<usize> = HashSet::new();
    let storing: Vec<usize> = (0..writes.len()).filter(|&i| stores(&writes[i])).collect();
    if !storing.is_empty() {
        let mut keys = KeyList::default();
        keys.add(broker.keys.receipt(consumer));
        add_dead_letter_keys(broker, &mut keys);
        let mut ops = Vec::with_capacity(storing.len());
        for &index in &storing {
            let write = &writes[index];
            if !holds(write) {
                not_stored.insert(index);
                applied.fenced.push(index);
                ops.push(SettleOp::nothing(write.delivery().1));
                continue;
            }
            ops.push(match write {
                Write::Record {
                    entry_id,
                    id,
                    record,
                    deliveries,
                    ..
                } => SettleOp {
                    record_key: keys.add(broker.keys.record(id.as_str())),
                    record,
                    deliveries: *deliveries,
                    ..SettleOp::nothing(entry_id)
                },
                Write::Settle(settlement) => {
                    let (record_key, record) = match &settlement.record {
                        Some((id, record)) => {
                            (keys.add(broker.keys.record(id.as_str())), record.as_slice())
                        }
                        None => (0, &[][..]),
                    };
                    let (dead, dead_bytes) = settlement
                        .dead
                        .as_ref()
                        .map(|dead| dead_fields(dead, &settlement.queue, &settlement.entry_id))
                        .unwrap_or_default();
                    SettleOp {
                        deliveries: settlement.deliveries,
                        record_key,
                        record,
                        dead,
                        dead_bytes,
                        finished: settlement.finished.as_ref().map_or("", JobId::as_str),
                        ..SettleOp::nothing(&settlement.entry_id)
                    }
                }
            });
        }
        let call = SettleCall {
            consumer,
            batch,
            ttl,
            keys: &keys,
            ops: &ops,
            streams: &StreamRanges::default(),
            bare: &[],
        };
        let (_, dead_trimmed, dead_entries, _, _, failed) = call.invoke(broker).await?;
        applied.dead_trimmed = dead_trimmed;
        applied.dead_entries = dead_entries;
        for (op, error) in failed {
            if let Some(&index) = storing.get(op) {
                not_stored.insert(index);
                applied.failed.push((index, error));
            }
        }
    }
    // A retry to another queue's delayed set (on another slot) is added before the
    // acknowledgement, on its own.
    for (index, write) in writes.iter().enumerate() {
        if let Write::Settle(settlement) = write
            && let Some(retry) = &settlement.retry
            && !not_stored.contains(&index)
            && broker.keys.queue_tag(&retry.queue) != broker.keys.queue_tag(&settlement.queue)
        {
            let added: redis::RedisResult<()> = redis::cmd("ZADD")
                .arg(broker.keys.delayed(&retry.queue))
                .arg(retry.due_ms.unwrap_or(0))
                .arg(&retry.payload)
                .exec_async(&mut broker.conn())
                .await;
            if let Err(err) = added {
                not_stored.insert(index);
                applied.failed.push((index, err.to_string()));
            }
        }
    }
    // Step 3.
    let settlements = writes
        .iter()
        .enumerate()
        .filter_map(|(index, write)| match write {
            Write::Settle(settlement) => Some((index, settlement)),
            Write::Record { .. } => None,
        });
    let groups = broker.per_slot(settlements, |(_, settlement)| {
        broker.keys.queue_tag(&settlement.queue)
    });
    let not_stored = &not_stored;
    let replies = futures_util::future::try_join_all(groups.into_iter().map(|group| async move {
        let group: Vec<(usize, &Settlement)> = group.into_iter().map(|(_, item)| item).collect();
        let mut keys = KeyList::default();
        keys.add(broker.keys.queue_receipt(&group[0].1.queue, consumer));
        let mut streams = StreamRanges::default();
        let mut writing = Vec::new();
        let mut ops = Vec::new();
        let mut bare = Vec::new();
        let mut bare_acks = Vec::new();
        for &(index, settlement) in &group {
            let queue = &settlement.queue;
            let stream = streams.include(&mut keys, queue, &settlement.entry_id, || {
                broker.keys.stream(queue)
            });
            let same_slot_retry = settlement.retry.as_ref().filter(|retry| {
                broker.keys.queue_tag(&retry.queue) == broker.keys.queue_tag(queue)
            });
            // Bare by what the settlement holds only, so that an op keeps its place on a retry.
            if !settlement_stores(settlement)
                && settlement.retry.is_none()
                && settlement.unlock.is_none()
            {
                bare.push(index);
                bare_acks.push((stream, settlement.entry_id.as_str(), settlement.deliveries));
                continue;
            }
            let (delayed_key, due_ms, retry) = match same_slot_retry {
                Some(retry) => (
                    keys.add_once(broker.keys.delayed(&retry.queue)),
                    retry.due_ms.unwrap_or(0),
                    retry.payload.as_slice(),
                ),
                None => (0, 0, &[][..]),
            };
            let (unlock_key, unlock_id) = match settlement.unlock.as_deref() {
                Some((key, id)) => (keys.add(broker.keys.unique(queue, key)), id.as_str()),
                None => (0, ""),
            };
            writing.push(index);
            ops.push(SettleOp {
                stream,
                // An outcome not stored must not be acknowledged: no delivery has count 0.
                deliveries: if not_stored.contains(&index) {
                    0
                } else {
                    settlement.deliveries
                },
                ack: 1,
                delayed_key,
                due_ms,
                retry,
                unlock_key,
                unlock_id,
                ..SettleOp::nothing(&settlement.entry_id)
            });
        }
        let call = SettleCall {
            consumer,
            batch,
            ttl,
            keys: &keys,
            ops: &ops,
            streams: &streams,
            bare: &bare_acks,
        };
        let (fenced, _, _, bare_fenced, missing, failed) = call.invoke(broker).await?;
        let fenced: Vec<usize> = fenced
            .into_iter()
            .filter_map(|op| writing.get(op).copied())
            .chain(
                bare_fenced
                    .into_iter()
                    .filter_map(|op| bare.get(op).copied()),
            )
            .collect();
        let missing: Vec<Arc<str>> = streams
            .ranges
            .iter()
            .filter(|range| missing.contains(&range.key))
            .map(|range| range.queue.clone())
            .collect();
        let failed: Vec<(usize, String)> = failed
            .into_iter()
            .filter_map(|(op, error)| writing.get(op).map(|&index| (index, error)))
            .collect();
        Ok::<_, redis::RedisError>((fenced, missing, failed))
    }))
    .await?;
    for (fenced, missing, failed) in replies {
        // Refused in step 2 and so fenced here: reported as refused.
        applied.fenced.extend(
            fenced
                .into_iter()
                .filter(|index| !not_stored.contains(index)),
        );
        missing_queues.extend(missing);
        applied.failed.extend(failed);
    }
    applied.fenced.sort_unstable();
    applied.fenced.dedup();
    applied.failed.sort_by_key(|(index, _)| *index);
    missing_queues.sort();
    missing_queues.dedup();
    applied.missing_queues = missing_queues;
    Ok(applied)
}

/// The dead-letter keys of `settle.lua`, KEYS[2] to KEYS[5], after the receipt.
fn add_dead_letter_keys(broker: &RedisBroker, keys: &mut KeyList) {
    keys.add(broker.keys.dead());
    keys.add(broker.keys.dead_trimmed());
    keys.add(broker.keys.dead_bytes());
    keys.add(broker.keys.dead_groups());
}

/// One `settle.lua` call: its keys (the receipt first), writing ops, stream ranges and bare
/// acknowledgements as (stream position, entry id, delivery count).
struct SettleCall<'c> {
    consumer: &'c str,
    batch: u64,
    ttl: Duration,
    keys: &'c KeyList,
    ops: &'c [SettleOp<'c>],
    streams: &'c StreamRanges,
    bare: &'c [(usize, &'c str, u64)],
}

impl SettleCall<'_> {
    async fn invoke(&self, broker: &RedisBroker) -> redis::RedisResult<SettleReply> {
        let mut invocation = broker.scripts.settle.prepare_invoke();
        for key in &self.keys.keys {
            invocation.key(key);
        }
        invocation
            .arg(GROUP)
            .arg(self.consumer)
            .arg(self.ttl.as_millis().max(1) as u64)
            .arg(broker.dead_letter_limits.max_len.max(1))
            .arg(broker.keys.finished_channel())
            .arg(encode_ops(self.ops))
            .arg(self.streams.ranges.len())
            .arg(PENDING_SCAN_LIMIT)
            .arg(broker.dead_letter_limits.max_bytes)
            .arg(self.batch)
            .arg(RECEIPT_TTL.as_millis() as u64);
        for range in &self.streams.ranges {
            invocation
                .arg(range.key)
                .arg(range.first_arg())
                .arg(range.last_arg());
        }
        for (stream, entry_id, deliveries) in self.bare {
            invocation.arg(*stream).arg(*entry_id).arg(*deliveries);
        }
        invocation.invoke_async(&mut broker.conn()).await
    }
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

impl<'w> SettleOp<'w> {
    /// An op about `entry_id` that writes nothing, unfenced (stream 0): the fields to fill in
    /// start from it.
    fn nothing(entry_id: &'w str) -> Self {
        SettleOp {
            stream: 0,
            entry_id,
            deliveries: 0,
            ack: 0,
            record_key: 0,
            record: &[],
            delayed_key: 0,
            due_ms: 0,
            retry: &[],
            dead: Vec::new(),
            dead_bytes: 0,
            finished: "",
            unlock_key: 0,
            unlock_id: "",
        }
    }
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
