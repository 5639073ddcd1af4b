//! The promoter of one queue: moves due delayed jobs (countdowns, ETAs, retries) of each of the
//! queue's lanes into its stream, in one call for all of them, sleeping until the next is due,
//! at most 100 ms.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::envelope::now_ms;
use crate::priority;

/// Most delayed jobs moved per promotion pass.
const PROMOTE_BATCH: usize = 1000;
/// Longest sleep of the promoter: a job delayed by another process is noticed this late at most.
const PROMOTE_IDLE: Duration = Duration::from_millis(100);

/// Moves due delayed jobs of each lane of `queue` into it, sleeping until the next is due.
pub(crate) async fn run(broker: Arc<dyn Broker>, queue: String, stop: CancellationToken) {
    let lanes: Vec<String> = priority::lanes(&queue).collect();
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let pause = match broker.promote_due(&lanes, now_ms(), PROMOTE_BATCH).await {
            Ok(promoted) if promoted.moved == PROMOTE_BATCH => Duration::ZERO,
            Ok(promoted) => {
                failures = 0;
                let until_next = promoted
                    .next_due_ms
                    .map(|due| Duration::from_millis((due - now_ms()).max(0) as u64));
                until_next.map_or(PROMOTE_IDLE, |d| d.min(PROMOTE_IDLE))
            }
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(queue, error = %crate::error::chain(&err), "promoting delayed jobs failed; retrying");
                }
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
