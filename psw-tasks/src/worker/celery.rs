//! Celery interop: the bridge that takes messages off Celery's queue lists and makes each a
//! job of ours (the same id, the task's own queue), and the result records Celery callers
//! read. A message is moved atomically into this worker's own taken list, added as a job once
//! (its id held, so a message put back after a crash is not added twice), and only then
//! dropped from the taken list; the reaper puts back what a dead worker had taken. From then
//! on it is an ordinary job: leases, retries, dead letters. `docs/celery.md` has the mapping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::shared::Shared;
use crate::broker::redis::CeleryRedis;
use crate::broker::{NewJob, Settlement};
use crate::celery::{self, CeleryMessage};
use crate::config::Config;
use crate::envelope::{Envelope, JobId, SystemHeader, VERSION, now_ms};
use crate::error::{Error, Result};
use crate::record::{JobRecord, State};
use crate::stats::Heartbeat;

/// How long one queue's read blocks: short, so that several queues and a shutdown are served.
const TAKE_BLOCK: Duration = Duration::from_millis(500);
/// How long a queue is left alone after a message for a task no worker here knows was given
/// back to the Celery workers: not to take it again at once.
const FOREIGN_BACKOFF: Duration = Duration::from_secs(1);
/// How often the taken lists of dead workers are put back.
const REAP_EVERY: Duration = Duration::from_secs(30);
/// A worker whose heartbeat is older than this many leases is taken for dead by the reaper.
const DEAD_AFTER_LEASES: u32 = 4;

/// The worker's connections to a Celery deployment: its queues, and where its callers read
/// results.
pub(crate) struct CeleryLink {
    queues: Vec<String>,
    lists: Option<CeleryRedis>,
    pub(crate) results: Option<Arc<CeleryRedis>>,
}

impl CeleryLink {
    /// Connect as configured: the queue lists on `CELERY_BROKER_URL` (else psw-tasks' own
    /// Redis), results on `CELERY_RESULT_BACKEND`. `None` when neither is asked for.
    pub(crate) async fn connect(config: &Config, queues: &[String]) -> Result<Option<Self>> {
        let lists = match (&config.celery_broker_url, &config.redis_url) {
            _ if queues.is_empty() => None,
            (Some(url), _) => Some(
                CeleryRedis::connect(
                    url,
                    "CELERY_BROKER_URL",
                    config.redis_ca_cert.as_deref(),
                    &config.namespace,
                )
                .await?,
            ),
            (None, Some(url)) => Some(
                CeleryRedis::connect(
                    url,
                    config.url_variable(),
                    config.redis_ca_cert.as_deref(),
                    &config.namespace,
                )
                .await?,
            ),
            (None, None) => {
                return Err(Error::config(
                    "PSW_CELERY_QUEUES",
                    queues.join(","),
                    "Celery queues on a Redis: set CELERY_BROKER_URL (or REDIS_URL)",
                ));
            }
        };
        let results = match &config.celery_result_backend {
            Some(url) => Some(Arc::new(
                CeleryRedis::connect(
                    url,
                    "CELERY_RESULT_BACKEND",
                    config.redis_ca_cert.as_deref(),
                    &config.namespace,
                )
                .await?,
            )),
            None => None,
        };
        if lists.is_none() && results.is_none() {
            return Ok(None);
        }
        Ok(Some(CeleryLink {
            queues: queues.to_vec(),
            lists,
            results,
        }))
    }
}

/// Take messages off the Celery queues until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, link: Arc<CeleryLink>, stop: CancellationToken) {
    let Some(lists) = &link.lists else {
        return;
    };
    let mut resting: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut next_reap = tokio::time::Instant::now();
    tracing::info!(queues = ?link.queues, "taking Celery messages");
    while !stop.is_cancelled() {
        if tokio::time::Instant::now() >= next_reap {
            next_reap = tokio::time::Instant::now() + REAP_EVERY;
            if let Err(err) = reap(&shared, lists).await {
                tracing::warn!(error = %crate::error::chain(&err), "could not put back what dead workers took off the Celery queues");
            }
        }
        let now = tokio::time::Instant::now();
        let awake: Vec<&String> = link
            .queues
            .iter()
            .filter(|queue| resting.get(*queue).is_none_or(|until| *until <= now))
            .collect();
        if awake.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(FOREIGN_BACKOFF / 4) => continue,
            }
        }
        for queue in awake {
            let taken = tokio::select! {
                () = stop.cancelled() => return,
                taken = lists.take(queue, &shared.consumer, TAKE_BLOCK) => taken,
            };
            match taken {
                Ok(Some(message)) => {
                    if let Err(err) = bridge(&shared, lists, queue, &message).await {
                        // The message stays in the taken list: the reaper puts it back.
                        tracing::error!(queue, error = %crate::error::chain(&err), "could not make a Celery message a job; it is put back later");
                        rest(&stop, FOREIGN_BACKOFF).await;
                    } else if !known(&shared, &message) {
                        resting
                            .insert(queue.clone(), tokio::time::Instant::now() + FOREIGN_BACKOFF);
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(queue, error = %crate::error::chain(&err), "could not read the Celery queue; trying again");
                    rest(&stop, FOREIGN_BACKOFF).await;
                }
            }
        }
    }
}

