//! The overview's chart series, from a metrics history: per point, the outcomes of every task
//! summed, and the percentiles of the merged histograms (percentiles cannot be summed; the
//! fixed buckets can).

use serde_json::{Value, json};

use crate::history::MetricsHistory;
use crate::metrics::{Histogram, TaskCounts};

/// A percentile in milliseconds, `null` where nothing ran.
fn quantile_ms(histogram: &Histogram, q: f64) -> Value {
    histogram
        .quantile(q)
        .map_or(Value::Null, |d| json!(d.as_secs_f64() * 1000.0))
}

pub(super) fn series(history: &MetricsHistory) -> Value {
    let mut at = Vec::new();
    let (mut succeeded, mut failed, mut retried, mut dead) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut wait: [Vec<Value>; 3] = Default::default();
    let mut run: [Vec<Value>; 3] = Default::default();
    for point in &history.points {
        let mut all = TaskCounts::default();
        for counts in &point.tasks {
            all.merge(counts);
        }
        // uPlot's x axis is in seconds.
        at.push(point.at_ms / 1000);
        succeeded.push(all.succeeded);
        failed.push(all.failed);
        retried.push(all.retried);
        dead.push(all.dead_lettered);
        for (i, q) in [0.5, 0.95, 0.99].into_iter().enumerate() {
            wait[i].push(quantile_ms(&all.queue_wait, q));
            run[i].push(quantile_ms(&all.run_time, q));
        }
    }
    let [wait_p50, wait_p95, wait_p99] = wait;
    let [run_p50, run_p95, run_p99] = run;
    json!({
        "resolution_s": history.resolution.span().as_secs(),
        "at": at,
        "succeeded": succeeded,
        "failed": failed,
        "retried": retried,
        "dead_lettered": dead,
        "wait_p50_ms": wait_p50,
        "wait_p95_ms": wait_p95,
        "wait_p99_ms": wait_p99,
        "run_p50_ms": run_p50,
        "run_p95_ms": run_p95,
        "run_p99_ms": run_p99,
    })
}
