//! The Redis Streams broker: one stream and consumer group per queue, a sorted set per queue for
//! delayed jobs, records as plain strings with a TTL. Key names come from `keys.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;

use super::keys::{ENTRY_FIELD, GROUP, JOB_FIELD, Keys, LAST_FIELD};
use super::{
    Applied, BeatAdvance, BoxFuture, Broker, DeadEntry, Delivery, NewJob, Promoted, WorkerEntry,
    WorkerReport, Write, dead_fields,
};
use crate::envelope::JobId;
use crate::stats::{BUCKET_TTL, QueueStats, minute_of};
use crate::{Error, Result};

/// Moves due members of a delayed set into the queue's stream, atomically, so that two
/// promoters can never move one job twice. Returns {moved, earliest remaining due time or -1}.
const PROMOTE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', ARGV[3], member)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
  return {#due, tonumber(nxt[2])}
end
return {#due, -1}
";

/// Resets the idle time of entries the consumer still owns. XCLAIM alone would also take
/// entries that another worker has reclaimed meanwhile, so ownership is checked first.
const RENEW: &str = r"
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
";

/// Takes over entries idle for at least the lease from other consumers, returning each with
/// its new delivery count (for fencing). Not XAUTOCLAIM: it would also take back entries this
/// consumer still runs (after a pause longer than the lease), making two copies in one
/// process. XCLAIM re-checks the idle time, so two reclaimers cannot both take an entry.
/// Returns {cursor (always 0-0), {{id, fields, deliveries}...}, ids deleted from the stream}.
const RECLAIM: &str = r"
local limit = tonumber(ARGV[4])
local holds = {}
for i = 5, #ARGV do holds[ARGV[i]] = true end
local ids = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', limit * 10)) do
  if #ids < limit and (p[2] ~= ARGV[2] or not holds[p[1]]) then ids[#ids + 1] = p[1] end
end
if #ids == 0 then return {'0-0', {}, {}} end
local got = {}
local claimed = {}
for _, e in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))) do
  if e and e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    claimed[#claimed + 1] = {e[1], e[2], p[1][4]}
    got[e[1]] = true
  end
end
local deleted = {}
for _, id in ipairs(ids) do
  if not got[id] then deleted[#deleted + 1] = id end
end
return {'0-0', claimed, deleted}
";

/// Applies a batch of writes, each only while the consumer still holds its delivery with the
/// delivery count it saw: a worker that lost its lease (paused, partitioned) can neither
/// acknowledge nor write the record of a job another worker took over. XACK alone checks
/// nothing.
///
/// KEYS[1] is the dead-letter stream and KEYS[2] its trimmed counter; each op names its keys by
/// position. ARGV[6] holds the ops that write something (a record, a retry, a dead letter), as
/// MessagePack; the bare acknowledgements, most of a drain with results off, come after
/// ARGV[8] as flat (stream, entry id, delivery count) triples, which cost Lua no table each.
/// Writing ops are applied first, in order, then the bare acknowledgements: records stay before
/// their delivery's settlement, and a batch settles a delivery once (see `Write`). ARGV[7] is
/// how many streams follow as (stream, first id, last id) triples: the range of each stream's
/// entries in the batch, so that XPENDING reads what the consumer holds there, not all it
/// holds.
/// Returns {indexes of fenced writing ops (from 0), dead letters trimmed, ids of the dead
/// letters added, indexes of fenced bare acknowledgements (from 0)}.
const SETTLE: &str = r"
local ops = cmsgpack.unpack(ARGV[6])
-- What this consumer holds in each stream's range: entry id -> delivery count. One XPENDING
-- per stream and batch, not one per entry.
local held = {}
local streams = tonumber(ARGV[7])
for s = 0, streams - 1 do
  local at = 9 + 3 * s
  local stream = tonumber(ARGV[at])
  local map = {}
  for _, e in ipairs(redis.call('XPENDING', KEYS[stream], ARGV[1], ARGV[at + 1], ARGV[at + 2], ARGV[8], ARGV[2])) do
    map[e[1]] = e[4]
  end
  held[stream] = map
end
local fenced = {}
local finished = {}
local acks = {}
local function ack(stream, id)
  local ids = acks[stream]
  if not ids then ids = {}; acks[stream] = ids end
  ids[#ids + 1] = id
  -- Settled: a second write about it in this batch is stale.
  held[stream][id] = nil
end
local dead = 0
local dead_ids = {}
for i, op in ipairs(ops) do
  if held[op[1]][op[2]] == op[3] then
    if op[5] > 0 then redis.call('SET', KEYS[op[5]], op[6], 'PX', ARGV[3]) end
    if op[7] > 0 then redis.call('ZADD', KEYS[op[7]], op[8], op[9]) end
    if #op[10] > 0 then
      dead = dead + 1
      dead_ids[dead] = redis.call('XADD', KEYS[1], '*', unpack(op[10]))
    end
    if op[4] == 1 then ack(op[1], op[2]) end
    if op[11] ~= '' then finished[#finished + 1] = op[11] end
  else
    fenced[#fenced + 1] = i - 1
  end
end
local bare_fenced = {}
local first = 9 + 3 * streams
for at = first, #ARGV, 3 do
  local stream = tonumber(ARGV[at])
  local id = ARGV[at + 1]
  if held[stream][id] == tonumber(ARGV[at + 2]) then
    ack(stream, id)
  else
    bare_fenced[#bare_fenced + 1] = (at - first) / 3
  end
end
for stream, ids in pairs(acks) do
  redis.call('XACK', KEYS[stream], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[stream], unpack(ids))
end
local trimmed = 0
if dead > 0 then
  trimmed = redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[4])
  if trimmed > 0 then redis.call('INCRBY', KEYS[2], trimmed) end
end
if #finished > 0 then redis.call('PUBLISH', ARGV[5], table.concat(finished, ' ')) end
return {fenced, trimmed, dead_ids, bare_fenced}
";

/// The dead-letter queue's length, trimmed count and entries ever added (Redis 7.0 reports
/// `entries-added`; before it, length + trimmed stands in); none added while the stream does
/// not exist (never used, or purged whole).
const DEAD_STATS: &str = r"
local len = redis.call('XLEN', KEYS[1])
local trimmed = tonumber(redis.call('GET', KEYS[2]) or '0')
local added = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  added = len + trimmed
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
end
return {len, trimmed, added}
";

/// Puts a dead letter back on its queue, once: only if this call removed it. The job's old
/// FAILURE record goes too: the job is pending again.
const REPLAY: &str = r"
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
";

/// Deletes consumers that own nothing and have been idle long enough: the traces of dead
/// workers. Pending count and deletion are read and done in one step, so an entry can never
/// be dropped with its consumer. A live worker that is removed by mistake is recreated by its
/// next read.
const PRUNE: &str = r"
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
";

/// Empties the dead-letter stream, saying how much it held.
/// Everything, or (with a time in ARGV[1]) the entries older than it: a dead entry's id is the
/// Redis time it was added at.
const PURGE: &str = r"
if ARGV[1] then
  return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
end
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
";

/// Deletes a consumer only when it owns no pending entry: DELCONSUMER drops the consumer's
/// pending entries from the group, which would lose them.
const RETIRE: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
";

/// What each queue holds, read in one step so the numbers agree with each other. KEYS: per
/// queue, its stream then its delayed set. ARGV[1]: the group. Returns {ready, pending,
/// delayed, consumers} per queue. Redis answers a nil `lag` when entries were deleted after
/// the group's last delivery (acknowledging deletes them); then the stream length minus the
/// pending entries is the same number, as long as acknowledged entries are deleted at once.
const QUEUE_STATS: &str = r"
local out = {}
for i = 1, #KEYS, 2 do
  local ready, pending, consumers = 0, 0, 0
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local len = redis.call('XLEN', KEYS[i])
    ready = len
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      local info = {}
      for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
      if info['name'] == ARGV[1] then
        pending = info['pending']
        consumers = info['consumers']
        if info['lag'] then
          ready = info['lag']
        else
          ready = math.max(len - pending, 0)
        end
      end
    end
  end
  out[#out + 1] = {ready, pending, redis.call('ZCARD', KEYS[i + 1]), consumers}
end
return out
";

/// Most pending entries of one consumer the settle script reads to check ownership: far more
/// than any worker holds (concurrency + prefetch).
const PENDING_SCAN_LIMIT: u64 = 1_000_000;

/// Longest block a fetch may ask for; the reading connection's response timeout sits above it.
const MAX_BLOCK: Duration = Duration::from_secs(10);

/// The finished-job listener: its events, and whether it is subscribed right now.
struct Listener {
    events: broadcast::Sender<Arc<str>>,
    subscribed: watch::Receiver<bool>,
}

pub(crate) struct RedisBroker {
    client: redis::Client,
    keys: Keys,
    queue_prefix: String,
    commands: ConnectionManager,
    /// Blocking reads get connections of their own: on the shared multiplexed connection a
    /// blocked XREADGROUP would hold up every other command.
    readers: Mutex<Vec<ConnectionManager>>,
    finished: OnceLock<Listener>,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
    promote: Script,
    renew: Script,
    reclaim: Script,
    settle: Script,
    replay: Script,
    purge: Script,
    prune: Script,
    /// Most entries kept in the dead-letter stream.
    dead_letter_cap: u64,
    retire: Script,
    queue_stats: Script,
    dead_stats: Script,
    /// Queues this process has added to the set of queue names: a producer announces a queue
    /// once, so that `stats` sees jobs waiting where no worker listens, without a command more
    /// on every enqueue.
    announced: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        if let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            listener.abort();
        }
    }
}

fn install_tls_provider() {
    // rustls needs one process-wide provider; aws-lc-rs everywhere (mixing with ring panics).
    // Another part of the program may have installed it already, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl RedisBroker {
    pub(crate) async fn connect(
        url: &str,
        variable: &str,
        ca_cert: Option<&Path>,
        namespace: &str,
    ) -> Result<Self> {
        let keys = Keys::new(namespace)?;
        let bad_url = |err: redis::RedisError| {
            Error::config(
                variable,
                crate::config::redact_url(url),
                format!("a redis://[:password@]host[:port][/db] or rediss:// URL ({err})"),
            )
        };
        let client = match ca_cert {
            Some(path) if url.starts_with("rediss://") => {
                install_tls_provider();
                let root_cert = std::fs::read(path).map_err(|err| {
                    Error::config(
                        "PSW_REDIS_CA_CERT",
                        path.display().to_string(),
                        format!("a readable PEM file with the CA certificate of the Redis server ({err})"),
                    )
                })?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
                .map_err(bad_url)?
            }
            _ => {
                if url.starts_with("rediss://") {
                    install_tls_provider();
                }
                redis::Client::open(url).map_err(bad_url)?
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let commands = client.get_connection_manager_with_config(config).await?;
        let queue_prefix = keys.stream("");
        Ok(RedisBroker {
            client,
            queue_prefix,
            keys,
            commands,
            readers: Mutex::new(Vec::new()),
            finished: OnceLock::new(),
            listener: std::sync::Mutex::new(None),
            promote: Script::new(PROMOTE),
            renew: Script::new(RENEW),
            reclaim: Script::new(RECLAIM),
            settle: Script::new(SETTLE),
            replay: Script::new(REPLAY),
            purge: Script::new(PURGE),
            prune: Script::new(PRUNE),
            dead_letter_cap: crate::config::DEFAULT_DEAD_LETTER_CAP,
            retire: Script::new(RETIRE),
            announced: std::sync::Mutex::default(),
            queue_stats: Script::new(QUEUE_STATS),
            dead_stats: Script::new(DEAD_STATS),
        })
    }

    /// Keep at most `cap` dead letters; older ones are trimmed, counted and logged.
    pub(crate) fn with_dead_letter_cap(mut self, cap: u64) -> Self {
        self.dead_letter_cap = cap.max(1);
        self
    }

    fn conn(&self) -> ConnectionManager {
        self.commands.clone()
    }

    async fn reader(&self) -> Result<ConnectionManager> {
        if let Some(conn) = self.readers.lock().await.pop() {
            return Ok(conn);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(MAX_BLOCK + Duration::from_secs(20)));
        Ok(self
            .client
            .get_connection_manager_with_config(config)
            .await?)
    }

    fn queue_of<'v>(&self, stream: &'v [u8]) -> Option<&'v str> {
        std::str::from_utf8(stream)
            .ok()?
            .strip_prefix(self.queue_prefix.as_str())
    }

    fn start_listener(&self) -> Listener {
        let (events, _) = broadcast::channel(4096);
        let (subscribed_tx, subscribed) = watch::channel(false);
        let client = self.client.clone();
        let channel = self.keys.finished_channel();
        let sender = events.clone();
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let outcome = listen(&client, &channel, &sender, &subscribed_tx).await;
                subscribed_tx.send_replace(false);
                match outcome {
                    Ok(()) => delay = Duration::from_millis(100),
                    Err(err) => {
                        tracing::warn!(error = %err, "finished-job listener lost its connection; waiters re-read records until it is back");
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
                tokio::time::sleep(delay).await;
            }
        });
        *self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        Listener { events, subscribed }
    }
}

async fn listen(
    client: &redis::Client,
    channel: &str,
    events: &broadcast::Sender<Arc<str>>,
    subscribed: &watch::Sender<bool>,
) -> Result<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    subscribed.send_replace(true);
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            continue;
        };
        for id in payload.split(' ').filter(|id| !id.is_empty()) {
            let _ = events.send(Arc::from(id));
        }
    }
    Ok(())
}

