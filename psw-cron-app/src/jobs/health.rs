//! `monitor_task_health`: workers, failure rates, dead-letter growth and queue lag against the
//! thresholds of [`crate::config::HealthThresholds`]. An alert goes out when a condition starts
//! and a recovery note when it ends: once per incident, not every minute.

use std::collections::BTreeMap;

use psw_tasks::{TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

use super::app::{App, app};
use crate::time::now_ms;

/// The reading name of the dead-letter total in `monitor_state`.
const DEAD_LETTER_READING: &str = "dead_letters_added";

/// Longest alert key the `alert_state` table holds (a VARCHAR(191) key on MySQL).
const MAX_ALERT_KEY: usize = 191;

/// `<kind>:<subject>`, cut to fit the table: a long queue or task name must not make a key
/// the database shortens and then never finds again.
fn alert_key(kind: &str, subject: &str) -> String {
    let mut key = format!("{kind}:{subject}");
    if key.len() > MAX_ALERT_KEY {
        let mut end = MAX_ALERT_KEY;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
    key
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `healthy` when no condition holds, else `degraded`.
    pub worker_status: String,
    /// Workers heard from recently.
    pub workers_alive: usize,
    /// Workers that stopped without saying goodbye.
    pub workers_lost: Vec<String>,
    /// Jobs running now over all workers.
    pub active_tasks: u64,
    /// Failed attempts in the window, over all tasks.
    pub failed_tasks: u64,
    /// Dead letters stored now.
    pub dead_letters: u64,
    /// The conditions that hold, by key, with their description.
    pub conditions: BTreeMap<String, String>,
    /// Conditions alerted now (they started with this check).
    pub alerted: Vec<String>,
    /// Conditions that ended with this check.
    pub recovered: Vec<String>,
}

/// Every minute.
#[task(
    name = "psw_cron.tasks.monitor_task_health",
    retries = 0,
    timeout = "50s",
    schedule = "* * * * *",
    misfire = "skip",
    overlap = false
)]
pub async fn monitor_task_health(ctx: TaskContext) -> Result<Health, TaskError> {
    check_health(app(&ctx)?, now_ms()).await
}

/// The job's work at `now_ms`, callable without a worker.
pub async fn check_health(app: &App, now_ms: i64) -> Result<Health, TaskError> {
    let thresholds = &app.config.health;
    let stats = app.client.stats(thresholds.window).await?;
    let mut conditions = BTreeMap::new();

    let workers_alive = stats.workers.iter().filter(|worker| worker.alive).count();
    let workers_lost: Vec<String> = stats
        .workers
        .iter()
        .filter(|worker| !worker.alive)
        .map(|worker| worker.name.clone())
        .collect();
    for name in &workers_lost {
        conditions.insert(
            alert_key("worker-lost", name),
            format!(
                "worker {name} stopped sending heartbeats without shutting down (it is forgotten an hour after its last one)"
            ),
        );
    }

    let mut failed_tasks = 0;
    for counts in &stats.tasks {
        failed_tasks += counts.failed;
        let attempts = counts.succeeded + counts.failed;
        if attempts < thresholds.min_attempts {
            continue;
        }
        if let Some(rate) = counts.failure_rate()
            && rate > thresholds.max_failure_rate
        {
            conditions.insert(
                alert_key("failure-rate", &counts.task),
                format!(
                    "task {} failed {} of {} attempts ({:.0} %) in the last {}, over the {:.0} % threshold",
                    counts.task,
                    counts.failed,
                    attempts,
                    rate * 100.0,
                    humantime::format_duration(thresholds.window),
                    thresholds.max_failure_rate * 100.0
                ),
            );
        }
    }

    for queue in &stats.queues {
        if queue.ready > thresholds.max_queue_lag {
            conditions.insert(
                alert_key("queue-lag", &queue.name),
                format!(
                    "queue {} has {} jobs waiting (threshold {}), {} running",
                    queue.name, queue.ready, thresholds.max_queue_lag, queue.pending
                ),
            );
        }
    }

    // Dead letters ever added: replays, purges of old ones and the cap's trimming do not lower
    // it (a whole `dlq purge` restarts it, and the next check starts from there).
    let dead_total = stats.dead.added as i64;
    if let Some((previous, _)) = app
        .db
        .swap_reading(DEAD_LETTER_READING, dead_total, now_ms)
        .await?
    {
        let growth = dead_total - previous;
        if growth > thresholds.max_dead_letter_growth as i64 {
            conditions.insert(
                "dead-letter-growth".to_owned(),
                format!(
                    "{growth} jobs were dead-lettered since the last check (threshold {}); {} stored",
                    thresholds.max_dead_letter_growth, stats.dead.len
                ),
            );
        }
    }

    let mut alerted = Vec::new();
    for (key, detail) in &conditions {
        if app.db.open_alert(key, now_ms, detail).await? {
            tracing::warn!(condition = %key, %detail, "health alert");
            let sent = app
                .notifier
                .alert(&format!("PSW5 health: {key}"), detail)
                .await;
            if !app.notifier.channels().is_empty() && !sent.any_ok() {
                // Not told to anyone: open it again at the next check rather than never.
                app.db.close_alert(key).await?;
                continue;
            }
            alerted.push(key.clone());
        }
    }
    let mut recovered = Vec::new();
    for key in app.db.open_alerts().await? {
        if conditions.contains_key(&key) {
            continue;
        }
        if let Some((since_ms, detail)) = app.db.close_alert(&key).await? {
            let minutes = (now_ms - since_ms).max(0) / 60_000;
            tracing::info!(condition = %key, "health condition over");
            app.notifier
                .alert(
                    &format!("PSW5 health recovered: {key}"),
                    &format!("Over after {minutes} min. It was: {detail}"),
                )
                .await;
            recovered.push(key);
        }
    }

    Ok(Health {
        worker_status: if conditions.is_empty() {
            "healthy"
        } else {
            "degraded"
        }
        .to_owned(),
        workers_alive,
        workers_lost,
        active_tasks: stats
            .workers
            .iter()
            .filter(|worker| worker.alive)
            .map(|worker| worker.running)
            .sum(),
        failed_tasks,
        dead_letters: stats.dead.len,
        conditions,
        alerted,
        recovered,
    })
}
