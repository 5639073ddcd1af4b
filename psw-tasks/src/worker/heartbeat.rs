//! The worker's heartbeat: at start and then every third of the lease it stores what it is
//! and runs now, adds what it counted since its last heartbeat to the metrics history and the
//! executions that ended to each task's recent ones, in one round trip; at a graceful stop it
//! stores the last counts and removes itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::activity::{Activity, Ended, Times};
use super::counters::{Counters, TaskTally};
use crate::broker::{Broker, WorkerReport};
use crate::envelope::now_ms;
use crate::error::Result;
use crate::keys::{Metric, Outcome, Tally};
use crate::metrics::{Execution, RECENT_EXECUTIONS, SCHEDULE_RUNS};
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
    /// The job each runner runs, and the executions ended since the last heartbeat.
    pub(crate) activity: Arc<Activity>,
    /// Each task's counts as of the last stored heartbeat: the next adds only what came since.
    pub(crate) stored: Vec<[u64; 4]>,
    /// Executions not stored yet, per task, oldest first: sent with the next heartbeat (and
    /// kept for the one after if it fails).
    pub(crate) unsent: Vec<(String, Vec<Vec<u8>>)>,
    /// Each task's run times and queue waits not stored yet, likewise.
    pub(crate) unsent_times: Vec<Times>,
    /// Runs of jobs fired by a schedule not stored yet, per schedule, likewise.
    pub(crate) unsent_runs: Vec<(String, Vec<Vec<u8>>)>,
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
                    counts.push(((*task).to_owned(), Tally::Outcome(*outcome), now - stored));
                }
            }
        }
        let (times, ended) = self.activity.take_ended(self.tasks.len());
        for (unsent, taken) in self.unsent_times.iter_mut().zip(times) {
            unsent.run.merge(&taken.run);
            unsent.wait.merge(&taken.wait);
        }
        for (task, times) in self.tasks.iter().zip(&self.unsent_times) {
            let tallies = times
                .run
                .tallies(Metric::Run)
                .chain(times.wait.tallies(Metric::Wait));
            counts.extend(tallies.map(|(tally, count)| ((*task).to_owned(), tally, count)));
        }
        self.gather_executions(ended);
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
                    active: self.activity.active(&self.tasks),
                }
                .encode()?,
            )
        };
        let report = WorkerReport {
            consumer: self.consumer.clone(),
            info,
            at_ms,
            counts,
            executions: std::mem::take(&mut self.unsent),
            schedule_runs: std::mem::take(&mut self.unsent_runs),
        };
        if let Err(err) = self.broker.report_worker(&report).await {
            self.unsent = report.executions;
            self.unsent_runs = report.schedule_runs;
            return Err(err);
        }
        self.stored = now;
        self.unsent_times.fill(Times::default());
        Ok(())
    }

    /// Add the executions ended since the last heartbeat to those to send: per task, each
    /// task's newest [`RECENT_EXECUTIONS`] at most (its list keeps no more), and per schedule
    /// for those a schedule fired.
    fn gather_executions(&mut self, ended: Vec<Ended>) {
        for ended in ended {
            let Some(task) = self.tasks.get(ended.task) else {
                continue;
            };
            let execution = Execution {
                job_id: ended.job_id.as_str().to_owned(),
                attempt: ended.attempt,
                outcome: ended.outcome,
                run_ms: ended.run_ms,
                worker: self.consumer.clone(),
                finished_ms: ended.finished_ms,
                slot_ms: ended.schedule.as_ref().and_then(|(_, slot)| *slot),
            };
            let bytes = match execution.encode() {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::debug!(error = %crate::error::chain(&err), "an execution could not be encoded; left out of the recent ones");
                    continue;
                }
            };
            if let Some((schedule, _)) = ended.schedule {
                add_to(
                    &mut self.unsent_runs,
                    schedule,
                    bytes.clone(),
                    SCHEDULE_RUNS,
                );
            }
            add_to(
                &mut self.unsent,
                (*task).to_owned(),
                bytes,
                RECENT_EXECUTIONS,
            );
        }
    }
}

/// Add `entry` to the list of `name` among `lists`, which keeps its newest `keep`.
fn add_to(lists: &mut Vec<(String, Vec<Vec<u8>>)>, name: String, entry: Vec<u8>, keep: usize) {
    let index = match lists.iter().position(|(listed, _)| *listed == name) {
        Some(index) => index,
        None => {
            lists.push((name, Vec::new()));
            lists.len() - 1
        }
    };
    let list = &mut lists[index].1;
    list.push(entry);
    if list.len() > keep {
        list.drain(..list.len() - keep);
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
