//! The PNG chart of a portfolio's value over the last 30 days, attached to the daily report.
//!
//! Drawn with plotters into an in-memory RGB buffer and encoded with `png`. Text uses DejaVu
//! Sans embedded in the binary: plotters is built without system-font support, so a chart
//! renders the same on any host, including a bare container.

use std::error::Error as StdError;
use std::sync::OnceLock;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rust_decimal::prelude::ToPrimitive;

use super::ReportData;
use super::render::{group_thousands, shorten};

/// Width of the chart in pixels.
pub const CHART_WIDTH: u32 = 800;
/// Height of the chart in pixels.
pub const CHART_HEIGHT: u32 = 400;

/// The family name the embedded font is registered under with plotters.
const FONT: &str = "DejaVu Sans";

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const WINDOW_MS: i64 = 30 * DAY_MS;

/// At most this many labels on the time axis, so that dates never overlap.
const MAX_X_LABELS: usize = 8;

const BACKGROUND: RGBColor = RGBColor(255, 255, 255);
const LINE: RGBColor = RGBColor(31, 101, 178);
const TEXT: RGBColor = RGBColor(31, 35, 40);
const MUTED: RGBColor = RGBColor(107, 114, 128);
const GRID_BOLD: RGBColor = RGBColor(214, 218, 224);
const GRID_LIGHT: RGBColor = RGBColor(238, 240, 243);

/// Why a chart could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The embedded font was refused by the font loader.
    #[error("the embedded chart font could not be loaded")]
    Font,
    /// Plotters failed to draw into the buffer.
    #[error("drawing the chart failed")]
    Draw(#[source] Box<dyn StdError + Send + Sync>),
    /// The drawn pixels could not be encoded as PNG.
    #[error("encoding the chart as png failed")]
    Encode(#[from] png::EncodingError),
}

/// The chart of `report.history` as a PNG of [`CHART_WIDTH`] x [`CHART_HEIGHT`] pixels.
///
/// Shows the 30 days up to the latest point, dates in the report's zone (UTC when the zone is
/// unknown) and values in the portfolio currency. An empty history gives a chart saying so.
pub fn value_chart(report: &ReportData) -> Result<Vec<u8>, ChartError> {
    if !fonts_registered() {
        return Err(ChartError::Font);
    }
    let zone = report.zone.parse::<Tz>().unwrap_or(Tz::UTC);
    let points = window(&report.history);
    let title = format!(
        "{}: value, last 30 days",
        shorten(&report.portfolio_name, 60)
    );

    let mut rgb = vec![0_u8; CHART_WIDTH as usize * CHART_HEIGHT as usize * 3];
    {
        let root =
            BitMapBackend::with_buffer(&mut rgb, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
        root.fill(&BACKGROUND).map_err(draw_error)?;
        if points.is_empty() {
            draw_empty(&root, &title)?;
        } else {
            draw_series(&root, &title, &points, zone, &report.currency)?;
        }
        root.present().map_err(draw_error)?;
    }
    encode(&rgb)
}

fn draw_error<E: StdError + Send + Sync + 'static>(e: E) -> ChartError {
    ChartError::Draw(Box::new(e))
}

/// Registers DejaVu Sans with plotters once per process; later calls only report the outcome.
fn fonts_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    })
}

/// The points of the 30 days up to the latest one, oldest first, as plottable numbers.
///
/// Floats are fine here: they only place pixels, no figure a reader sees comes from them.
fn window(history: &[(i64, rust_decimal::Decimal)]) -> Vec<(i64, f64)> {
    let Some(latest) = history.iter().map(|&(at, _)| at).max() else {
        return Vec::new();
    };
    let since = latest.saturating_sub(WINDOW_MS);
    let mut points: Vec<(i64, f64)> = history
        .iter()
        .filter(|&&(at, _)| at >= since)
        .filter_map(|&(at, value)| value.to_f64().filter(|v| v.is_finite()).map(|v| (at, v)))
        .collect();
    points.sort_by_key(|&(at, _)| at);
    points
}

fn draw_empty(root: &DrawingArea<BitMapBackend<'_>, Shift>, title: &str) -> Result<(), ChartError> {
    let area = root
        .margin(12, 0, 0, 0)
        .titled(title, (FONT, 22, FontStyle::Bold).into_font().color(&TEXT))
        .map_err(draw_error)?;
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    area.draw(&Rectangle::new(
        [(40, 10), (w - 40, h - 30)],
        GRID_BOLD.stroke_width(1),
    ))
    .map_err(draw_error)?;
    let style = (FONT, 20)
        .into_font()
        .color(&MUTED)
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(
        "no value history yet",
        (w / 2, (h - 20) / 2),
        style,
    ))
    .map_err(draw_error)
}

