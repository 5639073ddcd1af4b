//! EODHD (eodhd.com): live prices (delayed 15-20 minutes) from `/real-time`, several tickers a
//! request, with `/eod` as the fallback for a ticker whose live values are `NA`.
//!
//! `GET {base}/real-time/{FIRST}?api_token=..&fmt=json&s={SECOND},{THIRD}` answers one object
//! for one ticker and an array for several, with `code`, `timestamp` (Unix seconds), `close`,
//! `volume`, ...; a ticker without data comes back with every value `"NA"`.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::http::{Http, Pacer, RateLimitRetry, decimal, end_of_day_ms, integer};
use super::quote::{Fetched, ProviderError, Quote, StockRef, failure};

/// The provider's name.
pub(super) const NAME: &str = "eodhd";

/// Tickers per request. Each ticker costs one API call of the daily allowance whatever the
/// batching; a short list keeps the URL small and one failing request cheap.
pub const BATCH_SIZE: usize = 15;

/// EODHD's published limit per API key: 1,000 requests a minute (`EODHD_RATE_LIMIT`).
pub const PUBLISHED_LIMIT: &str = "1000/m";

/// How far back the end-of-day fallback looks: long enough to cross holidays.
const EOD_LOOKBACK_DAYS: i64 = 14;

/// The EODHD client.
pub struct Eodhd {
    http: Http,
    base_url: String,
    api_key: String,
    eod_fallback: bool,
}

impl std::fmt::Debug for Eodhd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eodhd")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("eod_fallback", &self.eod_fallback)
            .field("http", &self.http)
            .finish()
    }
}

/// One element of a `/real-time` answer, numbers as their text (see `numbers_as_strings`).
#[derive(Debug, Deserialize)]
struct RealTime {
    code: Option<String>,
    timestamp: Option<String>,
    close: Option<String>,
    volume: Option<String>,
}

/// One day of an `/eod` answer.
#[derive(Debug, Deserialize)]
struct EndOfDay {
    date: Option<String>,
    close: Option<String>,
    volume: Option<String>,
}

impl Eodhd {
    /// A client for `base_url` (like `https://eodhd.com/api`); `timeout` bounds each request.
    pub fn new(api_key: &str, base_url: &str, timeout: Duration) -> Eodhd {
        Eodhd {
            http: Http::new(NAME, api_key, timeout, Pacer::local(published_limit())),
            base_url: base_url.to_owned(),
            api_key: api_key.to_owned(),
            eod_fallback: true,
        }
    }

    /// Replaces how 429 answers are waited out.
    pub fn with_rate_limit_retry(mut self, retry: RateLimitRetry) -> Eodhd {
        self.http.retry = retry;
        self
    }

    /// Paces requests to `limit` in this process (default [`PUBLISHED_LIMIT`]).
    pub fn with_rate_limit(mut self, limit: psw_tasks::RateLimit) -> Eodhd {
        self.http.pacer = Pacer::local(limit);
        self
    }

    /// Paces requests through `limiter`, shared by every process of the namespace.
    pub fn with_shared_limit(mut self, limiter: psw_tasks::RateLimiter) -> Eodhd {
        self.http.pacer = Pacer::Shared(limiter);
        self
    }

    /// The rate requests are paced to.
    pub fn rate_limit(&self) -> psw_tasks::RateLimit {
        self.http.pacer.limit()
    }

    /// Whether a ticker whose live values are `NA` is asked for its last end-of-day close (one
    /// more request each); on by default.
    pub fn with_eod_fallback(mut self, on: bool) -> Eodhd {
        self.eod_fallback = on;
        self
    }

    /// Prices `batch` with one `/real-time` request (plus one `/eod` request per `NA` ticker).
    pub async fn fetch(&self, batch: &[StockRef]) -> Result<Fetched, ProviderError> {
        let codes: Vec<String> = batch.iter().map(code_of).collect();
        let mut unique: Vec<&str> = Vec::with_capacity(codes.len());
        for code in &codes {
            if !unique.iter().any(|seen| seen.eq_ignore_ascii_case(code)) {
                unique.push(code);
            }
        }
        // EODHD answers 404 when the ticker in the path is unknown, whatever `s=` holds: that
        // ticker fails alone and the others are asked again without it, so one delisted stock
        // cannot starve the rest of its batch run after run.
        let mut not_found: Vec<&str> = Vec::new();
        let rows = loop {
            let Some((first, others)) = unique.split_first() else {
                break HashMap::new();
            };
            let url = self.http.url(&self.base_url, &["real-time", first])?;
            let others = others.join(",");
            let mut query = vec![("api_token", self.api_key.as_str()), ("fmt", "json")];
            if !others.is_empty() {
                query.push(("s", &others));
            }
            let Some(body) = self.http.get_text_unless_not_found(url, &query).await? else {
                not_found.push(first);
                unique.remove(0);
                continue;
            };
            let rows = match self.http.parse_json::<Value>(&body)? {
                // One ticker, one object; its `code` is not always the one asked for (an
                // unknown ticker can come back as "NA"), and there is nothing else it could be.
                row @ Value::Object(_) if unique.len() == 1 => {
                    let mut rows = HashMap::new();
                    if let Some(row) = self.row(row) {
                        rows.insert(first.to_ascii_uppercase(), row);
                    }
                    rows
                }
                Value::Object(row) => self.rows(vec![Value::Object(row)]),
                Value::Array(rows) => self.rows(rows),
                other => {
                    return Err(self.http.unavailable(format!(
                        "malformed answer (an object or an array expected, got {})",
                        kind(&other)
                    )));
                }
            };
            break rows;
        };

        let mut fetched = Fetched::default();
        for (stock, code) in batch.iter().zip(&codes) {
            if not_found
                .iter()
                .any(|unknown| unknown.eq_ignore_ascii_case(code))
            {
                fetched.failures.push(failure(
                    stock,
                    NAME,
                    format!("{code} is unknown to eodhd (http 404)"),
                ));
                continue;
            }
            let Some(row) = rows.get(&code.to_ascii_uppercase()) else {
                fetched.failures.push(failure(
                    stock,
                    NAME,
                    format!("{code} is missing from the answer"),
                ));
                continue;
            };
            match live_quote(stock.id, row) {
                Ok(quote) => fetched.quotes.push(quote),
                Err(reason) if self.eod_fallback => match self.end_of_day(stock.id, code).await {
                    Ok(quote) => {
                        tracing::info!(
                            provider = NAME,
                            symbol = %stock.symbol,
                            %reason,
                            "no live price, using the last end-of-day close"
                        );
                        fetched.quotes.push(quote);
                    }
                    Err(fallback) => fetched.failures.push(failure(
                        stock,
                        NAME,
                        format!("{reason}; end-of-day fallback: {fallback}"),
                    )),
                },
                Err(reason) => fetched.failures.push(failure(stock, NAME, reason)),
            }
        }
        Ok(fetched)
    }

