//! On a real Redis Cluster (three masters, a replica each, started by the test support): a
//! worker and a client connected with `redis+cluster://` run jobs, answer waiters, retry, and
//! keep their records and dead letters, as on one Redis; and carry on through a failover.

use std::time::{Duration, Instant};

use psw_tasks::testing::{RedisNode, TestCluster, TestNamespace};
use psw_tasks::{EnqueueOptions, State};
use psw_tasks_tests::{add, refuses};

use crate::processes::{ledger, signal, spawn_worker, wait_exit};
use crate::support::{start_built, start_worker};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_redis_cluster_runs_jobs_and_answers_their_waiters() {
    let ns = TestNamespace::on_cluster("cluster-jobs");
    assert!(ns.url().starts_with("redis+cluster://"), "{}", ns.url());
    let client = ns.client().await;
    let worker = start_worker(&client, 8);
    let mut handles = Vec::new();
    for n in 0..200 {
        handles.push(add::enqueue(&client, n, 1).await.unwrap());
    }
    for (n, handle) in handles.into_iter().enumerate() {
        // Answered through the finished channel, subscribed on one node and published on
        // whichever node the command went to.
        assert_eq!(handle.wait(WAIT).await.unwrap(), n as i64 + 1);
    }
    let failing = refuses::enqueue(&client, "no".to_owned()).await.unwrap();
    assert!(failing.wait(WAIT).await.is_err());
    let record = failing.record().await.unwrap().unwrap();
    assert_eq!(record.state, State::Failure);
    let letters = client.dead_letters().list(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].job_id.as_deref(), Some(failing.id().as_str()));
    worker.stop().await;
}

/// kill -9 of the master that holds the namespace's slot, while producers enqueue and two
/// worker processes run jobs: the cluster promotes its replica, and both carry on without a
/// restart. Replication is asynchronous, so what the old master acknowledged in its last
/// moment may be gone: the test counts it (and the jobs run twice because an acknowledgement
/// was lost) and bounds it; docs/cluster.md reports the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_workers_and_producers_carry_on() {
    let cluster = TestCluster::start().unwrap_or_else(|why| panic!("no Redis Cluster: {why}"));
    let ns = TestNamespace::on(cluster, "failover");
    let slot = format!("{{{}}}", ns.name());
    run_through_a_failover(&ns, || cluster.master_of(&slot)).await;
}

