//! Running one delivery: check it, decode it, find the task, run it under its limits, and turn
//! the outcome into a settlement (record, retry, dead letter) for the writer.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::activity::Start;
use super::celery_link::CeleryJob;
use super::limits::Wait;
use super::progress::RecordProgress;
use super::shared::Shared;
use crate::broker::{DeadReason, Delivery, NewJob, Settlement};
use crate::envelope::{Envelope, SystemHeader, now_ms};
use crate::limit::slot_wait;
use crate::metrics::ExecutionOutcome;
use crate::record::{AttemptError, FailureKind, JobRecord, MAX_ERROR_MESSAGE, State, cap_message};
use crate::registry::HandlerFuture;
use crate::retry::{Decision, decide};
use crate::revoke::RevokeReason;
use crate::task::{ProgressSink, TaskContext, TaskError};

/// How long a job runs before its STARTED state is recorded.
const STARTED_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// How often a job of an unknown task is put back before it is dead-lettered: with the
/// default delay of 15 s, a minute in all.
const UNKNOWN_TASK_RETRIES: u32 = 4;

/// Run one delivery on runner number `runner`, and hand its settlement to the writer.
pub(crate) async fn run(shared: &Arc<Shared>, delivery: &Delivery, runner: usize) {
    let (settlement, celery) = check_and_run(shared, delivery, runner).await;
    if let (Some(link), Some(job)) = (&shared.celery, &celery) {
        link.ended(job, &settlement).await;
    }
    shared.settle(settlement).await;
}

/// The delivery's settlement, and what a job from a Celery message needs when it ends (read
/// from the envelope here, where it is decoded anyway).
async fn check_and_run(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    runner: usize,
) -> (Settlement, Option<CeleryJob>) {
    // Logs carry the entry, the size and (once decoded) the id and task, never the bytes:
    // arguments can hold secrets.
    if delivery.deliveries > shared.max_deliveries {
        let envelope = Envelope::decode(&delivery.payload).ok();
        tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, id = ?envelope.as_ref().map(|e| e.id.to_string()), deliveries = delivery.deliveries, "job delivered too often (its worker died each time); dead-lettered as poisoned");
        let error = format!(
            "delivered {} times without finishing (limit {}): each attempt ended its worker",
            delivery.deliveries, shared.max_deliveries
        );
        let mut settlement = shared.dead_letter(
            delivery,
            envelope.as_ref(),
            envelope.as_ref().map_or(&[][..], |e| e.errors.as_slice()),
            DeadReason::Poisoned,
            error,
        );
        settlement.unlock = envelope
            .as_ref()
            .and_then(Envelope::releasable_lock)
            .map(Box::new);
        return (settlement, None);
    }
    if delivery.payload.len() > shared.max_message_size {
        tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, size = delivery.payload.len(), limit = shared.max_message_size, "job over the size limit; dead-lettered");
        let error = format!(
            "entry of {} bytes is over the limit of {} bytes",
            delivery.payload.len(),
            shared.max_message_size
        );
        let settlement = shared.dead_letter(delivery, None, &[], DeadReason::Oversized, error);
        return (settlement, None);
    }
    match Envelope::decode(&delivery.payload) {
        Ok(envelope) => {
            let celery = CeleryJob::of(&envelope);
            (
                run_envelope(shared, delivery, envelope, runner).await,
                celery,
            )
        }
        Err(err) => {
            tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, size = delivery.payload.len(), error = %crate::error::chain(&err), "undecodable job; dead-lettered");
            let settlement = shared.dead_letter(
                delivery,
                None,
                &[],
                DeadReason::DecodeError,
                crate::error::chain(&err),
            );
            (settlement, None)
        }
    }
}

