//! The worker: fetch -> run -> settle, with leases renewed while jobs run, expired leases
//! reclaimed, delayed jobs promoted, and a graceful shutdown.
//!
//! Its parts, one file each: the [`fetch`] loop, the [`runner`]s and the [`job`] each runs,
//! the [`writer`] that stores outcomes in batches, the [`heartbeat`], the [`promoter`] and the
//! lease [`renewer`]; what they share is in [`shared`], [`in_flight`] and [`counters`]. This
//! file starts them in order and stops them in order.
//!
//! Architecture invariant: the worker sees the `Broker` trait only, never Redis types.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::broker::Broker;
use crate::broker::DeadJob;
use crate::client::Client;
use crate::config::LEASES;
use crate::dead::DeadHook;
use crate::envelope::now_ms;
use crate::error::{Error, Result};
use crate::keys::validate_name;
use crate::limit::{RateLimit, check_limit_name};
use crate::priority::QueueOrder;
use crate::process::{self, process_name};
use crate::registry::Registry;
use crate::rules::DEFAULT_QUEUE;
use crate::shard;
use crate::task::SharedState;

mod activity;
mod celery;
mod celery_link;
mod counters;
mod fetch;
mod heartbeat;
mod in_flight;
mod job;
mod limits;
mod paused;
mod progress;
mod promoter;
mod renewer;
mod revocations;
mod runner;
mod shared;
mod writer;

use activity::{Activity, Times};
use counters::Counters;
pub use counters::WorkerStats;
use fetch::FetchLoop;
use in_flight::InFlight;
use limits::Limits;
use revocations::Revocations;
use runner::Fetched;
use shared::Shared;

/// How long a stopping worker waits for its last outcomes to be stored.
const WRITER_FLUSH: Duration = Duration::from_secs(10);
/// How long each last call to Redis at shutdown (leaving the groups, the last heartbeat) may
/// take: with Redis away they fail anyway, and a stopping worker must not wait out the
/// client's reconnection backoff for each.
const FAREWELL: Duration = Duration::from_secs(3);
/// First pause when the queues cannot be prepared at start; it doubles up to 5 s.
const PREPARE_RETRY: Duration = Duration::from_millis(100);

/// Configures a [`Worker`].
#[derive(Debug)]
pub struct WorkerBuilder {
    client: Client,
    concurrency: usize,
    prefetch: Option<usize>,
    on_dead: Option<DeadHook>,
    queues: Option<Vec<String>>,
    queue_weights: BTreeMap<String, u32>,
    strict_priority: bool,
    lease: Duration,
    shutdown_grace: Duration,
    states: SharedState,
    rate_limits: BTreeMap<String, RateLimit>,
    concurrency_limits: BTreeMap<String, u32>,
    metrics_history: bool,
    celery_queues: Vec<String>,
}

/// `lease` moved into the range a worker accepts ([`LEASES`]).
fn within_leases(lease: Duration) -> Duration {
    lease.clamp(*LEASES.start(), *LEASES.end())
}