/// Producers enqueue and two worker processes run jobs on `ns` for 14 s; 4 s in, the master
/// `master()` names is killed (-9). Asserts that a new master took over, that every job
/// enqueued after the kill ran, that the workers carried on, and bounds the jobs lost.
pub(crate) async fn run_through_a_failover(
    ns: &TestNamespace,
    master: impl Fn() -> Result<RedisNode, String>,
) {
    let key = format!("{{{}}}:ledger", ns.name());
    let client = ns.client().await;
    let envs = [("PSW_LEASE", "2s"), ("PSW_WORKER_CONCURRENCY", "10")];
    let mut workers = [
        KilledOnDrop(spawn_worker(ns, &envs)),
        KilledOnDrop(spawn_worker(ns, &envs)),
    ];
    let old = master().unwrap();

    let started = Instant::now();
    let mut enqueued: Vec<String> = Vec::new();
    let mut refused = 0u32;
    let mut killed: Option<(usize, Instant)> = None;
    let mut resumed: Option<Duration> = None;
    while started.elapsed() < Duration::from_secs(14) {
        if killed.is_none() && started.elapsed() >= Duration::from_secs(4) {
            let status = std::process::Command::new("kill")
                .args(["-KILL", &old.pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill the master {}", old.url);
            killed = Some((enqueued.len(), Instant::now()));
        }
        // Bounded: an enqueue waits while the cluster moves the slot, not forever.
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            client.enqueue_by_name::<()>(
                "it.count_redis",
                &(key.clone(), 0u64),
                EnqueueOptions::new(),
            ),
        )
        .await;
        match sent {
            Ok(Ok(handle)) => {
                if let (Some((before, at)), None) = (killed, resumed)
                    && enqueued.len() > before
                {
                    resumed = Some(at.elapsed());
                }
                enqueued.push(handle.id().to_string());
            }
            Ok(Err(_)) | Err(_) => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (before_kill, _) = killed.expect("the master was killed");
    let resumed = resumed.expect("the producer enqueued again after the failover");
    let new = master().unwrap();
    assert_ne!(new.url, old.url, "a replica took over");

    // Wait for the jobs to run: until all have, or none more for 10 s.
    let mut ran = ledger(&key);
    let mut quiet_since = Instant::now();
    while enqueued.iter().any(|id| !ran.contains_key(id))
        && quiet_since.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = ledger(&key);
        if now.len() > ran.len() {
            quiet_since = Instant::now();
        }
        ran = now;
    }
    let lost: Vec<usize> = (0..enqueued.len())
        .filter(|&index| !ran.contains_key(&enqueued[index]))
        .collect();
    let twice = ran.values().filter(|&&runs| runs > 1).count();
    eprintln!(
        "failover: {} enqueued ({before_kill} before the kill), {refused} enqueues refused, \
         enqueuing again {resumed:?} after the kill, {} lost {lost:?}, {twice} run twice",
        enqueued.len(),
        lost.len(),
    );
    // Jobs enqueued after the failover all ran: the workers carried on.
    assert!(
        lost.iter().all(|&index| index < before_kill),
        "a job enqueued after the failover was lost: {lost:?} (kill at {before_kill})"
    );
    // The loss window is what replication had not copied when the master died: the last
    // few ms of writes, at ~150 enqueues/s a handful of jobs at most.
    assert!(lost.len() <= 20, "{} jobs lost", lost.len());
    for KilledOnDrop(worker) in &mut workers {
        assert!(
            worker.try_wait().unwrap().is_none(),
            "a worker exited during the failover"
        );
        signal(worker, "TERM");
        assert!(wait_exit(worker, Duration::from_secs(30)).success());
    }
}

/// The master of the namespace's slot gone with no replica to take over, while a worker runs
/// jobs: the cluster answers `CLUSTERDOWN`, and SIGTERM still ends the worker within its grace
/// and the bound of the requests it gives up on, as on one Redis. Without an overall bound on
/// each cluster request, the client retried a request 16 times, its waits growing to minutes,
/// and such a worker was seen still running minutes after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_worker_whose_slot_has_no_master() {
    let cluster = TestCluster::start().unwrap_or_else(|why| panic!("no Redis Cluster: {why}"));
    let ns = TestNamespace::on(cluster, "cluster-down");
    let key = format!("{{{}}}:ledger", ns.name());
    let client = ns.client().await;
    let mut worker = KilledOnDrop(spawn_worker(
        &ns,
        &[("PSW_SHUTDOWN_GRACE", "2s"), ("PSW_LEASE", "3s")],
    ));
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(
            client
                .enqueue_by_name::<()>(
                    "it.count_redis",
                    &(key.clone(), 1_000u64),
                    EnqueueOptions::new(),
                )
                .await
                .unwrap(),
        );
    }
    crate::support::eventually(WAIT, "a job started", || async {
        let mut started = false;
        for handle in &handles {
            started |= handle.state().await.unwrap() == State::Started;
        }
        started
    })
    .await;
    cluster.forbid_failover().unwrap();
    let master = cluster.master_of(&format!("{{{}}}", ns.name())).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &master.pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    crate::support::eventually(WAIT, "the cluster reports the slot down", || {
        std::future::ready(cluster.is_down())
    })
    .await;
    signal(&worker.0, "TERM");
    let sent = Instant::now();
    // Grace 2 s, then each store it gives up on is bounded by the command timeout (10 s).
    let status = wait_exit(&mut worker.0, Duration::from_secs(40));
    eprintln!(
        "a worker whose slot has no master exited {:?} after SIGTERM",
        sent.elapsed()
    );
    assert!(status.code().is_some(), "exited by itself: {status:?}");
}

/// A worker process that does not outlive a failed test (its cluster stops with the test
/// process, and a worker left behind would retry it for ever).
pub(crate) struct KilledOnDrop(pub(crate) std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many commands each reachable node of `cluster` refused with CROSSSLOT since it started
/// (`INFO errorstats`), by node.
fn crossslot_refusals(cluster: &TestCluster) -> Vec<(String, u64)> {
    let mut counts = Vec::new();
    for node in &cluster.nodes {
        let Ok(client) = redis::Client::open(node.as_str()) else {
            continue;
        };
        let Ok(mut conn) = client.get_connection() else {
            continue;
        };
        let Ok(info) = redis::cmd("INFO")
            .arg("errorstats")
            .query::<String>(&mut conn)
        else {
            continue;
        };
        let count = info
            .lines()
            .find_map(|line| line.strip_prefix("errorstat_CROSSSLOT:count="))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0);
        counts.push((node.clone(), count));
    }
    counts
}

