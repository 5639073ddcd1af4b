//! Portfolios, their holdings, their value history and their reports.

use rust_decimal::Decimal;
use sqlx::AssertSqlSafe;

use super::{Db, DbError, DbResult, get, query_failed};
use crate::money;

/// Whether a holding's stock (`s`, of portfolio `p`) has a price usable in a value: one at least
/// as recent as the bound parameter, in the portfolio's currency. Written once so that the
/// value and the list of what it leaves out cannot disagree.
macro_rules! usable {
    () => {
        "(s.last_price_e4 IS NOT NULL AND s.last_price_at_ms IS NOT NULL \
         AND s.last_price_at_ms >= ? AND s.currency = p.currency)"
    };
}
const USABLE: &str = usable!();
/// True where [`USABLE`] is false or unknown.
const UNUSABLE: &str = concat!("(CASE WHEN ", usable!(), " THEN 0 ELSE 1 END) = 1");

/// A portfolio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portfolio {
    /// Row id.
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// Currency its value is in.
    pub currency: String,
}

/// A portfolio's value at one moment, as computed from its holdings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Valuation {
    /// The portfolio.
    pub portfolio_id: i64,
    /// Sum of quantity x latest price over the holdings with a fresh price in the portfolio's
    /// currency.
    pub value: Decimal,
    /// Holdings in the value.
    pub priced: i64,
    /// Holdings left out: no price, a stale one, or one in another currency.
    pub unpriced: i64,
}

/// A stored portfolio value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// The value.
    pub value: Decimal,
    /// When it was computed.
    pub at_ms: i64,
    /// Holdings it left out for want of a usable price.
    pub unpriced: i64,
}

/// A held stock without a price that can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpriced {
    /// The portfolio.
    pub portfolio_id: i64,
    /// Ticker.
    pub symbol: String,
    /// Why, in words.
    pub reason: String,
}

/// A held stock with its latest price and the price at an earlier moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedHolding {
    /// Ticker.
    pub symbol: String,
    /// Company name.
    pub name: String,
    /// Latest price.
    pub price: Decimal,
    /// The latest price at or before the earlier moment, if any.
    pub earlier: Option<Decimal>,
}

/// A report to store.
#[derive(Debug, Clone)]
pub struct StoredReport<'a> {
    /// The portfolio.
    pub portfolio_id: i64,
    /// `YYYY-MM-DD`.
    pub date: &'a str,
    /// When it was made.
    pub created_at_ms: i64,
    /// E-mail subject.
    pub subject: &'a str,
    /// The HTML page.
    pub html: &'a str,
    /// The short text summary.
    pub summary: &'a str,
    /// The chart.
    pub chart_png: Option<&'a [u8]>,
}

impl Db {
    /// Every portfolio, by id.
    pub async fn portfolios(&self) -> DbResult<Vec<Portfolio>> {
        let rows = sqlx::query("SELECT id, name, currency FROM portfolios ORDER BY id")
            .fetch_all(self.pool())
            .await
            .map_err(query_failed("list portfolios"))?;
        const WHAT: &str = "read a portfolio";
        rows.iter()
            .map(|row| {
                Ok(Portfolio {
                    id: get(row, 0, WHAT)?,
                    name: get(row, 1, WHAT)?,
                    currency: get(row, 2, WHAT)?,
                })
            })
            .collect()
    }

