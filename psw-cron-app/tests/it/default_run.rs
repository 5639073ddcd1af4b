//! The binary's default run (no subcommand): worker, beat and the dashboard in one process on
//! the in-process broker, as a developer starts it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_run_serves_the_dashboard_over_its_in_process_broker() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_psw-cron-app"))
        .current_dir(dir.path())
        .env_remove("REDIS_URL")
        .env_remove("CELERY_BROKER_URL")
        .env_remove("DATABASE_URL")
        .env_remove("PSW_DASHBOARD_AUTH")
        .env_remove("FLOWER_BASIC_AUTH")
        .env("PSW_DASHBOARD_ADDR", format!("127.0.0.1:{port}"))
        .env("PSW_DASHBOARD_REFRESH", "200ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first run seeds the demo and enqueues a price update at once: the dashboard shows a
    // worker alive and the job done, all inside the one process.
    let overview = loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the default run exited early"
        );
        if let Ok(response) = http.get(format!("{base}/api/overview")).send().await
            && response.status().is_success()
        {
            let overview: Value = response.json().await.unwrap();
            let alive = overview["stats"]["workers"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["alive"] == true));
            let done = overview["stats"]["tasks"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["succeeded"].as_u64() > Some(0)));
            if alive && done {
                break overview;
            }
        }
        assert!(Instant::now() < deadline, "the dashboard shows the run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(overview["stats"]["queues"].as_array().is_some());
    let page = http.get(format!("{base}/schedules")).send().await.unwrap();
    assert!(page.status().is_success());
    assert!(page.text().await.unwrap().contains("update_stock_prices"));
    // SIGTERM: the run stops, dashboard and all.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the default run stops on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(http.get(format!("{base}/healthz")).send().await.is_err());
}
