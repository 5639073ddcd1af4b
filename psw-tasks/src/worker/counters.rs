//! A worker's counters: per-task outcomes on the hot path (one relaxed atomic add each, no
//! lock, no lookup by name), and [`WorkerStats`], the public view of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one worker, shared with whoever holds a copy.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats(pub(crate) Arc<Counters>);

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Outcomes per task, indexed by the task's position in the worker's registry: the hot
    /// path counts with one relaxed add, no lock, no lookup by name.
    pub(crate) tasks: Box<[TaskTally]>,
    /// Jobs failed for good.
    pub(crate) failed: Counter,
    pub(crate) panicked: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) reclaimed: Counter,
    pub(crate) fenced: Counter,
    pub(crate) expired: Counter,
    pub(crate) superseded: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) slot_waits: Counter,
}

impl Counters {
    pub(crate) fn for_tasks(tasks: usize) -> Self {
        Counters {
            tasks: (0..tasks).map(|_| TaskTally::default()).collect(),
            ..Counters::default()
        }
    }

    fn sum(&self, outcome: fn(&TaskTally) -> &Counter) -> u64 {
        self.tasks.iter().map(|tally| outcome(tally).get()).sum()
    }
}

/// The outcomes of one task's attempts in this worker since it started (`stats::TaskCounts`
/// says what each means). A cache line of its own, so that jobs of different tasks finishing
/// on different threads do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct TaskTally {
    pub(crate) succeeded: Counter,
    pub(crate) failed: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead_lettered: Counter,
}

impl TaskTally {
    /// Every count, in the order of `keys::Outcome::ALL`.
    pub(crate) fn snapshot(&self) -> [u64; 4] {
        [
            self.succeeded.get(),
            self.failed.get(),
            self.retried.get(),
            self.dead_lettered.get(),
        ]
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl WorkerStats {
    /// Jobs that finished with a result.
    pub fn succeeded(&self) -> u64 {
        self.0.sum(|tally| &tally.succeeded)
    }
    /// Jobs that failed for good.
    pub fn failed(&self) -> u64 {
        self.0.failed.get()
    }
    /// Failed attempts that were scheduled again.
    pub fn retried(&self) -> u64 {
        self.0.sum(|tally| &tally.retried)
    }
    /// Attempts that panicked (each also counts as retried or failed).
    pub fn panicked(&self) -> u64 {
        self.0.panicked.get()
    }
    /// Deliveries that went to the dead-letter stream: jobs failed for good, and deliveries
    /// that could not be run at all.
    pub fn dead_lettered(&self) -> u64 {
        self.0.dead_lettered.get()
    }
    /// Deliveries taken over from workers whose lease ran out.
    pub fn reclaimed(&self) -> u64 {
        self.0.reclaimed.get()
    }
    /// Deliveries this worker lost to another because their lease ran out while it stood
    /// still (paused, frozen): their writes were refused, or, lost while waiting to run, they
    /// were not started. The other worker's outcome stands.
    pub fn fenced(&self) -> u64 {
        self.0.fenced.get()
    }
    /// Jobs whose expiry had passed when they reached this worker: revoked, not run.
    pub fn expired(&self) -> u64 {
        self.0.expired.get()
    }
    /// Debounced jobs replaced by a later one of their key: revoked, not run.
    pub fn superseded(&self) -> u64 {
        self.0.superseded.get()
    }
    /// Jobs cancelled (`Client::cancel`) before they started here: revoked, not run.
    pub fn cancelled(&self) -> u64 {
        self.0.cancelled.get()
    }
    /// Jobs put back because their rate limit would not let them start yet (or their task
    /// asked to run later, `TaskError::later`): delayed, the attempt not counted.
    pub fn rate_limited(&self) -> u64 {
        self.0.rate_limited.get()
    }
    /// Jobs put back because every slot of their concurrency limit was taken.
    pub fn slot_waits(&self) -> u64 {
        self.0.slot_waits.get()
    }
}
