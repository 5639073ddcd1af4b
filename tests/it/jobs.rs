//! Jobs through a worker in this process: results, progress, delays, retries, panics.

use std::collections::BTreeMap;
use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Client, EnqueueOptions, Error, State};
use psw_tasks_tests::{
    Report, Summary, add, count_local, fire_and_forget, flaky, gate, local_runs, panics, refuses,
    sleepy, stepwise, summarize,
};

use crate::support::{eventually, queue_state, start_worker};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_arguments_and_results_round_trip() {
    let ns = TestNamespace::new("roundtrip");
    let client = ns.client().await;
    let worker = start_worker(&client, 4);

    let report = Report {
        title: "weekly".into(),
        values: vec![1.5, 2.5, -1.0],
        tags: BTreeMap::from([("owner".into(), "ops".into()), ("tz".into(), "UTC".into())]),
        note: None,
    };
    let handle = summarize::enqueue(&client, report, 2.0).await.unwrap();
    let summary: Summary = handle.wait(WAIT).await.unwrap();
    assert_eq!(
        summary,
        Summary {
            title: "WEEKLY".into(),
            total: 6.0,
            tags: 2,
            job_id: handle.id().to_string(),
        }
    );
    assert_eq!(handle.state().await.unwrap(), State::Success);

    // A producer that knows only the name and the argument list.
    let by_name = client
        .enqueue_by_name::<i64>("it.add", &(40, 2), EnqueueOptions::new())
        .await
        .unwrap();
    assert_eq!(by_name.wait(WAIT).await.unwrap(), 42);

    // Arguments of the wrong shape fail for good, with serde's reason, and are not retried.
    let wrong = client
        .enqueue_by_name::<i64>("it.add", &("forty", 2), EnqueueOptions::new())
        .await
        .unwrap();
    let err = wrong.wait(WAIT).await.unwrap_err();
    assert!(matches!(err, Error::JobFailed { .. }), "{err}");
    let record = wrong.record().await.unwrap().unwrap();
    assert_eq!(record.state, State::Failure);
    assert_eq!(record.errors.len(), 1);
    assert_eq!(record.errors[0].kind, "bad_args");
    assert!(
        record.errors[0].message.contains("arguments do not match"),
        "{}",
        record.errors[0].message
    );

    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_broker_runs_the_same_jobs() {
    let client = Client::memory();
    let worker = start_worker(&client, 2);
    let handle = add::enqueue(&client, 2, 3).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap(), 5);
    let delayed = add::enqueue_with(
        &client,
        EnqueueOptions::new().countdown(Duration::from_millis(300)),
        1,
        1,
    )
    .await
    .unwrap();
    assert_eq!(delayed.wait(WAIT).await.unwrap(), 2);
    let record = delayed.record().await.unwrap().unwrap();
    assert!(record.started_ms.unwrap() - record.created_ms >= 300);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_visible_to_another_client() {
    let ns = TestNamespace::new("progress");
    let producer = ns.client().await;
    let observer = ns.client().await;
    let worker = start_worker(&ns.client().await, 2);

    let gate_name = format!("progress-{}", ns.name());
    let handle = stepwise::enqueue(&producer, gate_name.clone(), 3)
        .await
        .unwrap();
    let watched = observer.handle::<u64>(handle.id().clone());
    eventually(WAIT, "PROGRESS state", || async {
        watched.state().await.unwrap() == State::Progress
    })
    .await;
    let record = watched.record().await.unwrap().unwrap();
    let progress = record.progress.unwrap();
    assert_eq!((progress.current, progress.total), (1, 3));
    assert_eq!(progress.meta, Some(serde_json::json!({"step": "first"})));
    assert!(record.started_ms.is_some());

    gate(&gate_name).notify_one();
    assert_eq!(watched.wait(WAIT).await.unwrap(), 3);
    let record = watched.record().await.unwrap().unwrap();
    assert_eq!(record.state, State::Success);
    assert_eq!(
        record.progress.unwrap().current,
        3,
        "the last progress stays in the record"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_countdown_is_respected() {
    let ns = TestNamespace::new("countdown");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    let countdown = Duration::from_millis(1500);
    let handle = add::enqueue_with(&client, EnqueueOptions::new().countdown(countdown), 1, 2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        handle.state().await.unwrap(),
        State::Pending,
        "not started before its time"
    );
    assert_eq!(handle.wait(WAIT).await.unwrap(), 3);
    let record = handle.record().await.unwrap().unwrap();
    let waited = record.started_ms.unwrap() - record.created_ms;
    assert!(waited >= 1500, "started {waited} ms after enqueue");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_exponentially_then_fail_with_every_error() {
    let ns = TestNamespace::new("retries");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    let handle = flaky::enqueue(&client).await.unwrap();
    let err = handle.wait(WAIT).await.unwrap_err();
    assert!(
        matches!(&err, Error::JobFailed { message, .. } if message == "attempt 3 failed"),
        "{err}"
    );
    let record = handle.record().await.unwrap().unwrap();
    assert_eq!(record.state, State::Failure);
    assert_eq!(record.attempt, 3);
    let messages: Vec<&str> = record.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "attempt 0 failed",
            "attempt 1 failed",
            "attempt 2 failed",
            "attempt 3 failed"
        ]
    );
    // backoff_base 200ms, exp, no jitter: 200, 400, 800 ms between attempts. A gap may be longer
    // (promotion runs every 100 ms at most, and the machine may be busy), never shorter.
    let gaps: Vec<i64> = record
        .errors
        .windows(2)
        .map(|pair| pair[1].at_ms - pair[0].at_ms)
        .collect();
    for (gap, expected) in gaps.iter().zip([200, 400, 800]) {
        assert!(
            (expected..expected + 600).contains(gap),
            "gap {gap} ms, expected about {expected} ms: {gaps:?}"
        );
    }
    assert_eq!(worker.stats.retried(), 3);
    assert_eq!(worker.stats.failed(), 1);

    let refused = refuses::enqueue(&client, "no such portfolio".into())
        .await
        .unwrap();
    assert!(refused.wait(WAIT).await.is_err());
    let record = refused.record().await.unwrap().unwrap();
    assert_eq!(record.errors.len(), 1, "a permanent error is not retried");
    assert_eq!(record.errors[0].kind, "permanent");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_fails_and_the_worker_keeps_serving() {
    let ns = TestNamespace::new("panics");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    let boom = panics::enqueue(&client, 7).await.unwrap();
    let err = boom.wait(WAIT).await.unwrap_err();
    assert!(err.to_string().contains("panicked: boom 7"), "{err}");
    assert_eq!(
        boom.record().await.unwrap().unwrap().errors[0].kind,
        "panic"
    );
    for i in 0..20 {
        assert_eq!(
            add::enqueue(&client, i, 1)
                .await
                .unwrap()
                .wait(WAIT)
                .await
                .unwrap(),
            i + 1
        );
    }
    assert_eq!(worker.stats.panicked(), 1);
    assert_eq!(worker.stats.failed(), 1);
    assert_eq!(worker.stats.succeeded(), 20);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_limit_fails_the_attempt() {
    let ns = TestNamespace::new("timeout");
    let client = ns.client().await;
    let worker = start_worker(&client, 2);
    let slow = sleepy::enqueue(&client, 5_000).await.unwrap();
    assert!(slow.wait(WAIT).await.is_err());
    let record = slow.record().await.unwrap().unwrap();
    let kinds: Vec<&str> = record.errors.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["timeout", "timeout"], "one retry, then failure");
    assert_eq!(
        sleepy::enqueue(&client, 10)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap(),
        10
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_queue_run_each_job_once() {
    let ns = TestNamespace::new("two-workers");
    let producer = ns.client().await;
    let first = start_worker(&ns.client().await, 8);
    let second = start_worker(&ns.client().await, 8);
    let ledger = ns.name().to_owned();
    let mut handles = Vec::new();
    for _ in 0..300 {
        handles.push(
            count_local::enqueue(&producer, ledger.clone(), 2)
                .await
                .unwrap(),
        );
    }
    for handle in &handles {
        handle.wait(WAIT).await.unwrap();
    }
    let runs = local_runs(&ledger);
    assert_eq!(runs.len(), 300);
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");
    assert_eq!(first.stats.succeeded() + second.stats.succeeded(), 300);
    assert!(
        first.stats.succeeded() > 0 && second.stats.succeeded() > 0,
        "both workers took jobs"
    );
    first.stop().await;
    second.stop().await;
    assert_eq!(
        queue_state(&ns, "default"),
        (0, 0),
        "acked and deleted: no entry, none pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_jobs_are_refused_at_enqueue() {
    let ns = TestNamespace::new("size");
    let mut config = ns.config();
    config.max_message_size = 1024;
    let client = Client::connect(&config).await.unwrap();
    let report = Report {
        title: "x".repeat(2000),
        values: vec![],
        tags: BTreeMap::new(),
        note: None,
    };
    let err = summarize::enqueue(&client, report, 1.0).await.unwrap_err();
    let Error::MessageTooLarge { size, limit, .. } = &err else {
        panic!("expected MessageTooLarge, got {err}");
    };
    assert!(*size > 2000);
    assert_eq!(*limit, 1024);
    assert_eq!(
        err.to_string(),
        format!("job for task `it.summarize` is {size} bytes, over the limit of 1024 bytes")
    );
    assert!(ns.keys().is_empty(), "nothing was written: {:?}", ns.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_ignored_results() {
    let ns = TestNamespace::new("queues");
    let client = ns.client().await;
    // By default a worker consumes every queue of the linked tasks: `low` included.
    let worker = start_worker(&client, 2);
    let ledger = ns.name().to_owned();
    let forgotten = fire_and_forget::enqueue(&client, ledger.clone())
        .await
        .unwrap();
    eventually(WAIT, "the fire-and-forget job ran", || async {
        local_runs(&ledger).len() == 1
    })
    .await;
    assert_eq!(local_runs(&ledger).get(forgotten.id().as_str()), Some(&1));
    assert!(
        forgotten.record().await.unwrap().is_none(),
        "no record is stored"
    );
    assert_eq!(forgotten.state().await.unwrap(), State::Pending);

    // Sent to another queue by the producer.
    let routed = add::enqueue_with(&client, EnqueueOptions::new().queue("low"), 2, 2)
        .await
        .unwrap();
    assert_eq!(routed.wait(WAIT).await.unwrap(), 4);
    worker.stop().await;
    assert_eq!(queue_state(&ns, "low"), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_are_given_back_at_shutdown_not_left_to_a_lease() {
    let ns = TestNamespace::new("prefetch");
    let client = ns.client().await;
    let ledger = ns.name().to_owned();
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(
            count_local::enqueue(&client, ledger.clone(), 400)
                .await
                .unwrap(),
        );
    }
    let worker = psw_tasks::Worker::builder(&client)
        .concurrency(1)
        .prefetch(5)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    eventually(WAIT, "the first job started", || async {
        let mut started = 0;
        for handle in &handles {
            if handle.record().await.unwrap().is_some() {
                started += 1;
            }
        }
        started == 1
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(
        local_runs(&ledger).len(),
        1,
        "the running job finished, no other started"
    );
    assert_eq!(queue_state(&ns, "default").1, 0, "nothing left pending");

    // The five given back run at once on the next worker, without waiting for a lease.
    let next = start_worker(&client, 5);
    for handle in &handles {
        handle.wait(WAIT).await.unwrap();
    }
    assert_eq!(next.stats.reclaimed(), 0);
    next.stop().await;
    let runs = local_runs(&ledger);
    assert_eq!(runs.len(), 6);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_two_queues_with_one_slot_runs_everything() {
    // One read of two queues can return a job per queue for one free claim (COUNT is per
    // stream): the extra one must still run, and shutdown must not hang on it.
    let ns = TestNamespace::new("two-queues");
    let client = ns.client().await;
    let ledger = ns.name().to_owned();
    let mut handles = Vec::new();
    for i in 0..10 {
        let queue = if i % 2 == 0 { "default" } else { "low" };
        handles.push(
            count_local::enqueue_with(
                &client,
                EnqueueOptions::new().queue(queue),
                ledger.clone(),
                50,
            )
            .await
            .unwrap(),
        );
    }
    let worker = crate::support::start_built(
        psw_tasks::Worker::builder(&client)
            .queues(["default", "low"])
            .concurrency(1)
            .prefetch(0)
            .build()
            .unwrap(),
    );
    for handle in &handles {
        handle.wait(WAIT).await.unwrap();
    }
    worker.stop().await;
    let runs = local_runs(&ledger);
    assert_eq!(runs.len(), 10);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    assert_eq!(queue_state(&ns, "default"), (0, 0));
    assert_eq!(queue_state(&ns, "low"), (0, 0));
}
