//! The database layer on SQLite and on MariaDB / MySQL: exact money, set-based values, imports.

use psw_cron_app::db::Db;
use psw_cron_app::db::market::NewStock;
use psw_cron_app::holdings::{DEMO_PORTFOLIO, import_holdings, seed_demo};
use psw_cron_app::providers::Quote;
use rust_decimal::Decimal;

use crate::support::databases;

const NOW: i64 = 1_764_403_200_000; // 2025-11-29 08:00 UTC
const HOUR: i64 = 3_600_000;

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

async fn stock(db: &Db, symbol: &str, currency: &str) -> i64 {
    db.upsert_stock(&NewStock {
        symbol: symbol.to_owned(),
        exchange: "US".to_owned(),
        name: format!("{symbol} Inc."),
        currency: currency.to_owned(),
    })
    .await
    .unwrap()
}

fn quote(stock_id: i64, price: &str, at_ms: i64) -> Quote {
    Quote {
        stock_id,
        price: dec(price),
        at_ms,
        volume: Some(100),
    }
}

#[tokio::test]
async fn values_are_exact_and_leave_out_what_has_no_fresh_price() {
    for test in databases().await {
        let db = &test.db;
        // Migrations run at every start: a second run must be a no-op.
        db.migrate().await.unwrap();
        let portfolio = db.ensure_portfolio("Mine", "USD", NOW).await.unwrap();
        let empty = db.ensure_portfolio("Empty", "USD", NOW).await.unwrap();
        let a = stock(db, "AAA", "USD").await;
        let b = stock(db, "BBB", "USD").await;
        let stale = stock(db, "OLD", "USD").await;
        let never = stock(db, "NEW", "USD").await;
        let foreign = stock(db, "SEK1", "SEK").await;
        for (id, quantity) in [
            (a, "3"),
            (b, "2.5"),
            (stale, "10"),
            (never, "1"),
            (foreign, "4"),
        ] {
            db.set_holding(portfolio.id, id, dec(quantity))
                .await
                .unwrap();
        }
        db.store_quotes(
            &[
                quote(a, "10.0001", NOW - HOUR),
                quote(b, "100.1234", NOW - HOUR),
                quote(foreign, "55", NOW - HOUR),
            ],
            "test",
            NOW,
        )
        .await
        .unwrap();
        db.store_quotes(&[quote(stale, "9.99", NOW - 200 * HOUR)], "test", NOW)
            .await
            .unwrap();

        let values = db.valuations(NOW - 96 * HOUR).await.unwrap();
        assert_eq!(values.len(), 2, "{}", test.kind);
        let mine = values
            .iter()
            .find(|v| v.portfolio_id == portfolio.id)
            .unwrap();
        // 3 x 10.0001 + 2.5 x 100.1234 = 30.0003 + 250.3085
        assert_eq!(mine.value, dec("280.3088"), "{}", test.kind);
        assert_eq!((mine.priced, mine.unpriced), (2, 3), "{}", test.kind);
        let nothing = values.iter().find(|v| v.portfolio_id == empty.id).unwrap();
        assert_eq!(
            (nothing.value, nothing.priced, nothing.unpriced),
            (Decimal::ZERO, 0, 0)
        );

        let unpriced = db.unpriced_holdings(NOW - 96 * HOUR).await.unwrap();
        let symbols: Vec<&str> = unpriced.iter().map(|u| u.symbol.as_str()).collect();
        assert_eq!(symbols, ["NEW", "OLD", "SEK1"], "{}", test.kind);
        assert!(unpriced[0].reason.contains("no price"), "{:?}", unpriced[0]);
        assert!(unpriced[2].reason.contains("SEK"), "{:?}", unpriced[2]);

        db.store_valuations(&values, NOW).await.unwrap();
        let stored = db.value_at(portfolio.id, NOW, None).await.unwrap().unwrap();
        assert_eq!(
            (stored.value, stored.at_ms, stored.unpriced),
            (dec("280.3088"), NOW, 3)
        );
        assert!(
            db.value_at(portfolio.id, NOW, Some(0))
                .await
                .unwrap()
                .is_none(),
            "like with like only"
        );
        assert_eq!(
            db.value_at(portfolio.id, NOW - 1, None).await.unwrap(),
            None
        );
        test.finish().await;
    }
}