/// Issue 15: key layout 2 puts each queue on a slot of its own, so every command, pipeline
/// and script the runtime sends must keep to one queue's keys or the namespace's. This walks
/// every kind of work over three queues (on three slots): plain, delayed, priority, fixed-id,
/// unique and debounced enqueues, runs, retries, time-outs, panics, cancels, pauses, stats,
/// lock listings, dead letters replayed and purged. Each step must succeed, and no node may
/// refuse a single command with CROSSSLOT meanwhile (`INFO errorstats`; the redis crate
/// refuses a cross-slot pipeline before sending it, which fails the step instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_keeps_to_one_slot_on_a_redis_cluster() {
    use psw_tasks_tests::{cancellable, fire_and_forget, panics, sleepy, unique_add, urgent};

    let cluster = psw_tasks::testing::cluster();
    let ns = TestNamespace::on(cluster, "one-slot");
    let slot = |key: String| redis::cluster_routing::Slot::for_key(key);
    let tags: std::collections::HashSet<_> = ["default", "levels", "low"]
        .iter()
        .map(|queue| slot(format!("{{{}:{queue}}}", ns.name())))
        .chain([slot(format!("{{{}}}", ns.name()))])
        .collect();
    assert_eq!(
        tags.len(),
        4,
        "the three queues and the namespace on four slots"
    );
    let before = crossslot_refusals(cluster);
    assert!(!before.is_empty(), "no cluster node answered INFO");

    let client = ns.client().await;
    let mut adds = Vec::new();
    for n in 0..20 {
        adds.push(add::enqueue(&client, n, 1).await.unwrap());
    }
    let delayed = add::enqueue_with(
        &client,
        EnqueueOptions::new().countdown(Duration::from_millis(300)),
        100,
        1,
    )
    .await
    .unwrap();
    let fixed = EnqueueOptions::new().job_id("walk-fixed");
    let once = add::enqueue_with(&client, fixed.clone(), 200, 1)
        .await
        .unwrap();
    let again = add::enqueue_with(&client, fixed, 200, 1).await.unwrap();
    assert_eq!(again.id(), once.id());
    let unique = unique_add::enqueue(&client, 1, 2).await.unwrap();
    assert!(
        unique_add::enqueue(&client, 1, 2)
            .await
            .unwrap()
            .is_duplicate()
    );
    let locks = client.unique_locks("", 10).await.unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0].job_id, unique.id().as_str());
    let lock = client.unique_lock(&locks[0].key).await.unwrap();
    assert_eq!(lock.map(|lock| lock.job_id), Some(unique.id().to_string()));
    let mut debounced = Vec::new();
    for n in 0..3 {
        let options = EnqueueOptions::new().debounce("walk", Duration::from_millis(200));
        debounced.push(
            add::enqueue_with(&client, options, 300 + n, 0)
                .await
                .unwrap(),
        );
    }
    let mut urgents = Vec::new();
    for n in 0..5 {
        urgents.push(urgent::enqueue(&client, format!("walk-{n}")).await.unwrap());
    }
    for n in 0..3 {
        fire_and_forget::enqueue(&client, format!("walk-{n}"))
            .await
            .unwrap();
    }
    let timed_out = sleepy::enqueue(&client, 2_000).await.unwrap();
    let panicking = panics::enqueue(&client, 7).await.unwrap();
    let cancelled = cancellable::enqueue(&client, 30).await.unwrap();
    assert!(client.pause_queue("low").await.unwrap());
    let stats = client.stats(Duration::from_secs(60)).await.unwrap();
    let names: Vec<&str> = stats
        .queues
        .iter()
        .map(|queue| queue.name.as_str())
        .collect();
    for queue in ["default", "levels", "low"] {
        assert!(names.contains(&queue), "{queue} in {names:?}");
    }

    let worker = start_built(
        psw_tasks::Worker::builder(&client)
            .queues(["default", "levels", "low"])
            .concurrency(8)
            .build()
            .unwrap(),
    );
    for (n, handle) in adds.into_iter().enumerate() {
        assert_eq!(handle.wait(WAIT).await.unwrap(), n as i64 + 1);
    }
    assert_eq!(delayed.wait(WAIT).await.unwrap(), 101);
    assert_eq!(once.wait(WAIT).await.unwrap(), 201);
    assert_eq!(unique.wait(WAIT).await.unwrap(), 3);
    assert_eq!(debounced.pop().unwrap().wait(WAIT).await.unwrap(), 302);
    for handle in urgents {
        handle.wait(WAIT).await.unwrap();
    }
    assert!(
        timed_out.wait(WAIT).await.is_err(),
        "timed out, retried, failed"
    );
    assert!(panicking.wait(WAIT).await.is_err());
    crate::support::eventually(WAIT, "the cancellable job to start", || async {
        cancelled.state().await.unwrap() == State::Started
    })
    .await;
    cancelled.cancel().await.unwrap();
    assert!(cancelled.wait(WAIT).await.unwrap(), "it saw its cancel");
    assert!(client.resume_queue("low").await.unwrap());

    let letters = client.dead_letters();
    let stored = letters.list(10).await.unwrap();
    assert_eq!(stored.len(), 2, "the time-out and the panic: {stored:?}");
    let replayed = letters.replay(&stored[0].entry_id).await.unwrap();
    let replayed = client.handle::<serde_json::Value>(replayed);
    assert!(replayed.wait(WAIT).await.is_err(), "it fails again");
    crate::support::eventually(WAIT, "the replayed job to be dead again", || async {
        letters.stats().await.unwrap().len == 2
    })
    .await;
    assert!(letters.purge().await.unwrap() >= 2);
    worker.stop().await;

    let after = crossslot_refusals(cluster);
    for (node, count) in &after {
        let was = before
            .iter()
            .find(|(known, _)| known == node)
            .map_or(0, |(_, count)| *count);
        assert_eq!(*count, was, "{node} refused commands with CROSSSLOT");
    }
}

