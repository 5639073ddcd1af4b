//! The quote providers against local servers that answer like EODHD and Börsdata do.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use psw_cron_app::providers::{
    Provider, ProviderError, ProviderSettings, RateLimitRetry, StockRef, eodhd::Eodhd,
};
use rust_decimal::Decimal;

const KEY: &str = "k3y-Secret-123";

// ---------------------------------------------------------------------------------------------
// A scripted HTTP server

/// One canned answer.
#[derive(Clone)]
pub(crate) struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

pub(crate) fn ok(body: impl Into<String>) -> Answer {
    status(200, body)
}

pub(crate) fn status(status: u16, body: impl Into<String>) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: body.into(),
        delay: Duration::ZERO,
    }
}

fn rate_limited(retry_after_s: u64) -> Answer {
    Answer {
        headers: vec![("retry-after", retry_after_s.to_string())],
        ..status(429, "Too Many Requests")
    }
}

/// A request the server saw.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    query: HashMap<String, String>,
    at: Instant,
}

#[derive(Default)]
struct Script {
    /// Answers by path, in order; the last one repeats.
    routes: Mutex<HashMap<String, VecDeque<Answer>>>,
    hits: Mutex<Vec<Hit>>,
}

pub(crate) struct Server {
    pub(crate) base: String,
    script: Arc<Script>,
}

impl Server {
    pub(crate) async fn start(routes: Vec<(&str, Vec<Answer>)>) -> Server {
        Self::start_at("", routes).await
    }

    /// Serves under `prefix` (like `/api`), as the real base URLs have one.
    pub(crate) async fn start_at(prefix: &str, routes: Vec<(&str, Vec<Answer>)>) -> Server {
        let script = Arc::new(Script::default());
        *script.routes.lock().unwrap() = routes
            .into_iter()
            .map(|(path, answers)| (format!("{prefix}{path}"), answers.into()))
            .collect();
        let app = Router::new().fallback(answer).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            base: format!("http://{addr}{prefix}"),
            script,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.script.hits.lock().unwrap().clone()
    }

    pub(crate) fn hits_on(&self, path_end: &str) -> usize {
        self.hits()
            .iter()
            .filter(|hit| hit.path.ends_with(path_end))
            .count()
    }
}

