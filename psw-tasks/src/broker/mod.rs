//! The queue seam: what the worker, the beat, the client and the readers above them need from a
//! broker, as typed values, with a Redis Streams implementation and an in-process one that
//! behave alike (their shared tests are in `tests.rs`).
//!
//! Architecture invariant: nothing above this module sees Redis types, key names or field
//! names; `redis/` is the only code that talks to Redis (with the test fixture).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::audit::AuditEntry;
use crate::envelope::JobId;
use crate::error::Result;
use crate::keys::Tally;
use crate::limit::RateLimit;
use crate::metrics::{Resolution, TaskCounts};

mod beat;
mod dead_letter;
pub(crate) mod memory;
pub(crate) mod redis;
#[cfg(test)]
mod tests;

pub(crate) use beat::{BeatAdvance, BeatDefinition, BeatState, LastFired};
pub use dead_letter::{DeadJob, DeadLetterStats, DeadReason, FailureGroup};
pub(crate) use dead_letter::{DeadLetter, DeadLetterLimits, footprint, group_id};

/// One job handed to a consumer, pending until it is settled.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) queue: Arc<str>,
    pub(crate) entry_id: String,
    pub(crate) payload: Vec<u8>,
    /// Times the entry has been delivered, this one included (1 for a first delivery).
    pub(crate) deliveries: u64,
}

impl Delivery {
    /// The delivery's identity without its bytes, for fencing the writes about it.
    pub(crate) fn clone_without_payload(&self) -> Delivery {
        Delivery {
            queue: self.queue.clone(),
            entry_id: self.entry_id.clone(),
            payload: Vec::new(),
            deliveries: self.deliveries,
        }
    }
}

/// A job to add: ready at once, or held in the queue's delayed set until `due_ms`.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub(crate) queue: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) due_ms: Option<i64>,
}

/// The end of one delivery. Everything in it is written before the entry is acknowledged,
/// in the same round trip, and only while this consumer still holds the delivery (fencing).
#[derive(Debug, Clone)]
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
    /// The unique lock (key, holder's job id) to release with it: the job ends here.
    pub(crate) unlock: Option<Box<(String, JobId)>>,
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
            unlock: None,
        }
    }
}

/// Writes applied in one round trip per batch. A batch holds at most one settlement per
/// delivery (entry id and delivery count: a delivery is settled once), after the records of
/// that delivery; brokers keep a delivery's records before its settlement and may apply the
/// settlements of different deliveries in any order (fencing by delivery count makes them
/// independent).
#[derive(Debug, Clone)]
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

impl Write {
    /// The queue and entry id of the delivery the write is about.
    pub(crate) fn delivery(&self) -> (&Arc<str>, &str) {
        match self {
            Write::Record {
                queue, entry_id, ..
            } => (queue, entry_id),
            Write::Settle(settlement) => (&settlement.queue, &settlement.entry_id),
        }
    }
}

/// What applying a batch of writes did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Indexes of writes refused because the consumer no longer held their delivery: another
    /// worker took it over after the lease ran out. Nothing of them was written.
    pub(crate) fenced: Vec<usize>,
    /// Oldest dead letters removed to keep the dead-letter stream under its cap.
    pub(crate) dead_trimmed: u64,
    /// Entry ids of the dead letters added, with the bytes each takes against the budget, in
    /// the order of the writes that added them.
    pub(crate) dead_entries: Vec<(String, u64)>,
    /// Queues whose stream or consumer group is gone (deleted, or Redis restarted empty): the
    /// writes about their deliveries are among `fenced`.
    pub(crate) missing_queues: Vec<Arc<str>>,
    /// Writes the broker refused, with its reason (a key of the wrong type, say): nothing of
    /// them was acknowledged, and the rest of the batch was applied all the same.
    pub(crate) failed: Vec<(usize, String)>,
}

impl Applied {
    /// Whether the write at `index` was stored: neither fenced nor refused.
    pub(crate) fn stored(&self, index: usize) -> bool {
        !self.fenced.contains(&index) && !self.failed.iter().any(|(failed, _)| *failed == index)
    }
}

/// A unique job's lock, as `Client::unique_locks` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UniqueLock {
    /// The key (`EnqueueOptions::unique_key`, or the task and its arguments' digest).
    pub key: String,
    /// The job that holds it.
    pub job_id: String,
    /// How long it lasts unless released first.
    pub expires_in: Option<Duration>,
}

/// What a promotion pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Promoted {
    pub(crate) moved: usize,
    /// Due time of the earliest job still delayed.
    pub(crate) next_due_ms: Option<i64>,
}

