//! `GET /metrics`: the cluster's numbers in the Prometheus (OpenMetrics) text format, encoded by
//! the `prometheus-client` crate from a cache reading, never from the broker per scrape.
//!
//! Counters and the run-time histogram come from the all-time totals (`{ns}:stats:total`), so
//! they only grow as Prometheus expects; gauges from the reading's queues, workers and dead
//! letters.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::client::Client;
use crate::metrics::TaskCounts;
use crate::stats::ClusterStats;

/// The content type of the text [`render`] makes.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    task: String,
    queue: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// Each task's run-time histogram as the totals hold it: already counted, so encoded as it
/// is rather than observed value by value.
#[derive(Debug, Default)]
struct RunTimes(Vec<RunTime>);

/// One task's histogram: seconds summed, values counted, and (upper bound, count) per bucket.
#[derive(Debug)]
struct RunTime {
    label: TaskLabel,
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for RunTimes {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for run in &self.0 {
            encoder
                .encode_family(&run.label)?
                .encode_histogram::<NoLabelSet>(run.sum, run.count, &run.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The exposition of one reading. `client` names each task's queue (its own, for tasks linked
/// into this binary; `unknown` for others).
pub(crate) fn render(stats: &ClusterStats, totals: &[TaskCounts], client: &Client) -> String {
    let mut registry = Registry::with_prefix("psw_tasks");

    let jobs = Family::<JobLabels, Counter>::default();
    let mut run_times = RunTimes::default();
    for counts in totals {
        let queue = client
            .task_queue(&counts.task)
            .unwrap_or("unknown")
            .to_owned();
        for (outcome, count) in [
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("retried", counts.retried),
            ("dead_lettered", counts.dead_lettered),
        ] {
            jobs.get_or_create(&JobLabels {
                task: counts.task.clone(),
                queue: queue.clone(),
                outcome: outcome.to_owned(),
            })
            .inc_by(count);
        }
        let histogram = &counts.run_time;
        if histogram.count() > 0 {
            // Per bucket, as the encoder wants them; the open bucket's bound is +Inf.
            let buckets = histogram
                .buckets()
                .map(|(bound, count)| (bound.map_or(f64::MAX, |b| b.as_secs_f64()), count))
                .collect();
            run_times.0.push(RunTime {
                label: TaskLabel {
                    task: counts.task.clone(),
                },
                sum: histogram.sum().as_secs_f64(),
                count: histogram.count(),
                buckets,
            });
        }
    }
    registry.register(
        "jobs",
        "Attempts of each task by outcome, over all time (failed counts retried ones too)",
        jobs,
    );
    registry.register(
        "job_run_seconds",
        "How long each task's attempts ran, over all time",
        run_times,
    );

    let queue_jobs = Family::<QueueState, Gauge>::default();
    let oldest = Family::<QueueLabel, Gauge>::default();
    for queue in &stats.queues {
        for (state, count) in [
            ("ready", queue.ready),
            ("pending", queue.pending),
            ("delayed", queue.delayed),
        ] {
            queue_jobs
                .get_or_create(&QueueState {
                    queue: queue.name.clone(),
                    state: state.to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        oldest
            .get_or_create(&QueueLabel {
                queue: queue.name.clone(),
            })
            .set(queue.oldest_age_ms.map_or(0, |ms| (ms / 1000) as i64));
    }
    registry.register("queue_jobs", "Jobs in each queue by state", queue_jobs);
    registry.register(
        "queue_oldest_age_seconds",
        "How long the oldest ready job of each queue has waited (0 when none waits)",
        oldest,
    );

    let workers = Gauge::<i64>::default();
    workers.set(stats.workers.iter().filter(|w| w.alive).count() as i64);
    registry.register(
        "workers",
        "Workers alive (a heartbeat within three intervals)",
        workers,
    );
    let dead = Gauge::<i64>::default();
    dead.set(i64::try_from(stats.dead.len).unwrap_or(i64::MAX));
    registry.register("dead_letters", "Dead letters stored", dead);

    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(error = %err, "could not encode the metrics");
    }
    text
}