/// Put a job of a task this worker does not know back for a later look, or dead-letter it
/// once it has waited long enough.
fn unknown_task(shared: &Shared, delivery: &Delivery, mut envelope: Envelope) -> Settlement {
    let tries: u32 = envelope
        .header(SystemHeader::UnknownTaskTries)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if tries >= UNKNOWN_TASK_RETRIES {
        tracing::error!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, "no worker knows this task; dead-lettered");
        let error = format!(
            "no task named `{}` is registered in the workers of queue `{}` (looked {} times, {} apart)",
            envelope.task,
            delivery.queue,
            tries + 1,
            humantime::format_duration(shared.unknown_task_delay)
        );
        return shared.dead_letter(
            delivery,
            Some(&envelope),
            &envelope.errors,
            DeadReason::UnknownTask,
            error,
        );
    }
    tracing::warn!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, tries, "no task of this name here (a deploy in progress?); putting it back");
    envelope.set_header(SystemHeader::UnknownTaskTries, (tries + 1).to_string());
    put_back(shared, delivery, envelope, shared.unknown_task_delay)
}

/// Dead-letter a job made of a Celery message psw-tasks does not run (a chord or group, a
/// message it cannot read, a task no worker links), with the reason the bridge gave; its
/// Celery caller reads a FAILURE with it.
fn refuse_celery(
    shared: &Shared,
    delivery: &Delivery,
    reason: String,
    envelope: Envelope,
) -> Settlement {
    let reason = DeadReason::from_wire(&reason).unwrap_or(DeadReason::Unknown);
    let why = envelope
        .header(SystemHeader::CeleryRefusedWhy)
        .unwrap_or("a Celery message psw-tasks does not run")
        .to_owned();
    tracing::error!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, reason = %reason, "a Celery message psw-tasks does not run; dead-lettered");
    let now = now_ms();
    let errors = vec![AttemptError {
        attempt: envelope.attempt,
        at_ms: now,
        kind: FailureKind::Permanent,
        message: why.clone(),
    }];
    let dead = shared.dead_letter(delivery, Some(&envelope), &errors, reason, why);
    if envelope.header(SystemHeader::CeleryResult).is_none() {
        return dead;
    }
    let record = JobRecord {
        id: envelope.id.to_string(),
        task: envelope.task.clone(),
        state: State::Failure,
        attempt: envelope.attempt,
        result: None,
        errors,
        errors_dropped: 0,
        progress: None,
        created_ms: envelope.created_ms,
        started_ms: None,
        finished_ms: Some(now),
        retry_at_ms: None,
        revoked: None,
    };
    shared.finish(dead, &record, true)
}

/// Put a job back on its queue to be taken again after `wait`, as it is (its attempt not
/// counted, no error added): a task this worker does not know, a limit that does not let it
/// start yet, or a task that asked to run later.
fn put_back(
    shared: &Shared,
    delivery: &Delivery,
    mut envelope: Envelope,
    wait: Duration,
) -> Settlement {
    let due = now_ms() + wait.as_millis() as i64;
    envelope.eta_ms = Some(due);
    let mut settlement = Settlement::of(delivery);
    match envelope.encode() {
        Ok(payload) => {
            settlement.retry = Some(Box::new(NewJob {
                queue: delivery.queue.to_string(),
                payload,
                due_ms: Some(due),
            }));
            settlement
        }
        Err(err) => shared.dead_letter(
            delivery,
            Some(&envelope),
            &envelope.errors,
            DeadReason::EncodeError,
            crate::error::chain(&err),
        ),
    }
}

/// Put back a job its limits do not let start yet: until its rate limit's time, or, with
/// every concurrency slot taken, for a wait that grows with each try.
fn wait_for_limit(
    shared: &Shared,
    delivery: &Delivery,
    mut envelope: Envelope,
    why: Wait,
) -> Settlement {
    let wait = match why {
        Wait::Rate(wait) => {
            shared.stats.rate_limited.inc();
            tracing::debug!(id = %envelope.id, task = %envelope.task, wait_ms = wait.as_millis() as u64, "over its rate limit; put back until it may start");
            wait
        }
        Wait::Slot => {
            shared.stats.slot_waits.inc();
            let waits: u32 = envelope
                .header(SystemHeader::SlotWaits)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            envelope.set_header(SystemHeader::SlotWaits, (waits + 1).to_string());
            let wait = slot_wait(waits, fastrand::f64());
            tracing::debug!(id = %envelope.id, task = %envelope.task, wait_ms = wait.as_millis() as u64, "every concurrency slot is taken; put back");
            wait
        }
    };
    put_back(shared, delivery, envelope, wait)
}

