//! Running one delivery: check it, decode it, find the task, run it under its limits, and turn
//! the outcome into a settlement (record, retry, dead letter) for the writer.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use super::writer::WriteRequest;
use super::{ProgressSink, Shared};
use crate::backend::{AttemptError, JobRecord, Progress, State};
use crate::broker::{BoxFuture, DeadLetter, Delivery, NewJob, Settlement, Write};
use crate::envelope::{Envelope, now_ms};
use crate::registry::HandlerFuture;
use crate::retry::{Decision, decide};
use crate::task::{Retry, TaskContext, TaskError};
use crate::{Error, Result};

/// Longest raw payload kept in a dead letter: enough to replay any job `enqueue` accepts at
/// the default size limit, while a runaway 100 MB entry does not move into the dead letters.
const DEAD_PAYLOAD_CAP: usize = 1024 * 1024;

/// How long a job runs before its STARTED state is recorded.
const STARTED_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// Header counting how often a job of a task unknown here was put back: during a rolling
/// deploy, a worker that knows the task may be about to start.
const UNKNOWN_TASK_TRIES: &str = "psw-unknown-task-tries";
/// How often a job of an unknown task is put back before it is dead-lettered: with the
/// default delay of 15 s, a minute in all.
const UNKNOWN_TASK_RETRIES: u32 = 4;

pub(crate) async fn run(shared: &Arc<Shared>, delivery: &Delivery) {
    let settlement = check_and_run(shared, delivery).await;
    shared.settle(settlement).await;
}

async fn check_and_run(shared: &Arc<Shared>, delivery: &Delivery) -> Settlement {
    // Logs carry the entry, the size and (once decoded) the id and task, never the bytes:
    // arguments can hold secrets.
    if delivery.deliveries > shared.max_deliveries {
        let envelope = Envelope::decode(&delivery.payload).ok();
        tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, id = ?envelope.as_ref().map(|e| e.id.to_string()), deliveries = delivery.deliveries, "job delivered too often (its worker died each time); dead-lettered as poisoned");
        let error = format!(
            "delivered {} times without finishing (limit {}): each attempt ended its worker",
            delivery.deliveries, shared.max_deliveries
        );
        return shared.dead_letter(
            delivery,
            envelope.as_ref(),
            envelope.as_ref().map_or(&[][..], |e| e.errors.as_slice()),
            "poisoned",
            error,
        );
    }
    if delivery.payload.len() > shared.max_message_size {
        tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, size = delivery.payload.len(), limit = shared.max_message_size, "job over the size limit; dead-lettered");
        let error = format!(
            "entry of {} bytes is over the limit of {} bytes",
            delivery.payload.len(),
            shared.max_message_size
        );
        return shared.dead_letter(delivery, None, &[], "oversized", error);
    }
    match Envelope::decode(&delivery.payload) {
        Ok(envelope) => run_envelope(shared, delivery, envelope).await,
        Err(err) => {
            tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, size = delivery.payload.len(), error = %err, "undecodable job; dead-lettered");
            shared.dead_letter(
                delivery,
                None,
                &[],
                "decode_error",
                crate::error::chain(&err),
            )
        }
    }
}

/// Return a delivery that was fetched but never started: it goes back through the queue's
/// delayed set, due at once, and the entry is acknowledged in the same transaction.
pub(crate) async fn give_back(shared: &Shared, delivery: Delivery) {
    let mut settlement = Settlement::of(&delivery);
    settlement.retry = Some(Box::new(NewJob {
        queue: delivery.queue.to_string(),
        payload: delivery.payload,
        due_ms: None,
    }));
    shared.settle(settlement).await;
}

impl Shared {
    /// A settlement that moves the delivery to the dead letters, with `errors` (every
    /// attempt's, or the envelope's history when the job never ran here).
    fn dead_letter(
        &self,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        errors: &[AttemptError],
        reason: &'static str,
        error: String,
    ) -> Settlement {
        self.stats.dead_lettered.inc();
        if let Some((index, _)) = envelope.and_then(|e| self.registry.lookup(&e.task)) {
            self.stats.tasks[index].dead_lettered.inc();
        }
        let truncated = delivery.payload.len() > DEAD_PAYLOAD_CAP;
        let mut settlement = Settlement::of(delivery);
        settlement.dead = Some(Box::new(DeadLetter {
            job_id: envelope.map(|e| e.id.clone()),
            task: envelope.map(|e| e.task.clone()),
            reason,
            error,
            errors: rmp_serde::to_vec_named(errors).unwrap_or_else(|_| vec![0x90]),
            payload: delivery.payload[..delivery.payload.len().min(DEAD_PAYLOAD_CAP)].to_vec(),
            truncated,
        }));
        settlement
    }
}

/// Put a job of a task this worker does not know back for a later look, or dead-letter it
/// once it has waited long enough.
fn unknown_task(shared: &Shared, delivery: &Delivery, mut envelope: Envelope) -> Settlement {
    let tries: u32 = envelope
        .headers
        .get(UNKNOWN_TASK_TRIES)
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
            "unknown_task",
            error,
        );
    }
    tracing::warn!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, tries, "no task of this name here (a deploy in progress?); putting it back");
    envelope
        .headers
        .insert(UNKNOWN_TASK_TRIES.to_owned(), (tries + 1).to_string());
    let mut settlement = Settlement::of(delivery);
    match envelope.encode() {
        Ok(payload) => {
            settlement.retry = Some(Box::new(NewJob {
                queue: delivery.queue.to_string(),
                payload,
                due_ms: Some(now_ms() + shared.unknown_task_delay.as_millis() as i64),
            }));
            settlement
        }
        Err(err) => shared.dead_letter(
            delivery,
            Some(&envelope),
            &envelope.errors,
            "unknown_task",
            err.to_string(),
        ),
    }
}

