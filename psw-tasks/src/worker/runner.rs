//! The worker's runners: `concurrency` long-lived tasks, each running fetched deliveries one
//! after another (a job costs a channel hand-over, not a task spawned and joined), and giving
//! back what they take once the worker stops.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::job;
use super::shared::Shared;
use crate::broker::{Delivery, NewJob, Settlement};

/// A delivery on its way to a runner (its claim is held with it in `InFlight`).
pub(crate) struct Fetched {
    pub(crate) delivery: Delivery,
    /// When it was fetched: one that waited long may have lost its lease meanwhile.
    pub(crate) fetched_at: Instant,
}

/// Run fetched deliveries until the fetch loop stops and the queue is empty. Once `stopping`,
/// what it takes is given back. `busy` counts the jobs running now; `runner` numbers this
/// runner among the worker's.
pub(crate) async fn run(
    runner: usize,
    shared: Arc<Shared>,
    ready: flume::Receiver<Fetched>,
    stopping: CancellationToken,
    busy: Arc<AtomicUsize>,
) {
    while let Ok(Fetched {
        delivery,
        fetched_at,
    }) = ready.recv_async().await
    {
        if stopping.is_cancelled() {
            give_back(&shared, delivery).await;
            continue;
        }
        // Fetched before its queue was paused: it waits in the queue with the others.
        if shared.paused.holds_lane(&delivery.queue) {
            tracing::debug!(queue = %delivery.queue, entry = %delivery.entry_id, "its queue was paused since it was fetched; given back, not started");
            give_back(&shared, delivery).await;
            continue;
        }
        // The renewer keeps a waiting delivery's lease, unless the whole process stood still
        // (a pause, a frozen VM) past the lease; then another worker may run it already.
        if fetched_at.elapsed() > shared.lease / 3 && !still_held(&shared, &delivery).await {
            continue;
        }
        busy.fetch_add(1, Ordering::Relaxed);
        // Task panics are caught around the handler; one here is a bug of ours. The runner
        // lives on, and the delivery is released so the reclaim takes it back after its lease.
        let ran = AssertUnwindSafe(job::run(&shared, &delivery, runner))
            .catch_unwind()
            .await;
        busy.fetch_sub(1, Ordering::Relaxed);
        if ran.is_err() {
            shared.activity.abandoned(runner);
            tracing::error!(queue = %delivery.queue, entry = %delivery.entry_id, "the worker panicked while handling this delivery (a bug in psw-tasks); it runs again once its lease expires");
            shared.in_flight.release([(
                &delivery.queue,
                delivery.entry_id.as_str(),
                delivery.deliveries,
            )]);
        }
    }
}

/// Whether this worker still owns `delivery`: asked of the broker, renewing its lease. One it
/// lost is let go of, not started: another worker took it over.
async fn still_held(shared: &Shared, delivery: &Delivery) -> bool {
    let ids = [delivery.entry_id.clone()];
    match shared
        .broker
        .renew(&shared.consumer, &delivery.queue, &ids)
        .await
    {
        Ok(0) => {
            tracing::warn!(queue = %delivery.queue, entry = %delivery.entry_id, waited_past = ?shared.lease / 3, "a fetched job lost its lease while it waited (the worker stood still past the lease); another worker runs it, so it is not started here");
            shared.stats.fenced.inc();
            shared.in_flight.release([(
                &delivery.queue,
                delivery.entry_id.as_str(),
                delivery.deliveries,
            )]);
            false
        }
        Ok(_) => true,
        // Unknown: run it. Its writes are fenced if it was lost after all.
        Err(_) => true,
    }
}

/// Return a delivery that was fetched but never started: it goes back through the queue's
/// delayed set, due at once, and the entry is acknowledged in the same transaction.
async fn give_back(shared: &Shared, delivery: Delivery) {
    let mut settlement = Settlement::of(&delivery);
    settlement.retry = Some(Box::new(NewJob {
        queue: delivery.queue.to_string(),
        payload: delivery.payload,
        due_ms: None,
    }));
    shared.settle(settlement).await;
}
