//! What a task sees and returns: [`TaskContext`], [`TaskError`], the per-task options, and
//! where progress reports go ([`ProgressSink`], implemented by the worker).

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::envelope::SystemHeader;
use crate::limit::{IN_TASK_WAIT, RateLimit, TaskLimit};
use crate::record::{FailureKind, Progress};
use crate::retry::{Backoff, BackoffKind, Retry};
use crate::rules::{self, Priority};
use crate::unique::Unique;

/// Where a running task's progress reports go: the worker stores them through its writer.
pub(crate) trait ProgressSink: Send + Sync {
    fn report(&self, progress: Progress) -> BoxFuture<'_, crate::error::Result<()>>;
}

/// Where [`TaskContext::rate_limit`] asks: the worker's shared limits, over its broker.
pub(crate) trait RateLimits: Send + Sync {
    /// `None` when one start of the shared limit `name` may happen now (and is counted), else
    /// how long to wait (at most `patience` to ask again, longer to a place in line); an error for a name the worker was not given, or a broker failure.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        patience: Duration,
    ) -> BoxFuture<'a, Result<Option<Duration>, TaskError>>;
}

/// Where [`TaskContext::cancelled`] learns of a cancellation: the worker's view of the
/// cancelled jobs.
pub(crate) trait Cancellations: Send + Sync {
    /// A token cancelled once `job_id` is (at once if it is already); the worker forgets it at
    /// the job's end.
    fn token(&self, job_id: &str) -> CancellationToken;
    /// Whether `job_id` is cancelled, as far as the worker has read.
    fn is_cancelled(&self, job_id: &str) -> bool;
}

/// The options `#[task(..)]` sets, as the worker reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOptions {
    /// Queue the task is sent to unless the caller names another.
    pub queue: &'static str,
    /// How many times a failed attempt is retried (so at most `retries + 1` attempts).
    pub retries: u32,
    /// The delay between attempts.
    pub backoff: Backoff,
    /// Whether no result record is stored for this task.
    pub ignore_result: bool,
    /// The time one attempt may take before it is abandoned as failed.
    pub timeout: Option<Duration>,
    /// Whether a job of this task is unique, and for how long (`EnqueueOptions::unique` may
    /// set or override it per job).
    pub unique: Option<Unique>,
    /// How often a job of this task may start, across every worker (`rate_limit = "60/m"`,
    /// or the name of a shared limit).
    pub rate_limit: Option<TaskLimit<RateLimit>>,
    /// How many jobs of this task may run at once, across every worker (`concurrency = 2`,
    /// or the name of a shared limit).
    pub concurrency: Option<TaskLimit<u32>>,
    /// The level within its queue a job of this task is sent to unless the caller says
    /// (`EnqueueOptions::priority`).
    pub priority: Priority,
}

impl TaskOptions {
    /// The options of a `#[task]` without arguments.
    pub const DEFAULT: TaskOptions = TaskOptions {
        queue: rules::DEFAULT_QUEUE,
        retries: rules::DEFAULT_RETRIES,
        backoff: Backoff {
            kind: BackoffKind::Exponential,
            base: Duration::from_millis(rules::DEFAULT_BACKOFF_BASE_MS),
            max: Duration::from_millis(rules::DEFAULT_BACKOFF_MAX_MS),
            jitter: rules::DEFAULT_JITTER,
        },
        ignore_result: false,
        timeout: None,
        unique: None,
        rate_limit: None,
        concurrency: None,
        priority: Priority::Normal,
    };
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The error a task handler returns.
///
/// Any `std::error::Error` converts into a retryable `TaskError` through `?`, as a failure in a
/// task that declares `retries` is meant to be retried. Use [`TaskError::permanent`] for
/// failures that no retry can fix (bad input, a missing record).
pub struct TaskError {
    message: String,
    retry: Retry,
    retry_after: Option<Duration>,
    kind: FailureKind,
    /// Not a failure: run the job again after `retry_after`, this attempt not counted.
    deferred: bool,
}

impl TaskError {
    /// A failure that is retried after the task's backoff while retries remain.
    pub fn retry(message: impl fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            retry: Retry::Allowed,
            retry_after: None,
            kind: FailureKind::Error,
            deferred: false,
        }
    }

