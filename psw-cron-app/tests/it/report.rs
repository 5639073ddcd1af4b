//! The daily report: its chart is a real PNG of the promised size with something drawn on it,
//! and its HTML, text and Telegram renderings show the numbers, escape the data and warn about
//! holdings without a fresh price.

use std::io::Cursor;

use psw_cron_app::report::chart::{CHART_HEIGHT, CHART_WIDTH, value_chart};
use psw_cron_app::report::render::{html, subject, telegram_summary, text};
use psw_cron_app::report::{Change, Mover, ReportData};
use rust_decimal::Decimal;

const DAY_MS: i64 = 86_400_000;
/// 2024-03-07 16:00 UTC.
const NOW_MS: i64 = 1_709_827_200_000;
const HOSTILE_NAME: &str = "Growth & <script>alert(1)</script>";
const ESCAPED_NAME: &str = "Growth &amp; &lt;script&gt;alert(1)&lt;/script&gt;";
const MISSING_WARNING: &str = "these holdings have no fresh price and are left out of the value";

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn mover(symbol: &str, name: &str, price: &str, change: &str) -> Mover {
    Mover {
        symbol: symbol.to_owned(),
        name: name.to_owned(),
        price: dec(price),
        change_percent: dec(change),
    }
}

/// Daily values over 30 days, rising with a weekly wobble, ending at `NOW_MS`.
fn month_of_values(base: Decimal) -> Vec<(i64, Decimal)> {
    (0..30_i64)
        .map(|i| {
            let wobble = Decimal::from((i % 7) * 40 - 120);
            let trend = Decimal::from(i * 25);
            (NOW_MS - (29 - i) * DAY_MS, base + trend + wobble)
        })
        .collect()
}

fn report() -> ReportData {
    ReportData {
        portfolio_id: 7,
        portfolio_name: HOSTILE_NAME.to_owned(),
        currency: "USD".to_owned(),
        date: "2024-03-07".to_owned(),
        zone: "Europe/Stockholm".to_owned(),
        value: Some((dec("12345.678"), NOW_MS)),
        change_day: Some(Change {
            from: dec("12190"),
            absolute: dec("155.678"),
            percent: Some(dec("1.2771")),
        }),
        change_week: Some(Change {
            from: dec("12500"),
            absolute: dec("-154.322"),
            percent: Some(dec("-1.2346")),
        }),
        change_month: None,
        top_movers: vec![
            mover("AAPL", "Apple Inc.", "189.25", "2.35"),
            mover("T&T", "<b>Bad</b> Corp", "0.123456", "-4.5"),
            mover("MSFT", "Microsoft", "1402.5", "1.1"),
            mover("NVDA", "Nvidia", "880", "0.9"),
            mover("ZZZZ", "Fifth Mover Ltd", "3", "-0.2"),
        ],
        missing_prices: vec!["ERIC-B.ST".to_owned(), "VOLV<B>".to_owned()],
        history: month_of_values(dec("11500.25")),
    }
}

// ---- chart ----

struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Image {
    fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Pixels of the region that are not the white background.
    fn inked(&self, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>) -> usize {
        ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| self.pixel(x, y) != [255, 255, 255])
            .count()
    }

    /// Rows holding pixels of the (blue) value line, top to bottom.
    fn line_rows(&self) -> Vec<u32> {
        (0..self.height)
            .filter(|&y| (0..self.width).any(|x| is_line_blue(self.pixel(x, y))))
            .collect()
    }

    fn line_pixels(&self) -> usize {
        (0..self.height)
            .flat_map(|y| (0..self.width).map(move |x| (x, y)))
            .filter(|&(x, y)| is_line_blue(self.pixel(x, y)))
            .count()
    }
}

/// The line is drawn in a saturated blue; text and grid are greys.
fn is_line_blue([r, _, b]: [u8; 3]) -> bool {
    i32::from(b) - i32::from(r) > 80 && b > 120
}

/// Checks the bytes are a PNG of the chart's size, from its signature and IHDR chunk, then
/// decodes it fully.
fn decode_chart(bytes: &[u8]) -> Image {
    assert!(
        bytes.len() > 33,
        "too short for a PNG: {} bytes",
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[8..12], &13_u32.to_be_bytes(), "IHDR length");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (800, 400));
    assert_eq!((CHART_WIDTH, CHART_HEIGHT), (800, 400));

    let mut reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .expect("PNG header decodes");
    let mut rgb = vec![0; reader.output_buffer_size().expect("buffer size fits")];
    let info = reader.next_frame(&mut rgb).expect("PNG image data decodes");
    assert_eq!((info.width, info.height), (800, 400));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    rgb.truncate(info.buffer_size());
    assert_eq!(rgb.len(), 800 * 400 * 3);
    Image {
        width: info.width,
        height: info.height,
        rgb,
    }
}

