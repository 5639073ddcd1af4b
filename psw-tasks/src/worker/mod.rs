//! The worker: fetch -> run -> settle, with leases renewed while jobs run, expired leases
//! reclaimed, delayed jobs promoted, and a graceful shutdown.
//!
//! Architecture invariant: the worker sees the `Broker` trait only, never Redis types.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::backend::{JobRecord, Progress};
use crate::broker::{BoxFuture, Broker, Delivery, Settlement, Write};
use crate::dead::{DeadHook, DeadJob};
use crate::envelope::now_ms;
use crate::registry::Registry;
use crate::task::SharedState;
use crate::{Client, Result};

mod heartbeat;
mod job;
mod writer;

use writer::WriteRequest;

/// Where a running task's progress reports go.
pub(crate) trait ProgressSink: Send + Sync {
    fn report(&self, progress: Progress) -> BoxFuture<'_, Result<()>>;
}

/// How long one fetch blocks when the queues are empty; also bounds how late a shutdown
/// request is noticed.
const FETCH_BLOCK: Duration = Duration::from_millis(500);
/// How long a stopping worker waits for its last outcomes to be stored.
const WRITER_FLUSH: Duration = Duration::from_secs(10);
/// How long each last call to Redis at shutdown (leaving the groups, the last heartbeat) may
/// take: with Redis away they fail anyway, and a stopping worker must not wait out the
/// client's reconnection backoff for each.
const FAREWELL: Duration = Duration::from_secs(3);
/// Most delayed jobs moved per promotion pass.
const PROMOTE_BATCH: usize = 1000;
/// Longest sleep of the promoter: a job delayed by another process is noticed this late at most.
const PROMOTE_IDLE: Duration = Duration::from_millis(100);

/// Counters of one worker, shared with whoever holds a copy.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    /// Outcomes per task, indexed by the task's position in the worker's registry: the hot
    /// path counts with one relaxed add, no lock, no lookup by name.
    tasks: Box<[TaskTally]>,
    /// Jobs failed for good.
    failed: Counter,
    panicked: Counter,
    dead_lettered: Counter,
    reclaimed: Counter,
    fenced: Counter,
}

impl Counters {
    fn for_tasks(tasks: usize) -> Self {
        Counters {
            tasks: (0..tasks).map(|_| TaskTally::default()).collect(),
            ..Counters::default()
        }
    }

    fn sum(&self, outcome: fn(&TaskTally) -> &Counter) -> u64 {
        self.tasks.iter().map(|tally| outcome(tally).get()).sum()
    }
}

/// The outcomes of one task's attempts in this worker since it started (`stats::TaskCounts`
/// says what each means). A cache line of its own, so that jobs of different tasks finishing
/// on different threads do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct TaskTally {
    succeeded: Counter,
    failed: Counter,
    retried: Counter,
    dead_lettered: Counter,
}

impl TaskTally {
    /// Every count, in the order of `heartbeat::OUTCOMES`.
    fn snapshot(&self) -> [u64; 4] {
        [
            self.succeeded.get(),
            self.failed.get(),
            self.retried.get(),
            self.dead_lettered.get(),
        ]
    }
}

#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl WorkerStats {
    /// Jobs that finished with a result.
    pub fn succeeded(&self) -> u64 {
        self.0.sum(|tally| &tally.succeeded)
    }
    /// Jobs that failed for good.
    pub fn failed(&self) -> u64 {
        self.0.failed.get()
    }
    /// Failed attempts that were scheduled again.
    pub fn retried(&self) -> u64 {
        self.0.sum(|tally| &tally.retried)
    }
    /// Attempts that panicked (each also counts as retried or failed).
    pub fn panicked(&self) -> u64 {
        self.0.panicked.get()
    }
    /// Deliveries that went to the dead-letter stream: jobs failed for good, and deliveries
    /// that could not be run at all.
    pub fn dead_lettered(&self) -> u64 {
        self.0.dead_lettered.get()
    }
    /// Deliveries taken over from workers whose lease ran out.
    pub fn reclaimed(&self) -> u64 {
        self.0.reclaimed.get()
    }
    /// Writes refused because this worker had lost the job to another (its lease ran out
    /// while it was paused): the other worker's outcome stands.
    pub fn fenced(&self) -> u64 {
        self.0.fenced.get()
    }
}

