//! The worker's link to a Celery deployment: the connections to its queue lists and its
//! result backend, and what a job made from a Celery message does when it starts and ends
//! (its `STARTED` and result records, the next steps of its canvas). The bridge that takes
//! the messages is `celery.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OnceCell;

use crate::broker::Settlement;
use crate::broker::redis::CeleryRedis;
use crate::celery::{self, CeleryUnknownTasks, Ended, Step};
use crate::config::Config;
use crate::envelope::{Envelope, SystemHeader, now_ms};
use crate::error::{Error, Result};
use crate::record::{JobRecord, State};

/// How often sending a canvas's next step is tried before it is given up (logged).
const SEND_TRIES: u32 = 5;

/// The worker's connections to a Celery deployment: its queues (where messages are taken and
/// a canvas's next steps sent), and where its callers read results.
pub(crate) struct CeleryLink {
    pub(crate) queues: Vec<String>,
    pub(crate) unknown_tasks: CeleryUnknownTasks,
    pub(crate) track_started: bool,
    /// Connected at start when the worker reads Celery queues, else at the first chain step
    /// to send: most workers never need it.
    lists: OnceCell<CeleryRedis>,
    lists_at: (String, &'static str),
    ca_cert: Option<PathBuf>,
    namespace: String,
    results: Option<CeleryRedis>,
    origin: String,
    /// Where a message that is dead-lettered without running goes as a job: the first queue
    /// this worker reads.
    pub(crate) home_queue: String,
    result_ttl: Duration,
}

impl CeleryLink {
    /// Connect as configured: the queue lists on `CELERY_BROKER_URL` (else psw-tasks' own
    /// Redis), results on `CELERY_RESULT_BACKEND`. `None` without any Redis (an in-process
    /// broker).
    pub(crate) async fn connect(
        config: &Config,
        queues: &[String],
        consumer: &str,
        home_queue: &str,
    ) -> Result<Option<Self>> {
        let lists_at = match (&config.celery_broker_url, &config.redis_url) {
            (Some(url), _) => (url.clone(), "CELERY_BROKER_URL"),
            (None, Some(url)) => (url.clone(), config.url_variable()),
            (None, None) if queues.is_empty() => return Ok(None),
            (None, None) => {
                return Err(Error::config(
                    "PSW_CELERY_QUEUES",
                    queues.join(","),
                    "Celery queues on a Redis: set CELERY_BROKER_URL (or REDIS_URL)",
                ));
            }
        };
        let ca_cert = config.redis_ca_cert.clone();
        let results = match &config.celery_result_backend {
            Some(url) => Some(
                CeleryRedis::connect(
                    url,
                    "CELERY_RESULT_BACKEND",
                    ca_cert.as_deref(),
                    &config.namespace,
                )
                .await?,
            ),
            None => None,
        };
        let link = CeleryLink {
            queues: queues.to_vec(),
            unknown_tasks: config.celery_unknown_tasks,
            track_started: config.celery_track_started && results.is_some(),
            lists: OnceCell::new(),
            lists_at,
            ca_cert,
            namespace: config.namespace.clone(),
            results,
            origin: consumer.to_owned(),
            home_queue: home_queue.to_owned(),
            result_ttl: config.result_ttl,
        };
        if !link.queues.is_empty() {
            link.lists().await?;
        }
        Ok(Some(link))
    }

    pub(crate) async fn lists(&self) -> Result<&CeleryRedis> {
        self.lists
            .get_or_try_init(|| {
                CeleryRedis::connect(
                    &self.lists_at.0,
                    self.lists_at.1,
                    self.ca_cert.as_deref(),
                    &self.namespace,
                )
            })
            .await
    }

    /// Record `STARTED` for the Celery caller (`PSW_CELERY_TRACK_STARTED`).
    pub(crate) async fn started(&self, id: &str) {
        let Some(results) = &self.results else {
            return;
        };
        let record = celery::started_record(id, &self.origin, now_ms());
        if let Err(err) = results.store_result(id, &record, self.result_ttl).await {
            tracing::warn!(id, error = %crate::error::chain(&err), "could not store the Celery STARTED record");
        }
    }

