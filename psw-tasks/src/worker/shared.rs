//! What every runner of a worker shares: the broker, the registry, the writer's queue, what
//! the worker holds, its counters and limits (its own and the global ones), and the ways to hand a write to the writer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::activity::Activity;
use super::celery_link::CeleryLink;
use super::counters::Counters;
use super::in_flight::InFlight;
use super::limits::Limits;
use super::paused::Paused;
use super::revocations::Revocations;
use super::writer::WriteRequest;
use crate::broker::{Broker, DeadLetter, DeadReason, Delivery, Settlement, Write};
use crate::envelope::{Envelope, JobId, now_ms};
use crate::record::{AttemptError, JobRecord, MAX_ERROR_MESSAGE, cap_message};
use crate::registry::Registry;
use crate::task::SharedState;

pub(crate) struct Shared {
    pub(crate) broker: Arc<dyn Broker>,
    /// This worker's consumer name.
    pub(crate) consumer: String,
    /// How long a delivery stays claimed without renewal.
    pub(crate) lease: Duration,
    pub(crate) registry: Registry,
    pub(crate) writes: mpsc::Sender<WriteRequest>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) stats: Arc<Counters>,
    pub(crate) max_deliveries: u64,
    pub(crate) max_message_size: usize,
    pub(crate) max_result_size: usize,
    /// Longest raw payload kept in a dead letter (`PSW_DLQ_MAX_PAYLOAD`, 1 MiB): enough to
    /// replay any job `enqueue` accepts at the default size limit, while a runaway 100 MB entry
    /// does not move into the dead letters.
    pub(crate) dead_payload_cap: usize,
    pub(crate) unknown_task_delay: Duration,
    pub(crate) states: Arc<SharedState>,
    /// The global rate and concurrency limits, and the slots held now.
    pub(crate) limits: Arc<Limits>,
    /// The cancelled jobs this worker has read of.
    pub(crate) revocations: Arc<Revocations>,
    /// The job each runner runs now, and the executions ended since the last heartbeat with
    /// their times (kept if the metrics history is on).
    pub(crate) activity: Arc<Activity>,
    /// The paused queues, as the fetch loop last read them.
    pub(crate) paused: Paused,
    /// How long records are kept (`PSW_RESULT_TTL`).
    pub(crate) result_ttl: Duration,
    /// The Celery deployment, for jobs that came from Celery messages: where their callers
    /// read results, and where their canvas's next steps go. `None` on an in-process broker.
    pub(crate) celery: Option<Arc<CeleryLink>>,
}

impl Shared {
    async fn send(&self, write: Write) {
        let request = WriteRequest { write, done: None };
        if self.writes.send(request).await.is_err() {
            tracing::error!("the writer is gone; the job stays pending and runs again");
        }
    }

    /// Queue a record write (STARTED) of a delivery still running, unless the writer is behind:
    /// the state is news, and the outcome must not wait behind it.
    pub(crate) fn write_record(&self, delivery: &Delivery, record: &JobRecord) {
        match Write::record_of(delivery, record) {
            Ok(write) => {
                if self
                    .writes
                    .try_send(WriteRequest { write, done: None })
                    .is_err()
                {
                    tracing::debug!(id = %record.id, "the writer is behind; the STARTED state is skipped");
                }
            }
            Err(err) => {
                tracing::error!(id = %record.id, error = %crate::error::chain(&err), "could not encode a job record")
            }
        }
    }

    /// Attach the record (and the finish announcement) to a settlement.
    pub(crate) fn finish(
        &self,
        mut settlement: Settlement,
        record: &JobRecord,
        terminal: bool,
    ) -> Settlement {
        match record.encode() {
            Ok(bytes) => {
                let id: JobId = record.id.clone().into();
                settlement.finished = terminal.then(|| id.clone());
                settlement.record = Some((id, bytes));
            }
            Err(err) => {
                tracing::error!(id = %record.id, error = %crate::error::chain(&err), "could not encode a job record")
            }
        }
        settlement
    }

    /// Hand the end of a delivery to the writer. It stays held until the writer has stored it:
    /// see `InFlight`.
    pub(crate) async fn settle(&self, settlement: Settlement) {
        self.send(Write::Settle(settlement)).await;
    }

    /// A settlement that moves the delivery to the dead letters, with `errors` (every
    /// attempt's, or the envelope's history when the job never ran here).
    pub(crate) fn dead_letter(
        &self,
        delivery: &Delivery,
        envelope: Option<&Envelope>,
        errors: &[AttemptError],
        reason: DeadReason,
        error: String,
    ) -> Settlement {
        self.stats.dead_lettered.inc();
        if let Some((index, _)) = envelope.and_then(|e| self.registry.lookup(&e.task)) {
            self.stats.tasks[index].dead_lettered.inc();
        }
        let truncated = delivery.payload.len() > self.dead_payload_cap;
        let mut settlement = Settlement::of(delivery);
        settlement.dead = Some(Box::new(DeadLetter {
            job_id: envelope.map(|e| e.id.clone()),
            task: envelope.map(|e| e.task.clone()),
            reason,
            // Cut as each attempt's is: a stack dump must not fill the dead letter and the
            // alert made from it.
            error: cap_message(&error, MAX_ERROR_MESSAGE),
            errors: errors.to_vec(),
            payload: delivery.payload[..delivery.payload.len().min(self.dead_payload_cap)].to_vec(),
            truncated,
            at_ms: now_ms(),
        }));
        settlement
    }
}

impl Write {
    /// A record write fenced on `delivery`.
    pub(crate) fn record_of(
        delivery: &Delivery,
        record: &JobRecord,
    ) -> crate::error::Result<Write> {
        Ok(Write::Record {
            queue: delivery.queue.clone(),
            entry_id: delivery.entry_id.clone(),
            deliveries: delivery.deliveries,
            id: record.id.clone().into(),
            record: record.encode()?,
        })
    }
}
