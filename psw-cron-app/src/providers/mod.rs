//! Quote providers: EODHD, Börsdata, and a simulated random walk for demos without an API key.
//!
//! A provider answers one batch of stocks at a time. A symbol it cannot price is a
//! [`SymbolFailure`] in the answer (the rest of the batch still counts); a batch it cannot
//! answer at all (HTTP 5xx, timeout, connection refused, rate limit that does not clear) is a
//! [`ProviderError`], which the job counts per batch and turns into a retry of the whole job
//! when every batch failed.

use std::str::FromStr;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub mod borsdata;
pub mod eodhd;
pub mod simulated;

/// A stock to price, as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRef {
    /// Row id in `stocks`.
    pub id: i64,
    /// Ticker without exchange, like `AAPL` or `ERIC B`.
    pub symbol: String,
    /// Exchange code in EODHD's terms, like `US` or `ST`.
    pub exchange: String,
    /// Börsdata's instrument id, when known.
    pub borsdata_id: Option<i64>,
    /// The latest stored price, if any (the simulated provider walks on from it).
    pub last_price: Option<Decimal>,
}

/// One price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Row id of the stock it prices.
    pub stock_id: i64,
    /// Last (or closing) price in the stock's currency.
    pub price: Decimal,
    /// When the price was made, Unix milliseconds.
    pub at_ms: i64,
    /// Traded volume, when the provider gives one.
    pub volume: Option<i64>,
}

/// A symbol the provider could not price, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolFailure {
    /// Row id of the stock.
    pub stock_id: i64,
    /// Its ticker, for the log.
    pub symbol: String,
    /// Why, in words.
    pub reason: String,
}

/// The answer to one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// The prices found.
    pub quotes: Vec<Quote>,
    /// The stocks of the batch without a price.
    pub failures: Vec<SymbolFailure>,
}

/// Why a whole batch went unanswered.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider is down, slow or throttling: worth retrying later.
    #[error("{provider} is unavailable: {detail}")]
    Unavailable {
        /// Provider name.
        provider: &'static str,
        /// What happened (status, timeout, ...).
        detail: String,
    },
    /// The provider refused the request itself (bad API key, unknown endpoint): retrying the
    /// same request cannot help.
    #[error("{provider} refused the request: {detail}")]
    Refused {
        /// Provider name.
        provider: &'static str,
        /// What it said.
        detail: String,
    },
}

/// Where and how to reach the providers; see [`crate::config`].
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// `EODHD_API_KEY`.
    pub eodhd_api_key: Option<String>,
    /// `EODHD_BASE_URL` (default `https://eodhd.com/api`).
    pub eodhd_base_url: String,
    /// `BORSDATA_API_KEY`.
    pub borsdata_api_key: Option<String>,
    /// `BORSDATA_BASE_URL` (default `https://apiservice.borsdata.se`).
    pub borsdata_base_url: String,
    /// `QUOTE_TIMEOUT`: one HTTP request's limit (default 10 s).
    pub timeout: Duration,
}

/// The provider in use.
#[derive(Debug)]
pub enum Provider {
    /// eodhd.com.
    Eodhd(eodhd::Eodhd),
    /// borsdata.se.
    Borsdata(borsdata::Borsdata),
    /// A random walk: no key is set.
    Simulated(simulated::Simulated),
}

impl Provider {
    /// The provider the settings ask for: EODHD when its key is set, else Börsdata when its key
    /// is set, else the simulation. A key of only blanks counts as unset.
    pub fn from_settings(settings: &ProviderSettings) -> Provider {
        if let Some(key) = usable_key(settings.eodhd_api_key.as_deref()) {
            Provider::Eodhd(eodhd::Eodhd::new(
                key,
                &settings.eodhd_base_url,
                settings.timeout,
            ))
        } else if let Some(key) = usable_key(settings.borsdata_api_key.as_deref()) {
            Provider::Borsdata(borsdata::Borsdata::new(
                key,
                &settings.borsdata_base_url,
                settings.timeout,
            ))
        } else {
            Provider::Simulated(simulated::Simulated::new())
        }
    }

