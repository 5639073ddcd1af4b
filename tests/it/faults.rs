//! Nothing lost, round two: faults found by trying the system from outside, each with the test
//! that showed it (`docs/reliability.md` has a row for each).

use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{DeadReason, Error, FailureKind, State};
use psw_tasks::{EnqueueOptions, Worker};
use psw_tasks_tests::{add, bytes, fails_big, flaky, refuses, reports_progress, whoami};

use crate::support::{LosingProxy, eventually, start_built, start_worker, xadd};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_all_dead_letters_ends_while_the_replayed_jobs_die_again() {
    let ns = TestNamespace::new("replay-all");
    let client = ns.client().await;
    let worker = start_worker(&client, 8);
    // Arguments that do not fit `it.add(i64, i64)`: each job is dead-lettered at once.
    let handles = client
        .enqueue_many_by_name::<i64, _>(
            "it.add",
            (0..300).map(|i| (format!("x{i}"),)),
            EnqueueOptions::new(),
        )
        .await
        .unwrap();
    // And one that cannot be replayed: over the size limit and over the dead-letter cap.
    xadd(&ns, &[("job", vec![b'x'; 2 * 1024 * 1024])]);
    let dead = client.dead_letters();
    eventually(WAIT, "301 dead letters", || async {
        dead.stats().await.unwrap().len == 301
    })
    .await;

    let all = |task| {
        let dead = dead.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), dead.replay_all(task))
                .await
                .expect("a replay of all ends, though every replayed job dies again")
                .unwrap()
        }
    };
    let report = all(Some("it.add")).await;
    assert_eq!(
        (report.replayed, report.truncated),
        (300, 0),
        "each dead letter of the task that existed, once"
    );
    eventually(WAIT, "the replayed jobs died again", || async {
        dead.stats().await.unwrap().len == 301
    })
    .await;
    let report = all(None).await;
    assert_eq!(
        (report.replayed, report.truncated, report.unreadable),
        (300, 1, 0),
        "every dead letter that existed, once; the cut one is left and counted"
    );
    eventually(WAIT, "the replayed jobs died again", || async {
        dead.stats().await.unwrap().len == 301
    })
    .await;
    for handle in &handles {
        let record = handle.record().await.unwrap().unwrap();
        assert_eq!(
            record.errors.len(),
            3,
            "replayed twice: {:?}",
            record.errors
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_fences_its_own_writes_and_wedges_nothing() {
    let ns = TestNamespace::new("deleted-queue");
    let client = ns.client().await;
    // The README's advice for long jobs: one at a time, nothing fetched ahead.
    let worker = start_built(
        Worker::builder(&client)
            .concurrency(1)
            .prefetch(0)
            .build()
            .unwrap(),
    );
    let long = reports_progress::enqueue(&client, 30).await.unwrap();
    eventually(WAIT, "the long job reports progress", || async {
        long.record()
            .await
            .unwrap()
            .is_some_and(|r| r.progress.is_some())
    })
    .await;
    // An operator deletes the queue under it (or Redis restarts empty).
    let redis = redis::Client::open(ns.url()).unwrap();
    let mut conn = redis.get_connection().unwrap();
    let _: () = redis::cmd("DEL")
        .arg(ns.stream_key("default"))
        .query(&mut conn)
        .unwrap();
    let next = add::enqueue(&client, 40, 2).await.unwrap();
    assert_eq!(
        next.wait(Duration::from_secs(10)).await.unwrap(),
        42,
        "the next job runs within seconds: the worker is not wedged"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_redis_refuses_fails_its_job_and_blocks_nothing() {
    let ns = TestNamespace::new("refused-write");
    let client = ns.client().await;
    // The queue's delayed set is a string (a key collision, an operator's mistake): Redis
    // refuses the ZADD of every retry there with WRONGTYPE.
    let redis = redis::Client::open(ns.url()).unwrap();
    let mut conn = redis.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(ns.delayed_key("default"))
        .arg("not a sorted set")
        .query(&mut conn)
        .unwrap();
    let worker = start_worker(&client, 2);
    let failing = flaky::enqueue(&client).await.unwrap();
    let err = failing.wait(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::JobFailed { message, .. } if message.contains("WRONGTYPE")),
        "failed for good, saying why: {err}"
    );
    let record = failing.record().await.unwrap().unwrap();
    assert_eq!(record.state, State::Failure);
    assert_eq!(
        record.errors.last().map(|error| error.kind),
        Some(FailureKind::StoreFailed)
    );
    let dead = client.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, DeadReason::StoreFailed);
    assert_eq!(dead[0].job_id.as_deref(), Some(failing.id().as_str()));
    // The writer goes on: the next job's outcome is stored.
    let next = add::enqueue(&client, 1, 2).await.unwrap();
    assert_eq!(next.wait(WAIT).await.unwrap(), 3);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_fails_its_job_as_oversized_result() {
    let ns = TestNamespace::new("big-result");
    let mut config = ns.config();
    config.max_result_size = Some(16 * 1024);
    let client = psw_tasks::Client::connect(&config).await.unwrap();
    let worker = start_worker(&client, 2);
    let small = bytes::enqueue(&client, 1024).await.unwrap();
    assert_eq!(small.wait(WAIT).await.unwrap().len(), 1024);
    let big = bytes::enqueue(&client, 64 * 1024).await.unwrap();
    let err = big.wait(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::JobFailed { message, .. } if message.contains("PSW_MAX_RESULT_SIZE")),
        "{err}"
    );
    let record = big.record().await.unwrap().unwrap();
    assert_eq!(record.errors[0].kind, FailureKind::OversizedResult);
    assert!(record.result.is_none());
    let dead = client.dead_letters().list(10).await.unwrap();
    assert_eq!(dead[0].reason, DeadReason::OversizedResult);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_near_the_size_limit_keeps_all_its_retries() {
    let ns = TestNamespace::new("big-retry");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    // 510 KiB of arguments under the 512 KiB limit, and a 4 KiB error on every attempt.
    let job = fails_big::enqueue(&client, vec![7; 510 * 1024])
        .await
        .unwrap();
    assert!(job.wait(WAIT).await.is_err());
    let dead = client.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].reason,
        DeadReason::RetriesExhausted,
        "{}",
        dead[0].error
    );
    let record = job.record().await.unwrap().unwrap();
    assert_eq!(record.attempt, 3, "all four attempts ran");

    // A replay carries the history back beside the arguments, shrunk to fit as a retry's
    // is; before, the replayed entry was over the limit and dead-lettered as oversized.
    let first = dead[0].entry_id.clone();
    client.dead_letters().replay(&first).await.unwrap();
    let letters = client.dead_letters();
    eventually(WAIT, "the replayed job ran and died again", || async {
        let dead = letters.list(10).await.unwrap();
        dead.len() == 1 && dead[0].entry_id != first
    })
    .await;
    let again = letters.list(10).await.unwrap();
    assert_eq!(
        again[0].reason,
        DeadReason::RetriesExhausted,
        "{}",
        again[0].error
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_keeps_to_its_byte_budget() {
    let ns = TestNamespace::new("dlq-bytes");
    let client = ns.client().await;
    let worker = start_worker(&client, 8);
    // 2,000 entries of 600 KiB, each over the size limit: 1.2 GB of dead letters offered.
    let redis = redis::Client::open(ns.url()).unwrap();
    let mut conn = redis.get_connection().unwrap();
    let stream = ns.stream_key("default");
    let entry = vec![b'x'; 600 * 1024];
    for _ in 0..20 {
        let mut pipe = redis::pipe();
        for _ in 0..100 {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("job")
                .arg(entry.as_slice())
                .ignore();
        }
        let _: () = pipe.query(&mut conn).unwrap();
    }
    let dead = client.dead_letters();
    eventually(
        Duration::from_secs(120),
        "2,000 dead letters added",
        || async { dead.stats().await.unwrap().added == 2_000 },
    )
    .await;
    let stats = dead.stats().await.unwrap();
    let memory: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(format!("{{{}}}:dead", ns.name()))
        .arg("SAMPLES")
        .arg(0)
        .query(&mut conn)
        .unwrap();
    assert!(
        memory <= 256 * 1024 * 1024,
        "the stream takes {memory} bytes, over the 256 MiB budget ({stats:?})"
    );
    assert!(
        stats.len > 100,
        "the budget holds hundreds of them: {stats:?}"
    );
    assert_eq!(
        stats.trimmed,
        2_000 - stats.len,
        "every one trimmed is counted"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_settle_reply_is_not_taken_for_fencing_and_the_alert_goes_out_once() {
    let ns = TestNamespace::new("lost-reply");
    let upstream = ns.url().trim_start_matches("redis://").to_owned();
    // The reply to the settle script that stores the job's dead letter is lost.
    let proxy = LosingProxy::start(upstream, b"permanent_error").await;
    let mut config = ns.config();
    config.redis_url = Some(format!("redis://127.0.0.1:{}", proxy.port));
    let client = psw_tasks::Client::connect(&config).await.unwrap();
    let (hooked_tx, mut hooked) = tokio::sync::mpsc::unbounded_channel();
    let worker = start_built(
        Worker::builder(&client)
            .on_dead(move |job| {
                let hooked_tx = hooked_tx.clone();
                async move {
                    let _ = hooked_tx.send(job);
                }
            })
            .build()
            .unwrap(),
    );
    let stats = worker.stats.clone();
    let job = refuses::enqueue(&client, "no such account".to_owned())
        .await
        .unwrap();
    assert!(job.wait(WAIT).await.is_err());
    let letter = tokio::time::timeout(WAIT, hooked.recv())
        .await
        .expect("the dead-letter hook runs, though the first reply was lost")
        .unwrap();
    assert!(proxy.has_lost(), "the proxy lost the settle's reply");
    assert_eq!(letter.job_id.as_deref(), Some(job.id().as_str()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hooked.try_recv().is_err(), "once");
    assert_eq!(stats.fenced(), 0, "its own settle is not another worker's");
    assert_eq!(client.dead_letters().stats().await.unwrap().len, 1);
    worker.stop().await;
}

/// 12.7: a malformed envelope's reason names what did not fit, never the value found there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_envelope_is_dead_lettered_without_the_value_it_held() {
    let ns = TestNamespace::new("malformed-secret");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    // A producer's envelope with a token where the headers' map goes.
    let envelope = rmp_serde::to_vec_named(&serde_json::json!({
        "v": 1, "id": "0193a0c2-7f3a-7000-8000-000000000001", "task": "it.add",
        "queue": "default", "args": [], "created_ms": 1, "headers": "sk_live_SECRET_e1",
    }))
    .unwrap();
    xadd(&ns, &[("job", envelope)]);
    let dead = client.dead_letters();
    eventually(WAIT, "a dead letter", || async {
        dead.stats().await.unwrap().len == 1
    })
    .await;
    let letter = dead.list(1).await.unwrap().remove(0);
    assert_eq!(letter.reason, DeadReason::DecodeError);
    assert!(letter.error.contains("expected a map"), "{}", letter.error);
    assert!(!letter.error.contains("SECRET"), "{}", letter.error);
    worker.stop().await;
}

/// 12.7: `dlq list` prints what producers and tasks wrote with its control characters escaped,
/// so that a dead letter cannot forge a line or drive the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_escapes_control_characters() {
    let ns = TestNamespace::new("dlq-escape");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    refuses::enqueue(&client, "boom\u{1b}[2J\rFORGED 0-0 ok\u{7}".to_owned())
        .await
        .unwrap();
    let dead = client.dead_letters();
    eventually(WAIT, "a dead letter", || async {
        dead.stats().await.unwrap().len == 1
    })
    .await;
    worker.stop().await;
    let (ok, out, err) = crate::processes::run_cli(&ns, &["dlq", "list"], &[]);
    assert!(ok, "{err}");
    assert!(
        !out.contains(['\u{1b}', '\r', '\u{7}']),
        "raw control characters printed: {out:?}"
    );
    assert!(
        out.contains("boom\\u{1b}[2J\\rFORGED 0-0 ok\\u{7}"),
        "the message, escaped: {out}"
    );
}

/// 12.8: a worker on four queues holds at most concurrency + prefetch deliveries in all, as
/// Redis sees it (XPENDING of the four streams, read in one MULTI so that the sum is of one
/// moment); COUNT alone applies per stream and let it hold four times that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_four_queues_never_holds_more_than_its_bound() {
    let ns = TestNamespace::new("bound");
    let client = ns.client().await;
    let queues: Vec<String> = (1..=4).map(|n| format!("q{n}")).collect();
    let ledger = format!("{{{}}}:ledger", ns.name());
    for queue in &queues {
        let jobs = (0..100).map(|_| (ledger.clone(), 150u64));
        client
            .enqueue_many_by_name::<(), _>(
                "it.count_redis",
                jobs,
                EnqueueOptions::new().queue(queue.as_str()),
            )
            .await
            .unwrap();
    }
    let worker = start_built(
        Worker::builder(&client)
            .queues(queues.clone())
            .concurrency(2)
            .prefetch(2)
            .build()
            .unwrap(),
    );
    let redis = redis::Client::open(ns.url()).unwrap();
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for queue in &queues {
        pipe.cmd("XPENDING")
            .arg(ns.stream_key(queue))
            .arg("workers");
    }
    // Entries pending in the four groups, or `None` until the worker has made them.
    let held_now = |mut conn: redis::aio::MultiplexedConnection| {
        let pipe = pipe.clone();
        async move {
            let summaries: Vec<redis::Value> = pipe.query_async(&mut conn).await.ok()?;
            Some(
                summaries
                    .iter()
                    .map(|summary| match summary {
                        redis::Value::Array(parts) => match parts.first() {
                            Some(redis::Value::Int(n)) => *n as u64,
                            _ => 0,
                        },
                        _ => 0,
                    })
                    .sum::<u64>(),
            )
        }
    };
    eventually(WAIT, "the worker started", || async {
        held_now(conn.clone()).await.is_some()
    })
    .await;
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let held = held_now(conn.clone()).await.expect("the groups exist");
        assert!(
            held <= 4,
            "the worker holds {held} deliveries; its bound is 2 + 2"
        );
        most = most.max(held);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most >= 3, "the worker was busy: at most {most} held");
    worker.stop().await;
}

/// 12.8: a delivery fetched before the worker stood still past its lease is checked before it
/// starts; another worker took it over and ran it, so it is not run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_job_lost_during_a_pause_is_not_started() {
    use std::process::Stdio;

    use crate::processes::{ledger, signal, wait_exit};

    let ns = TestNamespace::new("prefetch-lost");
    let client = ns.client().await;
    let long = format!("{{{}}}:long", ns.name());
    let short = format!("{{{}}}:short", ns.name());
    let running = whoami::enqueue(&client, long.clone(), 2_000).await.unwrap();
    let waiting = whoami::enqueue(&client, short.clone(), 0).await.unwrap();
    // One runner and one delivery prefetched: the short job waits behind the long one.
    let mut paused = std::process::Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .arg("worker")
        .env("REDIS_URL", ns.url())
        .env("PSW_NAMESPACE", ns.name())
        .env("PSW_LEASE", "1s")
        .env("PSW_WORKER_CONCURRENCY", "1")
        .env("PSW_WORKER_PREFETCH", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        WAIT,
        "the long job started, the short one fetched",
        || async {
            running.state().await.unwrap() == State::Started
                && crate::support::queue_state(&ns, "default").1 == 2
        },
    )
    .await;
    signal(&paused, "STOP");

    // Another worker takes both over once their lease has run out, and runs them.
    let reclaimer = start_built(
        Worker::builder(&client)
            .concurrency(2)
            .lease(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    assert_eq!(waiting.wait(WAIT).await.unwrap(), std::process::id());
    assert_eq!(running.wait(WAIT).await.unwrap(), std::process::id());

    // The paused worker wakes: its long run ends (and is refused); the short job it fetched
    // long ago must not run again.
    signal(&paused, "CONT");
    eventually(WAIT, "the paused run of the long job to end", || async {
        ledger(&long).values().sum::<u32>() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        ledger(&short).values().sum::<u32>(),
        1,
        "the short job ran once"
    );
    signal(&paused, "TERM");
    wait_exit(&mut paused, Duration::from_secs(20));
    let mut output = String::new();
    std::io::Read::read_to_string(&mut paused.stderr.take().unwrap(), &mut output).unwrap();
    assert!(
        output.contains("lost its lease while it waited"),
        "the skip was logged:\n{output}"
    );
    reclaimer.stop().await;
}

/// 12.9: an enqueue with a fixed job id is idempotent. The reply of the first is lost, the
/// caller retries, and so does another producer later: one job runs, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_with_a_fixed_id_retried_after_a_lost_reply_adds_one_job() {
    use psw_tasks_tests::count_redis;

    let ns = TestNamespace::new("idempotent");
    let upstream = ns.url().trim_start_matches("redis://").to_owned();
    let proxy = LosingProxy::start(upstream, b"invoice-2026-12-01").await;
    let mut config = ns.config();
    config.redis_url = Some(format!("redis://127.0.0.1:{}", proxy.port));
    let client = psw_tasks::Client::connect(&config).await.unwrap();
    let ledger = format!("{{{}}}:ledger", ns.name());
    let enqueue = || {
        count_redis::enqueue_with(
            &client,
            EnqueueOptions::new().job_id("invoice-2026-12-01"),
            ledger.clone(),
            0,
        )
    };
    let first = enqueue().await;
    assert!(first.is_err(), "the proxy lost the reply: {first:?}");
    assert!(proxy.has_lost());
    let handle = enqueue().await.expect("the retry goes through");
    assert_eq!(handle.id().as_str(), "invoice-2026-12-01");
    let mut conn = redis::Client::open(ns.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let queued: u64 = redis::cmd("XLEN")
        .arg(ns.stream_key("default"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(queued, 1, "one job queued");

    let worker = start_worker(&client, 2);
    handle.wait(WAIT).await.unwrap();
    // Its record is kept: a later enqueue of the id adds nothing either.
    let again = enqueue().await.unwrap();
    assert_eq!(again.id(), handle.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;
    let runs = crate::processes::ledger(&ledger);
    assert_eq!(runs.values().sum::<u32>(), 1, "one run: {runs:?}");
}

/// 12.9: a lease out of range is a configuration error naming `PSW_LEASE`, and one set by hand
/// in `Config` is kept in range; `2ns` panicked the worker (a zero renewal interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_out_of_range_is_refused_by_name_and_never_panics() {
    let ns = TestNamespace::new("lease-range");
    let (ok, _, err) = crate::processes::run_cli(&ns, &["worker"], &[("PSW_LEASE", "2ns")]);
    assert!(!ok, "a worker with a 2 ns lease does not start");
    assert!(
        err.contains("PSW_LEASE") && err.contains("from 300ms to 1h"),
        "the error names the variable and the range:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let mut config = ns.config();
    config.lease = Duration::from_nanos(2);
    let client = psw_tasks::Client::connect(&config).await.unwrap();
    let worker = start_worker(&client, 1);
    let sum = add::enqueue(&client, 2, 3).await.unwrap();
    assert_eq!(sum.wait(WAIT).await.unwrap(), 5);
    worker.stop().await;
}

/// Redis at `maxmemory` (noeviction) when jobs finish: the outcomes wait until memory is
/// freed and are then stored as they were, not turned into failures. Before, a batch with a
/// bare acknowledgement in it (whose XACK let the script go on writing) reported the record
/// writes as refused, and each such job was recorded FAILURE (`store_failed`) and
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_refused_while_redis_is_out_of_memory_are_stored_once_it_can() {
    use psw_tasks::{Client, Config};
    use psw_tasks_tests::{gate, gated, gated_quiet};

    let redis = crate::support::PrivateRedis::start(
        &["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"],
        false,
    );
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let client = Client::connect(&Config::redis(url.clone())).await.unwrap();
    let worker = start_worker(&client, 60);
    let gate_name = "out-of-memory".to_owned();
    // Each kept job ends at the same moment as three that keep nothing, so that the writer's
    // batches mix record writes with bare acknowledgements.
    let mut kept = Vec::new();
    for i in 0..15 {
        let sleep_ms = 100 + 20 * i;
        kept.push(
            gated::enqueue(&client, gate_name.clone(), sleep_ms)
                .await
                .unwrap(),
        );
        for _ in 0..3 {
            gated_quiet::enqueue(&client, gate_name.clone(), sleep_ms)
                .await
                .unwrap();
        }
    }
    for handle in &kept {
        eventually(WAIT, "every kept job started", || async {
            handle.state().await.unwrap() == State::Started
        })
        .await;
    }
    // The quiet ones were fetched with them; a moment for each to reach its gate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Fill Redis to its limit while all sixty wait.
    let admin = redis::Client::open(url.as_str()).unwrap();
    let mut admin = admin.get_connection().unwrap();
    // Ever smaller values, so that Redis is full to within a few bytes: a refused write's own
    // bytes leave with it, and would otherwise leave room for the records.
    let mut fillers = 0;
    for size in [256 * 1024, 16 * 1024, 1024, 64] {
        let filler = vec![b'f'; size];
        loop {
            let set: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("filler:{fillers}"))
                .arg(filler.as_slice())
                .query(&mut admin);
            match set {
                Ok(()) => fillers += 1,
                Err(err) => {
                    assert!(err.to_string().contains("OOM"), "{err}");
                    break;
                }
            }
            assert!(fillers < 10_000, "Redis never refused a write");
        }
    }
    gate(&gate_name).notify_waiters();
    // The outcomes are refused for a while; then memory is freed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for filler in 0..fillers {
        let _: () = redis::cmd("DEL")
            .arg(format!("filler:{filler}"))
            .query(&mut admin)
            .unwrap();
    }
    for handle in &kept {
        assert_eq!(handle.wait(WAIT).await.unwrap(), 7);
    }
    let dead = client.dead_letters().stats().await.unwrap();
    assert_eq!(dead.len, 0, "nothing was dead-lettered");
    assert_eq!(worker.stats.failed(), 0);
    worker.stop().await;
}

/// `XGROUP DESTROY` while a job runs: the worker creates the group again from the start of
/// the stream and is handed the running job's entry once more. The second copy is not run,
/// and the first settles the entry. Before, the second copy replaced the first in the
/// worker's holdings and ran beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_group_does_not_start_a_second_copy_of_a_running_job() {
    use psw_tasks_tests::{count_local, local_runs};

    let ns = TestNamespace::new("destroyed-group");
    let client = ns.client().await;
    let worker = start_built(
        Worker::builder(&client)
            .concurrency(2)
            .prefetch(2)
            .build()
            .unwrap(),
    );
    let ledger = "destroyed-group".to_owned();
    let long = count_local::enqueue(&client, ledger.clone(), 2000)
        .await
        .unwrap();
    eventually(WAIT, "the job started", || async {
        long.state().await.unwrap() == State::Started
    })
    .await;
    let redis = redis::Client::open(ns.url()).unwrap();
    let mut conn = redis.get_connection().unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(ns.stream_key("default"))
        .arg("workers")
        .query(&mut conn)
        .unwrap();
    long.wait(WAIT).await.unwrap();
    // Time for a second copy, had one started, to finish too.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        local_runs(&ledger).get(long.id().as_str()).copied(),
        Some(1),
        "the job ran once"
    );
    worker.stop().await;
}
