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
    config.celery_track_started = true;
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
    assert_eq!(seen["started"]["result"], "slept tracked");
    assert!(
        seen["started"]["states"]
            .as_array()
            .unwrap()
            .contains(&Value::from("STARTED")),
        "STARTED recorded while it ran: {seen}"
    );
    assert_eq!(seen["time_limit"]["type"], "TimeoutError", "{seen}");
    assert!(
        seen["time_limit"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 300ms"),
        "{seen}"
    );
    assert_eq!(seen["chain"]["first"], "AAPL.US force=true", "{seen}");
    assert_eq!(seen["chain"]["result"], "AAPL.US FORCE=TRUE!", "{seen}");
    assert_eq!(seen["link"]["parent"], "pong linked", "{seen}");
    assert_eq!(seen["link"]["result"], "PONG LINKED!", "{seen}");
    assert_eq!(
        seen["link_error"]["result"],
        format!("noted {}", seen["link_error"]["failed"].as_str().unwrap()),
        "{seen}"
    );
    assert_eq!(seen["group"]["type"], "RuntimeError", "{seen}");
    assert!(
        seen["group"]["message"]
            .as_str()
            .unwrap()
            .contains("Celery group"),
        "{seen}"
    );

    // The failures are dead letters of ours too.
    let letters = client.dead_letters().list(10).await.unwrap();
    let tasks: Vec<&str> = letters
        .iter()
        .filter_map(|letter| letter.task.as_deref())
        .collect();
    assert!(tasks.contains(&"it.celery_fails"), "{tasks:?}");
    assert!(tasks.contains(&"it.celery_quote"), "{tasks:?}");
    // Each keeps the Celery message it was made from, to give back to Celery.
    let failed = letters
        .iter()
        .find(|letter| letter.task.as_deref() == Some("it.celery_fails"))
        .unwrap();
    let kept: Value = serde_json::from_str(&failed.celery_message().unwrap()).unwrap();
    assert_eq!(kept["headers"]["task"], "it.celery_fails");
    assert_eq!(
        Some(kept["headers"]["id"].as_str().unwrap()),
        failed.job_id.as_deref()
    );
    let canvas: Vec<_> = letters
        .iter()
        .filter(|letter| letter.reason == psw_tasks::DeadReason::UnsupportedCanvas)
        .collect();
    assert_eq!(canvas.len(), 2, "both members of the group: {letters:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_messages_not_run_are_dead_letters_with_their_reason_and_bytes() {
    let ns = TestNamespace::new("celery-refused");
    let list = format!("celery-{}", ns.name());
    let mut config = ns.config();
    config.celery_result_backend = Some(ns.url().to_owned());
    config.celery_unknown_tasks = psw_tasks::CeleryUnknownTasks::DeadLetter;
    let client = Client::connect(&config).await.unwrap();
    let mut redis = redis::Client::open(ns.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let garbage = b"{\"headers\": {\"task\": \"x\"}, \"body\": 17}\xff".to_vec();
    let _: () = redis::cmd("LPUSH")
        .arg(&list)
        .arg(&garbage)
        .query_async(&mut redis)
        .await
        .unwrap();
    let celery = psw_tasks::CeleryClient::connect(&config).await.unwrap();
    let unknown = celery
        .send_task(
            "legacy.nobody_here",
            &[Value::from(1)],
            &Default::default(),
            &list,
        )
        .await
        .unwrap();
    let worker = start_built(
        Worker::builder(&client)
            .queues([CELERY_QUEUE])
            .celery_queues([list.as_str()])
            .build()
            .unwrap(),
    );
    // The caller of the unknown task reads a FAILURE naming it, as from a Celery worker.
    match unknown.wait(Duration::from_secs(20)).await {
        Err(psw_tasks::Error::JobFailed { message, .. }) => {
            assert!(message.contains("legacy.nobody_here"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let letters = client.dead_letters().list(10).await.unwrap();
        if letters.len() >= 2 || std::time::Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 2, "{letters:?}");
    let unreadable = letters
        .iter()
        .find(|letter| letter.reason == psw_tasks::DeadReason::DecodeError)
        .expect("the unreadable message is a dead letter");
    assert!(
        unreadable.error.contains("not a JSON object"),
        "{}",
        unreadable.error
    );
    assert!(
        unreadable.payload_size > garbage.len(),
        "its bytes are kept whole"
    );
    let known = letters
        .iter()
        .find(|letter| letter.reason == psw_tasks::DeadReason::UnknownTask)
        .expect("the unknown task's message is a dead letter");
    assert_eq!(known.job_id.as_deref(), Some(unknown.id()));
    let kept: Value = serde_json::from_str(&known.celery_message().unwrap()).unwrap();
    assert_eq!(kept["headers"]["task"], "legacy.nobody_here");
    // Nothing is left on the Celery list or taken.
    let waiting: i64 = redis::cmd("LLEN")
        .arg(&list)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(waiting, 0);
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
    // apply_async's options, honoured by the Celery worker: a countdown, an expiry.
    let sent = std::time::Instant::now();
    let later = celery
        .send_task_with(
            "legacy.multiply",
            &[Value::from(2), Value::from(3)],
            &Default::default(),
            &psw_tasks::CeleryOptions::new(&list).countdown(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert_eq!(later.wait(Duration::from_secs(30)).await.unwrap(), 6);
    assert!(
        sent.elapsed() >= Duration::from_millis(1900),
        "run before its countdown: {:?}",
        sent.elapsed()
    );
    let expired = celery
        .send_task_with(
            "legacy.multiply",
            &[Value::from(2), Value::from(3)],
            &Default::default(),
            &psw_tasks::CeleryOptions::new(&list).expires(Duration::ZERO),
        )
        .await
        .unwrap();
    assert!(expired.wait(Duration::from_secs(30)).await.is_err());
    assert_eq!(expired.state().await.unwrap(), "REVOKED");
    let _ = celery_worker.kill().await;
}
