//! The queue seam: what the worker and client need from a broker, with a Redis Streams
//! implementation and an in-process one that behave alike (their shared tests are in `tests`).
//!
//! Architecture invariant: the worker and the client see only [`Broker`]; Redis types stay in
//! `redis.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::Result;
use crate::envelope::JobId;
use crate::stats::QueueStats;

pub(crate) mod keys;
pub(crate) mod memory;
pub(crate) mod redis;
#[cfg(test)]
mod tests;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One job handed to a consumer, pending until it is settled.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) queue: Arc<str>,
    pub(crate) entry_id: String,
    pub(crate) payload: Vec<u8>,
    /// Times the entry has been delivered, this one included (1 for a first delivery).
    pub(crate) deliveries: u64,
}

/// A job to add: ready at once, or held in the queue's delayed set until `due_ms`.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub(crate) queue: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) due_ms: Option<i64>,
}

/// Why a delivery could not be run or failed for good, kept with its raw bytes in the
/// dead-letter stream.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) job_id: Option<JobId>,
    pub(crate) task: Option<String>,
    pub(crate) reason: &'static str,
    pub(crate) error: String,
    /// Every attempt's error, MessagePack-encoded (an empty array when none ran).
    pub(crate) errors: Vec<u8>,
    /// The entry's bytes, cut at the cap; `truncated` says whether they were.
    pub(crate) payload: Vec<u8>,
    pub(crate) truncated: bool,
}

/// The end of one delivery. Everything in it is written before the entry is acknowledged,
/// in the same round trip, and only while this consumer still holds the delivery (fencing).
#[derive(Debug)]
pub(crate) struct Settlement {
    pub(crate) queue: Arc<str>,
    pub(crate) entry_id: String,
    /// The delivery count the consumer saw: a later delivery of the same entry fences this one.
    pub(crate) deliveries: u64,
    /// The job's record in its new state.
    pub(crate) record: Option<(JobId, Vec<u8>)>,
    /// Announced to waiters once written (terminal states of jobs with results).
    pub(crate) finished: Option<JobId>,
    /// The next attempt, for a retry. Boxed, like `dead`: rare, and a settlement is moved
    /// through two channels per job.
    pub(crate) retry: Option<Box<NewJob>>,
    pub(crate) dead: Option<Box<DeadLetter>>,
}

impl Settlement {
    /// A settlement of `delivery` that only acknowledges it; fill in the rest.
    pub(crate) fn of(delivery: &Delivery) -> Self {
        Settlement {
            queue: delivery.queue.clone(),
            entry_id: delivery.entry_id.clone(),
            deliveries: delivery.deliveries,
            record: None,
            finished: None,
            retry: None,
            dead: None,
        }
    }
}

/// The fields of a dead-letter entry, in stream order (documented in `docs/protocol.md`).
pub(crate) fn dead_fields(
    dead: &DeadLetter,
    queue: &str,
    entry_id: &str,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![
        ("reason", dead.reason.as_bytes().to_vec()),
        ("error", dead.error.as_bytes().to_vec()),
        ("queue", queue.as_bytes().to_vec()),
        ("entry", entry_id.as_bytes().to_vec()),
        ("at_ms", crate::envelope::now_ms().to_string().into_bytes()),
        ("errors", dead.errors.clone()),
        (
            "truncated",
            if dead.truncated { b"1" } else { b"0" }.to_vec(),
        ),
    ];
    if let Some(id) = &dead.job_id {
        fields.push(("id", id.as_str().as_bytes().to_vec()));
    }
    if let Some(task) = &dead.task {
        fields.push(("task", task.as_bytes().to_vec()));
    }
    fields.push((keys::JOB_FIELD, dead.payload.clone()));
    fields
}

