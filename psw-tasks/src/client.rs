//! Producing jobs and reading their outcome: [`Client`], [`EnqueueOptions`], [`TaskHandle`].

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::audit::AuditEntry;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, DeadLetterLimits, NewJob, QueuedJob, UniqueLock};
use crate::config::Config;
use crate::dead::DeadLetters;
use crate::envelope::{
    Envelope, JobId, RESERVED_HEADER_PREFIX, SystemHeader, VERSION, epoch_ms, now_ms,
};
use crate::error::{Error, Result};
use crate::history::MetricsHistory;
use crate::keys::{Keys, validate_name};
use crate::limit::{RateLimit, check_limit_name};
use crate::limiter::RateLimiter;
use crate::metrics::{Execution, Resolution, TaskCounts};
use crate::priority::{self, Priority};
use crate::record::{JobRecord, State};
use crate::registry::{Duplicate, Registry};
use crate::revoke::RevokeReason;
use crate::shard;
use crate::stats::ClusterStats;
use crate::task::TaskOptions;
use crate::unique::{UNIQUE_HOLD, Unique, default_key};

/// Why a schedule name is refused by the calls that act on a registered schedule.
const UNREGISTERED_SCHEDULE: &str =
    "no beat has registered a schedule of this name (see `psw-cron-app schedules`)";

/// A connection to the broker, cheap to clone: enqueue jobs, read their records, run workers.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Arc<dyn Broker>,
    config: Config,
    /// The tasks linked into this binary, to find the queue of a task enqueued by name; two
    /// tasks of one name are reported by every call that needs it.
    registry: std::result::Result<Registry, Duplicate>,
    /// Counts the jobs without a key enqueued to sharded queues, to spread them round-robin.
    shard_turn: AtomicU64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("namespace", &self.inner.config.namespace)
            .field("redis", &self.inner.config.redis_url.is_some())
            .finish()
    }
}

