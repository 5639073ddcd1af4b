//! The metrics history's model: what a task did over a span of time ([`TaskCounts`]: its
//! outcomes, and its run-time and queue-wait [`Histogram`]s), the two resolutions the history
//! is kept in, and one recent execution. Pure: no IO.
//!
//! Histograms have fixed buckets, the same in every worker and every version, so that the
//! histograms of different minutes and workers add up bucket by bucket, and percentiles can be
//! read from any sum of them.

use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::keys::{Metric, Outcome, Tally};
use crate::wire::{wire_enum, wire_serde};

/// The upper bounds of the histogram buckets, in ms, inclusive: a bucket counts the values up
/// to its bound and above the one before. One more bucket counts everything above the last.
/// From 1 ms to an hour, about three buckets to each power of ten.
pub const HISTOGRAM_BOUNDS_MS: [u64; 20] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000,
    300_000, 600_000, 1_800_000, 3_600_000,
];

/// Buckets of a histogram: one per bound, and the open one above the last.
pub(crate) const BUCKETS: usize = HISTOGRAM_BOUNDS_MS.len() + 1;

/// A histogram of durations in the fixed buckets of [`HISTOGRAM_BOUNDS_MS`], with the sum of
/// its values: summed over minutes and workers, it still gives percentiles (estimated within a
/// bucket, as Prometheus' `histogram_quantile` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    sum_ms: u64,
}

impl Histogram {
    /// The bucket a value of `ms` falls in.
    pub(crate) fn bucket_of(ms: u64) -> usize {
        HISTOGRAM_BOUNDS_MS.partition_point(|&bound| bound < ms)
    }

    /// The upper bound of bucket `index`, `None` for the open one.
    pub(crate) fn bound_of(index: usize) -> Option<u64> {
        HISTOGRAM_BOUNDS_MS.get(index).copied()
    }

    /// The bucket whose upper bound is `bound` (`None`: the open one); `None` for a bound that
    /// is not one of ours.
    pub(crate) fn bucket_with_bound(bound: Option<u64>) -> Option<usize> {
        match bound {
            None => Some(BUCKETS - 1),
            Some(bound) => HISTOGRAM_BOUNDS_MS.iter().position(|&b| b == bound),
        }
    }

    /// Count one value.
    pub fn record(&mut self, value: Duration) {
        let ms = value.as_millis().min(u64::MAX as u128) as u64;
        self.counts[Self::bucket_of(ms)] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    pub(crate) fn add_to_bucket(&mut self, index: usize, count: u64) {
        self.counts[index] += count;
    }

    pub(crate) fn add_to_sum(&mut self, ms: u64) {
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    /// The non-zero counts as the tallies of `metric` they are stored under: each bucket's,
    /// then the sum's.
    pub(crate) fn tallies(&self, metric: Metric) -> impl Iterator<Item = (Tally, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .map(move |(index, &count)| (Tally::Bucket(metric, Self::bound_of(index)), count))
            .chain([(Tally::Sum(metric), self.sum_ms)])
            .filter(|(_, count)| *count > 0)
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the values counted.
    pub fn sum(&self) -> Duration {
        Duration::from_millis(self.sum_ms)
    }

    /// The mean value, `None` when there are none.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| Duration::from_secs_f64(self.sum_ms as f64 / 1000.0 / count as f64))
    }

    /// Each bucket's upper bound (`None` for the open one) and its count, lowest first; the
    /// counts are per bucket, not cumulative.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .map(|(index, &count)| (Self::bound_of(index).map(Duration::from_millis), count))
    }

    /// Add another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
    }

    /// The value below which a fraction `q` (0 to 1) of the values fall, interpolated within
    /// its bucket; values in the open bucket read as the last bound. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (index, &in_bucket) in self.counts.iter().enumerate() {
            if in_bucket == 0 || ((below + in_bucket) as f64) < rank {
                below += in_bucket;
                continue;
            }
            let lower = index.checked_sub(1).and_then(Self::bound_of).unwrap_or(0) as f64;
            let Some(upper) = Self::bound_of(index) else {
                return Some(Duration::from_millis(lower as u64));
            };
            let within = ((rank - below as f64) / in_bucket as f64).clamp(0.0, 1.0);
            let ms = lower + (upper as f64 - lower) * within;
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
        Self::bound_of(BUCKETS - 2).map(Duration::from_millis)
    }
}

impl Serialize for Histogram {
    /// `count`, `sum_ms`, `p50_ms`, `p95_ms`, `p99_ms` and the non-empty buckets as
    /// `[upper bound in ms or null, count]`.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let ms = |q: f64| self.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
        let buckets: Vec<(Option<u64>, u64)> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, &count)| (Self::bound_of(index), count))
            .collect();
        let mut out = serializer.serialize_struct("Histogram", 6)?;
        out.serialize_field("count", &self.count())?;
        out.serialize_field("sum_ms", &self.sum_ms)?;
        out.serialize_field("p50_ms", &ms(0.5))?;
        out.serialize_field("p95_ms", &ms(0.95))?;
        out.serialize_field("p99_ms", &ms(0.99))?;
        out.serialize_field("buckets", &buckets)?;
        out.end()
    }
}