async fn rest(stop: &CancellationToken, time: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(time) => {}
    }
}

/// Whether a message names a task linked here (else it was given back).
fn known(shared: &Shared, message: &[u8]) -> bool {
    CeleryMessage::parse(message).map_or(true, |parsed| shared.registry.get(&parsed.task).is_some())
}

/// Make one taken message a job, give it back, or keep it as an undecodable job (so that it
/// is dead-lettered with its bytes); then drop it from the taken list.
async fn bridge(shared: &Shared, lists: &CeleryRedis, queue: &str, message: &[u8]) -> Result<()> {
    let parsed = match CeleryMessage::parse(message) {
        Ok(parsed) => parsed,
        Err(err) => {
            tracing::error!(queue, size = message.len(), error = %err, "not a Celery message we can read; dead-lettered with its bytes");
            // Pushed as it is: the worker that takes it finds no envelope and dead-letters it
            // as `decode_error`, the bytes kept for a look.
            let target = shared
                .registry
                .queues()
                .into_iter()
                .next()
                .unwrap_or_else(|| crate::rules::DEFAULT_QUEUE.to_owned());
            shared
                .broker
                .push(vec![NewJob {
                    queue: target,
                    payload: message.to_vec(),
                    due_ms: None,
                }])
                .await?;
            return lists.forget(queue, &shared.consumer, message).await;
        }
    };
    let Some(descriptor) = shared.registry.get(&parsed.task) else {
        tracing::debug!(queue, task = %parsed.task, id = %parsed.id, "a Celery message for a task not linked here; left to the Celery workers");
        return lists.give_back(queue, &shared.consumer, message).await;
    };
    if let Some(canvas) = parsed.canvas {
        tracing::warn!(queue, task = %parsed.task, id = %parsed.id, canvas, "a Celery message with a canvas psw-tasks does not run yet; left to the Celery workers");
        return lists.give_back(queue, &shared.consumer, message).await;
    }
    let mut headers = BTreeMap::new();
    headers.insert(
        SystemHeader::CeleryArgs.as_str().to_owned(),
        "json".to_owned(),
    );
    if !parsed.ignore_result {
        headers.insert(
            SystemHeader::CeleryResult.as_str().to_owned(),
            "redis".to_owned(),
        );
    }
    let now = now_ms();
    let due_ms = parsed.eta_ms.filter(|&eta| eta > now);
    let envelope = Envelope {
        v: VERSION,
        id: JobId::from(parsed.id.as_str()),
        task: parsed.task.clone(),
        queue: descriptor.options().queue.to_owned(),
        args: parsed.arguments,
        attempt: parsed.retries,
        retries: None,
        created_ms: now,
        eta_ms: due_ms,
        headers,
        errors: Vec::new(),
        errors_dropped: 0,
        expires_ms: parsed.expires_ms,
        unique_key: None,
        unique_release: None,
        debounce_key: None,
    };
    let hold =
        shared.result_ttl + Duration::from_millis(due_ms.map_or(0, |due| (due - now) as u64));
    let added = shared
        .broker
        .push_once(
            NewJob {
                queue: envelope.queue.clone(),
                payload: envelope.encode()?,
                due_ms,
            },
            &parsed.id,
            hold,
        )
        .await?;
    if !added {
        tracing::info!(queue, id = %parsed.id, "a Celery message already taken as a job (put back after a crash); not added again");
    }
    lists.forget(queue, &shared.consumer, message).await
}

/// Put back what workers that stopped beating had taken and not made jobs.
async fn reap(shared: &Shared, lists: &CeleryRedis) -> Result<()> {
    let now = now_ms();
    let dead_after = (shared.lease * DEAD_AFTER_LEASES).as_millis() as i64;
    let live: Vec<String> = shared
        .broker
        .workers()
        .await?
        .into_iter()
        .filter(|(_, beat)| {
            Heartbeat::decode(beat).is_ok_and(|beat| now - beat.seen_ms < dead_after)
        })
        .map(|(name, _)| name)
        .chain([shared.consumer.clone()])
        .collect();
    let restored = lists.reap(&live).await?;
    if restored > 0 {
        tracing::warn!(
            restored,
            "Celery messages taken by workers that died were put back"
        );
    }
    Ok(())
}

/// Write the result record a Celery caller reads for a job that came from a Celery message
/// and asked for one (the caller checked its header), before the settlement is stored: an
/// outcome is visible before its job is acknowledged, as ours are (a crash between runs the
/// job again, which writes it again).
pub(crate) async fn write_result(shared: &Shared, results: &CeleryRedis, settlement: &Settlement) {
    let Some((_, bytes)) = &settlement.record else {
        return;
    };
    let Ok(record) = JobRecord::decode(bytes) else {
        return;
    };
    if !matches!(
        record.state,
        State::Success | State::Failure | State::Retry | State::Revoked
    ) {
        return;
    }
    let result = record.result_json().ok().flatten();
    let stored = celery::result_record(&record, result, now_ms());
    if let Err(err) = results
        .store_result(&record.id, &stored, shared.result_ttl)
        .await
    {
        tracing::error!(id = %record.id, error = %crate::error::chain(&err), "could not store the Celery result record");
    }
}