impl Client {
    /// Connect as configured: to Redis when `config.redis_url` is set, else in process. Two
    /// `#[task]`s with one wire name in this binary are an error here already.
    pub async fn connect(config: &Config) -> Result<Client> {
        let registry = Registry::linked().map_err(|duplicate| duplicate.error())?;
        let limits = DeadLetterLimits {
            max_len: config.dead_letter_cap,
            max_bytes: config.dead_letter_max_bytes,
        };
        let broker: Arc<dyn Broker> = match &config.redis_url {
            Some(url) => Arc::new(
                RedisBroker::connect(
                    url,
                    config.url_variable(),
                    config.redis_ca_cert.as_deref(),
                    &config.namespace,
                )
                .await?
                .with_dead_letter_limits(limits),
            ),
            None => {
                Keys::new(&config.namespace)?;
                Arc::new(MemoryBroker::new().with_dead_letter_limits(limits))
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                broker,
                config: config.clone(),
                registry: Ok(registry),
                shard_turn: AtomicU64::new(0),
            }),
        })
    }

    /// Connect to Redis with default settings.
    pub async fn redis(url: &str) -> Result<Client> {
        Client::connect(&Config::redis(url)).await
    }

    /// An in-process broker: jobs live in this process only, and workers must run in it. Two
    /// `#[task]`s with one wire name are reported by enqueueing by name and by building a worker.
    pub fn memory() -> Client {
        Client {
            inner: Arc::new(Inner {
                broker: Arc::new(MemoryBroker::new()),
                config: Config::default(),
                registry: Registry::linked(),
                shard_turn: AtomicU64::new(0),
            }),
        }
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Enqueue a task by wire name, for producers that do not link the task: `args` is the
    /// tuple (or array) of its arguments. The queue is the one in `options`, else the task's
    /// own if it is linked into this binary, else `default`.
    pub async fn enqueue_by_name<O>(
        &self,
        task: &str,
        args: &impl Serialize,
        options: EnqueueOptions,
    ) -> Result<TaskHandle<O>> {
        self.enqueue_typed(task, self.options_of(task)?, args, options)
            .await
    }

    /// Enqueue many jobs of one task, by wire name, in pipelined round trips: the fastest way to
    /// fill a queue. Each item of `args` is one job's argument tuple; `options` apply to every
    /// job (a fixed job id cannot, and is refused).
    pub async fn enqueue_many_by_name<O, A: Serialize>(
        &self,
        task: &str,
        args: impl IntoIterator<Item = A>,
        options: EnqueueOptions,
    ) -> Result<Vec<TaskHandle<O>>> {
        let task_options = self.options_of(task)?;
        if options.unique.is_some() || task_options.unique.is_some() || options.debounce.is_some() {
            return Err(Error::config(
                "EnqueueOptions::unique",
                task,
                "no unique or debounced jobs when enqueueing many: each needs its own key \
                 (enqueue them one by one)",
            ));
        }
        if let Some(id) = &options.id {
            return Err(Error::config(
                "EnqueueOptions::job_id",
                id.as_str(),
                "no fixed id when enqueueing many jobs: each job needs its own",
            ));
        }
        let mut handles = Vec::new();
        let mut chunk = Vec::with_capacity(BULK_CHUNK);
        // One chunk travels while the next is encoded; a chunk leaves only once the one before
        // it is stored, so the jobs keep their order.
        let mut in_flight: Option<tokio::task::JoinHandle<Result<()>>> = None;
        for args in args {
            let args = rmp_serde::to_vec_named(&args)
                .map_err(|err| Error::encode(format!("arguments of task `{task}`"), err))?;
            let (id, job) = self.prepare(task, task_options, args, &options)?;
            handles.push(self.handle(id));
            chunk.push(job);
            if chunk.len() == BULK_CHUNK {
                if let Some(previous) = in_flight.take() {
                    settle_push(previous).await?;
                }
                let broker = self.inner.broker.clone();
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(BULK_CHUNK));
                in_flight = Some(tokio::spawn(async move { broker.push(full).await }));
            }
        }
        if let Some(previous) = in_flight.take() {
            settle_push(previous).await?;
        }
        self.inner.broker.push(chunk).await?;
        Ok(handles)
    }

    /// The options of `task` if it is linked into this binary, else the defaults.
    fn options_of(&self, task: &str) -> Result<&'static TaskOptions> {
        let registry = self.inner.registry.as_ref().map_err(Duplicate::error)?;
        Ok(registry
            .get(task)
            .map_or(&TaskOptions::DEFAULT, |descriptor| descriptor.options()))
    }

    /// The queue of a task linked into this binary; `None` for others.
    pub(crate) fn task_queue(&self, task: &str) -> Option<&'static str> {
        let registry = self.inner.registry.as_ref().ok()?;
        registry
            .get(task)
            .map(|descriptor| descriptor.options().queue)
    }

    /// A snapshot of the namespace: live and recently seen workers, what each queue holds,
    /// each task's outcomes over the last `window` (at most a day) and the dead-letter queue.
    /// Like Celery's `inspect().stats()` or BullMQ's `getJobCounts`; a handful of round trips.
    pub async fn stats(&self, window: Duration) -> Result<ClusterStats> {
        crate::stats::collect(self.broker().as_ref(), window, now_ms()).await
    }

    /// The metrics history of the last `window`: per minute for windows up to a day, per ten
    /// minutes up to a week (older is gone), each task's outcome counts and run-time and
    /// queue-wait histograms in every bucket. Written by workers with their heartbeat, so it
    /// outlives restarts of anything; `docs/monitoring.md` has what it costs.
    pub async fn metrics(&self, window: Duration) -> Result<MetricsHistory> {
        let resolution = Resolution::for_window(window);
        crate::history::collect(self.broker().as_ref(), resolution, window, now_ms()).await
    }

    /// As [`Client::metrics`], taking from `last` (an earlier reading of the same
    /// resolution) the buckets too old to change: a reader on a cadence reads a few buckets
    /// each time, not the whole window.
    pub(crate) async fn metrics_after(
        &self,
        last: Option<&MetricsHistory>,
        window: Duration,
    ) -> Result<MetricsHistory> {
        let resolution = Resolution::for_window(window);
        crate::history::refresh(self.broker().as_ref(), last, resolution, window, now_ms()).await
    }

    /// As [`Client::stats`] over the window of `minutes` (a per-minute history read just
    /// now), the tasks' counts summed from it instead of read again.
    pub(crate) async fn stats_over(
        &self,
        minutes: &MetricsHistory,
        window: Duration,
    ) -> Result<ClusterStats> {
        crate::stats::collect_over(self.broker().as_ref(), minutes, window, now_ms()).await
    }

    /// Every task's counts since the namespace's first worker, sorted by task: outcomes, run
    /// times and queue waits that only grow (kept without expiry), for monotonic counters
    /// such as Prometheus' `_total` and histograms.
    pub async fn metric_totals(&self) -> Result<Vec<TaskCounts>> {
        crate::history::totals(self.broker().as_ref()).await
    }

    /// The last `limit` executions of `task` (at most [`crate::RECENT_EXECUTIONS`] are kept),
    /// newest first: job id, attempt, outcome, run time and worker.
    pub async fn recent_executions(&self, task: &str, limit: usize) -> Result<Vec<Execution>> {
        crate::history::recent(self.broker().as_ref(), task, limit).await
    }

    /// Pause a schedule that a beat registered: its slots pass without a job (they are not
    /// caught up on resume) until [`Client::resume_schedule`]. Kept in the broker, so it holds
    /// across beat restarts. Beats before this version ignore it.
    pub async fn pause_schedule(&self, name: &str) -> Result<()> {
        self.set_schedule_paused(name, true).await
    }

    /// Resume a paused schedule: slots from now on fire again.
    pub async fn resume_schedule(&self, name: &str) -> Result<()> {
        self.set_schedule_paused(name, false).await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<()> {
        if !self.inner.broker.beat_set_paused(name, paused).await? {
            return Err(Error::schedule(name, UNREGISTERED_SCHEDULE));
        }
        tracing::info!(schedule = name, paused, "schedule paused or resumed");
        Ok(())
    }

    /// Run a registered schedule's job now, out of turn, with the task, queue and arguments
    /// the beat registered: the job carries the schedule's name (so it shows in
    /// [`Client::schedule_runs`], with no slot) but is not one of its slots, so the next slot
    /// fires as planned.
    pub async fn run_schedule(&self, name: &str) -> Result<TaskHandle<serde_json::Value>> {
        let state = self.inner.broker.beat_state(name).await?;
        let Some(definition) = state.definition else {
            return Err(Error::schedule(name, UNREGISTERED_SCHEDULE));
        };
        let Some(args) = definition.args else {
            return Err(Error::schedule(
                name,
                "its arguments were not stored (a beat of an earlier version registered it); restart the beat with this version",
            ));
        };
        let args: serde_json::Value = serde_json::from_str(&args)
            .map_err(|_| Error::schedule(name, "its stored arguments are not valid JSON"))?;
        let (queue, level) = priority::split_lane(&definition.queue);
        let options = EnqueueOptions::new()
            .queue(queue)
            .priority(level)
            .system_header(SystemHeader::Schedule, name.to_owned());
        let handle = self
            .enqueue_typed(
                &definition.task,
                self.options_of(&definition.task)?,
                &args,
                options,
            )
            .await?;
        tracing::info!(schedule = name, job = %handle.id(), "schedule run by hand");
        Ok(handle)
    }

    /// The last `limit` runs of a schedule (at most [`crate::SCHEDULE_RUNS`] are kept),
    /// newest first: each job's slot (none for a run by hand), id, outcome, run time and worker.
    pub async fn schedule_runs(&self, name: &str, limit: usize) -> Result<Vec<Execution>> {
        crate::history::schedule_runs(self.broker().as_ref(), name, limit).await
    }

    /// The unique lock `key` (as `EnqueueOptions::unique_key` names it, or the task and its
    /// arguments' digest), if a job holds it: which job, and for how long at most.
    pub async fn unique_lock(&self, key: &str) -> Result<Option<UniqueLock>> {
        self.inner.broker.unique_lock(key).await
    }

    /// Up to `limit` unique locks whose key starts with `prefix` (`""` for all), by key.
    pub async fn unique_locks(&self, prefix: &str, limit: usize) -> Result<Vec<UniqueLock>> {
        self.inner.broker.unique_locks(prefix, limit).await
    }

    /// The shared rate limit `name`, for code outside tasks: the same limit, across every
    /// process, as `TaskContext::rate_limit(name)` in a task. `name` is a key-safe name
    /// starting with a letter; every user of it must give the same `limit`.
    pub fn rate_limiter(&self, name: &str, limit: RateLimit) -> Result<RateLimiter> {
        check_limit_name(name, "rate limit name")?;
        Ok(RateLimiter::new(self.inner.broker.clone(), name, limit))
    }

    /// The namespace's dead-letter queue.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(
            self.inner.broker.clone(),
            self.inner.config.max_message_size,
        )
    }

    pub(crate) async fn enqueue_typed<O>(
        &self,
        task: &str,
        task_options: &TaskOptions,
        args: &impl Serialize,
        mut options: EnqueueOptions,
    ) -> Result<TaskHandle<O>> {
        let args = rmp_serde::to_vec_named(args)
            .map_err(|err| Error::encode(format!("arguments of task `{task}`"), err))?;
        if options.unique.is_none() {
            options.unique = task_options.unique;
        }
        if let Some((key, window)) = options.debounce.clone() {
            return self
                .enqueue_debounced(task, task_options, args, options, key, window)
                .await;
        }
        let lock = match options.unique {
            Some(unique) => {
                let key = match &options.unique_key {
                    Some(key) => {
                        validate_name("EnqueueOptions::unique_key", key)?;
                        key.clone()
                    }
                    None => default_key(task, &args),
                };
                // The envelope carries it, for the worker that releases the lock.
                options.unique_key = Some(key.clone());
                Some((unique, key))
            }
            None => None,
        };
        let (id, job) = self.prepare(task, task_options, args, &options)?;
        if let Some((unique, key)) = lock {
            let delay = job.due_ms.map_or(0, |due| (due - now_ms()).max(0) as u64);
            let hold = unique.hold(Duration::from_millis(delay));
            return match self
                .inner
                .broker
                .push_unique(job, &key, id.as_str(), hold)
                .await?
            {
                None => Ok(self.handle(id)),
                Some(holder) => {
                    // Not the key: a producer's own key may be made of argument values.
                    tracing::info!(task, job = %holder, "a job with this unique key is known already; nothing added");
                    let mut handle = self.handle(holder);
                    handle.duplicate = true;
                    Ok(handle)
                }
            };
        }
        if options.id.is_some() {
            // Idempotent: the id is held through the job's delay and the result TTL, and its
            // record counts too, so a retry after a lost reply adds nothing.
            let delay = job.due_ms.map_or(0, |due| (due - now_ms()).max(0) as u64);
            let hold = Duration::from_millis(delay) + self.inner.config.result_ttl;
            if !self.inner.broker.push_once(job, id.as_str(), hold).await? {
                tracing::debug!(id = %id, task, "a job with this id is known already; nothing added");
            }
        } else {
            self.inner.broker.push(vec![job]).await?;
        }
        Ok(self.handle(id))
    }

    /// Enqueue as the last job of debounce `key`, due `window` from now at the earliest.
    async fn enqueue_debounced<O>(
        &self,
        task: &str,
        task_options: &TaskOptions,
        args: Vec<u8>,
        mut options: EnqueueOptions,
        key: String,
        window: Duration,
    ) -> Result<TaskHandle<O>> {
        validate_name("EnqueueOptions::debounce", &key)?;
        if options.unique.is_some() || options.id.is_some() {
            return Err(Error::config(
                "EnqueueOptions::debounce",
                key,
                "no debounce for a unique job or one with a fixed id: debouncing already keeps one",
            ));
        }
        if options.eta.is_none() && options.countdown.is_none_or(|countdown| countdown < window) {
            options.countdown = Some(window);
        }
        let (id, job) = self.prepare(task, task_options, args, &options)?;
        let delay = job.due_ms.map_or(0, |due| (due - now_ms()).max(0) as u64);
        let hold = Duration::from_millis(delay) + UNIQUE_HOLD;
        self.inner
            .broker
            .push_debounced(job, &key, id.as_str(), hold)
            .await?;
        Ok(self.handle(id))
    }

    pub(crate) fn prepare(
        &self,
        task: &str,
        defaults: &TaskOptions,
        args: Vec<u8>,
        options: &EnqueueOptions,
    ) -> Result<(JobId, NewJob)> {
        let queue = options
            .queue
            .as_deref()
            .unwrap_or(defaults.queue)
            .to_owned();
        validate_name("queue", &queue)?;
        // A sharded queue's job goes to one of its shards: by its unique key, debounce key or
        // fixed id when it has one (so that the lock or hold is in one place), else in turn.
        let shards = self.inner.config.shards_of(&queue);
        let shard = if shards > 1 {
            let key = options
                .unique
                .and(options.unique_key.as_deref())
                .or(options.debounce.as_ref().map(|(key, _)| key.as_str()))
                .or(options.id.as_ref().map(JobId::as_str));
            let turn = self.inner.shard_turn.fetch_add(1, Ordering::Relaxed);
            shard::pick(shards, key, turn)
        } else {
            0
        };
        let lane = priority::lane(
            &shard::shard_queue(&queue, shard),
            options.priority.unwrap_or(defaults.priority),
        );
        if let Some(name) = options
            .headers
            .keys()
            .find(|name| name.starts_with(RESERVED_HEADER_PREFIX))
        {
            return Err(Error::config(
                "EnqueueOptions::header",
                name.as_str(),
                "a header name that does not start with `psw-`, which psw-tasks keeps for its own",
            ));
        }
        let mut headers = options.headers.clone();
        for (header, value) in &options.system_headers {
            headers.insert(header.as_str().to_owned(), value.clone());
        }
        let created_ms = now_ms();
        let eta_ms = match (options.eta, options.countdown) {
            (Some(eta), _) => Some(epoch_ms(eta)),
            (None, Some(countdown)) => Some(created_ms + countdown.as_millis() as i64),
            (None, None) => None,
        };
        let expires_ms = options.expires.map(|expiry| match expiry {
            Expiry::At(at) => epoch_ms(at),
            Expiry::After(after) => created_ms + after.as_millis() as i64,
        });
        let id = options.id.clone().unwrap_or_else(JobId::generate);
        // `enqueue_typed` settled the key; `enqueue_many_by_name` refuses unique jobs.
        let (unique_key, unique_release) = match options.unique.and_then(Unique::release) {
            Some(release) => (options.unique_key.clone(), Some(release)),
            None => (None, None),
        };
        let envelope = Envelope {
            v: VERSION,
            id: id.clone(),
            task: task.to_owned(),
            queue: queue.clone(),
            args,
            attempt: 0,
            retries: options.retries,
            created_ms,
            eta_ms,
            headers,
            errors: Vec::new(),
            errors_dropped: 0,
            expires_ms,
            unique_key,
            unique_release,
            debounce_key: options.debounce.as_ref().map(|(key, _)| key.clone()),
        };
        let payload = envelope.encode()?;
        let limit = self.inner.config.max_message_size;
        if payload.len() > limit {
            return Err(Error::MessageTooLarge {
                task: task.to_owned(),
                size: payload.len(),
                limit,
            });
        }
        Ok((
            id,
            NewJob {
                queue: lane,
                payload,
                due_ms: eta_ms,
            },
        ))
    }

    /// A handle on a job enqueued earlier (by id), typed with its task's output.
    pub fn handle<O>(&self, id: impl Into<JobId>) -> TaskHandle<O> {
        TaskHandle {
            id: id.into(),
            client: self.clone(),
            duplicate: false,
            output: PhantomData,
        }
    }

    /// Cancel a job, as Celery's `revoke`: every worker hears of it within a second. A job
    /// not started by then never runs: the worker that takes it acknowledges it, records it
    /// REVOKED (`cancelled`) and releases its unique lock (a delayed job, when it comes due).
    /// A running job is told through [`crate::TaskContext::cancelled`]; a task that does not
    /// look finishes as usual, and so does a job already finished. The mark is kept as long
    /// as a record (`PSW_RESULT_TTL`).
    pub async fn cancel(&self, id: &str) -> Result<()> {
        self.inner
            .broker
            .revoke(id, self.inner.config.result_ttl)
            .await?;
        tracing::info!(job = %id, "job cancelled");
        Ok(())
    }

    /// Pause a queue, as BullMQ's `pause` or Sidekiq's: every worker stops taking its jobs
    /// (all its priority levels) within a second, and jobs already running finish. Producers
    /// still enqueue, and delayed jobs still come due; they wait in the queue. The pause is
    /// kept in the broker, so restarted workers keep to it, until [`Client::resume_queue`].
    /// Whether the queue was running until now.
    pub async fn pause_queue(&self, queue: &str) -> Result<bool> {
        validate_name("queue", queue)?;
        let changed = self.inner.broker.set_paused(queue, true).await?;
        tracing::info!(queue, "queue paused");
        Ok(changed)
    }

    /// Resume a paused queue: workers take its jobs again within a second. Whether it was
    /// paused.
    pub async fn resume_queue(&self, queue: &str) -> Result<bool> {
        validate_name("queue", queue)?;
        let changed = self.inner.broker.set_paused(queue, false).await?;
        tracing::info!(queue, "queue resumed");
        Ok(changed)
    }

    /// The paused queues, sorted.
    pub async fn paused_queues(&self) -> Result<Vec<String>> {
        self.inner.broker.paused_queues().await
    }

    /// Add an action to the audit log (a stream capped at 10,000 entries); returns its id.
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<String> {
        self.inner.broker.audit_append(entry).await
    }

    /// Up to `limit` audit entries, newest first, or those before the entry id `before`.
    pub async fn audit_log(&self, before: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        self.inner.broker.audit_page(before, limit).await
    }

    /// A job still in a queue, looked for among the first `look_at` jobs of each queue's
    /// stream and of its delayed set (every priority level): one round trip per lane, so a
    /// look-up stays bounded however long the queues are. A job has no record until a worker
    /// starts it; this is where its envelope is before then (and while it runs).
    pub async fn find_queued(&self, id: &str, look_at: usize) -> Result<Option<QueuedJob>> {
        let broker = &self.inner.broker;
        for lane in broker.queue_names().await? {
            let found = broker
                .queued(&lane, look_at)
                .await?
                .into_iter()
                .find(|job| {
                    crate::envelope::Envelope::decode(&job.payload)
                        .is_ok_and(|envelope| envelope.id.as_str() == id)
                });
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The stored record of a job, if there is one.
    pub async fn record(&self, id: &str) -> Result<Option<JobRecord>> {
        match self.inner.broker.load_record(id).await? {
            Some(bytes) => Ok(Some(JobRecord::decode(&bytes)?)),
            None => Ok(None),
        }
    }
}

/// How to enqueue one job: delay, queue, retries, headers.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    countdown: Option<Duration>,
    eta: Option<SystemTime>,
    queue: Option<String>,
    priority: Option<Priority>,
    retries: Option<u32>,
    headers: BTreeMap<String, String>,
    expires: Option<Expiry>,
    unique: Option<Unique>,
    unique_key: Option<String>,
    debounce: Option<(String, Duration)>,
    /// Headers of psw-tasks itself (a scheduled job's slot), which producers cannot set.
    system_headers: Vec<(SystemHeader, String)>,
    id: Option<JobId>,
}