/// Revoke a debounced job that a later one of its key replaced: acknowledged, not run,
/// recorded REVOKED (`superseded`) if its task keeps records.
fn supersede(
    shared: &Shared,
    delivery: &Delivery,
    envelope: Envelope,
    keeps_record: bool,
) -> Settlement {
    shared.stats.superseded.inc();
    tracing::debug!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, "a later job of the same debounce key replaced this one; revoked, not run");
    revoked(
        shared,
        delivery,
        envelope,
        keeps_record,
        RevokeReason::Superseded,
    )
}

/// Revoke a job cancelled before it started: acknowledged, not run, recorded REVOKED
/// (`cancelled`) if its task keeps records, its unique lock released.
fn cancel(
    shared: &Shared,
    delivery: &Delivery,
    envelope: Envelope,
    keeps_record: bool,
) -> Settlement {
    shared.stats.cancelled.inc();
    tracing::info!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, "job cancelled before it started; revoked, not run");
    revoked(
        shared,
        delivery,
        envelope,
        keeps_record,
        RevokeReason::Cancelled,
    )
}

/// Revoke a job whose expiry has passed: acknowledged, not run, recorded REVOKED (`expired`)
/// if its task keeps records.
fn expire(
    shared: &Shared,
    delivery: &Delivery,
    envelope: Envelope,
    expired_at: i64,
    keeps_record: bool,
) -> Settlement {
    shared.stats.expired.inc();
    tracing::info!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, late_ms = now_ms() - expired_at, "job expired before it started; revoked, not run");
    revoked(
        shared,
        delivery,
        envelope,
        keeps_record,
        RevokeReason::Expired,
    )
}

/// The settlement of a job that will not run: acknowledged, recorded REVOKED for `reason`
/// if its task keeps records, and its unique lock released (it never starts, so a lock held
/// until its start goes too).
fn revoked(
    shared: &Shared,
    delivery: &Delivery,
    envelope: Envelope,
    keeps_record: bool,
    reason: RevokeReason,
) -> Settlement {
    let mut settlement = Settlement::of(delivery);
    settlement.unlock = envelope.releasable_lock().map(Box::new);
    if !keeps_record {
        return settlement;
    }
    let record = JobRecord {
        id: envelope.id.to_string(),
        task: envelope.task,
        state: State::Revoked,
        attempt: envelope.attempt,
        result: None,
        errors: envelope.errors,
        errors_dropped: envelope.errors_dropped,
        progress: None,
        created_ms: envelope.created_ms,
        started_ms: None,
        finished_ms: Some(now_ms()),
        retry_at_ms: None,
        revoked: Some(reason),
    };
    shared.finish(settlement, &record, true)
}

/// Run the job; a settlement that schedules no further attempt ends it, and releases the
/// unique lock it holds until its end.
async fn run_envelope(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    envelope: Envelope,
    runner: usize,
) -> Settlement {
    let unlock = envelope.lock_released_at_end();
    let mut settlement = attempt(shared, delivery, envelope, runner).await;
    if settlement.retry.is_none() && settlement.unlock.is_none() {
        settlement.unlock = unlock.map(Box::new);
    }
    settlement
}