/// What one task's attempts came to over a span of time, summed over every worker.
///
/// A worker adds its counts at each heartbeat (a third of its lease) to the buckets of that
/// time: an attempt shows up at most one heartbeat after it ended, and the counts since a
/// worker's last heartbeat are lost if it is killed (a graceful stop stores them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TaskCounts {
    /// The task's wire name.
    pub task: String,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed (errors, panics, time limits, bad arguments), retried or not.
    pub failed: u64,
    /// Failed attempts that were scheduled again.
    pub retried: u64,
    /// Jobs of the task moved to the dead-letter queue: failed for good, or poisoned. Jobs of
    /// a task no worker knows are counted only in [`crate::ClusterStats::dead`].
    pub dead_lettered: u64,
    /// How long its attempts ran, succeeded or failed.
    pub run_time: Histogram,
    /// How long its jobs waited from when they were due (enqueued, or their ETA or retry time
    /// came) until an attempt started.
    pub queue_wait: Histogram,
}

impl TaskCounts {
    /// Empty counts of `task`.
    pub(crate) fn of(task: impl Into<String>) -> Self {
        TaskCounts {
            task: task.into(),
            ..TaskCounts::default()
        }
    }

    /// Failed attempts over all attempts that ended (succeeded + failed); `None` when none
    /// ended.
    pub fn failure_rate(&self) -> Option<f64> {
        let ended = self.succeeded + self.failed;
        (ended > 0).then(|| self.failed as f64 / ended as f64)
    }

    /// Add `count` to one tally.
    pub(crate) fn add(&mut self, tally: Tally, count: u64) {
        match tally {
            Tally::Outcome(Outcome::Succeeded) => self.succeeded += count,
            Tally::Outcome(Outcome::Failed) => self.failed += count,
            Tally::Outcome(Outcome::Retried) => self.retried += count,
            Tally::Outcome(Outcome::DeadLettered) => self.dead_lettered += count,
            Tally::Bucket(metric, bound) => {
                // A bound of another version's buckets cannot be added to ours: skipped.
                if let Some(index) = Histogram::bucket_with_bound(bound) {
                    self.histogram(metric).add_to_bucket(index, count);
                }
            }
            Tally::Sum(metric) => self.histogram(metric).add_to_sum(count),
        }
    }

    fn histogram(&mut self, metric: Metric) -> &mut Histogram {
        match metric {
            Metric::Run => &mut self.run_time,
            Metric::Wait => &mut self.queue_wait,
        }
    }

    /// Add another span's counts of the same task.
    pub fn merge(&mut self, other: &TaskCounts) {
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.run_time.merge(&other.run_time);
        self.queue_wait.merge(&other.queue_wait);
    }
}

impl Serialize for TaskCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        // By hand, so that the JSON carries the failure rate as well.
        let mut out = serializer.serialize_struct("TaskCounts", 8)?;
        out.serialize_field("task", &self.task)?;
        out.serialize_field(Outcome::Succeeded.as_str(), &self.succeeded)?;
        out.serialize_field(Outcome::Failed.as_str(), &self.failed)?;
        out.serialize_field(Outcome::Retried.as_str(), &self.retried)?;
        out.serialize_field(Outcome::DeadLettered.as_str(), &self.dead_lettered)?;
        out.serialize_field("failure_rate", &self.failure_rate())?;
        out.serialize_field("run_time", &self.run_time)?;
        out.serialize_field("queue_wait", &self.queue_wait)?;
        out.end()
    }
}

/// The two resolutions of the metrics history. Workers write every count to both at once, so
/// that the coarse one needs no roll-up pass that could fail or run twice; each bucket expires
/// on its own, so the history stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Resolution {
    /// Buckets of a minute, kept for a day.
    Minute,
    /// Buckets of ten minutes, kept for a week.
    TenMinutes,
}

impl Resolution {
    pub(crate) const ALL: [Resolution; 2] = [Resolution::Minute, Resolution::TenMinutes];

    /// How long one bucket spans.
    pub fn span(self) -> Duration {
        match self {
            Resolution::Minute => Duration::from_secs(60),
            Resolution::TenMinutes => Duration::from_secs(600),
        }
    }

