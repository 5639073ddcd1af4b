//! Celery interop against the real Celery 5 and redis-py from PyPI (the virtual env `.ci/run`
//! makes): a Python caller's `send_task`, answered by a Rust worker, seen from Python as a
//! Celery worker's answer would be.

use std::path::PathBuf;
use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, Worker};
use psw_tasks_tests::CELERY_QUEUE;
use serde_json::Value;

use crate::support::start_built;

/// The Python with Celery: `PSW_TEST_CELERY_PYTHON`, else the virtual env `.ci/run` makes in
/// `target/celery-venv`. Fails, never skips, without one.
fn celery_python() -> PathBuf {
    if let Ok(python) = std::env::var("PSW_TEST_CELERY_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/celery-venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with Celery: set PSW_TEST_CELERY_PYTHON, or make the virtual env as .ci/run does \
         (python3 -m venv target/celery-venv && target/celery-venv/bin/pip install 'celery[redis]>=5.3,<6')"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_send_task_calls_are_answered_by_rust_tasks_as_celery_would() {
    let python = celery_python();
    let ns = TestNamespace::new("celery");
    // The Celery list is named by its routing key, outside any namespace: one per test run.
    let list = format!("celery-{}", ns.name());
    let mut config = ns.config();
    config.celery_result_backend = Some(ns.url().to_owned());
    let client = Client::connect(&config).await.unwrap();
    let worker = start_built(
        Worker::builder(&client)
            .queues([CELERY_QUEUE])
            .celery_queues([list.as_str()])
            .lease(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let output = tokio::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/it/celery/caller.py"))
        .arg(ns.url())
        .arg(&list)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("the Python caller finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python: {stderr}");
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{err}: {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });

    assert_eq!(seen["ping"]["result"], "pong hi");
    assert_eq!(seen["ping"]["state"], "SUCCESS");
    assert_eq!(seen["ping"]["ready"], true);
    assert_eq!(seen["kwargs"], "AAPL.US force=true");
    for delayed in ["countdown", "eta"] {
        let after = seen[delayed]["after"].as_f64().unwrap();
        assert!(
            after >= 1.9,
            "{delayed}: answered after {after} s, before its time"
        );
        assert!(
            seen[delayed]["result"]
                .as_str()
                .unwrap()
                .starts_with("pong ")
        );
    }
    assert_eq!(seen["expired"]["type"], "TaskRevokedError", "{seen}");
    assert_eq!(seen["expired"]["state"], "REVOKED");
    assert_eq!(seen["failure"]["type"], "RuntimeError", "{seen}");
    assert_eq!(seen["failure"]["state"], "FAILURE");
    assert!(
        seen["failure"]["message"]
            .as_str()
            .unwrap()
            .contains("no quote for XYZ.US"),
        "{seen}"
    );
    assert_eq!(seen["bad_args"]["type"], "TypeError", "{seen}");
    let message = seen["bad_args"]["message"].as_str().unwrap();
    assert!(message.contains("`forse`"), "names the argument: {message}");
    assert_eq!(seen["retry"]["result"], 1, "{seen}");
    assert_eq!(seen["retry"]["state"], "SUCCESS");
    assert_eq!(
        seen["foreign_left"], true,
        "a message for a task not linked here is left"
    );
    assert_eq!(seen["foreign_state"], "PENDING");

    // The failures are dead letters of ours too.
    let letters = client.dead_letters().list(10).await.unwrap();
    let tasks: Vec<&str> = letters
        .iter()
        .filter_map(|letter| letter.task.as_deref())
        .collect();
    assert!(tasks.contains(&"it.celery_fails"), "{tasks:?}");
    assert!(tasks.contains(&"it.celery_quote"), "{tasks:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_job_survives_a_kill_9_of_its_rust_worker() {
    use std::io::{BufRead, BufReader};
    let python = celery_python();
    let ns = TestNamespace::new("celery-kill");
    let list = format!("celery-{}", ns.name());
    let client = ns.client().await;
    let envs = [
        ("PSW_QUEUES", CELERY_QUEUE),
        ("PSW_CELERY_QUEUES", list.as_str()),
        ("CELERY_RESULT_BACKEND", ns.url()),
        ("PSW_LEASE", "1s"),
    ];
    let mut first = crate::processes::spawn_worker(&ns, &envs);
    let mut caller = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            "import sys\nfrom celery import Celery\n\
             app = Celery('psw5', broker=sys.argv[1], backend=sys.argv[1])\n\
             r = app.send_task('it.celery_slow', args=['through'], queue=sys.argv[2])\n\
             print(r.id, flush=True)\n\
             print(r.get(timeout=60), r.state, flush=True)\n",
        )
        .arg(ns.url())
        .arg(&list)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(caller.stdout.take().unwrap()).lines();
    let id = lines.next().unwrap().unwrap();
    // Killed while it runs the job: after its STARTED record, before its 1.5 s are up.
    crate::support::eventually(Duration::from_secs(20), "the job started", || async {
        client
            .record(&id)
            .await
            .unwrap()
            .is_some_and(|record| record.state == psw_tasks::State::Started)
    })
    .await;
    crate::processes::signal(&first, "KILL");
    let _ = first.wait();
    let mut second = crate::processes::spawn_worker(&ns, &envs);
    let answer = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    assert_eq!(answer, "slept through SUCCESS");
    assert!(caller.wait().unwrap().success());
    let record = client.record(&id).await.unwrap().unwrap();
    assert_eq!(record.state, psw_tasks::State::Success);
    assert!(record.attempt == 0, "a lost lease is not a failed attempt");
    crate::processes::signal(&second, "TERM");
    let _ = second.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_calls_tasks_that_still_run_on_a_real_celery_worker() {
    let python = celery_python();
    let ns = TestNamespace::new("celery-legacy");
    let list = format!("legacy-{}", ns.name());
    let mut celery_worker = tokio::process::Command::new(&python)
        .args([
            "-m",
            "celery",
            "-A",
            "legacy_tasks",
            "worker",
            "--pool=solo",
        ])
        .args([
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ])
        .args(["--loglevel=warning", "-Q", &list])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/it/celery"))
        .env("LEGACY_BROKER", ns.url())
        // Celery warns that CI runs it as root; nothing of the test.
        .env("PYTHONWARNINGS", "ignore")
        .kill_on_drop(true)
        .spawn()
        .expect("start a Celery worker");
    let celery = psw_tasks::CeleryClient::connect(&ns.config())
        .await
        .unwrap();
    let kwargs: serde_json::Map<String, Value> =
        [("scale".to_owned(), Value::from(2))].into_iter().collect();
    let product = celery
        .send_task(
            "legacy.multiply",
            &[Value::from(6), Value::from(7)],
            &kwargs,
            &list,
        )
        .await
        .unwrap();
    // The Celery worker takes a few seconds to start.
    assert_eq!(product.wait(Duration::from_secs(60)).await.unwrap(), 84);
    assert_eq!(product.state().await.unwrap(), "SUCCESS");
    let refused = celery
        .send_task(
            "legacy.refuse",
            &[Value::from("no quote")],
            &Default::default(),
            &list,
        )
        .await
        .unwrap();
    match refused.wait(Duration::from_secs(30)).await {
        Err(psw_tasks::Error::JobFailed { message, .. }) => {
            assert_eq!(message, "ValueError: no quote");
        }
        other => panic!("expected the Python exception, got {other:?}"),
    }
    assert_eq!(refused.state().await.unwrap(), "FAILURE");
    let _ = celery_worker.kill().await;
}