    /// A job from a Celery message has ended with `settlement`, not yet stored: write the
    /// result record its caller reads, and send what its canvas says comes next. Both before
    /// the settlement is stored: an outcome is visible before its job is acknowledged, as
    /// ours are, and a crash in between runs the job again, which writes and sends again
    /// (a next step with its id set, as a chain's are, is one job however often it is sent).
    pub(crate) async fn ended(&self, job: &CeleryJob, settlement: &Settlement) {
        let record = settlement
            .record
            .as_ref()
            .and_then(|(_, bytes)| JobRecord::decode(bytes).ok());
        if job.result
            && let Some(results) = &self.results
            && let Some(record) = &record
        {
            write_result(results, record, self.result_ttl).await;
        }
        let Some(message) = &job.message else {
            return;
        };
        let result;
        let ended = match &record {
            Some(record) if record.state == State::Success => {
                result = record.result_json().ok().flatten().unwrap_or(Value::Null);
                Ended::Succeeded(&result)
            }
            _ if settlement.dead.is_some() => Ended::Failed,
            _ => return,
        };
        let (steps, errors) = celery::follow_ups(message, ended, now_ms());
        for error in errors {
            tracing::error!(id = %job.id, error, "a step of the Celery canvas is not readable; skipped");
        }
        for step in steps {
            self.send_step(&job.id, &step).await;
        }
    }

    /// Send one next step, trying again for a while: the job's settlement waits for it.
    async fn send_step(&self, parent: &str, step: &Step) {
        let message = step.message(&self.origin);
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=SEND_TRIES {
            let sent = match self.lists().await {
                Ok(lists) => lists.send(&step.queue, &message).await,
                Err(err) => Err(err),
            };
            match sent {
                Ok(()) => {
                    tracing::debug!(parent, id = %step.id, task = %step.task, queue = %step.queue, "sent the next step of a Celery canvas");
                    return;
                }
                Err(err) if attempt == SEND_TRIES => {
                    tracing::error!(parent, id = %step.id, task = %step.task, queue = %step.queue, error = %crate::error::chain(&err), "could not send the next step of a Celery canvas; it is lost");
                }
                Err(err) => {
                    tracing::warn!(parent, id = %step.id, error = %crate::error::chain(&err), "could not send the next step of a Celery canvas; trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
}

/// What a job from a Celery message needs when it ends, read from its envelope where it is
/// decoded.
#[derive(Debug)]
pub(crate) struct CeleryJob {
    pub(crate) id: String,
    /// The caller wants a result record.
    pub(crate) result: bool,
    /// The Celery message, when it carries a chain, callbacks or errbacks.
    pub(crate) message: Option<String>,
}

impl CeleryJob {
    /// `None` for a job not from a Celery message (or one whose caller wants nothing back).
    pub(crate) fn of(envelope: &Envelope) -> Option<CeleryJob> {
        let result = envelope.header(SystemHeader::CeleryResult).is_some();
        let message = envelope
            .header(SystemHeader::CeleryCanvas)
            .and(envelope.header(SystemHeader::CeleryMessage))
            .map(str::to_owned);
        (result || message.is_some()).then(|| CeleryJob {
            id: envelope.id.to_string(),
            result,
            message,
        })
    }
}

/// Write the result record a Celery caller reads, for a record in a state Celery shows.
async fn write_result(results: &CeleryRedis, record: &JobRecord, ttl: Duration) {
    if !matches!(
        record.state,
        State::Success | State::Failure | State::Retry | State::Revoked
    ) {
        return;
    }
    let result = record.result_json().ok().flatten();
    let stored = celery::result_record(record, result, now_ms());
    if let Err(err) = results.store_result(&record.id, &stored, ttl).await {
        tracing::error!(id = %record.id, error = %crate::error::chain(&err), "could not store the Celery result record");
    }
}