impl EnqueueOptions {
    /// Options that change nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run no earlier than this long from now.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// Run no earlier than this time (wins over `countdown`).
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.eta = Some(at);
        self
    }

    /// Never run the job if no worker has started it by then: it is recorded REVOKED, with
    /// the reason `expired`, instead (as Celery's `expires`). Takes a time
    /// (`SystemTime`) or a duration from now (`Duration`). The worker that takes the job
    /// judges by its own clock; a job that expires after it started runs to its end, and
    /// a retry due after the expiry is revoked.
    pub fn expires(mut self, expiry: impl Into<Expiry>) -> Self {
        self.expires = Some(expiry.into());
        self
    }

    /// Make this job unique (or unique for another time than its task's `unique`): while
    /// its lock is held, another enqueue with the same key adds nothing and returns a handle
    /// on this job, whose [`TaskHandle::is_duplicate`] says so.
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }

    /// The key of the job's uniqueness, instead of its task and the SHA-256 of its arguments.
    /// A name as queues have: no whitespace, `{`, `}` or `:`, at most 200 characters.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Keep only the last of the jobs enqueued with `key` within `window`: the job waits
    /// `window` (unless a countdown or ETA says later), and runs only if no other job was
    /// enqueued with the key meanwhile; the earlier ones are recorded REVOKED (`superseded`)
    /// when they come due. A key as `unique_key` takes it; not with `unique` or `job_id`.
    pub fn debounce(mut self, key: impl Into<String>, window: Duration) -> Self {
        self.debounce = Some((key.into(), window));
        self
    }

    /// Send to this queue instead of the task's own.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Send to this level of the queue instead of the task's `priority` (normal unless it
    /// says): a worker takes a queue's high jobs before its normal ones, and those before
    /// its low ones.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Allow this many retries instead of the task's `retries`.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Attach a header, readable by the task through `TaskContext::headers`. Names starting
    /// with `psw-` are psw-tasks' own: enqueueing with one is refused.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Attach a header of psw-tasks' own.
    pub(crate) fn system_header(mut self, header: SystemHeader, value: String) -> Self {
        self.system_headers.push((header, value));
        self
    }

    /// Use this job id instead of a fresh one, and make the enqueue idempotent: while a job of
    /// this id is known (queued, delayed or running, for the result TTL past its due time at
    /// least, and while its record is kept), another enqueue with it adds nothing and returns
    /// a handle on that job. A retry after a lost reply thus makes no second job.
    pub fn job_id(mut self, id: impl Into<JobId>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// When a job expires (`EnqueueOptions::expires`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// At this time.
    At(SystemTime),
    /// This long after it is enqueued.
    After(Duration),
}