    /// How long a bucket is kept after its last write: the longest history of this resolution.
    pub fn kept(self) -> Duration {
        match self {
            Resolution::Minute => Duration::from_secs(24 * 3600),
            Resolution::TenMinutes => Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// The finest resolution that keeps a window this long.
    pub fn for_window(window: Duration) -> Resolution {
        if window <= Resolution::Minute.kept() {
            Resolution::Minute
        } else {
            Resolution::TenMinutes
        }
    }

    fn span_ms(self) -> i64 {
        self.span().as_millis() as i64
    }

    /// The number of the bucket a time falls in: spans since the Unix epoch.
    pub(crate) fn bucket_of(self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.span_ms())
    }

    /// When bucket `index` starts, in ms since the Unix epoch.
    pub(crate) fn start_ms(self, index: i64) -> i64 {
        index.saturating_mul(self.span_ms())
    }

    /// The first and last buckets that overlap the `window` ending at `now_ms`, the window cut
    /// to what the resolution keeps.
    pub(crate) fn buckets_of(self, now_ms: i64, window: Duration) -> (i64, i64) {
        let window_ms = window.min(self.kept()).as_millis() as i64;
        (
            self.bucket_of(now_ms.saturating_sub(window_ms)),
            self.bucket_of(now_ms),
        )
    }
}

wire_enum! {
    /// How one execution (an attempt) of a task ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum ExecutionOutcome {
        /// Returned a result.
        Succeeded => "succeeded",
        /// Failed, and scheduled again.
        Retried => "retried",
        /// Failed for good: dead-lettered.
        Failed => "failed",
        /// Written by a newer version, with an outcome this one does not know.
        Unknown => "unknown",
    }
}

wire_serde!(ExecutionOutcome, Unknown);

/// How many recent executions are kept per task.
pub const RECENT_EXECUTIONS: usize = 1000;

/// How many runs are kept per schedule.
pub const SCHEDULE_RUNS: usize = 100;

/// One recent execution (attempt) of a task, as `Client::recent_executions` lists them. Stored
/// as a MessagePack map (`docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Execution {
    /// The job's id.
    pub job_id: String,
    /// Which attempt it was: 0 for the first, as in the job's record.
    #[serde(default)]
    pub attempt: u32,
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// How long it ran, in ms.
    pub run_ms: u64,
    /// The consumer name of the worker that ran it.
    pub worker: String,
    /// When it ended, in ms since the Unix epoch (the worker's clock).
    pub finished_ms: i64,
    /// For a job a schedule fired, the slot it stands for (ms since the Unix epoch); `None`
    /// for other jobs, and for a schedule's run started by hand.
    #[serde(default)]
    pub slot_ms: Option<i64>,
}