/// Issue 15: a hot queue split over shards (`PSW_QUEUE_SHARDS=default=3`). Producers spread
/// its jobs evenly over the shards' streams, each on a slot of its own; a unique job keeps to
/// one shard, so its lock still holds; stats show one queue; and one worker reads every shard
/// until all are drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_spreads_over_slots_and_reads_as_one_queue() {
    use psw_tasks_tests::unique_add;

    let cluster = psw_tasks::testing::cluster();
    let ns = TestNamespace::on(cluster, "shards");
    let client = psw_tasks::Client::connect(&ns.config().with_queue_shards("default", 3))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for n in 0..300 {
        handles.push(add::enqueue(&client, n, 1).await.unwrap());
    }
    let streams = [
        ns.stream_key("default"),
        ns.stream_key("default:1"),
        ns.stream_key("default:2"),
    ];
    let slots: std::collections::HashSet<_> = streams
        .iter()
        .map(redis::cluster_routing::Slot::for_key)
        .collect();
    assert_eq!(slots.len(), 3, "each shard on a slot of its own");
    {
        let mut conn = ns.connection();
        for stream in &streams {
            let len: u64 = redis::cmd("XLEN").arg(stream).query(&mut *conn).unwrap();
            assert_eq!(len, 100, "{stream}: jobs spread round-robin");
        }
    }
    let unique = unique_add::enqueue(&client, 1, 2).await.unwrap();
    for _ in 0..5 {
        assert!(
            unique_add::enqueue(&client, 1, 2)
                .await
                .unwrap()
                .is_duplicate(),
            "the unique key keeps to one shard, where its lock is"
        );
    }
    let stats = client.stats(Duration::from_secs(60)).await.unwrap();
    let queues: Vec<(&str, u64)> = stats
        .queues
        .iter()
        .map(|queue| (queue.name.as_str(), queue.ready))
        .collect();
    assert_eq!(queues, [("default", 301)], "one queue, its shards summed");

    let worker = start_worker(&client, 8);
    for (n, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.wait(WAIT).await.unwrap(), n as i64 + 1);
    }
    assert_eq!(unique.wait(WAIT).await.unwrap(), 3);
    worker.stop().await;
    let mut conn = ns.connection();
    for stream in &streams {
        let len: u64 = redis::cmd("XLEN").arg(stream).query(&mut *conn).unwrap();
        assert_eq!(len, 0, "{stream} drained");
    }
}
