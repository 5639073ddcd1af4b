//! What the worker's runners do now and just did: the job each runs (the heartbeat's active
//! jobs), the executions they ended since the last heartbeat (each task's recent ones) and
//! those executions' run times and queue waits (the metrics history's histograms).
//!
//! One slot per runner, each behind a lock that only its runner and the heartbeat take, on a
//! cache line of its own: the hot path never waits on, or shares a line with, another runner.
//! (Histograms as shared atomics cost a contended add per bucket and sum on every job:
//! measured, 3 % of the drain rate on two cores.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::progress::RecordProgress;
use crate::metrics::{ExecutionOutcome, Histogram, RECENT_EXECUTIONS};
use crate::stats::ActiveJob;

pub(crate) struct Activity {
    slots: Box<[Padded]>,
    /// Whether ended executions and their times are kept (the metrics history is on).
    keep_ended: bool,
    /// Executions of one task each runner keeps between heartbeats: its share of
    /// [`RECENT_EXECUTIONS`].
    keep_per_task: usize,
}

/// A runner's slot, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Padded(Mutex<Slot>);

#[derive(Default)]
struct Slot {
    running: Option<Running>,
    /// What ended here since the last heartbeat, by the task's position in the registry;
    /// made when the task first ends here after a heartbeat.
    tasks: Vec<Option<Box<TaskActivity>>>,
}

/// One task's executions ended in one runner since the last heartbeat.
#[derive(Default)]
struct TaskActivity {
    times: Times,
    /// Oldest first, at most `Activity::keep_per_task`, the oldest dropped first: each
    /// runner keeps its share of the task's last [`RECENT_EXECUTIONS`], so a busy task neither
    /// fills memory nor pushes a rare one's out, and the ring stays small enough to stay in
    /// cache.
    ended: VecDeque<Ended>,
}

/// The histograms of one task's executions.
#[derive(Default, Clone)]
pub(crate) struct Times {
    pub(crate) run: Histogram,
    pub(crate) wait: Histogram,
}

/// An attempt as it starts.
pub(crate) struct Start<'a> {
    pub(crate) id: &'a str,
    /// The task's position in the registry.
    pub(crate) task: usize,
    pub(crate) attempt: u32,
    pub(crate) started_ms: i64,
    /// How long it waited to start, in ms (from when it was due).
    pub(crate) waited_ms: u64,
    /// The schedule that fired it, and the slot (none for a run by hand).
    pub(crate) schedule: Option<(String, Option<i64>)>,
    pub(crate) progress: Option<&'a Arc<RecordProgress>>,
}

struct Running {
    id: KeptId,
    task: usize,
    attempt: u32,
    started_ms: i64,
    waited_ms: u64,
    schedule: Option<(String, Option<i64>)>,
    /// Weak: the progress sink holds a sender of the writer's queue, and a job dropped at the
    /// end of the grace period must not keep the writer waiting for it.
    progress: Option<Weak<RecordProgress>>,
}

/// Bytes of a job id kept in place: a generated id (a hyphenated UUID) is 36.
const INLINE_ID: usize = 40;

/// A job id as a runner keeps it, without an allocation per job when it is short: it is
/// copied on every job and read only by the heartbeat.
pub(crate) enum KeptId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<str>),
}

impl KeptId {
    fn new(id: &str) -> Self {
        match id.len() {
            len if len <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..len].copy_from_slice(id.as_bytes());
                KeptId::Inline {
                    len: len as u8,
                    bytes,
                }
            }
            _ => KeptId::Heap(id.into()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `str`, so always UTF-8.
            KeptId::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            KeptId::Heap(id) => id,
        }
    }
}

/// An execution that ended, as a runner saw it; the heartbeat adds the worker's name.
pub(crate) struct Ended {
    /// The task's position in the registry.
    pub(crate) task: usize,
    pub(crate) job_id: KeptId,
    pub(crate) attempt: u32,
    pub(crate) outcome: ExecutionOutcome,
    pub(crate) run_ms: u64,
    pub(crate) finished_ms: i64,
    /// The schedule that fired it, and the slot.
    pub(crate) schedule: Option<(String, Option<i64>)>,
}

impl Activity {
    pub(crate) fn new(runners: usize, keep_ended: bool) -> Self {
        Activity {
            slots: (0..runners).map(|_| Padded::default()).collect(),
            keep_ended,
            keep_per_task: RECENT_EXECUTIONS.div_ceil(runners.max(1)),
        }
    }

