//! The HTTP side shared by the real providers: pacing, 429 handling, status mapping, error texts
//! without the API key, and reading numbers exactly.

use std::str::FromStr;
use std::time::Duration;

use psw_tasks::{RateLimit, RateLimiter};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::quote::ProviderError;
use crate::time::now_ms;

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

/// Spaces requests so the provider's rate is never exceeded: in this process alone (`Local`),
/// or across every process of the namespace through a psw-tasks rate limit in Redis
/// (`Shared`, what the app runs with), so that three workers do not use the key three times
/// over.
pub(super) enum Pacer {
    Local {
        limit: RateLimit,
        next: Mutex<Instant>,
    },
    Shared(RateLimiter),
}

impl Pacer {
    pub(super) fn local(limit: RateLimit) -> Pacer {
        Pacer::Local {
            limit,
            next: Mutex::new(Instant::now()),
        }
    }

    pub(super) fn limit(&self) -> RateLimit {
        match self {
            Pacer::Local { limit, .. } => *limit,
            Pacer::Shared(limiter) => limiter.limit(),
        }
    }

    /// Wait for the next request's turn; an error when the shared limit cannot be reached.
    pub(super) async fn wait(&self) -> Result<(), String> {
        match self {
            Pacer::Local { limit, next } => {
                let interval = limit.per() / limit.count();
                let mut next = next.lock().await;
                let now = Instant::now();
                if *next > now {
                    tokio::time::sleep_until(*next).await;
                }
                *next = (*next).max(now) + interval;
                Ok(())
            }
            Pacer::Shared(limiter) => limiter.acquire().await.map_err(|err| {
                format!(
                    "the shared rate limit `{}` cannot be checked: {err}",
                    limiter.name()
                )
            }),
        }
    }
}

/// The HTTP side shared by the real providers: pacing, 429 handling, status mapping, and error
/// texts that never carry the API key (it travels in the query string, so reqwest errors lose
/// their URL and every detail is scrubbed of the key as well).
pub(super) struct Http {
    provider: &'static str,
    /// An error here (the TLS set-up failed) is reported by every request instead of panicking
    /// at start.
    client: Result<reqwest::Client, String>,
    secret: String,
    timeout: Duration,
    pub(super) pacer: Pacer,
    pub(super) retry: RateLimitRetry,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("provider", &self.provider)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("rate_limit", &self.pacer.limit().to_string())
            .field("shared", &matches!(self.pacer, Pacer::Shared(_)))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Http {
    pub(super) fn new(
        provider: &'static str,
        secret: &str,
        timeout: Duration,
        pacer: Pacer,
    ) -> Http {
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

    pub(super) fn scrub(&self, text: String) -> String {
        if self.secret.is_empty() || !text.contains(&self.secret) {
            text
        } else {
            text.replace(&self.secret, "<redacted>")
        }
    }

    pub(super) fn unavailable(&self, detail: impl Into<String>) -> ProviderError {
        ProviderError::Unavailable {
            provider: self.provider,
            detail: self.scrub(detail.into()),
        }
    }

    pub(super) fn refused(&self, detail: impl Into<String>) -> ProviderError {
        ProviderError::Refused {
            provider: self.provider,
            detail: self.scrub(detail.into()),
        }
    }

    /// `base` with `segments` appended, each percent-encoded (tickers may hold spaces).
    pub(super) fn url(&self, base: &str, segments: &[&str]) -> Result<reqwest::Url, ProviderError> {
        let mut url = reqwest::Url::parse(base)
            .map_err(|err| self.refused(format!("invalid base url {base:?}: {err}")))?;
        url.path_segments_mut()
            .map_err(|()| self.refused(format!("invalid base url {base:?}: it takes no path")))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// GETs `url` with `query` and returns the body of a 2xx answer.
    pub(super) async fn get_text(
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
    pub(super) async fn get_text_unless_not_found(
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
            self.pacer
                .wait()
                .await
                .map_err(|detail| self.unavailable(detail))?;
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

    pub(super) fn transport(&self, err: reqwest::Error) -> ProviderError {
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
    pub(super) fn parse_json<T: DeserializeOwned>(&self, body: &str) -> Result<T, ProviderError> {
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
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error and its sources, each said once (some errors repeat their source in their own text).
pub(super) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
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

pub(super) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(cause) = last.source() {
        last = cause;
    }
    last.to_string()
}

pub(super) fn snippet(body: &str) -> String {
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
pub(super) fn numbers_as_strings(json: &str) -> String {
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
pub(super) fn decimal(text: &str) -> Option<Decimal> {
    let text = text.trim();
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .ok()
}

/// A whole number from a number's text (`1.2E7` too); `None` when it has a fraction.
pub(super) fn integer(text: &str) -> Option<i64> {
    let text = text.trim();
    text.parse::<i64>().ok().or_else(|| {
        use rust_decimal::prelude::ToPrimitive;
        decimal(text)
            .filter(|d| d.fract().is_zero())
            .and_then(|d| d.to_i64())
    })
}

/// The last millisecond of `date` (`YYYY-MM-DD`, anything after it ignored) in UTC, or now when
/// that is still to come: a daily price is known once its day has traded, and a time in the
/// future would sort it after prices taken later.
pub(super) fn end_of_day_ms(date: &str) -> Option<i64> {
    let day = chrono::NaiveDate::parse_from_str(date.get(..10)?, "%Y-%m-%d").ok()?;
    let end = day
        .and_hms_milli_opt(23, 59, 59, 999)?
        .and_utc()
        .timestamp_millis();
    Some(end.min(now_ms()))
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
            Pacer::local("1/s".parse().unwrap()),
        );
        let err = http.unavailable("GET /x?api_token=s3cret failed");
        assert!(!err.to_string().contains("s3cret"));
        assert!(!format!("{http:?}").contains("s3cret"));
    }
}
