//! The Redis Streams broker: one stream and consumer group per queue, a sorted set per queue for
//! delayed jobs, records as plain strings with a TTL. Key and field names come from `keys.rs`.
//!
//! One file per concern, and this one ties them to the [`Broker`] trait: `connection` (URL,
//! TLS, the shared connection and the readers' own, bundled in [`RedisBroker`]), `fetch`
//! (reads, reclaims and lease renewals), `queues` (groups, pushes, promotion, consumers),
//! `settle` (the batched, fenced writes), `listener` (finished-job announcements), `beat`,
//! `dead`, `stats`, `unique` (unique jobs' locks), `limits` (rate limits and concurrency
//! slots), `revoke` (cancelled jobs), `reply` (reading replies) and `scripts` (the Lua, in `.lua` files).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

use super::{
    Applied, BeatAdvance, BeatDefinition, BeatState, Broker, DeadJob, DeadLetterStats, Delivery,
    FailureGroup, MetricsBucket, NewJob, Promoted, QueueStats, QueuedJob, UniqueLock, WorkerEntry,
    WorkerReport, Write,
};
use crate::audit::AuditEntry;
use crate::error::{Error, Result};
use crate::limit::RateLimit;
use crate::metrics::{Resolution, TaskCounts};

mod beat;
mod celery;
mod connection;
mod dead;
mod fetch;
mod limits;
mod listener;
mod queues;
mod reply;
mod revoke;
mod scripts;
mod settle;
mod slots;
mod stats;
mod unique;

pub(crate) use celery::CeleryRedis;
pub(crate) use connection::RedisBroker;

/// One broker call: its Redis errors become this crate's (a missing group typed as such).
fn call<'a, T: Send + 'a>(
    call: impl Future<Output = redis::RedisResult<T>> + Send + 'a,
) -> BoxFuture<'a, Result<T>> {
    Box::pin(async move { call.await.map_err(Error::redis) })
}

impl Broker for RedisBroker {
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<()>> {
        call(queues::prepare(self, queues))
    }

