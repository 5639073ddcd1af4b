//! What operators watch and do (issue 13's runtime support): pausing a queue, the jobs each
//! worker runs now, the metrics history, the recent executions of a task and the schedules'
//! history. Each behaviour runs on the in-process broker and on Redis, through real workers.

use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{
    Client, EnqueueOptions, Error, ExecutionOutcome, Priority, Resolution, Schedule, Scheduler,
    TaskCounts, Worker,
};
use psw_tasks_tests::{flaky, gate, gated, runs_of, stepwise, timed};

use crate::support::{RunningWorker, eventually, start_built};

const WAIT: Duration = Duration::from_secs(15);

fn worker_of(client: &Client, queues: &[&str]) -> RunningWorker {
    start_built(
        Worker::builder(client)
            .queues(queues.iter().copied())
            .concurrency(2)
            .shutdown_grace(Duration::from_secs(10))
            .build()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_waits_until_resumed_across_restarts_on_redis() {
    let ns = TestNamespace::new("pause");
    a_paused_queue_waits_until_resumed_across_restarts(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_waits_until_resumed_across_restarts_in_memory() {
    a_paused_queue_waits_until_resumed_across_restarts(Client::memory(), "memory").await;
}

/// A running worker stops taking a queue's jobs (every level of it) within a second of the
/// pause, keeps taking the other queue's, and a worker started while it is paused takes none
/// either; producers still enqueue; resumed, the jobs run.
async fn a_paused_queue_waits_until_resumed_across_restarts(client: Client, label: &str) {
    let held = format!("pause-held-{label}");
    let other = format!("pause-other-{label}");
    let worker = worker_of(&client, &["pausing", "open"]);
    // The worker is up and reading both queues.
    timed::enqueue_with(
        &client,
        EnqueueOptions::new().queue("pausing"),
        held.clone(),
        0,
    )
    .await
    .unwrap();
    eventually(WAIT, "the first job runs", || async {
        runs_of(&held).len() == 1
    })
    .await;

    assert!(client.pause_queue("pausing").await.unwrap());
    assert!(!client.pause_queue("pausing").await.unwrap(), "already");
    assert_eq!(client.paused_queues().await.unwrap(), ["pausing"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for level in [Priority::Normal, Priority::High, Priority::Low] {
        let options = EnqueueOptions::new().queue("pausing").priority(level);
        timed::enqueue_with(&client, options, held.clone(), 0)
            .await
            .unwrap();
    }
    timed::enqueue_with(
        &client,
        EnqueueOptions::new().queue("open"),
        other.clone(),
        0,
    )
    .await
    .unwrap();
    eventually(WAIT, "the open queue's job runs", || async {
        runs_of(&other).len() == 1
    })
    .await;
    // Past the worker's look for new levels (a second) and its look for pauses.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runs_of(&held).len(), 1, "nothing of the paused queue ran");
    let stats = client.stats(Duration::from_secs(60)).await.unwrap();
    let queue = stats.queues.iter().find(|q| q.name == "pausing").unwrap();
    assert!(queue.paused, "{queue:?}");
    assert_eq!(queue.ready + queue.delayed, 3, "{queue:?}");
    assert!(
        queue.oldest_age_ms.is_some_and(|age| age >= 1000),
        "the held jobs wait: {queue:?}"
    );
    let open = stats.queues.iter().find(|q| q.name == "open").unwrap();
    assert!(!open.paused, "{open:?}");

    // A restart keeps to the pause.
    worker.stop().await;
    let worker = worker_of(&client, &["pausing", "open"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runs_of(&held).len(), 1, "a new worker takes none either");

    assert!(client.resume_queue("pausing").await.unwrap());
    assert!(!client.resume_queue("pausing").await.unwrap(), "already");
    assert!(client.paused_queues().await.unwrap().is_empty());
    eventually(WAIT, "the held jobs run once resumed", || async {
        runs_of(&held).len() == 4
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_starts_none_of_the_jobs_a_worker_holds_on_redis() {
    let ns = TestNamespace::new("pause-held");
    a_paused_queue_starts_none_of_the_jobs_a_worker_holds(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_starts_none_of_the_jobs_a_worker_holds_in_memory() {
    a_paused_queue_starts_none_of_the_jobs_a_worker_holds(Client::memory(), "memory").await;
}

/// Jobs a worker fetched before the pause, waiting for a runner behind a long one, are given
/// back to the queue rather than started, and run once it resumes.
async fn a_paused_queue_starts_none_of_the_jobs_a_worker_holds(client: Client, label: &str) {
    let gate_name = format!("pause-held-gate-{label}");
    let held = format!("pause-prefetched-{label}");
    let on_queue = || EnqueueOptions::new().queue("holding");
    let blocker = gated::enqueue_with(&client, on_queue(), gate_name.clone(), 0)
        .await
        .unwrap();
    for _ in 0..2 {
        timed::enqueue_with(&client, on_queue(), held.clone(), 0)
            .await
            .unwrap();
    }
    // One runner, room to hold the two behind the blocker.
    let worker = start_built(
        Worker::builder(&client)
            .queues(["holding"])
            .concurrency(1)
            .prefetch(4)
            .shutdown_grace(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    eventually(WAIT, "the worker holds all three", || async {
        let stats = client.stats(Duration::from_secs(60)).await.unwrap();
        stats
            .queues
            .iter()
            .any(|q| q.name == "holding" && q.pending == 3)
    })
    .await;
    client.pause_queue("holding").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    gate(&gate_name).notify_one();
    assert_eq!(
        blocker.wait(WAIT).await.unwrap(),
        7,
        "the running one finishes"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(runs_of(&held).is_empty(), "the held ones did not start");
    client.resume_queue("holding").await.unwrap();
    eventually(WAIT, "they run once resumed", || async {
        runs_of(&held).len() == 2
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_keeps_outcomes_run_times_and_executions_on_redis() {
    let ns = TestNamespace::new("history");
    the_history_keeps_outcomes_run_times_and_executions(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_keeps_outcomes_run_times_and_executions_in_memory() {
    the_history_keeps_outcomes_run_times_and_executions(Client::memory(), "memory").await;
}

fn totals_of(totals: &[TaskCounts], task: &str) -> TaskCounts {
    totals
        .iter()
        .find(|counts| counts.task == task)
        .cloned()
        .unwrap_or_default()
}

/// A worker's heartbeat carries the job it runs with its progress; the history then holds each
/// task's outcomes with run-time and queue-wait histograms at both resolutions, and its recent
/// executions, newest first, with the worker that ran them.
async fn the_history_keeps_outcomes_run_times_and_executions(client: Client, label: &str) {
    let worker = Worker::builder(&client)
        .concurrency(4)
        // Heartbeats every 300 ms.
        .lease(Duration::from_millis(900))
        .shutdown_grace(Duration::from_secs(10))
        .build()
        .unwrap();
    let name = worker.consumer_name().to_owned();
    let worker = start_built(worker);

    let gate_name = format!("history-{label}");
    let stepping = stepwise::enqueue(&client, gate_name.clone(), 3)
        .await
        .unwrap();
    eventually(
        WAIT,
        "the running job and its progress in the heartbeat",
        || async {
            let stats = client.stats(Duration::from_secs(60)).await.unwrap();
            stats.workers.iter().any(|w| {
                w.name == name
                    && w.active.iter().any(|job| {
                        job.id == stepping.id().as_str()
                            && job.task == "it.progress"
                            && job
                                .progress
                                .as_ref()
                                .is_some_and(|p| (p.current, p.total) == (1, 3))
                    })
            })
        },
    )
    .await;
    gate(&gate_name).notify_one();
    assert_eq!(stepping.wait(WAIT).await.unwrap(), 3);

    let ledger = format!("history-timed-{label}");
    for _ in 0..5 {
        timed::enqueue(&client, ledger.clone(), 60)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
    }
    // Two attempts: retried once, then failed for good.
    let twice = flaky::enqueue_with(&client, EnqueueOptions::new().retries(1))
        .await
        .unwrap();
    assert!(matches!(
        twice.wait(WAIT).await,
        Err(Error::JobFailed { .. })
    ));

    eventually(WAIT, "the counts reach the history", || async {
        let totals = client
            .metrics(Duration::from_secs(3600))
            .await
            .unwrap()
            .totals();
        totals_of(&totals, "it.timed").succeeded == 5 && totals_of(&totals, "it.flaky").failed == 2
    })
    .await;
    let hour = client.metrics(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(hour.resolution, Resolution::Minute);
    assert!(
        (61..=62).contains(&hour.points.len()),
        "a point per minute, empty ones too: {}",
        hour.points.len()
    );
    assert!(
        hour.points
            .windows(2)
            .all(|w| w[1].at_ms - w[0].at_ms == 60_000)
    );
    let totals = hour.totals();
    let timed = totals_of(&totals, "it.timed");
    assert_eq!((timed.run_time.count(), timed.queue_wait.count()), (5, 5));
    let p50 = timed.run_time.quantile(0.5).unwrap();
    assert!(
        p50 > Duration::from_millis(50) && p50 <= Duration::from_millis(100),
        "60 ms runs fall in (50 ms, 100 ms]: {p50:?}"
    );
    assert!(timed.run_time.sum() >= Duration::from_millis(300));
    let flaky = totals_of(&totals, "it.flaky");
    assert_eq!(
        (
            flaky.failed,
            flaky.retried,
            flaky.dead_lettered,
            flaky.run_time.count()
        ),
        (2, 1, 1, 2)
    );
    // The totals, which never expire, hold the same.
    let lifetime = client.metric_totals().await.unwrap();
    assert_eq!(totals_of(&lifetime, "it.timed"), timed);
    // A week comes in ten-minute buckets, with the same counts.
    let week = client
        .metrics(Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(week.resolution, Resolution::TenMinutes);
    assert_eq!(week.points.len(), 7 * 24 * 6 + 1);
    assert_eq!(totals_of(&week.totals(), "it.timed"), timed);

    let recent = client.recent_executions("it.flaky", 10).await.unwrap();
    let seen: Vec<(&str, u32, ExecutionOutcome, &str)> = recent
        .iter()
        .map(|e| (e.job_id.as_str(), e.attempt, e.outcome, e.worker.as_str()))
        .collect();
    let id = twice.id().as_str();
    assert_eq!(
        seen,
        [
            (id, 1, ExecutionOutcome::Failed, name.as_str()),
            (id, 0, ExecutionOutcome::Retried, name.as_str())
        ],
        "newest first"
    );
    let timed_runs = client.recent_executions("it.timed", 3).await.unwrap();
    assert_eq!(timed_runs.len(), 3);
    assert!(
        timed_runs
            .windows(2)
            .all(|w| w[0].finished_ms >= w[1].finished_ms)
    );
    assert!(
        timed_runs
            .iter()
            .all(|e| e.outcome == ExecutionOutcome::Succeeded && e.run_ms >= 60),
        "{timed_runs:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_runs_are_kept_with_their_slots_and_runs_by_hand_on_redis() {
    let ns = TestNamespace::new("schedule-runs");
    schedule_runs_are_kept_with_their_slots_and_runs_by_hand(ns.client().await, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_runs_are_kept_with_their_slots_and_runs_by_hand_in_memory() {
    schedule_runs_are_kept_with_their_slots_and_runs_by_hand(Client::memory(), "memory").await;
}

/// A real beat and worker: each run of a schedule is kept with its slot, job, outcome, run
/// time and worker, newest first; a run by hand goes out with the stored arguments and is
/// kept without a slot.
async fn schedule_runs_are_kept_with_their_slots_and_runs_by_hand(client: Client, label: &str) {
    let ledger = format!("schedule-runs-{label}");
    let worker = Worker::builder(&client)
        .concurrency(2)
        .lease(Duration::from_millis(900))
        .shutdown_grace(Duration::from_secs(10))
        .build()
        .unwrap();
    let name = worker.consumer_name().to_owned();
    let worker = start_built(worker);
    let mut beat = Scheduler::builder(&client)
        .task_schedules(false)
        .build()
        .unwrap();
    let every = Schedule::every(Duration::from_secs(1)).unwrap();
    beat.add("monitor-tick", "it.timed", every, (ledger.clone(), 20u64))
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let beat = tokio::spawn(beat.run_until(async {
        let _ = stopped.await;
    }));

    eventually(WAIT, "two runs of the schedule are kept", || async {
        client
            .schedule_runs("monitor-tick", 10)
            .await
            .unwrap()
            .len()
            >= 2
    })
    .await;
    let runs = client.schedule_runs("monitor-tick", 10).await.unwrap();
    assert!(
        runs.windows(2).all(|w| w[0].slot_ms > w[1].slot_ms),
        "newest first, each with its slot: {runs:?}"
    );
    for run in &runs {
        assert!(run.slot_ms.is_some(), "{run:?}");
        assert!(
            run.job_id.starts_with("monitor-tick@"),
            "the slot's job: {run:?}"
        );
        assert_eq!(run.outcome, ExecutionOutcome::Succeeded);
        assert!(run.run_ms >= 20, "{run:?}");
        assert_eq!(run.worker, name);
    }

    client.pause_schedule("monitor-tick").await.unwrap();
    let by_hand = client.run_schedule("monitor-tick").await.unwrap();
    by_hand.wait(WAIT).await.unwrap();
    eventually(WAIT, "the run by hand is kept, without a slot", || async {
        client
            .schedule_runs("monitor-tick", 100)
            .await
            .unwrap()
            .iter()
            .any(|run| run.job_id == by_hand.id().as_str() && run.slot_ms.is_none())
    })
    .await;
    let err = client.run_schedule("nobody").await.unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
    let _ = stop.send(());
    beat.await.unwrap().unwrap();
    worker.stop().await;
}
