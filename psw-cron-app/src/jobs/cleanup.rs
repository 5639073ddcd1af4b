//! `cleanup_old_data`: history, reports and dead letters past their retention.

use std::time::{Duration, SystemTime};

use psw_tasks::{TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

use super::app::{App, app};
use crate::time::now_ms;

/// What one run removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    /// Price history rows.
    pub price_history: u64,
    /// Portfolio value rows.
    pub portfolio_values: u64,
    /// Stored reports.
    pub reports: u64,
    /// Dead letters (job records expire by themselves: `PSW_RESULT_TTL`).
    pub dead_letters: u64,
}

/// Weekly, Sunday 02:00 UTC.
#[task(
    name = "psw_cron.tasks.cleanup_old_data",
    retries = 3,
    backoff = "exp",
    backoff_base = "5m",
    timeout = "1h",
    schedule = "0 2 * * 0",
    overlap = false
)]
pub async fn cleanup_old_data(ctx: TaskContext) -> Result<Cleanup, TaskError> {
    clean_up(app(&ctx)?, now_ms()).await
}

/// The job's work at `now_ms`, callable without a worker.
pub async fn clean_up(app: &App, now_ms: i64) -> Result<Cleanup, TaskError> {
    let config = &app.config;
    let cutoff = |retention: Duration| now_ms - retention.as_millis() as i64;
    let db = &app.db;
    let removed = Cleanup {
        price_history: db
            .delete_before("price_history", "at_ms", cutoff(config.price_retention))
            .await?,
        portfolio_values: db
            .delete_before("portfolio_values", "at_ms", cutoff(config.value_retention))
            .await?,
        reports: db
            .delete_before("reports", "created_at_ms", cutoff(config.report_retention))
            .await?,
        dead_letters: app
            .client
            .dead_letters()
            .purge_before(
                SystemTime::UNIX_EPOCH
                    + Duration::from_millis(cutoff(config.dead_letter_retention).max(0) as u64),
            )
            .await?,
    };
    tracing::info!(?removed, "old data removed");
    Ok(removed)
}
