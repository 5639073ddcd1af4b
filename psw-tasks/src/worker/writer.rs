//! The one task that writes records and settles deliveries, in batches: one round trip for
//! everything that finished since the last one, in the order it finished.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::counters::Counters;
use super::in_flight::InFlight;
use crate::broker::{Applied, Broker, DeadLetter, DeadReason, Settlement, Write};
use crate::dead::DeadHook;
use crate::envelope::{Envelope, JobId, now_ms};
use crate::error::{Error, Result};
use crate::record::{AttemptError, FailureKind, JobRecord, State};

pub(crate) struct WriteRequest {
    pub(crate) write: Write,
    /// Told once the write is stored (progress reports wait for it).
    pub(crate) done: Option<oneshot::Sender<Result<()>>>,
}

/// Most writes in one round trip.
const BATCH: usize = 1024;

/// What the writer needs besides its queue.
pub(crate) struct Writer {
    pub(crate) broker: Arc<dyn Broker>,
    /// The worker's consumer name: writes are fenced on it.
    pub(crate) consumer: String,
    pub(crate) ttl: Duration,
    pub(crate) stats: Arc<Counters>,
    pub(crate) on_dead: Option<DeadHook>,
    /// Settled deliveries are released from it once stored.
    pub(crate) in_flight: Arc<InFlight>,
    /// The number of the next batch applied: a retried batch keeps its number, so that the
    /// broker knows it from a new one.
    pub(crate) batches: AtomicU64,
}

/// Runs until every sender is gone and the channel is drained. While Redis refuses the writes
/// it retries with backoff, until `abandon` fires: what is not settled then stays pending and
/// is delivered again, which is the at-least-once promise.
pub(crate) async fn run(
    writer: Writer,
    mut requests: mpsc::Receiver<WriteRequest>,
    abandon: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut writes = Vec::with_capacity(BATCH);
    let mut waiters = Vec::with_capacity(BATCH);
    loop {
        if requests.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        for request in batch.drain(..) {
            writes.push(request.write);
            waiters.push(request.done);
        }
        debug_assert!(
            settles_each_delivery_once(&writes),
            "a batch settles each delivery once (see broker::Write)"
        );
        drop_superseded(&mut writes, &mut waiters);
        let mut applied = apply_in_chunks(&writer, &writes, &abandon).await;
        if let Some(applied) = &mut applied {
            report(&writer, &writes, applied);
            recreate_groups(&writer, &applied.missing_queues).await;
            store_when_redis_can(&writer, &writes, applied, &abandon).await;
            store_failures_instead(&writer, &writes, applied, &abandon).await;
            writer
                .in_flight
                .release(writes.iter().filter_map(|write| match write {
                    Write::Settle(settlement) => Some((
                        &settlement.queue,
                        settlement.entry_id.as_str(),
                        settlement.deliveries,
                    )),
                    Write::Record { .. } => None,
                }));
        }
        for (index, waiter) in waiters.drain(..).enumerate() {
            let Some(waiter) = waiter else { continue };
            let outcome = match &applied {
                None => Err(Error::Closed),
                Some(applied) if applied.fenced.contains(&index) => {
                    Err(Error::LeaseLost(job_of(&writes[index])))
                }
                Some(applied) => match applied.failed.iter().find(|(failed, _)| *failed == index) {
                    Some((_, reason)) => Err(Error::Store {
                        what: format!("the record of job {}", job_of(&writes[index])),
                        reason: reason.clone(),
                    }),
                    None => Ok(()),
                },
            };
            let _ = waiter.send(outcome);
        }
        writes.clear();
    }
}

fn job_of(write: &Write) -> String {
    match write {
        Write::Record { id, .. } => id.to_string(),
        Write::Settle(settlement) => settlement.entry_id.clone(),
    }
}

/// Log and count what was fenced and trimmed, and run the dead-letter hook.
fn report(writer: &Writer, writes: &[Write], applied: &Applied) {
    for &index in &applied.fenced {
        let (queue, entry) = writes[index].delivery();
        if applied.missing_queues.contains(queue) {
            // Said once per queue below: the entry went with its stream or group.
            continue;
        }
        writer.stats.fenced.inc();
        tracing::warn!(queue = %queue, entry = %entry, "write refused: another worker took this job over after its lease ran out; its outcome stands");
    }
    for queue in &applied.missing_queues {
        tracing::error!(queue = %queue, "the queue's stream or consumer group is gone (deleted, or Redis restarted empty): the deliveries of it this worker held are lost with it, and their writes are refused");
    }
    if applied.dead_trimmed > 0 {
        tracing::warn!(
            trimmed = applied.dead_trimmed,
            "dead-letter queue over its caps (PSW_DLQ_MAX_LEN, PSW_DLQ_MAX_BYTES): its oldest entries were removed"
        );
    }
    let Some(hook) = &writer.on_dead else { return };
    let dead = writes
        .iter()
        .enumerate()
        .filter_map(|(index, write)| match write {
            Write::Settle(settlement) if applied.stored(index) => settlement
                .dead
                .as_ref()
                .map(|letter| (letter, &settlement.queue)),
            _ => None,
        });
    for ((letter, queue), (entry_id, bytes)) in dead.zip(&applied.dead_entries) {
        let job = letter.stored(queue, entry_id.clone(), *bytes);
        // Off the writer's path: a slow alert must not hold up settling other jobs.
        tokio::spawn(hook.call(job));
    }
}

