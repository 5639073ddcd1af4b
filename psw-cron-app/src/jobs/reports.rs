//! `generate_daily_reports`: per portfolio its value, changes, top movers and a 30-day chart;
//! stored, e-mailed as HTML with the chart, and summarised to Telegram.

use chrono::TimeZone;
use psw_tasks::{TaskContext, TaskError, task};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::app::{App, app};
use crate::db::portfolio::{Portfolio, StoredReport};
use crate::notify::Image;
use crate::report::{Change, Mover, ReportData, chart, render};
use crate::time::now_ms;

const DAY_MS: i64 = 24 * 3600 * 1000;
const TOP_MOVERS: usize = 5;

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyReports {
    /// The report day, in the report zone.
    pub date: String,
    /// Reports made (and stored).
    pub reports: usize,
    /// Reports sent by at least one channel now.
    pub delivered: usize,
    /// Reports sent by an earlier attempt of this run, not sent again.
    pub already_delivered: usize,
    /// Channels that failed, each `portfolio: channel: error`.
    pub delivery_failures: Vec<String>,
}

/// Daily at 08:00 in `REPORT_TIMEZONE` (the schedule is added at run time, see
/// [`super::add_schedules`]). A retry does not send a report that went out already.
#[task(
    name = "psw_cron.tasks.generate_daily_reports",
    retries = 3,
    backoff = "exp",
    backoff_base = "60s",
    timeout = "30m"
)]
pub async fn generate_daily_reports(ctx: TaskContext) -> Result<DailyReports, TaskError> {
    // The day is the slot's, not the clock's: a run delayed past midnight still makes the
    // report of the day it was due.
    daily_reports(app(&ctx)?, ctx.slot_ms().unwrap_or_else(now_ms)).await
}

/// The job's work at `now_ms`, callable without a worker.
pub async fn daily_reports(app: &App, now_ms: i64) -> Result<DailyReports, TaskError> {
    let zone = app.config.report_zone;
    let date = match zone.timestamp_millis_opt(now_ms).single() {
        Some(at) => at.format("%Y-%m-%d").to_string(),
        None => return Err(TaskError::permanent(format!("{now_ms} ms is not a time"))),
    };
    let mut result = DailyReports {
        date: date.clone(),
        reports: 0,
        delivered: 0,
        already_delivered: 0,
        delivery_failures: Vec::new(),
    };
    let fresh_since = now_ms - app.config.price_max_age.as_millis() as i64;
    let unpriced = app.db.unpriced_holdings(fresh_since).await?;
    for portfolio in app.db.portfolios().await? {
        let missing = crate::db::portfolio::missing_prices(&unpriced, portfolio.id);
        let data = report_data(app, &portfolio, &date, now_ms, missing).await?;
        let png = chart::value_chart(&data).map_err(|err| {
            TaskError::retry(format!(
                "cannot draw the chart of portfolio {}: {err}",
                portfolio.id
            ))
        })?;
        let content_id = chart_content_id(portfolio.id, &date);
        let subject = render::subject(&data);
        let html = render::html(&data, Some(&content_id));
        let text = render::text(&data);
        let summary = render::telegram_summary(&data);
        app.db
            .store_report(&StoredReport {
                portfolio_id: portfolio.id,
                date: &date,
                created_at_ms: now_ms,
                subject: &subject,
                html: &html,
                summary: &summary,
                chart_png: Some(&png),
            })
            .await?;
        result.reports += 1;

        if app.db.report_delivered(portfolio.id, &date).await? {
            result.already_delivered += 1;
            continue;
        }
        let image = Image {
            file_name: chart_file_name(portfolio.id, &date),
            content_id,
            png,
        };
        let sent = app
            .notifier
            .report(&subject, &html, &text, &summary, Some(&image))
            .await;
        for (channel, error) in &sent.failed {
            result
                .delivery_failures
                .push(format!("{}: {channel}: {error}", portfolio.name));
        }
        if sent.any_ok() {
            app.db
                .mark_report_delivered(portfolio.id, &date, now_ms)
                .await?;
            result.delivered += 1;
        }
    }
    // Every configured channel failing is an outage worth retrying: the reports are stored,
    // and the ones that went out are not sent again.
    let channels = app.notifier.channels().len();
    if channels > 0 && result.reports > result.already_delivered && result.delivered == 0 {
        return Err(TaskError::retry(format!(
            "no report went out: {}",
            result.delivery_failures.join("; ")
        )));
    }
    tracing::info!(
        date,
        reports = result.reports,
        delivered = result.delivered,
        "daily reports made"
    );
    Ok(result)
}

/// The numbers of one portfolio's report.
pub async fn report_data(
    app: &App,
    portfolio: &Portfolio,
    date: &str,
    now_ms: i64,
    missing_prices: Vec<String>,
) -> Result<ReportData, TaskError> {
    let db = &app.db;
    let latest = db.value_at(portfolio.id, now_ms, None).await?;
    // Changes and the chart compare values that left out as many holdings as the latest one:
    // a value missing a holding is not a fall.
    let unpriced = latest.as_ref().map(|latest| latest.unpriced);
    let mut changes = [None, None, None];
    if let Some(latest) = &latest {
        for (change, days) in changes.iter_mut().zip([1, 7, 30]) {
            if let Some(then) = db
                .value_at(portfolio.id, latest.at_ms - days * DAY_MS, unpriced)
                .await?
            {
                *change = Some(change_between(then.value, latest.value));
            }
        }
    }
    let [change_day, change_week, change_month] = changes;

    let mut movers: Vec<Mover> = db
        .price_moves(portfolio.id, now_ms - DAY_MS)
        .await?
        .into_iter()
        .filter_map(|holding| {
            let earlier = holding.earlier.filter(|earlier| !earlier.is_zero())?;
            let change_percent =
                ((holding.price - earlier) / earlier * Decimal::ONE_HUNDRED).round_dp(2);
            (!change_percent.is_zero()).then_some(Mover {
                symbol: holding.symbol,
                name: holding.name,
                price: holding.price,
                change_percent,
            })
        })
        .collect();
    movers.sort_by_key(|mover| std::cmp::Reverse(mover.change_percent.abs()));
    movers.truncate(TOP_MOVERS);

    Ok(ReportData {
        portfolio_id: portfolio.id,
        portfolio_name: portfolio.name.clone(),
        currency: portfolio.currency.clone(),
        date: date.to_owned(),
        zone: app.config.report_zone.name().to_owned(),
        value: latest.map(|latest| (latest.value, latest.at_ms)),
        change_day,
        change_week,
        change_month,
        top_movers: movers,
        missing_prices,
        history: db
            .value_history(portfolio.id, now_ms - 30 * DAY_MS, unpriced)
            .await?,
    })
}

/// The file name of a report's chart (attached to the e-mail, exported to disk).
pub fn chart_file_name(portfolio_id: i64, date: &str) -> String {
    format!("portfolio-{portfolio_id}-{date}.png")
}

/// The content id by which a report's HTML refers to its chart.
pub fn chart_content_id(portfolio_id: i64, date: &str) -> String {
    format!("chart-{portfolio_id}-{date}")
}

fn change_between(from: Decimal, to: Decimal) -> Change {
    let absolute = to - from;
    Change {
        from,
        absolute,
        percent: (!from.is_zero()).then(|| (absolute / from * Decimal::ONE_HUNDRED).round_dp(2)),
    }
}
