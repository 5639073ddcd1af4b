//! The Redis Streams broker: one stream and consumer group per queue, a sorted set per queue for
//! delayed jobs, records as plain strings with a TTL. Key names come from `keys.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;

use super::keys::{GROUP, JOB_FIELD, Keys};
use super::{BoxFuture, Broker, Delivery, NewJob, Promoted, Write};
use crate::envelope::JobId;
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

/// Deletes a consumer only when it owns no pending entry: DELCONSUMER drops the consumer's
/// pending entries from the group, which would lose them.
const RETIRE: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
";

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
    retire: Script,
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

/// The URL with any password replaced, for error messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
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
                redact_url(url),
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
            retire: Script::new(RETIRE),
        })
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
            pipe.exec_async(&mut self.conn()).await?;
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
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        Box::pin(async move {
            let stream = self.keys.stream(queue);
            let queue_name: Arc<str> = Arc::from(queue);
            let mut conn = self.conn();
            let mut cursor = "0-0".to_owned();
            let mut out = Vec::new();
            loop {
                let reply: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(max.saturating_sub(out.len()).max(1))
                    .query_async(&mut conn)
                    .await?;
                let Value::Array(mut parts) = reply else {
                    return Err(unexpected("XAUTOCLAIM"));
                };
                if parts.len() >= 3 {
                    let deleted = parts.pop().expect("len checked");
                    let deleted = id_list(deleted);
                    if !deleted.is_empty() {
                        // Entries deleted from the stream while pending: XAUTOCLAIM has already
                        // dropped them from the group, and there is nothing left to run.
                        tracing::warn!(queue, count = deleted.len(), ids = ?deleted, "pending entries were missing from the stream (trimmed or deleted by hand)");
                    }
                }
                let entries = parts.pop().ok_or_else(|| unexpected("XAUTOCLAIM"))?;
                cursor = parts
                    .pop()
                    .and_then(|v| text(&v))
                    .ok_or_else(|| unexpected("XAUTOCLAIM"))?;
                parse_entries(entries, &queue_name, &mut out);
                if cursor == "0-0" || out.len() >= max {
                    return Ok(out);
                }
            }
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

    fn apply<'a>(&'a self, writes: &'a [Write], ttl: Duration) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let ttl_ms = ttl.as_millis().max(1) as u64;
            let mut pipe = redis::pipe();
            // MULTI/EXEC: a command rejected while queueing (out of memory) aborts the whole
            // batch, so no entry is acknowledged without its record.
            pipe.atomic();
            let mut settled: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            let mut finished = String::new();
            let store = |pipe: &mut redis::Pipeline, id: &JobId, record: &[u8]| {
                pipe.cmd("SET")
                    .arg(self.keys.record(id.as_str()))
                    .arg(record)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            };
            for write in writes {
                match write {
                    Write::Record { id, record } => store(&mut pipe, id, record),
                    Write::Settle(settlement) => {
                        if let Some((id, record)) = &settlement.record {
                            store(&mut pipe, id, record);
                        }
                        if let Some(retry) = &settlement.retry {
                            pipe.cmd("ZADD")
                                .arg(self.keys.delayed(&retry.queue))
                                .arg(retry.due_ms.unwrap_or(0))
                                .arg(&retry.payload)
                                .ignore();
                        }
                        if let Some(dead) = &settlement.dead {
                            let cmd = pipe
                                .cmd("XADD")
                                .arg(self.keys.dead())
                                .arg("*")
                                .arg("reason")
                                .arg(dead.reason)
                                .arg("error")
                                .arg(&dead.error)
                                .arg("queue")
                                .arg(&*settlement.queue)
                                .arg("at_ms")
                                .arg(crate::envelope::now_ms());
                            if let Some(id) = &dead.job_id {
                                cmd.arg("id").arg(id.as_str());
                            }
                            if let Some(task) = &dead.task {
                                cmd.arg("task").arg(task);
                            }
                            cmd.arg(JOB_FIELD).arg(&dead.payload).ignore();
                        }
                        settled
                            .entry(&settlement.queue)
                            .or_default()
                            .push(&settlement.entry_id);
                        if let Some(id) = &settlement.finished {
                            if !finished.is_empty() {
                                finished.push(' ');
                            }
                            finished.push_str(id.as_str());
                        }
                    }
                }
            }
            for (queue, ids) in &settled {
                let stream = self.keys.stream(queue);
                pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(ids).ignore();
                // Acked entries stay in the stream until deleted: delete them, never trim.
                pipe.cmd("XDEL").arg(&stream).arg(ids).ignore();
            }
            if !finished.is_empty() {
                pipe.cmd("PUBLISH")
                    .arg(self.keys.finished_channel())
                    .arg(&finished)
                    .ignore();
            }
            pipe.exec_async(&mut self.conn()).await?;
            Ok(())
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
        if parts.len() != 2 {
            continue;
        }
        let fields = parts.pop().expect("len checked");
        let Some(entry_id) = parts.pop().as_ref().and_then(text) else {
            continue;
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
        });
    }
}

fn id_list(value: Value) -> Vec<String> {
    match value {
        Value::Array(ids) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}
