//! The dashboard end to end in a real headless Chromium, driven through chromedriver
//! (WebDriver): log in, watch a job appear and finish with its progress bar moving, pause a
//! queue and see the workers stop taking its jobs, replay a group of dead letters; and a
//! screenshot of every page into `target/dashboard-screens/` for review.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them it
//! fails and says so.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder};
use psw_tasks::testing::TestNamespace;
use psw_tasks::{AuditAction, Worker};
use psw_tasks_tests::{add, gate, refuses, steps};
use serde_json::{Value, json};

use crate::dashboard::{USERS, serve};
use crate::support::start_built;

const WAIT: Duration = Duration::from_secs(20);

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn chromium() -> (Driver, Browser) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("chromedriver could not start ({err}): install Debian's `chromium` and `chromium-driver`")
        });
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"],
        }),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&driver.url)
            .await
        {
            Ok(browser) => return (driver, browser),
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "no browser session from chromedriver: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The text of the first element `css` matches (a progress bar's value), or `None`.
async fn probe(browser: &Browser, css: &str) -> Option<String> {
    let script = "const e = document.querySelector(arguments[0]);
        if (!e) return null;
        return String(e.tagName === 'PROGRESS' ? e.value : e.textContent).trim();";
    match browser.execute(script, vec![json!(css)]).await.unwrap() {
        Value::String(text) => Some(text),
        _ => None,
    }
}

/// Waits until `css` holds text for which `good` holds; returns it.
async fn until(browser: &Browser, css: &str, what: &str, good: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = probe(browser, css).await;
        if let Some(text) = &seen
            && good(text)
        {
            return text.clone();
        }
        assert!(Instant::now() < deadline, "{what}: `{css}` shows {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the action button for `path` (confirming its question).
async fn click_action(browser: &Browser, path: &str) {
    let clicked = browser
        .execute(
            "window.confirm = function () { return true; };
             const b = document.querySelector('button[data-action=\"' + arguments[0] + '\"]');
             if (!b) return false; b.click(); return true;",
            vec![json!(path)],
        )
        .await
        .unwrap();
    assert_eq!(clicked, json!(true), "a button for {path}");
}

fn screens() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let dir = target.join("dashboard-screens");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG");
    std::fs::write(screens().join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_pauses_and_replays_in_a_real_browser() {
    let ns = TestNamespace::new("dash-browser");
    let client = ns.client().await;
    let worker = start_built(
        Worker::builder(&client)
            .lease(Duration::from_millis(900))
            .shutdown_grace(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let served = serve(&client, &[("PSW_DASHBOARD_AUTH", USERS)]).await;
    let (_driver, browser) = chromium().await;
    let host = served.base.trim_start_matches("http://");
    let page = |path: &str| format!("http://{host}{path}");

    // Log in: basic auth, as a browser sends it after its prompt.
    browser
        .goto(&format!("http://ops:s3cret@{host}/"))
        .await
        .unwrap();
    until(&browser, "#workers-alive", "one worker alive", |t| t == "1").await;
    // From here on without the credentials in the address, as after a login prompt: the
    // browser keeps sending them for this origin.
    browser.goto(&page("/")).await.unwrap();
    until(&browser, "#workers-alive", "still logged in", |t| t == "1").await;
    until(&browser, ".user", "logged in as ops", |t| {
        t.starts_with("ops (admin)")
    })
    .await;
    for _ in 0..3 {
        add::enqueue(&client, 1, 2).await.unwrap();
    }
    // The charts draw from /api/charts.
    until(
        &browser,
        "#chart-throughput .uplot",
        "the throughput chart",
        |_| true,
    )
    .await;
    screenshot(&browser, "overview").await;

    // A job appears on the workers page by itself, its bar moves, and it finishes.
    browser.goto(&page("/workers")).await.unwrap();
    until(&browser, "section.worker h2", "the worker", |t| {
        t.contains("alive")
    })
    .await;
    let prefix = format!("{}-steps", ns.name());
    let job = steps::enqueue(&client, prefix.clone(), 3).await.unwrap();
    let bar = format!("tr[data-job=\"{}\"] progress", job.id());
    until(&browser, &bar, "step 1 of 3", |v| v == "1").await;
    screenshot(&browser, "workers").await;
    gate(&format!("{prefix}-1")).notify_one();
    until(&browser, &bar, "step 2 of 3", |v| v == "2").await;
    gate(&format!("{prefix}-2")).notify_one();
    until(&browser, &bar, "step 3 of 3", |v| v == "3").await;
    gate(&format!("{prefix}-3")).notify_one();
    let row = format!("tr[data-job=\"{}\"]", job.id());
    let deadline = Instant::now() + WAIT;
    while probe(&browser, &row).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the finished job leaves the running list"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .goto(&page(&format!("/jobs/{}", job.id())))
        .await
        .unwrap();
    until(&browser, "dd.state", "the job's state", |t| t == "SUCCESS").await;
    screenshot(&browser, "job").await;

    // Pause the queue: the workers stop taking its jobs; resume: they take them again.
    browser.goto(&page("/queues")).await.unwrap();
    click_action(&browser, "/api/queues/default/pause").await;
    until(
        &browser,
        "tr[data-queue=\"default\"] td.state",
        "paused",
        |t| t == "paused",
    )
    .await;
    // Workers stop reading a paused queue within a second (they look every 400 ms, and a read
    // blocks up to 500 ms), as the pause tests of monitor.rs wait too: a job enqueued sooner
    // may still be taken.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = add::enqueue(&client, 20, 22).await.unwrap();
    until(
        &browser,
        "tr[data-queue=\"default\"] td.ready",
        "one job waits",
        |t| t == "1",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        probe(&browser, "tr[data-queue=\"default\"] td.ready")
            .await
            .as_deref(),
        Some("1"),
        "a paused queue's job is not taken"
    );
    assert!(
        client.record(held.id().as_str()).await.unwrap().is_none(),
        "not started"
    );
    screenshot(&browser, "queues").await;
    click_action(&browser, "/api/queues/default/resume").await;
    assert_eq!(held.wait(WAIT).await.unwrap(), 42);
    until(
        &browser,
        "tr[data-queue=\"default\"] td.state",
        "active",
        |t| t == "active",
    )
    .await;

    // Dead letters of one cause make one group; replay it from the page.
    for n in 0..3 {
        refuses::enqueue(&client, format!("row {n} is bad"))
            .await
            .unwrap();
    }
    let letters = client.dead_letters();
    let deadline = Instant::now() + WAIT;
    while letters.stats().await.unwrap().len < 3 {
        assert!(Instant::now() < deadline, "three dead letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let group = letters.groups().await.unwrap().remove(0);
    assert_eq!(group.count, 3);
    browser.goto(&page("/failures")).await.unwrap();
    let count = format!("tr[data-group=\"{}\"] td.count", group.id);
    until(&browser, &count, "the group of three", |t| t == "3").await;
    screenshot(&browser, "failures").await;
    click_action(&browser, &format!("/api/failures/{}/replay", group.id)).await;
    until(&browser, "#flash", "the replay's answer", |t| {
        t.contains("3 replayed")
    })
    .await;
    let audit = client.audit_log(None, 10).await.unwrap();
    let replay = audit
        .iter()
        .find(|e| e.action == AuditAction::GroupReplay)
        .expect("the replay is audited");
    assert_eq!((replay.user.as_str(), replay.jobs), ("ops", 3));

    for (name, path) in [
        ("tasks", "/tasks".to_owned()),
        ("task", "/tasks/it.add".to_owned()),
        ("schedules", "/schedules".to_owned()),
        ("lookup", "/jobs".to_owned()),
        ("audit", "/audit".to_owned()),
    ] {
        browser.goto(&page(&path)).await.unwrap();
        until(&browser, "main h1", name, |t| !t.is_empty()).await;
        screenshot(&browser, name).await;
    }
    // Times are shown in the browser's zone, with UTC on hover (the audit page, last).
    let hover = browser
        .execute(
            "const t = document.querySelector('time[data-ms]'); return t ? t.title : null;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        hover.as_str().is_some_and(|t| t.ends_with(" UTC")),
        "{hover}"
    );
    browser.close().await.unwrap();
    worker.stop().await;
}