#[tokio::test]
async fn an_older_quote_never_replaces_a_newer_latest_price() {
    for test in databases().await {
        let db = &test.db;
        let id = stock(db, "AAA", "USD").await;
        db.store_quotes(&[quote(id, "12.5", NOW)], "test", NOW)
            .await
            .unwrap();
        db.store_quotes(&[quote(id, "11", NOW - HOUR)], "test", NOW)
            .await
            .unwrap();
        // The same instant again is a repeat, not a second row.
        db.store_quotes(&[quote(id, "12.5", NOW)], "test", NOW)
            .await
            .unwrap();
        assert_eq!(
            db.latest_price(id).await.unwrap(),
            Some((dec("12.5"), NOW)),
            "{}",
            test.kind
        );
        assert_eq!(db.price_history_len(id).await.unwrap(), 2, "{}", test.kind);
        // Fetched just now: not due again until the refresh interval has passed.
        assert!(db.stocks_due(NOW, HOUR).await.unwrap().is_empty());
        let due = db.stocks_due(NOW + 2 * HOUR, HOUR).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].last_price, Some(dec("12.5")));
        test.finish().await;
    }
}

#[tokio::test]
async fn an_import_loads_the_good_rows_and_names_the_bad_ones_by_line() {
    let csv = "\
symbol,quantity,exchange,name,currency
aapl,10,US,Apple,USD
MSFT,abc,US,Microsoft,USD
NVDA,-3,US,Nvidia,USD
ERIC B,100.5,ST,Ericsson,SEK
KO,1.123456,US,Coca-Cola,USD
TSLA,5,US
GOOG,2,US,Alphabet,DOLLARS
AAPL,3,US,Apple again,usd
";
    for test in databases().await {
        let db = &test.db;
        let import = import_holdings(db, csv.as_bytes(), "Imported", "USD", NOW)
            .await
            .unwrap();
        assert_eq!(import.imported, 2, "{}: {:?}", test.kind, import.errors);
        let lines: Vec<u64> = import.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 6, 7, 8, 9], "{:?}", import.errors);
        assert!(
            import.errors[5].message.contains("line 2 already"),
            "{:?}",
            import.errors[5]
        );
        assert!(
            import.errors[0].message.contains("quantity \"abc\""),
            "{:?}",
            import.errors[0]
        );
        assert!(
            import.errors[2].message.contains("4 decimal places"),
            "{:?}",
            import.errors[2]
        );
        assert!(
            import.errors[3].message.contains("fields"),
            "{:?}",
            import.errors[3]
        );
        assert!(
            import.errors[4].message.contains("three-letter"),
            "{:?}",
            import.errors[4]
        );
        let counts = db.table_counts().await.unwrap();
        assert!(counts.contains(&("holdings", 2)), "{counts:?}");
        assert!(counts.contains(&("portfolios", 1)), "{counts:?}");
        test.finish().await;
    }
}

#[tokio::test]
async fn the_demo_is_seeded_once() {
    for test in databases().await {
        let db = &test.db;
        assert!(seed_demo(db, NOW).await.unwrap());
        assert!(!seed_demo(db, NOW).await.unwrap());
        let portfolios = db.portfolios().await.unwrap();
        assert_eq!(portfolios.len(), 1);
        assert_eq!(portfolios[0].name, DEMO_PORTFOLIO);
        assert!(db.table_counts().await.unwrap().contains(&("holdings", 5)));
        test.finish().await;
    }
}

#[tokio::test]
async fn an_alert_opens_once_and_closes_once() {
    for test in databases().await {
        let db = &test.db;
        assert!(
            db.open_alert("queue-lag:default", NOW, "lagging")
                .await
                .unwrap()
        );
        assert!(
            !db.open_alert("queue-lag:default", NOW + 60_000, "still")
                .await
                .unwrap()
        );
        assert_eq!(db.open_alerts().await.unwrap(), ["queue-lag:default"]);
        assert_eq!(
            db.close_alert("queue-lag:default").await.unwrap(),
            Some((NOW, "lagging".to_owned()))
        );
        assert_eq!(db.close_alert("queue-lag:default").await.unwrap(), None);
        assert_eq!(db.swap_reading("dead", 5, NOW).await.unwrap(), None);
        assert_eq!(
            db.swap_reading("dead", 7, NOW + 1).await.unwrap(),
            Some((5, NOW))
        );
        test.finish().await;
    }
}
