//! Each job end to end: a real Redis (a fresh namespace per test), a real database (SQLite, and
//! MariaDB / MySQL when there is one), a worker running the task, and local servers speaking
//! the providers' and notification channels' protocols.

use std::sync::Arc;
use std::time::Duration;

use psw_cron_app::db::market::NewStock;
use psw_cron_app::db::portfolio::{StoredReport, Valuation};
use psw_cron_app::holdings::seed_demo;
use psw_cron_app::jobs::{self, App};
use psw_cron_app::providers::Quote;
use psw_cron_app::time::now_ms;
use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, EnqueueOptions, State};
use rust_decimal::Decimal;
use serde_json::json;

use crate::notify::{BotCall, BotMode, CHAT, SmtpBehaviour, TOKEN, next, start_bot, start_smtp};
use crate::providers::{Server, ok, status};
use crate::support::{RunningWorker, TestDb, app, databases, eventually};

const WAIT: Duration = Duration::from_secs(30);
const DAY: i64 = 24 * 3600 * 1000;

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

/// A fresh namespace and a client on it for one database of one test.
async fn redis(label: &str, test: &TestDb) -> (TestNamespace, Client) {
    let ns = TestNamespace::new(&format!("{label}-{}", test.kind));
    let client = ns.client().await;
    (ns, client)
}

/// An EODHD real-time answer for the demo portfolio: KO without data.
fn eodhd_demo_answer() -> String {
    let quote = |code: &str, close: &str| {
        format!(
            r#"{{"code":"{code}","timestamp":{ts},"gmtoffset":0,"open":1,"high":1,"low":1,"close":{close},"volume":1000,"previousClose":1,"change":0,"change_p":0}}"#,
            ts = now_ms() / 1000 - 60
        )
    };
    let na = r#"{"code":"KO.US","timestamp":"NA","gmtoffset":0,"open":"NA","high":"NA","low":"NA","close":"NA","volume":"NA","previousClose":"NA","change":"NA","change_p":"NA"}"#;
    format!(
        "[{},{},{},{},{na}]",
        quote("AAPL.US", "191.2345"),
        quote("MSFT.US", "420.5"),
        quote("NVDA.US", "119.87"),
        quote("AMZN.US", "180.0001"),
    )
}

#[tokio::test]
async fn update_stock_prices_stores_quotes_reports_failures_and_progress() {
    for test in databases().await {
        let (_ns, client) = redis("prices", &test).await;
        seed_demo(&test.db, now_ms()).await.unwrap();
        let server = Server::start_at(
            "/api",
            vec![
                ("/real-time/AAPL.US", vec![ok(eodhd_demo_answer())]),
                ("/eod/KO.US", vec![ok("[]")]),
            ],
        )
        .await;
        let app = app(
            &test.db,
            &client,
            &[
                ("EODHD_API_KEY", "demo-key"),
                ("EODHD_BASE_URL", &server.base),
            ],
        );
        let worker = RunningWorker::start(&app);

        let handle = jobs::prices::update_stock_prices::enqueue(&client)
            .await
            .unwrap();
        let update = handle.wait(WAIT).await.unwrap();
        assert_eq!(
            (
                update.status.as_str(),
                update.due,
                update.updated,
                update.failed
            ),
            ("partial", 5, 4, 1),
            "{}: {update:?}",
            test.kind
        );
        assert_eq!(update.provider, "eodhd");
        assert!(
            update.failures[0].starts_with("KO:"),
            "{:?}",
            update.failures
        );
        let record = handle.record().await.unwrap().unwrap();
        let progress = record.progress.expect("progress was reported");
        assert_eq!((progress.current, progress.total), (5, 5));

        let due = test.db.stocks_due(now_ms(), 60_000).await.unwrap();
        assert_eq!(due.len(), 1, "only KO is still due: {due:?}");
        assert_eq!(due[0].symbol, "KO");
        let prices = test.db.stocks_due(now_ms() + DAY, 60_000).await.unwrap();
        let aapl = prices.iter().find(|s| s.symbol == "AAPL").unwrap();
        assert_eq!(
            aapl.last_price,
            Some(dec("191.2345")),
            "exact, {}",
            test.kind
        );
        assert_eq!(server.hits_on("/real-time/AAPL.US"), 1, "one batch");

        worker.stop().await;
        test.finish().await;
    }
}