async fn attempt(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    mut envelope: Envelope,
    runner: usize,
) -> Settlement {
    if let Some(reason) = envelope.header(SystemHeader::CeleryRefused) {
        return refuse_celery(shared, delivery, reason.to_owned(), envelope);
    }
    let found = shared.registry.lookup(&envelope.task);
    if let Some(expired_at) = envelope.expires_ms.filter(|&at| now_ms() >= at) {
        // An unknown task's job expires too: no worker will run it any more.
        let keeps_record = found.is_none_or(|(_, descriptor)| !descriptor.options().ignore_result);
        return expire(shared, delivery, envelope, expired_at, keeps_record);
    }
    if shared.revocations.is_revoked(envelope.id.as_str()) {
        let keeps_record = found.is_none_or(|(_, descriptor)| !descriptor.options().ignore_result);
        return cancel(shared, delivery, envelope, keeps_record);
    }
    let Some((index, descriptor)) = found else {
        return unknown_task(shared, delivery, envelope);
    };
    // A Celery job's arguments are JSON `[args, kwargs]`: mapped onto the parameters here,
    // where the task is known, once (a retry carries the mapped ones). One that does not fit
    // fails as `bad_args`, naming the argument.
    let mut bad_celery_args = None;
    if envelope
        .headers
        .remove(SystemHeader::CeleryArgs.as_str())
        .is_some()
    {
        match crate::celery::positional(descriptor.parameters(), &envelope.args) {
            Ok(args) => envelope.args = args,
            Err(message) => bad_celery_args = Some(message),
        }
    }
    // The counters were made from this same registry, one per task.
    let tally = &shared.stats.tasks[index];
    let options = descriptor.options();
    let max_retries = envelope.retries.unwrap_or(options.retries);
    let started_ms = now_ms();
    // Only a task that keeps results has a record, and so progress to report; and a job whose
    // Celery canvas takes its result to the next step.
    let keeps_record =
        !options.ignore_result || envelope.header(SystemHeader::CeleryCanvas).is_some();
    // A Celery message's own time limit comes before the task's.
    let time_limit = envelope
        .header(SystemHeader::CeleryTimeLimitMs)
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .or(options.timeout);
    let celery_started = envelope.header(SystemHeader::CeleryResult) == Some("started");
    let progress = keeps_record.then(|| {
        Arc::new(RecordProgress::new(
            shared.writes.clone(),
            delivery.clone_without_payload(),
            JobRecord {
                id: envelope.id.to_string(),
                task: envelope.task.clone(),
                state: State::Started,
                attempt: envelope.attempt,
                result: None,
                errors: envelope.errors.clone(),
                errors_dropped: envelope.errors_dropped,
                progress: None,
                created_ms: envelope.created_ms,
                started_ms: Some(started_ms),
                finished_ms: None,
                retry_at_ms: None,
                revoked: None,
            },
        ))
    });
    // Debounced: only the last job of its key runs, and it clears the key (so the next opens
    // a new window) and runs on, retries and all, without asking again.
    if let Some(key) = envelope.debounce_key.take() {
        match shared
            .broker
            .take_debounce(&delivery.queue, &key, envelope.id.as_str())
            .await
        {
            Ok(true) => {}
            Ok(false) => return supersede(shared, delivery, envelope, !options.ignore_result),
            // Unknown: run it; twice is better than never.
            Err(err) => {
                tracing::warn!(id = %envelope.id, error = %crate::error::chain(&err), "could not check the job's debounce key; running it")
            }
        }
    }
    // Global limits: a job that may not start yet goes back to its queue, holding no runner
    // while it waits. Tasks without limits skip the call.
    let slot = if options.rate_limit.is_some() || options.concurrency.is_some() {
        match shared
            .limits
            .admit(options, &envelope.task, envelope.id.as_str(), shared.lease)
            .await
        {
            Ok(slot) => slot,
            Err(why) => return wait_for_limit(shared, delivery, envelope, why),
        }
    } else {
        None
    };
    // Unique until started: it starts now, so another job of the key may be enqueued. A
    // release that fails leaves the lock to expire; the job runs all the same.
    if let Some((key, id)) = envelope.lock_released_at_start()
        && let Err(err) = shared
            .broker
            .release_unique(&delivery.queue, key, id.as_str())
            .await
    {
        tracing::warn!(id = %id, error = %crate::error::chain(&err), "could not release the job's unique lock at its start; it expires by itself");
    }
    // Waiting since it was due: enqueued, or its ETA or retry time came. Timed from here,
    // after the limits' and locks' round trips, which are neither wait nor run.
    let started_ms = now_ms();
    let due_ms = envelope.eta_ms.unwrap_or(0).max(envelope.created_ms);
    let schedule = envelope.header(SystemHeader::Schedule).map(|name| {
        let slot = envelope.header(SystemHeader::SlotMs);
        (name.to_owned(), slot.and_then(|slot| slot.parse().ok()))
    });
    shared.activity.started(
        runner,
        Start {
            id: envelope.id.as_str(),
            task: index,
            attempt: envelope.attempt,
            started_ms,
            waited_ms: (started_ms - due_ms).max(0) as u64,
            schedule,
            progress: progress.as_ref(),
        },
    );
    // The context takes the envelope's id, name and headers (no copies on the hot path); a
    // failed attempt puts them back from its own handle for the next envelope.
    let ctx = TaskContext::new(
        envelope.id.take(),
        std::mem::take(&mut envelope.task),
        envelope.attempt,
        max_retries,
        std::mem::take(&mut envelope.headers),
        progress
            .clone()
            .map(|progress| progress as Arc<dyn ProgressSink>),
        shared.states.clone(),
    );

    let context = ctx.clone();
    let handler = match bad_celery_args {
        Some(message) => Box::pin(std::future::ready(Err(
            TaskError::permanent(message).with_kind(FailureKind::BadArgs)
        ))) as crate::registry::HandlerFuture,
        None => (descriptor.handler())(ctx, &envelope.args),
    };
    let attempt = async {
        match time_limit {
            Some(limit) => match tokio::time::timeout(limit, CatchUnwind(handler)).await {
                Ok(outcome) => outcome,
                Err(_) => Ok(Err(TaskError::retry(format!(
                    "timed out after {}",
                    humantime::format_duration(limit)
                ))
                .with_kind(FailureKind::Timeout))),
            },
            None => CatchUnwind(handler).await,
        }
    };
    let outcome = match &progress {
        // STARTED is written only for a job still running after a moment: most jobs finish
        // first, and their one record write is the final one. The attempt is not polled while
        // STARTED is queued, so it cannot overtake a progress report.
        Some(progress) => {
            tokio::pin!(attempt);
            tokio::select! {
                biased;
                outcome = &mut attempt => outcome,
                () = tokio::time::sleep(STARTED_AFTER) => {
                    if progress.last().is_none() {
                        shared.write_record(delivery, progress.started());
                    }
                    // Awaited, not spawned: the outcome's record must not be overtaken.
                    if celery_started && let Some(link) = &shared.celery {
                        link.started(context.job_id()).await;
                    }
                    attempt.await
                }
            }
        }
        None => attempt.await,
    };
    if let Some(slot) = slot {
        shared.limits.release(slot).await;
    }
    let outcome = outcome.unwrap_or_else(|panic| {
        shared.stats.panicked.inc();
        Err(
            TaskError::retry(format!("panicked: {}", panic_message(&*panic)))
                .with_kind(FailureKind::Panic),
        )
    });
    // A result too large to store fails the job, rather than a write that Redis may refuse.
    let outcome = outcome.and_then(|result| {
        if progress.is_some() && result.len() > shared.max_result_size {
            return Err(TaskError::permanent(format!(
                "the result is {} bytes, over the limit of {} bytes (PSW_MAX_RESULT_SIZE)",
                result.len(),
                shared.max_result_size
            ))
            .with_kind(FailureKind::OversizedResult));
        }
        Ok(result)
    });
    if outcome.is_err() {
        envelope.id = context.job_id().into();
        envelope.task = context.task_name().to_owned();
        envelope.headers = context.headers().clone();
    }
    shared.revocations.finished(context.job_id());
    // Dropped before the record is taken back below: the context holds the progress sink.
    drop(context);

    let now = now_ms();
    // An attempt that ended (not one put back) is kept with its run time.
    let ended = |outcome: ExecutionOutcome| shared.activity.ended(runner, Some(outcome), now);
    // The final record keeps the last progress report, so a finished job still shows how far
    // it got. The handler, and with it the context, is done: the record is ours alone unless
    // the task kept a clone of its context.
    let mut record = progress.map(RecordProgress::into_record);
    let base = Settlement::of(delivery);
    let err = match outcome {
        Ok(result) => {
            tally.succeeded.inc();
            ended(ExecutionOutcome::Succeeded);
            let Some(mut record) = record else {
                return base;
            };
            record.state = State::Success;
            record.result = Some(result);
            record.finished_ms = Some(now);
            return shared.finish(base, &record, true);
        }
        Err(err) => err,
    };
    if let Some(wait) = err.deferral() {
        // Not a failure: the task asked to run later (over a shared rate limit, say).
        shared.stats.rate_limited.inc();
        shared.activity.ended(runner, None, now);
        tracing::debug!(id = %envelope.id, task = %envelope.task, wait_ms = wait.as_millis() as u64, reason = %err.message(), "the task asked to run later; put back");
        let settlement = put_back(shared, delivery, envelope, wait);
        return match record {
            // A STARTED record may be stored already: the job is waiting again.
            Some(mut record) if settlement.retry.is_some() => {
                record.state = State::Pending;
                record.started_ms = None;
                record.retry_at_ms = settlement.retry.as_ref().and_then(|job| job.due_ms);
                shared.finish(settlement, &record, false)
            }
            _ => settlement,
        };
    }
    tally.failed.inc();
    let message = cap_message(err.message(), MAX_ERROR_MESSAGE);
    tracing::warn!(id = %envelope.id, task = %envelope.task, attempt = envelope.attempt, kind = %err.kind(), error = %message, "attempt failed");
    let mut errors = envelope.errors.clone();
    errors.push(AttemptError {
        attempt: envelope.attempt,
        kind: err.kind(),
        message,
        at_ms: now,
    });
    let decision = decide(
        &options.backoff,
        err.retry_policy(),
        err.retry_after(),
        envelope.attempt,
        max_retries,
        fastrand::f64(),
    );
    if let Some(record) = &mut record {
        record.errors = errors.clone();
    }
    match decision {
        Decision::RetryAfter(delay) => {
            let due = now + delay.as_millis() as i64;
            let mut next = Envelope {
                attempt: envelope.attempt + 1,
                eta_ms: Some(due),
                errors,
                ..envelope
            };
            // Checked as an enqueue is: a history that would not fit is shrunk, the arguments
            // never, so that a job near the limit keeps its retries.
            let payload = match next.encode_within(shared.max_message_size) {
                Ok(payload) => payload,
                Err(err) => {
                    ended(ExecutionOutcome::Failed);
                    return shared.dead_letter(
                        delivery,
                        Some(&next),
                        &next.errors,
                        DeadReason::EncodeError,
                        crate::error::chain(&err),
                    );
                }
            };
            ended(ExecutionOutcome::Retried);
            tally.retried.inc();
            let mut settlement = base;
            // The queue the job came from, not the one its envelope names: a producer that
            // wrote another name must not send the retry where no worker looks.
            settlement.retry = Some(Box::new(NewJob {
                queue: delivery.queue.to_string(),
                payload,
                due_ms: Some(due),
            }));
            match record {
                Some(mut record) => {
                    record.state = State::Retry;
                    record.retry_at_ms = Some(due);
                    record.errors = next.errors.clone();
                    record.errors_dropped = next.errors_dropped;
                    shared.finish(settlement, &record, false)
                }
                None => settlement,
            }
        }
        Decision::Fail => {
            ended(ExecutionOutcome::Failed);
            shared.stats.failed.inc();
            let reason = DeadReason::after_failure(err.kind(), err.retry_policy());
            tracing::error!(id = %envelope.id, task = %envelope.task, attempts = errors.len(), reason = %reason, "job failed for good; dead-lettered");
            let dead = shared.dead_letter(
                delivery,
                Some(&envelope),
                &errors,
                reason,
                err.message().to_owned(),
            );
            match record {
                Some(mut record) => {
                    record.state = State::Failure;
                    record.finished_ms = Some(now);
                    shared.finish(dead, &record, true)
                }
                None => dead,
            }
        }
    }
}

/// Polls a handler and turns a panic into an error value, so that one job cannot take down
/// the worker. The handler is boxed, hence `Unpin`, so no pinning tricks are needed.
struct CatchUnwind(HandlerFuture);

impl Future for CatchUnwind {
    type Output = std::thread::Result<Result<Vec<u8>, TaskError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(outcome)) => Poll::Ready(Ok(outcome)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string panic payload")
}