async fn answer(
    State(script): State<Arc<Script>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let path = uri.path().to_owned();
    script.hits.lock().unwrap().push(Hit {
        path: path.clone(),
        query,
        at: Instant::now(),
    });
    let next = {
        let mut routes = script.routes.lock().unwrap();
        routes.get_mut(&path).and_then(|answers| {
            if answers.len() > 1 {
                answers.pop_front()
            } else {
                answers.front().cloned()
            }
        })
    };
    let Some(next) = next else {
        return (StatusCode::NOT_FOUND, "no such route").into_response();
    };
    tokio::time::sleep(next.delay).await;
    let mut response = (StatusCode::from_u16(next.status).unwrap(), next.body).into_response();
    for (name, value) in next.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn stock(id: i64, symbol: &str, exchange: &str) -> StockRef {
    StockRef {
        id,
        symbol: symbol.to_owned(),
        exchange: exchange.to_owned(),
        borsdata_id: None,
        last_price: None,
    }
}

fn settings(eodhd: Option<&str>, borsdata: Option<&str>, base: &str) -> ProviderSettings {
    ProviderSettings {
        eodhd_api_key: eodhd.map(str::to_owned),
        eodhd_base_url: base.to_owned(),
        borsdata_api_key: borsdata.map(str::to_owned),
        borsdata_base_url: base.to_owned(),
        timeout: Duration::from_secs(5),
        eodhd_rate_limit: "1000/m".parse().unwrap(),
        borsdata_rate_limit: "100/10s".parse().unwrap(),
    }
}

fn eodhd(server: &Server) -> Provider {
    let provider = Provider::from_settings(&settings(Some(KEY), None, &server.base));
    assert_eq!(provider.name(), "eodhd");
    provider
}

fn borsdata(server: &Server) -> Provider {
    let provider = Provider::from_settings(&settings(None, Some(KEY), &server.base));
    assert_eq!(provider.name(), "borsdata");
    provider
}

/// The error, checked to be of the expected kind and to keep the key to itself.
fn expect_unavailable(result: Result<impl std::fmt::Debug, ProviderError>) -> String {
    match result {
        Err(err @ ProviderError::Unavailable { .. }) => clean(err),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn expect_refused(result: Result<impl std::fmt::Debug, ProviderError>) -> String {
    match result {
        Err(err @ ProviderError::Refused { .. }) => clean(err),
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn clean(err: ProviderError) -> String {
    let text = err.to_string();
    assert!(!text.contains(KEY), "the key leaked: {text}");
    assert!(!format!("{err:?}").contains(KEY), "the key leaked: {err:?}");
    text
}

const AAPL: &str = r#"{"code":"AAPL.US","timestamp":1729888080,"gmtoffset":0,"open":229.74,
    "high":233.22,"low":229.57,"close":231.41,"volume":37931706,"previousClose":230.57,
    "change":0.84,"change_p":0.3643}"#;
const VTI: &str = r#"{"code":"VTI.US","timestamp":1729887240,"gmtoffset":0,"open":287.03,
    "high":288.25,"low":285.05,"close":285.54,"volume":null,"previousClose":285.81,
    "change":-0.27,"change_p":-0.0945}"#;
const NA: &str = r#"{"code":"NADA.US","timestamp":"NA","gmtoffset":0,"open":"NA","high":"NA",
    "low":"NA","close":"NA","volume":"NA","previousClose":"NA","change":"NA","change_p":"NA"}"#;

// ---------------------------------------------------------------------------------------------
// Choosing the provider

#[test]
fn a_key_picks_its_provider_and_none_picks_the_simulation() {
    let base = "http://127.0.0.1:9";
    let both = Provider::from_settings(&settings(Some("a"), Some("b"), base));
    assert_eq!((both.name(), both.is_simulated()), ("eodhd", false));
    assert_eq!(both.batch_size(), 15);

    let borsdata = Provider::from_settings(&settings(None, Some("b"), base));
    assert_eq!(
        (borsdata.name(), borsdata.is_simulated()),
        ("borsdata", false)
    );
    assert_eq!(borsdata.batch_size(), 500);

    let none = Provider::from_settings(&settings(None, None, base));
    assert_eq!((none.name(), none.is_simulated()), ("simulated", true));
    assert!(none.batch_size() > 0);

    let blank = Provider::from_settings(&settings(Some("  "), None, base));
    assert!(blank.is_simulated());

    let debug = format!(
        "{:?}{:?}",
        Provider::from_settings(&settings(Some(KEY), None, base)),
        Provider::from_settings(&settings(None, Some(KEY), base))
    );
    assert!(!debug.contains(KEY), "the key leaked: {debug}");
}

// ---------------------------------------------------------------------------------------------
// EODHD

#[tokio::test]
async fn eodhd_prices_one_ticker_from_an_object() {
    let server = Server::start_at("/api", vec![("/real-time/AAPL.US", vec![ok(AAPL)])]).await;

    let fetched = eodhd(&server)
        .fetch(&[stock(7, "AAPL", "US")])
        .await
        .unwrap();

    assert!(fetched.failures.is_empty(), "{:?}", fetched.failures);
    assert_eq!(fetched.quotes.len(), 1);
    let quote = &fetched.quotes[0];
    assert_eq!(quote.stock_id, 7);
    assert_eq!(quote.price, dec("231.41"));
    assert_eq!(quote.at_ms, 1_729_888_080_000);
    assert_eq!(quote.volume, Some(37_931_706));
    let hits = server.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].query.get("api_token").map(String::as_str),
        Some(KEY)
    );
    assert_eq!(hits[0].query.get("fmt").map(String::as_str), Some("json"));
    assert!(!hits[0].query.contains_key("s"));
}

#[tokio::test]
async fn eodhd_prices_a_batch_and_reports_na_and_missing_tickers() {
    let body = format!("[{AAPL},{VTI},{NA}]");
    let server = Server::start(vec![("/real-time/AAPL.US", vec![ok(body)])]).await;
    let provider = Provider::Eodhd(
        Eodhd::new(KEY, &server.base, Duration::from_secs(5)).with_eod_fallback(false),
    );

    let batch = [
        stock(1, "AAPL", "US"),
        stock(2, "VTI", "US"),
        stock(3, "NADA", "US"),
        stock(4, "GONE", "US"),
    ];
    let fetched = provider.fetch(&batch).await.unwrap();

    let priced: Vec<(i64, Decimal)> = fetched
        .quotes
        .iter()
        .map(|q| (q.stock_id, q.price))
        .collect();
    assert_eq!(priced, vec![(1, dec("231.41")), (2, dec("285.54"))]);
    assert_eq!(fetched.quotes[1].volume, None);
    let failed: Vec<i64> = fetched.failures.iter().map(|f| f.stock_id).collect();
    assert_eq!(failed, vec![3, 4]);
    assert_eq!(fetched.failures[0].symbol, "NADA");
    assert!(
        fetched.failures[0].reason.contains("NA"),
        "{}",
        fetched.failures[0].reason
    );
    assert!(
        fetched.failures[1].reason.contains("missing"),
        "{}",
        fetched.failures[1].reason
    );
    let hits = server.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].query.get("s").map(String::as_str),
        Some("VTI.US,NADA.US,GONE.US")
    );
}

