//! Stocks and their prices.

use sqlx::AssertSqlSafe;

use super::{Db, DbError, DbResult, get, query_failed};
use crate::money;
use crate::providers::{Quote, StockRef};

/// A stock to add or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStock {
    /// Ticker, like `AAPL`.
    pub symbol: String,
    /// Exchange code, like `US` or `ST`.
    pub exchange: String,
    /// Company name.
    pub name: String,
    /// Currency of its prices, like `USD`.
    pub currency: String,
}

impl Db {
    /// Active stocks whose price was not fetched since `now_ms - refresh_ms`, by id.
    pub async fn stocks_due(&self, now_ms: i64, refresh_ms: i64) -> DbResult<Vec<StockRef>> {
        let rows = sqlx::query(
            "SELECT id, symbol, exchange, borsdata_id, last_price_e4 FROM stocks \
             WHERE active <> 0 AND (checked_at_ms IS NULL OR checked_at_ms <= ?) ORDER BY id",
        )
        .bind(now_ms - refresh_ms)
        .fetch_all(self.pool())
        .await
        .map_err(query_failed("list the stocks due"))?;
        const WHAT: &str = "read a stock";
        rows.iter()
            .map(|row| {
                Ok(StockRef {
                    id: get(row, 0, WHAT)?,
                    symbol: get(row, 1, WHAT)?,
                    exchange: get(row, 2, WHAT)?,
                    borsdata_id: get(row, 3, WHAT)?,
                    last_price: get::<Option<i64>>(row, 4, WHAT)?.map(money::from_e4),
                })
            })
            .collect()
    }

    /// Store fetched prices: one history row each (a repeat of the same instant is skipped) and
    /// the stock's latest price, unless a newer one is stored already. One transaction.
    pub async fn store_quotes(&self, quotes: &[Quote], source: &str, now_ms: i64) -> DbResult<()> {
        let insert = format!(
            "{} INTO price_history (stock_id, at_ms, price_e4, volume, source) VALUES (?, ?, ?, ?, ?)",
            self.dialect().insert_ignore()
        );
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(query_failed("begin storing prices"))?;
        for quote in quotes {
            let price_e4 = money::to_e4(quote.price).ok_or_else(|| {
                DbError::Range(format!("price {} of stock {}", quote.price, quote.stock_id))
            })?;
            sqlx::query(AssertSqlSafe(insert.as_str()))
                .bind(quote.stock_id)
                .bind(quote.at_ms)
                .bind(price_e4)
                .bind(quote.volume)
                .bind(source)
                .execute(&mut *tx)
                .await
                .map_err(query_failed("store a price"))?;
            sqlx::query(
                "UPDATE stocks SET \
                   last_price_e4 = CASE WHEN last_price_at_ms IS NULL OR last_price_at_ms <= ? THEN ? ELSE last_price_e4 END, \
                   last_price_at_ms = CASE WHEN last_price_at_ms IS NULL OR last_price_at_ms <= ? THEN ? ELSE last_price_at_ms END, \
                   checked_at_ms = ? \
                 WHERE id = ?",
            )
            .bind(quote.at_ms)
            .bind(price_e4)
            .bind(quote.at_ms)
            .bind(quote.at_ms)
            .bind(now_ms)
            .bind(quote.stock_id)
            .execute(&mut *tx)
            .await
            .map_err(query_failed("store a stock's latest price"))?;
        }
        tx.commit().await.map_err(query_failed("commit the prices"))
    }

    /// Add the stock, or update the name of the one there; its id. The currency of a stock
    /// already stored stays: its stored prices are in it.
    pub async fn upsert_stock(&self, stock: &NewStock) -> DbResult<i64> {
        let sql = format!(
            "INSERT INTO stocks (symbol, exchange, name, currency) VALUES (?, ?, ?, ?) {}",
            self.dialect()
                .upsert("symbol, exchange", &["name", "currency"])
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(&stock.symbol)
            .bind(&stock.exchange)
            .bind(&stock.name)
            .bind(&stock.currency)
            .execute(self.pool())
            .await
            .map_err(query_failed("store a stock"))?;
        let row = sqlx::query("SELECT id FROM stocks WHERE symbol = ? AND exchange = ?")
            .bind(&stock.symbol)
            .bind(&stock.exchange)
            .fetch_one(self.pool())
            .await
            .map_err(query_failed("find a stock"))?;
        get(&row, 0, "find a stock")
    }

    /// The stored latest price of a stock and its time.
    pub async fn latest_price(
        &self,
        stock_id: i64,
    ) -> DbResult<Option<(rust_decimal::Decimal, i64)>> {
        let row = sqlx::query(
            "SELECT last_price_e4, last_price_at_ms FROM stocks WHERE id = ? AND last_price_e4 IS NOT NULL",
        )
        .bind(stock_id)
        .fetch_optional(self.pool())
        .await
        .map_err(query_failed("read a stock's price"))?;
        row.map(|row| {
            Ok((
                money::from_e4(get(&row, 0, "read a stock's price")?),
                get(&row, 1, "read a stock's price")?,
            ))
        })
        .transpose()
    }

    /// How many price history rows a stock has.
    pub async fn price_history_len(&self, stock_id: i64) -> DbResult<i64> {
        let sql = format!(
            "SELECT {} FROM price_history WHERE stock_id = ?",
            self.dialect().int("COUNT(*)")
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(stock_id)
            .fetch_one(self.pool())
            .await
            .map_err(query_failed("count prices"))?;
        get(&row, 0, "count prices")
    }
}