fn draw_series(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    points: &[(i64, f64)],
    zone: Tz,
    currency: &str,
) -> Result<(), ChartError> {
    let (x_start, x_end) = x_range(points);
    let ticks = time_ticks(x_start, x_end, zone);
    let (y_min, y_max) = y_range(points);
    let decimals = label_decimals(y_max - y_min);
    let y_label = |v: &f64| axis_number(*v, decimals);
    // Labels grow with the values (1,000,000,000.00 is wide): size their column to fit.
    let label_chars = [y_min, y_max]
        .iter()
        .map(|v| y_label(v).chars().count())
        .max()
        .unwrap_or(1);
    let y_area = 34 + 9 * label_chars as u32;
    let x_label = |at: &i64| local_label(*at, zone, ticks.format);

    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22, FontStyle::Bold).into_font().color(&TEXT))
        .margin_top(12)
        .margin_bottom(8)
        .margin_left(12)
        .margin_right(28)
        .x_label_area_size(36)
        .y_label_area_size(y_area)
        .build_cartesian_2d(
            (x_start..x_end)
                .with_key_points(ticks.labelled)
                .with_light_points(ticks.grid),
            y_min..y_max,
        )
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .y_labels(6)
        .y_desc(shorten(currency, 12))
        // 15 px, not less: at 13 px the thousands comma drew as a dot, and `19,500` read as
        // `19.500`, unlike the same number on the page beside the chart.
        .label_style((FONT, 15).into_font().color(&TEXT))
        .axis_desc_style((FONT, 14).into_font().color(&MUTED))
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .max_light_lines(1)
        .axis_style(MUTED)
        .draw()
        .map_err(draw_error)?;

    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            LINE.stroke_width(2),
        ))
        .map_err(draw_error)?;
    // The latest value is the one the report is about; a lone point would otherwise be
    // invisible, as a line needs two.
    if let Some(&last) = points.last() {
        chart
            .draw_series(std::iter::once(Circle::new(last, 4, LINE.filled())))
            .map_err(draw_error)?;
    }
    Ok(())
}

/// The time span to show: the data's, widened to at least a day around it so that a single
/// point or a few minutes of data still get a readable axis.
fn x_range(points: &[(i64, f64)]) -> (i64, i64) {
    let first = points.first().map_or(0, |p| p.0);
    let last = points.last().map_or(0, |p| p.0);
    if last - first >= DAY_MS {
        return (first, last);
    }
    let middle = first + (last - first) / 2;
    (
        middle.saturating_sub(DAY_MS / 2),
        middle.saturating_add(DAY_MS / 2),
    )
}

/// The value span to show, with some room above and below the line.
fn y_range(points: &[(i64, f64)]) -> (f64, f64) {
    let (min, max) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
            (lo.min(v), hi.max(v))
        });
    let span = max - min;
    // A flat series has no span to pad by: take a share of the value (or 1 around zero) so
    // the axis never collapses to a zero height.
    let pad = if span > max.abs().max(min.abs()) * 1e-9 {
        span * 0.08
    } else if max.abs() > 0.0 {
        max.abs() * 0.05
    } else {
        1.0
    };
    (min - pad, max + pad)
}

/// Enough decimals on the value axis to tell its roughly six labels apart.
fn label_decimals(span: f64) -> usize {
    let step = span / 6.0;
    if !step.is_finite() || step <= 0.0 || step >= 1.0 {
        return 0;
    }
    (-step.log10()).ceil().clamp(0.0, 8.0) as usize
}

/// An axis value with thousands separators: `1,250,000` or `0.0042`.
fn axis_number(value: f64, decimals: usize) -> String {
    let plain = format!("{:.*}", decimals, value.abs());
    let (int, frac) = match plain.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (plain.as_str(), None),
    };
    let mut out = String::new();
    if value < 0.0 && plain.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    out.push_str(&group_thousands(int));
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// Where the time axis gets labels and grid lines, and how its labels read.
struct TimeTicks {
    labelled: Vec<i64>,
    grid: Vec<i64>,
    format: &'static str,
}

/// Ticks on local midnights for spans of days, on local whole hours for shorter ones: labels
/// then fall on days a reader knows, not on round numbers of milliseconds.
fn time_ticks(start: i64, end: i64, zone: Tz) -> TimeTicks {
    if end - start >= 2 * DAY_MS {
        let midnights = local_midnights(start, end, zone);
        let step = midnights.len().div_ceil(MAX_X_LABELS).max(1);
        TimeTicks {
            labelled: midnights.iter().copied().step_by(step).collect(),
            grid: midnights,
            format: "%b %-d",
        }
    } else {
        let hours = local_hours(start, end, zone);
        // Labels with a time of day are wider than bare dates: fewer of them fit.
        let step = [1, 2, 3, 4, 6, 12]
            .into_iter()
            .find(|step| hours.len().div_ceil(*step as usize) <= MAX_X_LABELS - 2)
            .unwrap_or(12);
        let labelled = hours
            .iter()
            .filter(|&&(_, hour)| hour % step == 0)
            .map(|&(at, _)| at)
            .collect();
        TimeTicks {
            labelled,
            grid: hours.into_iter().map(|(at, _)| at).collect(),
            format: "%b %-d %H:%M",
        }
    }
}