    /// `eodhd`, `borsdata` or `simulated`.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Eodhd(_) => eodhd::NAME,
            Provider::Borsdata(_) => borsdata::NAME,
            Provider::Simulated(_) => simulated::NAME,
        }
    }

    /// Whether prices are made up (no key is set).
    pub fn is_simulated(&self) -> bool {
        matches!(self, Provider::Simulated(_))
    }

    /// How many stocks to pass to one [`Provider::fetch`].
    pub fn batch_size(&self) -> usize {
        match self {
            Provider::Eodhd(_) => eodhd::BATCH_SIZE,
            Provider::Borsdata(_) => borsdata::BATCH_SIZE,
            Provider::Simulated(_) => simulated::BATCH_SIZE,
        }
    }

    /// Prices one batch: a quote or a failure for every stock of it, or an error when the
    /// provider could not answer at all.
    pub async fn fetch(&self, batch: &[StockRef]) -> Result<Fetched, ProviderError> {
        match self {
            Provider::Eodhd(eodhd) => eodhd.fetch(batch).await,
            Provider::Borsdata(borsdata) => borsdata.fetch(batch).await,
            Provider::Simulated(simulated) => Ok(simulated.fetch(batch)),
        }
    }
}

impl ProviderError {
    fn detail(&self) -> &str {
        match self {
            ProviderError::Unavailable { detail, .. } | ProviderError::Refused { detail, .. } => {
                detail
            }
        }
    }
}

fn usable_key(key: Option<&str>) -> Option<&str> {
    key.map(str::trim).filter(|key| !key.is_empty())
}

/// How long a provider waits out "429 Too Many Requests" before giving a batch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitRetry {
    /// Requests sent again after a 429, at most.
    pub max_retries: u32,
    /// Waiting allowed in total; a `Retry-After` longer than what is left gives up at once, as
    /// the job retries the batch later anyway.
    pub max_total_wait: Duration,
}

impl Default for RateLimitRetry {
    fn default() -> Self {
        RateLimitRetry {
            max_retries: 2,
            max_total_wait: Duration::from_secs(30),
        }
    }
}

/// Used when a 429 comes without a readable `Retry-After` (or with an HTTP date).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Spaces requests evenly so the provider's published rate is never exceeded from this side,
/// whatever number of tasks share the client.
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(requests: u32, per: Duration) -> Pacer {
        Pacer {
            interval: per / requests.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = (*next).max(now) + self.interval;
    }
}

/// The HTTP side shared by the real providers: pacing, 429 handling, status mapping, and error
/// texts that never carry the API key (it travels in the query string, so reqwest errors lose
/// their URL and every detail is scrubbed of the key as well).
struct Http {
    provider: &'static str,
    /// An error here (the TLS set-up failed) is reported by every request instead of panicking
    /// at start.
    client: Result<reqwest::Client, String>,
    secret: String,
    timeout: Duration,
    pacer: Pacer,
    retry: RateLimitRetry,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("provider", &self.provider)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("request_interval", &self.pacer.interval)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Http {
    fn new(provider: &'static str, secret: &str, timeout: Duration, pacer: Pacer) -> Http {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|err| causes(&err.without_url()));
        Http {
            provider,
            client,
            secret: secret.to_owned(),
            timeout,
            pacer,
            retry: RateLimitRetry::default(),
        }
    }

    fn scrub(&self, text: String) -> String {
        if self.secret.is_empty() || !text.contains(&self.secret) {
            text
        } else {
            text.replace(&self.secret, "<redacted>")
        }
    }

    fn unavailable(&self, detail: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.provider,
            detail: self.scrub(detail.into()),
        }
    }

    fn refused(&self, detail: impl Into<String>) -> ProviderError {
        ProviderError::Refused {
            provider: self.provider,
            detail: self.scrub(detail.into()),
        }
    }