/// Make the consumer groups of `queues` exist again, from the start of each stream, so that
/// jobs enqueued after the loss are delivered.
async fn recreate_groups(writer: &Writer, queues: &[Arc<str>]) {
    if queues.is_empty() {
        return;
    }
    let queues: Vec<String> = queues.iter().map(|queue| queue.to_string()).collect();
    if let Err(err) = writer.broker.prepare(&queues).await {
        tracing::warn!(error = %crate::error::chain(&err), "could not create the consumer groups again; the fetch loop tries next");
    }
}

/// Whether Redis refused a write for now, not for good: out of memory (`OOM`, at `maxmemory`
/// under `noeviction`) clears once memory is freed, so the outcome must wait, not be failed.
fn refused_for_now(reason: &str) -> bool {
    reason.starts_with("OOM")
}

/// Apply again, with backoff, the writes Redis refused for now (out of memory), until each is
/// stored, fenced or refused for good, merging their results into `applied`. The writer waits
/// meanwhile: the claims stay held, so the worker fetches no more work it could not settle.
/// Writes still refused when `abandon` fires stay refused, and their deliveries pending.
async fn store_when_redis_can(
    writer: &Writer,
    writes: &[Write],
    applied: &mut Applied,
    abandon: &CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let again: Vec<usize> = applied
            .failed
            .iter()
            .filter(|(_, reason)| refused_for_now(reason))
            .map(|(index, _)| *index)
            .collect();
        if again.is_empty() {
            return;
        }
        tracing::warn!(
            writes = again.len(),
            "Redis is out of memory (maxmemory): job outcomes wait until it can store them"
        );
        tokio::select! {
            () = abandon.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
        let retried: Vec<Write> = again.iter().map(|&index| writes[index].clone()).collect();
        let Some(result) = apply_in_chunks(writer, &retried, abandon).await else {
            return;
        };
        report(writer, &retried, &result);
        applied.failed.retain(|(index, _)| !again.contains(index));
        applied
            .fenced
            .extend(result.fenced.iter().map(|&at| again[at]));
        applied.failed.extend(
            result
                .failed
                .into_iter()
                .map(|(at, reason)| (again[at], reason)),
        );
        applied.dead_trimmed += result.dead_trimmed;
    }
}

/// For each settlement the broker refused, store in its place one it can: the job failed for
/// good, saying why its outcome could not be stored, and dead-lettered (without bytes when it
/// has none to give). If even that is refused, the delivery stays pending and runs again once
/// its lease is over: lost never, wedged never.
async fn store_failures_instead(
    writer: &Writer,
    writes: &[Write],
    applied: &Applied,
    abandon: &CancellationToken,
) {
    let mut instead = Vec::new();
    for (index, reason) in &applied.failed {
        if refused_for_now(reason) {
            // Only at shutdown: `store_when_redis_can` gave up waiting.
            let (queue, entry) = writes[*index].delivery();
            tracing::warn!(queue = %queue, entry = %entry, "Redis is still out of memory at shutdown: this outcome is not stored, and the job runs again after its lease");
            continue;
        }
        match &writes[*index] {
            Write::Record { id, .. } => {
                tracing::error!(id = %id, reason, "a progress record could not be stored; the job goes on");
            }
            Write::Settle(settlement) => {
                tracing::error!(queue = %settlement.queue, entry = %settlement.entry_id, reason, "a job's outcome could not be stored; failing it for good instead");
                instead.push(Write::Settle(unstorable(settlement, reason)));
            }
        }
    }
    if instead.is_empty() {
        return;
    }
    let Some(applied) = apply_with_retry(writer, &instead, abandon).await else {
        return;
    };
    report(writer, &instead, &applied);
    for (index, reason) in &applied.failed {
        let (queue, entry) = instead[*index].delivery();
        tracing::error!(queue = %queue, entry = %entry, reason, "not even the failure could be stored; the job stays pending and runs again after its lease");
    }
}