impl WorkerBuilder {
    /// Jobs run at once (default from `PSW_WORKER_CONCURRENCY`, else 10).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Deliveries held beyond the concurrency: fetched and waiting to run, or run and waiting
    /// for their outcome to be stored (default: three times the concurrency, so a worker holds
    /// four times its concurrency, as under Celery's default prefetch multiplier;
    /// `PSW_WORKER_PREFETCH`). A worker holds at most concurrency + prefetch, which also bounds
    /// the jobs that run again if it dies. More hides the fetch and settle round trips behind
    /// running jobs; 0 fetches only for free slots, best for long jobs shared among many
    /// workers.
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
        self.on_dead = Some(DeadHook::new(hook));
        self
    }

    /// Share `value` with every job of this worker: tasks read it with
    /// [`crate::TaskContext::state`]. One value per type; a second of the same type replaces
    /// the first. Wrap it in a type of your own to share two of one type.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Queues to consume, read round-robin unless [`Self::strict_priority`] (default:
    /// `PSW_QUEUES`, else every queue of the registered tasks). Drops weights set before.
    pub fn queues<I, Q>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        self.queues = Some(queues.into_iter().map(Into::into).collect());
        self.queue_weights.clear();
        self
    }

    /// Queues to consume, each with a weight (default: `PSW_QUEUES`' weights, else
    /// round-robin): each read starts with a queue drawn with a chance proportional to its
    /// weight, so with `[("high", 5), ("low", 1)]` and both full, five reads in six go to
    /// `high` first, and `low` is never starved. A weight of 0 counts as 1.
    pub fn weighted_queues<I, Q>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = (Q, u32)>,
        Q: Into<String>,
    {
        let (names, weights): (Vec<String>, Vec<u32>) = queues
            .into_iter()
            .map(|(queue, weight)| (queue.into(), weight.max(1)))
            .unzip();
        self.queue_weights = names.iter().cloned().zip(weights).collect();
        self.queues = Some(names);
        self
    }

    /// Read the queues strictly in their order: every read takes from the first queue first,
    /// and the next only when it is empty (default: `PSW_STRICT_PRIORITY`, else off). A busy
    /// first queue starves the others. Not with weights.
    pub fn strict_priority(mut self, strict: bool) -> Self {
        self.strict_priority = strict;
        self
    }

    /// Declare the shared rate limit `name`, used by `#[task(rate_limit = "name")]` and
    /// [`crate::TaskContext::rate_limit`] (default: `PSW_RATE_LIMITS`, such as
    /// `eodhd=1000/m,borsdata=100/10s`). Every worker using the name must declare it alike:
    /// each passes its own figures to Redis with each check.
    pub fn rate_limit(mut self, name: impl Into<String>, limit: RateLimit) -> Self {
        self.rate_limits.insert(name.into(), limit);
        self
    }

    /// Declare the shared concurrency limit `name`: at most `slots` jobs of the tasks naming
    /// it run at once, across every worker (default: `PSW_CONCURRENCY_LIMITS`, such as
    /// `renderer=2`). Declare it alike on every worker.
    pub fn concurrency_limit(mut self, name: impl Into<String>, slots: u32) -> Self {
        self.concurrency_limits.insert(name.into(), slots.max(1));
        self
    }

    /// How long a job stays claimed without a heartbeat (default 30 s), kept within 300 ms
    /// and 1 h (`PSW_LEASE` outside that range is a configuration error).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = within_leases(lease);
        self
    }

    /// How long running jobs may take to finish once shutdown starts (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Whether to keep the metrics history: run-time and queue-wait histograms per task, and
    /// each task's recent executions (default on; `PSW_METRICS_HISTORY`). Outcome counts and
    /// the jobs running now are reported either way.
    pub fn metrics_history(mut self, on: bool) -> Self {
        self.metrics_history = on;
        self
    }

    /// Celery queues (Redis lists named after Celery's routing keys, `celery` by default) to
    /// take jobs from too, for the tasks linked here by their names (default:
    /// `PSW_CELERY_QUEUES`; none). Messages of other tasks are left to the Celery workers.
    /// `docs/celery.md` has the mapping and what is not supported yet.
    pub fn celery_queues<I, Q>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        self.celery_queues = queues.into_iter().map(Into::into).collect();
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
                    vec![DEFAULT_QUEUE.to_owned()]
                } else {
                    queues
                }
            }
        };
        for queue in &queues {
            validate_name("queue", queue)?;
        }
        let order = queue_order(&queues, &self.queue_weights, self.strict_priority)?;
        // A sharded queue is read as its shards, each a queue to the broker, in turn: each
        // shard takes its queue's weight.
        let config = self.client.config();
        let shard_queues: Vec<String> = queues
            .iter()
            .flat_map(|queue| shard::shard_queues(queue, config.shards_of(queue)))
            .collect();
        let order = match order {
            QueueOrder::Weighted(weights) => QueueOrder::Weighted(
                queues
                    .iter()
                    .zip(weights)
                    .flat_map(|(queue, weight)| {
                        std::iter::repeat_n(weight, config.shards_of(queue) as usize)
                    })
                    .collect(),
            ),
            order => order,
        };
        for name in self.rate_limits.keys() {
            check_limit_name(name, "PSW_RATE_LIMITS")?;
        }
        for name in self.concurrency_limits.keys() {
            check_limit_name(name, "PSW_CONCURRENCY_LIMITS")?;
        }
        let limits = Arc::new(Limits::new(
            self.client.broker().clone(),
            self.rate_limits.into_iter().collect(),
            self.concurrency_limits.into_iter().collect(),
        ));
        // A task naming a limit nobody declared would never be limited: refuse to start.
        for task in registry.iter() {
            if let Some((variable, name)) = limits.missing(task.options()) {
                return Err(Error::config(
                    variable,
                    "",
                    format!(
                        "task `{}` uses the shared limit `{name}`, which is not declared: add `{name}=<limit>` (or declare it on the WorkerBuilder)",
                        task.name()
                    ),
                ));
            }
        }
        let revocations = Arc::new(Revocations::default());
        let mut states = self.states;
        states.limits = Some(limits.clone());
        states.cancellations = Some(revocations.clone());
        if registry.iter().next().is_none() {
            tracing::warn!(
                "no #[task] is linked into this binary: every job will be dead-lettered as unknown"
            );
        }
        Ok(Worker {
            client: self.client,
            queues,
            shard_queues,
            order,
            concurrency: self.concurrency,
            // Three times the concurrency: a delivery stays held until its outcome is stored,
            // so the fetch and settle round trips need room of their own (docs/performance.md).
            prefetch: self.prefetch.unwrap_or(3 * self.concurrency),
            on_dead: self.on_dead,
            states: Arc::new(states),
            limits,
            revocations,
            lease: self.lease,
            shutdown_grace: self.shutdown_grace,
            metrics_history: self.metrics_history,
            celery_queues: self.celery_queues,
            // Unique per process: a restarted worker must not inherit a dead one's entries as
            // if it were still running them.
            consumer: process_name("worker"),
            stats: WorkerStats(Arc::new(Counters::for_tasks(registry.len()))),
            registry,
        })
    }
}

