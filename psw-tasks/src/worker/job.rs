//! Running one delivery: decode, find the task, run it under its limits, and turn the outcome
//! into a settlement (record, retry, dead letter) for the writer.

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
use crate::task::{TaskContext, TaskError};
use crate::{Error, Result};

/// Longest raw payload kept in a dead letter.
const DEAD_PAYLOAD_CAP: usize = 64 * 1024;

pub(crate) async fn run(shared: Arc<Shared>, delivery: Delivery) {
    let settlement = match Envelope::decode(&delivery.payload) {
        Ok(envelope) => run_envelope(&shared, &delivery, envelope).await,
        Err(err) => {
            // Log the size and never the bytes: payloads can carry secrets.
            tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, size = delivery.payload.len(), error = %err, "undecodable job; dead-lettered");
            shared.stats.dead_lettered.inc();
            dead_letter(&delivery, None, None, "decode_error", err.to_string())
        }
    };
    shared.settle(settlement).await;
}

fn dead_letter(
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    record: Option<(crate::JobId, Vec<u8>)>,
    reason: &'static str,
    error: String,
) -> Settlement {
    let mut payload = delivery.payload.clone();
    payload.truncate(DEAD_PAYLOAD_CAP);
    Settlement {
        queue: delivery.queue.clone(),
        entry_id: delivery.entry_id.clone(),
        finished: record.as_ref().map(|(id, _)| id.clone()),
        record,
        retry: None,
        dead: Some(DeadLetter {
            job_id: envelope.map(|e| e.id.clone()),
            task: envelope.map(|e| e.task.clone()),
            reason,
            error,
            payload,
        }),
    }
}

async fn run_envelope(shared: &Arc<Shared>, delivery: &Delivery, envelope: Envelope) -> Settlement {
    let Some(descriptor) = shared.registry.get(&envelope.task) else {
        tracing::error!(id = %envelope.id, task = %envelope.task, queue = %delivery.queue, "no task of this name is registered in this worker; dead-lettered");
        shared.stats.dead_lettered.inc();
        return dead_letter(
            delivery,
            Some(&envelope),
            None,
            "unknown_task",
            format!(
                "no task named `{}` is registered in this worker",
                envelope.task
            ),
        );
    };
    let options = descriptor.options();
    let keep_record = !options.ignore_result;
    let max_retries = envelope.retries.unwrap_or(options.retries);
    let mut record = JobRecord {
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
    };
    let last_progress = Arc::new(Mutex::new(None));
    let progress: Option<Arc<dyn ProgressSink>> = if keep_record {
        shared.write_record(&record).await;
        Some(Arc::new(RecordProgress {
            writes: shared.writes.clone(),
            record: record.clone(),
            last: last_progress.clone(),
        }))
    } else {
        None
    };
    let ctx = TaskContext::new(
        envelope.id.to_string(),
        envelope.task.clone(),
        envelope.attempt,
        max_retries,
        envelope.headers.clone(),
        progress,
    );

    let handler = (descriptor.handler())(ctx, &envelope.args);
    let outcome = match options.timeout {
        Some(limit) => match tokio::time::timeout(limit, CatchUnwind(handler)).await {
            Ok(outcome) => outcome,
            Err(_) => Ok(Err(TaskError::retry(format!(
                "timed out after {}",
                humantime::format_duration(limit)
            ))
            .with_kind("timeout"))),
        },
        None => CatchUnwind(handler).await,
    };
    let outcome = outcome.unwrap_or_else(|panic| {
        shared.stats.panicked.inc();
        Err(TaskError::retry(format!("panicked: {}", panic_message(&*panic))).with_kind("panic"))
    });

    let now = now_ms();
    // The final record keeps the last progress report, so a finished job still shows how far
    // it got.
    record.progress = last_progress
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    let base = Settlement {
        queue: delivery.queue.clone(),
        entry_id: delivery.entry_id.clone(),
        record: None,
        finished: None,
        retry: None,
        dead: None,
    };
    match outcome {
        Ok(result) => {
            shared.stats.succeeded.inc();
            if !keep_record {
                return base;
            }
            record.state = State::Success;
            record.result = Some(result);
            record.finished_ms = Some(now);
            shared.finish(base, &record, true)
        }
        Err(err) => {
            tracing::warn!(id = %envelope.id, task = %envelope.task, attempt = envelope.attempt, kind = err.kind(), error = %err, "attempt failed");
            record.errors.push(AttemptError {
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
            match decision {
                Decision::RetryAfter(delay) => {
                    shared.stats.retried.inc();
                    let due = now + delay.as_millis() as i64;
                    let next = Envelope {
                        attempt: envelope.attempt + 1,
                        eta_ms: Some(due),
                        errors: record.errors.clone(),
                        ..envelope
                    };
                    let payload = match next.encode() {
                        Ok(payload) => payload,
                        Err(err) => {
                            return dead_letter(
                                delivery,
                                Some(&next),
                                None,
                                "decode_error",
                                err.to_string(),
                            );
                        }
                    };
                    record.state = State::Retry;
                    record.retry_at_ms = Some(due);
                    let mut settlement = Settlement {
                        retry: Some(NewJob {
                            queue: next.queue.clone(),
                            payload,
                            due_ms: Some(due),
                        }),
                        ..base
                    };
                    if keep_record {
                        settlement = shared.finish(settlement, &record, false);
                    }
                    settlement
                }
                Decision::Fail => {
                    shared.stats.failed.inc();
                    if !keep_record {
                        return base;
                    }
                    record.state = State::Failure;
                    record.finished_ms = Some(now);
                    // The dead-letter queue takes failed jobs in a later step; the record
                    // already keeps every attempt's error.
                    shared.finish(base, &record, true)
                }
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

/// Progress reports of one running job: its record in the PROGRESS state, written through the
/// same writer as everything else so that it can never land after the job's final state.
struct RecordProgress {
    writes: mpsc::Sender<WriteRequest>,
    record: JobRecord,
    last: Arc<Mutex<Option<Progress>>>,
}

impl ProgressSink for RecordProgress {
    fn report(&self, progress: Progress) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut record = self.record.clone();
            record.state = State::Progress;
            record.progress = Some(progress.clone());
            *self
                .last
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(progress);
            let (done, stored) = oneshot::channel();
            let request = WriteRequest {
                write: Write::Record {
                    id: record.id.clone().into(),
                    record: record.encode()?,
                },
                done: Some(done),
            };
            self.writes.send(request).await.map_err(|_| Error::Closed)?;
            stored.await.map_err(|_| Error::Closed)?
        })
    }
}
