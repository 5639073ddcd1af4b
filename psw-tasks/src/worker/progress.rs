//! Progress reports of one running job: its record in the PROGRESS state, written through the
//! same writer as everything else so that it can never land after the job's final state.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::writer::WriteRequest;
use crate::broker::{Delivery, Write};
use crate::error::{Error, Result};
use crate::record::{JobRecord, Progress, State};
use crate::task::ProgressSink;

/// Longest a progress report waits to be stored before the task goes on.
const PROGRESS_WAIT: Duration = Duration::from_secs(2);

pub(crate) struct RecordProgress {
    writes: mpsc::Sender<WriteRequest>,
    delivery: Delivery,
    /// The job's record as it started.
    record: JobRecord,
    /// The last report, kept for the final record.
    last: Mutex<Option<Progress>>,
}

impl RecordProgress {
    /// Reports of the job of `delivery` (without its bytes), whose record started as `record`.
    pub(crate) fn new(
        writes: mpsc::Sender<WriteRequest>,
        delivery: Delivery,
        record: JobRecord,
    ) -> Self {
        RecordProgress {
            writes,
            delivery,
            record,
            last: Mutex::new(None),
        }
    }

    /// The record as the job started (STARTED).
    pub(crate) fn started(&self) -> &JobRecord {
        &self.record
    }

    /// The last report, if any.
    pub(crate) fn last(&self) -> MutexGuard<'_, Option<Progress>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The record with the last report, for the final state. The handler, and with it the
    /// context, is done by then: the record is ours alone unless the task kept a clone of its
    /// context, and then it is copied.
    pub(crate) fn into_record(progress: Arc<Self>) -> JobRecord {
        let last = progress.last().take();
        let mut record =
            Arc::try_unwrap(progress).map_or_else(|shared| shared.record.clone(), |own| own.record);
        record.progress = last;
        record
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
            // A task never waits long on its progress: when the writer is behind (Redis slow or
            // away), the report is dropped, never the outcome, which goes through the same
            // queue and waits for room.
            match self.writes.try_send(request) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(id = %record.id, "the writer is behind; a progress report is dropped");
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Error::Closed),
            }
            match tokio::time::timeout(PROGRESS_WAIT, stored).await {
                Ok(stored) => stored.map_err(|_| Error::Closed)?,
                // Still queued: it lands later, or is superseded by the outcome.
                Err(_) => Ok(()),
            }
        })
    }
}
