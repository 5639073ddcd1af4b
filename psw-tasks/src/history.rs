//! The metrics history as users read it ([`crate::Client::metrics`]): what each task did in
//! each minute of the last day or ten minutes of the last week, each task's recent executions
//! and each schedule's last runs. Workers write both with their heartbeat; `metrics.rs` has the model and
//! `docs/monitoring.md` the sizes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::broker::Broker;
use crate::error::Result;
use crate::metrics::{Execution, Resolution, TaskCounts};

/// The metrics of every task over a window, bucket by bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MetricsHistory {
    /// How long each point spans: a minute for windows up to a day, ten minutes up to a week.
    pub resolution: Resolution,
    /// Every bucket the window overlaps, oldest first, empty ones included, so that a chart
    /// has a point per interval.
    pub points: Vec<MetricsPoint>,
}

/// One bucket of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MetricsPoint {
    /// When the bucket starts, in ms since the Unix epoch.
    pub at_ms: i64,
    /// What each task did in it, sorted by task; tasks that did nothing are left out.
    pub tasks: Vec<TaskCounts>,
}

impl MetricsHistory {
    /// Each task's counts summed over the whole window, sorted by task: percentiles of the
    /// sum are those of every attempt in the window.
    pub fn totals(&self) -> Vec<TaskCounts> {
        let mut totals: BTreeMap<&str, TaskCounts> = BTreeMap::new();
        for counts in self.points.iter().flat_map(|point| &point.tasks) {
            totals
                .entry(&counts.task)
                .or_insert_with(|| TaskCounts::of(counts.task.clone()))
                .merge(counts);
        }
        totals.into_values().collect()
    }
}

/// The history of the `window` ending at `now_ms` in `resolution` (the window cut to what it
/// keeps).
pub(crate) async fn collect(
    broker: &dyn Broker,
    resolution: Resolution,
    window: Duration,
    now_ms: i64,
) -> Result<MetricsHistory> {
    refresh(broker, None, resolution, window, now_ms).await
}

/// The newest buckets a refresh reads again: a heartbeat adds to the bucket of its worker's
/// clock, so the current one grows, and a worker whose clock is behind (or a heartbeat sent
/// late) still adds to the one or two before it.
const UNSETTLED_BUCKETS: i64 = 3;

/// As [`collect`], taking from `last` (an earlier reading of the same resolution) the
/// buckets too old to change, so that a reader on a cadence (the dashboard) reads only the
/// newest few each time instead of the whole window.
pub(crate) async fn refresh(
    broker: &dyn Broker,
    last: Option<&MetricsHistory>,
    resolution: Resolution,
    window: Duration,
    now_ms: i64,
) -> Result<MetricsHistory> {
    let (from, to) = resolution.buckets_of(now_ms, window);
    let mut stored: BTreeMap<i64, Vec<TaskCounts>> = BTreeMap::new();
    let mut read_from = from;
    if let Some(last) = last.filter(|last| last.resolution == resolution) {
        let kept: BTreeMap<i64, &Vec<TaskCounts>> = last
            .points
            .iter()
            .map(|point| (resolution.bucket_of(point.at_ms), &point.tasks))
            .collect();
        // A bucket is taken from `last` only if it was settled when `last` was read (the
        // newest ones were still growing then), and only when `last` holds every such
        // bucket of this window: a reading from long ago is read again whole.
        let last_newest = kept.keys().next_back().copied().unwrap_or(i64::MIN);
        let settled_until =
            (to - UNSETTLED_BUCKETS).min(last_newest.saturating_sub(UNSETTLED_BUCKETS));
        if (from..=settled_until).all(|index| kept.contains_key(&index)) {
            stored.extend((from..=settled_until).map(|index| (index, kept[&index].clone())));
            read_from = from.max(settled_until + 1);
        }
    }
    stored.extend(broker.metrics(resolution, read_from, to).await?);
    let points = (from..=to)
        .map(|index| {
            let mut tasks = stored.remove(&index).unwrap_or_default();
            tasks.sort_by(|a, b| a.task.cmp(&b.task));
            MetricsPoint {
                at_ms: resolution.start_ms(index),
                tasks,
            }
        })
        .collect();
    Ok(MetricsHistory { resolution, points })
}