/// A settlement of the same delivery that records the job as failed because `reason` kept its
/// outcome from being stored, and dead-letters it with what bytes it has.
fn unstorable(settlement: &Settlement, reason: &str) -> Settlement {
    let error = format!("the outcome could not be stored: {reason}");
    let now = now_ms();
    let record = settlement
        .record
        .as_ref()
        .and_then(|(_, bytes)| JobRecord::decode(bytes).ok());
    let retry_envelope = settlement
        .retry
        .as_ref()
        .and_then(|retry| Envelope::decode(&retry.payload).ok());
    let job_id = settlement
        .record
        .as_ref()
        .map(|(id, _)| id.clone())
        .or_else(|| {
            settlement
                .dead
                .as_ref()
                .and_then(|dead| dead.job_id.clone())
        })
        .or_else(|| retry_envelope.as_ref().map(|envelope| envelope.id.clone()));
    let task = record
        .as_ref()
        .map(|record| record.task.clone())
        .or_else(|| settlement.dead.as_ref().and_then(|dead| dead.task.clone()))
        .or_else(|| {
            retry_envelope
                .as_ref()
                .map(|envelope| envelope.task.clone())
        });
    let mut errors = record
        .as_ref()
        .map(|record| record.errors.clone())
        .unwrap_or_default();
    errors.push(AttemptError {
        attempt: record.as_ref().map_or(0, |record| record.attempt),
        kind: FailureKind::StoreFailed,
        message: error.clone(),
        at_ms: now,
    });
    // The next attempt's envelope, or the entry's own bytes: whichever can be replayed.
    let payload = settlement
        .retry
        .as_ref()
        .map(|retry| retry.payload.clone())
        .or_else(|| settlement.dead.as_ref().map(|dead| dead.payload.clone()))
        .unwrap_or_default();
    let mut instead = Settlement {
        queue: settlement.queue.clone(),
        entry_id: settlement.entry_id.clone(),
        deliveries: settlement.deliveries,
        record: None,
        finished: None,
        retry: None,
        // It ends here, also when it was to be retried: the lock it holds goes.
        unlock: settlement.unlock.clone().or_else(|| {
            retry_envelope
                .as_ref()
                .and_then(Envelope::lock_released_at_end)
                .map(Box::new)
        }),
        dead: Some(Box::new(DeadLetter {
            job_id: job_id.clone(),
            task,
            reason: DeadReason::StoreFailed,
            error,
            errors: errors.clone(),
            truncated: payload.is_empty(),
            payload,
            at_ms: now,
        })),
    };
    if let Some(mut record) = record {
        record.state = State::Failure;
        record.result = None;
        record.retry_at_ms = None;
        record.finished_ms = Some(now);
        record.errors = errors;
        if let (Ok(bytes), Some(id)) = (record.encode(), job_id) {
            instead.finished = Some(id.clone());
            instead.record = Some((id, bytes));
        }
    }
    instead
}

/// Whether no delivery (entry and delivery count) is settled twice in `writes`: the brokers
/// may reorder settlements of different deliveries, which is safe only then.
fn settles_each_delivery_once(writes: &[Write]) -> bool {
    let mut settled = HashSet::new();
    writes.iter().all(|write| match write {
        Write::Settle(settlement) => settled.insert((
            &settlement.queue,
            settlement.entry_id.as_str(),
            settlement.deliveries,
        )),
        Write::Record { .. } => true,
    })
}

/// Drop record writes (STARTED, PROGRESS) of jobs whose final record is in the same batch: the
/// batch is applied in one transaction, so nobody could have read them, and the final record
/// carries the last progress. Fast jobs then cost one record write instead of two.
fn drop_superseded(
    writes: &mut Vec<Write>,
    waiters: &mut Vec<Option<oneshot::Sender<Result<()>>>>,
) {
    let finals: HashSet<&str> = writes
        .iter()
        .filter_map(|write| match write {
            Write::Settle(settlement) => settlement.record.as_ref().map(|(id, _)| id.as_str()),
            Write::Record { .. } => None,
        })
        .collect();
    if finals.is_empty() {
        return;
    }
    let superseded: HashSet<JobId> = writes
        .iter()
        .filter_map(|write| match write {
            Write::Record { id, .. } if finals.contains(id.as_str()) => Some(id.clone()),
            _ => None,
        })
        .collect();
    if superseded.is_empty() {
        return;
    }
    let mut old_waiters = std::mem::take(waiters).into_iter();
    writes.retain(|write| {
        let waiter = old_waiters.next().flatten();
        let keep = !matches!(write, Write::Record { id, .. } if superseded.contains(id));
        if keep {
            waiters.push(waiter);
        } else if let Some(waiter) = waiter {
            // Its content is in the final record, stored in this batch.
            let _ = waiter.send(Ok(()));
        }
        keep
    });
}

