//! Flow control (issue 14): expiry, queue priorities and levels, unique jobs, debounce, rate and
//! concurrency limits. Each behaviour runs on the in-process broker and on Redis, through a
//! real worker.

use std::time::{Duration, SystemTime};

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, EnqueueOptions, Error, Priority, RevokeReason, State, Unique, Worker};
use psw_tasks_tests::{
    add, alone, cancellable, count_local, fire_and_forget, flaky, gate, gated, local_runs,
    most_at_once, paired, rate_limited, refuses, runs_of, shared_quota, timed, unique_add,
    unique_for_an_hour, urgent,
};

use crate::support::{eventually, start_built, start_worker};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_jobs_are_revoked_not_run_on_redis() {
    let ns = TestNamespace::new("expiry");
    expired_jobs_are_revoked_not_run(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_jobs_are_revoked_not_run_in_memory() {
    expired_jobs_are_revoked_not_run(Client::memory(), "memory").await;
}

async fn expired_jobs_are_revoked_not_run(client: Client, label: &str) {
    // Enqueued before any worker runs, so each is judged when it is taken.
    let past = add::enqueue_with(
        &client,
        EnqueueOptions::new().expires(SystemTime::now() - Duration::from_secs(1)),
        1,
        2,
    )
    .await
    .unwrap();
    // Due after its expiry: promoted, taken, and revoked.
    let delayed = add::enqueue_with(
        &client,
        EnqueueOptions::new()
            .countdown(Duration::from_millis(400))
            .expires(Duration::from_millis(100)),
        3,
        4,
    )
    .await
    .unwrap();
    let in_time = add::enqueue_with(
        &client,
        EnqueueOptions::new().expires(Duration::from_secs(3600)),
        5,
        6,
    )
    .await
    .unwrap();
    // Every attempt fails; they are due 0.2, 0.6 and 1.4 s after the first, so the expiry
    // passes after the first attempt and before the last.
    let retried = flaky::enqueue_with(
        &client,
        EnqueueOptions::new().expires(Duration::from_millis(1000)),
    )
    .await
    .unwrap();
    // A task that keeps no records: counted, not run, nothing stored.
    let ledger = format!("expiry-{label}");
    let unrecorded = fire_and_forget::enqueue_with(
        &client,
        EnqueueOptions::new().expires(SystemTime::now() - Duration::from_secs(1)),
        ledger.clone(),
    )
    .await
    .unwrap();
    let ran = fire_and_forget::enqueue(&client, ledger.clone())
        .await
        .unwrap();

    let worker = start_worker(&client, 4);
    assert_eq!(in_time.wait(WAIT).await.unwrap(), 11);
    for (handle, what) in [
        (&past, "expired at enqueue"),
        (&delayed, "due after its expiry"),
    ] {
        let err = handle.wait(WAIT).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::JobRevoked {
                    reason: RevokeReason::Expired,
                    ..
                }
            ),
            "{what}: {err}"
        );
        let record = handle.record().await.unwrap().unwrap();
        assert_eq!(record.state, State::Revoked, "{what}");
        assert_eq!(record.revoked, Some(RevokeReason::Expired), "{what}");
        assert_eq!(record.started_ms, None, "{what}: never started");
        assert!(record.finished_ms.is_some(), "{what}");
    }
    let err = retried.wait(WAIT).await.unwrap_err();
    assert!(matches!(err, Error::JobRevoked { .. }), "{err}");
    let record = retried.record().await.unwrap().unwrap();
    assert_eq!(record.state, State::Revoked);
    assert!(record.attempt >= 1, "revoked when a retry came due");
    assert_eq!(
        record.errors.len(),
        record.attempt as usize,
        "the failed attempts' errors are kept"
    );

    eventually(
        WAIT,
        "the fire-and-forget job that did not expire runs",
        || {
            let ledger = ledger.clone();
            async move { local_runs(&ledger).len() == 1 }
        },
    )
    .await;
    let runs = local_runs(&ledger);
    assert!(runs.contains_key(ran.id().as_str()));
    assert!(
        !runs.contains_key(unrecorded.id().as_str()),
        "expired: never ran"
    );
    assert_eq!(unrecorded.record().await.unwrap(), None, "keeps no record");
    eventually(WAIT, "four expiries counted", || {
        let stats = worker.stats.clone();
        async move { stats.expired() == 4 }
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_queues_share_reads_by_weight_on_redis() {
    let ns = TestNamespace::new("weights");
    weighted_queues_share_reads_by_weight(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_queues_share_reads_by_weight_in_memory() {
    weighted_queues_share_reads_by_weight(Client::memory(), "memory").await;
}

/// Fill `high` and `low` with `each` jobs of the ledgers `<label>-high` and `<label>-low`.
async fn fill_two_queues(client: &Client, label: &str, each: usize) -> (String, String) {
    let (high, low) = (format!("{label}-high"), format!("{label}-low"));
    for _ in 0..each {
        for (queue, ledger) in [("high", &high), ("low", &low)] {
            count_local::enqueue_with(
                client,
                EnqueueOptions::new().queue(queue),
                ledger.clone(),
                0,
            )
            .await
            .unwrap();
        }
    }
    (high, low)
}

/// Run `worker` until `total` jobs of the two ledgers ran; the runs of each.
async fn runs_until(worker: Worker, ledgers: &(String, String), total: usize) -> (usize, usize) {
    let running = start_built(worker);
    eventually(Duration::from_secs(60), "the jobs run", || {
        let ledgers = ledgers.clone();
        async move { local_runs(&ledgers.0).len() + local_runs(&ledgers.1).len() >= total }
    })
    .await;
    running.stop().await;
    (local_runs(&ledgers.0).len(), local_runs(&ledgers.1).len())
}

async fn weighted_queues_share_reads_by_weight(client: Client, label: &str) {
    let ledgers = fill_two_queues(&client, &format!("weights-{label}"), 1000).await;
    // Small reads, so that many draws decide the order.
    let worker = Worker::builder(&client)
        .weighted_queues([("high", 5), ("low", 1)])
        .concurrency(1)
        .prefetch(2)
        .build()
        .unwrap();
    let (high, low) = runs_until(worker, &ledgers, 600).await;
    assert!(
        low > 0,
        "the light queue is not starved ({high} high, {low} low)"
    );
    let ratio = high as f64 / low as f64;
    // 5:1 expected; over 600 jobs three standard deviations stay within about 3.7 and 7.2.
    assert!(
        (3.0..=9.0).contains(&ratio),
        "{high} high and {low} low jobs: a ratio of {ratio:.2}, expected close to 5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_priority_drains_the_first_queue_first_on_redis() {
    let ns = TestNamespace::new("strict");
    strict_priority_drains_the_first_queue_first(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_priority_drains_the_first_queue_first_in_memory() {
    strict_priority_drains_the_first_queue_first(Client::memory(), "memory").await;
}

async fn strict_priority_drains_the_first_queue_first(client: Client, label: &str) {
    let ledgers = fill_two_queues(&client, &format!("strict-{label}"), 300).await;
    let worker = Worker::builder(&client)
        .queues(["high", "low"])
        .strict_priority(true)
        .concurrency(2)
        .prefetch(2)
        .build()
        .unwrap();
    let (high, low) = runs_until(worker, &ledgers, 200).await;
    assert_eq!(
        low, 0,
        "nothing of `low` while `high` has jobs ({high} high ran)"
    );

    // Weights and strict order together are refused, naming the setting.
    let err = Worker::builder(&client)
        .weighted_queues([("high", 5), ("low", 1)])
        .strict_priority(true)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("PSW_STRICT_PRIORITY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_do_not_start_and_running_ones_are_told_on_redis() {
    let ns = TestNamespace::new("cancel");
    cancelled_jobs_do_not_start_and_running_ones_are_told(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_do_not_start_and_running_ones_are_told_in_memory() {
    cancelled_jobs_do_not_start_and_running_ones_are_told(Client::memory(), "memory").await;
}

/// A job cancelled before any worker started never runs and is recorded REVOKED
/// (`cancelled`); a running job's task hears of it through its context; a task that does not
/// look runs to its end.
async fn cancelled_jobs_do_not_start_and_running_ones_are_told(client: Client, label: &str) {
    let queued = add::enqueue(&client, 1, 1).await.unwrap();
    queued.cancel().await.unwrap();
    let delayed = add::enqueue_with(
        &client,
        EnqueueOptions::new().countdown(Duration::from_millis(300)),
        2,
        2,
    )
    .await
    .unwrap();
    delayed.cancel().await.unwrap();
    let kept = add::enqueue(&client, 3, 3).await.unwrap();

    let worker = start_worker(&client, 4);
    for handle in [&queued, &delayed] {
        let err = handle.wait(WAIT).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::JobRevoked {
                    reason: RevokeReason::Cancelled,
                    ..
                }
            ),
            "{err}"
        );
        let record = handle.record().await.unwrap().expect("recorded");
        assert_eq!(
            (record.state, record.started_ms),
            (State::Revoked, None),
            "never started"
        );
    }
    assert_eq!(kept.wait(WAIT).await.unwrap(), 6, "others run");

    // Running: the task waits for its cancellation beside a long sleep.
    let watching = cancellable::enqueue(&client, 60).await.unwrap();
    let ignoring = gated::enqueue(&client, format!("cancel-ignored-{label}"), 0)
        .await
        .unwrap();
    for handle in [watching.id(), ignoring.id()] {
        eventually(WAIT, "the job starts", || async {
            client
                .record(handle.as_str())
                .await
                .unwrap()
                .is_some_and(|r| r.state == State::Started)
        })
        .await;
    }
    watching.cancel().await.unwrap();
    ignoring.cancel().await.unwrap();
    assert!(
        watching.wait(WAIT).await.unwrap(),
        "the task saw its cancellation and returned"
    );
    gate(&format!("cancel-ignored-{label}")).notify_one();
    assert!(
        ignoring.wait(WAIT).await.is_ok(),
        "a task that does not look finishes as usual"
    );
    assert_eq!(worker.stats.cancelled(), 2, "the two that never started");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_levels_order_a_queue_on_redis() {
    let ns = TestNamespace::new("levels");
    let client = ns.client().await;
    priority_levels_order_a_queue(client.clone(), "redis").await;
    // Each level is a stream of its own (docs/protocol.md), which a producer in another
    // language can add to.
    let redis = redis::Client::open(ns.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    urgent::enqueue(&client, "levels-redis-wire".to_owned())
        .await
        .unwrap();
    let lane = ns.stream_key("levels:high");
    let waiting: u64 = redis::cmd("XLEN")
        .arg(&lane)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        waiting, 1,
        "the task's `priority = \"high\"` sends it to {lane}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_levels_order_a_queue_in_memory() {
    priority_levels_order_a_queue(Client::memory(), "memory").await;
}

/// A queue's high jobs all start before its normal ones, and those before its low ones,
/// whatever order they were enqueued in; the queue is one queue in the stats.
async fn priority_levels_order_a_queue(client: Client, label: &str) {
    let ledger = |level: Priority| format!("levels-{label}-{level}");
    for _ in 0..20 {
        for level in [Priority::Low, Priority::Normal, Priority::High] {
            let options = EnqueueOptions::new().queue("levels").priority(level);
            timed::enqueue_with(&client, options, ledger(level), 0)
                .await
                .unwrap();
        }
    }
    // The task's own level, and a job that overrides it.
    urgent::enqueue(&client, ledger(Priority::High))
        .await
        .unwrap();
    urgent::enqueue_with(
        &client,
        EnqueueOptions::new().priority(Priority::Low),
        ledger(Priority::Low),
    )
    .await
    .unwrap();
    let stats = client.stats(Duration::from_secs(60)).await.unwrap();
    let queues: Vec<(&str, u64)> = stats
        .queues
        .iter()
        .map(|queue| (queue.name.as_str(), queue.ready + queue.delayed))
        .collect();
    assert_eq!(queues, [("levels", 62)], "the lanes count as their queue");

    // One runner, small reads: the starts come in the order of the reads.
    let worker = Worker::builder(&client)
        .queues(["levels"])
        .concurrency(1)
        .prefetch(2)
        .build()
        .unwrap();
    let running = start_built(worker);
    eventually(Duration::from_secs(60), "the jobs run", || async {
        Priority::ALL
            .iter()
            .map(|&level| runs_of(&ledger(level)).len())
            .sum::<usize>()
            == 62
    })
    .await;
    running.stop().await;
    let mut starts: Vec<(std::time::Instant, Priority)> = Priority::ALL
        .iter()
        .flat_map(|&level| {
            runs_of(&ledger(level))
                .into_iter()
                .map(move |(started, _)| (started, level))
        })
        .collect();
    starts.sort();
    let order: Vec<Priority> = starts.into_iter().map(|(_, level)| level).collect();
    let expected: Vec<Priority> = [
        (Priority::High, 21),
        (Priority::Normal, 20),
        (Priority::Low, 21),
    ]
    .into_iter()
    .flat_map(|(level, count)| std::iter::repeat_n(level, count))
    .collect();
    assert_eq!(
        order, expected,
        "the levels in order, each drained before the next"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_jobs_hold_their_lock_until_each_end_on_redis() {
    let ns = TestNamespace::new("unique");
    unique_jobs_hold_their_lock_until_each_end(ns.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_jobs_hold_their_lock_until_each_end_in_memory() {
    unique_jobs_hold_their_lock_until_each_end(Client::memory()).await;
}

/// Every way a unique job ends releases its lock; a retry and a `for` lock keep it.
async fn unique_jobs_hold_their_lock_until_each_end(client: Client) {
    // Before any worker runs: the duplicate is told apart and adds nothing.
    let first = unique_add::enqueue(&client, 1, 2).await.unwrap();
    let again = unique_add::enqueue(&client, 1, 2).await.unwrap();
    let other = unique_add::enqueue(&client, 1, 3).await.unwrap();
    assert!(!first.is_duplicate());
    assert!(again.is_duplicate(), "the same arguments: a duplicate");
    assert_eq!(again.id(), first.id(), "the handle is the first job's");
    assert!(!other.is_duplicate(), "other arguments: another key");
    let locks = client.unique_locks("it.unique_add/", 10).await.unwrap();
    assert_eq!(locks.len(), 2, "{locks:?}");
    assert!(locks.iter().any(|lock| lock.job_id == first.id().as_str()));
    assert!(locks.iter().all(|lock| lock.expires_in.is_some()));

    let keyed = |key: &str| {
        EnqueueOptions::new()
            .unique(Unique::UntilFinished)
            .unique_key(key)
    };
    // Fails for good (and is dead-lettered): `refuses` fails permanently at once.
    let refused = refuses::enqueue_with(&client, keyed("refused"), "no".to_owned())
        .await
        .unwrap();
    // Arguments that do not fit: FAILURE, dead-lettered as bad_args.
    let bad = client
        .enqueue_by_name::<i64>("it.add", &("x", 1), keyed("bad-args"))
        .await
        .unwrap();
    // Expires before it runs: REVOKED.
    let expired = add::enqueue_with(
        &client,
        keyed("expired").expires(SystemTime::now() - Duration::from_secs(1)),
        1,
        1,
    )
    .await
    .unwrap();
    // Retried: the lock stays through the retries, and goes when the last attempt fails.
    let retried = flaky::enqueue_with(&client, keyed("retried"))
        .await
        .unwrap();
    // Cancelled before it started: never run, its lock released.
    let cancelled = refuses::enqueue_with(&client, keyed("cancelled"), "never".to_owned())
        .await
        .unwrap();
    // Unique for an hour: the lock outlives the job.
    let hourly = unique_for_an_hour::enqueue(&client, 7).await.unwrap();
    for key in ["refused", "bad-args", "expired", "retried", "cancelled"] {
        assert!(
            client.unique_lock(key).await.unwrap().is_some(),
            "{key}: held while queued"
        );
    }

    cancelled.cancel().await.unwrap();
    let worker = start_worker(&client, 4);
    assert_eq!(first.wait(WAIT).await.unwrap(), 3);
    assert!(matches!(
        cancelled.wait(WAIT).await.unwrap_err(),
        Error::JobRevoked {
            reason: RevokeReason::Cancelled,
            ..
        }
    ));
    assert_eq!(other.wait(WAIT).await.unwrap(), 4);
    assert!(refused.wait(WAIT).await.is_err());
    assert!(bad.wait(WAIT).await.is_err());
    assert!(matches!(
        expired.wait(WAIT).await.unwrap_err(),
        Error::JobRevoked { .. }
    ));
    assert_eq!(hourly.wait(WAIT).await.unwrap(), 7);
    eventually(WAIT, "the retried job is retried", || async {
        retried
            .record()
            .await
            .unwrap()
            .is_some_and(|r| r.attempt >= 1)
    })
    .await;
    assert!(
        client.unique_lock("retried").await.unwrap().is_some(),
        "a retry keeps the lock"
    );
    assert!(retried.wait(WAIT).await.is_err(), "fails after its retries");

    // Success, failure for good, dead-lettered, expired, retries used up, cancelled: all
    // released.
    assert!(
        client
            .unique_locks("it.unique_add/", 10)
            .await
            .unwrap()
            .is_empty()
    );
    for key in ["refused", "bad-args", "expired", "retried", "cancelled"] {
        assert_eq!(
            client.unique_lock(key).await.unwrap(),
            None,
            "{key}: released"
        );
    }
    let after = unique_add::enqueue(&client, 1, 2).await.unwrap();
    assert!(!after.is_duplicate(), "the key is free once the job ended");
    assert_ne!(after.id(), first.id());
    assert_eq!(after.wait(WAIT).await.unwrap(), 3);
    // The hour's lock stays after its job succeeded.
    let hourly_again = unique_for_an_hour::enqueue(&client, 7).await.unwrap();
    assert!(hourly_again.is_duplicate());
    assert_eq!(hourly_again.id(), hourly.id());
    let hold = client
        .unique_lock(&hourly_lock_key(&client).await)
        .await
        .unwrap()
        .expect("held");
    assert!(
        hold.expires_in.unwrap() > Duration::from_secs(3500),
        "{hold:?}"
    );
    worker.stop().await;
}

/// The one lock of `it.unique_for_an_hour`.
async fn hourly_lock_key(client: &Client) -> String {
    let locks = client
        .unique_locks("it.unique_for_an_hour/", 10)
        .await
        .unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    locks[0].key.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_until_started_goes_when_the_job_starts_on_redis() {
    let ns = TestNamespace::new("unique-started");
    a_lock_until_started_goes_when_the_job_starts(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_until_started_goes_when_the_job_starts_in_memory() {
    a_lock_until_started_goes_when_the_job_starts(Client::memory(), "memory").await;
}

async fn a_lock_until_started_goes_when_the_job_starts(client: Client, label: &str) {
    let gate_name = format!("unique-started-{label}");
    let options = || {
        EnqueueOptions::new()
            .unique(Unique::UntilStarted)
            .unique_key("started")
    };
    let running = gated::enqueue_with(&client, options(), gate_name.clone(), 0)
        .await
        .unwrap();
    assert!(
        gated::enqueue_with(&client, options(), gate_name.clone(), 0)
            .await
            .unwrap()
            .is_duplicate(),
        "not started yet"
    );
    let worker = start_worker(&client, 2);
    eventually(WAIT, "the job started", || async {
        running.state().await.unwrap() == State::Started
    })
    .await;
    assert_eq!(client.unique_lock("started").await.unwrap(), None);
    let next = gated::enqueue_with(&client, options(), gate_name.clone(), 0)
        .await
        .unwrap();
    assert!(
        !next.is_duplicate(),
        "the first one runs: a new job may wait"
    );
    eventually(WAIT, "both wait at the gate", || async {
        next.state().await.unwrap() == State::Started
    })
    .await;
    gate(&gate_name).notify_waiters();
    assert_eq!(running.wait(WAIT).await.unwrap(), 7);
    assert_eq!(next.wait(WAIT).await.unwrap(), 7);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_producers_make_one_unique_job_on_redis() {
    let ns = TestNamespace::new("unique-race");
    // Two producers, each with its own connection.
    racing_producers_make_one_unique_job(ns.client().await, ns.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_producers_make_one_unique_job_in_memory() {
    let client = Client::memory();
    racing_producers_make_one_unique_job(client.clone(), client).await;
}

async fn racing_producers_make_one_unique_job(a: Client, b: Client) {
    let race = |client: Client| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..500 {
                let handle = unique_add::enqueue(&client, 20, 22).await.unwrap();
                ids.push((handle.id().clone(), handle.is_duplicate()));
            }
            ids
        })
    };
    let (from_a, from_b) = (race(a.clone()), race(b));
    let mut all = from_a.await.unwrap();
    all.extend(from_b.await.unwrap());
    assert_eq!(all.len(), 1000);
    let added: Vec<_> = all.iter().filter(|(_, duplicate)| !duplicate).collect();
    assert_eq!(added.len(), 1, "one enqueue of a thousand added the job");
    assert!(
        all.iter().all(|(id, _)| id == &added[0].0),
        "every handle is that job's"
    );
    let stats = a.stats(Duration::from_secs(60)).await.unwrap();
    let ready: u64 = stats.queues.iter().map(|queue| queue.ready).sum();
    assert_eq!(ready, 1, "one job in the queue");
}

/// `unique` lists the locks: key, holder and time left, with producers' keys escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_unique_locks() {
    let ns = TestNamespace::new("unique-cli");
    let client = ns.client().await;
    let held = unique_for_an_hour::enqueue(&client, 1).await.unwrap();
    let (ok, out, err) = crate::processes::run_cli(&ns, &["unique"], &[]);
    assert!(ok, "{err}");
    assert!(out.starts_with("1 unique lock(s)"), "{out}");
    assert!(out.contains("it.unique_for_an_hour/"), "{out}");
    assert!(out.contains(held.id().as_str()), "{out}");
    assert!(out.contains("expires in 59m"), "{out}");
    let (ok, out, err) = crate::processes::run_cli(&ns, &["unique", "--prefix", "other"], &[]);
    assert!(ok, "{err}");
    assert!(out.starts_with("0 unique lock(s)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounced_enqueues_keep_only_the_last_on_redis() {
    let ns = TestNamespace::new("debounce");
    debounced_enqueues_keep_only_the_last(ns.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounced_enqueues_keep_only_the_last_in_memory() {
    debounced_enqueues_keep_only_the_last(Client::memory()).await;
}

async fn debounced_enqueues_keep_only_the_last(client: Client) {
    let worker = start_worker(&client, 2);
    let window = || EnqueueOptions::new().debounce("sum", Duration::from_secs(1));
    let mut handles = Vec::new();
    for i in 0..5 {
        handles.push(add::enqueue_with(&client, window(), i, 100).await.unwrap());
    }
    let last = handles.pop().unwrap();
    assert_eq!(last.wait(WAIT).await.unwrap(), 104, "the last one runs");
    for handle in &handles {
        let err = handle.wait(WAIT).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::JobRevoked {
                    reason: RevokeReason::Superseded,
                    ..
                }
            ),
            "{err}"
        );
        let record = handle.record().await.unwrap().unwrap();
        assert_eq!(record.state, State::Revoked);
        assert_eq!(record.started_ms, None, "never started");
    }
    eventually(WAIT, "four superseded", || {
        let stats = worker.stats.clone();
        async move { stats.superseded() == 4 }
    })
    .await;
    // The run cleared the key: a later enqueue opens a window of its own.
    let later = add::enqueue_with(
        &client,
        EnqueueOptions::new().debounce("sum", Duration::from_millis(100)),
        1,
        1,
    )
    .await
    .unwrap();
    assert_eq!(later.wait(WAIT).await.unwrap(), 2);
    // Not with a unique job.
    let err = add::enqueue_with(&client, window().unique(Unique::UntilFinished), 1, 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("EnqueueOptions::debounce"),
        "{err}"
    );
    worker.stop().await;
}

/// The most of `starts` (ms) that fall in any one second.
fn most_in_a_second(starts: &mut [i64]) -> usize {
    starts.sort_unstable();
    (0..starts.len())
        .map(|i| starts[i..].partition_point(|&at| at < starts[i] + 1000))
        .max()
        .unwrap_or(0)
}

/// Three worker processes share one `10/s` limit: counted over the 21 s that 210 jobs take, no
/// second holds more than the limit and its burst (1), and no job spent an attempt waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_starts_keep_to_the_limit_across_three_worker_processes() {
    let ns = TestNamespace::new("rate-processes");
    let client = ns.client().await;
    let mut handles = Vec::new();
    for n in 0..210 {
        handles.push(rate_limited::enqueue(&client, n).await.unwrap());
    }
    let mut workers: Vec<_> = (0..3)
        .map(|_| crate::processes::spawn_worker(&ns, &[("PSW_WORKER_CONCURRENCY", "4")]))
        .collect();
    let mut starts = Vec::new();
    for handle in &handles {
        starts.push(handle.wait(Duration::from_secs(90)).await.unwrap());
        let record = handle.record().await.unwrap().unwrap();
        assert_eq!(record.attempt, 0, "waiting for the limit is not an attempt");
        assert!(record.errors.is_empty(), "{:?}", record.errors);
    }
    for worker in &mut workers {
        crate::processes::signal(worker, "TERM");
    }
    for worker in &mut workers {
        crate::processes::wait_exit(worker, Duration::from_secs(30));
    }
    let most = most_in_a_second(&mut starts);
    assert!(most <= 11, "{most} starts in one second under 10/s");
    assert!(
        most >= 9,
        "the limit was reached: {most} in the busiest second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_rate_limit_holds_inside_tasks_on_redis() {
    let ns = TestNamespace::new("shared-rate");
    a_shared_rate_limit_holds_inside_tasks(ns.client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_rate_limit_holds_inside_tasks_in_memory() {
    a_shared_rate_limit_holds_inside_tasks(Client::memory()).await;
}

/// Two workers share the limit `quota` (5/s) that the task takes with `ctx.rate_limit`: short
/// waits are waited out in the task, longer ones put the job back, uncounted.
async fn a_shared_rate_limit_holds_inside_tasks(client: Client) {
    let mut handles = Vec::new();
    for n in 0..20 {
        handles.push(shared_quota::enqueue(&client, n).await.unwrap());
    }
    let quota = "5/s".parse().unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            start_built(
                Worker::builder(&client)
                    .concurrency(4)
                    .rate_limit("quota", quota)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let mut starts = Vec::new();
    for handle in &handles {
        starts.push(handle.wait(Duration::from_secs(30)).await.unwrap());
        let record = handle.record().await.unwrap().unwrap();
        assert_eq!(record.attempt, 0, "waiting for the limit is not an attempt");
        assert!(record.errors.is_empty(), "{:?}", record.errors);
    }
    let most = most_in_a_second(&mut starts);
    assert!(most <= 6, "{most} starts in one second under 5/s");
    // 8 runners for 20 jobs over 4 s: some waits were over a second, and were put back.
    let put_back: u64 = workers.iter().map(|w| w.stats.rate_limited()).sum();
    assert!(put_back > 0, "no job was put back");
    for worker in workers {
        worker.stop().await;
    }
    // A worker that was not given the limit says so, and the job fails for it.
    let worker = start_worker(&client, 1);
    let unknown = shared_quota::enqueue(&client, 99).await.unwrap();
    let err = unknown.wait(WAIT).await.unwrap_err().to_string();
    assert!(err.contains("no rate limit named `quota`"), "{err}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_across_workers_on_redis() {
    let ns = TestNamespace::new("concurrency");
    concurrency_limits_hold_across_workers(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_across_workers_in_memory() {
    concurrency_limits_hold_across_workers(Client::memory(), "memory").await;
}

/// Two workers of four runners each, twelve jobs of a task limited to two at once: never more
/// than two run, two do, and the others wait outside the runners.
async fn concurrency_limits_hold_across_workers(client: Client, label: &str) {
    let ledger = format!("paired-{label}");
    let mut handles = Vec::new();
    for _ in 0..12 {
        handles.push(paired::enqueue(&client, ledger.clone(), 100).await.unwrap());
    }
    let workers = [start_worker(&client, 4), start_worker(&client, 4)];
    for handle in &handles {
        handle.wait(Duration::from_secs(60)).await.unwrap();
        assert_eq!(handle.record().await.unwrap().unwrap().attempt, 0);
    }
    assert_eq!(most_at_once(&ledger), 2, "two at once, never more");
    let waits: u64 = workers.iter().map(|w| w.stats.slot_waits()).sum();
    assert!(waits > 0, "the other jobs waited for a slot");
    for worker in workers {
        worker.stop().await;
    }
}

/// A worker killed while its job holds the only slot: the slot comes back when its lease runs
/// out, and the next job runs on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_slot_returns_within_its_lease() {
    let ns = TestNamespace::new("slot-kill");
    let client = ns.client().await;
    let lease = [("PSW_LEASE", "2s")];
    let mut holder = crate::processes::spawn_worker(&ns, &lease);
    let held = alone::enqueue(&client, 600_000).await.unwrap();
    eventually(WAIT, "the long job runs", || {
        let held = held.clone();
        async move {
            held.record()
                .await
                .unwrap()
                .is_some_and(|record| record.state == State::Started)
        }
    })
    .await;
    // The slot is the killed job's, in the set workers share (`docs/protocol.md`).
    let slots = format!("{{{}}}:slots:task:it.alone", ns.name());
    let holders = || -> Vec<String> {
        let redis = redis::Client::open(ns.url()).unwrap();
        let mut conn = redis.get_connection().unwrap();
        redis::cmd("ZRANGE")
            .arg(&slots)
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap()
    };
    assert_eq!(holders(), vec![held.id().to_string()]);
    crate::processes::signal(&holder, "KILL");
    crate::processes::wait_exit(&mut holder, Duration::from_secs(10));
    let next = alone::enqueue(&client, 0).await.unwrap();
    // The killed job comes back to the new worker too: delivered once already, it is
    // dead-lettered as poisoned rather than run again for ten minutes.
    let mut other =
        crate::processes::spawn_worker(&ns, &[("PSW_LEASE", "2s"), ("PSW_MAX_DELIVERIES", "1")]);
    assert_eq!(next.wait(Duration::from_secs(30)).await.unwrap(), 0);
    eventually(WAIT, "the killed job is dead-lettered", || async {
        client.dead_letters().stats().await.unwrap().len == 1
    })
    .await;
    let dead = client.dead_letters().list(1).await.unwrap();
    assert_eq!(dead[0].reason, "poisoned");
    assert_eq!(dead[0].job_id.as_deref(), Some(held.id().as_str()));
    assert!(holders().is_empty(), "{:?}", holders());
    crate::processes::signal(&other, "TERM");
    crate::processes::wait_exit(&mut other, Duration::from_secs(30));
}