impl From<SystemTime> for Expiry {
    fn from(at: SystemTime) -> Self {
        Expiry::At(at)
    }
}

impl From<Duration> for Expiry {
    fn from(after: Duration) -> Self {
        Expiry::After(after)
    }
}

/// Milliseconds since the Unix epoch of `at` (0 for a time before it).
/// A job that was enqueued: its id, state and eventual result of type `O`.
pub struct TaskHandle<O> {
    id: JobId,
    client: Client,
    /// The enqueue added nothing: a job with the same unique key held the lock.
    duplicate: bool,
    output: PhantomData<fn() -> O>,
}

impl<O> Clone for TaskHandle<O> {
    fn clone(&self) -> Self {
        TaskHandle {
            id: self.id.clone(),
            client: self.client.clone(),
            duplicate: self.duplicate,
            output: PhantomData,
        }
    }
}

impl<O> fmt::Debug for TaskHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).finish()
    }
}

/// The outcome of a chunk pushed on its own task.
async fn settle_push(push: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    match push.await {
        Ok(outcome) => outcome,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Err(Error::Closed),
    }
}

/// Jobs per pipelined round trip of `enqueue_many_by_name`.
const BULK_CHUNK: usize = 1000;

/// How often a waiter re-reads the record when no finish announcement came: announcements
/// can be lost while the listener reconnects.
const WAIT_RECHECK: Duration = Duration::from_secs(1);

