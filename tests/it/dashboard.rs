//! The dashboard's JSON API and `/metrics` against a real server on a free port and a real
//! Redis: the login on every route, the back-off, the CSRF, role and read-only checks on every
//! action, and the Prometheus exposition.

use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, Dashboard, Worker};
use psw_tasks_tests::{add, refuses};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::support::{eventually, start_built};

const WAIT: Duration = Duration::from_secs(15);
pub(crate) const USERS: &str = "ops:s3cret:admin,ann:look:viewer";

/// A dashboard serving until dropped.
pub(crate) struct Served {
    pub(crate) base: String,
    _stop: oneshot::Sender<()>,
}

pub(crate) async fn serve(client: &Client, vars: &[(&str, &str)]) -> Served {
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
        "/api/dead?after=0-0&group=abc",
        "/api/failures",
        "/api/failures/abc/export",
        "/api/audit",
        "/api/charts?window=hour",
        "/",
        "/queues",
        "/workers",
        "/tasks",
        "/tasks/it.add",
        "/jobs?id=x",
        "/jobs/some-id",
        "/failures",
        "/schedules",
        "/schedules/nightly",
        "/audit",
        "/static/app.js",
        "/static/uPlot.iife.min.js",
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
        "# TYPE psw_tasks_jobs_total counter",
        "# TYPE psw_tasks_job_run_seconds histogram",
        r#"psw_tasks_job_run_seconds_bucket{task="it.add",le="+Inf"} 3"#,
        r#"psw_tasks_job_run_seconds_bucket{task="it.add",le="0.001"} "#,
        r#"psw_tasks_job_run_seconds_count{task="it.add"} 3"#,
        r#"psw_tasks_queue_jobs{queue="default",state="ready"} 0"#,
        "psw_tasks_queue_oldest_age_seconds{",
        "psw_tasks_workers 1",
        "psw_tasks_dead_letters 0",
    ] {
        assert!(text.contains(name), "{name} in:\n{text}");
    }
    // The real linter of the format, as a Prometheus operator would run it.
    let (ok, said) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{said}\nover:\n{text}");
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

/// Runs the real `promtool` (Debian's package `prometheus`, which `.ci/run` installs), with
/// `input` on its stdin: whether it passed, and what it said.
fn promtool(args: &[&str], input: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("promtool could not start ({err}): install Debian's package `prometheus`")
        });
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(input.unwrap_or_default().as_bytes())
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The metric names the exposition serves (a histogram's series count too).
const SERVED_METRICS: [&str; 9] = [
    "psw_tasks_jobs_total",
    "psw_tasks_job_run_seconds_bucket",
    "psw_tasks_job_run_seconds_sum",
    "psw_tasks_job_run_seconds_count",
    "psw_tasks_queue_jobs",
    "psw_tasks_queue_oldest_age_seconds",
    "psw_tasks_workers",
    "psw_tasks_dead_letters",
    "psw_tasks_job_run_seconds",
];

/// The `psw_tasks_*` names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("psw_tasks_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_use_served_metrics() {
    let rules = "../docs/prometheus/psw-tasks-alerts.yml";
    let (ok, said) = promtool(&["check", "rules", rules], None);
    assert!(ok, "promtool check rules {rules}:\n{said}");
    let text = std::fs::read_to_string(format!("{}/{rules}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for alert in [
        "PswTasksWorkerLost",
        "PswTasksFailureRate",
        "PswTasksDeadLetterGrowth",
        "PswTasksQueueAge",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}")),
            "{alert} in {rules}"
        );
    }
    for name in metric_names(&text) {
        assert!(
            SERVED_METRICS.contains(&name.as_str()),
            "{rules} uses {name}, which /metrics does not serve"
        );
    }
}

#[test]
fn the_shipped_grafana_dashboard_reads_served_metrics() {
    let path = format!(
        "{}/../docs/grafana/psw-tasks.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|err| panic!("{path} is not JSON: {err}"));
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 5, "{path}: {} panels", panels.len());
    let mut exprs = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("each target has an expr");
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{path}: {expr} reads no psw_tasks metric"
            );
            for name in names {
                assert!(
                    SERVED_METRICS.contains(&name.as_str()),
                    "{path} uses {name}"
                );
            }
            exprs += 1;
        }
    }
    assert!(exprs >= 6, "{path}: {exprs} queries");
}