fn local(unix_ms: i64, zone: Tz) -> Option<DateTime<Tz>> {
    DateTime::from_timestamp_millis(unix_ms).map(|at| at.with_timezone(&zone))
}

fn local_label(unix_ms: i64, zone: Tz, format: &str) -> String {
    local(unix_ms, zone).map_or_else(String::new, |at| at.format(format).to_string())
}

/// The instants in `start..=end` where a local day begins.
fn local_midnights(start: i64, end: i64, zone: Tz) -> Vec<i64> {
    let (Some(first), Some(last)) = (local(start, zone), local(end, zone)) else {
        return Vec::new();
    };
    let mut day: NaiveDate = first.date_naive();
    let mut out = Vec::new();
    while day <= last.date_naive() {
        if let Some(at) = day_start(day, zone)
            && (start..=end).contains(&at)
        {
            out.push(at);
        }
        match day.checked_add_days(Days::new(1)) {
            Some(next) => day = next,
            None => break,
        }
    }
    out
}

/// The first instant of a local day; a few zones skip midnight itself on a DST change.
fn day_start(day: NaiveDate, zone: Tz) -> Option<i64> {
    (0..3).find_map(|hour| {
        let time = NaiveTime::from_hms_opt(hour, 0, 0)?;
        zone.from_local_datetime(&day.and_time(time))
            .earliest()
            .map(|at| at.timestamp_millis())
    })
}

/// The instants in `start..=end` where a local hour begins, with that hour.
fn local_hours(start: i64, end: i64, zone: Tz) -> Vec<(i64, u32)> {
    // Whole hours are whole in every zone offset of whole hours; stepping in UTC and keeping
    // the local hour boundaries also covers half-hour zones (India, Newfoundland).
    let first = start - start.rem_euclid(HOUR_MS / 4);
    (0..)
        .map(|i| first + i * (HOUR_MS / 4))
        .take_while(|&at| at <= end)
        .filter(|&at| at >= start)
        .filter_map(|at| {
            let t = local(at, zone)?;
            (t.minute() == 0 && t.second() == 0).then_some((at, t.hour()))
        })
        .collect()
}

fn encode(rgb: &[u8]) -> Result<Vec<u8>, ChartError> {
    let mut out = Vec::with_capacity(64 * 1024);
    let mut encoder = png::Encoder::new(&mut out, CHART_WIDTH, CHART_HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARCH_1_2024_UTC: i64 = 1_709_251_200_000;

    #[test]
    fn window_keeps_the_last_30_days_in_order() {
        let value = rust_decimal::Decimal::ONE;
        let end = MARCH_1_2024_UTC + 40 * DAY_MS;
        let history = vec![
            (end - 31 * DAY_MS, value),
            (end, value),
            (end - 30 * DAY_MS, value),
            (end - DAY_MS, value),
        ];
        let kept: Vec<i64> = window(&history).into_iter().map(|(at, _)| at).collect();
        assert_eq!(kept, [end - 30 * DAY_MS, end - DAY_MS, end]);
        assert!(window(&[]).is_empty());
    }

    #[test]
    fn flat_series_keeps_a_height() {
        let (lo, hi) = y_range(&[(0, 5.0), (1, 5.0)]);
        assert!(lo < 5.0 && hi > 5.0);
        let (lo, hi) = y_range(&[(0, 0.0)]);
        assert!(lo < 0.0 && hi > 0.0);
    }

    #[test]
    fn axis_numbers_group_thousands() {
        assert_eq!(axis_number(1_234_567.0, 0), "1,234,567");
        assert_eq!(axis_number(-0.00421, 4), "-0.0042");
        assert_eq!(axis_number(-0.00001, 2), "0.00");
        assert_eq!(label_decimals(6.0), 0);
        assert_eq!(label_decimals(0.06), 2);
    }

    #[test]
    fn midnights_follow_the_zone() {
        let zone: Tz = "Europe/Stockholm".parse().unwrap();
        let end = MARCH_1_2024_UTC + 3 * DAY_MS;
        let midnights = local_midnights(MARCH_1_2024_UTC, end, zone);
        // Stockholm is UTC+1 in March: its midnights are 23:00 UTC the day before.
        assert_eq!(midnights.len(), 3);
        assert_eq!(midnights[0], MARCH_1_2024_UTC + DAY_MS - HOUR_MS);
    }

    #[test]
    fn short_spans_tick_on_local_hours() {
        let zone: Tz = "Asia/Kolkata".parse().unwrap();
        let hours = local_hours(MARCH_1_2024_UTC, MARCH_1_2024_UTC + 3 * HOUR_MS, zone);
        // Kolkata is UTC+5:30: its whole hours are at half past in UTC.
        assert_eq!(hours.len(), 3);
        assert_eq!(hours[0].0, MARCH_1_2024_UTC + HOUR_MS / 2);
    }
}