impl Execution {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(|err| Error::encode("recent execution", err))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        rmp_serde::from_slice(bytes).map_err(|err| Error::decode("recent execution", &err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn values_fall_in_the_bucket_of_their_bound() {
        assert_eq!(Histogram::bucket_of(0), 0);
        assert_eq!(Histogram::bucket_of(1), 0);
        assert_eq!(Histogram::bucket_of(2), 1);
        assert_eq!(Histogram::bucket_of(3), 2);
        assert_eq!(Histogram::bucket_of(250), 7);
        assert_eq!(Histogram::bucket_of(251), 8);
        assert_eq!(Histogram::bucket_of(3_600_000), BUCKETS - 2);
        assert_eq!(Histogram::bucket_of(3_600_001), BUCKETS - 1);
        for index in 0..BUCKETS {
            assert_eq!(
                Histogram::bucket_with_bound(Histogram::bound_of(index)),
                Some(index)
            );
        }
        assert_eq!(Histogram::bucket_with_bound(Some(7)), None, "not a bound");
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        // 100 values from 101 to 200 ms: all in the (100, 250] bucket.
        for value in 101..=200 {
            h.record(ms(value));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum(), ms((101..=200).sum()));
        assert_eq!(
            h.quantile(0.5),
            Some(ms(175)),
            "half way through (100, 250]"
        );
        assert_eq!(h.quantile(1.0), Some(ms(250)));
        // Nine more fast ones and one very slow: p90 is among the fast, p99 above them.
        let mut mixed = Histogram::default();
        for _ in 0..90 {
            mixed.record(ms(4));
        }
        for _ in 0..10 {
            mixed.record(ms(40));
        }
        let p50 = mixed.quantile(0.5).unwrap();
        assert!(p50 > ms(2) && p50 <= ms(5), "{p50:?}");
        let p99 = mixed.quantile(0.99).unwrap();
        assert!(p99 > ms(25) && p99 <= ms(50), "{p99:?}");
        let mut slow = Histogram::default();
        slow.record(Duration::from_secs(2 * 3600));
        assert_eq!(
            slow.quantile(0.5),
            Some(Duration::from_secs(3600)),
            "open bucket"
        );
    }

    #[test]
    fn merged_histograms_are_the_histogram_of_all_values() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for value in [3, 7, 700, 12_000] {
            a.record(ms(value));
            all.record(ms(value));
        }
        for value in [1, 90, 90, 4_000_000] {
            b.record(ms(value));
            all.record(ms(value));
        }
        a.merge(&b);
        assert_eq!(a, all);
        let sum: u64 = 3 + 7 + 700 + 12_000 + 1 + 180 + 4_000_000;
        assert_eq!(a.sum(), ms(sum));
        assert_eq!(a.mean().unwrap().as_millis(), u128::from(sum / 8));
    }

    #[test]
    fn a_histogram_gives_back_its_tallies() {
        let mut h = Histogram::default();
        h.record(ms(300));
        h.record(ms(2));
        let tallies: Vec<(Tally, u64)> = h.tallies(Metric::Wait).collect();
        assert_eq!(
            tallies,
            [
                (Tally::Bucket(Metric::Wait, Some(2)), 1),
                (Tally::Bucket(Metric::Wait, Some(500)), 1),
                (Tally::Sum(Metric::Wait), 302),
            ]
        );
        let mut back = TaskCounts::default();
        for (tally, count) in tallies {
            back.add(tally, count);
        }
        assert_eq!(back.queue_wait, h);
        assert_eq!(Histogram::default().tallies(Metric::Run).count(), 0);
    }

    #[test]
    fn tallies_add_up_into_counts() {
        let mut counts = TaskCounts::of("t");
        counts.add(Tally::Outcome(Outcome::Succeeded), 8);
        counts.add(Tally::Outcome(Outcome::Failed), 2);
        counts.add(Tally::Bucket(Metric::Run, Some(250)), 10);
        counts.add(Tally::Sum(Metric::Run), 1_500);
        counts.add(Tally::Bucket(Metric::Wait, None), 1);
        counts.add(Tally::Bucket(Metric::Wait, Some(7)), 5);
        assert_eq!(counts.failure_rate(), Some(0.2));
        assert_eq!(counts.run_time.count(), 10);
        assert_eq!(counts.run_time.mean(), Some(ms(150)));
        assert_eq!(counts.queue_wait.count(), 1, "an unknown bound is skipped");
        let json = serde_json::to_value(&counts).unwrap();
        assert_eq!(json["failure_rate"], 0.2);
        assert_eq!(json["run_time"]["count"], 10);
        assert_eq!(json["run_time"]["buckets"], serde_json::json!([[250, 10]]));
        assert_eq!(
            json["queue_wait"]["buckets"],
            serde_json::json!([[null, 1]])
        );
        assert_eq!(TaskCounts::default().failure_rate(), None);
    }

    #[test]
    fn resolutions_number_their_buckets_from_the_epoch() {
        let minute = Resolution::Minute;
        assert_eq!(minute.bucket_of(29_000_000 * 60_000 + 59_999), 29_000_000);
        assert_eq!(minute.start_ms(29_000_000), 29_000_000 * 60_000);
        let ten = Resolution::TenMinutes;
        assert_eq!(ten.bucket_of(600_000 * 7 + 1), 7);
        assert_eq!(Resolution::for_window(Duration::from_secs(3600)), minute);
        assert_eq!(
            Resolution::for_window(Duration::from_secs(24 * 3600)),
            minute
        );
        assert_eq!(
            Resolution::for_window(Duration::from_secs(7 * 24 * 3600)),
            ten
        );
        let now = 29_000_000 * 60_000 + 30_000;
        assert_eq!(
            minute.buckets_of(now, Duration::from_secs(60)),
            (29_000_000 - 1, 29_000_000)
        );
        assert_eq!(
            minute.buckets_of(now, Duration::from_secs(30 * 24 * 3600)),
            (29_000_000 - 24 * 60, 29_000_000),
            "cut to a day"
        );
    }

    #[test]
    fn executions_round_trip_and_read_unknown_outcomes() {
        let execution = Execution {
            job_id: "0190".into(),
            attempt: 2,
            outcome: ExecutionOutcome::Retried,
            run_ms: 12,
            worker: "host-1-abc".into(),
            finished_ms: 5,
            slot_ms: Some(60_000),
        };
        assert_eq!(
            Execution::decode(&execution.encode().unwrap()).unwrap(),
            execution
        );
        #[derive(Serialize)]
        struct Newer<'a> {
            job_id: &'a str,
            outcome: &'a str,
            run_ms: u64,
            worker: &'a str,
            finished_ms: i64,
            cpu_ms: u64,
        }
        let newer = rmp_serde::to_vec_named(&Newer {
            job_id: "x",
            outcome: "vanished",
            run_ms: 1,
            worker: "w",
            finished_ms: 1,
            cpu_ms: 3,
        })
        .unwrap();
        let read = Execution::decode(&newer).unwrap();
        assert_eq!(
            (read.outcome, read.attempt, read.slot_ms),
            (ExecutionOutcome::Unknown, 0, None)
        );
    }
}