    fn push(&self, jobs: Vec<NewJob>) -> BoxFuture<'_, Result<()>> {
        call(queues::push(self, jobs))
    }

    fn push_once<'a>(
        &'a self,
        job: NewJob,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        call(queues::push_once(self, job, id, hold))
    }

    fn push_unique<'a>(
        &'a self,
        job: NewJob,
        key: &'a str,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        call(unique::push_unique(self, job, key, id, hold))
    }

    fn push_debounced<'a>(
        &'a self,
        job: NewJob,
        key: &'a str,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        call(unique::push_debounced(self, job, key, id, hold))
    }

    fn take_debounce<'a>(
        &'a self,
        queue: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        call(unique::take_debounce(self, queue, key, id))
    }

    fn release_unique<'a>(
        &'a self,
        queue: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        call(unique::release_unique(self, queue, key, id))
    }

    fn unique_lock<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<UniqueLock>>> {
        call(unique::unique_lock(self, key))
    }

    fn unique_locks<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<UniqueLock>>> {
        call(unique::unique_locks(self, prefix, limit))
    }

    fn acquire_rate<'a>(
        &'a self,
        scope: &'a str,
        limit: RateLimit,
        patience: Duration,
        now_us: Option<i64>,
    ) -> BoxFuture<'a, Result<Option<Duration>>> {
        call(limits::acquire_rate(self, scope, limit, patience, now_us))
    }

    fn acquire_slot<'a>(
        &'a self,
        scope: &'a str,
        holder: &'a str,
        max: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        call(limits::acquire_slot(self, scope, holder, max, lease))
    }

    fn renew_slots<'a>(
        &'a self,
        held: &'a [(String, String)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<usize>> {
        call(limits::renew_slots(self, held, lease))
    }

    fn release_slot<'a>(&'a self, scope: &'a str, holder: &'a str) -> BoxFuture<'a, Result<()>> {
        call(limits::release_slot(self, scope, holder))
    }

    fn revoke<'a>(&'a self, job_id: &'a str, keep: Duration) -> BoxFuture<'a, Result<i64>> {
        call(revoke::revoke(self, job_id, keep))
    }

    fn revocations_since(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<(String, i64)>>> {
        call(revoke::revocations_since(self, since_ms))
    }

    fn set_paused<'a>(&'a self, queue: &'a str, paused: bool) -> BoxFuture<'a, Result<bool>> {
        call(queues::set_paused(self, queue, paused))
    }

    fn paused_queues(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        call(queues::paused_queues(self))
    }

    fn promote_due<'a>(
        &'a self,
        queues: &'a [String],
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Promoted>> {
        call(queues::promote_due(self, queues, now_ms, limit))
    }

    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        call(fetch::fetch(self, consumer, queues, max, block))
    }

    fn reclaim<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        min_idle: Duration,
        max: usize,
        holds: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Delivery>>> {
        call(fetch::reclaim(self, consumer, queue, min_idle, max, holds))
    }

    fn renew<'a>(
        &'a self,
        consumer: &'a str,
        queue: &'a str,
        entry_ids: &'a [String],
    ) -> BoxFuture<'a, Result<usize>> {
        call(fetch::renew(self, consumer, queue, entry_ids))
    }

    fn apply<'a>(
        &'a self,
        consumer: &'a str,
        batch: u64,
        writes: &'a [Write],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Applied>> {
        call(settle::apply(self, consumer, batch, writes, ttl))
    }

    fn load_record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        call(async move {
            redis::cmd("GET")
                .arg(self.keys.record(id))
                .query_async(&mut self.conn())
                .await
        })
    }

    fn finished_events(&self) -> BoxFuture<'_, Result<broadcast::Receiver<Arc<str>>>> {
        Box::pin(async move {
            Ok(self
                .finished
                .subscribe(self.endpoint.subscriber(), self.keys.finished_channel())
                .await)
        })
    }

    fn retire_consumer<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
    ) -> BoxFuture<'a, Result<()>> {
        call(queues::retire_consumer(self, consumer, queues))
    }

    fn beat_state<'a>(&'a self, schedule: &'a str) -> BoxFuture<'a, Result<BeatState>> {
        call(beat::state(self, schedule))
    }

    fn beat_register<'a>(
        &'a self,
        schedule: &'a str,
        last_ms: i64,
        definition: &'a BeatDefinition,
    ) -> BoxFuture<'a, Result<()>> {
        call(beat::register(self, schedule, last_ms, definition))
    }

    fn beat_advance<'a>(&'a self, advance: &'a BeatAdvance) -> BoxFuture<'a, Result<bool>> {
        call(beat::advance(self, advance))
    }

    fn beat_set_paused<'a>(
        &'a self,
        schedule: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<bool>> {
        call(beat::set_paused(self, schedule, paused))
    }

    fn schedule_runs<'a>(
        &'a self,
        schedule: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>>> {
        call(beat::runs(self, schedule, limit))
    }

    fn beat_schedules(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        call(beat::schedules(self))
    }

    fn server_time_ms(&self) -> BoxFuture<'_, Result<i64>> {
        call(beat::server_time_ms(self))
    }

    fn beat_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        call(beat::lease(self, holder, ttl))
    }

    fn queued<'a>(&'a self, lane: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<QueuedJob>>> {
        call(queues::queued(self, lane, count))
    }

    fn in_stream<'a>(&'a self, queue: &'a str, entry_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        call(queues::in_stream(self, queue, entry_id))
    }

    fn dead_page<'a>(
        &'a self,
        after: Option<&'a str>,
        until: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadJob>>> {
        call(dead::page(self, after, until, count))
    }

    fn dead_page_back<'a>(
        &'a self,
        before: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadJob>>> {
        call(dead::page_back(self, before, count))
    }

    fn dead_newest(&self) -> BoxFuture<'_, Result<Option<String>>> {
        call(dead::newest(self))
    }

    fn dead_get<'a>(&'a self, entry_id: &'a str) -> BoxFuture<'a, Result<Option<DeadJob>>> {
        call(dead::get(self, entry_id))
    }

    fn dead_stats(&self) -> BoxFuture<'_, Result<DeadLetterStats>> {
        call(dead::stats(self))
    }

    fn dead_replay<'a>(
        &'a self,
        entry_id: &'a str,
        queue: &'a str,
        job_id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<bool>> {
        call(dead::replay(self, entry_id, queue, job_id, payload))
    }

    fn dead_purge(&self, before_ms: Option<i64>) -> BoxFuture<'_, Result<u64>> {
        call(dead::purge(self, before_ms))
    }

    fn dead_remove<'a>(&'a self, entry_ids: &'a [String]) -> BoxFuture<'a, Result<u64>> {
        call(dead::remove(self, entry_ids))
    }

    fn dead_groups(&self) -> BoxFuture<'_, Result<Vec<FailureGroup>>> {
        call(dead::groups(self))
    }

    fn audit_append<'a>(&'a self, entry: &'a AuditEntry) -> BoxFuture<'a, Result<String>> {
        call(async move {
            let mut add = redis::cmd("XADD");
            add.arg(self.keys.audit())
                .arg("MAXLEN")
                .arg(crate::audit::AUDIT_LEN)
                .arg("*");
            for (name, value) in entry.fields() {
                add.arg(name).arg(value);
            }
            add.query_async(&mut self.conn()).await
        })
    }

    fn audit_page<'a>(
        &'a self,
        before: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>>> {
        call(async move {
            let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                .arg(self.keys.audit())
                .arg(end)
                .arg("-")
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut self.conn())
                .await?;
            Ok(entries
                .into_iter()
                .map(|(id, fields)| AuditEntry::from_fields(id, fields))
                .collect())
        })
    }

    fn prune_consumers<'a>(
        &'a self,
        queue: &'a str,
        me: &'a str,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        call(queues::prune_consumers(self, queue, me, idle))
    }

    fn report_worker<'a>(&'a self, report: &'a WorkerReport) -> BoxFuture<'a, Result<()>> {
        call(stats::report_worker(self, report))
    }

    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerEntry>>> {
        call(stats::workers(self))
    }

    fn forget_workers<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<()>> {
        call(stats::forget_workers(self, names))
    }

    fn queue_names(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        call(stats::queue_names(self))
    }

    fn queue_stats<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueStats>>> {
        call(stats::queue_stats(self, queues))
    }

    fn metrics(
        &self,
        resolution: Resolution,
        from: i64,
        to: i64,
    ) -> BoxFuture<'_, Result<Vec<MetricsBucket>>> {
        call(stats::metrics(self, resolution, from, to))
    }

    fn metric_totals(&self) -> BoxFuture<'_, Result<Vec<TaskCounts>>> {
        call(stats::metric_totals(self))
    }

    fn recent_executions<'a>(
        &'a self,
        task: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>>> {
        call(stats::recent_executions(self, task, limit))
    }
}
