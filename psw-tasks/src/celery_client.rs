//! Calling tasks that still run on Celery workers, from Rust, during a migration: protocol-2
//! messages on the Celery queue lists, and their results read from Celery's result records.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::broker::redis::CeleryRedis;
use crate::celery::{self, CeleryOutcome, Step};
use crate::config::Config;
use crate::envelope::{epoch_ms, now_ms};
use crate::error::{Error, Result};
use crate::process::process_name;

/// How often a wait reads the result record.
const POLL: Duration = Duration::from_millis(50);

/// Sends tasks to Celery workers as Celery's own `send_task` does, and reads their results.
#[derive(Clone)]
pub struct CeleryClient {
    broker: Arc<CeleryRedis>,
    results: Arc<CeleryRedis>,
    origin: String,
}

impl std::fmt::Debug for CeleryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeleryClient")
            .field("origin", &self.origin)
            .finish()
    }
}

impl CeleryClient {
    /// Connect to the Celery deployment's Redis (`CELERY_BROKER_URL`, else `REDIS_URL`) and
    /// its result backend (`CELERY_RESULT_BACKEND`, else the broker's Redis).
    pub async fn connect(config: &Config) -> Result<Self> {
        let (variable, url) = match (&config.celery_broker_url, &config.redis_url) {
            (Some(url), _) => ("CELERY_BROKER_URL", url),
            (None, Some(url)) => (config.url_variable(), url),
            (None, None) => {
                return Err(Error::config(
                    "CELERY_BROKER_URL",
                    "",
                    "the Redis URL of the Celery deployment (or REDIS_URL)",
                ));
            }
        };
        let ca = config.redis_ca_cert.as_deref();
        let broker = Arc::new(CeleryRedis::connect(url, variable, ca, &config.namespace).await?);
        let results = match &config.celery_result_backend {
            Some(backend) => Arc::new(
                CeleryRedis::connect(backend, "CELERY_RESULT_BACKEND", ca, &config.namespace)
                    .await?,
            ),
            None => broker.clone(),
        };
        Ok(CeleryClient {
            broker,
            results,
            origin: process_name("rust"),
        })
    }

    /// Send the Celery task `task` to the Celery queue `queue` (`celery` is Celery's default)
    /// with positional `args` and keyword `kwargs`, as `send_task` would.
    pub async fn send_task(
        &self,
        task: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
        queue: &str,
    ) -> Result<CeleryTask> {
        self.send_task_with(task, args, kwargs, &CeleryOptions::new(queue))
            .await
    }

    /// [`CeleryClient::send_task`] with `apply_async`'s timing options: a countdown or ETA,
    /// an expiry, a time limit.
    pub async fn send_task_with(
        &self,
        task: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
        options: &CeleryOptions,
    ) -> Result<CeleryTask> {
        crate::keys::validate_name("queue", &options.queue)?;
        let mut step = Step::new(task, args.to_vec(), kwargs.clone(), &options.queue);
        let now = now_ms();
        step.eta_ms = match (options.countdown, options.eta) {
            (Some(delay), _) => Some(now + delay.as_millis() as i64),
            (None, Some(at)) => Some(epoch_ms(at)),
            (None, None) => None,
        };
        step.expires_ms = options.expires.map(|after| now + after.as_millis() as i64);
        step.time_limit = [options.time_limit.map(|limit| limit.as_secs_f64()), None];
        self.broker
            .send(&options.queue, &step.message(&self.origin))
            .await?;
        tracing::debug!(task, id = %step.id, queue = %options.queue, "sent to the Celery workers");
        Ok(CeleryTask {
            id: step.id,
            results: self.results.clone(),
        })
    }
}

/// How [`CeleryClient::send_task_with`] sends a task: Celery's `apply_async` options.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CeleryOptions {
    queue: String,
    countdown: Option<Duration>,
    eta: Option<SystemTime>,
    expires: Option<Duration>,
    time_limit: Option<Duration>,
}

impl CeleryOptions {
    /// To the Celery queue `queue` (`celery` is Celery's default), at once.
    pub fn new(queue: impl Into<String>) -> Self {
        CeleryOptions {
            queue: queue.into(),
            countdown: None,
            eta: None,
            expires: None,
            time_limit: None,
        }
    }

    /// Run it no sooner than `delay` from now (`countdown`).
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// Run it no sooner than `at` (`eta`); a countdown wins over it.
    pub fn eta(mut self, at: SystemTime) -> Self {
        self.eta = Some(at);
        self
    }

    /// Not run if taken later than `after` from now (`expires`): recorded `REVOKED`.
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = Some(after);
        self
    }

    /// Stop it after `limit` (`time_limit`, the hard one).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
}

/// A task sent to the Celery workers, as Python's `AsyncResult`.
#[derive(Clone)]
pub struct CeleryTask {
    id: String,
    results: Arc<CeleryRedis>,
}

impl std::fmt::Debug for CeleryTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeleryTask").field("id", &self.id).finish()
    }
}

impl CeleryTask {
    /// The Celery task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its Celery state: `PENDING` until a Celery worker records another.
    pub async fn state(&self) -> Result<String> {
        Ok(match self.read().await? {
            None => "PENDING".to_owned(),
            Some(CeleryOutcome::Running(state)) => state,
            Some(CeleryOutcome::Success(_)) => "SUCCESS".to_owned(),
            Some(CeleryOutcome::Failure(_)) => "FAILURE".to_owned(),
            Some(CeleryOutcome::Revoked) => "REVOKED".to_owned(),
        })
    }

    /// Wait up to `timeout` for its result, as `AsyncResult.get`: the task's return value as
    /// JSON; a failure is [`Error::JobFailed`] with the Python exception's type and message.
    pub async fn wait(&self, timeout: Duration) -> Result<Value> {
        let deadline = now_ms() + timeout.as_millis() as i64;
        loop {
            match self.read().await? {
                Some(CeleryOutcome::Success(value)) => return Ok(value),
                Some(CeleryOutcome::Failure(message)) => {
                    return Err(Error::JobFailed {
                        id: self.id.clone(),
                        message,
                    });
                }
                Some(CeleryOutcome::Revoked) => {
                    return Err(Error::JobFailed {
                        id: self.id.clone(),
                        message: "revoked by Celery".to_owned(),
                    });
                }
                Some(CeleryOutcome::Running(_)) | None => {}
            }
            if now_ms() >= deadline {
                return Err(Error::Timeout {
                    id: self.id.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn read(&self) -> Result<Option<CeleryOutcome>> {
        Ok(self
            .results
            .result(&self.id)
            .await?
            .as_deref()
            .and_then(celery::outcome))
    }
}
