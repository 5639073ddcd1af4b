//! The one task that writes records and settles deliveries, in batches: one round trip for
//! everything that finished since the last one, in the order it finished.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Write};
use crate::{Error, Result};

pub(crate) struct WriteRequest {
    pub(crate) write: Write,
    /// Told once the write is stored (progress reports wait for it).
    pub(crate) done: Option<oneshot::Sender<Result<()>>>,
}

/// Most writes in one round trip.
const BATCH: usize = 1024;

/// Runs until every sender is gone and the channel is drained. While Redis refuses the writes
/// it retries with backoff, until `abandon` fires: what is not settled then stays pending and
/// is delivered again, which is the at-least-once promise.
pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    mut requests: mpsc::Receiver<WriteRequest>,
    ttl: Duration,
    abandon: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut writes = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    loop {
        if requests.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        for request in batch.drain(..) {
            writes.push(request.write);
            waiters.extend(request.done);
        }
        let stored = apply_with_retry(broker.as_ref(), &writes, ttl, &abandon).await;
        writes.clear();
        for waiter in waiters.drain(..) {
            let _ = waiter.send(if stored { Ok(()) } else { Err(Error::Closed) });
        }
    }
}

async fn apply_with_retry(
    broker: &dyn Broker,
    writes: &[Write],
    ttl: Duration,
    abandon: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        match broker.apply(writes, ttl).await {
            Ok(()) => return true,
            Err(err) => {
                tracing::error!(error = %err, writes = writes.len(), "could not store job outcomes; retrying");
            }
        }
        tokio::select! {
            () = abandon.cancelled() => {
                tracing::warn!(writes = writes.len(), "gave up storing job outcomes at shutdown; their jobs stay pending and run again");
                return false;
            }
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