/// Every task's counts over all time, sorted by task.
pub(crate) async fn totals(broker: &dyn Broker) -> Result<Vec<TaskCounts>> {
    let mut totals = broker.metric_totals().await?;
    totals.sort_by(|a, b| a.task.cmp(&b.task));
    Ok(totals)
}

/// The last `limit` executions of `task`, newest first; entries this version cannot read are
/// skipped.
pub(crate) async fn recent(
    broker: &dyn Broker,
    task: &str,
    limit: usize,
) -> Result<Vec<Execution>> {
    Ok(decode_executions(
        &broker.recent_executions(task, limit).await?,
    ))
}

/// The last `limit` runs of `schedule`, newest first, as [`recent`].
pub(crate) async fn schedule_runs(
    broker: &dyn Broker,
    schedule: &str,
    limit: usize,
) -> Result<Vec<Execution>> {
    Ok(decode_executions(
        &broker.schedule_runs(schedule, limit).await?,
    ))
}

fn decode_executions(stored: &[Vec<u8>]) -> Vec<Execution> {
    stored
        .iter()
        .filter_map(|bytes| match Execution::decode(bytes) {
            Ok(execution) => Some(execution),
            Err(err) => {
                tracing::debug!(error = %crate::error::chain(&err), "unreadable execution skipped");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A reading of the hour ending at bucket `newest`, with a task named `marker` in every
    /// bucket: one the broker never stored, so it shows which buckets were taken from it.
    fn reading(newest: i64, marker: &str) -> MetricsHistory {
        let resolution = Resolution::Minute;
        let (from, to) = resolution.buckets_of(resolution.start_ms(newest), HOUR);
        MetricsHistory {
            resolution,
            points: (from..=to)
                .map(|index| MetricsPoint {
                    at_ms: resolution.start_ms(index),
                    tasks: vec![TaskCounts::of(marker.to_owned())],
                })
                .collect(),
        }
    }

    fn marked(history: &MetricsHistory) -> Vec<bool> {
        history
            .points
            .iter()
            .map(|point| !point.tasks.is_empty())
            .collect()
    }

    #[tokio::test]
    async fn a_refresh_reads_again_only_the_buckets_that_may_still_grow() {
        let broker = MemoryBroker::new();
        let resolution = Resolution::Minute;
        let now = resolution.start_ms(29_000_000) + 30_000;
        let newest = resolution.bucket_of(now);
        let fresh = refresh(&broker, None, resolution, HOUR, now).await.unwrap();
        assert!(marked(&fresh).iter().all(|m| !m), "nothing is stored");

        // Read a moment ago: all but the newest three are taken from it.
        let last = reading(newest, "kept");
        let got = refresh(&broker, Some(&last), resolution, HOUR, now)
            .await
            .unwrap();
        let marks = marked(&got);
        let n = marks.len();
        assert!(marks[..n - 3].iter().all(|m| *m), "settled buckets reused");
        assert!(
            marks[n - 3..].iter().all(|m| !m),
            "the newest three read again"
        );
        assert_eq!(got.points.len(), fresh.points.len());

        // Read two minutes ago: the buckets that were still growing then are read again.
        let older = reading(newest - 2, "kept");
        let marks = marked(
            &refresh(&broker, Some(&older), resolution, HOUR, now)
                .await
                .unwrap(),
        );
        assert!(marks[..n - 5].iter().all(|m| *m));
        assert!(marks[n - 5..].iter().all(|m| !m), "{marks:?}");

        // Read before the window began, or in another resolution: read whole.
        for stale in [reading(newest - 120, "kept"), {
            let mut other = reading(newest, "kept");
            other.resolution = Resolution::TenMinutes;
            other
        }] {
            let marks = marked(
                &refresh(&broker, Some(&stale), resolution, HOUR, now)
                    .await
                    .unwrap(),
            );
            assert!(marks.iter().all(|m| !m));
        }
    }
}