#[tokio::test]
async fn eodhd_skips_an_unknown_first_ticker_and_asks_again_for_the_rest() {
    // EODHD answers 404 for an unknown ticker in the path, whatever `s=` holds.
    let server = Server::start(vec![
        ("/real-time/GONE.US", vec![status(404, "Ticker Not Found.")]),
        ("/real-time/AAPL.US", vec![ok(format!("[{AAPL},{VTI}]"))]),
    ])
    .await;
    let provider = Provider::Eodhd(
        Eodhd::new(KEY, &server.base, Duration::from_secs(5)).with_eod_fallback(false),
    );

    let batch = [
        stock(1, "GONE", "US"),
        stock(2, "AAPL", "US"),
        stock(3, "VTI", "US"),
    ];
    let fetched = provider.fetch(&batch).await.unwrap();

    let priced: Vec<i64> = fetched.quotes.iter().map(|q| q.stock_id).collect();
    assert_eq!(priced, vec![2, 3]);
    assert_eq!(fetched.failures.len(), 1);
    assert_eq!(fetched.failures[0].stock_id, 1);
    assert!(
        fetched.failures[0].reason.contains("404"),
        "{:?}",
        fetched.failures[0]
    );
    let hits = server.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].query.get("s").map(String::as_str), Some("VTI.US"));
}

#[tokio::test]
async fn eodhd_turns_blanks_into_dashes_and_asks_each_ticker_once() {
    let body = r#"[{"code":"ERIC-B.ST","timestamp":1704467400,"close":68.42,"volume":5}]"#;
    let server = Server::start(vec![("/real-time/ERIC-B.ST", vec![ok(body)])]).await;

    let batch = [stock(1, "ERIC B", "ST"), stock(2, "ERIC-B", "ST")];
    let fetched = eodhd(&server).fetch(&batch).await.unwrap();

    assert_eq!(fetched.quotes.len(), 2, "{fetched:?}");
    assert!(fetched.quotes.iter().all(|q| q.price == dec("68.42")));
    assert!(!server.hits()[0].query.contains_key("s"));
}

#[tokio::test]
async fn eodhd_prices_are_exact() {
    let body = r#"[{"code":"A.US","timestamp":1,"close":123.4567},
                   {"code":"B.US","timestamp":1,"close":12345.678901234567891},
                   {"code":"C.US","timestamp":1,"close":1.5E2}]"#;
    let server = Server::start(vec![("/real-time/A.US", vec![ok(body)])]).await;

    let batch = [
        stock(1, "A", "US"),
        stock(2, "B", "US"),
        stock(3, "C", "US"),
    ];
    let fetched = eodhd(&server).fetch(&batch).await.unwrap();

    let prices: Vec<Decimal> = fetched.quotes.iter().map(|q| q.price).collect();
    assert_eq!(
        prices,
        vec![dec("123.4567"), dec("12345.678901234567891"), dec("150")]
    );
    // Through f64 the second would have become 12345.678901234568.
    assert_eq!(prices[1].to_string(), "12345.678901234567891");
}