/// Configures a [`Worker`].
#[derive(Debug)]
pub struct WorkerBuilder {
    client: Client,
    concurrency: usize,
    prefetch: Option<usize>,
    on_dead: Option<DeadHook>,
    queues: Option<Vec<String>>,
    lease: Duration,
    shutdown_grace: Duration,
    states: SharedState,
}

impl WorkerBuilder {
    /// Jobs run at once (default from `PSW_WORKER_CONCURRENCY`, else 10).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Deliveries fetched beyond the concurrency, to run next (default: as many as the
    /// concurrency; `PSW_WORKER_PREFETCH`). More hides the fetch round trip behind running jobs;
    /// 0 fetches only for free slots, best for long jobs shared among many workers.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Run `hook` for each job this worker dead-letters, once the dead letter is stored (the
    /// app sends its alerts from here). It runs on its own task: a slow hook delays nothing.
    pub fn on_dead<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(DeadJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_dead = Some(crate::dead::hook(hook));
        self
    }

    /// Share `value` with every job of this worker: tasks read it with
    /// [`crate::TaskContext::state`]. One value per type; a second of the same type replaces
    /// the first. Wrap it in a type of your own to share two of one type.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Queues to consume (default: every queue of the registered tasks).
    pub fn queues<I, Q>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        self.queues = Some(queues.into_iter().map(Into::into).collect());
        self
    }

    /// How long a job stays claimed without a heartbeat (default 30 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// How long running jobs may take to finish once shutdown starts (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Check the registry (duplicate names are an error here) and make the worker.
    pub fn build(self) -> Result<Worker> {
        let registry = Registry::from_linked()?;
        let queues = match self.queues {
            Some(queues) => queues,
            None => {
                let queues = registry.queues();
                if queues.is_empty() {
                    vec!["default".to_owned()]
                } else {
                    queues
                }
            }
        };
        for queue in &queues {
            crate::broker::keys::validate_name("queue", queue)?;
        }
        if registry.iter().next().is_none() {
            tracing::warn!(
                "no #[task] is linked into this binary: every job will be dead-lettered as unknown"
            );
        }
        Ok(Worker {
            client: self.client,
            queues,
            concurrency: self.concurrency,
            prefetch: self.prefetch.unwrap_or(self.concurrency),
            on_dead: self.on_dead,
            states: Arc::new(self.states),
            lease: self.lease,
            shutdown_grace: self.shutdown_grace,
            consumer: consumer_name(),
            stats: WorkerStats(Arc::new(Counters::for_tasks(registry.len()))),
            registry,
        })
    }
}

/// A unique name per process: a restarted worker must not inherit a dead one's entries as if
/// it were still running them.
fn consumer_name() -> String {
    process_name("worker")
}