/// Bytes of payload in one script call at most: a burst of large dead letters or retries must
/// not make one call too big for Redis (512 MB) or block it for long.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

fn payload_bytes(write: &Write) -> usize {
    match write {
        Write::Record { record, .. } => record.len(),
        Write::Settle(settlement) => {
            settlement.record.as_ref().map_or(0, |(_, r)| r.len())
                + settlement.retry.as_ref().map_or(0, |r| r.payload.len())
                + settlement.dead.as_ref().map_or(0, |d| d.payload.len())
        }
    }
}

/// Apply the batch in chunks of at most `CHUNK_BYTES` (a chunk holds at least one write), in
/// order; the outcome indexes refer to the whole batch.
async fn apply_in_chunks(
    writer: &Writer,
    writes: &[Write],
    abandon: &CancellationToken,
) -> Option<Applied> {
    let mut total = Applied::default();
    let mut start = 0;
    while start < writes.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < writes.len()
            && (end == start || bytes + payload_bytes(&writes[end]) <= CHUNK_BYTES)
        {
            bytes += payload_bytes(&writes[end]);
            end += 1;
        }
        let applied = apply_with_retry(writer, &writes[start..end], abandon).await?;
        total
            .fenced
            .extend(applied.fenced.iter().map(|index| index + start));
        total.dead_trimmed += applied.dead_trimmed;
        total.dead_entries.extend(applied.dead_entries);
        for queue in applied.missing_queues {
            if !total.missing_queues.contains(&queue) {
                total.missing_queues.push(queue);
            }
        }
        total.failed.extend(
            applied
                .failed
                .into_iter()
                .map(|(index, reason)| (index + start, reason)),
        );
        start = end;
    }
    Some(total)
}

async fn apply_with_retry(
    writer: &Writer,
    writes: &[Write],
    abandon: &CancellationToken,
) -> Option<Applied> {
    let batch = writer.batches.fetch_add(1, Ordering::Relaxed);
    let mut delay = Duration::from_millis(50);
    loop {
        match writer
            .broker
            .apply(&writer.consumer, batch, writes, writer.ttl)
            .await
        {
            Ok(applied) => return Some(applied),
            Err(err) => {
                tracing::error!(error = %crate::error::chain(&err), writes = writes.len(), "could not store job outcomes; retrying");
            }
        }
        tokio::select! {
            () = abandon.cancelled() => {
                tracing::warn!(writes = writes.len(), "gave up storing job outcomes at shutdown; their jobs stay pending and run again");
                return None;
            }
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::Settlement;

    fn record(id: &str) -> Write {
        Write::Record {
            queue: Arc::from("q"),
            entry_id: format!("{id}-entry"),
            deliveries: 1,
            id: id.into(),
            record: id.as_bytes().to_vec(),
        }
    }

    fn settle(id: &str, with_record: bool) -> Write {
        Write::Settle(Settlement {
            queue: Arc::from("q"),
            entry_id: format!("{id}-entry"),
            deliveries: 1,
            record: with_record.then(|| (JobId::from(id), b"final".to_vec())),
            finished: None,
            retry: None,
            dead: None,
            unlock: None,
        })
    }

    fn shape(writes: &[Write]) -> Vec<String> {
        writes
            .iter()
            .map(|w| match w {
                Write::Record { id, .. } => format!("record {id}"),
                Write::Settle(s) => format!("settle {}", s.entry_id),
            })
            .collect()
    }

    #[test]
    fn records_superseded_in_the_same_batch_are_dropped() {
        let mut writes = vec![
            record("a"),
            record("b"),
            record("a"),
            settle("a", true),
            settle("c", false),
            record("c"),
        ];
        let (progress, stored) = oneshot::channel();
        let mut waiters: Vec<_> = (0..writes.len()).map(|_| None).collect();
        waiters[2] = Some(progress);
        drop_superseded(&mut writes, &mut waiters);
        assert_eq!(waiters.len(), writes.len());
        assert!(
            matches!(stored.blocking_recv(), Ok(Ok(()))),
            "a dropped progress write is stored with the final record"
        );
        assert_eq!(
            shape(&writes),
            ["record b", "settle a-entry", "settle c-entry", "record c"],
            "a's STARTED and PROGRESS go; b is still running; c stores no final record"
        );
    }
}
