//! Celery interop: the bridge that takes messages off Celery's queue lists and makes each a
//! job of ours (the same id, the task's own queue), or a job marked to be dead-lettered with
//! its reason. A message is moved atomically into this worker's own taken list, added as a job once
//! (its id held, so a message put back after a crash is not added twice), and only then
//! dropped from the taken list; the reaper puts back what a dead worker had taken. From then
//! on it is an ordinary job: leases, retries, dead letters. `docs/celery.md` has the mapping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::celery_link::CeleryLink;
use super::shared::Shared;
use crate::broker::redis::CeleryRedis;
use crate::broker::{DeadReason, NewJob};
use crate::celery::{CeleryMessage, CeleryUnknownTasks};
use crate::envelope::{Envelope, JobId, SystemHeader, VERSION, now_ms};
use crate::error::Result;
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

/// Take messages off the Celery queues until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, link: Arc<CeleryLink>, stop: CancellationToken) {
    if link.queues.is_empty() {
        return;
    }
    let lists = match link.lists().await {
        Ok(lists) => lists,
        Err(err) => {
            tracing::error!(error = %crate::error::chain(&err), "no connection to the Celery queues");
            return;
        }
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
                Ok(Some(message)) => match bridge(&shared, &link, lists, queue, &message).await {
                    Ok(Taken::Added) => {}
                    Ok(Taken::GivenBack) => {
                        resting
                            .insert(queue.clone(), tokio::time::Instant::now() + FOREIGN_BACKOFF);
                    }
                    Err(err) => {
                        // The message stays in the taken list: the reaper puts it back.
                        tracing::error!(queue, error = %crate::error::chain(&err), "could not make a Celery message a job; it is put back later");
                        rest(&stop, FOREIGN_BACKOFF).await;
                    }
                },
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

/// What became of a taken message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// A job of ours: to run, or to be dead-lettered.
    Added,
    /// Given back to the Celery workers: its task is not linked here.
    GivenBack,
}

/// Make one taken message a job, give it back, or make it a job marked to be dead-lettered
/// with its reason (a message we cannot read, a chord or group, an unknown task when so
/// configured); then drop it from the taken list.
async fn bridge(
    shared: &Shared,
    link: &CeleryLink,
    lists: &CeleryRedis,
    queue: &str,
    message: &[u8],
) -> Result<Taken> {
    let parsed = match CeleryMessage::parse(message) {
        Ok(parsed) => parsed,
        Err(err) => {
            tracing::error!(queue, size = message.len(), error = %err, "not a Celery message we can read; dead-lettered with its bytes");
            let why = format!("not a Celery message psw-tasks reads, from queue `{queue}`: {err}");
            let refused = refused(
                &link.home_queue,
                queue,
                message,
                DeadReason::DecodeError,
                why,
            );
            return add(shared, lists, queue, message, refused, None).await;
        }
    };
    let descriptor = shared.registry.get(&parsed.task);
    let refusal = match (descriptor, parsed.unsupported_canvas) {
        (None, _) if link.unknown_tasks == CeleryUnknownTasks::Leave => {
            tracing::debug!(queue, task = %parsed.task, id = %parsed.id, "a Celery message for a task not linked here; left to the Celery workers");
            lists.give_back(queue, &shared.consumer, message).await?;
            return Ok(Taken::GivenBack);
        }
        (None, _) => Some((
            DeadReason::UnknownTask,
            format!(
                "no task named `{}` is linked into the workers reading Celery queue `{queue}`",
                crate::redact::printable(&parsed.task)
            ),
        )),
        (Some(_), Some(canvas)) => Some((
            DeadReason::UnsupportedCanvas,
            format!("part of a Celery {canvas}: psw-tasks does not run chords and groups yet"),
        )),
        (Some(_), None) => None,
    };
    let mut envelope = job_of(
        &parsed,
        descriptor.map_or(link.home_queue.as_str(), |task| task.options().queue),
        message,
    );
    if let Some((reason, why)) = refusal {
        tracing::error!(queue, task = %parsed.task, id = %parsed.id, reason = %reason, "a Celery message psw-tasks does not run; dead-lettered");
        envelope.set_header(SystemHeader::CeleryRefused, reason.as_str().to_owned());
        envelope.set_header(SystemHeader::CeleryRefusedWhy, why);
        envelope.eta_ms = None;
        return add(shared, lists, queue, message, envelope, None).await;
    }
    if link.track_started && !parsed.ignore_result {
        envelope.set_header(SystemHeader::CeleryResult, "started".to_owned());
    }
    let due_ms = envelope.eta_ms;
    add(shared, lists, queue, message, envelope, due_ms).await
}