/// A stored worker heartbeat: the consumer name and the encoded `stats::Heartbeat`, which the
/// broker keeps whole.
pub(crate) type WorkerEntry = (String, Vec<u8>);

/// One heartbeat of a worker: what it is now, and what it counted and ran since its last
/// stored heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct WorkerReport {
    pub(crate) consumer: String,
    /// The encoded `stats::Heartbeat`; `None` removes the worker (it is stopping).
    pub(crate) info: Option<Vec<u8>>,
    /// The counts go to the buckets of this time, in every resolution.
    pub(crate) at_ms: i64,
    /// (task, tally, count to add), none of them zero.
    pub(crate) counts: Vec<(String, Tally, u64)>,
    /// Executions to add to each task's recent ones (encoded `metrics::Execution`s), oldest
    /// first; each task keeps the newest `metrics::RECENT_EXECUTIONS`.
    pub(crate) executions: Vec<(String, Vec<Vec<u8>>)>,
    /// Executions of jobs fired by a schedule, likewise per schedule; each keeps the newest
    /// `metrics::SCHEDULE_RUNS`.
    pub(crate) schedule_runs: Vec<(String, Vec<Vec<u8>>)>,
}

/// A bucket of the metrics history: its number (spans since the Unix epoch) and what each
/// task that did anything in it did.
pub(crate) type MetricsBucket = (i64, Vec<TaskCounts>);

/// One queue now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Jobs in the stream never delivered to a worker: the consumer group's `lag` (Redis
    /// 7.0). When Redis cannot tell it (entries deleted after the group's last delivery, as
    /// acknowledging does), the stream length minus `pending`, which is exact as long as
    /// acknowledged entries are deleted at once, as every psw-tasks worker does.
    pub ready: u64,
    /// Jobs delivered to a worker and not acknowledged yet: running, waiting for a run slot
    /// (prefetched), or held by a worker that died, until another takes it over.
    pub pending: u64,
    /// Jobs in the delayed set: countdowns, ETAs and retries waiting for their due time.
    pub delayed: u64,
    /// Consumers in the queue's group: live workers, plus dead ones not yet removed (a worker
    /// removes those that own nothing after four leases).
    pub consumers: u64,
    /// How long the oldest job waiting to be taken (`ready`) has waited since it became ready
    /// (enqueued, or come due), in ms by the broker's clock; `None` when none waits.
    pub oldest_age_ms: Option<u64>,
    /// Whether the queue is paused ([`crate::Client::pause_queue`]): its jobs wait, and no
    /// worker takes them.
    pub paused: bool,
}

/// A job found waiting in a queue: in its stream (ready, or taken by a worker and not
/// settled yet) or in its delayed set ([`crate::Client::find_queued`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuedJob {
    /// The lane it waits in: the queue, or one of its priority levels (`<queue>:high`).
    pub lane: String,
    /// When it is due, for a job in the delayed set (ms since the Unix epoch); `None` in the
    /// stream.
    pub due_ms: Option<i64>,
    pub(crate) payload: Vec<u8>,
}

impl QueuedJob {
    /// Its envelope as JSON, the arguments decoded from MessagePack; `None` when the bytes
    /// are not an envelope.
    pub fn envelope_json(&self) -> Option<serde_json::Value> {
        crate::envelope::Envelope::decode(&self.payload)
            .ok()
            .map(|envelope| envelope.to_json())
    }
}

