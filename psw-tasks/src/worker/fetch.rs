//! The fetch loop: wait for free claims, take over expired leases now and then, read new jobs,
//! and hand each delivery to the runners.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::runner::Fetched;
use super::shared::Shared;
use crate::broker::Delivery;
use crate::error::Error;
use crate::priority::{self, Priority, QueueOrder};

/// How long one fetch blocks when the queues are empty; also bounds how late a shutdown
/// request is noticed.
const FETCH_BLOCK: Duration = Duration::from_millis(500);
/// First pause after a failed fetch; it doubles up to [`FETCH_RETRY_MAX`].
const FETCH_RETRY: Duration = Duration::from_millis(100);
const FETCH_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the worker looks for priority lanes first used since its last look.
const LANE_CHECK: Duration = Duration::from_secs(1);
/// How often the worker reads which queues are paused. With [`FETCH_BLOCK`] it bounds how
/// long after a pause a job of the queue may still be taken: under a second.
const PAUSE_CHECK: Duration = Duration::from_millis(400);

pub(crate) struct FetchLoop {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: String,
    /// The lanes in use of each queue the worker consumes, in the worker's order of queues,
    /// each queue's high lane first: the queue itself, and those of its levels (`priority`)
    /// that producers have used, as the set of queue names says.
    pub(crate) lanes: Vec<Vec<String>>,
    /// When to look for lanes first used since the last look.
    pub(crate) next_lane_check: Instant,
    /// When to look again which queues are paused.
    pub(crate) next_pause_check: Instant,
    /// The order of the queues on each read: round-robin, by weight, or strict.
    pub(crate) order: QueueOrder,
    pub(crate) lease: Duration,
    /// A claim is a delivery this worker holds, from its fetch until its outcome is stored:
    /// claims beyond the concurrency let the next batch be fetched while the current one runs.
    pub(crate) claims: Arc<Semaphore>,
    /// Where fetched deliveries wait for the first free runner.
    pub(crate) dispatch: flume::Sender<Fetched>,
    /// Claims to wait for before a fetch: half the prefetch, at least one.
    pub(crate) fetch_at: u32,
}