#[tokio::test]
async fn eodhd_falls_back_to_the_last_end_of_day_close() {
    let eod = r#"[{"date":"2024-01-04","open":1,"high":1,"low":1,"close":10.5,
                   "adjusted_close":10.5,"volume":100},
                  {"date":"2024-01-05","open":1,"high":1,"low":1,"close":11.25,
                   "adjusted_close":11.0,"volume":200}]"#;
    let server = Server::start(vec![
        ("/real-time/AAPL.US", vec![ok(format!("[{AAPL},{NA}]"))]),
        ("/eod/NADA.US", vec![ok(eod)]),
    ])
    .await;

    let batch = [stock(1, "AAPL", "US"), stock(2, "NADA", "US")];
    let fetched = eodhd(&server).fetch(&batch).await.unwrap();

    assert!(fetched.failures.is_empty(), "{:?}", fetched.failures);
    let fallback = &fetched.quotes[1];
    assert_eq!(fallback.stock_id, 2);
    assert_eq!(fallback.price, dec("11.25"));
    assert_eq!(fallback.volume, Some(200));
    // The end of 2024-01-05 in UTC.
    assert_eq!(fallback.at_ms, 1_704_499_199_999);
    let eod_hit = server
        .hits()
        .into_iter()
        .find(|hit| hit.path == "/eod/NADA.US")
        .unwrap();
    assert_eq!(
        eod_hit.query.get("api_token").map(String::as_str),
        Some(KEY)
    );
    assert!(eod_hit.query.contains_key("from") && eod_hit.query.contains_key("to"));
    assert_eq!(server.hits_on("/eod/AAPL.US"), 0);
}

#[tokio::test]
async fn eodhd_reports_a_failed_fallback_per_symbol() {
    let server = Server::start(vec![
        ("/real-time/NADA.US", vec![ok(NA)]),
        ("/eod/NADA.US", vec![ok("[]")]),
    ])
    .await;

    let fetched = eodhd(&server)
        .fetch(&[stock(2, "NADA", "US")])
        .await
        .unwrap();

    assert!(fetched.quotes.is_empty());
    assert_eq!(fetched.failures.len(), 1);
    let reason = &fetched.failures[0].reason;
    assert!(
        reason.contains("NA") && reason.contains("end-of-day"),
        "{reason}"
    );
}

#[tokio::test]
async fn eodhd_unauthorized_is_refused() {
    let server = Server::start(vec![(
        "/real-time/AAPL.US",
        vec![status(401, "Unauthenticated")],
    )])
    .await;

    let text = expect_refused(eodhd(&server).fetch(&[stock(1, "AAPL", "US")]).await);

    assert!(text.contains("401"), "{text}");
}

#[tokio::test]
async fn eodhd_server_error_is_unavailable() {
    let server = Server::start(vec![("/real-time/AAPL.US", vec![status(500, "oops")])]).await;

    let text = expect_unavailable(eodhd(&server).fetch(&[stock(1, "AAPL", "US")]).await);

    assert!(text.contains("500"), "{text}");
}

#[tokio::test]
async fn eodhd_timeout_is_unavailable() {
    let slow = Answer {
        delay: Duration::from_secs(3),
        ..ok(AAPL)
    };
    let server = Server::start(vec![("/real-time/AAPL.US", vec![slow])]).await;
    let mut settings = settings(Some(KEY), None, &server.base);
    settings.timeout = Duration::from_millis(300);

    let started = Instant::now();
    let text = expect_unavailable(
        Provider::from_settings(&settings)
            .fetch(&[stock(1, "AAPL", "US")])
            .await,
    );

    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(text.contains("300ms"), "{text}");
}

#[tokio::test]
async fn eodhd_refused_connection_is_unavailable() {
    // A port that was just free.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let text = expect_unavailable(
        Provider::from_settings(&settings(Some(KEY), None, &base))
            .fetch(&[stock(1, "AAPL", "US")])
            .await,
    );

    assert!(text.contains("connect"), "{text}");
}

#[tokio::test]
async fn eodhd_malformed_json_is_unavailable() {
    let server = Server::start(vec![(
        "/real-time/AAPL.US",
        vec![ok("<html><body>502 Bad Gateway</body></html>")],
    )])
    .await;

    let text = expect_unavailable(eodhd(&server).fetch(&[stock(1, "AAPL", "US")]).await);

    assert!(text.contains("malformed"), "{text}");
    assert!(text.contains("<html>"), "{text}");
}

#[tokio::test]
async fn eodhd_waits_out_a_rate_limit() {
    let server = Server::start(vec![(
        "/real-time/AAPL.US",
        vec![rate_limited(1), ok(AAPL)],
    )])
    .await;

    let started = Instant::now();
    let fetched = eodhd(&server)
        .fetch(&[stock(1, "AAPL", "US")])
        .await
        .unwrap();

    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fetched.quotes.len(), 1);
    assert_eq!(server.hits().len(), 2);
}