impl Broker for RedisBroker {
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn();
            for queue in queues {
                let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.keys.stream(queue))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match created {
                    Ok(()) => {}
                    Err(err) if err.code() == Some("BUSYGROUP") => {}
                    Err(err) => return Err(err.into()),
                }
            }
            redis::cmd("SADD")
                .arg(self.keys.queues())
                .arg(queues)
                .exec_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn push(&self, jobs: Vec<NewJob>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if jobs.is_empty() {
                return Ok(());
            }
            let now = crate::envelope::now_ms();
            let mut pipe = redis::pipe();
            for job in &jobs {
                match job.due_ms {
                    Some(due) if due > now => {
                        pipe.cmd("ZADD")
                            .arg(self.keys.delayed(&job.queue))
                            .arg(due)
                            .arg(&job.payload)
                            .ignore();
                    }
                    _ => {
                        pipe.cmd("XADD")
                            .arg(self.keys.stream(&job.queue))
                            .arg("*")
                            .arg(JOB_FIELD)
                            .arg(&job.payload)
                            .ignore();
                    }
                }
            }
            let new_queues: Vec<&str> = {
                let announced = self
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
                    .arg(self.keys.queues())
                    .arg(&new_queues)
                    .ignore();
            }
            pipe.exec_async(&mut self.conn()).await?;
            if !new_queues.is_empty() {
                let mut announced = self
                    .announced
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                announced.extend(new_queues.into_iter().map(str::to_owned));
            }
            Ok(())
        })
    }

    fn promote_due<'a>(
        &'a self,
        queue: &'a str,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Promoted>> {
        Box::pin(async move {
            let (moved, next): (usize, i64) = self
                .promote
                .key(self.keys.delayed(queue))
                .key(self.keys.stream(queue))
                .arg(now_ms)
                .arg(limit)
                .arg(JOB_FIELD)
                .invoke_async(&mut self.conn())
                .await?;
            Ok(Promoted {
                moved,
                next_due_ms: (next >= 0).then_some(next),
            })
        })
    }

    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        Box::pin(async move {
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
                cmd.arg(self.keys.stream(queue));
            }
            for _ in queues {
                cmd.arg(">");
            }
            let mut conn = self.reader().await?;
            let reply = cmd.query_async::<Value>(&mut conn).await;
            // A connection that failed is dropped rather than pooled; the manager would
            // reconnect it, but a fresh one is as cheap and surely clean.
            if reply.is_ok() {
                self.readers.lock().await.push(conn);
            }
            let mut out = Vec::new();
            for (stream, entries) in stream_pairs(reply?) {
                let Some(queue) = stream.as_deref().and_then(|s| self.queue_of(s)) else {
                    continue;
                };
                let queue: Arc<str> = Arc::from(queue);
                parse_entries(entries, &queue, &mut out);
            }
            Ok(out)
        })
    }

    fn reclaim<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        min_idle: Duration,
        max: usize,
        holds: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        Box::pin(async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let reply: Value = self
                .reclaim
                .key(self.keys.stream(queue))
                .arg(GROUP)
                .arg(consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(max)
                .arg(holds)
                .invoke_async(&mut self.conn())
                .await?;
            let Value::Array(mut parts) = reply else {
                return Err(unexpected("reclaim"));
            };
            let deleted = parts.pop().map(id_list).unwrap_or_default();
            if !deleted.is_empty() {
                // Entries deleted from the stream while pending: XCLAIM has dropped them from
                // the group, and there is nothing left to run.
                tracing::warn!(queue, count = deleted.len(), ids = ?deleted, "pending entries were missing from the stream (trimmed or deleted by hand)");
            }
            let entries = parts.pop().ok_or_else(|| unexpected("reclaim"))?;
            let mut out = Vec::new();
            parse_entries(entries, &Arc::from(queue), &mut out);
            Ok(out)
        })
    }

    fn renew<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        entry_ids: &'a [String],
    ) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            if entry_ids.is_empty() {
                return Ok(0);
            }
            let mut invocation = self.renew.key(self.keys.stream(queue));
            invocation.arg(GROUP).arg(consumer).arg(entry_ids);
            Ok(invocation.invoke_async(&mut self.conn()).await?)
        })
    }

    fn apply<'a>(
        &'a self,
        consumer: &'a str,
        writes: &'a [Write],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Applied>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(Applied::default());
            }
            let mut keys = KeyList::default();
            keys.add(self.keys.dead());
            keys.add(self.keys.dead_trimmed());
            let mut streams = StreamRanges::default();
            // Write index of each op, for mapping the fenced positions back.
            let mut writing = Vec::new();
            let mut bare = Vec::new();
            let mut ops = Vec::new();
            for (index, write) in writes.iter().enumerate() {
                let (queue, entry_id) = match write {
                    Write::Record {
                        queue, entry_id, ..
                    } => (queue, entry_id),
                    Write::Settle(settlement) => (&settlement.queue, &settlement.entry_id),
                };
                let stream =
                    streams.include(&mut keys, queue, entry_id, || self.keys.stream(queue));
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
                            record_key: keys.add(self.keys.record(id.as_str())),
                            record,
                            delayed_key: 0,
                            due_ms: 0,
                            retry: &[],
                            dead: Vec::new(),
                            finished: "",
                        });
                    }
                    Write::Settle(settlement)
                        if settlement.record.is_none()
                            && settlement.retry.is_none()
                            && settlement.dead.is_none() =>
                    {
                        bare.push((index, stream, entry_id, settlement.deliveries));
                    }
                    Write::Settle(settlement) => {
                        let (record_key, record) = match &settlement.record {
                            Some((id, record)) => {
                                (keys.add(self.keys.record(id.as_str())), record.as_slice())
                            }
                            None => (0, &[][..]),
                        };
                        let (delayed_key, due_ms, retry) = match &settlement.retry {
                            Some(retry) => (
                                keys.add_once(self.keys.delayed(&retry.queue)),
                                retry.due_ms.unwrap_or(0),
                                retry.payload.as_slice(),
                            ),
                            None => (0, 0, &[][..]),
                        };
                        writing.push(index);
                        ops.push(SettleOp {
                            stream,
                            entry_id,
                            deliveries: settlement.deliveries,
                            ack: 1,
                            record_key,
                            record,
                            delayed_key,
                            due_ms,
                            retry,
                            dead: settlement
                                .dead
                                .as_ref()
                                .map(|dead| {
                                    dead_fields(dead, &settlement.queue, &settlement.entry_id)
                                })
                                .unwrap_or_default(),
                            finished: settlement.finished.as_ref().map_or("", JobId::as_str),
                        });
                    }
                }
            }
            let mut invocation = self.settle.prepare_invoke();
            for key in &keys.keys {
                invocation.key(key);
            }
            invocation
                .arg(GROUP)
                .arg(consumer)
                .arg(ttl.as_millis().max(1) as u64)
                .arg(self.dead_letter_cap)
                .arg(self.keys.finished_channel())
                .arg(encode_ops(&ops))
                .arg(streams.ranges.len())
                .arg(PENDING_SCAN_LIMIT);
            for range in &streams.ranges {
                invocation
                    .arg(range.key)
                    .arg(range.first_arg())
                    .arg(range.last_arg());
            }
            for (_, stream, entry_id, deliveries) in &bare {
                invocation.arg(*stream).arg(*entry_id).arg(*deliveries);
            }
            let (fenced, dead_trimmed, dead_entries, bare_fenced): (
                Vec<usize>,
                u64,
                Vec<String>,
                Vec<usize>,
            ) = invocation.invoke_async(&mut self.conn()).await?;
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
            Ok(Applied {
                fenced,
                dead_trimmed,
                dead_entries,
            })
        })
    }

    fn load_record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let record: Option<Vec<u8>> = redis::cmd("GET")
                .arg(self.keys.record(id))
                .query_async(&mut self.conn())
                .await?;
            Ok(record)
        })
    }

    fn finished_events(&self) -> BoxFuture<'_, Result<broadcast::Receiver<Arc<str>>>> {
        Box::pin(async move {
            let listener = self.finished.get_or_init(|| self.start_listener());
            let events = listener.events.subscribe();
            // Announcements made before the subscription is active would be missed: wait for
            // it a little. If Redis is slow or away, waiters still re-read records.
            let mut subscribed = listener.subscribed.clone();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), subscribed.wait_for(|&on| on)).await;
            Ok(events)
        })
    }

    fn retire_consumer<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn();
            for queue in queues {
                let _: i64 = self
                    .retire
                    .key(self.keys.stream(queue))
                    .arg(GROUP)
                    .arg(consumer)
                    .invoke_async(&mut conn)
                    .await?;
            }
            Ok(())
        })
    }

    fn beat_state<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, String>>> {
        Box::pin(async move {
            Ok(redis::cmd("HGETALL")
                .arg(self.keys.schedule(schedule))
                .query_async(&mut self.conn())
                .await?)
        })
    }

    fn beat_register<'a>(
        &'a self,
        schedule: &'a str,
        last_ms: i64,
        fields: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = self.keys.schedule(schedule);
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("HSETNX")
                .arg(&key)
                .arg(LAST_FIELD)
                .arg(last_ms)
                .ignore();
            if !fields.is_empty() {
                pipe.cmd("HSET").arg(&key).arg(fields).ignore();
            }
            pipe.cmd("SADD")
                .arg(self.keys.schedules())
                .arg(schedule)
                .ignore();
            pipe.exec_async(&mut self.conn()).await?;
            Ok(())
        })
    }

    fn beat_advance<'a>(&'a self, advance: &'a BeatAdvance) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut invocation = BEAT_ADVANCE.key(self.keys.schedule(&advance.schedule));
            invocation
                .key(self.keys.stream(&advance.queue))
                .arg(LAST_FIELD)
                .arg(advance.expected_ms)
                .arg(advance.through_ms)
                .arg(ENTRY_FIELD)
                .arg(JOB_FIELD)
                .arg(advance.count.unwrap_or(""))
                .arg(advance.fields.len())
                .arg(&advance.fields);
            for payload in &advance.payloads {
                invocation.arg(payload);
            }
            let applied: i64 = invocation.invoke_async(&mut self.conn()).await?;
            Ok(applied == 1)
        })
    }

    fn beat_schedules(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let mut names: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.schedules())
                .query_async(&mut self.conn())
                .await?;
            names.sort();
            Ok(names)
        })
    }

    fn beat_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let held: i64 = BEAT_LEASE
                .key(self.keys.beat_leader())
                .arg(holder)
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut self.conn())
                .await?;
            Ok(held == 1)
        })
    }

    fn in_stream<'a>(&'a self, queue: &'a str, entry_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let found: Value = redis::cmd("XRANGE")
                .arg(self.keys.stream(queue))
                .arg(entry_id)
                .arg(entry_id)
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.conn())
                .await?;
            Ok(matches!(found, Value::Array(entries) if !entries.is_empty()))
        })
    }

    fn dead_range<'a>(
        &'a self,
        start: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadEntry>>> {
        Box::pin(async move {
            let reply: Value = redis::cmd("XRANGE")
                .arg(self.keys.dead())
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut self.conn())
                .await?;
            let Value::Array(entries) = reply else {
                return Ok(Vec::new());
            };
            Ok(entries
                .into_iter()
                .filter_map(|entry| {
                    let Value::Array(mut parts) = entry else {
                        return None;
                    };
                    let fields = parts.pop()?;
                    let id = text(&parts.pop()?)?;
                    let Value::Array(fields) = fields else {
                        return None;
                    };
                    let mut pairs = Vec::with_capacity(fields.len() / 2);
                    let mut fields = fields.into_iter();
                    while let (Some(name), Some(Value::BulkString(value))) =
                        (fields.next(), fields.next())
                    {
                        pairs.push((text(&name)?, value));
                    }
                    Some((id, pairs))
                })
                .collect())
        })
    }

    fn dead_stats(&self) -> BoxFuture<'_, Result<crate::DeadLetterStats>> {
        Box::pin(async move {
            let (len, trimmed, added): (u64, u64, u64) = self
                .dead_stats
                .key(self.keys.dead())
                .key(self.keys.dead_trimmed())
                .invoke_async(&mut self.conn())
                .await?;
            Ok(crate::DeadLetterStats {
                len,
                trimmed,
                added,
            })
        })
    }

    fn dead_replay<'a>(
        &'a self,
        entry_id: &'a str,
        queue: &'a str,
        job_id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let replayed: i64 = self
                .replay
                .key(self.keys.dead())
                .key(self.keys.stream(queue))
                .key(self.keys.record(job_id))
                .arg(entry_id)
                .arg(JOB_FIELD)
                .arg(payload)
                .invoke_async(&mut self.conn())
                .await?;
            Ok(replayed == 1)
        })
    }

    fn dead_purge(&self, before_ms: Option<i64>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut purge = self.purge.key(self.keys.dead());
            if let Some(before_ms) = before_ms {
                purge.arg(before_ms.max(0));
            }
            Ok(purge.invoke_async(&mut self.conn()).await?)
        })
    }

    fn prune_consumers<'a>(
        &'a self,
        queue: &'a str,
        me: &'a str,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            Ok(self
                .prune
                .key(self.keys.stream(queue))
                .arg(GROUP)
                .arg(me)
                .arg(idle.as_millis() as u64)
                .invoke_async(&mut self.conn())
                .await?)
        })
    }

    fn report_worker<'a>(&'a self, report: &'a WorkerReport) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let workers = self.keys.workers();
            let mut pipe = redis::pipe();
            pipe.atomic();
            match &report.info {
                Some(info) => pipe
                    .cmd("HSET")
                    .arg(&workers)
                    .arg(&report.consumer)
                    .arg(info)
                    .ignore(),
                None => pipe
                    .cmd("HDEL")
                    .arg(&workers)
                    .arg(&report.consumer)
                    .ignore(),
            };
            if !report.counts.is_empty() {
                let bucket = self.keys.stats(minute_of(report.at_ms));
                for (field, count) in &report.counts {
                    pipe.cmd("HINCRBY")
                        .arg(&bucket)
                        .arg(field)
                        .arg(*count)
                        .ignore();
                }
                pipe.cmd("EXPIRE")
                    .arg(&bucket)
                    .arg(BUCKET_TTL.as_secs())
                    .ignore();
            }
            pipe.exec_async(&mut self.conn()).await?;
            Ok(())
        })
    }

    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerEntry>>> {
        Box::pin(async move {
            let workers: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
                .arg(self.keys.workers())
                .query_async(&mut self.conn())
                .await?;
            Ok(workers.into_iter().collect())
        })
    }

    fn forget_workers<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if names.is_empty() {
                return Ok(());
            }
            redis::cmd("HDEL")
                .arg(self.keys.workers())
                .arg(names)
                .exec_async(&mut self.conn())
                .await?;
            Ok(())
        })
    }

    fn queue_names(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let mut names: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.queues())
                .query_async(&mut self.conn())
                .await?;
            names.sort();
            Ok(names)
        })
    }

    fn queue_stats<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueStats>>> {
        Box::pin(async move {
            if queues.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = self.queue_stats.prepare_invoke();
            for queue in queues {
                invocation
                    .key(self.keys.stream(queue))
                    .key(self.keys.delayed(queue));
            }
            let counts: Vec<(u64, u64, u64, u64)> =
                invocation.arg(GROUP).invoke_async(&mut self.conn()).await?;
            Ok(queues
                .iter()
                .zip(counts)
                .map(|(name, (ready, pending, delayed, consumers))| QueueStats {
                    name: name.clone(),
                    ready,
                    pending,
                    delayed,
                    consumers,
                })
                .collect())
        })
    }

    fn outcome_counts(&self, from: i64, to: i64) -> BoxFuture<'_, Result<HashMap<String, u64>>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            for minute in from..=to {
                pipe.cmd("HGETALL").arg(self.keys.stats(minute));
            }
            let buckets: Vec<HashMap<String, u64>> = pipe.query_async(&mut self.conn()).await?;
            let mut sums = HashMap::new();
            for (field, count) in buckets.into_iter().flatten() {
                *sums.entry(field).or_default() += count;
            }
            Ok(sums)
        })
    }
}