#[test]
fn chart_of_a_month_is_an_800_by_400_png_with_a_line() {
    let image = decode_chart(&value_chart(&report()).unwrap());
    // Title, labels and grid make the image more than a blank page...
    assert!(image.inked(0..800, 0..40) > 200, "no title ink");
    assert!(image.inked(100..780, 50..340) > 2_000, "plot area is blank");
    // ...and the line crosses most of the width and goes up and down with the values.
    let line_columns = (0..image.width)
        .filter(|&x| (0..image.height).any(|y| is_line_blue(image.pixel(x, y))))
        .count();
    assert!(
        line_columns > 500,
        "line covers only {line_columns} columns"
    );
    let rows = image.line_rows();
    assert!(
        rows.last().unwrap() - rows.first().unwrap() > 100,
        "line is nearly flat"
    );
}

#[test]
fn chart_of_an_empty_history_is_a_png_saying_so() {
    let mut empty = report();
    empty.history.clear();
    let image = decode_chart(&value_chart(&empty).unwrap());
    assert!(image.inked(0..800, 0..40) > 200, "no title ink");
    // The message sits in the middle; there is no line.
    assert!(
        image.inked(250..550, 150..250) > 300,
        "no message in the middle"
    );
    assert_eq!(image.line_pixels(), 0);
}

#[test]
fn chart_of_a_flat_history_draws_a_level_line_mid_height() {
    let mut flat = report();
    flat.history = (0..30)
        .map(|i| (NOW_MS - i * DAY_MS, dec("5000")))
        .rev()
        .collect();
    let image = decode_chart(&value_chart(&flat).unwrap());
    let rows = image.line_rows();
    assert!(!rows.is_empty(), "no line drawn");
    // Two pixels of stroke plus the marker on the latest point: a thin band...
    let band = rows.last().unwrap() - rows.first().unwrap();
    assert!(band <= 12, "a flat line spans {band} rows");
    // ...in the middle of the plot, as the padding is the same above and below.
    let middle = rows[rows.len() / 2];
    assert!((150..250).contains(&middle), "flat line at row {middle}");
    assert!(image.line_pixels() > 1_000, "line too short");
}

#[test]
fn chart_of_one_point_marks_it() {
    let mut single = report();
    single.history = vec![(NOW_MS, dec("100"))];
    let image = decode_chart(&value_chart(&single).unwrap());
    let blue = image.line_pixels();
    assert!((10..400).contains(&blue), "{blue} marker pixels");
}

#[test]
fn chart_copes_with_huge_and_tiny_values_and_unknown_zones() {
    let mut huge = report();
    huge.history = month_of_values(dec("1000000000"));
    huge.zone = "Not/A_Zone".to_owned();
    let image = decode_chart(&value_chart(&huge).unwrap());
    assert!(image.line_pixels() > 500);

    let mut tiny = report();
    tiny.history = (0..30)
        .map(|i| (NOW_MS - (29 - i) * DAY_MS, Decimal::new(100 + i, 8)))
        .collect();
    let image = decode_chart(&value_chart(&tiny).unwrap());
    let rows = image.line_rows();
    // A rising series goes from near the bottom to near the top of the plot.
    assert!(rows.last().unwrap() - rows.first().unwrap() > 150);
}

// ---- e-mail ----

#[test]
fn subject_names_portfolio_and_day_on_one_line() {
    let mut r = report();
    assert_eq!(
        subject(&r),
        format!("PSW5 daily report: {HOSTILE_NAME} 2024-03-07")
    );
    r.portfolio_name = "Two\r\nBcc: someone@example.com".to_owned();
    assert!(!subject(&r).contains(['\r', '\n']));
}

#[test]
fn html_escapes_the_data() {
    let page = html(&report(), None);
    assert!(page.contains(ESCAPED_NAME), "escaped name missing");
    assert!(!page.contains("<script>"), "raw script tag from the name");
    assert!(page.contains("T&amp;T"));
    assert!(page.contains("&lt;b&gt;Bad&lt;/b&gt; Corp"));
    assert!(!page.contains("<b>Bad</b>"));
}

#[test]
fn html_shows_value_changes_and_movers() {
    let page = html(&report(), None);
    assert!(page.contains("USD 12,345.68"), "value");
    assert!(
        page.contains("2024-03-07 17:00 CET"),
        "time of the value in the zone"
    );
    assert!(page.contains("USD +155.68 (+1.28 %)"), "day change");
    assert!(page.contains("USD -154.32 (-1.23 %)"), "week change");
    assert!(
        page.contains("no value a month ago"),
        "missing month change"
    );
    assert!(page.contains("AAPL") && page.contains("189.25") && page.contains("+2.35 %"));
    assert!(page.contains("0.1235") && page.contains("-4.50 %"));
    assert!(page.contains("1,402.50"));
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(!page.contains("<style"), "styles must be inline");

    let mut empty = report();
    empty.value = None;
    empty.change_day = None;
    empty.top_movers.clear();
    let page = html(&empty, None);
    assert!(page.contains("No value computed yet."));
    assert!(page.contains("no value a day ago"));
    assert!(page.contains("No price moves today."));
}

