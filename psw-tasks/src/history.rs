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
    let (from, to) = resolution.buckets_of(now_ms, window);
    let mut stored: BTreeMap<i64, Vec<TaskCounts>> = broker
        .metrics(resolution, from, to)
        .await?
        .into_iter()
        .collect();
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