#[tokio::test]
async fn eodhd_gives_up_on_a_long_rate_limit() {
    let server = Server::start(vec![(
        "/real-time/AAPL.US",
        vec![rate_limited(120), ok(AAPL)],
    )])
    .await;

    let started = Instant::now();
    let text = expect_unavailable(eodhd(&server).fetch(&[stock(1, "AAPL", "US")]).await);

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(text.contains("429"), "{text}");
    assert_eq!(server.hits().len(), 1);
}

#[tokio::test]
async fn eodhd_stops_after_the_allowed_retries() {
    let server = Server::start(vec![("/real-time/AAPL.US", vec![rate_limited(0)])]).await;
    let retry = RateLimitRetry {
        max_retries: 2,
        max_total_wait: Duration::from_secs(1),
    };
    let provider = Provider::Eodhd(
        Eodhd::new(KEY, &server.base, Duration::from_secs(5)).with_rate_limit_retry(retry),
    );

    let text = expect_unavailable(provider.fetch(&[stock(1, "AAPL", "US")]).await);

    assert!(text.contains("429"), "{text}");
    assert_eq!(server.hits().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Börsdata

const INSTRUMENTS: &str = r#"{"instruments":[
  {"insId":3,"name":"Ericsson B","urlName":"ericsson","instrument":0,"isin":"SE0000108656",
   "ticker":"ERIC B","yahoo":"ERIC-B.ST","sectorId":7,"marketId":1,"branchId":51,
   "countryId":1,"listingDate":"1980-01-01","stockPriceCurrency":"SEK","reportCurrency":"SEK"},
  {"insId":97,"name":"Volvo B","ticker":"VOLV B","yahoo":"VOLV-B.ST","marketId":1,
   "stockPriceCurrency":"SEK"},
  {"insId":200,"name":"Nokia","ticker":"NOKIA","yahoo":"NOKIA.HE","marketId":9,
   "stockPriceCurrency":"EUR"},
  {"insId":201,"name":"Nokia SEK","ticker":"NOKIA","yahoo":"NOKIA-SEK.ST","marketId":1,
   "stockPriceCurrency":"SEK"}
]}"#;

const LAST: &str = r#"{"stockPricesList":[
  {"i":3,"d":"2024-01-05","h":69.1,"l":67.8,"c":68.42,"o":68.0,"v":12345678},
  {"i":97,"d":"2024-01-05","h":260.0,"l":255.5,"c":257.15,"o":256.0,"v":2345678},
  {"i":200,"d":"2024-01-05","h":3.3,"l":3.2,"c":3.2815,"o":3.25,"v":null},
  {"i":750,"d":"2024-01-04","h":10.0,"l":9.0,"c":9.5,"o":9.2,"v":1000},
  {"i":300,"d":"2024-01-05","h":1,"l":1,"c":1.1,"o":1,"v":1}
]}"#;

#[tokio::test]
async fn borsdata_maps_tickers_to_instruments_and_prices_them() {
    let server = Server::start(vec![
        ("/v1/instruments", vec![ok(INSTRUMENTS)]),
        ("/v1/instruments/stockprices/last", vec![ok(LAST)]),
    ])
    .await;
    let mut known = stock(4, "Whatever", "ST");
    known.borsdata_id = Some(750);

    let batch = [
        stock(1, "ERIC B", "ST"),
        stock(2, "volv-b", "ST"),
        stock(3, "NOKIA", "HE"),
        known,
        stock(5, "NOPE", "ST"),
        stock(6, "NOKIA", ""),
    ];
    let fetched = borsdata(&server).fetch(&batch).await.unwrap();

    let priced: Vec<(i64, Decimal, Option<i64>)> = fetched
        .quotes
        .iter()
        .map(|q| (q.stock_id, q.price, q.volume))
        .collect();
    assert_eq!(
        priced,
        vec![
            (1, dec("68.42"), Some(12_345_678)),
            (2, dec("257.15"), Some(2_345_678)),
            (3, dec("3.2815"), None),
            (4, dec("9.5"), Some(1000)),
        ]
    );
    // The end of 2024-01-05 in UTC.
    assert_eq!(fetched.quotes[0].at_ms, 1_704_499_199_999);
    let failed: Vec<(i64, &str)> = fetched
        .failures
        .iter()
        .map(|f| (f.stock_id, f.reason.as_str()))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, 5);
    assert!(failed[0].1.contains("not among"), "{}", failed[0].1);
    assert_eq!(failed[1].0, 6);
    assert!(failed[1].1.contains("matches 2"), "{}", failed[1].1);
    // The first load of the list was the one reload this fetch may make.
    assert_eq!(server.hits_on("/v1/instruments"), 1);
    assert_eq!(server.hits_on("/stockprices/last"), 1);
    assert!(
        server
            .hits()
            .iter()
            .all(|hit| hit.query.get("authKey").map(String::as_str) == Some(KEY))
    );
}

