//! `calculate_portfolio_values`: each portfolio's value from its holdings' latest prices.

use psw_tasks::{TaskContext, TaskError, task};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::app::{App, app};
use crate::time::now_ms;

/// One portfolio's new value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortfolioValue {
    /// The portfolio.
    pub portfolio_id: i64,
    /// Its value (a decimal string in JSON).
    pub value: Decimal,
    /// Holdings in the value.
    pub priced: i64,
    /// Holdings left out, each `SYMBOL (why)`.
    pub missing: Vec<String>,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortfolioValues {
    /// How many portfolios got a new value.
    pub portfolios_updated: usize,
    /// When the values were computed, Unix ms.
    pub at_ms: i64,
    /// The values.
    pub values: Vec<PortfolioValue>,
}

/// Every 6 hours. The sum runs in SQL over all portfolios at once; a holding without a fresh
/// price (`PRICE_MAX_AGE`) is left out of the sum and named in the result, and a portfolio with
/// no usable price at all gets no value (rather than zero).
#[task(
    name = "psw_cron.tasks.calculate_portfolio_values",
    retries = 3,
    backoff = "exp",
    backoff_base = "30s",
    timeout = "10m",
    schedule = "0 */6 * * *",
    overlap = false
)]
pub async fn calculate_portfolio_values(ctx: TaskContext) -> Result<PortfolioValues, TaskError> {
    value_portfolios(app(&ctx)?).await
}

/// The job's work, callable without a worker.
pub async fn value_portfolios(app: &App) -> Result<PortfolioValues, TaskError> {
    let now = now_ms();
    let fresh_since = now - app.config.price_max_age.as_millis() as i64;
    let valuations = app.db.valuations(fresh_since).await?;
    let unpriced = app.db.unpriced_holdings(fresh_since).await?;
    // A portfolio none of whose holdings has a usable price has no value now; storing the
    // empty sum would chart it as a fall to zero.
    let (storable, unvalued): (Vec<_>, Vec<_>) = valuations
        .into_iter()
        .partition(|valuation| valuation.priced > 0 || valuation.unpriced == 0);
    app.db.store_valuations(&storable, now).await?;
    for valuation in &unvalued {
        tracing::warn!(
            portfolio = valuation.portfolio_id,
            "no holding has a usable price: no value stored"
        );
    }
    let values: Vec<PortfolioValue> = storable
        .into_iter()
        .map(|valuation| {
            let missing = crate::db::portfolio::missing_prices(&unpriced, valuation.portfolio_id);
            if !missing.is_empty() {
                tracing::warn!(portfolio = valuation.portfolio_id, missing = ?missing, "holdings left out of the value");
            }
            PortfolioValue {
                portfolio_id: valuation.portfolio_id,
                value: valuation.value,
                priced: valuation.priced,
                missing,
            }
        })
        .collect();
    tracing::info!(portfolios = values.len(), "portfolio values stored");
    Ok(PortfolioValues {
        portfolios_updated: values.len(),
        at_ms: now,
        values,
    })
}
