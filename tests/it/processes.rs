//! Worker processes started and signalled like an operator (or an orchestrator) would.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use psw_tasks::testing::TestNamespace;
use psw_tasks::{JobId, TaskHandle};
use psw_tasks_tests::count_redis;

use crate::support::{eventually, queue_state, start_worker};

pub(crate) fn spawn_worker(ns: &TestNamespace, envs: &[(&str, &str)]) -> Child {
    spawn(ns, "worker", envs)
}

/// `test-worker <subcommand>` on the test Redis in `ns`'s namespace.
pub(crate) fn spawn(ns: &TestNamespace, subcommand: &str, envs: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .arg(subcommand)
        .env("REDIS_URL", ns.url())
        // Where `it.count_redis` counts: the one test Redis, also for a namespace on a cluster.
        .env("PSW_TEST_REDIS_URL", psw_tasks::testing::redis_url())
        .env("PSW_NAMESPACE", ns.name())
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .expect("start test-worker")
}

pub(crate) fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

pub(crate) fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("worker did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The runs `it.count_redis` counted under `key`, on the one test Redis (where it counts, also
/// for a namespace on a cluster).
pub(crate) fn ledger(key: &str) -> HashMap<String, u32> {
    let client = redis::Client::open(psw_tasks::testing::redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("HGETALL").arg(key).query(&mut conn).unwrap()
}

async fn enqueue_counted(
    ns: &TestNamespace,
    key: &str,
    count: usize,
    sleep_ms: u64,
) -> Vec<TaskHandle<()>> {
    let client = ns.client().await;
    let mut handles = Vec::new();
    for _ in 0..count {
        handles.push(
            count_redis::enqueue(&client, key.to_owned(), sleep_ms)
                .await
                .unwrap(),
        );
    }
    handles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_jobs_in_flight_and_loses_none() {
    let ns = TestNamespace::new("sigterm");
    let key = format!("{{{}}}:ledger", ns.name());
    let handles = enqueue_counted(&ns, &key, 60, 300).await;
    let mut child = spawn_worker(
        &ns,
        &[
            ("PSW_WORKER_CONCURRENCY", "10"),
            ("PSW_SHUTDOWN_GRACE", "20s"),
        ],
    );
    eventually(
        Duration::from_secs(20),
        "the first jobs to finish",
        || async { !ledger(&key).is_empty() },
    )
    .await;
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "worker exited with {status}");

    // What the stopped worker had started, it finished: every job it touched ran once, and
    // nothing is left pending for a lease to expire.
    let done_by_first = ledger(&key);
    assert!(done_by_first.values().all(|&n| n == 1), "{done_by_first:?}");
    assert!(
        done_by_first.len() < 60,
        "stopped before the queue was drained"
    );
    assert_eq!(queue_state(&ns, "default").1, 0, "nothing left pending");

    let client = ns.client().await;
    let worker = start_worker(&client, 10);
    for handle in &handles {
        client
            .handle::<()>(handle.id().clone())
            .wait(Duration::from_secs(30))
            .await
            .unwrap();
    }
    worker.stop().await;
    let runs = ledger(&key);
    assert_eq!(runs.len(), 60, "every job ran");
    assert!(runs.values().all(|&n| n == 1), "none ran twice: {runs:?}");
    assert_eq!(queue_state(&ns, "default"), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cut_off_by_the_grace_period_run_again_elsewhere() {
    let ns = TestNamespace::new("grace");
    let key = format!("{{{}}}:ledger", ns.name());
    let handles = enqueue_counted(&ns, &key, 3, 3_000).await;
    let mut child = spawn_worker(
        &ns,
        &[
            ("PSW_WORKER_CONCURRENCY", "10"),
            ("PSW_SHUTDOWN_GRACE", "300ms"),
            ("PSW_LEASE", "1s"),
        ],
    );
    let ids: Vec<JobId> = handles.iter().map(|h| h.id().clone()).collect();
    let client = ns.client().await;
    eventually(
        Duration::from_secs(20),
        "all three jobs started",
        || async {
            let mut started = 0;
            for id in &ids {
                if client.record(id.as_str()).await.unwrap().is_some() {
                    started += 1;
                }
            }
            started == 3
        },
    )
    .await;
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "worker exited with {status}");
    assert!(ledger(&key).is_empty(), "cut off before finishing");
    assert_eq!(
        queue_state(&ns, "default").1,
        3,
        "left pending, not acknowledged"
    );

    // Another worker takes them over once the lease (1 s) has run out.
    let worker = psw_tasks::Worker::builder(&client)
        .lease(Duration::from_secs(1))
        .build()
        .unwrap();
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    for id in &ids {
        client
            .handle::<()>(id.clone())
            .wait(Duration::from_secs(30))
            .await
            .unwrap();
    }
    assert_eq!(stats.reclaimed(), 3);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let runs = ledger(&key);
    assert_eq!(runs.len(), 3);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    assert_eq!(queue_state(&ns, "default"), (0, 0));
}

pub(crate) fn run_cli(
    ns: &TestNamespace,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args(args)
        .env("REDIS_URL", ns.url())
        // Where `it.count_redis` counts: the one test Redis, also for a namespace on a cluster.
        .env("PSW_TEST_REDIS_URL", psw_tasks::testing::redis_url())
        .env("PSW_NAMESPACE", ns.name())
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run test-worker");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_enqueues_and_reads_results() {
    let ns = TestNamespace::new("cli");
    let (ok, tasks, _) = run_cli(&ns, &["tasks"], &[]);
    assert!(ok);
    let flaky = tasks
        .lines()
        .find(|line| line.starts_with("it.flaky "))
        .unwrap_or_else(|| panic!("it.flaky listed:\n{tasks}"));
    assert!(flaky.contains("exp 200ms..10s"), "{flaky}");
    assert!(tasks.lines().next().unwrap().starts_with("NAME"), "{tasks}");

    let mut worker = spawn_worker(&ns, &[]);
    let (ok, out, err) = run_cli(
        &ns,
        &["enqueue", "it.add", "--args", "[20, 22]", "--wait", "20s"],
        &[],
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let id = lines.next().expect("job id printed").to_owned();
    assert_eq!(lines.next(), Some("42"));

    let (ok, out, err) = run_cli(&ns, &["result", &id], &[]);
    assert!(ok, "{err}");
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["state"], "SUCCESS");
    assert_eq!(record["result"], 42);
    assert_eq!(record["task"], "it.add");

    let (ok, _, err) = run_cli(&ns, &["enqueue", "it.add", "--args", "{\"a\": 1}"], &[]);
    assert!(!ok);
    assert!(
        err.contains("--args") && err.contains("JSON array"),
        "{err}"
    );

    signal(&worker, "TERM");
    assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
}

/// Issue 15: key layout 2 gives each queue a hash tag of its own. A worker that finds jobs
/// waiting in the keys of layout 1 (every key under `{ns}`) says so at start, naming each key
/// and how many wait, rather than silently reading nothing; and it leaves them where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_names_the_jobs_left_in_the_old_key_layout() {
    let ns = TestNamespace::new("layout-1");
    let old_stream = format!("{{{}}}:queue:default", ns.name());
    let old_delayed = format!("{{{}}}:delayed:default", ns.name());
    {
        let mut conn = ns.connection();
        let _: String = redis::cmd("XADD")
            .arg(&old_stream)
            .arg("*")
            .arg("job")
            .arg("left behind")
            .query(&mut *conn)
            .unwrap();
        let _: u64 = redis::cmd("ZADD")
            .arg(&old_delayed)
            .arg(1)
            .arg("a")
            .arg(2)
            .arg("b")
            .query(&mut *conn)
            .unwrap();
    }
    let run = |ns: &TestNamespace| {
        let mut worker = Command::new(env!("CARGO_BIN_EXE_test-worker"))
            .arg("worker")
            .env("REDIS_URL", ns.url())
            .env("PSW_NAMESPACE", ns.name())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let layout = format!("{{{}}}:layout", ns.name());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut conn = ns.connection();
            let stored: Option<String> = redis::cmd("GET").arg(&layout).query(&mut *conn).unwrap();
            if stored.is_some() {
                assert_eq!(stored.as_deref(), Some("2"), "the layout is marked");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the worker never prepared its queues"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(&worker, "TERM");
        assert!(wait_exit(&mut worker, Duration::from_secs(20)).success());
        let mut output = String::new();
        std::io::Read::read_to_string(&mut worker.stderr.take().unwrap(), &mut output).unwrap();
        output
    };
    let output = run(&ns);
    assert!(
        output.contains("key layout 1")
            && output.contains(&format!("{old_stream} (1 jobs)"))
            && output.contains(&format!("{old_delayed} (2 jobs)")),
        "the worker names the old keys and their jobs:\n{output}"
    );
    let mut conn = ns.connection();
    let left: u64 = redis::cmd("XLEN")
        .arg(&old_stream)
        .query(&mut *conn)
        .unwrap();
    assert_eq!(left, 1, "the old jobs are left alone");

    // A namespace with nothing in the old keys hears nothing of them.
    let clean = TestNamespace::new("layout-2");
    let output = run(&clean);
    assert!(!output.contains("key layout 1"), "{output}");
}

#[test]
fn configuration_errors_name_the_variable_and_the_form() {
    let ns = TestNamespace::new("config");
    let (ok, _, err) = run_cli(
        &ns,
        &["worker"],
        &[("REDIS_URL", "amqp://guest:secret@rabbit//")],
    );
    assert!(!ok);
    assert!(
        err.contains("REDIS_URL = \"amqp://***@rabbit//\": expected a redis://"),
        "{err}"
    );
    assert!(
        !err.contains("secret"),
        "the password is not printed: {err}"
    );
    let (ok, _, err) = run_cli(&ns, &["worker"], &[("PSW_WORKER_CONCURRENCY", "lots")]);
    assert!(!ok);
    assert!(
        err.contains("PSW_WORKER_CONCURRENCY = \"lots\": expected a whole number"),
        "{err}"
    );
}