impl<O: DeserializeOwned> TaskHandle<O> {
    /// The job id.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// Whether the enqueue that made this handle added nothing, because a job with the same
    /// unique key held the lock: the handle is that job's.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// The stored record, if any (none while PENDING, or when the task ignores results).
    pub async fn record(&self) -> Result<Option<JobRecord>> {
        self.client.record(self.id.as_str()).await
    }

    /// Cancel the job ([`Client::cancel`]).
    pub async fn cancel(&self) -> Result<()> {
        self.client.cancel(self.id.as_str()).await
    }

    /// The job's state: PENDING until a worker records something.
    pub async fn state(&self) -> Result<State> {
        Ok(self.record().await?.map_or(State::Pending, |r| r.state))
    }

    /// Wait for the result, at most `timeout`. Woken by the worker's announcement of the
    /// finished job, not by polling.
    pub async fn wait(&self, timeout: Duration) -> Result<O> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.client.broker().finished_events().await?;
        loop {
            if let Some(record) = self.record().await? {
                match record.state {
                    State::Success => {
                        return record
                            .result_as::<O>()?
                            .ok_or_else(|| Error::NoResult(self.id.to_string()));
                    }
                    State::Failure => {
                        return Err(Error::JobFailed {
                            id: self.id.to_string(),
                            message: record.last_error().unwrap_or("unknown error").to_owned(),
                        });
                    }
                    State::Revoked => {
                        return Err(Error::JobRevoked {
                            id: self.id.to_string(),
                            reason: record.revoked.unwrap_or(RevokeReason::Unknown),
                        });
                    }
                    _ => {}
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Timeout { id: self.id.to_string(), timeout });
                }
                () = tokio::time::sleep(WAIT_RECHECK) => {}
                () = announced(&mut events, self.id.as_str()) => {}
            }
        }
    }
}

