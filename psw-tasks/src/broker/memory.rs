//! The in-process broker: the same semantics as the Redis one (groups, pending entries, leases,
//! delayed sets, records with a TTL), for single-process use and fast tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, broadcast};

use super::{
    Applied, BeatAdvance, BeatDefinition, BeatState, Broker, DeadJob, DeadLetterLimits,
    DeadLetterStats, Delivery, FailureGroup, MetricsBucket, NewJob, Promoted, QueueStats,
    QueuedJob, UniqueLock, WorkerEntry, WorkerReport, Write, footprint,
};
use crate::audit::{AUDIT_LEN, AuditEntry};
use crate::error::Result;
use crate::limit::{self, RateLimit, RateState};
use crate::metrics::{RECENT_EXECUTIONS, Resolution, SCHEDULE_RUNS, TaskCounts};

/// How often `apply` drops expired records.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct MemoryBroker {
    state: Mutex<State>,
    arrivals: Notify,
    finished: FinishedChannel,
    dead_letter_limits: DeadLetterLimits,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker {
            state: Mutex::default(),
            arrivals: Notify::new(),
            finished: FinishedChannel::default(),
            dead_letter_limits: DeadLetterLimits::default(),
        }
    }
}

pub(crate) struct FinishedChannel(broadcast::Sender<Arc<str>>);

impl Default for FinishedChannel {
    fn default() -> Self {
        FinishedChannel(broadcast::channel(4096).0)
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    records: HashMap<String, (Vec<u8>, Instant)>,
    /// Dead letters, oldest first.
    dead: VecDeque<DeadJob>,
    dead_trimmed: u64,
    /// Dead letters added since the last whole purge (a stream's `entries-added` in Redis).
    dead_added: u64,
    /// The audit log, oldest first, with the number of the next entry.
    audit: VecDeque<AuditEntry>,
    next_audit: u64,
    last_sweep: Option<Instant>,
    next_entry: u64,
    next_delayed: u64,
    schedules: HashMap<String, BeatState>,
    beat_leader: Option<(String, Instant)>,
    /// Queues workers have prepared or producers pushed to (Redis keeps them in a set).
    prepared: BTreeSet<String>,
    /// Worker heartbeats by consumer name.
    workers: HashMap<String, Vec<u8>>,
    /// The metrics history: per resolution, by bucket, then by task.
    metrics: HashMap<Resolution, BTreeMap<i64, HashMap<String, TaskCounts>>>,
    /// Every task's counts over all time.
    totals: HashMap<String, TaskCounts>,
    /// Each task's recent executions, newest first.
    recent: HashMap<String, VecDeque<Vec<u8>>>,
    /// Each schedule's last runs, newest first.
    schedule_runs: HashMap<String, VecDeque<Vec<u8>>>,
    /// Fixed job ids held by an idempotent enqueue, until when.
    id_holds: HashMap<String, Instant>,
    /// Unique locks: the holder's job id, until when.
    unique: HashMap<String, (String, Instant)>,
    /// Debounce keys: the last job's id, until when.
    debounce: HashMap<String, (String, Instant)>,
    /// Rate limits' GCRA state by scope.
    rates: HashMap<String, RateState>,
    /// Concurrency slots by scope: each holder's lease, until when.
    slots: HashMap<String, HashMap<String, Instant>>,
    /// Cancelled jobs by when they were cancelled (ms), and the time of each job's mark.
    revoked: BTreeSet<(i64, String)>,
    revoked_at: HashMap<String, i64>,
    /// Paused queues.
    paused: BTreeSet<String>,
}

impl State {
    /// Release the lock `key` if job `id` holds it.
    fn release_unique(&mut self, key: &str, id: &str) {
        if self.unique.get(key).is_some_and(|(holder, _)| holder == id) {
            self.unique.remove(key);
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Entry id, bytes, and when it became ready (ms).
    ready: VecDeque<(String, Vec<u8>, i64)>,
    pending: HashMap<String, Pending>,
    delayed: BTreeMap<(i64, u64), Vec<u8>>,
    /// Consumers of the queue's group, with when each last read or claimed: Redis keeps a
    /// consumer from its first read until it is deleted.
    consumers: HashMap<String, Instant>,
}

impl Queue {
    fn owns_nothing(&self, consumer: &str) -> bool {
        self.pending.values().all(|p| p.consumer != consumer)
    }
}

struct Pending {
    consumer: String,
    last_delivery: Instant,
    payload: Vec<u8>,
    deliveries: u64,
}

impl MemoryBroker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Keep the dead letters within `limits`; older ones are trimmed and counted.
    pub(crate) fn with_dead_letter_limits(mut self, limits: DeadLetterLimits) -> Self {
        self.dead_letter_limits = limits;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-changed in a way that
        // matters more than losing the broker: keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_ready(&self, consumer: &str, queues: &[String], max: usize) -> Vec<Delivery> {
        let mut state = self.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        for name in queues {
            let Some(queue) = state.queues.get_mut(name) else {
                continue;
            };
            queue.consumers.insert(consumer.to_owned(), now);
            let queue_name: Arc<str> = Arc::from(name.as_str());
            while out.len() < max {
                let Some((entry_id, payload, _)) = queue.ready.pop_front() else {
                    break;
                };
                queue.pending.insert(
                    entry_id.clone(),
                    Pending {
                        consumer: consumer.to_owned(),
                        last_delivery: now,
                        payload: payload.clone(),
                        deliveries: 1,
                    },
                );
                out.push(Delivery {
                    queue: queue_name.clone(),
                    entry_id,
                    payload,
                    deliveries: 1,
                });
            }
        }
        out
    }
}

impl State {
    /// Adds a job: to its queue, or to the delayed ones when it is due later.
    fn add(&mut self, job: NewJob) {
        if !self.prepared.contains(&job.queue) {
            self.prepared.insert(job.queue.clone());
        }
        match job.due_ms {
            Some(due) if due > crate::envelope::now_ms() => {
                self.next_delayed += 1;
                let seq = self.next_delayed;
                self.queues
                    .entry(job.queue)
                    .or_default()
                    .delayed
                    .insert((due, seq), job.payload);
            }
            _ => {
                self.append(&job.queue, job.payload);
            }
        }
    }