/// How a worker reads `queues`: by their weights, strictly in order, or round-robin.
fn queue_order(
    queues: &[String],
    weights: &BTreeMap<String, u32>,
    strict: bool,
) -> Result<QueueOrder> {
    if let Some(stray) = weights.keys().find(|name| !queues.contains(name)) {
        return Err(Error::config(
            "PSW_QUEUES",
            stray.as_str(),
            "weights only for queues the worker consumes",
        ));
    }
    match (strict, weights.is_empty()) {
        (true, false) => Err(Error::config(
            "PSW_STRICT_PRIORITY",
            "true",
            "either strict order or queue weights, not both",
        )),
        (true, true) => Ok(QueueOrder::Strict),
        (false, true) => Ok(QueueOrder::RoundRobin),
        (false, false) => Ok(QueueOrder::Weighted(
            queues
                .iter()
                .map(|queue| weights.get(queue).copied().unwrap_or(1))
                .collect(),
        )),
    }
}

/// Runs jobs from the queues until shut down.
#[derive(Debug)]
pub struct Worker {
    client: Client,
    registry: Registry,
    queues: Vec<String>,
    /// `queues` as the broker knows them: each sharded queue as its shards (`shard`).
    shard_queues: Vec<String>,
    order: QueueOrder,
    concurrency: usize,
    prefetch: usize,
    on_dead: Option<DeadHook>,
    states: Arc<SharedState>,
    limits: Arc<Limits>,
    revocations: Arc<Revocations>,
    lease: Duration,
    shutdown_grace: Duration,
    metrics_history: bool,
    celery_queues: Vec<String>,
    consumer: String,
    stats: WorkerStats,
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
            queue_weights: config.queue_weights.clone(),
            strict_priority: config.strict_priority,
            // `Config`'s fields are public: one set by hand is kept in range here.
            lease: within_leases(config.lease),
            shutdown_grace: config.shutdown_grace,
            rate_limits: config.rate_limits.clone(),
            concurrency_limits: config.concurrency_limits.clone(),
            metrics_history: config.metrics_history,
            celery_queues: config.celery_queues.clone(),
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
        self.run_until(process::shutdown_signal()).await
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
        let started_ms = now_ms();
        if !prepare_queues(broker.as_ref(), &self.shard_queues, &shutdown).await {
            return Ok(());
        }
        // The cancellations made before this start, so that none of those jobs runs here.
        if let Err(err) = self
            .revocations
            .refresh(broker.as_ref(), self.client.config().result_ttl)
            .await
        {
            tracing::warn!(error = %crate::error::chain(&err), "could not read the cancelled jobs at start; reading them again shortly");
        }
        let celery = celery_link::CeleryLink::connect(
            self.client.config(),
            &self.celery_queues,
            &self.consumer,
            &self.queues[0],
        )
        .await?
        .map(Arc::new);
        let running = self.start(broker, started_ms, celery);
        tracing::info!(consumer = %self.consumer, queues = ?self.queues, concurrency = self.concurrency, "worker started");
        let mut running = running;
        running.fetch.run(&shutdown).await;
        running.stop(&self).await;
        tracing::info!(consumer = %self.consumer, "worker stopped");
        Ok(())
    }

    /// Start the writer, the runners, the promoters, the renewer and the heartbeat, and make
    /// the fetch loop that feeds them.
    fn start(
        &self,
        broker: Arc<dyn Broker>,
        started_ms: i64,
        celery: Option<Arc<celery_link::CeleryLink>>,
    ) -> Running {
        let abandon = CancellationToken::new();
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
                batches: Default::default(),
            },
            requests,
            abandon.clone(),
        ));
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            consumer: self.consumer.clone(),
            lease: self.lease,
            registry: self.registry.clone(),
            writes,
            in_flight,
            stats: self.stats.0.clone(),
            max_deliveries: self.client.config().max_deliveries,
            max_message_size: self.client.config().max_message_size,
            max_result_size: self.client.config().result_size_limit(),
            dead_payload_cap: self.client.config().dead_letter_max_payload,
            unknown_task_delay: self.client.config().unknown_task_delay,
            states: self.states.clone(),
            limits: self.limits.clone(),
            revocations: self.revocations.clone(),
            activity: Arc::new(Activity::new(self.concurrency, self.metrics_history)),
            paused: paused::Paused::default(),
            result_ttl: self.client.config().result_ttl,
            celery: celery.clone(),
        });
        let busy = Arc::new(AtomicUsize::new(0));
        // Fetched deliveries wait here for the first free runner.
        let (dispatch, ready) = flume::unbounded::<Fetched>();
        let stopping = CancellationToken::new();
        let mut runners = JoinSet::new();
        for runner in 0..self.concurrency {
            runners.spawn(runner::run(
                runner,
                shared.clone(),
                ready.clone(),
                stopping.clone(),
                busy.clone(),
            ));
        }
        let stop_helpers = CancellationToken::new();
        let mut helpers = JoinSet::new();
        for queue in &self.shard_queues {
            helpers.spawn(promoter::run(
                broker.clone(),
                queue.clone(),
                stop_helpers.clone(),
            ));
        }
        if let Some(link) = celery {
            helpers.spawn(celery::run(shared.clone(), link, stop_helpers.clone()));
        }
        helpers.spawn(revocations::run(
            self.revocations.clone(),
            broker.clone(),
            self.client.config().result_ttl,
            stop_helpers.clone(),
        ));
        helpers.spawn(renewer::run(
            shared.clone(),
            self.consumer.clone(),
            self.lease,
            stop_helpers.clone(),
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
                activity: shared.activity.clone(),
                stored: vec![[0; 4]; self.registry.len()],
                unsent: Vec::new(),
                unsent_times: vec![Times::default(); self.registry.len()],
                unsent_runs: Vec::new(),
            },
            quiet.clone(),
        ));
        let fetch = FetchLoop {
            shared: shared.clone(),
            consumer: self.consumer.clone(),
            lanes: self
                .shard_queues
                .iter()
                .map(|queue| vec![queue.clone()])
                .collect(),
            next_lane_check: tokio::time::Instant::now(),
            next_pause_check: tokio::time::Instant::now(),
            order: self.order.clone(),
            lease: self.lease,
            claims: Arc::new(Semaphore::new(self.concurrency + self.prefetch)),
            dispatch,
            fetch_at: u32::try_from((self.prefetch / 2).max(1)).unwrap_or(u32::MAX),
        };
        Running {
            broker,
            shared,
            fetch,
            ready,
            stopping,
            busy,
            runners,
            stop_helpers,
            helpers,
            writer,
            abandon,
            heartbeats,
            quiet,
        }
    }
}