/// A POST as the admin, with the session's token: the JSON answer.
async fn act(served: &Served, path: &str) -> Value {
    let token = token(served, "ops", "s3cret").await;
    let response = http()
        .post(format!("{}{path}", served.base))
        .basic_auth("ops", Some("s3cret"))
        .header("x-csrf-token", token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// A GET as the viewer: status and text.
async fn look(served: &Served, path: &str) -> (StatusCode, String) {
    let response = http()
        .get(format!("{}{path}", served.base))
        .basic_auth("ann", Some("look"))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_grouped_replayed_exported_purged_and_audited() {
    let ns = TestNamespace::new("dash-groups");
    let client = ns.client().await;
    let worker = start_built(
        Worker::builder(&client)
            .lease(Duration::from_millis(900))
            .shutdown_grace(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    for reason in [
        "row 1 is bad",
        "row 22 is bad",
        "row 333 is bad",
        "disk full",
    ] {
        refuses::enqueue(&client, reason.to_owned()).await.unwrap();
    }
    let letters = client.dead_letters();
    eventually(WAIT, "four dead letters", || async {
        letters.stats().await.unwrap().len == 4
    })
    .await;
    worker.stop().await;
    let served = serve(&client, &[("PSW_DASHBOARD_AUTH", USERS)]).await;

    let (status, text) = look(&served, "/api/failures").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let groups: Value = serde_json::from_str(&text).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0]["count"], 3);
    assert_eq!(groups[0]["error"], "row <n> is bad");
    assert_eq!(groups[0]["task"], "it.refuses");
    assert_eq!(groups[0]["reason"], "permanent_error");
    assert_eq!(groups[1]["count"], 1);
    let rows = groups[0]["id"].as_str().unwrap().to_owned();
    let disk = groups[1]["id"].as_str().unwrap().to_owned();

    // A page of one group, then the next page after it.
    let (_, text) = look(&served, &format!("/api/dead?group={rows}&limit=2")).await;
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["letters"].as_array().unwrap().len(), 2, "{page}");
    let next = page["next"].as_str().expect("a next page").to_owned();
    let (_, text) = look(&served, &format!("/api/dead?group={rows}&after={next}")).await;
    let rest: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(rest["letters"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["next"], Value::Null);

    // The export carries each letter with its envelope, arguments decoded.
    let (status, export) = look(&served, &format!("/api/failures/{disk}/export")).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<Value> = export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{export}");
    assert_eq!(
        lines[0]["envelope"]["args"],
        serde_json::json!(["disk full"])
    );
    assert_eq!(lines[0]["group"], disk.as_str());

    // Replaying the group puts its three jobs back on their queue and nothing else.
    let replayed = act(&served, &format!("/api/failures/{rows}/replay")).await;
    assert_eq!(replayed["replayed"], 3, "{replayed}");
    let stats = client.stats(Duration::from_secs(60)).await.unwrap();
    let default = stats.queues.iter().find(|q| q.name == "default").unwrap();
    assert_eq!(default.ready, 3);
    assert_eq!(letters.stats().await.unwrap().len, 1);
    let purged = act(&served, &format!("/api/failures/{disk}/purge")).await;
    assert_eq!(purged["purged"], 1);
    assert!(letters.groups().await.unwrap().is_empty());

    // Each action is in the audit log, newest first: who, what, from where, how many.
    let (_, text) = look(&served, "/api/audit").await;
    let audit: Value = serde_json::from_str(&text).unwrap();
    let audit = audit.as_array().unwrap();
    let actions: Vec<(&str, &str, u64)> = audit
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["jobs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("group.purge", disk.as_str(), 1),
            ("group.replay", rows.as_str(), 3),
            ("group.export", disk.as_str(), 1),
        ]
    );
    assert_eq!(audit[0]["user"], "ops");
    assert_eq!(audit[0]["address"], "127.0.0.1");
    let (status, page) = look(&served, "/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("group.replay"), "{page}");
}

/// What hostile names and messages are made of: markup, an attribute break-out and a
/// terminal escape (queue names may hold no white space, so these have none).
const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img/src=x/onerror=alert(2)>";
const TERMINAL: &str = "\u{1b}[31mred\u{1b}[0m";

fn assert_escaped(page: &str, where_: &str) {
    assert!(
        !page.contains("<script>alert"),
        "{where_}: raw <script>:\n{page}"
    );
    assert!(!page.contains("<img/src=x"), "{where_}: raw <img>:\n{page}");
    assert!(!page.contains('\u{1b}'), "{where_}: a raw terminal escape");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_messages_and_arguments_are_escaped_on_every_page() {
    let ns = TestNamespace::new("dash-escape");
    let mut config = ns.config();
    config.unknown_task_delay = Duration::from_millis(20);
    let client = Client::connect(&config).await.unwrap();
    // Queue names refuse control characters: the terminal escape goes in the messages.
    let queue = format!("q{SCRIPT}{IMG}");
    let hostile = format!("{SCRIPT}{IMG}{TERMINAL}");
    let worker = start_built(
        Worker::builder(&client)
            .queues([queue.as_str(), "default"])
            .lease(Duration::from_millis(900))
            .shutdown_grace(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    // An error message and an argument, in a hostile queue with a hostile header.
    let options = psw_tasks::EnqueueOptions::new()
        .queue(queue.clone())
        .header("x-note", hostile.clone());
    let failed = refuses::enqueue_with(&client, options, hostile.clone())
        .await
        .unwrap();
    let failed_id = failed.id().to_string();
    // A task name no worker knows: dead-lettered as unknown after its looks.
    client
        .enqueue_by_name::<()>(
            &format!("t{SCRIPT}{IMG}"),
            &(hostile.as_str(),),
            psw_tasks::EnqueueOptions::new(),
        )
        .await
        .unwrap();
    let letters = client.dead_letters();
    eventually(WAIT, "both dead-lettered", || async {
        letters.stats().await.unwrap().len == 2
    })
    .await;
    let served = serve(&client, &[("PSW_DASHBOARD_AUTH", USERS)]).await;
    // An action on the hostile queue puts its name into the audit log.
    let segment: String = queue
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    act(&served, &format!("/api/queues/{segment}/pause")).await;
    act(&served, &format!("/api/queues/{segment}/resume")).await;
    let groups = letters.groups().await.unwrap();
    let mut pages = vec![
        "/".to_owned(),
        "/queues".to_owned(),
        "/workers".to_owned(),
        "/tasks".to_owned(),
        format!("/tasks/t{}", &segment[1..]),
        format!("/jobs/{failed_id}"),
        format!("/jobs?id={segment}"),
        "/failures".to_owned(),
        "/schedules".to_owned(),
        "/audit".to_owned(),
    ];
    pages.extend(groups.iter().map(|g| format!("/failures?group={}", g.id)));
    let mut seen = String::new();
    for path in &pages {
        let (status, page) = look(&served, path).await;
        assert!(
            status.is_success() || status == StatusCode::NOT_FOUND,
            "{path}: {status}"
        );
        assert_escaped(&page, path);
        seen.push_str(&page);
    }
    // And they are shown, escaped, where they belong.
    for shown in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&quot;&gt;&lt;img/src=x/onerror=alert(2)&gt;",
        "\\u{1b}[31mred",
    ] {
        assert!(seen.contains(shown), "{shown} shown somewhere");
    }
    let (_, job) = look(&served, &format!("/jobs/{failed_id}")).await;
    assert!(job.contains("x-note"), "the envelope's headers are shown");
    assert!(
        job.contains("&lt;script&gt;"),
        "the argument is shown, escaped"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_worker_started_is_found_in_its_queue_with_its_envelope() {
    let ns = TestNamespace::new("dash-queued");
    let client = ns.client().await;
    let hostile = format!("{SCRIPT}{IMG}{TERMINAL}");
    // No worker runs: one job waits in the delayed set, one in a stream.
    let delayed = refuses::enqueue_with(
        &client,
        psw_tasks::EnqueueOptions::new().countdown(Duration::from_secs(3600)),
        hostile.clone(),
    )
    .await
    .unwrap();
    let delayed_id = delayed.id().to_string();
    let ready = client
        .enqueue_by_name::<()>(
            "tests::nobody_runs",
            &("waiting",),
            psw_tasks::EnqueueOptions::new().queue("idle"),
        )
        .await
        .unwrap();
    let ready_id = ready.id().to_string();
    assert!(client.record(&delayed_id).await.unwrap().is_none());
    let served = serve(&client, &[("PSW_DASHBOARD_AUTH", USERS)]).await;

    let (status, body) = look(&served, &format!("/api/jobs/{delayed_id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["state"], "PENDING");
    assert_eq!(job["queued"]["lane"], "default");
    assert!(job["queued"]["due_ms"].as_i64().unwrap() > 0);
    assert_eq!(job["queued"]["envelope"]["args"][0], hostile.as_str());
    let (_, body) = look(&served, &format!("/api/jobs/{ready_id}")).await;
    let job: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["queued"]["lane"], "idle");
    assert_eq!(job["queued"]["due_ms"], Value::Null);
    assert_eq!(job["queued"]["envelope"]["args"][0], "waiting");
    let (status, _) = look(&served, "/api/jobs/0193a1b2-no-such-job").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The page shows the envelope, escaped; a pasted log line finds the job.
    let (status, page) = look(&served, &format!("/jobs/{delayed_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_escaped(&page, "the waiting job's page");
    assert!(page.contains("id=\"envelope\""), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)"),
        "the argument, escaped"
    );
    assert!(page.contains("delayed set"));
    let line = format!("INFO enqueued job={ready_id} queue=idle");
    let mut url = reqwest::Url::parse(&format!("{}/jobs", served.base)).unwrap();
    url.query_pairs_mut().append_pair("id", &line);
    let response = http()
        .get(url)
        .basic_auth("ann", Some("look"))
        .send()
        .await
        .unwrap();
    assert!(
        response.url().path().ends_with(&ready_id),
        "{}",
        response.url()
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("&quot;waiting&quot;") || page.contains("\"waiting\""));
    assert!(page.contains("idle"));

    // Cancelled from its page's action, it is never run.
    act(&served, &format!("/api/jobs/{ready_id}/cancel")).await;
    let audit = client.audit_log(None, 10).await.unwrap();
    assert!(audit.iter().any(|entry| entry.target == ready_id));
}