#[tokio::test]
async fn a_provider_outage_retries_the_whole_job() {
    for test in databases().await {
        let (_ns, client) = redis("outage", &test).await;
        seed_demo(&test.db, now_ms()).await.unwrap();
        let server = Server::start_at(
            "/api",
            vec![(
                "/real-time/AAPL.US",
                vec![status(503, "Service Unavailable")],
            )],
        )
        .await;
        let app = app(
            &test.db,
            &client,
            &[("EODHD_API_KEY", "k"), ("EODHD_BASE_URL", &server.base)],
        );
        let worker = RunningWorker::start(&app);

        let handle = jobs::prices::update_stock_prices::enqueue(&client)
            .await
            .unwrap();
        eventually(WAIT, "the job to be set to retry", || async {
            handle.state().await.unwrap() == State::Retry
        })
        .await;
        let record = handle.record().await.unwrap().unwrap();
        let error = &record.errors.last().unwrap().message;
        assert!(
            error.contains("every one of 1 request(s) failed"),
            "{error}"
        );
        assert!(error.contains("503"), "{error}");
        // Retried from a minute on, as Celery's countdown=60 did.
        let delay = record.retry_at_ms.unwrap() - now_ms();
        assert!(delay > 30_000 && delay <= 60_000, "retry in {delay} ms");
        assert_eq!(
            test.db.stocks_due(now_ms(), 60_000).await.unwrap().len(),
            5,
            "nothing stored"
        );

        worker.stop().await;
        test.finish().await;
    }
}

