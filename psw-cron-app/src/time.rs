//! Time as the app stores and shows it: Unix milliseconds, and how they read in messages.

use chrono::{TimeZone, Utc};

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `2026-11-29 08:00 UTC` for a Unix ms time.
pub fn format_ms(at_ms: i64) -> String {
    match Utc.timestamp_millis_opt(at_ms).single() {
        Some(at) => at.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => format!("{at_ms} ms"),
    }
}
