//! The daily report as words: an e-mail subject, an HTML page and its plain-text alternative,
//! and a short Telegram message.
//!
//! All numbers are formatted from the decimals themselves (no float ever touches a figure a
//! reader sees), with the currency code in front, thousands separators and fixed decimals.

use std::fmt::Write as _;

use crate::notify::escape_html;
use chrono::DateTime;
use chrono_tz::Tz;
use rust_decimal::{Decimal, RoundingStrategy};

use super::{Change, Mover, ReportData};

/// Telegram refuses a photo caption over 1024 characters; staying strictly under it leaves the
/// message usable either as a caption or as a text message.
const TELEGRAM_LIMIT: usize = 1023;

/// The three periods of a report, with the words a missing change is explained by.
const PERIODS: [(&str, &str); 3] = [("Day", "a day"), ("Week", "a week"), ("Month", "a month")];

/// `Subject:` line of the report e-mail, like `PSW5 daily report: Growth 2024-03-05`.
///
/// Control characters from the data become spaces: a header must stay on one line.
pub fn subject(report: &ReportData) -> String {
    let raw = format!(
        "PSW5 daily report: {} {}",
        report.portfolio_name, report.date
    );
    raw.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The report as a self-contained HTML e-mail page.
///
/// Styles are inline because many mail clients drop `<style>` blocks. `chart_cid` is the
/// Content-ID of the chart attached as an inline image, if there is one.
pub fn html(report: &ReportData, chart_cid: Option<&str>) -> String {
    let name = escape_html(&report.portfolio_name);
    let mut out = String::with_capacity(8 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(out, "<title>{}</title>", escape_html(&subject(report)));
    out.push_str("</head>\n");
    out.push_str(
        "<body style=\"margin:0;padding:0;background-color:#f3f4f6;\">\n\
         <table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" \
         border=\"0\" style=\"background-color:#f3f4f6;\">\n<tr><td align=\"center\" \
         style=\"padding:24px 12px;\">\n\
         <table role=\"presentation\" width=\"640\" cellpadding=\"0\" cellspacing=\"0\" \
         border=\"0\" style=\"width:100%;max-width:640px;background-color:#ffffff;\
         border:1px solid #d9dde3;border-radius:6px;font-family:Arial,Helvetica,sans-serif;\
         font-size:14px;line-height:1.5;color:#1f2328;\">\n<tr><td style=\"padding:24px;\">\n",
    );

    let _ = writeln!(
        out,
        "<p style=\"margin:0;font-size:12px;color:#6b7280;text-transform:uppercase;\
         letter-spacing:0.05em;\">PSW5 daily report</p>\n\
         <h1 style=\"margin:4px 0 0 0;font-size:22px;line-height:1.3;color:#111827;\">{name}</h1>\n\
         <p style=\"margin:4px 0 16px 0;color:#6b7280;\">{} ({})</p>",
        escape_html(&report.date),
        escape_html(&report.zone),
    );

    if !report.missing_prices.is_empty() {
        let _ = writeln!(
            out,
            "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" \
             border=\"0\" style=\"margin:0 0 16px 0;\"><tr><td style=\"padding:12px 14px;\
             background-color:#fff4e5;border:1px solid #f0b46c;border-left:6px solid #d97706;\
             color:#7c2d12;\"><strong>Warning:</strong> {}: <strong>{}</strong></td></tr></table>",
            MISSING_PRICES_WARNING,
            escape_html(&report.missing_prices.join(", ")),
        );
    }

    match report.value {
        Some((value, at)) => {
            let _ = writeln!(
                out,
                "<p style=\"margin:0;color:#6b7280;\">Value</p>\n\
                 <p style=\"margin:0;font-size:28px;font-weight:bold;color:#111827;\">{}</p>\n\
                 <p style=\"margin:0 0 16px 0;color:#6b7280;\">as of {}</p>",
                escape_html(&money(value, &report.currency)),
                escape_html(&timestamp(at, &report.zone)),
            );
        }
        None => out.push_str(
            "<p style=\"margin:0 0 16px 0;font-size:16px;color:#6b7280;\">\
             No value computed yet.</p>\n",
        ),
    }

    out.push_str(
        "<h2 style=\"margin:0 0 8px 0;font-size:16px;color:#111827;\">Changes</h2>\n\
         <table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" \
         style=\"margin:0 0 20px 0;border-collapse:collapse;\">\n",
    );
    for ((period, ago), change) in PERIODS.iter().zip(changes(report)) {
        let cell = match change {
            Some(change) => format!(
                "<span style=\"color:{};font-weight:bold;\">{}</span> \
                 <span style=\"color:#6b7280;\">from {}</span>",
                sign_colour(change.absolute),
                escape_html(&change_summary(change, &report.currency)),
                escape_html(&money(change.from, &report.currency)),
            ),
            None => format!("<span style=\"color:#6b7280;\">no value {ago} ago</span>"),
        };
        let _ = writeln!(
            out,
            "<tr><td style=\"padding:2px 16px 2px 0;color:#374151;\">{period}</td>\
             <td style=\"padding:2px 0;\">{cell}</td></tr>",
        );
    }
    out.push_str("</table>\n");

    if let Some(cid) = chart_cid {
        let _ = writeln!(
            out,
            "<img src=\"cid:{}\" width=\"592\" alt=\"Value of {name} over the last 30 days\" \
             style=\"display:block;width:100%;max-width:592px;height:auto;border:0;\
             margin:0 0 20px 0;\">",
            escape_html(cid),
        );
    }

    out.push_str("<h2 style=\"margin:0 0 8px 0;font-size:16px;color:#111827;\">Top movers</h2>\n");
    if report.top_movers.is_empty() {
        out.push_str("<p style=\"margin:0 0 16px 0;color:#6b7280;\">No price moves today.</p>\n");
    } else {
        out.push_str(
            "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" \
             border=\"0\" style=\"margin:0 0 16px 0;border-collapse:collapse;\">\n<tr>",
        );
        for (heading, align) in [
            ("Symbol", "left"),
            ("Name", "left"),
            ("Price", "right"),
            ("Day", "right"),
        ] {
            let _ = write!(
                out,
                "<th align=\"{align}\" style=\"padding:6px 8px;border-bottom:2px solid #d9dde3;\
                 text-align:{align};font-size:12px;color:#6b7280;\">{heading}</th>",
            );
        }
        out.push_str("</tr>\n");
        for mover in &report.top_movers {
            let _ = writeln!(
                out,
                "<tr><td style=\"padding:6px 8px;border-bottom:1px solid #eef0f3;\
                 font-family:Consolas,Menlo,monospace;\">{}</td>\
                 <td style=\"padding:6px 8px;border-bottom:1px solid #eef0f3;\">{}</td>\
                 <td align=\"right\" style=\"padding:6px 8px;border-bottom:1px solid #eef0f3;\
                 text-align:right;white-space:nowrap;\">{}</td>\
                 <td align=\"right\" style=\"padding:6px 8px;border-bottom:1px solid #eef0f3;\
                 text-align:right;white-space:nowrap;color:{};font-weight:bold;\">{}</td></tr>",
                escape_html(&mover.symbol),
                escape_html(&mover.name),
                escape_html(&price(mover.price)),
                sign_colour(mover.change_percent),
                escape_html(&percent(mover.change_percent)),
            );
        }
        out.push_str("</table>\n");
    }

    out.push_str(
        "<p style=\"margin:16px 0 0 0;font-size:12px;color:#9ca3af;\">\
         Sent by the PSW5 background jobs.</p>\n\
         </td></tr>\n</table>\n</td></tr>\n</table>\n</body>\n</html>\n",
    );
    out
}

/// The report as plain text: the alternative part of the e-mail, with the same content as
/// [`html`].
pub fn text(report: &ReportData) -> String {
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "PSW5 daily report: {}", report.portfolio_name);
    let _ = writeln!(out, "{} ({})", report.date, report.zone);
    out.push('\n');

    if !report.missing_prices.is_empty() {
        let _ = writeln!(
            out,
            "WARNING: {}: {}",
            MISSING_PRICES_WARNING,
            report.missing_prices.join(", ")
        );
        out.push('\n');
    }

    match report.value {
        Some((value, at)) => {
            let _ = writeln!(
                out,
                "Value: {} (as of {})",
                money(value, &report.currency),
                timestamp(at, &report.zone)
            );
        }
        None => out.push_str("No value computed yet.\n"),
    }
    out.push('\n');

    out.push_str("Changes\n");
    for ((period, ago), change) in PERIODS.iter().zip(changes(report)) {
        let label = format!("{period}:");
        match change {
            Some(change) => {
                let _ = writeln!(
                    out,
                    "  {label:<7}{} from {}",
                    change_summary(change, &report.currency),
                    money(change.from, &report.currency)
                );
            }
            None => {
                let _ = writeln!(out, "  {label:<7}no value {ago} ago");
            }
        }
    }
    out.push('\n');

    out.push_str("Top movers\n");
    if report.top_movers.is_empty() {
        out.push_str("  No price moves today.\n");
    } else {
        let rows: Vec<[String; 4]> = report
            .top_movers
            .iter()
            .map(|m| {
                [
                    m.symbol.clone(),
                    m.name.clone(),
                    price(m.price),
                    percent(m.change_percent),
                ]
            })
            .collect();
        let width = |column: usize| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (symbol_w, name_w, price_w, change_w) = (width(0), width(1), width(2), width(3));
        for [symbol, name, price, change] in &rows {
            let line = format!(
                "  {symbol:<symbol_w$}  {name:<name_w$}  {price:>price_w$}  {change:>change_w$}"
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// A short summary for Telegram, in its HTML parse mode (only `<b>`, `<i>` and `<code>`), under
/// 1024 characters so that it also fits as a photo caption.
///
/// The name, the value and the day's change always fit (long data is shortened); the
/// missing-prices warning comes before the movers, which are dropped first when space runs out.
pub fn telegram_summary(report: &ReportData) -> String {
    let mut head = format!(
        "<b>{}</b>\n{}\n",
        escape_html(&shorten(&report.portfolio_name, 48)),
        escape_html(&shorten(&report.date, 16)),
    );
    let currency = shorten(&report.currency, 8);
    match report.value {
        Some((value, _)) => {
            let _ = writeln!(
                head,
                "Value: <b>{}</b>",
                escape_html(&money(value, &currency))
            );
        }
        None => head.push_str("Value: <i>none yet</i>\n"),
    }
    match &report.change_day {
        Some(change) => {
            let mut summary = change_summary(change, &currency);
            if change.percent.is_none() {
                // Without a percent, the old value is what gives the change a scale.
                let _ = write!(summary, " from {}", money(change.from, &currency));
            }
            let _ = writeln!(head, "Day: {}", escape_html(&summary));
        }
        None => head.push_str("Day: <i>no value a day ago</i>\n"),
    }

    let warning = if report.missing_prices.is_empty() {
        String::new()
    } else {
        let lead = "\n⚠️ <b>No fresh price, left out of the value:</b> ";
        let room = TELEGRAM_LIMIT
            .saturating_sub(utf16_len(&head) + utf16_len(lead))
            .min(320);
        format!("{lead}{}\n", symbol_list(&report.missing_prices, room))
    };

    let mut movers = String::new();
    if !report.top_movers.is_empty() {
        let lead = "\n<b>Top movers</b>\n";
        let mut room = TELEGRAM_LIMIT.saturating_sub(utf16_len(&head) + utf16_len(&warning));
        if room > utf16_len(lead) {
            room -= utf16_len(lead);
            let mut lines = String::new();
            for mover in report.top_movers.iter().take(3) {
                let line = mover_line(mover);
                if utf16_len(&line) > room {
                    break;
                }
                room -= utf16_len(&line);
                lines.push_str(&line);
            }
            if !lines.is_empty() {
                movers = format!("{lead}{lines}");
            }
        }
    }

    let mut out = head;
    out.push_str(&movers);
    out.push_str(&warning);
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// The sentence every channel uses for held symbols without a fresh price.
const MISSING_PRICES_WARNING: &str =
    "these holdings have no fresh price and are left out of the value";

/// The three changes in the order of [`PERIODS`].
fn changes(report: &ReportData) -> [Option<&Change>; 3] {
    [
        report.change_day.as_ref(),
        report.change_week.as_ref(),
        report.change_month.as_ref(),
    ]
}

/// `USD +123.45 (+1.01 %)`; without a percent when the old value was zero.
fn change_summary(change: &Change, currency: &str) -> String {
    let absolute = signed_money(change.absolute, currency);
    match change.percent {
        Some(p) => format!("{absolute} ({})", percent(p)),
        None => absolute,
    }
}

/// One Telegram line of a mover: `<code>AAPL</code> +2.35 % Apple Inc. (189.25)`.
fn mover_line(mover: &Mover) -> String {
    format!(
        "<code>{}</code> {} {} ({})\n",
        escape_html(&shorten(&mover.symbol, 12)),
        escape_html(&percent(mover.change_percent)),
        escape_html(&shorten(&mover.name, 28)),
        escape_html(&price(mover.price)),
    )
}

/// `symbols` joined by commas and escaped, ending in `and N more` when all would not fit in
/// `room` UTF-16 units.
fn symbol_list(symbols: &[String], room: usize) -> String {
    let mut out = String::new();
    for (i, symbol) in symbols.iter().enumerate() {
        let piece = escape_html(&shorten(symbol, 16));
        let separator = if i == 0 { "" } else { ", " };
        let left_after = symbols.len() - i - 1;
        // Keep room for the tail naming what did not fit, unless this is the last one.
        let tail_reserve = if left_after == 0 {
            0
        } else {
            utf16_len(&format!(" and {} more", symbols.len()))
        };
        if utf16_len(&out) + utf16_len(separator) + utf16_len(&piece) + tail_reserve > room {
            if i == 0 {
                let _ = write!(out, "{} symbols", symbols.len());
            } else {
                let _ = write!(out, " and {} more", symbols.len() - i);
            }
            return out;
        }
        out.push_str(separator);
        out.push_str(&piece);
    }
    out
}

/// Telegram measures text in UTF-16 code units, so an emoji counts twice.
fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Green for gains, red for losses, grey for nothing.
fn sign_colour(value: Decimal) -> &'static str {
    if value > Decimal::ZERO {
        "#15803d"
    } else if value < Decimal::ZERO {
        "#b91c1c"
    } else {
        "#374151"
    }
}

/// When a value was computed, in the report's zone: `2024-03-05 17:30 CET`.
fn timestamp(unix_ms: i64, zone: &str) -> String {
    let tz = zone.parse::<Tz>().unwrap_or(Tz::UTC);
    match DateTime::from_timestamp_millis(unix_ms) {
        Some(at) => at
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
        None => format!("{unix_ms} ms after 1970"),
    }
}

/// A value in the portfolio currency: `USD 12,345.68`.
fn money(value: Decimal, currency: &str) -> String {
    format!("{currency} {}", fixed(value, 2))
}

/// A change of value with its sign: `USD +1,234.50`, `USD -0.40`.
fn signed_money(value: Decimal, currency: &str) -> String {
    format!("{currency} {}", with_sign(fixed(value, 2)))
}

/// A price with up to four decimals and at least two: `189.25`, `0.1235`, `1,200.00`.
fn price(value: Decimal) -> String {
    let mut rounded = value
        .round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
        .normalize();
    if rounded.scale() < 2 {
        rounded.rescale(2);
    }
    let dp = rounded.scale();
    fixed(rounded, dp)
}

/// A percentage with two decimals and its sign: `+1.25 %`, `-0.40 %`, `0.00 %`.
fn percent(value: Decimal) -> String {
    format!("{} %", with_sign(fixed(value, 2)))
}

/// A `+` in front of a formatted positive number; negatives carry theirs, zero none.
fn with_sign(formatted: String) -> String {
    let is_zero = formatted.chars().all(|c| matches!(c, '0' | '.' | ','));
    if formatted.starts_with('-') || is_zero {
        formatted
    } else {
        format!("+{formatted}")
    }
}

/// `value` rounded half away from zero to exactly `dp` decimals, with thousands separators.
fn fixed(value: Decimal, dp: u32) -> String {
    let mut rounded = value.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(dp);
    if rounded.is_zero() {
        // -0.001 rounds to a negative zero, which would print as "-0.00".
        rounded.set_sign_positive(true);
    }
    let plain = rounded.to_string();
    let (sign, digits) = match plain.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", plain.as_str()),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (digits, None),
    };
    let mut out = String::with_capacity(plain.len() + plain.len() / 3);
    out.push_str(sign);
    out.push_str(&group_thousands(int));
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// `1234567` as `1,234,567`: separators every three digits from the right.
pub(crate) fn group_thousands(int_digits: &str) -> String {
    let len = int_digits.len();
    let mut out = String::with_capacity(len + len / 3);
    for (i, c) in int_digits.chars().enumerate() {
        if i > 0 && (len - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn money_has_separators_and_two_decimals() {
        assert_eq!(money(dec("12345.675"), "USD"), "USD 12,345.68");
        assert_eq!(money(dec("-1234567.1"), "SEK"), "SEK -1,234,567.10");
        assert_eq!(money(dec("999"), "EUR"), "EUR 999.00");
        assert_eq!(money(dec("-0.001"), "EUR"), "EUR 0.00");
    }

    #[test]
    fn prices_keep_up_to_four_decimals() {
        assert_eq!(price(dec("189.25")), "189.25");
        assert_eq!(price(dec("0.123456")), "0.1235");
        assert_eq!(price(dec("1200")), "1,200.00");
        assert_eq!(price(dec("12.3")), "12.30");
    }

    #[test]
    fn percents_carry_a_sign() {
        assert_eq!(percent(dec("1.245")), "+1.25 %");
        assert_eq!(percent(dec("-0.4")), "-0.40 %");
        assert_eq!(percent(dec("0.001")), "0.00 %");
        assert_eq!(signed_money(dec("1234.5"), "USD"), "USD +1,234.50");
    }

    #[test]
    fn thousands_group_from_the_right() {
        assert_eq!(group_thousands("1"), "1");
        assert_eq!(group_thousands("123"), "123");
        assert_eq!(group_thousands("1234"), "1,234");
        assert_eq!(group_thousands("1234567"), "1,234,567");
    }

    #[test]
    fn symbol_lists_name_what_did_not_fit() {
        let symbols: Vec<String> = (0..50).map(|i| format!("SYM{i}")).collect();
        let list = symbol_list(&symbols, 40);
        assert!(list.starts_with("SYM0, SYM1"), "{list}");
        assert!(list.ends_with("more"), "{list}");
        assert!(utf16_len(&list) <= 40, "{list}");
    }
}
