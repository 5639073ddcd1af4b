//! `Client::stats` and the `stats` command against real workers: heartbeats, outcome counts
//! per task, queue numbers, and workers that stop or die.

use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{ClusterStats, EnqueueOptions, Error, TaskCounts, Worker};
use psw_tasks_tests::{add, flaky, refuses};

use crate::processes::{run_cli, signal, spawn_worker, wait_exit};
use crate::support::{eventually, start_built};

const WAIT: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// A short lease, so that heartbeats (a third of it) come every 300 ms.
const LEASE: Duration = Duration::from_millis(900);

fn task<'s>(stats: &'s ClusterStats, name: &str) -> Option<&'s TaskCounts> {
    stats.tasks.iter().find(|t| t.task == name)
}

/// (succeeded, failed, retried, dead_lettered) of a task; zeros when it has none.
fn counts(stats: &ClusterStats, name: &str) -> (u64, u64, u64, u64) {
    task(stats, name).map_or((0, 0, 0, 0), |t| {
        (t.succeeded, t.failed, t.retried, t.dead_lettered)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_worker_and_its_outcomes_per_task() {
    let ns = TestNamespace::new("stats");
    let client = ns.client().await;
    let worker = Worker::builder(&client)
        .concurrency(4)
        .lease(LEASE)
        .shutdown_grace(Duration::from_secs(10))
        .build()
        .unwrap();
    let name = worker.consumer_name().to_owned();
    let worker = start_built(worker);

    for i in 0..3 {
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
    let refused = refuses::enqueue(&client, "no".into()).await.unwrap();
    assert!(matches!(
        refused.wait(WAIT).await,
        Err(Error::JobFailed { .. })
    ));
    // Two attempts: the first is retried 200 ms later, the second fails for good.
    let twice = flaky::enqueue_with(&client, EnqueueOptions::new().retries(1))
        .await
        .unwrap();
    assert!(matches!(
        twice.wait(WAIT).await,
        Err(Error::JobFailed { .. })
    ));

    // The counts arrive with the next heartbeat.
    eventually(WAIT, "every outcome counted", || async {
        let stats = client.stats(WINDOW).await.unwrap();
        counts(&stats, "it.add") == (3, 0, 0, 0)
            && counts(&stats, "it.refuses") == (0, 1, 0, 1)
            && counts(&stats, "it.flaky") == (0, 2, 1, 1)
            && stats
                .workers
                .iter()
                .any(|w| w.name == name && w.succeeded == 3)
    })
    .await;
    let stats = client.stats(WINDOW).await.unwrap();
    assert_eq!(stats.window, WINDOW);
    assert_eq!(task(&stats, "it.add").unwrap().failure_rate(), Some(0.0));
    assert_eq!(task(&stats, "it.flaky").unwrap().failure_rate(), Some(1.0));
    assert_eq!(stats.dead.len, 2);

    let me = stats.workers.iter().find(|w| w.name == name).unwrap();
    assert!(me.alive, "{me:?}");
    assert_eq!(me.heartbeat_ms, 300);
    assert_eq!(me.concurrency, 4);
    assert!(me.queues.contains(&"default".to_owned()), "{me:?}");
    assert_eq!(
        (me.succeeded, me.failed, me.retried, me.dead_lettered),
        (3, 3, 1, 2)
    );
    assert!(me.started_ms <= me.seen_ms && me.seen_ms <= stats.at_ms + 1000);

    let default = stats.queues.iter().find(|q| q.name == "default").unwrap();
    assert_eq!(
        (default.ready, default.pending, default.delayed),
        (0, 0, 0),
        "{default:?}"
    );
    assert_eq!(default.consumers, 1);

    // A graceful stop stores the last counts and removes the worker.
    worker.stop().await;
    let stats = client.stats(WINDOW).await.unwrap();
    assert!(stats.workers.is_empty(), "{:?}", stats.workers);
    assert_eq!(counts(&stats, "it.add"), (3, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_command_prints_json_and_a_killed_worker_stops_being_alive() {
    let ns = TestNamespace::new("stats-cli");
    let client = ns.client().await;
    let mut worker = spawn_worker(&ns, &[("PSW_LEASE", "900ms")]);
    let handle = add::enqueue(&client, 40, 2).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap(), 42);

    eventually(WAIT, "the command shows the job's success", || async {
        let (ok, out, err) = run_cli(&ns, &["stats", "--window", "5m"], &[]);
        assert!(ok, "{err}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["window_ms"], 300_000);
        json["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["task"] == "it.add" && t["succeeded"] == 1 && t["failure_rate"] == 0.0)
            && json["workers"][0]["alive"] == true
    })
    .await;
    let (ok, _, err) = run_cli(&ns, &["stats", "--window", "soon"], &[]);
    assert!(!ok);
    assert!(err.contains("--window"), "{err}");

    // Killed: no chance to remove itself, so it stays listed but is no longer alive once three
    // heartbeats are missed.
    signal(&worker, "KILL");
    wait_exit(&mut worker, WAIT);
    eventually(WAIT, "the killed worker is not alive", || async {
        let stats = client.stats(WINDOW).await.unwrap();
        stats.workers.len() == 1 && !stats.workers[0].alive
    })
    .await;
}