impl FetchLoop {
    /// Fetch and dispatch until `shutdown`. A read that Redis answered is always dispatched:
    /// dropping it would leave its entries pending until their lease runs out.
    pub(crate) async fn run(&mut self, shutdown: &CancellationToken) {
        let mut next_reclaim = Instant::now();
        let mut retry = FETCH_RETRY;
        let mut turn = 0usize;
        loop {
            let Some(first) = self.wait_for_claims(shutdown).await else {
                return;
            };
            // Every read below is cut short by a shutdown: one that waits on a Redis that does
            // not answer (a cluster slot without a master answers only when its request times
            // out) must not hold the shutdown up. A read cut short may have claimed entries;
            // they stay pending and are taken over after their lease, as a lost reply's are.
            if Instant::now() >= self.next_lane_check {
                self.next_lane_check = Instant::now() + LANE_CHECK;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = self.find_lanes() => {}
                }
            }
            if Instant::now() >= self.next_pause_check {
                self.next_pause_check = Instant::now() + PAUSE_CHECK;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = self.find_paused() => {}
                }
            }
            if self.lanes_to_read().next().is_none() {
                // Every queue is paused: nothing to read or take over until one resumes.
                drop(first);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(self.next_pause_check) => {}
                }
                continue;
            }
            let free = self.claims.available_permits() + first.num_permits();
            let mut deliveries = Vec::new();
            if Instant::now() >= next_reclaim {
                next_reclaim = Instant::now() + self.lease / 2;
                deliveries = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    reclaimed = self.reclaim_expired(free) => reclaimed,
                };
            }
            if deliveries.is_empty() {
                turn = turn.wrapping_add(1);
                let fetched = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    fetched = self.fetch_new(free, turn) => fetched,
                };
                match fetched {
                    Some(fetched) => {
                        deliveries = fetched;
                        retry = FETCH_RETRY;
                    }
                    None => {
                        drop(first);
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(retry) => {}
                        }
                        retry = (retry * 2).min(FETCH_RETRY_MAX);
                        continue;
                    }
                }
            }
            self.dispatch(deliveries, first);
        }
    }

    /// Wait until half the prefetch of claims is free, not for each freed claim: until then the
    /// runners have at least that many deliveries waiting, and a fetch per freed claim would
    /// cost a round trip per job under load. `None` once shutting down.
    async fn wait_for_claims(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            permit = self.claims.clone().acquire_many_owned(self.fetch_at) => {
                Some(permit.expect("the claims are never closed"))
            }
        }
    }

    /// Take over entries whose lease ran out, up to `free` (other consumers', and this one's
    /// orphans), and remove the consumers of workers that are gone.
    async fn reclaim_expired(&self, free: usize) -> Vec<Delivery> {
        let broker = &self.shared.broker;
        let mut deliveries = Vec::new();
        for queue in self.lanes_to_read().flatten() {
            let holds = self.shared.in_flight.ids(queue);
            match broker
                .reclaim(
                    &self.consumer,
                    queue,
                    self.lease,
                    free - deliveries.len(),
                    &holds,
                )
                .await
            {
                Ok(reclaimed) => {
                    if !reclaimed.is_empty() {
                        tracing::warn!(
                            queue,
                            count = reclaimed.len(),
                            "took over jobs whose lease ran out (a worker that stopped renewing it, or a read whose reply was lost)"
                        );
                        self.shared.stats.reclaimed.add(reclaimed.len());
                    }
                    deliveries.extend(reclaimed);
                }
                Err(err) => {
                    tracing::warn!(queue, error = %crate::error::chain(&err), "reclaiming expired leases failed")
                }
            }
            // Workers that died leave their consumer behind; once it owns nothing and has been
            // silent for a few leases, it is only clutter.
            match broker
                .prune_consumers(queue, &self.consumer, self.lease * 4)
                .await
            {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(queue, consumers = ?removed, "removed consumers of workers that are gone");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(queue, error = %crate::error::chain(&err), "pruning consumers failed")
                }
            }
            if deliveries.len() >= free {
                break;
            }
        }
        deliveries
    }

    /// Read up to `free` new jobs, the queues in the order of read number `turn` and each
    /// queue's lanes high first; `None` when the read failed (recreating the consumer groups
    /// if Redis lost them), so that the loop pauses before the next try.
    async fn fetch_new(&self, free: usize, turn: usize) -> Option<Vec<Delivery>> {
        // Not raced against the shutdown signal: dropping a read that Redis already answered
        // would leave its entries pending until their lease runs out.
        let broker = &self.shared.broker;
        let ordered: Vec<String>;
        let lanes = match self.lanes.as_slice() {
            [lanes] if !self.shared.paused.any() => lanes.as_slice(),
            _ => {
                ordered = self
                    .order
                    .order(self.lanes.len(), turn, fastrand::f64)
                    .into_iter()
                    .filter(|&index| !self.is_paused(&self.lanes[index]))
                    .flat_map(|index| self.lanes[index].iter().cloned())
                    .collect();
                &ordered
            }
        };
        match broker.fetch(&self.consumer, lanes, free, FETCH_BLOCK).await {
            Ok(fetched) => Some(fetched),
            Err(Error::GroupMissing(_)) => {
                tracing::error!(
                    "the consumer groups are gone (Redis restarted empty?); creating them again from the start of each stream"
                );
                let lanes: Vec<String> = self.lanes.iter().flatten().cloned().collect();
                let _ = broker.prepare(&lanes).await;
                None
            }
            Err(err) => {
                tracing::error!(error = %crate::error::chain(&err), "fetching jobs failed; retrying");
                None
            }
        }
    }

    /// The lanes of each queue not paused.
    fn lanes_to_read(&self) -> impl Iterator<Item = &Vec<String>> {
        self.lanes.iter().filter(|lanes| !self.is_paused(lanes))
    }

    /// Whether the queue of these lanes is paused (as of the last look, kept in `Shared` for
    /// the runners too), so that it is neither read nor reclaimed from.
    fn is_paused(&self, lanes: &[String]) -> bool {
        lanes
            .first()
            .is_some_and(|lane| self.shared.paused.holds_lane(lane))
    }

    /// Read which queues are paused, and say when one of this worker's pauses or resumes. A
    /// failed read keeps the last known state.
    async fn find_paused(&mut self) {
        let paused = match self.shared.broker.paused_queues().await {
            Ok(paused) => paused,
            Err(err) => {
                tracing::warn!(error = %crate::error::chain(&err), "could not read which queues are paused; looking again shortly");
                return;
            }
        };
        let before = self.shared.paused.set(paused.clone());
        if paused == before {
            return;
        }
        for lanes in &self.lanes {
            let queue = crate::shard::queue_of_lane(&lanes[0]);
            let was = before.iter().any(|q| q == queue);
            let is = paused.iter().any(|q| q == queue);
            if is && !was {
                tracing::info!(
                    queue,
                    "queue paused: taking none of its jobs until it is resumed"
                );
            } else if was && !is {
                tracing::info!(queue, "queue resumed");
            }
        }
    }

    /// Add the lanes of priority levels first used since the last look (a producer registers
    /// a lane's name when it first adds to it), making their consumer groups. Until a level
    /// is used its queue is read with one plain XREADGROUP; a job of a new level waits at most
    /// [`LANE_CHECK`] for a worker to look, never longer.
    async fn find_lanes(&mut self) {
        let broker = &self.shared.broker;
        let names = match broker.queue_names().await {
            Ok(names) => names,
            Err(err) => {
                tracing::warn!(error = %crate::error::chain(&err), "could not list the queues' priority lanes; looking again shortly");
                return;
            }
        };
        for lanes in &mut self.lanes {
            let queue = lanes
                .iter()
                .find(|lane| priority::split_lane(lane).1 == Priority::Normal)
                .cloned()
                .expect("a queue's own lane is always read");
            let in_use: Vec<String> = priority::lanes(&queue)
                .filter(|lane| *lane == queue || names.contains(lane))
                .collect();
            if in_use.len() == lanes.len() {
                continue;
            }
            match broker.prepare(&in_use).await {
                Ok(()) => {
                    tracing::info!(queue, lanes = ?in_use, "reading the queue's priority levels");
                    *lanes = in_use;
                }
                Err(err) => {
                    tracing::warn!(queue, error = %crate::error::chain(&err), "could not prepare the queue's priority lanes; trying again shortly")
                }
            }
        }
    }

    /// Hold the deliveries, each with a claim, and queue them for the runners.
    fn dispatch(&self, mut deliveries: Vec<Delivery>, mut first: OwnedSemaphorePermit) {
        // The broker returns at most the free claims (the fetch counts over all queues, the
        // reclaim within what is left): each delivery gets one. Were there more, they would be
        // held and run all the same, never left waiting unrenewed.
        let claims = (0..deliveries.len()).map(|_| {
            first
                .split(1)
                .or_else(|| self.claims.clone().try_acquire_owned().ok())
        });
        self.shared.in_flight.track(&mut deliveries, claims);
        let fetched_at = Instant::now();
        for delivery in deliveries {
            // The runners hold a receiver until they stop, after this loop.
            let _ = self.dispatch.send(Fetched {
                delivery,
                fetched_at,
            });
        }
    }
}
