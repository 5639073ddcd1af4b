//! Börsdata (borsdata.se): end-of-day prices of Nordic instruments.
//!
//! `GET {base}/v1/instruments/stockprices/last?authKey=..` answers
//! `{"stockPricesList":[{"i":insId,"d":"2024-01-05","c":..,"v":..,..}]}` for every Nordic
//! instrument at once, so a batch costs one request. Stocks are matched by Börsdata's instrument
//! id; one without it is looked up in `GET {base}/v1/instruments` (`insId`, `ticker` like
//! `ERIC B`, `yahoo` like `ERIC-B.ST`), kept in the client and loaded again when a ticker is not
//! in it, at most once per fetch.

use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use super::http::{Http, Pacer, RateLimitRetry, decimal, end_of_day_ms, integer};
use super::quote::{Fetched, ProviderError, Quote, StockRef, failure};

/// The provider's name.
pub(super) const NAME: &str = "borsdata";

/// Stocks per fetch: a fetch costs one price request whatever its size (plus one instrument
/// list request now and then).
pub const BATCH_SIZE: usize = 500;

/// Börsdata's published limit per API key: 100 requests per 10 seconds
/// (`BORSDATA_RATE_LIMIT`).
pub const PUBLISHED_LIMIT: &str = "100/10s";

/// The Börsdata client.
pub struct Borsdata {
    http: Http,
    base_url: String,
    api_key: String,
    /// Held across a reload so concurrent fetches do not load the list twice.
    instruments: Mutex<Option<Instruments>>,
}

impl std::fmt::Debug for Borsdata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Borsdata")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

/// Instrument ids by Yahoo code and by ticker, both normalised (see [`yahoo_key`],
/// [`ticker_key`]).
#[derive(Debug, Default)]
struct Instruments {
    by_yahoo: HashMap<String, i64>,
    /// A ticker can be listed in several Nordic countries.
    by_ticker: HashMap<String, Vec<i64>>,
}

enum Lookup {
    Found(i64),
    Unknown,
    Ambiguous(usize),
}

impl Instruments {
    fn lookup(&self, stock: &StockRef) -> Lookup {
        // The exchange codes of StockRef (EODHD's) and Yahoo's agree for the Nordic markets
        // (ST, OL, CO, HE), which tells apart a ticker listed in two countries.
        if !stock.exchange.trim().is_empty() {
            let code = yahoo_key(&format!("{}.{}", stock.symbol, stock.exchange.trim()));
            if let Some(&id) = self.by_yahoo.get(&code) {
                return Lookup::Found(id);
            }
        }
        match self
            .by_ticker
            .get(&ticker_key(&stock.symbol))
            .map(Vec::as_slice)
        {
            Some([id]) => Lookup::Found(*id),
            Some(ids) if ids.len() > 1 => Lookup::Ambiguous(ids.len()),
            _ => Lookup::Unknown,
        }
    }
}