#[tokio::test]
async fn borsdata_keeps_the_instrument_list_and_reloads_it_for_a_new_ticker() {
    let listed_later = r#"{"instruments":[
      {"insId":3,"ticker":"ERIC B","yahoo":"ERIC-B.ST"},
      {"insId":300,"ticker":"NEWCO","yahoo":"NEWCO.ST"}]}"#;
    let server = Server::start(vec![
        ("/v1/instruments", vec![ok(INSTRUMENTS), ok(listed_later)]),
        ("/v1/instruments/stockprices/last", vec![ok(LAST)]),
    ])
    .await;
    let provider = borsdata(&server);

    provider.fetch(&[stock(1, "ERIC B", "ST")]).await.unwrap();
    provider.fetch(&[stock(1, "ERIC B", "ST")]).await.unwrap();
    assert_eq!(server.hits_on("/v1/instruments"), 1);

    let fetched = provider.fetch(&[stock(2, "NEWCO", "ST")]).await.unwrap();
    assert_eq!(server.hits_on("/v1/instruments"), 2);
    assert_eq!(fetched.quotes.len(), 1, "{fetched:?}");
    assert_eq!(fetched.quotes[0].price, dec("1.1"));

    // Still unknown after the reload: no second reload within the fetch.
    let fetched = provider.fetch(&[stock(3, "NOPE", "ST")]).await.unwrap();
    assert_eq!(server.hits_on("/v1/instruments"), 3);
    assert_eq!(fetched.failures.len(), 1);
    // Nothing left to price: the price list is not asked for.
    assert_eq!(server.hits_on("/stockprices/last"), 3);
}

#[tokio::test]
async fn borsdata_with_known_ids_skips_the_instrument_list() {
    let server = Server::start(vec![("/v1/instruments/stockprices/last", vec![ok(LAST)])]).await;
    let mut known = stock(1, "ERIC B", "ST");
    known.borsdata_id = Some(3);
    let mut unpriced = stock(2, "GONE", "ST");
    unpriced.borsdata_id = Some(999);

    let fetched = borsdata(&server).fetch(&[known, unpriced]).await.unwrap();

    assert_eq!(fetched.quotes.len(), 1);
    assert_eq!(fetched.quotes[0].price, dec("68.42"));
    assert_eq!(fetched.failures.len(), 1);
    assert!(fetched.failures[0].reason.contains("999"));
    assert_eq!(server.hits_on("/v1/instruments"), 0);
}

#[tokio::test]
async fn borsdata_waits_out_a_rate_limit() {
    let server = Server::start(vec![(
        "/v1/instruments/stockprices/last",
        vec![rate_limited(1), ok(LAST)],
    )])
    .await;
    let mut known = stock(1, "ERIC B", "ST");
    known.borsdata_id = Some(3);

    let started = Instant::now();
    let fetched = borsdata(&server).fetch(&[known]).await.unwrap();

    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fetched.quotes.len(), 1);
    assert_eq!(server.hits().len(), 2);
}

#[tokio::test]
async fn borsdata_errors_are_unavailable_or_refused() {
    let server = Server::start(vec![
        ("/v1/instruments", vec![status(401, "")]),
        (
            "/v1/instruments/stockprices/last",
            vec![status(503, "busy")],
        ),
    ])
    .await;
    let provider = borsdata(&server);
    let mut known = stock(1, "ERIC B", "ST");
    known.borsdata_id = Some(3);

    let text = expect_refused(provider.fetch(&[stock(2, "ERIC B", "ST")]).await);
    assert!(text.contains("401"), "{text}");

    let text = expect_unavailable(provider.fetch(&[known]).await);
    assert!(text.contains("503"), "{text}");
}