#[test]
fn html_embeds_the_chart_only_when_given() {
    let with = html(&report(), Some("chart-7@psw5"));
    assert!(with.contains("<img src=\"cid:chart-7@psw5\""));
    let without = html(&report(), None);
    assert!(!without.contains("cid:"));
    assert!(!without.contains("<img"));
}

#[test]
fn html_warns_about_missing_prices_only_when_there_are_some() {
    let page = html(&report(), None);
    assert!(page.contains(MISSING_WARNING));
    assert!(page.contains("ERIC-B.ST, VOLV&lt;B&gt;"));

    let mut complete = report();
    complete.missing_prices.clear();
    let page = html(&complete, None);
    assert!(!page.contains("no fresh price"));
    assert!(!page.contains("Warning"));
}

#[test]
fn text_has_the_same_content_unescaped() {
    let body = text(&report());
    assert!(body.contains(HOSTILE_NAME));
    assert!(!body.contains("&amp;") && !body.contains("&lt;"));
    assert!(body.contains("USD 12,345.68"));
    assert!(body.contains("USD +155.68 (+1.28 %)"));
    assert!(body.contains("USD -154.32 (-1.23 %)"));
    assert!(body.contains("no value a month ago"));
    assert!(body.contains(&format!("{MISSING_WARNING}: ERIC-B.ST, VOLV<B>")));
    for symbol in ["AAPL", "T&T", "MSFT", "NVDA", "ZZZZ"] {
        assert!(body.contains(symbol), "{symbol} missing");
    }

    let mut complete = report();
    complete.missing_prices.clear();
    assert!(!text(&complete).contains("no fresh price"));
}

// ---- Telegram ----

/// Every tag is one Telegram's HTML mode allows and every `&` starts an entity.
fn assert_telegram_html(message: &str) {
    let mut rest = message;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("unclosed tag") + start;
        let tag = &rest[start..=end];
        assert!(
            ["<b>", "</b>", "<i>", "</i>", "<code>", "</code>"].contains(&tag),
            "tag {tag} not allowed"
        );
        rest = &rest[end + 1..];
    }
    for (at, _) in message.match_indices('&') {
        let entity = &message[at..];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                .iter()
                .any(|e| entity.starts_with(e)),
            "bare & at {at}"
        );
    }
    for tag in ["b", "i", "code"] {
        assert_eq!(
            message.matches(&format!("<{tag}>")).count(),
            message.matches(&format!("</{tag}>")).count(),
            "unbalanced <{tag}>"
        );
    }
}

#[test]
fn telegram_summary_shows_name_value_day_and_three_movers() {
    let message = telegram_summary(&report());
    assert_telegram_html(&message);
    assert!(message.contains(ESCAPED_NAME));
    assert!(message.contains("USD 12,345.68"));
    assert!(message.contains("+1.28 %"));
    assert!(message.contains("AAPL") && message.contains("T&amp;T") && message.contains("MSFT"));
    assert!(
        !message.contains("NVDA") && !message.contains("ZZZZ"),
        "more than three movers"
    );
    assert!(message.contains("No fresh price") && message.contains("VOLV&lt;B&gt;"));

    let mut complete = report();
    complete.missing_prices.clear();
    complete.change_day = None;
    let message = telegram_summary(&complete);
    assert!(!message.contains("fresh price"));
    assert!(message.contains("no value a day ago"));
}

#[test]
fn telegram_summary_stays_under_a_caption_even_with_long_data() {
    let mut long = report();
    long.portfolio_name = "&<>".repeat(300);
    long.currency = "<&>".repeat(20);
    long.top_movers = (0..5)
        .map(|i| {
            mover(
                &format!("S{i}&").repeat(20),
                &"Very & long <name> ".repeat(40),
                "1",
                "2",
            )
        })
        .collect();
    long.missing_prices = (0..400).map(|i| format!("MISSING&{i}")).collect();
    let message = telegram_summary(&long);
    assert!(
        message.chars().count() < 1024,
        "{} chars",
        message.chars().count()
    );
    assert!(message.encode_utf16().count() < 1024);
    assert_telegram_html(&message);
    // The warning survives shortening, and says how many symbols it could not list.
    assert!(message.contains("No fresh price"));
    assert!(message.contains("more"), "{message}");
}
