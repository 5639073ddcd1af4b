//! Money and quantities as exact decimals, stored as integers of ten-thousandths.
//!
//! SQLite has no decimal type (a `DECIMAL` column stores a float), so both databases keep
//! prices, quantities and values as `BIGINT` counts of 1/10 000 and sums run on integers in SQL.
//! A value is a quantity times a price: 1/10^8, rescaled to 1/10^4 here with banker's rounding.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// Decimal places kept in the database.
pub const SCALE: u32 = 4;

/// `value` in ten-thousandths, rounded half to even; `None` when it does not fit an `i64`.
pub fn to_e4(value: Decimal) -> Option<i64> {
    let mut scaled = value.round_dp(SCALE);
    scaled.rescale(SCALE);
    scaled.mantissa().to_i64()
}

/// The decimal that `e4` ten-thousandths stand for.
pub fn from_e4(e4: i64) -> Decimal {
    Decimal::new(e4, SCALE)
}

/// A sum of quantity x price products (both in ten-thousandths, so 1/10^8) as a decimal.
pub fn from_e8(e8: i128) -> Decimal {
    Decimal::from_i128_with_scale(e8, 2 * SCALE).round_dp(SCALE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_four_places() {
        let price: Decimal = "123.4567".parse().unwrap();
        assert_eq!(to_e4(price), Some(1_234_567));
        assert_eq!(from_e4(1_234_567), price);
    }

    #[test]
    fn rounds_extra_places_half_to_even() {
        assert_eq!(to_e4("0.00005".parse().unwrap()), Some(0));
        assert_eq!(to_e4("0.00015".parse().unwrap()), Some(2));
        assert_eq!(to_e4("-1.23456".parse().unwrap()), Some(-12_346));
    }

    #[test]
    fn products_rescale_exactly() {
        // 3 shares at 10.0001 = 30.0003
        assert_eq!(
            from_e8(30_000 * 100_001),
            "30.0003".parse::<Decimal>().unwrap()
        );
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert_eq!(to_e4(Decimal::MAX), None);
    }
}