/// `<host>-<pid>-<random>`: unique per process (a restart is someone new), and the pid tells an
/// operator which process it is. `fallback` stands in for an unknown host name.
pub(crate) fn process_name(fallback: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| fallback.to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Runs jobs from the queues until shut down.
#[derive(Debug)]
pub struct Worker {
    client: Client,
    registry: Registry,
    queues: Vec<String>,
    concurrency: usize,
    prefetch: usize,
    on_dead: Option<DeadHook>,
    states: Arc<SharedState>,
    lease: Duration,
    shutdown_grace: Duration,
    consumer: String,
    stats: WorkerStats,
}

pub(crate) struct Shared {
    broker: Arc<dyn Broker>,
    registry: Registry,
    writes: mpsc::Sender<WriteRequest>,
    in_flight: Arc<InFlight>,
    stats: Arc<Counters>,
    max_deliveries: u64,
    max_message_size: usize,
    unknown_task_delay: Duration,
    states: Arc<SharedState>,
}

impl Shared {
    async fn send(&self, write: Write) {
        let request = WriteRequest { write, done: None };
        if self.writes.send(request).await.is_err() {
            tracing::error!("the writer is gone; the job stays pending and runs again");
        }
    }

    async fn write_record(&self, delivery: &Delivery, record: &JobRecord) {
        match Write::record_of(delivery, record) {
            Ok(write) => self.send(write).await,
            Err(err) => {
                tracing::error!(id = %record.id, error = %err, "could not encode a job record")
            }
        }
    }

    /// Attach the record (and the finish announcement) to a settlement.
    fn finish(&self, mut settlement: Settlement, record: &JobRecord, terminal: bool) -> Settlement {
        match record.encode() {
            Ok(bytes) => {
                let id: crate::JobId = record.id.clone().into();
                settlement.finished = terminal.then(|| id.clone());
                settlement.record = Some((id, bytes));
            }
            Err(err) => {
                tracing::error!(id = %record.id, error = %err, "could not encode a job record")
            }
        }
        settlement
    }

    async fn settle(&self, settlement: Settlement) {
        // Still held until the writer has stored it: see `InFlight`.
        self.send(Write::Settle(settlement)).await;
    }
}

/// The deliveries this worker holds, per queue: entry id -> delivery count, from the fetch
/// until the writer has stored their settlement. Their leases are renewed; every other entry
/// pending under this consumer is an orphan (a read whose reply was lost) that the reclaim
/// takes back. The count tells a stale copy of an entry (one this worker lost and took back)
/// from the live one.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<Arc<str>, HashMap<String, u64>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, HashMap<String, u64>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hold a fetched batch (one lock for the batch: the writer releases on another thread).
    fn track(&self, deliveries: &[Delivery]) {
        let mut held = self.lock();
        for delivery in deliveries {
            let entries = match held.get_mut(&delivery.queue) {
                Some(entries) => entries,
                None => held.entry(delivery.queue.clone()).or_default(),
            };
            entries.insert(delivery.entry_id.clone(), delivery.deliveries);
        }
    }

    /// Forget deliveries once their settlement is stored (or refused): (queue, entry id,
    /// delivery count) each.
    pub(crate) fn release<'d>(
        &self,
        settled: impl IntoIterator<Item = (&'d Arc<str>, &'d str, u64)>,
    ) {
        let mut held = self.lock();
        for (queue, entry_id, deliveries) in settled {
            if let Some(entries) = held.get_mut(queue)
                && entries.get(entry_id) == Some(&deliveries)
            {
                entries.remove(entry_id);
            }
        }
    }

    fn snapshot(&self) -> Vec<(Arc<str>, Vec<String>)> {
        self.lock()
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(queue, ids)| (queue.clone(), ids.keys().cloned().collect()))
            .collect()
    }

    fn ids(&self, queue: &str) -> Vec<String> {
        self.lock()
            .get(queue)
            .map(|ids| ids.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl Worker {
    /// Start configuring a worker that uses `client`'s broker and settings.
    pub fn builder(client: &Client) -> WorkerBuilder {
        let config = client.config();
        WorkerBuilder {
            client: client.clone(),
            concurrency: config.concurrency.max(1),
            prefetch: config.prefetch,
            on_dead: None,
            states: SharedState::default(),
            queues: config.queues.clone(),
            lease: config.lease,
            shutdown_grace: config.shutdown_grace,
        }
    }

    /// This process's consumer name in the queues' consumer groups.
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// The queues this worker consumes.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Live counters of this worker.
    pub fn stats(&self) -> WorkerStats {
        self.stats.clone()
    }

    /// Run until SIGINT or SIGTERM, then shut down gracefully.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Run until `shutdown` completes, then stop fetching, give running jobs the grace period,
    /// store their outcomes and return. Jobs still running after the grace period are dropped
    /// unacknowledged: they run again elsewhere once their lease expires.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let stop_fetching = CancellationToken::new();
        // The worker runs as a task of the runtime, not on the caller's thread: under
        // `#[tokio::main]` that thread is not one of the runtime's workers, and every job it
        // handed to a runner would cross threads (measured: a quarter of the drain rate).
        let mut work = AbortOnDropHandle::new(tokio::spawn(self.work(stop_fetching.clone())));
        tokio::select! {
            outcome = &mut work => return joined(outcome),
            () = shutdown => stop_fetching.cancel(),
        }
        joined(work.await)
    }

    async fn work(self, shutdown: CancellationToken) -> Result<()> {
        let broker = self.client.broker().clone();
        let stop = CancellationToken::new();
        let abandon = CancellationToken::new();
        let started_ms = now_ms();

        // Redis may be unreachable at start: wait for it rather than exit.
        let mut delay = Duration::from_millis(100);
        loop {
            match broker.prepare(&self.queues).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(error = %err, "cannot prepare the queues; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }

        let (writes, requests) = mpsc::channel(self.concurrency.max(64) * 2);
        let in_flight = Arc::new(InFlight::default());
        let writer = tokio::spawn(writer::run(
            writer::Writer {
                broker: broker.clone(),
                consumer: self.consumer.clone(),
                ttl: self.client.config().result_ttl,
                stats: self.stats.0.clone(),
                on_dead: self.on_dead.clone(),
                in_flight: in_flight.clone(),
            },
            requests,
            abandon.clone(),
        ));
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            registry: self.registry.clone(),
            writes,
            in_flight,
            stats: self.stats.0.clone(),
            max_deliveries: self.client.config().max_deliveries,
            max_message_size: self.client.config().max_message_size,
            unknown_task_delay: self.client.config().unknown_task_delay,
            states: self.states.clone(),
        });
        // A claim is a delivery this worker holds, running or waiting to run: claims beyond the
        // concurrency let the next batch be fetched while the current one runs.
        let claims = Arc::new(Semaphore::new(self.concurrency + self.prefetch));
        let busy = Arc::new(AtomicUsize::new(0));
        // Fetched deliveries wait here for the first free runner. Runners are long-lived: a
        // job costs a channel hand-over, not a task spawned and joined.
        let (dispatch, ready) = flume::unbounded::<Fetched>();
        let stopping = CancellationToken::new();
        let mut runners = JoinSet::new();
        for _ in 0..self.concurrency {
            runners.spawn(runner(
                shared.clone(),
                ready.clone(),
                stopping.clone(),
                busy.clone(),
            ));
        }
        let mut helpers = JoinSet::new();
        for queue in &self.queues {
            helpers.spawn(promote(broker.clone(), queue.clone(), stop.clone()));
        }
        helpers.spawn(renew(
            shared.clone(),
            self.consumer.clone(),
            self.lease,
            stop.clone(),
        ));
        // Beats on until the last outcomes are stored: a worker draining its jobs is alive.
        let quiet = CancellationToken::new();
        let heartbeats = tokio::spawn(heartbeat::run(
            heartbeat::Heartbeats {
                broker: broker.clone(),
                consumer: self.consumer.clone(),
                queues: self.queues.clone(),
                concurrency: self.concurrency,
                started_ms,
                interval: self.lease / 3,
                tasks: self.registry.iter().map(|task| task.name()).collect(),
                counters: self.stats.0.clone(),
                busy: busy.clone(),
                stored: vec![[0; 4]; self.registry.len()],
            },
            quiet.clone(),
        ));

        tracing::info!(consumer = %self.consumer, queues = ?self.queues, concurrency = self.concurrency, "worker started");
        let fetch_at = u32::try_from((self.prefetch / 2).max(1)).unwrap_or(u32::MAX);
        let mut next_reclaim = tokio::time::Instant::now();
        let mut fetch_delay = Duration::from_millis(100);
        loop {
            // Fetch once half the prefetch is free, not at each freed claim: until then the
            // runners have at least that many deliveries waiting, and a fetch per freed claim
            // would cost a round trip per job under load.
            let mut first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = claims.clone().acquire_many_owned(fetch_at) => permit.expect("never closed"),
            };
            let free = claims.available_permits() + first.num_permits();
            let mut deliveries = Vec::new();
            if tokio::time::Instant::now() >= next_reclaim {
                next_reclaim = tokio::time::Instant::now() + self.lease / 2;
                for queue in &self.queues {
                    match broker
                        .reclaim(
                            &self.consumer,
                            queue,
                            self.lease,
                            free - deliveries.len(),
                            &shared.in_flight.ids(queue),
                        )
                        .await
                    {
                        Ok(reclaimed) => {
                            if !reclaimed.is_empty() {
                                tracing::warn!(
                                    queue,
                                    count = reclaimed.len(),
                                    "took over jobs whose lease ran out (a worker that stopped renewing it, or a read whose reply was lost)"
                                );
                                shared.stats.reclaimed.add(reclaimed.len());
                            }
                            deliveries.extend(reclaimed);
                        }
                        Err(err) => {
                            tracing::warn!(queue, error = %err, "reclaiming expired leases failed")
                        }
                    }
                    // Workers that died leave their consumer behind; once it owns nothing and
                    // has been silent for a few leases, it is only clutter.
                    match broker
                        .prune_consumers(queue, &self.consumer, self.lease * 4)
                        .await
                    {
                        Ok(removed) if !removed.is_empty() => {
                            tracing::info!(queue, consumers = ?removed, "removed consumers of workers that are gone");
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(queue, error = %err, "pruning consumers failed"),
                    }
                    if deliveries.len() >= free {
                        break;
                    }
                }
            }
            if deliveries.is_empty() {
                // Not raced against the shutdown signal: dropping a read that Redis already
                // answered would leave its entries pending until their lease runs out.
                match broker
                    .fetch(&self.consumer, &self.queues, free, FETCH_BLOCK)
                    .await
                {
                    Ok(fetched) => {
                        deliveries = fetched;
                        fetch_delay = Duration::from_millis(100);
                    }
                    Err(err) => {
                        let message = crate::error::chain(&err);
                        if message.contains("NOGROUP") {
                            tracing::error!(
                                "the consumer groups are gone (Redis restarted empty?); creating them again from the start of each stream"
                            );
                            let _ = broker.prepare(&self.queues).await;
                        } else {
                            tracing::error!(error = %message, "fetching jobs failed; retrying");
                        }
                        drop(first);
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(fetch_delay) => {}
                        }
                        fetch_delay = (fetch_delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            shared.in_flight.track(&deliveries);
            for delivery in deliveries {
                // A read of several queues can return more than the free claims (COUNT is per
                // stream): the extra deliveries are tracked and queued all the same, never
                // left waiting unrenewed, and the next fetch waits for claims to free up.
                let claim = first
                    .split(1)
                    .or_else(|| claims.clone().try_acquire_owned().ok());
                // The runners hold a receiver until they stop, after this loop.
                let _ = dispatch.send(Fetched { delivery, claim });
            }
        }
        stopping.cancel();
        drop(dispatch);
        // Fetched but not started: given back at once rather than left to wait out a lease
        // behind long jobs. Every runner gives back what it takes once stopping; one more
        // runner makes sure that happens even when all the others are busy. Among the
        // runners, the grace period bounds it too: with Redis away the writer's queue fills,
        // and a give-back waits for room.
        runners.spawn(runner(
            shared.clone(),
            ready,
            stopping.clone(),
            busy.clone(),
        ));

        tracing::info!(running = busy.load(Ordering::Relaxed), grace = ?self.shutdown_grace, "shutting down: no new jobs are taken");
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            while runners.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = busy.load(Ordering::Relaxed),
                "grace period over: running jobs are dropped unacknowledged and will run again after their lease"
            );
            runners.abort_all();
            while runners.join_next().await.is_some() {}
        }
        stop.cancel();
        // Promotion and renewal are periodic and atomic on the server: a call cut short
        // changes nothing, and with Redis away it could take seconds to fail.
        helpers.shutdown().await;
        drop(shared);
        // The writer ends once every sender is gone and its queue is stored. A task that kept
        // a clone of its context alive would hold it open: do not wait for ever.
        let mut writer = writer;
        if tokio::time::timeout(WRITER_FLUSH, &mut writer)
            .await
            .is_err()
        {
            tracing::warn!(
                "outcomes not stored within {WRITER_FLUSH:?} of shutdown; their jobs stay pending and run again"
            );
            abandon.cancel();
            writer.abort();
        }
        match tokio::time::timeout(
            FAREWELL,
            broker.retire_consumer(&self.consumer, &self.queues),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not remove this worker from the consumer groups")
            }
            Err(_) => tracing::warn!(
                "Redis did not answer within {FAREWELL:?}; this worker stays in the consumer groups until pruned"
            ),
        }
        quiet.cancel();
        let mut heartbeats = AbortOnDropHandle::new(heartbeats);
        let last_beat = tokio::time::timeout(FAREWELL, async {
            match (&mut heartbeats).await {
                Ok(mut beats) => beats.beat(true).await,
                Err(err) => {
                    tracing::error!(error = %err, "the heartbeat task failed");
                    Ok(())
                }
            }
        })
        .await;
        if !matches!(last_beat, Ok(Ok(()))) {
            let error = match last_beat {
                Ok(Err(err)) => err.to_string(),
                _ => format!("Redis did not answer within {FAREWELL:?}"),
            };
            tracing::warn!(
                error,
                "could not store this worker's last counts and remove its heartbeat; it shows as not alive until forgotten an hour later"
            );
        }
        tracing::info!(consumer = %self.consumer, "worker stopped");
        Ok(())
    }
}

/// The outcome of the worker's task; a panic in it (a bug of ours) is passed on as one.
fn joined(outcome: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match outcome {
        Ok(outcome) => outcome,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => {
            tracing::error!(error = %err, "the worker's task was cancelled");
            Ok(())
        }
    }
}

/// A delivery on its way to a runner, with the claim it holds until settled.
struct Fetched {
    delivery: Delivery,
    claim: Option<OwnedSemaphorePermit>,
}

/// One of the worker's `concurrency` runners: runs fetched deliveries one after another until
/// the fetch loop stops and the queue is empty. Once stopping, what it takes is given back.
async fn runner(
    shared: Arc<Shared>,
    ready: flume::Receiver<Fetched>,
    stopping: CancellationToken,
    busy: Arc<AtomicUsize>,
) {
    while let Ok(Fetched { delivery, claim }) = ready.recv_async().await {
        if stopping.is_cancelled() {
            job::give_back(&shared, delivery).await;
            drop(claim);
            continue;
        }
        busy.fetch_add(1, Ordering::Relaxed);
        // Task panics are caught around the handler; one here is a bug of ours. The runner
        // lives on, and the delivery is released so the reclaim takes it back after its lease.
        let ran = AssertUnwindSafe(job::run(&shared, &delivery))
            .catch_unwind()
            .await;
        busy.fetch_sub(1, Ordering::Relaxed);
        if ran.is_err() {
            tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, "the worker panicked while handling this delivery (a bug in psw-tasks); it runs again once its lease expires");
            shared.in_flight.release([(
                &delivery.queue,
                delivery.entry_id.as_str(),
                delivery.deliveries,
            )]);
        }
        drop(claim);
    }
}