/// Writes applied in one round trip per batch. A batch holds at most one settlement per
/// delivery (entry id and delivery count: a delivery is settled once), after the records of
/// that delivery; brokers keep a delivery's records before its settlement and may apply the
/// settlements of different deliveries in any order (fencing by delivery count makes them
/// independent).
#[derive(Debug)]
pub(crate) enum Write {
    /// Store a record (STARTED, PROGRESS) of a delivery still running, without settling it.
    Record {
        queue: Arc<str>,
        entry_id: String,
        deliveries: u64,
        id: JobId,
        record: Vec<u8>,
    },
    Settle(Settlement),
}

/// What applying a batch of writes did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Indexes of writes refused because the consumer no longer held their delivery: another
    /// worker took it over after the lease ran out. Nothing of them was written.
    pub(crate) fenced: Vec<usize>,
    /// Oldest dead letters removed to keep the dead-letter stream under its cap.
    pub(crate) dead_trimmed: u64,
    /// Entry ids of the dead letters added, in the order of the writes that added them.
    pub(crate) dead_entries: Vec<String>,
}

/// A dead-letter entry: its id and its fields.
pub(crate) type DeadEntry = (String, Vec<(String, Vec<u8>)>);

/// A stored worker heartbeat: the consumer name and the encoded `stats::Heartbeat`.
pub(crate) type WorkerEntry = (String, Vec<u8>);

/// What a promotion pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Promoted {
    pub(crate) moved: usize,
    /// Due time of the earliest job still delayed.
    pub(crate) next_due_ms: Option<i64>,
}

/// One heartbeat of a worker: what it is now, and the outcomes it counted since its last
/// stored heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct WorkerReport {
    pub(crate) consumer: String,
    /// The encoded `stats::Heartbeat`; `None` removes the worker (it is stopping).
    pub(crate) info: Option<Vec<u8>>,
    /// The counts go to the bucket of this time's minute.
    pub(crate) at_ms: i64,
    /// (`keys::stats_field`, count to add), none of them zero.
    pub(crate) counts: Vec<(String, u64)>,
}