/// `ERIC B`, `eric-b` and `ERIC  B` are the same ticker.
fn ticker_key(ticker: &str) -> String {
    ticker
        .to_uppercase()
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ERIC B.ST` and `eric-b.st` are Yahoo's `ERIC-B.ST`.
fn yahoo_key(code: &str) -> String {
    code.to_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
}

/// One instrument of `/v1/instruments`, numbers as their text (see `numbers_as_strings`).
#[derive(Debug, Deserialize)]
struct Instrument {
    #[serde(rename = "insId")]
    ins_id: String,
    ticker: Option<String>,
    yahoo: Option<String>,
}

/// One element of `stockPricesList`.
#[derive(Debug, Deserialize)]
struct LastPrice {
    i: String,
    d: Option<String>,
    c: Option<String>,
    v: Option<String>,
}

impl Borsdata {
    /// A client for `base_url` (like `https://apiservice.borsdata.se`); `timeout` bounds each
    /// request.
    pub fn new(api_key: &str, base_url: &str, timeout: Duration) -> Borsdata {
        Borsdata {
            http: Http::new(NAME, api_key, timeout, Pacer::local(published_limit())),
            base_url: base_url.to_owned(),
            api_key: api_key.to_owned(),
            instruments: Mutex::new(None),
        }
    }

    /// Replaces how 429 answers are waited out.
    pub fn with_rate_limit_retry(mut self, retry: RateLimitRetry) -> Borsdata {
        self.http.retry = retry;
        self
    }

    /// Paces requests to `limit` in this process (default [`PUBLISHED_LIMIT`]).
    pub fn with_rate_limit(mut self, limit: psw_tasks::RateLimit) -> Borsdata {
        self.http.pacer = Pacer::local(limit);
        self
    }

    /// Paces requests through `limiter`, shared by every process of the namespace.
    pub fn with_shared_limit(mut self, limiter: psw_tasks::RateLimiter) -> Borsdata {
        self.http.pacer = Pacer::Shared(limiter);
        self
    }

    /// The rate requests are paced to.
    pub fn rate_limit(&self) -> psw_tasks::RateLimit {
        self.http.pacer.limit()
    }

    /// Prices `batch` with the last prices of all instruments.
    pub async fn fetch(&self, batch: &[StockRef]) -> Result<Fetched, ProviderError> {
        let mut fetched = Fetched::default();
        if batch.is_empty() {
            return Ok(fetched);
        }
        let ids = self.instrument_ids(batch).await?;
        let mut wanted = Vec::with_capacity(batch.len());
        for (stock, id) in batch.iter().zip(ids) {
            match id {
                Ok(id) => wanted.push((stock, id)),
                Err(reason) => fetched.failures.push(failure(stock, NAME, reason)),
            }
        }
        if wanted.is_empty() {
            return Ok(fetched);
        }

        let prices = self.last_prices().await?;
        for (stock, id) in wanted {
            let quote = match prices.get(&id) {
                Some(price) => quote(stock.id, id, price),
                None => Err(format!("no last price for instrument {id}")),
            };
            match quote {
                Ok(quote) => fetched.quotes.push(quote),
                Err(reason) => fetched.failures.push(failure(stock, NAME, reason)),
            }
        }
        Ok(fetched)
    }

    /// Each stock's instrument id, or why it has none.
    async fn instrument_ids(
        &self,
        batch: &[StockRef],
    ) -> Result<Vec<Result<i64, String>>, ProviderError> {
        if batch.iter().all(|stock| stock.borsdata_id.is_some()) {
            return Ok(batch
                .iter()
                .filter_map(|stock| stock.borsdata_id)
                .map(Ok)
                .collect());
        }
        let mut cache = self.instruments.lock().await;
        let mut reloaded = false;
        if cache.is_none() {
            *cache = Some(self.load_instruments().await?);
            reloaded = true;
        }
        let resolve = |instruments: &Instruments| -> Vec<Lookup> {
            batch
                .iter()
                .map(|stock| match stock.borsdata_id {
                    Some(id) => Lookup::Found(id),
                    None => instruments.lookup(stock),
                })
                .collect()
        };
        let mut found = cache.as_ref().map(&resolve).unwrap_or_default();
        if !reloaded && found.iter().any(|lookup| matches!(lookup, Lookup::Unknown)) {
            // A ticker listed since the list was loaded; a stale list still prices the rest.
            match self.load_instruments().await {
                Ok(instruments) => {
                    found = resolve(&instruments);
                    *cache = Some(instruments);
                }
                Err(err) => {
                    tracing::warn!(provider = NAME, error = %err, "keeping the old instrument list");
                }
            }
        }
        Ok(batch
            .iter()
            .zip(found)
            .map(|(stock, lookup)| match lookup {
                Lookup::Found(id) => Ok(id),
                Lookup::Unknown => Err(format!(
                    "ticker {:?} ({}) is not among Börsdata's instruments",
                    stock.symbol, stock.exchange
                )),
                Lookup::Ambiguous(count) => Err(format!(
                    "ticker {:?} matches {count} instruments and {:?} tells none apart; \
                     set its Börsdata id",
                    stock.symbol, stock.exchange
                )),
            })
            .collect())
    }

    async fn load_instruments(&self) -> Result<Instruments, ProviderError> {
        let url = self.http.url(&self.base_url, &["v1", "instruments"])?;
        let body = self
            .http
            .get_text(url, &[("authKey", self.api_key.as_str())])
            .await?;
        let rows = self.list(&body, "instruments")?;
        let mut instruments = Instruments::default();
        let mut unreadable = 0;
        for row in rows {
            let Some((id, instrument)) = serde_json::from_value::<Instrument>(row)
                .ok()
                .and_then(|instrument| Some((integer(&instrument.ins_id)?, instrument)))
            else {
                unreadable += 1;
                continue;
            };
            if let Some(yahoo) = instrument.yahoo.as_deref().filter(|y| !y.trim().is_empty()) {
                instruments.by_yahoo.insert(yahoo_key(yahoo), id);
            }
            if let Some(ticker) = instrument
                .ticker
                .as_deref()
                .filter(|t| !t.trim().is_empty())
            {
                instruments
                    .by_ticker
                    .entry(ticker_key(ticker))
                    .or_default()
                    .push(id);
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                provider = NAME,
                unreadable,
                "skipped unreadable instruments"
            );
        }
        Ok(instruments)
    }

    async fn last_prices(&self) -> Result<HashMap<i64, LastPrice>, ProviderError> {
        let url = self.http.url(
            &self.base_url,
            &["v1", "instruments", "stockprices", "last"],
        )?;
        let body = self
            .http
            .get_text(url, &[("authKey", self.api_key.as_str())])
            .await?;
        Ok(self
            .list(&body, "stockPricesList")?
            .into_iter()
            .filter_map(|row| serde_json::from_value::<LastPrice>(row).ok())
            .filter_map(|price| Some((integer(&price.i)?, price)))
            .collect())
    }

    /// The array under `field` of an answer object (`null` counts as empty).
    fn list(&self, body: &str, field: &str) -> Result<Vec<Value>, ProviderError> {
        let mut answer: Value = self.http.parse_json(body)?;
        match answer.get_mut(field).map(Value::take) {
            Some(Value::Array(rows)) => Ok(rows),
            Some(Value::Null) => Ok(Vec::new()),
            Some(_) => Err(self
                .http
                .unavailable(format!("malformed answer (`{field}` is not an array)"))),
            None => Err(self
                .http
                .unavailable(format!("malformed answer (no `{field}` in it)"))),
        }
    }
}

fn quote(stock_id: i64, id: i64, price: &LastPrice) -> Result<Quote, String> {
    let close = price.c.as_deref().unwrap_or("null");
    let value =
        decimal(close).ok_or_else(|| format!("no close for instrument {id} (c is {close})"))?;
    if value <= Decimal::ZERO {
        return Err(format!("non-positive close {value} for instrument {id}"));
    }
    let date = price.d.as_deref().unwrap_or("null");
    let at_ms = end_of_day_ms(date)
        .ok_or_else(|| format!("unreadable date {date:?} for instrument {id}"))?;
    Ok(Quote {
        stock_id,
        price: value,
        at_ms,
        volume: price.v.as_deref().and_then(integer),
    })
}

/// [`PUBLISHED_LIMIT`], read.
fn published_limit() -> psw_tasks::RateLimit {
    PUBLISHED_LIMIT
        .parse()
        .expect("the published limit is a valid rate limit")
}