    /// `base` with `segments` appended, each percent-encoded (tickers may hold spaces).
    fn url(&self, base: &str, segments: &[&str]) -> Result<reqwest::Url, ProviderError> {
        let mut url = reqwest::Url::parse(base)
            .map_err(|err| self.refused(format!("invalid base url {base:?}: {err}")))?;
        url.path_segments_mut()
            .map_err(|()| self.refused(format!("invalid base url {base:?}: it takes no path")))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// GETs `url` with `query` and returns the body of a 2xx answer.
    async fn get_text(
        &self,
        url: reqwest::Url,
        query: &[(&str, &str)],
    ) -> Result<String, ProviderError> {
        self.get_text_unless_not_found(url, query)
            .await?
            .ok_or_else(|| self.refused(format!("http {}", StatusCode::NOT_FOUND)))
    }

    /// Like `get_text`, with `None` for an HTTP 404 (which some endpoints use for an unknown
    /// ticker rather than for a wrong URL).
    async fn get_text_unless_not_found(
        &self,
        url: reqwest::Url,
        query: &[(&str, &str)],
    ) -> Result<Option<String>, ProviderError> {
        let client = self
            .client
            .as_ref()
            .map_err(|err| self.refused(format!("the http client cannot be built: {err}")))?;
        let mut retries = 0;
        let mut waited = Duration::ZERO;
        loop {
            self.pacer.wait().await;
            let response = client
                .get(url.clone())
                .query(query)
                .send()
                .await
                .map_err(|err| self.transport(err))?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                if retries >= self.retry.max_retries {
                    return Err(self.unavailable(format!(
                        "still rate limited (http 429) after {retries} retries"
                    )));
                }
                if waited + wait > self.retry.max_total_wait {
                    return Err(self.unavailable(format!(
                        "rate limited (http 429) for {}, longer than the {} left to wait",
                        humantime::format_duration(wait),
                        humantime::format_duration(
                            self.retry.max_total_wait.saturating_sub(waited)
                        ),
                    )));
                }
                tracing::warn!(
                    provider = self.provider,
                    wait = %humantime::format_duration(wait),
                    "rate limited, waiting before the next request"
                );
                tokio::time::sleep(wait).await;
                waited += wait;
                retries += 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.refused(format!("http {status}: check the api key")));
            }
            if status.is_server_error() {
                return Err(self.unavailable(format!("http {status}")));
            }
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(self.refused(format!("http {status}")));
            }
            return response
                .text()
                .await
                .map(Some)
                .map_err(|err| self.transport(err));
        }
    }

    fn transport(&self, err: reqwest::Error) -> ProviderError {
        let err = err.without_url();
        let detail = if err.is_timeout() {
            format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )
        } else if err.is_connect() {
            format!("cannot connect: {}", root_cause(&err))
        } else {
            causes(&err)
        };
        self.unavailable(detail)
    }

    /// Parses a JSON answer with every number turned into a string first, so prices reach
    /// [`Decimal`] from their exact text (serde_json would read them as `f64`).
    fn parse_json<T: DeserializeOwned>(&self, body: &str) -> Result<T, ProviderError> {
        serde_json::from_str(&numbers_as_strings(body)).map_err(|err| {
            // The position would point into the rewritten text, not the answer.
            let text = err.to_string();
            let reason = text.split(" at line ").next().unwrap_or(&text);
            self.unavailable(format!(
                "malformed answer ({reason}), starting {:?}",
                snippet(body)
            ))
        })
    }
}

/// Seconds of a `Retry-After` header; its HTTP-date form is not worth parsing here.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error and its sources, each said once (some errors repeat their source in their own text).
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(cause) = last.source() {
        last = cause;
    }
    last.to_string()
}

fn snippet(body: &str) -> String {
    const MAX: usize = 60;
    match body.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &body[..end]),
        None => body.to_owned(),
    }
}

