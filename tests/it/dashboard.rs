//! The dashboard's JSON API and `/metrics` against a real server on a free port and a real
//! Redis: the login on every route, the back-off, the CSRF, role and read-only checks on every
//! action, and the Prometheus exposition.

use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, Dashboard, Worker};
use psw_tasks_tests::add;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::support::{eventually, start_built};

const WAIT: Duration = Duration::from_secs(15);
const USERS: &str = "ops:s3cret:admin,ann:look:viewer";

/// A dashboard serving until dropped.
struct Served {
    base: String,
    _stop: oneshot::Sender<()>,
}

async fn serve(client: &Client, vars: &[(&str, &str)]) -> Served {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain([("PSW_DASHBOARD_REFRESH".to_owned(), "200ms".to_owned())])
        .collect();
    let dashboard = Dashboard::bind_with(
        client,
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        Some("127.0.0.1:0"),
    )
    .await
    .expect("bind the dashboard");
    let base = format!("http://{}", dashboard.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(dashboard.serve_until(async {
        let _ = stopped.await;
    }));
    Served { base, _stop: stop }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn token(served: &Served, user: &str, password: &str) -> String {
    let session: Value = http()
        .get(format!("{}/api/session", served.base))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["csrf_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_login_but_healthz() {
    let ns = TestNamespace::new("dash-auth");
    let client = ns.client().await;
    let served = serve(&client, &[("PSW_DASHBOARD_AUTH", USERS)]).await;
    let http = http();
    let health = http
        .get(format!("{}/healthz", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    for path in [
        "/metrics",
        "/api/session",
        "/api/overview",
        "/api/metrics?window=day",
        "/api/tasks",
        "/api/tasks/it.add/executions",
        "/api/jobs/some-id",
        "/api/schedules",
        "/api/dead",
        "/nowhere",
    ] {
        let url = format!("{}{path}", served.base);
        let anonymous = http.get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            anonymous.headers().contains_key("www-authenticate"),
            "{path}"
        );
        let wrong = http
            .get(&url)
            .basic_auth("ops", Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
        let token = http.get(&url).bearer_auth("s3cret").send().await.unwrap();
        assert_eq!(
            token.status(),
            StatusCode::UNAUTHORIZED,
            "{path}: no token is set"
        );
        // A good login clears the address's failures (five in a row would make it wait).
        let good = http
            .get(format!("{}/api/session", served.base))
            .basic_auth("ops", Some("s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(good.status(), StatusCode::OK);
    }
    let post = http
        .post(format!("{}/api/queues/mail/pause", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);

    let viewer = http
        .get(format!("{}/api/session", served.base))
        .basic_auth("ann", Some("look"))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), StatusCode::OK);
    let csp = viewer.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(viewer.headers()["x-content-type-options"], "nosniff");
    let session: Value = viewer.json().await.unwrap();
    assert_eq!(
        (session["user"].as_str(), session["role"].as_str()),
        (Some("ann"), Some("viewer"))
    );
    eventually(WAIT, "the overview is served", || async {
        http.get(format!("{}/api/overview", served.base))
            .basic_auth("ann", Some("look"))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_get_429_with_a_back_off() {
    let ns = TestNamespace::new("dash-throttle");
    let client = ns.client().await;
    let served = serve(&client, &[("PSW_DASHBOARD_AUTH", USERS)]).await;
    let http = http();
    let url = format!("{}/api/session", served.base);
    for attempt in 0..5 {
        let wrong = http
            .get(&url)
            .basic_auth("ops", Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
    let throttled = http
        .get(&url)
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        throttled.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = http
        .get(&url)
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK, "after the wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_an_admin_the_csrf_token_and_the_dashboards_own_origin() {
    let ns = TestNamespace::new("dash-csrf");
    let client = ns.client().await;
    let served = serve(&client, &[("PSW_DASHBOARD_AUTH", USERS)]).await;
    let http = http();
    let url = format!("{}/api/queues/mail/pause", served.base);
    let host = served.base.trim_start_matches("http://").to_owned();
    let admin = token(&served, "ops", "s3cret").await;
    let viewer = token(&served, "ann", "look").await;
    let refused = [
        ("a viewer", "ann", "look", Some(viewer.as_str()), None, None),
        ("no token", "ops", "s3cret", None, None, None),
        (
            "another session's token",
            "ops",
            "s3cret",
            Some(viewer.as_str()),
            None,
            None,
        ),
        (
            "another origin",
            "ops",
            "s3cret",
            Some(admin.as_str()),
            Some("http://evil.example"),
            None,
        ),
        (
            "a cross-site fetch",
            "ops",
            "s3cret",
            Some(admin.as_str()),
            None,
            Some("cross-site"),
        ),
    ];
    for (what, user, password, token, origin, site) in refused {
        let mut request = http.post(&url).basic_auth(user, Some(password));
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{what}");
        assert!(
            client.paused_queues().await.unwrap().is_empty(),
            "{what}: nothing changed"
        );
    }
    // No GET changes anything.
    let get = http
        .get(&url)
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(client.paused_queues().await.unwrap().is_empty());

    let done = http
        .post(&url)
        .basic_auth("ops", Some("s3cret"))
        .header("x-csrf-token", &admin)
        .header("origin", format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(client.paused_queues().await.unwrap(), ["mail"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_dashboard_refuses_every_action() {
    let ns = TestNamespace::new("dash-ro");
    let client = ns.client().await;
    let served = serve(
        &client,
        &[
            ("PSW_DASHBOARD_AUTH", USERS),
            ("PSW_DASHBOARD_READ_ONLY", "1"),
        ],
    )
    .await;
    let admin = token(&served, "ops", "s3cret").await;
    for path in [
        "/api/queues/mail/pause",
        "/api/jobs/x/cancel",
        "/api/schedules/s/run",
    ] {
        let response = http()
            .post(format!("{}{path}", served.base))
            .basic_auth("ops", Some("s3cret"))
            .header("x-csrf-token", &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("read-only"),
            "{body}"
        );
    }
    assert!(client.paused_queues().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_login_it_refuses_to_listen_beyond_loopback() {
    let client = Client::memory();
    let err = Dashboard::bind_with(&client, |_| None, Some("0.0.0.0:0"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PSW_DASHBOARD_AUTH"), "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_take_a_bearer_token_and_carry_the_clusters_numbers() {
    let ns = TestNamespace::new("dash-metrics");
    let client = ns.client().await;
    let worker = start_built(
        Worker::builder(&client)
            .lease(Duration::from_millis(900))
            .shutdown_grace(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    for i in 0..3 {
        add::enqueue(&client, i, 1)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
    }
    let served = serve(
        &client,
        &[
            ("PSW_DASHBOARD_AUTH", USERS),
            ("PSW_METRICS_TOKEN", "scrape-me"),
        ],
    )
    .await;
    let http = http();
    let url = format!("{}/metrics", served.base);
    let expected = r#"psw_tasks_jobs_total{task="it.add",queue="default",outcome="succeeded"} 3"#;
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let response = http
            .get(&url)
            .bearer_auth("scrape-me")
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            let text = response.text().await.unwrap();
            if text.contains(expected) {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{expected} in:\n{text}"
            );
        }
        assert!(std::time::Instant::now() < deadline, "/metrics served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for name in [
        "# TYPE psw_tasks_jobs counter",
        "# TYPE psw_tasks_job_run_seconds histogram",
        r#"psw_tasks_job_run_seconds_bucket{le="+Inf",task="it.add"} 3"#,
        r#"psw_tasks_job_run_seconds_bucket{le="0.001",task="it.add"} "#,
        "# EOF",
        r#"psw_tasks_job_run_seconds_count{task="it.add"} 3"#,
        r#"psw_tasks_queue_jobs{queue="default",state="ready"} 0"#,
        "psw_tasks_queue_oldest_age_seconds{",
        "psw_tasks_workers 1",
        "psw_tasks_dead_letters 0",
    ] {
        assert!(text.contains(name), "{name} in:\n{text}");
    }
    let wrong = http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let elsewhere = http
        .get(format!("{}/api/overview", served.base))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        StatusCode::UNAUTHORIZED,
        "the token opens /metrics only"
    );
    worker.stop().await;
}