/// Moves due delayed jobs of one queue into it, sleeping until the next is due.
async fn promote(broker: Arc<dyn Broker>, queue: String, stop: CancellationToken) {
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let pause = match broker.promote_due(&queue, now_ms(), PROMOTE_BATCH).await {
            Ok(promoted) if promoted.moved == PROMOTE_BATCH => Duration::ZERO,
            Ok(promoted) => {
                failures = 0;
                let until_next = promoted
                    .next_due_ms
                    .map(|due| Duration::from_millis((due - now_ms()).max(0) as u64));
                until_next.map_or(PROMOTE_IDLE, |d| d.min(PROMOTE_IDLE))
            }
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(queue, error = %err, "promoting delayed jobs failed; retrying");
                }
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Renews the lease of every running job at a third of the lease, so that a live worker never
/// loses a long job to the reaper.
async fn renew(shared: Arc<Shared>, consumer: String, lease: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (queue, ids) in shared.in_flight.snapshot() {
            match shared.broker.renew(&consumer, &queue, &ids).await {
                Ok(renewed) if renewed < ids.len() => {
                    // Either settled since the snapshot, or taken over by another worker
                    // after a pause longer than the lease.
                    tracing::debug!(queue = %queue, asked = ids.len(), renewed, "some leases were not renewed");
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(queue = %queue, error = %err, "renewing leases failed"),
            }
        }
    }
}

/// SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