    /// A failure that is never retried.
    pub fn permanent(message: impl fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            retry: Retry::Never,
            retry_after: None,
            kind: FailureKind::Permanent,
            deferred: false,
        }
    }

    /// Not a failure: put the job back to run again after `delay`, as a job over its rate
    /// limit is. The attempt is not counted and no error is recorded; `reason` goes to the
    /// worker's debug log.
    pub fn later(delay: Duration, reason: impl fmt::Display) -> Self {
        TaskError {
            message: reason.to_string(),
            retry: Retry::Allowed,
            retry_after: Some(delay),
            kind: FailureKind::Error,
            deferred: true,
        }
    }

    /// The delay of a [`TaskError::later`]: `None` for a real failure.
    pub fn deferral(&self) -> Option<Duration> {
        self.deferred.then(|| self.retry_after.unwrap_or_default())
    }

    /// Retry after exactly this delay instead of the task's backoff (Celery's `countdown`).
    pub fn after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The message that is stored with the attempt.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the failure may be retried.
    pub fn retry_policy(&self) -> Retry {
        self.retry
    }

    /// The delay the handler asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// What kind of failure it is, as the job record stores it.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    pub(crate) fn with_kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("retry", &self.retry)
            .finish()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E> From<E> for TaskError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        // Keep the whole cause chain: the record is the only place the reason survives.
        TaskError::retry(crate::error::chain(&err))
    }
}

/// What a running task knows about its job, and its way to report progress.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    job_id: String,
    task: String,
    attempt: u32,
    max_retries: u32,
    headers: BTreeMap<String, String>,
    progress: Option<Arc<dyn ProgressSink>>,
    states: Arc<SharedState>,
}

/// What every job of a worker shares: values given with [`crate::WorkerBuilder::state`] (a
/// database pool, an HTTP client), one per type, read with [`TaskContext::state`]; and the
/// worker's shared rate limits, for [`TaskContext::rate_limit`].
#[derive(Default, Clone)]
pub(crate) struct SharedState {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    pub(crate) limits: Option<Arc<dyn RateLimits>>,
    pub(crate) cancellations: Option<Arc<dyn Cancellations>>,
}

impl fmt::Debug for SharedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedState({} values)", self.values.len())
    }
}

impl SharedState {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get(&TypeId::of::<T>())?.downcast_ref::<T>()
    }
}

impl TaskContext {
    pub(crate) fn new(
        job_id: String,
        task: String,
        attempt: u32,
        max_retries: u32,
        headers: BTreeMap<String, String>,
        progress: Option<Arc<dyn ProgressSink>>,
        states: Arc<SharedState>,
    ) -> Self {
        TaskContext {
            inner: Arc::new(ContextInner {
                job_id,
                task,
                attempt,
                max_retries,
                headers,
                progress,
                states,
            }),
        }
    }

    /// A context that belongs to no worker, for calling a task function directly (in unit tests):
    /// progress reports go nowhere, and no state is shared (see [`TaskContext::with_state`]).
    pub fn detached(task: &str) -> Self {
        Self::new(
            crate::envelope::JobId::generate().to_string(),
            task.to_owned(),
            0,
            0,
            BTreeMap::new(),
            None,
            Arc::default(),
        )
    }