async fn run_envelope(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    mut envelope: Envelope,
) -> Settlement {
    let Some((index, descriptor)) = shared.registry.lookup(&envelope.task) else {
        return unknown_task(shared, delivery, envelope);
    };
    // The counters were made from this same registry, one per task.
    let tally = &shared.stats.tasks[index];
    let options = descriptor.options();
    let max_retries = envelope.retries.unwrap_or(options.retries);
    // Only a task that keeps results has a record, and so progress to report.
    let progress = (!options.ignore_result).then(|| {
        Arc::new(RecordProgress {
            writes: shared.writes.clone(),
            delivery: delivery.clone_without_payload(),
            record: JobRecord {
                id: envelope.id.to_string(),
                task: envelope.task.clone(),
                state: State::Started,
                attempt: envelope.attempt,
                result: None,
                errors: envelope.errors.clone(),
                progress: None,
                created_ms: envelope.created_ms,
                started_ms: Some(now_ms()),
                finished_ms: None,
                retry_at_ms: None,
            },
            last: Mutex::new(None),
        })
    });
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
    let handler = (descriptor.handler())(ctx, &envelope.args);
    let attempt = async {
        match options.timeout {
            Some(limit) => match tokio::time::timeout(limit, CatchUnwind(handler)).await {
                Ok(outcome) => outcome,
                Err(_) => Ok(Err(TaskError::retry(format!(
                    "timed out after {}",
                    humantime::format_duration(limit)
                ))
                .with_kind("timeout"))),
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
                        shared.write_record(delivery, &progress.record).await;
                    }
                    attempt.await
                }
            }
        }
        None => attempt.await,
    };
    let outcome = outcome.unwrap_or_else(|panic| {
        shared.stats.panicked.inc();
        Err(TaskError::retry(format!("panicked: {}", panic_message(&*panic))).with_kind("panic"))
    });
    if outcome.is_err() {
        envelope.id = context.job_id().into();
        envelope.task = context.task_name().to_owned();
        envelope.headers = context.headers().clone();
    }
    // Dropped before the record is taken back below: the context holds the progress sink.
    drop(context);

    let now = now_ms();
    // The final record keeps the last progress report, so a finished job still shows how far
    // it got. The handler, and with it the context, is done: the record is ours alone unless
    // the task kept a clone of its context.
    let mut record = progress.map(|progress| {
        let last = progress.last().take();
        let mut record =
            Arc::try_unwrap(progress).map_or_else(|shared| shared.record.clone(), |own| own.record);
        record.progress = last;
        record
    });
    let base = Settlement::of(delivery);
    let err = match outcome {
        Ok(result) => {
            tally.succeeded.inc();
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
    tally.failed.inc();
    tracing::warn!(id = %envelope.id, task = %envelope.task, attempt = envelope.attempt, kind = err.kind(), error = %err, "attempt failed");
    let mut errors = envelope.errors.clone();
    errors.push(AttemptError {
        attempt: envelope.attempt,
        kind: err.kind().to_owned(),
        message: err.message().to_owned(),
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
            let next = Envelope {
                attempt: envelope.attempt + 1,
                eta_ms: Some(due),
                errors,
                ..envelope
            };
            let payload = match next.encode() {
                Ok(payload) => payload,
                Err(err) => {
                    return shared.dead_letter(
                        delivery,
                        Some(&next),
                        &next.errors,
                        "decode_error",
                        err.to_string(),
                    );
                }
            };
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
                    shared.finish(settlement, &record, false)
                }
                None => settlement,
            }
        }
        Decision::Fail => {
            shared.stats.failed.inc();
            let reason = match (err.kind(), err.retry_policy()) {
                ("bad_args", _) => "bad_args",
                ("timeout", _) => "timed_out",
                (_, Retry::Never) => "permanent_error",
                _ => "retries_exhausted",
            };
            tracing::error!(id = %envelope.id, task = %envelope.task, attempts = errors.len(), reason, "job failed for good; dead-lettered");
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

impl Delivery {
    /// The delivery's identity, for fencing the writes about it.
    fn clone_without_payload(&self) -> Delivery {
        Delivery {
            queue: self.queue.clone(),
            entry_id: self.entry_id.clone(),
            payload: Vec::new(),
            deliveries: self.deliveries,
        }
    }
}

/// Progress reports of one running job: its record in the PROGRESS state, written through the
/// same writer as everything else so that it can never land after the job's final state.
struct RecordProgress {
    writes: mpsc::Sender<WriteRequest>,
    delivery: Delivery,
    /// The job's record as it started.
    record: JobRecord,
    /// The last report, kept for the final record.
    last: Mutex<Option<Progress>>,
}

impl RecordProgress {
    fn last(&self) -> std::sync::MutexGuard<'_, Option<Progress>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ProgressSink for RecordProgress {
    fn report(&self, progress: Progress) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut record = self.record.clone();
            record.state = State::Progress;
            record.progress = Some(progress.clone());
            *self.last() = Some(progress);
            let (done, stored) = oneshot::channel();
            let request = WriteRequest {
                write: Write::record_of(&self.delivery, &record)?,
                done: Some(done),
            };
            self.writes.send(request).await.map_err(|_| Error::Closed)?;
            stored.await.map_err(|_| Error::Closed)?
        })
    }
}

impl Write {
    /// A record write fenced on `delivery`.
    pub(crate) fn record_of(delivery: &Delivery, record: &JobRecord) -> Result<Write> {
        Ok(Write::Record {
            queue: delivery.queue.clone(),
            entry_id: delivery.entry_id.clone(),
            deliveries: delivery.deliveries,
            id: record.id.clone().into(),
            record: record.encode()?,
        })
    }
}
