//! What the dashboard shows, read from the broker on a fixed cadence by one task and shared by
//! every request: ten open tabs and a Prometheus scrape cost the broker what one tab does.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::exposition;
use crate::client::Client;
use crate::envelope::now_ms;
use crate::error::Result;
use crate::history::MetricsHistory;
use crate::stats::ClusterStats;

/// The window of the overview's counts and of its finest chart.
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the day and week charts (coarser, and more buckets to read) are read again.
const SLOW_REFRESH: Duration = Duration::from_secs(60);

/// One reading of the broker.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    /// Workers, queues and each task's counts over the last hour.
    pub(crate) stats: ClusterStats,
    pub(crate) hour: MetricsHistory,
    pub(crate) day: Option<MetricsHistory>,
    pub(crate) week: Option<MetricsHistory>,
    /// `/metrics`, rendered once per reading.
    #[serde(skip)]
    pub(crate) exposition: String,
    /// When it was read, ms since the Unix epoch.
    pub(crate) at_ms: i64,
}

/// The last reading, and the last error if the broker did not answer since.
#[derive(Default)]
pub(crate) struct Cache {
    current: RwLock<Option<Arc<Snapshot>>>,
    error: RwLock<Option<String>>,
}

impl Cache {
    /// The last reading; `None` until the first one.
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Why the last reading failed, if it did.
    pub(crate) fn error(&self) -> Option<String> {
        self.error
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn store(&self, snapshot: Snapshot) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(snapshot));
        *self.error.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn failed(&self, error: String) {
        *self.error.write().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Read the broker now; the day and week charts too when `slow` (else the last ones are
    /// kept).
    pub(crate) async fn refresh(&self, client: &Client, slow: bool) -> Result<()> {
        let stats = client.stats(HOUR).await?;
        let hour = client.metrics(HOUR).await?;
        let totals = client.metric_totals().await?;
        let (day, week) = match (slow, self.snapshot()) {
            (false, Some(last)) => (last.day.clone(), last.week.clone()),
            _ => (
                Some(client.metrics(DAY).await?),
                Some(client.metrics(WEEK).await?),
            ),
        };
        let exposition = exposition::render(&stats, &totals, client);
        self.store(Snapshot {
            stats,
            hour,
            day,
            week,
            exposition,
            at_ms: now_ms(),
        });
        Ok(())
    }
}

/// Refresh the cache every `every` until `stop`.
pub(crate) async fn run(
    cache: Arc<Cache>,
    client: Client,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_slow: Option<Instant> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let slow = last_slow.is_none_or(|at| at.elapsed() >= SLOW_REFRESH);
        match cache.refresh(&client, slow).await {
            Ok(()) => {
                if slow {
                    last_slow = Some(Instant::now());
                }
                if failing {
                    tracing::info!("the dashboard reads the broker again");
                }
                failing = false;
            }
            Err(err) => {
                let error = crate::error::chain(&err);
                if !failing {
                    tracing::warn!(error = %error, "the dashboard could not read the broker; showing the last reading");
                }
                failing = true;
                cache.failed(error);
            }
        }
    }
}