/// The job of a Celery message, in `queue`.
fn job_of(parsed: &CeleryMessage, queue: &str, message: &[u8]) -> Envelope {
    let mut headers = BTreeMap::new();
    let mut header = |name: SystemHeader, value: String| {
        headers.insert(name.as_str().to_owned(), value);
    };
    header(SystemHeader::CeleryArgs, "json".to_owned());
    if !parsed.ignore_result {
        header(SystemHeader::CeleryResult, "final".to_owned());
    }
    // Parsed, so JSON, so UTF-8.
    header(
        SystemHeader::CeleryMessage,
        String::from_utf8_lossy(message).into_owned(),
    );
    if parsed.follow_ups {
        header(SystemHeader::CeleryCanvas, "follow".to_owned());
    }
    if let Some(limit) = parsed.time_limit {
        header(
            SystemHeader::CeleryTimeLimitMs,
            limit.as_millis().max(1).to_string(),
        );
    }
    let now = now_ms();
    Envelope {
        attempt: parsed.retries,
        eta_ms: parsed.eta_ms.filter(|&eta| eta > now),
        expires_ms: parsed.expires_ms,
        ..celery_job(
            JobId::from(parsed.id.as_str()),
            &parsed.task,
            queue,
            parsed.arguments.clone(),
            headers,
        )
    }
}

/// A job made of a Celery message, before what the message says of its timing.
fn celery_job(
    id: JobId,
    task: &str,
    queue: &str,
    args: Vec<u8>,
    headers: BTreeMap<String, String>,
) -> Envelope {
    Envelope {
        v: VERSION,
        id,
        task: task.to_owned(),
        queue: queue.to_owned(),
        args,
        attempt: 0,
        retries: None,
        created_ms: now_ms(),
        eta_ms: None,
        headers,
        errors: Vec::new(),
        errors_dropped: 0,
        expires_ms: None,
        unique_key: None,
        unique_release: None,
        debounce_key: None,
    }
}

/// The job standing for a message that cannot be read: its bytes as its arguments, kept
/// whole in the dead letter it becomes.
fn refused(target: &str, queue: &str, message: &[u8], reason: DeadReason, why: String) -> Envelope {
    let mut headers = BTreeMap::new();
    headers.insert(
        SystemHeader::CeleryRefused.as_str().to_owned(),
        reason.as_str().to_owned(),
    );
    headers.insert(SystemHeader::CeleryRefusedWhy.as_str().to_owned(), why);
    // For a look at it (the dashboard shows headers); the bytes are the arguments, whatever
    // they are.
    if let Ok(text) = std::str::from_utf8(message) {
        headers.insert(
            SystemHeader::CeleryMessage.as_str().to_owned(),
            text.to_owned(),
        );
    }
    celery_job(
        JobId::generate(),
        &format!("celery:{queue}"),
        target,
        message.to_vec(),
        headers,
    )
}

/// Add the job of a taken message (once: its id is held, so a message put back after a crash
/// is not added twice), then drop the message from the taken list.
async fn add(
    shared: &Shared,
    lists: &CeleryRedis,
    queue: &str,
    message: &[u8],
    envelope: Envelope,
    due_ms: Option<i64>,
) -> Result<Taken> {
    let now = now_ms();
    let hold = shared.result_ttl
        + Duration::from_millis(due_ms.map_or(0, |due| (due - now).max(0) as u64));
    let id = envelope.id.to_string();
    let added = shared
        .broker
        .push_once(
            NewJob {
                queue: envelope.queue.clone(),
                payload: envelope.encode()?,
                due_ms,
            },
            &id,
            hold,
        )
        .await?;
    if !added {
        tracing::info!(queue, id = %id, "a Celery message already taken as a job (put back after a crash); not added again");
    }
    lists.forget(queue, &shared.consumer, message).await?;
    Ok(Taken::Added)
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