#[tokio::test]
async fn a_refused_key_dead_letters_the_job_and_alerts_by_telegram() {
    for test in databases().await {
        let (_ns, client) = redis("refused", &test).await;
        seed_demo(&test.db, now_ms()).await.unwrap();
        let server = Server::start_at(
            "/api",
            vec![(
                "/real-time/AAPL.US",
                vec![status(401, r#"{"message":"Unauthenticated"}"#)],
            )],
        )
        .await;
        let (bot_url, mut bot) = start_bot(BotMode::Ok).await;
        let app = app(
            &test.db,
            &client,
            &[
                ("EODHD_API_KEY", "bad-key"),
                ("EODHD_BASE_URL", &server.base),
                ("TELEGRAM_BOT_TOKEN", TOKEN),
                ("TELEGRAM_CHAT_ID", CHAT),
                ("TELEGRAM_API_URL", &bot_url),
            ],
        );
        let worker = RunningWorker::start(&app);

        let handle = jobs::prices::update_stock_prices::enqueue(&client)
            .await
            .unwrap();
        eventually(WAIT, "the job to fail", || async {
            handle.state().await.unwrap() == State::Failure
        })
        .await;
        let BotCall::Message { body, .. } = next(&mut bot).await else {
            panic!("expected a sendMessage alert");
        };
        let text = body["text"].as_str().unwrap();
        assert!(
            text.contains("psw_cron.tasks.update_stock_prices"),
            "{text}"
        );
        assert!(text.contains("permanent_error"), "{text}");
        assert!(text.contains(handle.id().as_str()), "{text}");
        assert!(!text.contains("bad-key"), "the key leaked: {text}");
        let dead = client.dead_letters().list(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "permanent_error");

        worker.stop().await;
        test.finish().await;
    }
}

#[tokio::test]
async fn dead_letter_alerts_keep_to_the_rate_limit_and_count_the_rest() {
    let test = crate::support::sqlite().await;
    let (_ns, client) = redis("budget", &test).await;
    let (bot_url, mut bot) = start_bot(BotMode::Ok).await;
    let app = app(
        &test.db,
        &client,
        &[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_CHAT_ID", CHAT),
            ("TELEGRAM_API_URL", &bot_url),
            ("ALERT_RATE_LIMIT", "2/1h"),
        ],
    );
    // Three jobs with arguments their task does not take: dead-lettered at once.
    let worker = RunningWorker::start(&app);
    for _ in 0..3 {
        client
            .enqueue_by_name::<serde_json::Value>(
                jobs::cleanup::cleanup_old_data::NAME,
                &json!([1]),
                EnqueueOptions::new(),
            )
            .await
            .unwrap();
    }
    eventually(WAIT, "three dead letters", || async {
        client.dead_letters().stats().await.unwrap().len == 3
    })
    .await;
    worker.stop().await;
    for _ in 0..2 {
        let BotCall::Message { body, .. } = next(&mut bot).await else {
            panic!("expected sendMessage")
        };
        assert!(
            body["text"].as_str().unwrap().contains("bad_args"),
            "{body}"
        );
    }
    assert!(bot.try_recv().is_err(), "the third alert was held back");
    test.finish().await;
}

#[tokio::test]
async fn calculate_portfolio_values_stores_exact_values_and_reports_missing_prices() {
    for test in databases().await {
        let (_ns, client) = redis("values", &test).await;
        let db = &test.db;
        seed_demo(db, now_ms()).await.unwrap();
        let portfolio = db.portfolios().await.unwrap().remove(0);
        let unpriced = db
            .upsert_stock(&NewStock {
                symbol: "NEW".into(),
                exchange: "US".into(),
                name: "New Co".into(),
                currency: "USD".into(),
            })
            .await
            .unwrap();
        db.set_holding(portfolio.id, unpriced, dec("7"))
            .await
            .unwrap();
        let app = app(db, &client, &[]);
        let worker = RunningWorker::start(&app);

        let values = jobs::portfolio::calculate_portfolio_values::enqueue(&client)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
        assert_eq!(values.portfolios_updated, 1);
        // 25 x 189.95 + 12 x 415.2 + 30 x 121.44 + 18 x 178.25 + 40 x 62.81
        assert_eq!(values.values[0].value, dec("19095.25"), "{}", test.kind);
        assert_eq!(values.values[0].priced, 5);
        assert_eq!(values.values[0].missing, ["NEW (no price yet)"]);
        let stored = db
            .value_at(portfolio.id, now_ms(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.value, stored.at_ms),
            (dec("19095.25"), values.at_ms)
        );

        worker.stop().await;
        test.finish().await;
    }
}

#[tokio::test]
async fn daily_reports_are_stored_emailed_with_the_chart_and_sent_to_telegram_once() {
    for test in databases().await {
        let (_ns, client) = redis("reports", &test).await;
        let db = &test.db;
        let now = now_ms();
        seed_demo(db, now).await.unwrap();
        let portfolio = db.portfolios().await.unwrap().remove(0);
        // A month of values, and a held stock that has never been priced.
        for day in (0..31).rev() {
            let value = dec("19000") + Decimal::from(30 - day) * dec("10.5");
            let valuation = Valuation {
                portfolio_id: portfolio.id,
                value,
                priced: 5,
                unpriced: 1,
            };
            db.store_valuations(&[valuation], now - day * DAY - 1000)
                .await
                .unwrap();
        }
        let unpriced = db
            .upsert_stock(&NewStock {
                symbol: "NEW".into(),
                exchange: "US".into(),
                name: "New Co".into(),
                currency: "USD".into(),
            })
            .await
            .unwrap();
        db.set_holding(portfolio.id, unpriced, dec("7"))
            .await
            .unwrap();
        db.store_quotes(
            &[Quote {
                stock_id: 1,
                price: dec("200"),
                at_ms: now - 1000,
                volume: None,
            }],
            "test",
            now,
        )
        .await
        .unwrap();

        let (smtp_port, mut mail) = start_smtp(Default::default()).await;
        let (bot_url, mut bot) = start_bot(BotMode::Ok).await;
        let port = smtp_port.to_string();
        let app = app(
            db,
            &client,
            &[
                ("EMAIL_SMTP_HOST", "127.0.0.1"),
                ("EMAIL_SMTP_PORT", &port),
                ("EMAIL_FROM", "PSW5 <cron@example.com>"),
                ("EMAIL_TO", "owner@example.com"),
                ("TELEGRAM_BOT_TOKEN", TOKEN),
                ("TELEGRAM_CHAT_ID", CHAT),
                ("TELEGRAM_API_URL", &bot_url),
                ("REPORT_TIMEZONE", "Europe/Stockholm"),
            ],
        );
        let worker = RunningWorker::start(&app);
        let result = jobs::reports::generate_daily_reports::enqueue(&client)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
        worker.stop().await;
        assert_eq!(
            (result.reports, result.delivered, result.already_delivered),
            (1, 1, 0),
            "{}: {result:?}",
            test.kind
        );
        assert!(
            result.delivery_failures.is_empty(),
            "{:?}",
            result.delivery_failures
        );

        let (subject, html, chart) = db
            .report(portfolio.id, &result.date)
            .await
            .unwrap()
            .expect("a stored report");
        assert!(subject.contains("Demo portfolio"), "{subject}");
        assert!(
            html.contains("NEW"),
            "the report names the holding without a price"
        );
        let chart = chart.expect("a stored chart");
        let (width, height) = png_size(&chart);
        assert_eq!((width, height), (800, 400));

        let message = next(&mut mail).await;
        assert_eq!(message.recipients, ["owner@example.com"]);
        let parsed = mail_parser::MessageParser::default()
            .parse(&message.data)
            .unwrap();
        assert_eq!(parsed.subject(), Some(subject.as_str()));
        let attachment = parsed.attachments().next().expect("the chart goes along");
        assert_eq!(attachment.contents(), &chart[..]);

        let BotCall::Photo { fields, photo, .. } = next(&mut bot).await else {
            panic!("expected sendPhoto");
        };
        assert_eq!(photo, chart);
        assert!(
            fields["caption"].contains("Demo portfolio"),
            "{:?}",
            fields["caption"]
        );

        // On disk, the page shows its chart by file name instead of the e-mail's content id.
        let out = tempfile::tempdir().unwrap();
        let written = psw_cron_app::cli::export_reports(db, out.path())
            .await
            .unwrap();
        assert_eq!(written.len(), 2, "{written:?}");
        let page = std::fs::read_to_string(&written[1]).unwrap();
        let png_name = written[0].file_name().unwrap().to_str().unwrap();
        assert!(page.contains(&format!("src=\"{png_name}\"")), "{png_name}");
        assert_eq!(std::fs::read(&written[0]).unwrap(), chart);

        // A retry of the same day makes the report again but does not send it twice.
        let again = jobs::reports::daily_reports(&app, now_ms()).await.unwrap();
        assert_eq!(
            (again.reports, again.delivered, again.already_delivered),
            (1, 0, 1)
        );
        assert!(
            mail.try_recv().is_err() && bot.try_recv().is_err(),
            "sent twice"
        );
        test.finish().await;
    }
}

#[tokio::test]
async fn reports_no_channel_took_are_retried_and_a_portfolio_without_prices_gets_no_value() {
    let test = crate::support::sqlite().await;
    let (_ns, client) = redis("undelivered", &test).await;
    let db = &test.db;
    let portfolio = db
        .ensure_portfolio("Unpriced", "USD", now_ms())
        .await
        .unwrap();
    let stock = db
        .upsert_stock(&NewStock {
            symbol: "NEW".into(),
            exchange: "US".into(),
            name: "New".into(),
            currency: "USD".into(),
        })
        .await
        .unwrap();
    db.set_holding(portfolio.id, stock, dec("1")).await.unwrap();
    let (smtp_port, mut mail) = start_smtp(SmtpBehaviour {
        reject_rcpt: true,
        ..Default::default()
    })
    .await;
    let port = smtp_port.to_string();
    let app = app(
        db,
        &client,
        &[
            ("EMAIL_SMTP_HOST", "127.0.0.1"),
            ("EMAIL_SMTP_PORT", &port),
            ("EMAIL_FROM", "cron@example.com"),
            ("EMAIL_TO", "owner@example.com"),
        ],
    );

    let values = jobs::portfolio::value_portfolios(&app).await.unwrap();
    assert_eq!(
        values.portfolios_updated, 0,
        "nothing priced: no value, not zero"
    );
    assert!(
        db.value_at(portfolio.id, now_ms(), None)
            .await
            .unwrap()
            .is_none()
    );

    let error = jobs::reports::daily_reports(&app, now_ms())
        .await
        .unwrap_err();
    assert!(error.message().contains("no report went out"), "{error}");
    assert!(error.message().contains("550"), "{error}");
    assert!(mail.try_recv().is_err());
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (_, html, _) = db
        .report(portfolio.id, &date)
        .await
        .unwrap()
        .expect("stored all the same");
    assert!(
        html.contains("NEW"),
        "the report names the unpriced holding"
    );
    assert!(!db.report_delivered(portfolio.id, &date).await.unwrap());
    test.finish().await;
}

fn png_size(png: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let reader = decoder.read_info().expect("a valid PNG");
    let info = reader.info();
    (info.width, info.height)
}

#[tokio::test]
async fn cleanup_removes_what_is_past_retention_and_keeps_the_rest() {
    for test in databases().await {
        let (_ns, client) = redis("cleanup", &test).await;
        let db = &test.db;
        let now = now_ms();
        seed_demo(db, now).await.unwrap();
        let portfolio = db.portfolios().await.unwrap().remove(0);
        let quote = |at_ms| Quote {
            stock_id: 1,
            price: dec("1"),
            at_ms,
            volume: None,
        };
        db.store_quotes(&[quote(now - 400 * DAY), quote(now - 2 * DAY)], "test", now)
            .await
            .unwrap();
        for at_ms in [now - 800 * DAY, now - DAY] {
            let valuation = Valuation {
                portfolio_id: portfolio.id,
                value: dec("1"),
                priced: 1,
                unpriced: 0,
            };
            db.store_valuations(&[valuation], at_ms).await.unwrap();
        }
        for (date, created) in [("2020-01-01", now - 100 * DAY), ("2026-11-28", now - DAY)] {
            let report = StoredReport {
                portfolio_id: portfolio.id,
                date,
                created_at_ms: created,
                subject: "s",
                html: "h",
                summary: "t",
                chart_png: None,
            };
            db.store_report(&report).await.unwrap();
        }
        let app = app(db, &client, &[("DEAD_LETTER_RETENTION", "1ms")]);
        let worker = RunningWorker::start(&app);
        // A job with arguments its task does not take: one dead letter.
        client
            .enqueue_by_name::<serde_json::Value>(
                jobs::cleanup::cleanup_old_data::NAME,
                &json!(["x"]),
                EnqueueOptions::new(),
            )
            .await
            .unwrap();
        eventually(WAIT, "a dead letter", || async {
            client.dead_letters().stats().await.unwrap().len == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await; // older than the 1 ms retention

        let removed = jobs::cleanup::cleanup_old_data::enqueue(&client)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
        worker.stop().await;
        // The demo seed stored a price a day ago, and one 2 days ago stays: only the 400-day one goes.
        assert_eq!(
            (
                removed.price_history,
                removed.portfolio_values,
                removed.reports,
                removed.dead_letters
            ),
            (1, 1, 1, 1),
            "{}",
            test.kind
        );
        let counts = db.table_counts().await.unwrap();
        assert!(counts.contains(&("portfolio_values", 1)), "{counts:?}");
        assert!(counts.contains(&("reports", 1)), "{counts:?}");
        test.finish().await;
    }
}

#[tokio::test]
async fn the_health_monitor_alerts_once_per_incident_and_says_when_it_is_over() {
    for test in databases().await {
        let (_ns, client) = redis("health", &test).await;
        let (bot_url, mut bot) = start_bot(BotMode::Ok).await;
        let app: Arc<App> = app(
            &test.db,
            &client,
            &[
                ("TELEGRAM_BOT_TOKEN", TOKEN),
                ("TELEGRAM_CHAT_ID", CHAT),
                ("TELEGRAM_API_URL", &bot_url),
                ("HEALTH_MAX_QUEUE_LAG", "2"),
                ("HEALTH_MAX_DLQ_GROWTH", "1"),
            ],
        );
        // Three jobs on a queue no worker consumes: a lag over the threshold of 2.
        for _ in 0..3 {
            client
                .enqueue_by_name::<serde_json::Value>(
                    "psw_cron.tasks.update_stock_prices",
                    &json!([]),
                    EnqueueOptions::new().queue("parked"),
                )
                .await
                .unwrap();
        }
        let worker = RunningWorker::start(&app);
        eventually(WAIT, "the worker's heartbeat", || async {
            client
                .stats(Duration::from_secs(60))
                .await
                .unwrap()
                .workers
                .iter()
                .any(|w| w.alive)
        })
        .await;

        let first = jobs::health::check_health(&app, now_ms()).await.unwrap();
        assert_eq!(first.worker_status, "degraded");
        assert_eq!(first.workers_alive, 1);
        assert_eq!(
            first.alerted,
            ["queue-lag:parked"],
            "{}: {first:?}",
            test.kind
        );
        let text = next_health_alert(&mut bot).await;
        assert!(text.contains("queue parked has 3 jobs waiting"), "{text}");

        // Two dead letters since the last check: over the growth threshold of 1.
        for _ in 0..2 {
            client
                .enqueue_by_name::<serde_json::Value>(
                    jobs::cleanup::cleanup_old_data::NAME,
                    &json!([1]),
                    EnqueueOptions::new(),
                )
                .await
                .unwrap();
        }
        eventually(WAIT, "two dead letters", || async {
            client.dead_letters().stats().await.unwrap().len == 2
        })
        .await;
        let second = jobs::health::check_health(&app, now_ms()).await.unwrap();
        assert_eq!(
            second.alerted,
            ["dead-letter-growth"],
            "the lag is alerted already: {second:?}"
        );
        let text = next_health_alert(&mut bot).await;
        assert!(text.contains("2 jobs were dead-lettered"), "{text}");

        let third = jobs::health::check_health(&app, now_ms()).await.unwrap();
        assert!(third.alerted.is_empty(), "{third:?}");
        assert_eq!(third.recovered, ["dead-letter-growth"]);
        assert!(third.conditions.contains_key("queue-lag:parked"));
        let text = next_health_alert(&mut bot).await;
        assert!(text.contains("recovered"), "{text}");
        assert!(
            bot.try_recv().is_err(),
            "one message per change, not per check"
        );

        worker.stop().await;
        test.finish().await;
    }
}

fn text_of(call: &BotCall) -> String {
    match call {
        BotCall::Message { body, .. } => body["text"].as_str().unwrap_or_default().to_owned(),
        BotCall::Photo { fields, .. } => fields.get("caption").cloned().unwrap_or_default(),
    }
}

/// The next health message, past the dead-letter alerts the worker sends meanwhile.
async fn next_health_alert(bot: &mut tokio::sync::mpsc::UnboundedReceiver<BotCall>) -> String {
    loop {
        let text = text_of(&next(bot).await);
        if text.contains("PSW5 health") {
            return text;
        }
    }
}
