//! `GET /metrics`: the cluster's numbers in the Prometheus text format (0.0.4), encoded by the
//! `prometheus` crate's `TextEncoder` from a cache reading, never from the broker per scrape.
//! The classic text format, not OpenMetrics: every Prometheus server reads it, and so does
//! `promtool check metrics`, which takes an OpenMetrics counter's `_total` samples for a
//! family without help.
//!
//! Counters and the run-time histogram come from the all-time totals (`{ns}:stats:total`), so
//! they only grow as Prometheus expects; gauges from the reading's queues, workers and dead
//! letters. The families are built as values (the crate's plain model), not registered
//! metrics: the numbers are already counted.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::client::Client;
use crate::metrics::TaskCounts;
use crate::stats::ClusterStats;

/// The content type of the text [`render`] makes.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family's name starts so.
const PREFIX: &str = "psw_tasks_";

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(format!("{PREFIX}{name}"));
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    )
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = labelled(labels);
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    metric.set_gauge(gauge);
    metric
}

/// The exposition of one reading. `client` names each task's queue (its own, for tasks linked
/// into this binary; `unknown` for others).
pub(crate) fn render(stats: &ClusterStats, totals: &[TaskCounts], client: &Client) -> String {
    let mut jobs = Vec::new();
    let mut run_times = Vec::new();
    for counts in totals {
        let queue = client.task_queue(&counts.task).unwrap_or("unknown");
        for (outcome, count) in [
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("retried", counts.retried),
            ("dead_lettered", counts.dead_lettered),
        ] {
            let mut metric = labelled(&[
                ("task", &counts.task),
                ("queue", queue),
                ("outcome", outcome),
            ]);
            let mut counter = Counter::default();
            counter.set_value(count as f64);
            metric.set_counter(counter);
            jobs.push(metric);
        }
        let histogram = &counts.run_time;
        if histogram.count() > 0 {
            // Cumulative counts per finite bound; the encoder adds `+Inf` from the count.
            let mut below = 0;
            let buckets = histogram
                .buckets()
                .filter_map(|(bound, count)| {
                    below += count;
                    let bound = bound?;
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(bound.as_secs_f64());
                    bucket.set_cumulative_count(below);
                    Some(bucket)
                })
                .collect();
            let mut run = Histogram::default();
            run.set_sample_count(histogram.count());
            run.set_sample_sum(histogram.sum().as_secs_f64());
            run.set_bucket(buckets);
            let mut metric = labelled(&[("task", &counts.task)]);
            metric.set_histogram(run);
            run_times.push(metric);
        }
    }

    let mut queue_jobs = Vec::new();
    let mut oldest = Vec::new();
    for queue in &stats.queues {
        for (state, count) in [
            ("ready", queue.ready),
            ("pending", queue.pending),
            ("delayed", queue.delayed),
        ] {
            queue_jobs.push(gauge(
                &[("queue", &queue.name), ("state", state)],
                count as f64,
            ));
        }
        let age = queue.oldest_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
        oldest.push(gauge(&[("queue", &queue.name)], age));
    }
    let alive = stats.workers.iter().filter(|w| w.alive).count();

    let families = [
        family(
            "jobs_total",
            "Attempts of each task by outcome, over all time (failed counts retried ones too)",
            MetricType::COUNTER,
            jobs,
        ),
        family(
            "job_run_seconds",
            "How long each task's attempts ran, over all time",
            MetricType::HISTOGRAM,
            run_times,
        ),
        family(
            "queue_jobs",
            "Jobs in each queue by state",
            MetricType::GAUGE,
            queue_jobs,
        ),
        family(
            "queue_oldest_age_seconds",
            "How long the oldest ready job of each queue has waited (0 when none waits)",
            MetricType::GAUGE,
            oldest,
        ),
        family(
            "workers",
            "Workers alive (a heartbeat within three intervals)",
            MetricType::GAUGE,
            vec![gauge(&[], alive as f64)],
        ),
        family(
            "dead_letters",
            "Dead letters stored",
            MetricType::GAUGE,
            vec![gauge(&[], stats.dead.len as f64)],
        ),
    ];
    // A family with no sample (no task has run yet) is left out, as registries do.
    let families: Vec<MetricFamily> = families
        .into_iter()
        .filter(|family| !family.get_metric().is_empty())
        .collect();

    let mut text = Vec::new();
    if let Err(err) = TextEncoder::new().encode(&families, &mut text) {
        tracing::error!(error = %err, "could not encode the metrics");
    }
    String::from_utf8(text).unwrap_or_default()
}