/// Resolves when `id` is announced, or when announcements may have been missed.
async fn announced(events: &mut broadcast::Receiver<Arc<str>>, id: &str) {
    loop {
        match events.recv().await {
            Ok(finished) if &*finished == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn headers_of_the_system_cannot_be_set_by_a_producer() {
        let client = Client::memory();
        let forged = EnqueueOptions::new().header("psw-slot-ms", "1764403200000");
        let err = client
            .enqueue_by_name::<()>("reports.daily", &(), forged)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: EnqueueOptions::header = \"psw-slot-ms\": expected a header \
             name that does not start with `psw-`, which psw-tasks keeps for its own"
        );
        let own = EnqueueOptions::new().header("trace", "abc");
        client
            .enqueue_by_name::<()>("reports.daily", &(), own)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn two_tasks_of_one_name_are_reported_not_dropped() {
        fn never(_: crate::task::TaskContext, _: &[u8]) -> crate::registry::HandlerFuture {
            Box::pin(async { Ok(Vec::new()) })
        }
        static A: crate::registry::TaskDescriptor = crate::registry::TaskDescriptor::new(
            "dup",
            crate::task::TaskOptions::DEFAULT,
            never,
            "a.rs",
            1,
        );
        static B: crate::registry::TaskDescriptor = crate::registry::TaskDescriptor::new(
            "dup",
            crate::task::TaskOptions::DEFAULT,
            never,
            "b.rs",
            2,
        );
        let client = Client {
            inner: Arc::new(Inner {
                broker: Arc::new(MemoryBroker::new()),
                config: Config::default(),
                registry: Registry::from_descriptors([&A, &B]),
                shard_turn: AtomicU64::new(0),
            }),
        };
        let err = client
            .enqueue_by_name::<()>("dup", &(), EnqueueOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::DuplicateTask { name, .. } if name == "dup"),
            "{err}"
        );
    }
}