    /// The portfolio named `name`, created (in `currency`) when missing.
    pub async fn ensure_portfolio(
        &self,
        name: &str,
        currency: &str,
        now_ms: i64,
    ) -> DbResult<Portfolio> {
        let sql = format!(
            "{} INTO portfolios (name, currency, created_at_ms) VALUES (?, ?, ?)",
            self.dialect().insert_ignore()
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .bind(currency)
            .bind(now_ms)
            .execute(self.pool())
            .await
            .map_err(query_failed("create a portfolio"))?;
        let row = sqlx::query("SELECT id, name, currency FROM portfolios WHERE name = ?")
            .bind(name)
            .fetch_one(self.pool())
            .await
            .map_err(query_failed("find a portfolio"))?;
        Ok(Portfolio {
            id: get(&row, 0, "find a portfolio")?,
            name: get(&row, 1, "find a portfolio")?,
            currency: get(&row, 2, "find a portfolio")?,
        })
    }

    /// Set the quantity of `stock_id` held in `portfolio_id`.
    pub async fn set_holding(
        &self,
        portfolio_id: i64,
        stock_id: i64,
        quantity: Decimal,
    ) -> DbResult<()> {
        let quantity_e4 =
            money::to_e4(quantity).ok_or_else(|| DbError::Range(format!("quantity {quantity}")))?;
        let sql = format!(
            "INSERT INTO holdings (portfolio_id, stock_id, quantity_e4) VALUES (?, ?, ?) {}",
            self.dialect()
                .upsert("portfolio_id, stock_id", &["quantity_e4"])
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(portfolio_id)
            .bind(stock_id)
            .bind(quantity_e4)
            .execute(self.pool())
            .await
            .map_err(query_failed("store a holding"))?;
        Ok(())
    }

    /// Every portfolio's value from its holdings' latest prices, in one statement: a price
    /// counts when it is at least `fresh_since_ms` recent and in the portfolio's currency.
    pub async fn valuations(&self, fresh_since_ms: i64) -> DbResult<Vec<Valuation>> {
        let d = self.dialect();
        // The products are in 1/10^8 (ten-thousandths squared): exact, summed as integers.
        let sql = format!(
            "SELECT p.id, {value}, {priced}, {unpriced} \
             FROM portfolios p \
             LEFT JOIN holdings h ON h.portfolio_id = p.id \
             LEFT JOIN stocks s ON s.id = h.stock_id \
             GROUP BY p.id ORDER BY p.id",
            value = d.exact_sum(&format!("CASE WHEN {USABLE} THEN h.quantity_e4 * s.last_price_e4 ELSE 0 END")),
            priced = d.int(&format!("COALESCE(SUM(CASE WHEN {USABLE} THEN 1 ELSE 0 END), 0)")),
            unpriced = d.int(&format!(
                "COALESCE(SUM(CASE WHEN h.stock_id IS NOT NULL AND {UNUSABLE} THEN 1 ELSE 0 END), 0)"
            )),
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(fresh_since_ms)
            .bind(fresh_since_ms)
            .bind(fresh_since_ms)
            .fetch_all(self.pool())
            .await
            .map_err(query_failed("value the portfolios"))?;
        const WHAT: &str = "read a portfolio value";
        rows.iter()
            .map(|row| {
                let portfolio_id: i64 = get(row, 0, WHAT)?;
                let sum: String = get(row, 1, WHAT)?;
                let value_e8: i128 = sum.trim().parse().map_err(|_| {
                    DbError::Range(format!(
                        "the value of portfolio {portfolio_id} ({sum} / 10^8)"
                    ))
                })?;
                Ok(Valuation {
                    portfolio_id,
                    value: money::from_e8(value_e8),
                    priced: get(row, 2, WHAT)?,
                    unpriced: get(row, 3, WHAT)?,
                })
            })
            .collect()
    }

    /// The holdings that [`Db::valuations`] leaves out, with the reason, by portfolio.
    pub async fn unpriced_holdings(&self, fresh_since_ms: i64) -> DbResult<Vec<Unpriced>> {
        let sql = format!(
            "SELECT h.portfolio_id, s.symbol, s.last_price_at_ms, s.currency, p.currency \
             FROM holdings h JOIN stocks s ON s.id = h.stock_id JOIN portfolios p ON p.id = h.portfolio_id \
             WHERE {UNUSABLE} ORDER BY h.portfolio_id, s.symbol"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(fresh_since_ms)
            .fetch_all(self.pool())
            .await
            .map_err(query_failed("list unpriced holdings"))?;
        const WHAT: &str = "read an unpriced holding";
        rows.iter()
            .map(|row| {
                let at_ms: Option<i64> = get(row, 2, WHAT)?;
                let stock_currency: String = get(row, 3, WHAT)?;
                let portfolio_currency: String = get(row, 4, WHAT)?;
                let reason = match at_ms {
                    None => "no price yet".to_owned(),
                    Some(_) if stock_currency != portfolio_currency => format!(
                        "priced in {stock_currency}, the portfolio in {portfolio_currency} (no exchange rates)"
                    ),
                    Some(at_ms) => format!("last price from {}", crate::time::format_ms(at_ms)),
                };
                Ok(Unpriced {
                    portfolio_id: get(row, 0, WHAT)?,
                    symbol: get(row, 1, WHAT)?,
                    reason,
                })
            })
            .collect()
    }

    /// Store computed values, all at `at_ms`, in one transaction.
    pub async fn store_valuations(&self, valuations: &[Valuation], at_ms: i64) -> DbResult<()> {
        let sql = format!(
            "INSERT INTO portfolio_values (portfolio_id, at_ms, value_e4, priced_holdings, unpriced_holdings) \
             VALUES (?, ?, ?, ?, ?) {}",
            self.dialect().upsert(
                "portfolio_id, at_ms",
                &["value_e4", "priced_holdings", "unpriced_holdings"]
            )
        );
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(query_failed("begin storing values"))?;
        for valuation in valuations {
            let value_e4 = money::to_e4(valuation.value)
                .ok_or_else(|| DbError::Range(format!("portfolio value {}", valuation.value)))?;
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(valuation.portfolio_id)
                .bind(at_ms)
                .bind(value_e4)
                .bind(valuation.priced)
                .bind(valuation.unpriced)
                .execute(&mut *tx)
                .await
                .map_err(query_failed("store a portfolio value"))?;
        }
        tx.commit().await.map_err(query_failed("commit the values"))
    }

    /// The latest stored value at or before `at_ms`; with `unpriced`, only among the values that
    /// left out that many holdings (so that a change compares like with like).
    pub async fn value_at(
        &self,
        portfolio_id: i64,
        at_ms: i64,
        unpriced: Option<i64>,
    ) -> DbResult<Option<StoredValue>> {
        let row = sqlx::query(
            "SELECT value_e4, at_ms, unpriced_holdings FROM portfolio_values \
             WHERE portfolio_id = ? AND at_ms <= ? AND (? IS NULL OR unpriced_holdings = ?) \
             ORDER BY at_ms DESC LIMIT 1",
        )
        .bind(portfolio_id)
        .bind(at_ms)
        .bind(unpriced)
        .bind(unpriced)
        .fetch_optional(self.pool())
        .await
        .map_err(query_failed("read a portfolio value"))?;
        const WHAT: &str = "read a portfolio value";
        row.map(|row| {
            Ok(StoredValue {
                value: money::from_e4(get(&row, 0, WHAT)?),
                at_ms: get(&row, 1, WHAT)?,
                unpriced: get(&row, 2, WHAT)?,
            })
        })
        .transpose()
    }

    /// Stored values from `since_ms` on, oldest first; with `unpriced`, only those that left
    /// out that many holdings.
    pub async fn value_history(
        &self,
        portfolio_id: i64,
        since_ms: i64,
        unpriced: Option<i64>,
    ) -> DbResult<Vec<(i64, Decimal)>> {
        let rows = sqlx::query(
            "SELECT at_ms, value_e4 FROM portfolio_values \
             WHERE portfolio_id = ? AND at_ms >= ? AND (? IS NULL OR unpriced_holdings = ?) ORDER BY at_ms",
        )
        .bind(portfolio_id)
        .bind(since_ms)
        .bind(unpriced)
        .bind(unpriced)
        .fetch_all(self.pool())
        .await
        .map_err(query_failed("read the value history"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    get(row, 0, "read the value history")?,
                    money::from_e4(get(row, 1, "read the value history")?),
                ))
            })
            .collect()
    }

    /// The portfolio's priced holdings with their latest price and the price they had at
    /// `earlier_ms`, in one statement.
    pub async fn price_moves(
        &self,
        portfolio_id: i64,
        earlier_ms: i64,
    ) -> DbResult<Vec<PricedHolding>> {
        let rows = sqlx::query(
            "SELECT s.symbol, s.name, s.last_price_e4, \
                    (SELECT ph.price_e4 FROM price_history ph \
                     WHERE ph.stock_id = s.id AND ph.at_ms <= ? ORDER BY ph.at_ms DESC LIMIT 1) \
             FROM holdings h JOIN stocks s ON s.id = h.stock_id \
             WHERE h.portfolio_id = ? AND s.last_price_e4 IS NOT NULL ORDER BY s.symbol",
        )
        .bind(earlier_ms)
        .bind(portfolio_id)
        .fetch_all(self.pool())
        .await
        .map_err(query_failed("read price moves"))?;
        const WHAT: &str = "read a price move";
        rows.iter()
            .map(|row| {
                Ok(PricedHolding {
                    symbol: get(row, 0, WHAT)?,
                    name: get(row, 1, WHAT)?,
                    price: money::from_e4(get(row, 2, WHAT)?),
                    earlier: get::<Option<i64>>(row, 3, WHAT)?.map(money::from_e4),
                })
            })
            .collect()
    }

    /// Store a report, replacing one of the same portfolio and day.
    pub async fn store_report(&self, report: &StoredReport<'_>) -> DbResult<()> {
        let sql = format!(
            "INSERT INTO reports (portfolio_id, report_date, created_at_ms, subject, html, summary, chart_png) \
             VALUES (?, ?, ?, ?, ?, ?, ?) {}",
            self.dialect().upsert(
                "portfolio_id, report_date",
                &["created_at_ms", "subject", "html", "summary", "chart_png"]
            )
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(report.portfolio_id)
            .bind(report.date)
            .bind(report.created_at_ms)
            .bind(report.subject)
            .bind(report.html)
            .bind(report.summary)
            .bind(report.chart_png.map(<[u8]>::to_vec))
            .execute(self.pool())
            .await
            .map_err(query_failed("store a report"))?;
        Ok(())
    }

    /// Whether the report of that portfolio and day has been delivered already.
    pub async fn report_delivered(&self, portfolio_id: i64, date: &str) -> DbResult<bool> {
        let row = sqlx::query(
            "SELECT delivered_at_ms FROM reports WHERE portfolio_id = ? AND report_date = ?",
        )
        .bind(portfolio_id)
        .bind(date)
        .fetch_optional(self.pool())
        .await
        .map_err(query_failed("read a report's delivery"))?;
        Ok(match row {
            Some(row) => get::<Option<i64>>(&row, 0, "read a report's delivery")?.is_some(),
            None => false,
        })
    }

    /// Record that the report of that portfolio and day went out.
    pub async fn mark_report_delivered(
        &self,
        portfolio_id: i64,
        date: &str,
        at_ms: i64,
    ) -> DbResult<()> {
        sqlx::query(
            "UPDATE reports SET delivered_at_ms = ? WHERE portfolio_id = ? AND report_date = ?",
        )
        .bind(at_ms)
        .bind(portfolio_id)
        .bind(date)
        .execute(self.pool())
        .await
        .map_err(query_failed("mark a report delivered"))?;
        Ok(())
    }

    /// The portfolio's latest stored report: its day, subject, HTML and chart.
    pub async fn latest_report(
        &self,
        portfolio_id: i64,
    ) -> DbResult<Option<(String, String, String, Option<Vec<u8>>)>> {
        let row = sqlx::query(
            "SELECT report_date, subject, html, chart_png FROM reports WHERE portfolio_id = ? \
             ORDER BY report_date DESC LIMIT 1",
        )
        .bind(portfolio_id)
        .fetch_optional(self.pool())
        .await
        .map_err(query_failed("read the latest report"))?;
        const WHAT: &str = "read the latest report";
        row.map(|row| {
            Ok((
                get(&row, 0, WHAT)?,
                get(&row, 1, WHAT)?,
                get(&row, 2, WHAT)?,
                get(&row, 3, WHAT)?,
            ))
        })
        .transpose()
    }

    /// A stored report's subject, HTML and chart.
    pub async fn report(
        &self,
        portfolio_id: i64,
        date: &str,
    ) -> DbResult<Option<(String, String, Option<Vec<u8>>)>> {
        let row = sqlx::query(
            "SELECT subject, html, chart_png FROM reports WHERE portfolio_id = ? AND report_date = ?",
        )
        .bind(portfolio_id)
        .bind(date)
        .fetch_optional(self.pool())
        .await
        .map_err(query_failed("read a report"))?;
        const WHAT: &str = "read a report";
        row.map(|row| {
            Ok((
                get(&row, 0, WHAT)?,
                get(&row, 1, WHAT)?,
                get(&row, 2, WHAT)?,
            ))
        })
        .transpose()
    }

    /// Rows of each table, for `status` and the tests: stocks, price_history, portfolios,
    /// holdings, portfolio_values, reports.
    pub async fn table_counts(&self) -> DbResult<Vec<(&'static str, i64)>> {
        let mut counts = Vec::new();
        for table in [
            "stocks",
            "price_history",
            "portfolios",
            "holdings",
            "portfolio_values",
            "reports",
        ] {
            // Table names are the constants above.
            let sql = format!("SELECT {} FROM {table}", self.dialect().int("COUNT(*)"));
            let row = sqlx::query(AssertSqlSafe(sql))
                .fetch_one(self.pool())
                .await
                .map_err(query_failed("count rows"))?;
            counts.push((table, get(&row, 0, "count rows")?));
        }
        Ok(counts)
    }
}

/// The held symbols of `portfolio_id` that a value leaves out, each `SYMBOL (why)`.
pub(crate) fn missing_prices(unpriced: &[Unpriced], portfolio_id: i64) -> Vec<String> {
    unpriced
        .iter()
        .filter(|holding| holding.portfolio_id == portfolio_id)
        .map(|holding| format!("{} ({})", holding.symbol, holding.reason))
        .collect()
}