/// Make the queues' groups exist, waiting for Redis if it is unreachable at start rather than
/// exiting; false if `shutdown` came first.
async fn prepare_queues(
    broker: &dyn Broker,
    queues: &[String],
    shutdown: &CancellationToken,
) -> bool {
    let mut delay = PREPARE_RETRY;
    loop {
        match broker.prepare(queues).await {
            Ok(()) => return true,
            Err(err) => {
                tracing::error!(error = %crate::error::chain(&err), "cannot prepare the queues; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A started worker: its fetch loop and everything that must be stopped, in order, after it.
struct Running {
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    fetch: FetchLoop,
    /// The runners' end of the dispatch queue, for one more runner at shutdown.
    ready: flume::Receiver<Fetched>,
    /// Tells the runners to give back what they take instead of running it.
    stopping: CancellationToken,
    /// Jobs running now.
    busy: Arc<AtomicUsize>,
    runners: JoinSet<()>,
    stop_helpers: CancellationToken,
    /// The promoters and the renewer.
    helpers: JoinSet<()>,
    writer: JoinHandle<()>,
    /// Tells the writer to give up retrying (what it has not stored then runs again).
    abandon: CancellationToken,
    heartbeats: JoinHandle<heartbeat::Heartbeats>,
    /// Ends the periodic heartbeats, before the last one.
    quiet: CancellationToken,
}

impl Running {
    /// Shut down after the fetch loop ended: give back what was fetched but not started, let
    /// running jobs finish within the grace period, store their outcomes, leave the groups and
    /// send the last heartbeat.
    async fn stop(self, worker: &Worker) {
        let Running {
            broker,
            shared,
            fetch,
            ready,
            stopping,
            busy,
            mut runners,
            stop_helpers,
            mut helpers,
            writer,
            abandon,
            heartbeats,
            quiet,
        } = self;
        // Stopping first, then no more dispatch: a runner that takes a queued delivery from
        // now on gives it back.
        stopping.cancel();
        // The lanes it read, to leave their groups at the end.
        let lanes: Vec<String> = fetch.lanes.iter().flatten().cloned().collect();
        drop(fetch);
        // Fetched but not started: given back at once rather than left to wait out a lease
        // behind long jobs. Every runner gives back what it takes once stopping; one more
        // runner makes sure that happens even when all the others are busy. Among the
        // runners, the grace period bounds it too: with Redis away the writer's queue fills,
        // and a give-back waits for room.
        // It has no activity slot of its own (`usize::MAX`): it only gives back.
        runners.spawn(runner::run(
            usize::MAX,
            shared.clone(),
            ready,
            stopping.clone(),
            busy.clone(),
        ));

        tracing::info!(running = busy.load(Ordering::Relaxed), grace = ?worker.shutdown_grace, "shutting down: no new jobs are taken");
        let drained = tokio::time::timeout(worker.shutdown_grace, async {
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
        stop_helpers.cancel();
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
        match tokio::time::timeout(FAREWELL, broker.retire_consumer(&worker.consumer, &lanes)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %crate::error::chain(&err), "could not remove this worker from the consumer groups")
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
                    tracing::error!(error = %crate::error::chain(&err), "the heartbeat task failed");
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
    }
}

/// The outcome of the worker's task; a panic in it (a bug of ours) is passed on as one.
fn joined(outcome: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match outcome {
        Ok(outcome) => outcome,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => {
            tracing::error!(error = %crate::error::chain(&err), "the worker's task was cancelled");
            Ok(())
        }
    }
}