/// `json` with every number outside strings quoted, e.g. `{"c":123.40}` becomes
/// `{"c":"123.40"}`.
///
/// serde_json reads numbers as `f64` unless its `arbitrary_precision` feature is on, which
/// would change number handling for every crate of the build; quoting them keeps the digits.
/// Structural characters are ASCII and never occur inside a multi-byte UTF-8 sequence, so a
/// byte scan is safe.
fn numbers_as_strings(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len() + json.len() / 4);
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            match byte {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
        } else if byte == b'"' {
            in_string = true;
            i += 1;
        } else if byte == b'-' || byte.is_ascii_digit() {
            let len = bytes[i..]
                .iter()
                .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .unwrap_or(bytes.len() - i);
            out.push_str(&json[copied..i]);
            out.push('"');
            out.push_str(&json[i..i + len]);
            out.push('"');
            i += len;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&json[copied..]);
    out
}

/// A decimal from a number's text (plain or scientific); `None` for anything else, like `NA`.
fn decimal(text: &str) -> Option<Decimal> {
    let text = text.trim();
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .ok()
}

/// A whole number from a number's text (`1.2E7` too); `None` when it has a fraction.
fn integer(text: &str) -> Option<i64> {
    let text = text.trim();
    text.parse::<i64>().ok().or_else(|| {
        use rust_decimal::prelude::ToPrimitive;
        decimal(text)
            .filter(|d| d.fract().is_zero())
            .and_then(|d| d.to_i64())
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The last millisecond of `date` (`YYYY-MM-DD`, anything after it ignored) in UTC, or now when
/// that is still to come: a daily price is known once its day has traded, and a time in the
/// future would sort it after prices taken later.
fn end_of_day_ms(date: &str) -> Option<i64> {
    let day = chrono::NaiveDate::parse_from_str(date.get(..10)?, "%Y-%m-%d").ok()?;
    let end = day
        .and_hms_milli_opt(23, 59, 59, 999)?
        .and_utc()
        .timestamp_millis();
    Some(end.min(now_ms()))
}

fn failure(stock: &StockRef, provider: &'static str, reason: String) -> SymbolFailure {
    tracing::warn!(provider, symbol = %stock.symbol, stock_id = stock.id, %reason, "no quote");
    SymbolFailure {
        stock_id: stock.id,
        symbol: stock.symbol.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_numbers_outside_strings_only() {
        let json = r#"{"a":-1.50,"b":[1e3,2E-2,0],"c":"x 12 \" 3","d":true,"e":null,"é":7}"#;
        assert_eq!(
            numbers_as_strings(json),
            r#"{"a":"-1.50","b":["1e3","2E-2","0"],"c":"x 12 \" 3","d":true,"e":null,"é":"7"}"#
        );
    }

    #[test]
    fn keeps_every_digit() {
        let value: serde_json::Value =
            serde_json::from_str(&numbers_as_strings(r#"{"c":12345.678901234567891}"#)).unwrap();
        let text = value["c"].as_str().unwrap();
        assert_eq!(
            decimal(text),
            Some(Decimal::from_str("12345.678901234567891").unwrap())
        );
    }

    #[test]
    fn reads_numbers_and_refuses_the_rest() {
        assert_eq!(decimal("1.5e2"), Some(Decimal::from(150)));
        assert_eq!(decimal("NA"), None);
        assert_eq!(integer("37931706"), Some(37_931_706));
        assert_eq!(integer("1.2E7"), Some(12_000_000));
        assert_eq!(integer("1.5"), None);
    }

    #[test]
    fn ends_past_days_at_their_last_millisecond() {
        assert_eq!(end_of_day_ms("2024-01-05"), Some(1_704_499_199_999));
        assert_eq!(
            end_of_day_ms("2024-01-05T00:00:00"),
            Some(1_704_499_199_999)
        );
        assert!(end_of_day_ms("9999-01-01").unwrap() <= now_ms());
        assert_eq!(end_of_day_ms("05/01/2024"), None);
    }

    #[test]
    fn scrubs_the_key() {
        let http = Http::new(
            "test",
            "s3cret",
            Duration::from_secs(1),
            Pacer::new(1, Duration::from_secs(1)),
        );
        let err = http.unavailable("GET /x?api_token=s3cret failed");
        assert!(!err.to_string().contains("s3cret"));
        assert!(!format!("{http:?}").contains("s3cret"));
    }
}
