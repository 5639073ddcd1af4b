//! What the dashboard shows, read from the broker on a fixed cadence by one task and shared by
//! every request: ten open tabs and a Prometheus scrape cost the broker what one tab does.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::exposition;
use crate::broker::{DeadJob, FailureGroup};
use crate::client::Client;
use crate::envelope::now_ms;
use crate::error::Result;
use crate::history::MetricsHistory;
use crate::scheduler::listing::{self, Listing};
use crate::stats::ClusterStats;

/// The window of the overview's counts and of its finest chart.
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the day and week charts (coarser, and more buckets to read) are read again.
const SLOW_REFRESH: Duration = Duration::from_secs(60);
/// How often the schedules (two reads per schedule: 2,000 commands at 1,000 schedules) and
/// the oldest dead letters (their bytes come along) are read again.
const LISTING_REFRESH: Duration = Duration::from_secs(30);
/// Next fire times kept per schedule.
pub(crate) const NEXT_FIRES: usize = 5;
/// Dead letters of the failures page's first page.
pub(crate) const FIRST_LETTERS: usize = 50;

/// Which parts of a reading are due besides the fast ones (stats, the hour, the totals, the
/// failure groups: a few commands each, every cadence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    /// The day and week histories.
    pub(crate) histories: bool,
    /// The schedules and the first page of dead letters.
    pub(crate) listings: bool,
}

impl Due {
    pub(crate) const ALL: Due = Due {
        histories: true,
        listings: true,
    };
}

/// One reading of the broker.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    /// Workers, queues and each task's counts over the last hour.
    pub(crate) stats: ClusterStats,
    pub(crate) hour: MetricsHistory,
    pub(crate) day: Option<MetricsHistory>,
    pub(crate) week: Option<MetricsHistory>,
    /// The failure groups of the dead letters.
    #[serde(skip)]
    pub(crate) groups: Vec<FailureGroup>,
    /// Every schedule, with its next fire times.
    #[serde(skip)]
    pub(crate) schedules: Arc<Vec<Listing>>,
    /// The oldest dead letters: the failures page's first page.
    #[serde(skip)]
    pub(crate) first_letters: Arc<Vec<DeadJob>>,
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

    /// Read the broker now: the fast parts, and those `due` (else the last ones are kept).
    pub(crate) async fn refresh(&self, client: &Client, due: Due) -> Result<()> {
        let last = self.snapshot();
        // Each history takes the buckets too old to change from the last reading: a refresh
        // reads the newest few minutes, not the hour.
        let hour = client
            .metrics_after(last.as_ref().map(|last| &last.hour), HOUR)
            .await?;
        let stats = client.stats_over(&hour, HOUR).await?;
        let totals = client.metric_totals().await?;
        let groups = client.dead_letters().groups().await?;
        let (day, week) = match (due.histories, &last) {
            (false, Some(last)) => (last.day.clone(), last.week.clone()),
            _ => (
                Some(
                    client
                        .metrics_after(last.as_ref().and_then(|last| last.day.as_ref()), DAY)
                        .await?,
                ),
                Some(
                    client
                        .metrics_after(last.as_ref().and_then(|last| last.week.as_ref()), WEEK)
                        .await?,
                ),
            ),
        };
        let (schedules, first_letters) = match (due.listings, &last) {
            (false, Some(last)) => (last.schedules.clone(), last.first_letters.clone()),
            _ => (
                Arc::new(listing::listings(client, now_ms(), NEXT_FIRES).await?),
                Arc::new(client.dead_letters().list(FIRST_LETTERS).await?),
            ),
        };
        let exposition = exposition::render(&stats, &totals, client);
        self.store(Snapshot {
            stats,
            hour,
            day,
            week,
            groups,
            schedules,
            first_letters,
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
    // The dashboard read everything just before it started serving.
    let mut last_slow = Some(Instant::now());
    let mut last_listing = Some(Instant::now());
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let due = Due {
            histories: last_slow.is_none_or(|at| at.elapsed() >= SLOW_REFRESH),
            listings: last_listing.is_none_or(|at| at.elapsed() >= LISTING_REFRESH),
        };
        match cache.refresh(&client, due).await {
            Ok(()) => {
                if due.histories {
                    last_slow = Some(Instant::now());
                }
                if due.listings {
                    last_listing = Some(Instant::now());
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