    /// This context with `value` shared as [`crate::WorkerBuilder::state`] would share it, for
    /// calling a task function directly.
    pub fn with_state<T: Send + Sync + 'static>(self, value: T) -> Self {
        let mut states = (*self.inner.states).clone();
        states.insert(value);
        let inner = &self.inner;
        Self::new(
            inner.job_id.clone(),
            inner.task.clone(),
            inner.attempt,
            inner.max_retries,
            inner.headers.clone(),
            inner.progress.clone(),
            Arc::new(states),
        )
    }

    /// The slot (ms since the Unix epoch) the beat fired this job for, when a schedule fired it:
    /// the time the job stands for, which a late run should use rather than the clock.
    pub fn slot_ms(&self) -> Option<i64> {
        self.inner
            .headers
            .get(SystemHeader::SlotMs.as_str())?
            .parse()
            .ok()
    }

    /// The value of type `T` the worker shares with its jobs ([`crate::WorkerBuilder::state`]).
    /// Its absence is a permanent error naming the type: retrying cannot make it appear.
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, TaskError> {
        self.inner.states.get::<T>().ok_or_else(|| {
            TaskError::permanent(format!(
                "task `{}` needs a shared `{}`, which this worker was not given (WorkerBuilder::state)",
                self.inner.task,
                std::any::type_name::<T>()
            ))
        })
    }

    /// Take one start of the shared rate limit `name` (configured at the worker's start:
    /// `PSW_RATE_LIMITS`, [`crate::WorkerBuilder::rate_limit`]), across every worker. Over the
    /// limit, a turn up to a second away is reserved and waited for; a later one returns a
    /// [`TaskError::later`], which `?` turns into the job being put back until the limit
    /// allows, the attempt not counted. So call it before work that must not be done twice.
    /// A context of no worker ([`TaskContext::detached`]) has no limits: it never waits.
    pub async fn rate_limit(&self, name: &str) -> Result<(), TaskError> {
        let Some(limits) = &self.inner.states.limits else {
            return Ok(());
        };
        // A turn within the patience is reserved: waited for, not asked for again.
        match limits.acquire(name, IN_TASK_WAIT).await? {
            None => Ok(()),
            Some(wait) if wait <= IN_TASK_WAIT => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Some(wait) => Err(TaskError::later(
                wait,
                format_args!("over the rate limit `{name}`"),
            )),
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// The task's wire name.
    pub fn task_name(&self) -> &str {
        &self.inner.task
    }

    /// Which attempt this is, from 0.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// How many retries the job may use in all.
    pub fn max_retries(&self) -> u32 {
        self.inner.max_retries
    }

    /// Whether this is the job's last allowed attempt.
    pub fn is_last_attempt(&self) -> bool {
        self.inner.attempt >= self.inner.max_retries
    }

    /// The headers: those the producer set, and psw-tasks' own (`psw-` names, see
    /// `docs/protocol.md`).
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.inner.headers
    }

    /// Resolves once the job is cancelled ([`crate::Client::cancel`]): a task that can stop
    /// early awaits it beside its work (`tokio::select!`) and returns. The worker reads
    /// cancellations every half second. A task that never looks runs to its end as usual. A
    /// context of no worker ([`TaskContext::detached`]) is never cancelled.
    pub async fn cancelled(&self) {
        match &self.inner.states.cancellations {
            Some(cancellations) => cancellations.token(&self.inner.job_id).cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Whether the job has been cancelled, for a task that checks between steps.
    pub fn is_cancelled(&self) -> bool {
        self.inner
            .states
            .cancellations
            .as_ref()
            .is_some_and(|cancellations| cancellations.is_cancelled(&self.inner.job_id))
    }

    /// Publish progress: the job's state becomes PROGRESS with these numbers, readable by any
    /// client through [`crate::TaskHandle::record`]. A no-op for tasks that ignore results.
    ///
    /// It never holds the task up for long: when the worker's writer is behind (Redis slow or
    /// away) the report is dropped, and a queued one is waited for at most 2 s. It fails with
    /// [`crate::Error::LeaseLost`] when this worker no longer holds the job.
    pub async fn set_progress(
        &self,
        current: u64,
        total: u64,
        meta: impl Serialize,
    ) -> crate::error::Result<()> {
        let Some(sink) = &self.inner.progress else {
            return Ok(());
        };
        let meta = serde_json::to_value(&meta)
            .map_err(|err| crate::error::Error::encode("progress meta", err))?;
        let meta = (!meta.is_null()).then_some(meta);
        sink.report(Progress {
            current,
            total,
            meta,
        })
        .await
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("job_id", &self.inner.job_id)
            .field("task", &self.inner.task)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_state_is_found_by_type_and_its_absence_names_the_type() {
        let ctx = TaskContext::detached("reports.daily").with_state(42_u32);
        assert_eq!(ctx.state::<u32>().unwrap(), &42);
        let missing = ctx.state::<String>().unwrap_err();
        assert_eq!(missing.kind(), FailureKind::Permanent);
        assert!(
            missing.message().contains("alloc::string::String"),
            "{missing}"
        );
        assert!(missing.message().contains("reports.daily"), "{missing}");
    }

    #[test]
    fn the_slot_comes_from_the_beat_header() {
        let headers = BTreeMap::from([(
            SystemHeader::SlotMs.as_str().to_owned(),
            "1764403200000".to_owned(),
        )]);
        let fired = TaskContext::new("id".into(), "t".into(), 0, 0, headers, None, Arc::default());
        assert_eq!(fired.slot_ms(), Some(1_764_403_200_000));
        assert_eq!(TaskContext::detached("t").slot_ms(), None);
        // The header without the system's prefix is anybody's: it says nothing about a slot.
        let forged = BTreeMap::from([("slot_ms".to_owned(), "1764403200000".to_owned())]);
        let forged = TaskContext::new("id".into(), "t".into(), 0, 0, forged, None, Arc::default());
        assert_eq!(forged.slot_ms(), None);
    }
}