pub(crate) trait Broker: Send + Sync + 'static {
    /// Make the queues' streams and consumer groups exist (idempotent).
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<()>>;

    /// Add jobs, in one round trip.
    fn push(&self, jobs: Vec<NewJob>) -> BoxFuture<'_, Result<()>>;

    /// Move the queue's due delayed jobs into it, atomically, at most `limit` of them.
    fn promote_due<'a>(
        &'a self,
        queue: &'a str,
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Promoted>>;

    /// Take up to `max` new jobs for `consumer`, waiting up to `block` when there are none.
    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>>;

    /// Take over jobs whose lease ran out: pending and idle for at least `min_idle`, under
    /// another consumer, or under `consumer` itself but not among the entries it `holds` (an
    /// orphan: a read whose reply never reached it).
    fn reclaim<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        min_idle: Duration,
        max: usize,
        holds: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Delivery>>>;

    /// Renew the leases of entries `consumer` still owns; returns how many it owned.
    fn renew<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        entry_ids: &'a [String],
    ) -> BoxFuture<'a, Result<usize>>;

    /// Apply writes atomically (in the order `Write` describes), each only while `consumer`
    /// still holds its delivery with the same delivery count; records expire after `ttl`.
    fn apply<'a>(
        &'a self,
        consumer: &'a str,
        writes: &'a [Write],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Applied>>;

    /// The stored record of a job.
    fn load_record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    /// Ids of jobs that reached a terminal state from now on. Missed events are possible
    /// (lag, reconnects): waiters re-read the record as well.
    fn finished_events(&self) -> BoxFuture<'_, Result<broadcast::Receiver<Arc<str>>>>;

    /// Forget a consumer that owns nothing (clean shutdown); one that still owns entries is kept
    /// so that they can be reclaimed.
    fn retire_consumer<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
    ) -> BoxFuture<'a, Result<()>>;

    /// The stored fields of a schedule; empty when no beat has registered it.
    fn beat_state<'a>(
        &'a self,
        schedule: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, String>>>;

    /// Register a schedule: store its definition `fields`, and `last_ms` as the last slot
    /// handled unless it has one (a restart neither repeats nor drops slots).
    fn beat_register<'a>(
        &'a self,
        schedule: &'a str,
        last_ms: i64,
        fields: &'a [(&'static str, String)],
    ) -> BoxFuture<'a, Result<()>>;

    /// Apply one pass of a schedule, all or nothing, only if its last slot handled is still
    /// `expected_ms`; returns whether it was applied.
    fn beat_advance<'a>(&'a self, advance: &'a BeatAdvance) -> BoxFuture<'a, Result<bool>>;

    /// The names of every registered schedule, sorted.
    fn beat_schedules(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// Take or renew the beat leader's lease for `holder`, for `ttl`; a zero `ttl` gives it up.
    /// Returns whether `holder` holds it now.
    fn beat_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>>;

    /// Whether an entry is still in its queue's stream: waiting, or running and not settled.
    fn in_stream<'a>(&'a self, queue: &'a str, entry_id: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Up to `count` dead letters from entry id `start` on (`-` for the oldest; `(id` for
    /// those after `id`), oldest first.
    fn dead_range<'a>(
        &'a self,
        start: &'a str,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadEntry>>>;

    /// Dead letters stored, trimmed by the cap so far, and added since the last whole purge.
    fn dead_stats(&self) -> BoxFuture<'_, Result<crate::DeadLetterStats>>;

    /// Atomically remove a dead letter, add `payload` to the queue as a ready job and delete
    /// the job's old record (it is pending again); false if the dead letter is gone.
    fn dead_replay<'a>(
        &'a self,
        entry_id: &'a str,
        queue: &'a str,
        job_id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Delete every dead letter, or those dead-lettered before `before_ms`; returns how many.
    fn dead_purge(&self, before_ms: Option<i64>) -> BoxFuture<'_, Result<u64>>;

    /// Remove from the queue's group the consumers other than `me` that own nothing and have
    /// been idle for `idle` or more: workers that died and whose entries were reclaimed.
    /// Returns their names.
    fn prune_consumers<'a>(
        &'a self,
        queue: &'a str,
        me: &'a str,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Store a worker's heartbeat (or remove it), and add its counts to the minute bucket of
    /// `at_ms`, which expires `stats::BUCKET_TTL` after its last write; in one round trip.
    fn report_worker<'a>(&'a self, report: &'a WorkerReport) -> BoxFuture<'a, Result<()>>;

    /// Every stored worker heartbeat.
    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerEntry>>>;

    /// Remove the heartbeats of these workers.
    fn forget_workers<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<()>>;

    /// The queues workers have prepared, sorted.
    fn queue_names(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// What each queue holds, in the order asked.
    fn queue_stats<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueStats>>>;

    /// The outcome counts of the minutes `from..=to` (minutes since the Unix epoch), summed
    /// per field.
    fn outcome_counts(&self, from: i64, to: i64) -> BoxFuture<'_, Result<HashMap<String, u64>>>;
}

/// One pass of a schedule, applied only if the schedule's last handled slot is still
/// `expected_ms`: this compare-and-set is what makes each (schedule, slot) produce one job
/// however many beat processes run, paused or not.
#[derive(Debug, Clone)]
pub(crate) struct BeatAdvance {
    pub(crate) schedule: String,
    /// The last slot handled that the pass was planned from.
    pub(crate) expected_ms: i64,
    /// The last slot handled after it.
    pub(crate) through_ms: i64,
    /// The jobs it fires, ready now, all on `queue`; the entry id of the last one is stored.
    pub(crate) queue: String,
    pub(crate) payloads: Vec<Vec<u8>>,
    /// Fields stored with it (the last job, its slot).
    pub(crate) fields: Vec<(&'static str, String)>,
    /// A counter field to increment (slots skipped because the last run was still going).
    pub(crate) count: Option<&'static str>,
}