/// One pass of a schedule (`BeatAdvance`): only if the last slot handled is still the expected
/// one, set it, count, store the fields, add the jobs and keep the last entry id. Atomic, so
/// any number of beats can race on a slot and one job comes out.
/// KEYS: schedule hash, queue stream. ARGV: last field, expected, through, entry field, job
/// field, counter field or '', number of field pairs, the pairs, then the envelopes.
static BEAT_ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[1], ARGV[6], 1)
end
local last_pair = 7 + 2 * tonumber(ARGV[7])
for i = 8, last_pair, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = last_pair + 1, #ARGV do
  local id = redis.call('XADD', KEYS[2], '*', ARGV[5], ARGV[i])
  redis.call('HSET', KEYS[1], ARGV[4], id)
end
return 1
",
    )
});

/// Takes the beat lease when free, renews it for its holder, or (TTL 0) gives it up.
/// KEYS: the lease. ARGV: holder, TTL in ms. Returns 1 when the holder holds it.
static BEAT_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == '0' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

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

/// One write as the settle script reads it: a positional MessagePack array (see `SETTLE`).
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
    finished: &'w str,
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
        write_array_len(&mut out, 11).expect(ok);
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
    }
    out
}

fn unexpected(command: &str) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply shape",
        command.to_owned(),
    )))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[stream, entries]` pairs of an XREADGROUP reply, in RESP2 (array) or RESP3 (map) form.
fn stream_pairs(reply: Value) -> Vec<(Option<Vec<u8>>, Value)> {
    let name = |v: Value| match v {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    };
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let entries = pair.pop().expect("len checked");
                    let stream = pair.pop().expect("len checked");
                    Some((name(stream), entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(k, v)| (name(k), v)).collect(),
        _ => Vec::new(),
    }
}

/// Entries `[id, [field, value, ...]]` into deliveries. An entry without a `job` field is
/// handed on with an empty payload, so that the worker dead-letters it instead of leaving it
/// pending forever.
fn parse_entries(entries: Value, queue: &Arc<str>, out: &mut Vec<Delivery>) {
    let Value::Array(entries) = entries else {
        return;
    };
    out.reserve(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            continue;
        };
        // [id, fields] from XREADGROUP (a first delivery), [id, fields, deliveries] from the
        // reclaim script.
        let deliveries = match parts.len() {
            2 => 1,
            3 => match parts.pop() {
                Some(Value::Int(n)) => n.max(1) as u64,
                _ => continue,
            },
            _ => continue,
        };
        let fields = parts.pop().expect("len checked");
        let entry_id = match parts.pop() {
            Some(Value::BulkString(bytes)) => match String::from_utf8(bytes) {
                Ok(id) => id,
                Err(_) => continue,
            },
            Some(Value::SimpleString(id)) => id,
            _ => continue,
        };
        let mut payload = Vec::new();
        let mut fields = match fields {
            Value::Array(fields) => fields.into_iter(),
            _ => Vec::new().into_iter(),
        };
        while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
            if matches!(&field, Value::BulkString(f) if f == JOB_FIELD.as_bytes())
                && let Value::BulkString(bytes) = value
            {
                payload = bytes;
            }
        }
        out.push(Delivery {
            queue: queue.clone(),
            entry_id,
            payload,
            deliveries,
        });
    }
}

fn id_list(value: Value) -> Vec<String> {
    match value {
        Value::Array(ids) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}
