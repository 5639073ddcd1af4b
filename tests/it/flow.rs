//! Flow control (issue 14): expiry and queue priorities so far. Each behaviour runs on the
//! in-process broker and on Redis, through a real worker.

use std::time::{Duration, SystemTime};

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, EnqueueOptions, Error, RevokeReason, State, Worker};
use psw_tasks_tests::{add, count_local, fire_and_forget, flaky, local_runs};

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
