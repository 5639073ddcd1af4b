//! `update_stock_prices`: quotes of the stocks due, in batches from the configured provider.

use psw_tasks::{TaskContext, TaskError, task};
use serde::{Deserialize, Serialize};

use super::app::{App, app};
use crate::providers::ProviderError;
use crate::time::now_ms;

/// At most this many failed symbols are named in the result (the log has them all).
const NAMED_FAILURES: usize = 50;

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceUpdate {
    /// `completed` (every due stock priced), `partial` (some failed) or `nothing_due`.
    pub status: String,
    /// The provider asked.
    pub provider: String,
    /// Stocks that were due.
    pub due: usize,
    /// Stocks priced.
    pub updated: usize,
    /// Stocks without a price this time.
    pub failed: usize,
    /// Some of the failed symbols with the reason.
    pub failures: Vec<String>,
}

/// Every 15 minutes, as the Celery beat did. A whole-provider outage retries the job with
/// exponential backoff from a minute (Celery's `countdown=60`); a provider that refuses the
/// API key fails for good (retrying cannot fix the key) and alerts through the dead-letter hook.
#[task(
    name = "psw_cron.tasks.update_stock_prices",
    retries = 3,
    backoff = "exp",
    backoff_base = "60s",
    backoff_max = "15m",
    timeout = "10m",
    schedule = "*/15 * * * *",
    overlap = false
)]
pub async fn update_stock_prices(ctx: TaskContext) -> Result<PriceUpdate, TaskError> {
    update_prices(app(&ctx)?, &ctx).await
}

/// The job's work, callable without a worker.
pub async fn update_prices(app: &App, ctx: &TaskContext) -> Result<PriceUpdate, TaskError> {
    let provider = &app.provider;
    let refresh_ms = app.config.price_refresh.as_millis() as i64;
    let due = app.db.stocks_due(now_ms(), refresh_ms).await?;
    let total = due.len();
    let mut update = PriceUpdate {
        status: "nothing_due".to_owned(),
        provider: provider.name().to_owned(),
        due: total,
        updated: 0,
        failed: 0,
        failures: Vec::new(),
    };
    if due.is_empty() {
        return Ok(update);
    }
    ctx.set_progress(
        0,
        total as u64,
        serde_json::json!({"provider": provider.name()}),
    )
    .await?;

    let mut batches = 0;
    let mut unavailable = 0;
    let mut last_outage = None;
    let mut done = 0;
    for batch in due.chunks(provider.batch_size().max(1)) {
        batches += 1;
        match provider.fetch(batch).await {
            Ok(mut fetched) => {
                // A price the database cannot hold exactly (or a non-positive one) is that
                // symbol's failure, not the batch's.
                let (storable, absurd): (Vec<_>, Vec<_>) =
                    fetched.quotes.into_iter().partition(|quote| {
                        quote.price > rust_decimal::Decimal::ZERO
                            && crate::money::to_e4(quote.price).is_some()
                    });
                for quote in absurd {
                    let symbol = batch
                        .iter()
                        .find(|stock| stock.id == quote.stock_id)
                        .map_or("?", |stock| stock.symbol.as_str());
                    fetched.failures.push(crate::providers::SymbolFailure {
                        stock_id: quote.stock_id,
                        symbol: symbol.to_owned(),
                        reason: format!("price {} out of range", quote.price),
                    });
                }
                app.db
                    .store_quotes(&storable, provider.name(), now_ms())
                    .await?;
                update.updated += storable.len();
                for failure in fetched.failures {
                    tracing::warn!(symbol = %failure.symbol, reason = %failure.reason, "no price");
                    note_failure(&mut update, &failure.symbol, &failure.reason);
                }
            }
            Err(err @ ProviderError::Refused { .. }) => {
                return Err(TaskError::permanent(err.to_string()));
            }
            Err(err @ ProviderError::Unavailable { .. }) => {
                tracing::warn!(error = %err, symbols = batch.len(), "batch unanswered");
                unavailable += 1;
                for stock in batch {
                    note_failure(&mut update, &stock.symbol, "provider unavailable");
                }
                last_outage = Some(err);
            }
        }
        done += batch.len();
        ctx.set_progress(
            done as u64,
            total as u64,
            serde_json::json!({"provider": provider.name(), "updated": update.updated, "failed": update.failed}),
        )
        .await?;
    }
    if unavailable == batches
        && let Some(outage) = last_outage
    {
        return Err(TaskError::retry(format!(
            "every one of {batches} request(s) failed: {outage}"
        )));
    }
    update.status = if update.failed == 0 {
        "completed"
    } else {
        "partial"
    }
    .to_owned();
    tracing::info!(
        updated = update.updated,
        failed = update.failed,
        provider = provider.name(),
        "stock prices updated"
    );
    Ok(update)
}

fn note_failure(update: &mut PriceUpdate, symbol: &str, reason: &str) {
    update.failed += 1;
    if update.failures.len() < NAMED_FAILURES {
        update.failures.push(format!("{symbol}: {reason}"));
    }
}
