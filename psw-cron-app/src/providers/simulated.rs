//! Made-up prices for running without an API key: a random walk from the last stored price.

use rust_decimal::Decimal;

use super::quote::{Fetched, Quote, StockRef};
use crate::time::now_ms;

/// The provider's name.
pub(super) const NAME: &str = "simulated";

/// Nothing to batch for; any size works.
pub const BATCH_SIZE: usize = 100;

/// Largest step, in hundredths of a percent.
const MAX_STEP_BP: i64 = 100;

/// Decimal places of a made-up price.
const SCALE: u32 = 4;

/// The simulated provider.
#[derive(Debug, Default)]
pub struct Simulated;

impl Simulated {
    /// A simulation.
    pub fn new() -> Simulated {
        Simulated
    }

    /// A quote for every stock: its last price moved by at most 1 %, or a start price of 50 to
    /// 500 that depends on the symbol only (so restarts do not jump around).
    pub fn fetch(&self, batch: &[StockRef]) -> Fetched {
        let at_ms = now_ms();
        let smallest = Decimal::new(1, SCALE);
        let quotes = batch
            .iter()
            .map(|stock| {
                let from = stock
                    .last_price
                    .filter(|price| *price > Decimal::ZERO)
                    .unwrap_or_else(|| start_price(&stock.symbol));
                let step = Decimal::new(10_000 + fastrand::i64(-MAX_STEP_BP..=MAX_STEP_BP), 4);
                let price = (from * step).round_dp(SCALE).max(smallest);
                Quote {
                    stock_id: stock.id,
                    price,
                    at_ms,
                    volume: None,
                }
            })
            .collect();
        Fetched {
            quotes,
            failures: Vec::new(),
        }
    }
}

/// 50.00 to 499.99 from an FNV-1a hash of the symbol.
fn start_price(symbol: &str) -> Decimal {
    let hash = symbol
        .to_uppercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    // Below 45 000, so the cast cannot wrap.
    Decimal::new(5_000 + (hash % 45_000) as i64, 2)
}
