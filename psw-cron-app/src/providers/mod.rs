//! Quote providers: EODHD, Börsdata, and a simulated random walk for demos without an API key.
//!
//! A provider answers one batch of stocks at a time. A symbol it cannot price is a
//! [`SymbolFailure`] in the answer (the rest of the batch still counts); a batch it cannot
//! answer at all (HTTP 5xx, timeout, connection refused, rate limit that does not clear) is a
//! [`ProviderError`], which the job counts per batch and turns into a retry of the whole job
//! when every batch failed.

use std::time::Duration;

use psw_tasks::{Client, RateLimit};

pub mod borsdata;
pub mod eodhd;
mod http;
mod quote;
pub mod simulated;

pub use http::RateLimitRetry;
pub use quote::{Fetched, ProviderError, Quote, StockRef, SymbolFailure};

/// Where and how to reach the providers; see [`crate::config`]. Its `Debug` masks the keys.
#[derive(Clone)]
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
    /// `EODHD_RATE_LIMIT`: requests to EODHD per API key (default its published `1000/m`).
    pub eodhd_rate_limit: RateLimit,
    /// `BORSDATA_RATE_LIMIT`: requests to Börsdata per API key (default its published
    /// `100/10s`).
    pub borsdata_rate_limit: RateLimit,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ProviderSettings {
            eodhd_api_key,
            eodhd_base_url,
            borsdata_api_key,
            borsdata_base_url,
            timeout,
            eodhd_rate_limit,
            borsdata_rate_limit,
        } = self;
        let mask = |key: &Option<String>| key.as_ref().map(|_| crate::redact::MASK);
        f.debug_struct("ProviderSettings")
            .field("eodhd_api_key", &mask(eodhd_api_key))
            .field("eodhd_base_url", &crate::redact::url(eodhd_base_url))
            .field("borsdata_api_key", &mask(borsdata_api_key))
            .field("borsdata_base_url", &crate::redact::url(borsdata_base_url))
            .field("timeout", timeout)
            .field("eodhd_rate_limit", &eodhd_rate_limit.to_string())
            .field("borsdata_rate_limit", &borsdata_rate_limit.to_string())
            .finish()
    }
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
    /// is set, else the simulation. A key of only blanks counts as unset. Requests are paced
    /// to the settings' rate in this process; [`Provider::with_shared_limit`] paces them
    /// across processes.
    pub fn from_settings(settings: &ProviderSettings) -> Provider {
        if let Some(key) = usable_key(settings.eodhd_api_key.as_deref()) {
            Provider::Eodhd(
                eodhd::Eodhd::new(key, &settings.eodhd_base_url, settings.timeout)
                    .with_rate_limit(settings.eodhd_rate_limit),
            )
        } else if let Some(key) = usable_key(settings.borsdata_api_key.as_deref()) {
            Provider::Borsdata(
                borsdata::Borsdata::new(key, &settings.borsdata_base_url, settings.timeout)
                    .with_rate_limit(settings.borsdata_rate_limit),
            )
        } else {
            Provider::Simulated(simulated::Simulated::new())
        }
    }

    /// The same provider, its requests paced at its rate through the psw-tasks rate limit
    /// named after it (`eodhd`, `borsdata`) in `client`'s namespace: every worker and process
    /// using the key together keeps to the provider's limit, not each on its own.
    pub fn with_shared_limit(self, client: &Client) -> psw_tasks::Result<Provider> {
        Ok(match self {
            Provider::Eodhd(eodhd) => {
                let limiter = client.rate_limiter(eodhd::NAME, eodhd.rate_limit())?;
                Provider::Eodhd(eodhd.with_shared_limit(limiter))
            }
            Provider::Borsdata(borsdata) => {
                let limiter = client.rate_limiter(borsdata::NAME, borsdata.rate_limit())?;
                Provider::Borsdata(borsdata.with_shared_limit(limiter))
            }
            Provider::Simulated(simulated) => Provider::Simulated(simulated),
        })
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

fn usable_key(key: Option<&str>) -> Option<&str> {
    key.map(str::trim).filter(|key| !key.is_empty())
}
