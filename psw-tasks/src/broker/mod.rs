//! The queue seam: what the worker and client need from a broker, with a Redis Streams
//! implementation and an in-process one that behave alike (their shared tests are in `tests`).
//!
//! Architecture invariant: the worker and the client see only [`Broker`]; Redis types stay in
//! `redis.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::Result;
use crate::envelope::JobId;

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
}

/// A job to add: ready at once, or held in the queue's delayed set until `due_ms`.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub(crate) queue: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) due_ms: Option<i64>,
}

/// Why a delivery could not be run, kept with its raw bytes in the dead-letter stream.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) job_id: Option<JobId>,
    pub(crate) task: Option<String>,
    pub(crate) reason: &'static str,
    pub(crate) error: String,
    pub(crate) payload: Vec<u8>,
}

/// The end of one delivery. Everything in it is written before the entry is acknowledged,
/// in the same round trip.
#[derive(Debug)]
pub(crate) struct Settlement {
    pub(crate) queue: Arc<str>,
    pub(crate) entry_id: String,
    /// The job's record in its new state.
    pub(crate) record: Option<(JobId, Vec<u8>)>,
    /// Announced to waiters once written (terminal states of jobs with results).
    pub(crate) finished: Option<JobId>,
    /// The next attempt, for a retry.
    pub(crate) retry: Option<NewJob>,
    pub(crate) dead: Option<DeadLetter>,
}

/// Writes applied in order, in one round trip per batch.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "settlements are the common case; boxing them would add an allocation per job"
)]
pub(crate) enum Write {
    /// Store a record (STARTED, PROGRESS) without settling anything.
    Record {
        id: JobId,
        record: Vec<u8>,
    },
    Settle(Settlement),
}

/// What a promotion pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Promoted {
    pub(crate) moved: usize,
    /// Due time of the earliest job still delayed.
    pub(crate) next_due_ms: Option<i64>,
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

    /// Take over jobs whose lease ran out: pending and idle for at least `min_idle`.
    fn reclaim<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        min_idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>>;

    /// Renew the leases of entries `consumer` still owns; returns how many it owned.
    fn renew<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        entry_ids: &'a [String],
    ) -> BoxFuture<'a, Result<usize>>;

    /// Apply writes in order, all or none; records expire after `ttl`.
    fn apply<'a>(&'a self, writes: &'a [Write], ttl: Duration) -> BoxFuture<'a, Result<()>>;

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
}
