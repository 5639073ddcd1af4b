//! The worker's heartbeat: at start and then every third of the lease it stores what it is
//! and does, and adds the outcomes counted since its last heartbeat to the current minute's
//! bucket, in one round trip; at a graceful stop it stores the last counts and removes itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::counters::{Counters, TaskTally};
use crate::broker::{Broker, WorkerReport};
use crate::envelope::now_ms;
use crate::error::Result;
use crate::keys::Outcome;
use crate::stats::Heartbeat;

pub(crate) struct Heartbeats {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) consumer: String,
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) started_ms: i64,
    pub(crate) interval: Duration,
    /// Task names in registry order: the same order as `counters.tasks`.
    pub(crate) tasks: Vec<&'static str>,
    pub(crate) counters: Arc<Counters>,
    /// Jobs running now.
    pub(crate) busy: Arc<AtomicUsize>,
    /// Each task's counts as of the last stored heartbeat: the next adds only what came since.
    pub(crate) stored: Vec<[u64; 4]>,
}

impl Heartbeats {
    /// Store a heartbeat, or with `leaving` remove this worker; either way with the counts
    /// since the last one. Counts not stored (Redis away) go with the next.
    pub(crate) async fn beat(&mut self, leaving: bool) -> Result<()> {
        let at_ms = now_ms();
        let now: Vec<[u64; 4]> = self
            .counters
            .tasks
            .iter()
            .map(TaskTally::snapshot)
            .collect();
        let mut counts = Vec::new();
        for ((task, now), stored) in self.tasks.iter().zip(&now).zip(&self.stored) {
            for ((outcome, now), stored) in Outcome::ALL.iter().zip(now).zip(stored) {
                if now > stored {
                    counts.push(((*task).to_owned(), *outcome, now - stored));
                }
            }
        }
        let total = |i: usize| -> u64 { now.iter().map(|counts| counts[i]).sum() };
        let info = if leaving {
            None
        } else {
            let running = self.busy.load(Ordering::Relaxed);
            Some(
                Heartbeat {
                    queues: self.queues.clone(),
                    concurrency: self.concurrency as u64,
                    started_ms: self.started_ms,
                    seen_ms: at_ms,
                    heartbeat_ms: self.interval.as_millis() as u64,
                    running: running as u64,
                    succeeded: total(0),
                    failed: total(1),
                    retried: total(2),
                    dead_lettered: self.counters.dead_lettered.get(),
                }
                .encode()?,
            )
        };
        let report = WorkerReport {
            consumer: self.consumer.clone(),
            info,
            at_ms,
            counts,
        };
        self.broker.report_worker(&report).await?;
        self.stored = now;
        Ok(())
    }
}

/// Beat until `stop`, then hand the state back for the last beat, which removes the worker.
pub(crate) async fn run(mut beats: Heartbeats, stop: CancellationToken) -> Heartbeats {
    let mut ticks = tokio::time::interval(beats.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = stop.cancelled() => return beats,
            _ = ticks.tick() => {}
        }
        match beats.beat(false).await {
            Ok(()) => failures = 0,
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %crate::error::chain(&err), "storing the worker's heartbeat failed; retrying at the next one");
                }
            }
        }
    }
}