    /// Adds a ready job; returns its entry id.
    fn append(&mut self, queue: &str, payload: Vec<u8>) -> String {
        self.next_entry += 1;
        let entry_id = format!("{}-0", self.next_entry);
        self.queues
            .entry(queue.to_owned())
            .or_default()
            .ready
            .push_back((entry_id.clone(), payload, crate::envelope::now_ms()));
        entry_id
    }
}

impl Broker for MemoryBroker {
    fn prepare<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock();
            for queue in queues {
                state.queues.entry(queue.clone()).or_default();
                state.prepared.insert(queue.clone());
            }
            Ok(())
        })
    }

    fn push(&self, jobs: Vec<NewJob>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            {
                let mut state = self.lock();
                for job in jobs {
                    state.add(job);
                }
            }
            self.arrivals.notify_waiters();
            Ok(())
        })
    }

    fn push_once<'a>(
        &'a self,
        job: NewJob,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let now = Instant::now();
            {
                let mut state = self.lock();
                let recorded = state
                    .records
                    .get(id)
                    .is_some_and(|(_, expires)| *expires > now);
                let held = state.id_holds.get(id).is_some_and(|until| *until > now);
                if recorded || held {
                    return Ok(false);
                }
                state.id_holds.retain(|_, until| *until > now);
                state.id_holds.insert(id.to_owned(), now + hold);
                state.add(job);
            }
            self.arrivals.notify_waiters();
            Ok(true)
        })
    }

    fn push_unique<'a>(
        &'a self,
        job: NewJob,
        key: &'a str,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let now = Instant::now();
            {
                let mut state = self.lock();
                state.unique.retain(|_, (_, until)| *until > now);
                if let Some((holder, _)) = state.unique.get(key) {
                    return Ok(Some(holder.clone()));
                }
                state
                    .unique
                    .insert(key.to_owned(), (id.to_owned(), now + hold));
                state.add(job);
            }
            self.arrivals.notify_waiters();
            Ok(None)
        })
    }

    fn push_debounced<'a>(
        &'a self,
        job: NewJob,
        key: &'a str,
        id: &'a str,
        hold: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let now = Instant::now();
            {
                let mut state = self.lock();
                state.debounce.retain(|_, (_, until)| *until > now);
                state
                    .debounce
                    .insert(key.to_owned(), (id.to_owned(), now + hold));
                state.add(job);
            }
            self.arrivals.notify_waiters();
            Ok(())
        })
    }

    // Memory keeps unique locks and debounce keys per namespace, not per queue as Redis does
    // (where they share the queue's slot): the same unless one key is used on two queues.
    fn take_debounce<'a>(
        &'a self,
        _queue: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut state = self.lock();
            let last = state
                .debounce
                .get(key)
                .is_some_and(|(last, until)| last == id && *until > Instant::now());
            if last {
                state.debounce.remove(key);
            }
            Ok(last)
        })
    }

    fn release_unique<'a>(
        &'a self,
        _queue: &'a str,
        key: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.lock().release_unique(key, id);
            Ok(())
        })
    }

    fn acquire_rate<'a>(
        &'a self,
        scope: &'a str,
        limit: RateLimit,
        patience: Duration,
        now_us: Option<i64>,
    ) -> BoxFuture<'a, Result<Option<Duration>>> {
        Box::pin(async move {
            let now_us = now_us.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64)
            });
            let mut state = self.lock();
            let rate = state.rates.entry(scope.to_owned()).or_default();
            let wait = limit::acquire(
                rate,
                now_us,
                limit.interval_us(),
                limit.tolerance_us(),
                patience.as_micros() as i64,
            );
            Ok(wait.map(|us| Duration::from_micros(us.max(0) as u64)))
        })
    }

    fn acquire_slot<'a>(
        &'a self,
        scope: &'a str,
        holder: &'a str,
        max: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut state = self.lock();
            let holders = state.slots.entry(scope.to_owned()).or_default();
            holders.retain(|_, until| *until > now);
            if holders.contains_key(holder) || holders.len() < max as usize {
                holders.insert(holder.to_owned(), now + lease);
                return Ok(true);
            }
            Ok(false)
        })
    }

    fn renew_slots<'a>(
        &'a self,
        held: &'a [(String, String)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut state = self.lock();
            let mut renewed = 0;
            for (scope, holder) in held {
                if let Some(until) = state.slots.get_mut(scope).and_then(|h| h.get_mut(holder)) {
                    *until = now + lease;
                    renewed += 1;
                }
            }
            Ok(renewed)
        })
    }

    fn release_slot<'a>(&'a self, scope: &'a str, holder: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock();
            if let Some(holders) = state.slots.get_mut(scope) {
                holders.remove(holder);
                if holders.is_empty() {
                    state.slots.remove(scope);
                }
            }
            Ok(())
        })
    }

    fn unique_lock<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<UniqueLock>>> {
        Box::pin(async move {
            let now = Instant::now();
            Ok(self
                .lock()
                .unique
                .get(key)
                .filter(|(_, until)| *until > now)
                .map(|(job_id, until)| UniqueLock {
                    key: key.to_owned(),
                    job_id: job_id.clone(),
                    expires_in: Some(until.duration_since(now)),
                }))
        })
    }

    fn unique_locks<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<UniqueLock>>> {
        Box::pin(async move {
            let now = Instant::now();
            let state = self.lock();
            let mut locks: Vec<UniqueLock> = state
                .unique
                .iter()
                .filter(|(key, (_, until))| key.starts_with(prefix) && *until > now)
                .map(|(key, (job_id, until))| UniqueLock {
                    key: key.clone(),
                    job_id: job_id.clone(),
                    expires_in: Some(until.duration_since(now)),
                })
                .collect();
            locks.sort_by(|a, b| a.key.cmp(&b.key));
            locks.truncate(limit);
            Ok(locks)
        })
    }

    fn revoke<'a>(&'a self, job_id: &'a str, keep: Duration) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let mut state = self.lock();
            let now = crate::envelope::now_ms();
            if let Some(before) = state.revoked_at.insert(job_id.to_owned(), now) {
                state.revoked.remove(&(before, job_id.to_owned()));
            }
            state.revoked.insert((now, job_id.to_owned()));
            let oldest_kept = now - keep.as_millis() as i64;
            while let Some((at, id)) = state.revoked.first().cloned() {
                if at > oldest_kept {
                    break;
                }
                state.revoked.pop_first();
                state.revoked_at.remove(&id);
            }
            Ok(now)
        })
    }

    fn revocations_since(&self, since_ms: i64) -> BoxFuture<'_, Result<Vec<(String, i64)>>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(state
                .revoked
                .range((since_ms, String::new())..)
                .map(|(at, id)| (id.clone(), *at))
                .collect())
        })
    }

    fn set_paused<'a>(&'a self, queue: &'a str, paused: bool) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut state = self.lock();
            Ok(if paused {
                state.paused.insert(queue.to_owned())
            } else {
                state.paused.remove(queue)
            })
        })
    }

    fn paused_queues(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move { Ok(self.lock().paused.iter().cloned().collect()) })
    }

    fn promote_due<'a>(
        &'a self,
        queues: &'a [String],
        now_ms: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Promoted>> {
        Box::pin(async move {
            let promoted = {
                let mut state = self.lock();
                let mut moved = 0;
                let mut next_due_ms: Option<i64> = None;
                for queue in queues {
                    let mut due = Vec::new();
                    if let Some(q) = state.queues.get_mut(queue.as_str()) {
                        while moved + due.len() < limit {
                            match q.delayed.first_key_value() {
                                Some((&(at, _), _)) if at <= now_ms => {
                                    due.push(q.delayed.pop_first().expect("checked").1);
                                }
                                _ => break,
                            }
                        }
                    }
                    moved += due.len();
                    for payload in due {
                        state.append(queue, payload);
                    }
                    let next = state
                        .queues
                        .get(queue.as_str())
                        .and_then(|q| q.delayed.first_key_value())
                        .map(|(&(at, _), _)| at);
                    next_due_ms = match (next_due_ms, next) {
                        (Some(earliest), Some(next)) => Some(earliest.min(next)),
                        (earliest, next) => earliest.or(next),
                    };
                }
                Promoted { moved, next_due_ms }
            };
            if promoted.moved > 0 {
                self.arrivals.notify_waiters();
            }
            Ok(promoted)
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
            let deadline = tokio::time::Instant::now() + block;
            loop {
                // Register interest before looking, so an arrival between the look and the wait
                // is not missed.
                let notified = self.arrivals.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let taken = self.take_ready(consumer, queues, max);
                if !taken.is_empty() {
                    return Ok(taken);
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Ok(Vec::new());
                }
            }
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
            let mut state = self.lock();
            let now = Instant::now();
            let mut out = Vec::new();
            if let Some(q) = state.queues.get_mut(queue) {
                q.consumers.insert(consumer.to_owned(), now);
                let queue_name: Arc<str> = Arc::from(queue);
                let mut expired: Vec<&String> = q
                    .pending
                    .iter()
                    .filter(|(id, p)| {
                        // Never an entry it holds, whoever owns it now: taking it back
                        // would make a second copy in this worker.
                        !holds.contains(id) && now.duration_since(p.last_delivery) >= min_idle
                    })
                    .map(|(id, _)| id)
                    .collect();
                expired.sort();
                let expired: Vec<String> = expired.into_iter().take(max).cloned().collect();
                for entry_id in expired {
                    let pending = q.pending.get_mut(&entry_id).expect("listed above");
                    pending.consumer = consumer.to_owned();
                    pending.last_delivery = now;
                    pending.deliveries += 1;
                    out.push(Delivery {
                        queue: queue_name.clone(),
                        entry_id,
                        payload: pending.payload.clone(),
                        deliveries: pending.deliveries,
                    });
                }
            }
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
            let mut state = self.lock();
            let now = Instant::now();
            let mut renewed = 0;
            if let Some(q) = state.queues.get_mut(queue) {
                q.consumers.insert(consumer.to_owned(), now);
                for id in entry_ids {
                    if let Some(p) = q.pending.get_mut(id)
                        && p.consumer == consumer
                    {
                        p.last_delivery = now;
                        renewed += 1;
                    }
                }
            }
            Ok(renewed)
        })
    }

    fn apply<'a>(
        &'a self,
        consumer: &'a str,
        // In process, no reply is ever lost.
        _batch: u64,
        writes: &'a [Write],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Applied>> {
        Box::pin(async move {
            let mut finished = Vec::new();
            let mut applied = Applied::default();
            {
                let mut state = self.lock();
                let now = Instant::now();
                let expires = now + ttl;
                // Redis expires keys by itself; here expired records go once a second, so a
                // long-running process does not keep every record it ever wrote.
                if state
                    .last_sweep
                    .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
                {
                    state.records.retain(|_, (_, until)| *until > now);
                    state.last_sweep = Some(now);
                }
                let held = |state: &State, queue: &str, entry_id: &str, deliveries: u64| {
                    state
                        .queues
                        .get(queue)
                        .and_then(|q| q.pending.get(entry_id))
                        .is_some_and(|p| p.consumer == consumer && p.deliveries == deliveries)
                };
                let mut dead_added = false;
                for (index, write) in writes.iter().enumerate() {
                    match write {
                        Write::Record {
                            queue,
                            entry_id,
                            deliveries,
                            id,
                            record,
                        } => {
                            if !held(&state, queue, entry_id, *deliveries) {
                                applied.fenced.push(index);
                                continue;
                            }
                            state
                                .records
                                .insert(id.to_string(), (record.clone(), expires));
                        }
                        Write::Settle(settlement) => {
                            if !held(
                                &state,
                                &settlement.queue,
                                &settlement.entry_id,
                                settlement.deliveries,
                            ) {
                                applied.fenced.push(index);
                                continue;
                            }
                            if let Some((id, record)) = &settlement.record {
                                state
                                    .records
                                    .insert(id.to_string(), (record.clone(), expires));
                            }
                            if let Some(retry) = &settlement.retry {
                                state.next_delayed += 1;
                                let seq = state.next_delayed;
                                state
                                    .queues
                                    .entry(retry.queue.clone())
                                    .or_default()
                                    .delayed
                                    .insert(
                                        (retry.due_ms.unwrap_or(0), seq),
                                        retry.payload.clone(),
                                    );
                            }
                            if let Some(dead) = &settlement.dead {
                                state.next_entry += 1;
                                let entry = format!("{}-0", state.next_entry);
                                // In process, a letter takes what its bytes and text take.
                                let bytes = footprint(
                                    dead.payload.len()
                                        + dead.error.len()
                                        + dead.queue_and_ids_len(),
                                );
                                let job = dead.stored(&settlement.queue, entry.clone(), bytes);
                                state.dead.push_back(job);
                                state.dead_added += 1;
                                applied.dead_entries.push((entry, bytes));
                                dead_added = true;
                            }
                            if let Some(q) = state.queues.get_mut(&*settlement.queue) {
                                q.pending.remove(&settlement.entry_id);
                            }
                            if let Some((key, id)) = settlement.unlock.as_deref() {
                                state.release_unique(key, id.as_str());
                            }
                            finished.extend(settlement.finished.clone());
                        }
                    }
                }
                if dead_added {
                    let limits = self.dead_letter_limits;
                    while state.dead.len() > 1
                        && (state.dead.len() as u64 > limits.max_len
                            || state.dead.iter().map(|job| job.bytes).sum::<u64>()
                                > limits.max_bytes)
                    {
                        state.dead.pop_front();
                        applied.dead_trimmed += 1;
                    }
                    state.dead_trimmed += applied.dead_trimmed;
                }
            }
            for id in finished {
                // No receiver is not an error: nobody waits.
                let _ = self.finished.0.send(Arc::from(id.as_str()));
            }
            Ok(applied)
        })
    }

    fn load_record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let mut state = self.lock();
            match state.records.get(id) {
                Some((_, expires)) if *expires <= Instant::now() => {
                    state.records.remove(id);
                    Ok(None)
                }
                Some((record, _)) => Ok(Some(record.clone())),
                None => Ok(None),
            }
        })
    }

    fn finished_events(&self) -> BoxFuture<'_, Result<broadcast::Receiver<Arc<str>>>> {
        Box::pin(async move { Ok(self.finished.0.subscribe()) })
    }

    fn retire_consumer<'a>(
        &'a self,
        consumer: &'a str,
        queues: &'a [String],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock();
            for queue in queues {
                if let Some(q) = state.queues.get_mut(queue)
                    && q.owns_nothing(consumer)
                {
                    q.consumers.remove(consumer);
                }
            }
            Ok(())
        })
    }

    fn beat_state<'a>(&'a self, schedule: &'a str) -> BoxFuture<'a, Result<BeatState>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .schedules
                .get(schedule)
                .cloned()
                .unwrap_or_default())
        })
    }

    fn beat_register<'a>(
        &'a self,
        schedule: &'a str,
        last_ms: i64,
        definition: &'a BeatDefinition,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock();
            let stored = state.schedules.entry(schedule.to_owned()).or_default();
            stored.last_ms.get_or_insert(last_ms);
            stored.definition = Some(definition.clone());
            Ok(())
        })
    }

    fn beat_advance<'a>(&'a self, advance: &'a BeatAdvance) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            {
                let mut state = self.lock();
                let current = state
                    .schedules
                    .get(&advance.schedule)
                    .and_then(|stored| stored.last_ms);
                if current != Some(advance.expected_ms) {
                    return Ok(false);
                }
                let entries: Vec<String> = advance
                    .payloads
                    .iter()
                    .map(|payload| state.append(&advance.queue, payload.clone()))
                    .collect();
                let stored = state
                    .schedules
                    .get_mut(&advance.schedule)
                    .expect("compared above");
                stored.last_ms = Some(advance.through_ms);
                if let Some(slot) = advance.skipped_slot_ms {
                    stored.overlap_skips += 1;
                    stored.skipped_slot_ms = Some(slot);
                }
                if let Some(fired) = &advance.fired {
                    stored.last_job = Some(fired.job.clone());
                    stored.fired = Some(fired.clone());
                }
                if let Some(entry) = entries.last() {
                    stored.entry = Some(entry.clone());
                }
            }
            if !advance.payloads.is_empty() {
                self.arrivals.notify_waiters();
            }
            Ok(true)
        })
    }

    fn beat_set_paused<'a>(
        &'a self,
        schedule: &'a str,
        paused: bool,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            Ok(match self.lock().schedules.get_mut(schedule) {
                Some(stored) => {
                    stored.paused = paused;
                    true
                }
                None => false,
            })
        })
    }

    fn schedule_runs<'a>(
        &'a self,
        schedule: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .schedule_runs
                .get(schedule)
                .map(|runs| runs.iter().take(limit).cloned().collect())
                .unwrap_or_default())
        })
    }

    fn beat_schedules(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let mut names: Vec<String> = self.lock().schedules.keys().cloned().collect();
            names.sort();
            Ok(names)
        })
    }

    fn server_time_ms(&self) -> BoxFuture<'_, Result<i64>> {
        // In process, the broker's clock is this host's.
        Box::pin(async { Ok(crate::envelope::now_ms()) })
    }

    fn beat_lease<'a>(&'a self, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut state = self.lock();
            let now = Instant::now();
            let held_by = match &state.beat_leader {
                Some((name, expires)) if *expires > now => Some(name.as_str()),
                _ => None,
            };
            if held_by.is_some_and(|name| name != holder) {
                return Ok(false);
            }
            if ttl.is_zero() {
                state.beat_leader = None;
                return Ok(false);
            }
            state.beat_leader = Some((holder.to_owned(), now + ttl));
            Ok(true)
        })
    }

    fn queued<'a>(&'a self, lane: &'a str, count: usize) -> BoxFuture<'a, Result<Vec<QueuedJob>>> {
        Box::pin(async move {
            let state = self.lock();
            let Some(queue) = state.queues.get(lane) else {
                return Ok(Vec::new());
            };
            let job = |payload: &Vec<u8>, due_ms| QueuedJob {
                lane: lane.to_owned(),
                due_ms,
                payload: payload.clone(),
            };
            // As a stream holds them: taken ones (older) before the waiting ones, by id.
            let mut taken: Vec<(u64, &Vec<u8>)> = queue
                .pending
                .iter()
                .map(|(id, pending)| (entry_number(id), &pending.payload))
                .collect();
            taken.sort_by_key(|(number, _)| *number);
            let stream = taken
                .into_iter()
                .map(|(_, payload)| payload)
                .chain(queue.ready.iter().map(|(_, payload, _)| payload))
                .take(count.max(1))
                .map(|payload| job(payload, None));
            let delayed = queue
                .delayed
                .iter()
                .take(count.max(1))
                .map(|((due, _), payload)| job(payload, Some(*due)));
            Ok(stream.chain(delayed).collect())
        })
    }

    fn in_stream<'a>(&'a self, queue: &'a str, entry_id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(state.queues.get(queue).is_some_and(|q| {
                q.pending.contains_key(entry_id) || q.ready.iter().any(|(id, _, _)| id == entry_id)
            }))
        })
    }

    fn dead_page<'a>(
        &'a self,
        after: Option<&'a str>,
        until: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadJob>>> {
        Box::pin(async move {
            let state = self.lock();
            // Entry ids are `<n>-0` with n increasing: compare by n.
            let after = after.map_or(0, entry_number);
            let until = until.map_or(u64::MAX, entry_number);
            Ok(state
                .dead
                .iter()
                .filter(|job| (after + 1..=until).contains(&entry_number(&job.entry_id)))
                .take(count.max(1))
                .cloned()
                .collect())
        })
    }

    fn dead_page_back<'a>(
        &'a self,
        before: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadJob>>> {
        Box::pin(async move {
            let state = self.lock();
            let before = before.map_or(u64::MAX, entry_number);
            Ok(state
                .dead
                .iter()
                .rev()
                .filter(|job| entry_number(&job.entry_id) < before)
                .take(count.max(1))
                .cloned()
                .collect())
        })
    }

    fn dead_newest(&self) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async move { Ok(self.lock().dead.back().map(|job| job.entry_id.clone())) })
    }

    fn dead_get<'a>(&'a self, entry_id: &'a str) -> BoxFuture<'a, Result<Option<DeadJob>>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(state
                .dead
                .iter()
                .find(|job| job.entry_id == entry_id)
                .cloned())
        })
    }

    fn dead_stats(&self) -> BoxFuture<'_, Result<DeadLetterStats>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(DeadLetterStats {
                len: state.dead.len() as u64,
                trimmed: state.dead_trimmed,
                added: state.dead_added,
                bytes: state.dead.iter().map(|job| job.bytes).sum(),
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
            {
                let mut state = self.lock();
                let Some(position) = state.dead.iter().position(|job| job.entry_id == entry_id)
                else {
                    return Ok(false);
                };
                state.dead.remove(position);
                state.append(queue, payload);
                state.records.remove(job_id);
            }
            self.arrivals.notify_waiters();
            Ok(true)
        })
    }

    fn dead_purge(&self, before_ms: Option<i64>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut state = self.lock();
            let before = state.dead.len();
            match before_ms {
                None => {
                    state.dead.clear();
                    state.dead_added = 0;
                }
                Some(before_ms) => state.dead.retain(|job| job.at_ms >= before_ms),
            }
            Ok((before - state.dead.len()) as u64)
        })
    }

    fn dead_remove<'a>(&'a self, entry_ids: &'a [String]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut state = self.lock();
            let before = state.dead.len();
            let gone: std::collections::HashSet<&str> =
                entry_ids.iter().map(String::as_str).collect();
            state
                .dead
                .retain(|job| !gone.contains(job.entry_id.as_str()));
            Ok((before - state.dead.len()) as u64)
        })
    }

    fn dead_groups(&self) -> BoxFuture<'_, Result<Vec<FailureGroup>>> {
        Box::pin(async move {
            let state = self.lock();
            // Grouped as they are read: in memory a walk is cheap, and always true.
            let mut groups: HashMap<&str, FailureGroup> = HashMap::new();
            for job in &state.dead {
                let group = groups.entry(job.group.as_str()).or_insert_with(|| {
                    FailureGroup::new(
                        job.group.clone(),
                        job.task.clone(),
                        job.reason,
                        job.error.clone(),
                        0,
                        job.at_ms,
                        job.at_ms,
                        None,
                    )
                });
                group.count += 1;
                group.last_ms = job.at_ms;
                group.sample_error.clone_from(&job.error);
                group.sample_entry_id = Some(job.entry_id.clone());
            }
            let mut groups: Vec<FailureGroup> = groups.into_values().collect();
            FailureGroup::sort(&mut groups);
            Ok(groups)
        })
    }

    fn audit_append<'a>(&'a self, entry: &'a AuditEntry) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let mut state = self.lock();
            state.next_audit += 1;
            let mut stored = entry.clone();
            stored.id = format!("{}-0", state.next_audit);
            state.audit.push_back(stored.clone());
            while state.audit.len() > AUDIT_LEN {
                state.audit.pop_front();
            }
            Ok(stored.id)
        })
    }

    fn audit_page<'a>(
        &'a self,
        before: Option<&'a str>,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<AuditEntry>>> {
        Box::pin(async move {
            let state = self.lock();
            let before = before.map_or(u64::MAX, entry_number);
            Ok(state
                .audit
                .iter()
                .rev()
                .filter(|entry| entry_number(&entry.id) < before)
                .take(count.max(1))
                .cloned()
                .collect())
        })
    }

    fn prune_consumers<'a>(
        &'a self,
        queue: &'a str,
        me: &'a str,
        idle: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let mut state = self.lock();
            let now = Instant::now();
            let Some(q) = state.queues.get_mut(queue) else {
                return Ok(Vec::new());
            };
            let mut removed: Vec<String> = q
                .consumers
                .iter()
                .filter(|(name, seen)| {
                    name.as_str() != me
                        && now.duration_since(**seen) >= idle
                        && q.owns_nothing(name)
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in &removed {
                q.consumers.remove(name);
            }
            removed.sort();
            Ok(removed)
        })
    }

    fn report_worker<'a>(&'a self, report: &'a WorkerReport) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock();
            match &report.info {
                Some(info) => {
                    state.workers.insert(report.consumer.clone(), info.clone());
                }
                None => {
                    state.workers.remove(&report.consumer);
                }
            }
            if !report.counts.is_empty() {
                for resolution in Resolution::ALL {
                    let index = resolution.bucket_of(report.at_ms);
                    let buckets = state.metrics.entry(resolution).or_default();
                    let bucket = buckets.entry(index).or_default();
                    for (task, tally, count) in &report.counts {
                        bucket
                            .entry(task.clone())
                            .or_insert_with(|| TaskCounts::of(task.clone()))
                            .add(*tally, *count);
                    }
                    // Redis expires each bucket after what its resolution keeps; here the
                    // buckets that much older than the newest one go.
                    let oldest =
                        resolution.bucket_of(report.at_ms - resolution.kept().as_millis() as i64);
                    buckets.retain(|&i, _| i >= oldest);
                }
                for (task, tally, count) in &report.counts {
                    state
                        .totals
                        .entry(task.clone())
                        .or_insert_with(|| TaskCounts::of(task.clone()))
                        .add(*tally, *count);
                }
            }
            push_newest(&mut state.recent, &report.executions, RECENT_EXECUTIONS);
            push_newest(
                &mut state.schedule_runs,
                &report.schedule_runs,
                SCHEDULE_RUNS,
            );
            Ok(())
        })
    }

    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerEntry>>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .workers
                .iter()
                .map(|(name, info)| (name.clone(), info.clone()))
                .collect())
        })
    }

    fn forget_workers<'a>(&'a self, names: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock();
            for name in names {
                state.workers.remove(name);
            }
            Ok(())
        })
    }

    fn queue_names(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move { Ok(self.lock().prepared.iter().cloned().collect()) })
    }

    fn queue_stats<'a>(&'a self, queues: &'a [String]) -> BoxFuture<'a, Result<Vec<QueueStats>>> {
        Box::pin(async move {
            let state = self.lock();
            Ok(queues
                .iter()
                .map(|name| {
                    let q = state.queues.get(name);
                    let count = |n: fn(&Queue) -> usize| q.map_or(0, n) as u64;
                    QueueStats {
                        name: name.clone(),
                        ready: count(|q| q.ready.len()),
                        oldest_age_ms: q
                            .and_then(|q| q.ready.front())
                            .map(|(_, _, since)| (crate::envelope::now_ms() - since).max(0) as u64),
                        pending: count(|q| q.pending.len()),
                        delayed: count(|q| q.delayed.len()),
                        consumers: count(|q| q.consumers.len()),
                        paused: false,
                    }
                })
                .collect())
        })
    }

    fn metrics(
        &self,
        resolution: Resolution,
        from: i64,
        to: i64,
    ) -> BoxFuture<'_, Result<Vec<MetricsBucket>>> {
        Box::pin(async move {
            let state = self.lock();
            let Some(buckets) = state.metrics.get(&resolution) else {
                return Ok(Vec::new());
            };
            Ok(buckets
                .range(from..=to)
                .map(|(&index, tasks)| (index, tasks.values().cloned().collect()))
                .collect())
        })
    }

    fn metric_totals(&self) -> BoxFuture<'_, Result<Vec<TaskCounts>>> {
        Box::pin(async move { Ok(self.lock().totals.values().cloned().collect()) })
    }

    fn recent_executions<'a>(
        &'a self,
        task: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Vec<u8>>>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .recent
                .get(task)
                .map(|recent| recent.iter().take(limit).cloned().collect())
                .unwrap_or_default())
        })
    }
}

/// Push each named list's entries (oldest first) at the head of the list of that name, which
/// keeps its newest `keep`, as `LPUSH` + `LTRIM` do.
fn push_newest(
    lists: &mut HashMap<String, VecDeque<Vec<u8>>>,
    added: &[(String, Vec<Vec<u8>>)],
    keep: usize,
) {
    for (name, entries) in added {
        let list = lists.entry(name.clone()).or_default();
        for entry in entries {
            list.push_front(entry.clone());
        }
        list.truncate(keep);
    }
}

/// The number `n` of an in-process entry id `<n>-0`.
fn entry_number(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
