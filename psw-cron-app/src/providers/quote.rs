//! What a provider answers: quotes of the stocks it was asked for, the symbols it could not
//! price, and why a whole batch went unanswered.

use rust_decimal::Decimal;

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

impl ProviderError {
    pub(super) fn detail(&self) -> &str {
        match self {
            ProviderError::Unavailable { detail, .. } | ProviderError::Refused { detail, .. } => {
                detail
            }
        }
    }
}

/// A symbol of `stock` that `provider` could not price.
pub(super) fn failure(stock: &StockRef, provider: &'static str, reason: String) -> SymbolFailure {
    tracing::warn!(provider, symbol = %stock.symbol, stock_id = stock.id, %reason, "no quote");
    SymbolFailure {
        stock_id: stock.id,
        symbol: stock.symbol.clone(),
        reason,
    }
}
