//! Daily portfolio reports: the numbers (from [`crate::db`]), an HTML page and a short text
//! summary of them, and a PNG chart of the last 30 days' value.

use rust_decimal::Decimal;

pub mod chart;
pub mod render;

/// A change between two values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The value then.
    pub from: Decimal,
    /// Now minus then.
    pub absolute: Decimal,
    /// In percent of then; `None` when then was zero.
    pub percent: Option<Decimal>,
}

/// A holding whose price moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mover {
    /// Ticker.
    pub symbol: String,
    /// Company name.
    pub name: String,
    /// Latest price.
    pub price: Decimal,
    /// Change of the price over the day, in percent.
    pub change_percent: Decimal,
}

/// Everything a report says about one portfolio on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportData {
    /// Row id of the portfolio.
    pub portfolio_id: i64,
    /// Its name.
    pub portfolio_name: String,
    /// Its currency code, like `USD`.
    pub currency: String,
    /// The report's day, `YYYY-MM-DD` in `zone`.
    pub date: String,
    /// The zone of the day, like `Europe/Stockholm`.
    pub zone: String,
    /// Latest stored value and when it was computed (Unix ms); `None` before the first.
    pub value: Option<(Decimal, i64)>,
    /// Against the latest value at least one day, week and month old.
    pub change_day: Option<Change>,
    /// See `change_day`.
    pub change_week: Option<Change>,
    /// See `change_day`.
    pub change_month: Option<Change>,
    /// The largest moves of the day, largest first (at most five).
    pub top_movers: Vec<Mover>,
    /// Held symbols without a fresh price: the value leaves them out.
    pub missing_prices: Vec<String>,
    /// Value history of the last 30 days, oldest first: (Unix ms, value).
    pub history: Vec<(i64, Decimal)>,
}