pub(crate) trait Broker: Send + Sync + 'static {
    /// Make the queues' streams and consumer groups exist (idempotent).
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<()>>;

    /// Add jobs, in one round trip.
    fn push(&self, jobs: Vec<NewJob>) -> BoxFuture<'_, Result<()>>;

    /// Add `job`, whose fixed id is `id`, unless a job of that id is still known: its id held
    /// by an earlier `push_once` (for `hold` from then), or its record kept. Check and add are
    /// one atomic step. Whether it was added.
    fn push_once<'a>(
        &'a self,
        job: NewJob,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Add `job` (whose id is `id`) unless the unique lock `key` is held: take it for `hold`
    /// and add the job in one atomic step. `None` when added, else the id of the job that
    /// holds the lock.
    fn push_unique<'a>(
        &'a self,
        job: NewJob,
        key: &'a str,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<Option<String>>>;

    /// Add `job` (whose id is `id`) and make it the last of debounce key `key`, for `hold`, in
    /// one atomic step: an earlier job of the key is then superseded.
    fn push_debounced<'a>(
        &'a self,
        job: NewJob,
        key: &'a str,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<()>>;

    /// Whether job `id` is still the last of debounce key `key` in `queue` (the lane it was
    /// enqueued to); if so the key is cleared, so the next enqueue opens a new window.
    fn take_debounce<'a>(
        &'a self,
        queue: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Release the unique lock `key` of `queue` (the lane the job was enqueued to) if job `id`
    /// holds it (a lock taken again by another job since is left alone).
    fn release_unique<'a>(
        &'a self,
        queue: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// The unique lock `key`, if a job holds it.
    fn unique_lock<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<UniqueLock>>>;

    /// Up to `limit` unique locks whose key starts with `prefix` (all with `""`), each with
    /// the id of the job that holds it and how long it still lasts.
    fn unique_locks<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<UniqueLock>>>;

    /// One GCRA decision for the rate limit kept under `scope` (`limit::acquire`; in Redis
    /// `rate_acquire.lua`, on the server's clock): `None` when a start may happen now, and it
    /// is counted; else how long to wait: at most `patience` to ask again, or longer, to the
    /// caller's place in line. `now_us` stands in for the clock in tests of simulated time.
    fn acquire_rate<'a>(
        &'a self,
        scope: &'a str,
        limit: RateLimit,
        patience: Duration,
        now_us: Option<i64>,
    ) -> BoxFuture<'a, Result<Option<Duration>>>;

    /// Take, or keep, one of the `max` concurrency slots of `scope` for `holder` (a job id),
    /// leased for `lease` on the server's clock; `false` when live leases hold all of them.
    /// Expired leases (their worker died) are dropped first.
    fn acquire_slot<'a>(
        &'a self,
        scope: &'a str,
        holder: &'a str,
        max: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Extend the leases of the slots `(scope, holder)` still held; how many were.
    fn renew_slots<'a>(
        &'a self,
        held: &'a [(String, String)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<usize>>;

    /// Give back `holder`'s slot of `scope`.
    fn release_slot<'a>(&'a self, scope: &'a str, holder: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Mark a job cancelled, for every worker to see, the mark kept for `keep` (the records'
    /// lifetime); when it was marked, on the broker's clock (ms).
    fn revoke<'a>(&'a self, job_id: &'a str, keep: Duration) -> BoxFuture<'a, Result<i64>>;

    /// The jobs marked cancelled at or after `since_ms` (the broker's clock), each with when,
    /// oldest first.
    fn revocations_since(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<(String, i64)>>>;

    /// Pause a queue (every lane of it), or resume it: workers stop reading it and start again.
    /// Whether that changed anything.
    fn set_paused<'a>(&'a self, queue: &'a str, paused: bool) -> BoxFuture<'a, Result<bool>>;

    /// The paused queues, sorted.
    fn paused_queues(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// Move the due delayed jobs of `queues` (a queue's lanes) into their streams, atomically,
    /// at most `limit` of them in all, the first queue's first; `next_due_ms` is the earliest
    /// left in any of them.
    fn promote_due<'a>(
        &'a self,
        queues: &'a [String],
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Promoted>>;

    /// Take up to `max` new jobs for `consumer`, in all over `queues` (never `max` from each),
    /// from the first queue first, then the next (the caller orders them), waiting up to
    /// `block` when there are none.
    /// [`crate::Error::GroupMissing`] when a queue's group is gone (Redis lost its data).
    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>>;

    /// Take over jobs whose lease ran out: pending and idle for at least `min_idle`, under
    /// another consumer, or under `consumer` itself (an orphan: a read whose reply never
    /// reached it). Never one of the entries `consumer` `holds`, whoever owns it now: it still
    /// runs that one, and a second copy must not start beside it.
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
    ///
    /// `batch` names the batch among `consumer`'s: applied again with the same number (its
    /// reply was lost, so the caller cannot know it was applied), the batch changes nothing and
    /// its first outcome comes back, so that its own settlements are not taken for another's.
    fn apply<'a>(
        &'a self,
        consumer: &'a str,
        batch: u64,
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

    /// What is stored about a schedule; all empty when no beat has registered it.
    fn beat_state<'a>(&'a self, schedule: &'a str) -> BoxFuture<'a, Result<BeatState>>;

    /// Register a schedule: store its definition, and `last_ms` as the last slot handled
    /// unless it has one (a restart neither repeats nor drops slots).
    fn beat_register<'a>(
        &'a self,
        schedule: &'a str,
        last_ms: i64,
        definition: &'a BeatDefinition,
    ) -> BoxFuture<'a, Result<()>>;

    /// Apply one pass of a schedule, all or nothing, only if its last slot handled is still
    /// `expected_ms`; returns whether it was applied.
    fn beat_advance<'a>(&'a self, advance: &'a BeatAdvance) -> BoxFuture<'a, Result<bool>>;

    /// Pause a registered schedule, or resume it; `false` if no beat registered it.
    fn beat_set_paused<'a>(
        &'a self,
        schedule: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<bool>>;

    /// The last `limit` runs of `schedule` (encoded `metrics::Execution`s), newest first.
    fn schedule_runs<'a>(
        &'a self,
        schedule: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>>>;

    /// The names of every registered schedule, sorted.
    fn beat_schedules(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// The time by the broker's clock, in ms since the Unix epoch: what every beat plans by.
    fn server_time_ms(&self) -> BoxFuture<'_, Result<i64>>;

    /// Take or renew the beat leader's lease for `holder`, for `ttl`; a zero `ttl` gives it up.
    /// Returns whether `holder` holds it now.
    fn beat_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>>;

    /// The first `count` jobs of a lane's stream (oldest first: waiting, or running and not
    /// settled) and the first `count` of its delayed set (soonest due first).
    fn queued<'a>(&'a self, lane: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<QueuedJob>>>;

    /// Whether an entry is still in its queue's stream: waiting, or running and not settled.
    fn in_stream<'a>(&'a self, queue: &'a str, entry_id: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Up to `count` dead letters, oldest first: from the oldest, or those after the entry id
    /// `after`; with `until`, none after that entry id.
    fn dead_page<'a>(
        &'a self,
        after: Option<&'a str>,
        until: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadJob>>>;

    /// Up to `count` dead letters, newest first: from the newest, or those before the entry id
    /// `before`.
    fn dead_page_back<'a>(
        &'a self,
        before: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadJob>>>;

    /// The entry id of the newest dead letter, if there is one.
    fn dead_newest(&self) -> BoxFuture<'_, Result<Option<String>>>;

    /// One dead letter by its entry id.
    fn dead_get<'a>(&'a self, entry_id: &'a str) -> BoxFuture<'a, Result<Option<DeadJob>>>;

    /// Dead letters stored, trimmed by the cap so far, and added since the last whole purge.
    fn dead_stats(&self) -> BoxFuture<'_, Result<DeadLetterStats>>;

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

    /// Delete the dead letters with these entry ids (those still there); returns how many.
    fn dead_remove<'a>(&'a self, entry_ids: &'a [String]) -> BoxFuture<'a, Result<u64>>;

    /// The failure groups of the dead letters stored now, biggest first, read from an index
    /// kept as letters come and go (not by reading the letters).
    fn dead_groups(&self) -> BoxFuture<'_, Result<Vec<FailureGroup>>>;

    /// Add an entry to the audit log (capped at `AUDIT_LEN`); returns its id.
    fn audit_append<'a>(&'a self, entry: &'a AuditEntry) -> BoxFuture<'a, Result<String>>;

    /// Up to `count` audit entries, newest first: from the newest, or those before the id
    /// `before`.
    fn audit_page<'a>(
        &'a self,
        before: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>>>;

    /// Remove from the queue's group the consumers other than `me` that own nothing and have
    /// been idle for `idle` or more: workers that died and whose entries were reclaimed.
    /// Returns their names.
    fn prune_consumers<'a>(
        &'a self,
        queue: &'a str,
        me: &'a str,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Store a worker's heartbeat (or remove it), add its counts to the buckets of `at_ms` in
    /// every resolution (each expires `Resolution::kept` after its last write) and to the
    /// totals, and its executions to the recent ones; in one round trip.
    fn report_worker<'a>(&'a self, report: &'a WorkerReport) -> BoxFuture<'a, Result<()>>;

    /// Every stored worker heartbeat.
    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerEntry>>>;

    /// Remove the heartbeats of these workers.
    fn forget_workers<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<()>>;

    /// The queues workers have prepared, sorted.
    fn queue_names(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// What each queue holds, in the order asked.
    fn queue_stats<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueStats>>>;

    /// The stored buckets `from..=to` of `resolution` that hold anything, in order.
    fn metrics(
        &self,
        resolution: Resolution,
        from: i64,
        to: i64,
    ) -> BoxFuture<'_, Result<Vec<MetricsBucket>>>;

    /// Every task's counts summed over all time (never expired, only grown).
    fn metric_totals(&self) -> BoxFuture<'_, Result<Vec<TaskCounts>>>;

    /// The last `limit` executions of `task` (encoded), newest first.
    fn recent_executions<'a>(
        &'a self,
        task: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>>>;
}