    fn row(&self, row: Value) -> Option<RealTime> {
        serde_json::from_value(row)
            .inspect_err(|err| {
                tracing::warn!(provider = NAME, error = %err, "skipping an unreadable answer element");
            })
            .ok()
    }

    /// The answer's elements by upper-case code; an element without a code prices nothing.
    fn rows(&self, rows: Vec<Value>) -> HashMap<String, RealTime> {
        rows.into_iter()
            .filter_map(|row| self.row(row))
            .filter_map(|row| Some((row.code.as_deref()?.trim().to_ascii_uppercase(), row)))
            .collect()
    }

    /// The last close of the past [`EOD_LOOKBACK_DAYS`] days, or why there is none.
    async fn end_of_day(&self, stock_id: i64, code: &str) -> Result<Quote, String> {
        let today = chrono::Utc::now().date_naive();
        let from = (today - chrono::Duration::days(EOD_LOOKBACK_DAYS)).to_string();
        let to = today.to_string();
        let url = self
            .http
            .url(&self.base_url, &["eod", code])
            .map_err(|err| err.detail().to_owned())?;
        let query = [
            ("api_token", self.api_key.as_str()),
            ("fmt", "json"),
            ("from", &from),
            ("to", &to),
        ];
        let body = self
            .http
            .get_text(url, &query)
            .await
            .map_err(|err| err.detail().to_owned())?;
        let days: Vec<EndOfDay> = self
            .http
            .parse_json(&body)
            .map_err(|err| err.detail().to_owned())?;
        let last = days
            .iter()
            .filter(|day| day.close.as_deref().and_then(decimal).is_some())
            .filter_map(|day| Some((day.date.as_deref()?, day)))
            // ISO dates sort as text.
            .max_by(|(a, _), (b, _)| a.cmp(b));
        let Some((date, day)) = last else {
            return Err(format!("no close since {from}"));
        };
        let price = day.close.as_deref().and_then(decimal).unwrap_or_default();
        if price <= rust_decimal::Decimal::ZERO {
            return Err(format!("non-positive close {price} on {date}"));
        }
        let at_ms = end_of_day_ms(date).ok_or_else(|| format!("unreadable date {date:?}"))?;
        Ok(Quote {
            stock_id,
            price,
            at_ms,
            volume: day.volume.as_deref().and_then(integer),
        })
    }
}

/// EODHD's code for a stock: `SYMBOL.EXCHANGE`, blanks as dashes (`ERIC B` on `ST` is
/// `ERIC-B.ST`).
fn code_of(stock: &StockRef) -> String {
    let symbol = stock
        .symbol
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-");
    let exchange = stock.exchange.trim();
    if exchange.is_empty() {
        symbol
    } else {
        format!("{symbol}.{exchange}")
    }
}

fn live_quote(stock_id: i64, row: &RealTime) -> Result<Quote, String> {
    let close = row.close.as_deref().unwrap_or("null");
    let price = decimal(close).ok_or_else(|| format!("no live price (close is {close})"))?;
    if price <= rust_decimal::Decimal::ZERO {
        return Err(format!("non-positive live price {price}"));
    }
    let timestamp = row.timestamp.as_deref().unwrap_or("null");
    let at_ms = integer(timestamp)
        .and_then(|seconds| seconds.checked_mul(1000))
        .ok_or_else(|| format!("no live time (timestamp is {timestamp})"))?;
    Ok(Quote {
        stock_id,
        price,
        at_ms,
        volume: row.volume.as_deref().and_then(integer),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// [`PUBLISHED_LIMIT`], read.
fn published_limit() -> psw_tasks::RateLimit {
    PUBLISHED_LIMIT
        .parse()
        .expect("the published limit is a valid rate limit")
}