    fn slot(&self, runner: usize) -> Option<MutexGuard<'_, Slot>> {
        let slot = self.slots.get(runner)?;
        Some(
            slot.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Runner `runner` starts an attempt.
    pub(crate) fn started(&self, runner: usize, start: Start<'_>) {
        if let Some(mut slot) = self.slot(runner) {
            slot.running = Some(Running {
                id: KeptId::new(start.id),
                task: start.task,
                attempt: start.attempt,
                started_ms: start.started_ms,
                waited_ms: start.waited_ms,
                schedule: start.schedule,
                progress: start.progress.map(Arc::downgrade),
            });
        }
    }

    /// Forget what runner `runner` runs, without counting it: the runner lost the job to a
    /// bug of ours, and it runs again elsewhere.
    pub(crate) fn abandoned(&self, runner: usize) {
        if let Some(mut slot) = self.slot(runner) {
            slot.running = None;
        }
    }

    /// Runner `runner`'s attempt ended with `outcome` at `finished_ms`; `None`: it did not
    /// end as an execution (the task asked to run later), and only its wait is counted.
    pub(crate) fn ended(&self, runner: usize, outcome: Option<ExecutionOutcome>, finished_ms: i64) {
        let Some(mut slot) = self.slot(runner) else {
            return;
        };
        let Some(running) = slot.running.take() else {
            return;
        };
        if !self.keep_ended {
            return;
        }
        let run_ms = (finished_ms - running.started_ms).max(0) as u64;
        let slot = &mut *slot;
        if slot.tasks.len() <= running.task {
            slot.tasks.resize_with(running.task + 1, || None);
        }
        let task = slot.tasks[running.task].get_or_insert_with(Box::default);
        task.times
            .wait
            .record(std::time::Duration::from_millis(running.waited_ms));
        let Some(outcome) = outcome else {
            return;
        };
        task.times
            .run
            .record(std::time::Duration::from_millis(run_ms));
        if task.ended.len() >= self.keep_per_task {
            task.ended.pop_front();
        }
        task.ended.push_back(Ended {
            task: running.task,
            job_id: running.id,
            attempt: running.attempt,
            outcome,
            run_ms,
            finished_ms,
            schedule: running.schedule,
        });
    }

    /// The jobs running now, oldest first, with their last progress; `tasks` names the
    /// registry's tasks by position.
    pub(crate) fn active(&self, tasks: &[&str]) -> Vec<ActiveJob> {
        let mut active: Vec<ActiveJob> = (0..self.slots.len())
            .filter_map(|runner| {
                let slot = self.slot(runner)?;
                let running = slot.running.as_ref()?;
                Some(ActiveJob {
                    id: running.id.as_str().to_owned(),
                    task: tasks
                        .get(running.task)
                        .copied()
                        .unwrap_or_default()
                        .to_owned(),
                    started_ms: running.started_ms,
                    progress: running
                        .progress
                        .as_ref()
                        .and_then(Weak::upgrade)
                        .and_then(|progress| progress.last().clone()),
                })
            })
            .collect();
        active.sort_by_key(|job| job.started_ms);
        active
    }

    /// Take what ended since the last call, summed over the runners: each task's run times
    /// and queue waits, by its position in the registry (`tasks` of them), and the executions,
    /// oldest first.
    pub(crate) fn take_ended(&self, tasks: usize) -> (Vec<Times>, Vec<Ended>) {
        let mut sums = vec![Times::default(); tasks];
        let mut ended = Vec::new();
        for runner in 0..self.slots.len() {
            let Some(mut slot) = self.slot(runner) else {
                continue;
            };
            for (sum, task) in sums.iter_mut().zip(&mut slot.tasks) {
                if let Some(task) = task.take() {
                    sum.run.merge(&task.times.run);
                    sum.wait.merge(&task.times.wait);
                    ended.extend(task.ended);
                }
            }
        }
        ended.sort_by_key(|execution| execution.finished_ms);
        (sums, ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_whole_short_or_long() {
        for id in [
            "",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "daily@2026-03-29T01:00:00Z",
            &"x".repeat(41),
            "å-ü-ñ",
        ] {
            assert_eq!(KeptId::new(id).as_str(), id);
        }
        assert!(matches!(
            KeptId::new(&"x".repeat(40)),
            KeptId::Inline { .. }
        ));
        assert!(matches!(KeptId::new(&"x".repeat(41)), KeptId::Heap(_)));
    }
}
