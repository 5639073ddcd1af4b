//! The lease renewer: every third of the lease, resets the idle time of every entry the worker
//! holds, and extends the lease of every concurrency slot its jobs hold, so that a live worker
//! never loses a long job to another's reclaim, nor its slot to another job.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::shared::Shared;

/// Renews the lease of every running job at a third of the lease, so that a live worker never
/// loses a long job to the reaper.
pub(crate) async fn run(
    shared: Arc<Shared>,
    consumer: String,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (queue, ids) in shared.in_flight.snapshot() {
            match shared.broker.renew(&consumer, &queue, &ids).await {
                Ok(renewed) if renewed < ids.len() => {
                    // Either settled since the snapshot, or taken over by another worker
                    // after a pause longer than the lease.
                    tracing::debug!(queue = %queue, asked = ids.len(), renewed, "some leases were not renewed");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(queue = %queue, error = %crate::error::chain(&err), "renewing leases failed")
                }
            }
        }
        let slots = shared.limits.held();
        if !slots.is_empty()
            && let Err(err) = shared.broker.renew_slots(&slots, lease).await
        {
            tracing::warn!(error = %crate::error::chain(&err), "renewing concurrency slots failed");
        }
    }
}
