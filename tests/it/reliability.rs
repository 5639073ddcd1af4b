//! Nothing lost: leases, fencing, poison jobs, bad input and the dead-letter queue, with the
//! faults injected for real (paused and killed processes, raw garbage in the stream).

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, Error, State, Worker};
use psw_tasks_tests::{
    abort_process, add, count_local, count_redis, fails_until, local_runs, open_flag, sleepy,
    whoami,
};
use serde::Serialize;

use crate::processes::{ledger, run_cli, signal, spawn_worker, wait_exit};
use crate::support::{PrivateRedis, RunningWorker, eventually, queue_state, start_worker, xadd};

const WAIT: Duration = Duration::from_secs(20);

fn worker_with(client: &Client, lease: Duration) -> RunningWorker {
    crate::support::start_built(
        Worker::builder(client)
            .concurrency(4)
            .lease(lease)
            .build()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ten_times_its_lease_runs_once_while_its_worker_lives() {
    let ns = TestNamespace::new("long-lease");
    let client = ns.client().await;
    let lease = Duration::from_millis(300);
    let workers: Vec<RunningWorker> = (0..4).map(|_| worker_with(&client, lease)).collect();
    let ledger = ns.name().to_owned();
    let handle = count_local::enqueue(&client, ledger.clone(), 3_000)
        .await
        .unwrap();
    handle.wait(WAIT).await.unwrap();
    assert_eq!(
        local_runs(&ledger).values().copied().collect::<Vec<_>>(),
        [1]
    );
    for worker in &workers {
        assert_eq!(worker.stats.reclaimed(), 0, "never taken over");
        assert_eq!(worker.stats.fenced(), 0);
    }
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_cannot_ack_or_overwrite_the_job_it_lost() {
    paused_worker_is_fenced(TestNamespace::new("fencing")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_cannot_ack_or_overwrite_the_job_it_lost_on_a_redis_cluster() {
    paused_worker_is_fenced(TestNamespace::on_cluster("fencing-cluster")).await;
}

/// SIGSTOP a worker mid-job past its lease: another takes the job over and finishes it; the
/// woken worker's acknowledgement and result are refused.
async fn paused_worker_is_fenced(ns: TestNamespace) {
    let client = ns.client().await;
    let key = format!("{{{}}}:ledger", ns.name());
    let handle = whoami::enqueue(&client, key.clone(), 1_500).await.unwrap();
    let paused = std::process::Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .arg("worker")
        .env("REDIS_URL", ns.url())
        .env("PSW_TEST_REDIS_URL", psw_tasks::testing::redis_url())
        .env("PSW_NAMESPACE", ns.name())
        .env("PSW_LEASE", "1s")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(WAIT, "the job started", || async {
        handle.state().await.unwrap() == State::Started
    })
    .await;
    signal(&paused, "STOP");

    // Another worker takes it over once the lease has run out, and finishes it.
    let reclaimer = worker_with(&client, Duration::from_secs(1));
    assert_eq!(handle.wait(WAIT).await.unwrap(), std::process::id());
    assert_eq!(reclaimer.stats.reclaimed(), 1);

    // The paused worker wakes up, finishes its run, and is refused.
    signal(&paused, "CONT");
    eventually(WAIT, "the paused run to finish", || async {
        ledger(&key).values().sum::<u32>() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = handle.record().await.unwrap().unwrap();
    assert_eq!(
        record.result_as::<u32>().unwrap(),
        Some(std::process::id()),
        "the stored result is the reclaimer's"
    );
    signal(&paused, "TERM");
    let output = wait_for_output(paused);
    assert!(
        output.contains("write refused: another worker took this job over"),
        "the stale write was refused and logged:\n{output}"
    );
    reclaimer.stop().await;
    assert_eq!(queue_state(&ns, "default"), (0, 0));
}

fn wait_for_output(mut child: Child) -> String {
    wait_exit(&mut child, Duration::from_secs(20));
    let mut text = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_200_jobs_in_flight_exits_within_grace_and_loses_none() {
    let ns = TestNamespace::new("sigterm-200");
    let client = ns.client().await;
    let key = format!("{{{}}}:ledger", ns.name());
    let mut handles = Vec::new();
    for _ in 0..200 {
        handles.push(
            count_redis::enqueue(&client, key.clone(), 1_000)
                .await
                .unwrap(),
        );
    }
    let mut worker = spawn_worker(
        &ns,
        &[
            ("PSW_WORKER_CONCURRENCY", "200"),
            ("PSW_WORKER_PREFETCH", "0"),
            ("PSW_SHUTDOWN_GRACE", "3s"),
        ],
    );
    eventually(WAIT, "200 jobs running", || async {
        let mut started = 0;
        for handle in handles.iter().rev().take(5) {
            started += usize::from(handle.record().await.unwrap().is_some());
        }
        started == 5
    })
    .await;
    let stopped_at = Instant::now();
    signal(&worker, "TERM");
    let status = wait_exit(&mut worker, Duration::from_secs(20));
    let took = stopped_at.elapsed();
    assert!(status.success());
    assert!(
        took < Duration::from_secs(4),
        "exited after {took:?}, grace 3 s"
    );
    let runs = ledger(&key);
    assert_eq!(runs.len(), 200, "every job in flight finished");
    assert!(runs.values().all(|&n| n == 1));
    assert_eq!(queue_state(&ns, "default"), (0, 0));
}

/// An envelope as a producer in another language writes it (docs/protocol.md).
#[derive(Serialize)]
struct RawEnvelope<'a> {
    v: u32,
    id: &'a str,
    task: &'a str,
    queue: &'a str,
    #[serde(with = "serde_bytes")]
    args: Vec<u8>,
    created_ms: i64,
}

fn raw_envelope(id: &str, task: &str, args: &impl Serialize) -> Vec<u8> {
    rmp_serde::to_vec_named(&RawEnvelope {
        v: 1,
        id,
        task,
        queue: "default",
        args: rmp_serde::to_vec(args).unwrap(),
        created_ms: 0,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_its_reason_and_the_worker_keeps_serving() {
    let ns = TestNamespace::new("bad-input");
    let mut config = ns.config();
    config.unknown_task_delay = Duration::from_millis(100);
    let client = Client::connect(&config).await.unwrap();
    let worker = start_worker(&client, 4);

    // A producer in another language, following docs/protocol.md, is understood.
    xadd(&ns, &[("job", raw_envelope("raw-ok", "it.add", &(40, 2)))]);
    assert_eq!(client.handle::<i64>("raw-ok").wait(WAIT).await.unwrap(), 42);

    let good = raw_envelope("truncated", "it.add", &(1, 2));
    xadd(&ns, &[("job", b"\xc1 not messagepack at all".to_vec())]);
    xadd(&ns, &[("job", good[..good.len() / 2].to_vec())]);
    xadd(&ns, &[("something", b"else".to_vec())]);
    xadd(
        &ns,
        &[("job", raw_envelope("unknown", "it.no_such_task", &()))],
    );
    xadd(
        &ns,
        &[("job", raw_envelope("bad-args", "it.add", &("forty", 2)))],
    );
    xadd(&ns, &[("job", vec![b'x'; 10 * 1024 * 1024])]);

    let dead = client.dead_letters();
    eventually(WAIT, "six dead letters", || async {
        dead.stats().await.unwrap().len == 6
    })
    .await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for job in dead.list(100).await.unwrap() {
        *reasons.entry(job.reason.to_string()).or_default() += 1;
        match job.reason.as_str() {
            "unknown_task" => {
                assert_eq!(job.job_id.as_deref(), Some("unknown"));
                assert!(job.error.contains("it.no_such_task"), "{}", job.error);
            }
            "bad_args" => {
                assert_eq!(job.task.as_deref(), Some("it.add"));
                assert!(
                    job.error.contains("arguments do not match"),
                    "{}",
                    job.error
                );
                assert_eq!(job.errors.len(), 1);
            }
            "oversized" => {
                assert!(job.error.contains("10485760 bytes"), "{}", job.error);
                assert!(
                    job.truncated,
                    "10 MB are not copied whole into the dead letters"
                );
            }
            _ => {}
        }
    }
    let expected: BTreeMap<String, usize> = [
        ("bad_args", 1),
        ("decode_error", 3),
        ("oversized", 1),
        ("unknown_task", 1),
    ]
    .into_iter()
    .map(|(reason, n)| (reason.to_owned(), n))
    .collect();
    assert_eq!(reasons, expected);
    let bad_args = client
        .handle::<i64>("bad-args")
        .record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        bad_args.state,
        State::Failure,
        "a bad-args job also has its FAILURE record"
    );

    // Still serving.
    assert_eq!(
        add::enqueue(&client, 1, 2)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap(),
        3
    );
    assert_eq!(worker.stats.dead_lettered(), 6);

    // The same from the command line.
    let (ok, listing, err) = run_cli(&ns, &["dlq", "list"], &[]);
    assert!(ok, "{err}");
    assert!(listing.starts_with("6 dead letter(s)\n"), "{listing}");
    assert!(
        listing.contains("unknown_task  default  it.no_such_task  unknown"),
        "{listing}"
    );
    let entry = listing
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (ok, shown, err) = run_cli(&ns, &["dlq", "show", entry], &[]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["entry_id"], entry);
    let (ok, purged, err) = run_cli(&ns, &["dlq", "purge"], &[]);
    assert!(ok, "{err}");
    assert_eq!(purged.trim(), "purged 6 dead letter(s)");
    worker.stop().await;
    assert_eq!(
        queue_state(&ns, "default"),
        (0, 0),
        "every bad entry was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_time_limit_is_retried_then_dead_lettered_as_timed_out() {
    let ns = TestNamespace::new("timed-out");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    let slow = sleepy::enqueue(&client, 5_000).await.unwrap();
    assert!(matches!(
        slow.wait(WAIT).await,
        Err(Error::JobFailed { .. })
    ));
    let dead = client.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "timed_out");
    assert_eq!(dead[0].job_id.as_deref(), Some(slow.id().as_str()));
    let kinds: Vec<&str> = dead[0].errors.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["timeout", "timeout"],
        "both attempts' errors are kept"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_job_runs_again_and_completes() {
    let ns = TestNamespace::new("replay");
    let client = ns.client().await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let worker = crate::support::start_built(
        Worker::builder(&client)
            .on_dead(move |job| {
                let seen_tx = seen_tx.clone();
                async move {
                    let _ = seen_tx.send(job);
                }
            })
            .build()
            .unwrap(),
    );
    let flag = ns.name().to_owned();
    let handle = fails_until::enqueue(&client, flag.clone()).await.unwrap();
    assert!(handle.wait(WAIT).await.is_err());
    let hooked = tokio::time::timeout(WAIT, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hooked.reason, "retries_exhausted");
    assert_eq!(hooked.job_id.as_deref(), Some(handle.id().as_str()));

    let dead = client.dead_letters();
    let listed = dead.list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].entry_id, hooked.entry_id,
        "the hook saw the stored dead letter"
    );
    open_flag(&flag);
    let replayed = dead.replay(&listed[0].entry_id).await.unwrap();
    assert_eq!(&replayed, handle.id(), "the same job, run again");
    assert!(
        matches!(
            handle.state().await.unwrap(),
            State::Pending | State::Started | State::Success
        ),
        "the old FAILURE is gone"
    );
    assert_eq!(handle.wait(WAIT).await.unwrap(), format!("{flag} is open"));
    assert_eq!(dead.stats().await.unwrap().len, 0);
    assert!(matches!(
        dead.replay(&listed[0].entry_id).await,
        Err(Error::NotDeadLettered(_))
    ));
    let record = handle.record().await.unwrap().unwrap();
    assert_eq!(
        record.errors.len(),
        1,
        "the first run's error is still in the record"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_every_time_is_dead_lettered_as_poisoned() {
    let ns = TestNamespace::new("poison");
    let client = ns.client().await;
    let key = format!("{{{}}}:ledger", ns.name());
    let poison = abort_process::enqueue(&client).await.unwrap();
    let mut others = Vec::new();
    for _ in 0..1_000 {
        others.push(count_redis::enqueue(&client, key.clone(), 0).await.unwrap());
    }
    // A supervisor, as systemd or Kubernetes would be: restart the worker whenever it dies.
    let envs = [
        ("PSW_LEASE", "1s"),
        ("PSW_MAX_DELIVERIES", "3"),
        ("PSW_WORKER_CONCURRENCY", "1"),
        ("PSW_WORKER_PREFETCH", "0"),
    ];
    let mut worker = spawn_worker(&ns, &envs);
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.dead_letters().stats().await.unwrap().len == 0 {
        assert!(Instant::now() < deadline, "not dead-lettered within 60 s");
        if let Some(status) = worker.try_wait().unwrap() {
            assert!(!status.success());
            crashes += 1;
            worker = spawn_worker(&ns, &envs);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(crashes, 3, "one crash per allowed delivery");
    let dead = client.dead_letters().list(10).await.unwrap();
    assert_eq!(dead[0].reason, "poisoned");
    assert_eq!(dead[0].job_id.as_deref(), Some(poison.id().as_str()));
    eventually(Duration::from_secs(60), "the 1,000 other jobs", || async {
        ledger(&key).len() == 1_000
    })
    .await;
    signal(&worker, "TERM");
    assert!(wait_exit(&mut worker, WAIT).success());
    assert_eq!(queue_state(&ns, "default"), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_a_redis_crash_and_an_empty_restart() {
    let dir = std::env::temp_dir().join(format!(
        "psw-aof-{}-{:x}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_string_lossy().into_owned();
    // Every write is on disk before Redis answers: what a producer saw enqueued survives.
    let durable = [
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        dir_arg.as_str(),
    ];
    let mut redis = PrivateRedis::start(&durable, false);
    let port = redis.port;
    let config = psw_tasks::Config::redis(format!("redis://127.0.0.1:{port}"));
    let client = Client::connect(&config).await.unwrap();
    let worker = crate::support::start_built(
        Worker::builder(&client)
            .concurrency(10)
            .lease(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    // The ledger lives on the shared test Redis, which does not crash.
    let key = format!("psw-test-ledger-{port}-{:x}", fastrand_u64());
    let mut handles = Vec::new();
    for _ in 0..300 {
        handles.push(
            count_redis::enqueue(&client, key.clone(), 20)
                .await
                .unwrap(),
        );
    }
    let shared = TestNamespace::new("crash-ledger");
    let ledger_of = || {
        let client = redis::Client::open(shared.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        redis::cmd("HGETALL")
            .arg(&key)
            .query::<std::collections::HashMap<String, u32>>(&mut conn)
            .unwrap()
    };
    eventually(WAIT, "some jobs done", || async { ledger_of().len() >= 50 }).await;
    redis.kill();

    // While Redis is down, enqueueing fails with an error, in bounded time, and nobody panics.
    let started = Instant::now();
    let refused = add::enqueue(&client, 1, 1).await;
    assert!(refused.is_err(), "enqueue without Redis must fail");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let _redis = PrivateRedis::start_on(port, &durable, false);
    eventually(
        Duration::from_secs(60),
        "every job enqueued before the crash",
        || async { ledger_of().len() == 300 },
    )
    .await;
    let duplicates: u32 = ledger_of().values().map(|n| n - 1).sum();
    assert!(
        duplicates <= 20,
        "at most the jobs in flight at the crash ran twice: {duplicates}"
    );
    drop(_redis);

    // Back empty (its data lost): the groups are made again and work goes on.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty_arg = empty.to_string_lossy().into_owned();
    let _redis = PrivateRedis::start_on(port, &["--dir", empty_arg.as_str()], false);
    let mut sum = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sum.is_none() && Instant::now() < deadline {
        if let Ok(handle) = add::enqueue(&client, 20, 22).await {
            sum = handle.wait(Duration::from_secs(10)).await.ok();
        }
    }
    assert_eq!(sum, Some(42), "a job after the empty restart ran");
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let client = redis::Client::open(shared.url()).unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query(&mut client.get_connection().unwrap())
        .unwrap();
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_every_two_seconds_loses_nothing() {
    kill_storm(TestNamespace::new("chaos")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_every_two_seconds_loses_nothing_on_a_redis_cluster() {
    kill_storm(TestNamespace::on_cluster("chaos-cluster")).await;
}

/// Two workers, one of them killed with SIGKILL every two seconds for 30 s and started again,
/// drain 10,000 jobs: each runs, at most a bounded few twice, nothing stays pending.
async fn kill_storm(ns: TestNamespace) {
    let client = ns.client().await;
    let key = format!("{{{}}}:ledger", ns.name());
    let jobs = 10_000;
    let args = (0..jobs).map(|_| (key.clone(), 50u64));
    let handles = client
        .enqueue_many_by_name::<(), _>("it.count_redis", args, psw_tasks::EnqueueOptions::new())
        .await
        .unwrap();
    assert_eq!(handles.len(), jobs);
    let envs = [
        ("PSW_LEASE", "1s"),
        ("PSW_WORKER_CONCURRENCY", "10"),
        ("PSW_WORKER_PREFETCH", "10"),
        ("PSW_MAX_DELIVERIES", "100"),
    ];
    let in_flight_per_worker = 20;
    let mut steady = spawn_worker(&ns, &envs);
    let mut victim = spawn_worker(&ns, &envs);
    let mut kills = 0;
    let chaos_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_secs(2)).await;
        signal(&victim, "KILL");
        let _ = victim.wait();
        kills += 1;
        victim = spawn_worker(&ns, &envs);
    }
    eventually(Duration::from_secs(120), "every job ran", || async {
        ledger(&key).len() == jobs
    })
    .await;
    let runs = ledger(&key);
    let duplicates: u32 = runs.values().map(|n| n - 1).sum();
    assert!(
        duplicates as usize <= kills * in_flight_per_worker,
        "{duplicates} duplicates after {kills} kills"
    );
    for worker in [&mut steady, &mut victim] {
        signal(worker, "TERM");
        assert!(wait_exit(worker, WAIT).success());
    }
    assert_eq!(
        queue_state(&ns, "default"),
        (0, 0),
        "nothing pending, nothing left"
    );
    assert_eq!(client.dead_letters().stats().await.unwrap().len, 0);
    eprintln!(
        "chaos on {}: {jobs} jobs, {kills} kills, {duplicates} duplicates, 0 lost",
        ns.url()
    );
}

/// With Redis gone the writer can store nothing and its queue fills; giving back hundreds of
/// prefetched deliveries then waits for room. Shutdown must end all the same: the grace period
/// bounds the give-backs as it bounds running jobs, and what was not stored stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_while_redis_is_away_with_hundreds_prefetched() {
    let mut redis = PrivateRedis::start(&[], false);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let client = Client::connect(&psw_tasks::Config::redis(url.clone()))
        .await
        .unwrap();
    let ledger = format!("away-{}", redis.port);
    let jobs = 600;
    for _ in 0..jobs {
        count_local::enqueue(&client, ledger.clone(), 60_000)
            .await
            .unwrap();
    }
    let worker = Worker::builder(&client)
        .concurrency(2)
        .prefetch(jobs)
        .shutdown_grace(Duration::from_secs(1))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let raw = redis::Client::open(url).unwrap();
    eventually(WAIT, "every job fetched", || async {
        let mut conn = raw.get_multiplexed_async_connection().await.unwrap();
        // NOGROUP until the worker has prepared the queue.
        let summary = redis::cmd("XPENDING")
            .arg("{psw:default}:queue:default")
            .arg("workers")
            .query_async::<redis::Value>(&mut conn)
            .await;
        matches!(summary, Ok(redis::Value::Array(parts)) if parts.first() == Some(&redis::Value::Int(jobs as i64)))
    })
    .await;
    redis.kill();

    let _ = stop.send(());
    // Grace (1 s), the writer's flush limit (10 s), then two last calls of 3 s at most.
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(30), running).await;
    assert!(
        stopped.is_ok(),
        "the worker did not stop within 30 s of its shutdown with Redis away"
    );
    eprintln!(
        "stopped {:?} after its shutdown with Redis away",
        started.elapsed()
    );
    stopped.unwrap().unwrap().unwrap();
    assert!(
        local_runs(&ledger).is_empty(),
        "the two running jobs were cut off, none finished"
    );
}