#[tokio::test]
async fn borsdata_malformed_answers_are_unavailable() {
    let server = Server::start(vec![
        (
            "/v1/instruments",
            vec![ok(r#"{"instruments":[{"insId":3,"#)],
        ),
        (
            "/v1/instruments/stockprices/last",
            vec![ok(r#"{"values":[]}"#)],
        ),
    ])
    .await;
    let provider = borsdata(&server);
    let mut known = stock(1, "ERIC B", "ST");
    known.borsdata_id = Some(3);

    let text = expect_unavailable(provider.fetch(&[stock(2, "ERIC B", "ST")]).await);
    assert!(text.contains("malformed"), "{text}");

    let text = expect_unavailable(provider.fetch(&[known]).await);
    assert!(text.contains("stockPricesList"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Simulated

#[tokio::test]
async fn simulated_walks_by_at_most_one_percent_and_stays_positive() {
    let provider = Provider::from_settings(&settings(None, None, "http://127.0.0.1:9"));
    let mut from_last = stock(1, "AAPL", "US");
    from_last.last_price = Some(dec("100"));
    let mut tiny = stock(2, "PENNY", "US");
    tiny.last_price = Some(dec("0.0001"));
    let fresh = stock(3, "FRESH", "US");
    let batch = [from_last, tiny, fresh];

    let mut moved = false;
    for _ in 0..200 {
        let fetched = provider.fetch(&batch).await.unwrap();
        assert!(fetched.failures.is_empty());
        assert_eq!(fetched.quotes.len(), 3);
        for quote in &fetched.quotes {
            assert!(quote.price > Decimal::ZERO, "{quote:?}");
            assert!(quote.price.scale() <= 4, "{quote:?}");
        }
        let walked = fetched.quotes[0].price;
        assert!(walked >= dec("99") && walked <= dec("101"), "{walked}");
        moved |= walked != dec("100");
        let start = fetched.quotes[2].price;
        assert!(start >= dec("49.5") && start <= dec("505"), "{start}");
    }
    assert!(moved, "the walk never moved");

    let now = chrono::Utc::now().timestamp_millis();
    let fetched = provider.fetch(&batch).await.unwrap();
    assert!((fetched.quotes[0].at_ms - now).abs() < 5_000);
}

/// The most requests `server` saw in any one second.
fn most_hits_in_a_second(server: &Server) -> usize {
    let mut times: Vec<Instant> = server.hits().iter().map(|hit| hit.at).collect();
    times.sort_unstable();
    (0..times.len())
        .map(|i| times[i..].partition_point(|&at| at < times[i] + Duration::from_secs(1)))
        .max()
        .unwrap_or(0)
}

/// Each provider makes 8 requests at once with the others; the most any second saw.
async fn most_in_a_second_of(server: &Server, providers: Vec<Provider>) -> usize {
    let providers = Arc::new(providers);
    let mut calls = Vec::new();
    for i in 0..providers.len() {
        let providers = providers.clone();
        calls.push(tokio::spawn(async move {
            for _ in 0..8 {
                providers[i].fetch(&[stock(7, "AAPL", "US")]).await.unwrap();
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(server.hits_on("/real-time/AAPL.US"), 8 * providers.len());
    most_hits_in_a_second(server)
}

/// Two processes' worth of EODHD clients (each its own Redis connection), 5 requests a second
/// each: paced alone they use the key twice over; through the shared limit both together keep
/// to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eodhd_limit_is_shared_across_processes() {
    let ns = psw_tasks::testing::TestNamespace::new("eodhd-shared-limit");
    let limit: psw_tasks::RateLimit = "5/s".parse().unwrap();
    let alone = |server: &Server| {
        Eodhd::new(KEY, &server.base, Duration::from_secs(5))
            .with_eod_fallback(false)
            .with_rate_limit(limit)
    };
    // The fault: each paced alone, together over the key's limit.
    let server = Server::start(vec![("/real-time/AAPL.US", vec![ok(AAPL)])]).await;
    let most = most_in_a_second_of(
        &server,
        vec![
            Provider::Eodhd(alone(&server)),
            Provider::Eodhd(alone(&server)),
        ],
    )
    .await;
    assert!(
        most > 6,
        "paced alone, two clients made only {most} requests in a second"
    );
    let server = Server::start(vec![("/real-time/AAPL.US", vec![ok(AAPL)])]).await;
    let mut shared = Vec::new();
    for _ in 0..2 {
        let client = ns.client().await;
        let limiter = client.rate_limiter("eodhd", limit).unwrap();
        shared.push(Provider::Eodhd(alone(&server).with_shared_limit(limiter)));
    }
    let most = most_in_a_second_of(&server, shared).await;
    assert!(most <= 6, "{most} requests in one second under 5/s");
}
