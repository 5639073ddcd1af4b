//! Through Redis Sentinel (a master, its replica and three sentinels, started by the test
//! support): a worker and a client connected with `redis+sentinel://` run jobs as on one
//! Redis, and move to the new master by themselves when the sentinels fail the old one over.

use std::time::Duration;

use psw_tasks::testing::{TestNamespace, TestSentinels};
use psw_tasks::{EnqueueOptions, State};
use psw_tasks_tests::{add, refuses};

use crate::cluster::run_through_a_failover;
use crate::support::start_worker;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_through_sentinels_runs_jobs_and_answers_their_waiters() {
    let sentinels = TestSentinels::start().unwrap_or_else(|why| panic!("no sentinels: {why}"));
    let ns = TestNamespace::on_sentinels(sentinels, "sentinel-jobs");
    assert!(ns.url().starts_with("redis+sentinel://"), "{}", ns.url());
    let client = ns.client().await;
    let worker = start_worker(&client, 8);
    let mut handles = Vec::new();
    for n in 0..100 {
        handles.push(add::enqueue(&client, n, 1).await.unwrap());
    }
    for (n, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.wait(WAIT).await.unwrap(), n as i64 + 1);
    }
    let failing = refuses::enqueue(&client, "no".to_owned()).await.unwrap();
    assert!(failing.wait(WAIT).await.is_err());
    assert_eq!(
        failing.record().await.unwrap().unwrap().state,
        State::Failure
    );
    assert_eq!(client.dead_letters().list(10).await.unwrap().len(), 1);
    // The keys are on the master the sentinels name, and copied to its replica.
    let master = sentinels.master().unwrap();
    assert_eq!(master.url, sentinels.servers[0]);
    worker.stop().await;
}

/// kill -9 of the master while producers enqueue and two worker processes run jobs: the
/// sentinels promote the replica, and the producer and the workers, asking the sentinels again
/// when their server stops answering, carry on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_sentinels_fails_over_and_workers_and_producers_carry_on() {
    let sentinels = TestSentinels::start().unwrap_or_else(|why| panic!("no sentinels: {why}"));
    let ns = TestNamespace::on_sentinels(sentinels, "sentinel-failover");
    run_through_a_failover(&ns, || sentinels.master()).await;
}

/// A failover with the old master still up (`SENTINEL FAILOVER`): it is demoted to a replica
/// and answers writes with READONLY, so a connection that only reconnected to the same
/// address would fail every write from then on. The client asks the sentinels when its
/// connection is dropped or refused, and its next enqueue reaches the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_the_new_master_when_the_old_one_is_demoted() {
    let sentinels = TestSentinels::start().unwrap_or_else(|why| panic!("no sentinels: {why}"));
    let ns = TestNamespace::on_sentinels(sentinels, "sentinel-readonly");
    let client = ns.client().await;
    let key = format!("{{{}}}:ledger", ns.name());
    let first = client
        .enqueue_by_name::<()>(
            "it.count_redis",
            &(key.clone(), 0u64),
            EnqueueOptions::new(),
        )
        .await
        .unwrap();
    // A failover by hand: the sentinels promote the replica and demote the old master, which
    // stays up and answers READONLY to writes.
    let old = sentinels.master().unwrap();
    let replies: String = redis::Client::open(sentinels.sentinels[0].as_str())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| {
            redis::cmd("SENTINEL")
                .arg("failover")
                .arg("psw")
                .query(&mut c)
        })
        .unwrap();
    assert_eq!(replies, "OK");
    crate::support::eventually(WAIT, "the sentinels name the replica", || {
        std::future::ready(sentinels.master().is_ok_and(|now| now.url != old.url))
    })
    .await;
    crate::support::eventually(WAIT, "the old master is a replica", || {
        std::future::ready(
            redis::Client::open(old.url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("ROLE").query::<Vec<redis::Value>>(&mut c))
                .is_ok_and(|role| {
                    role.first() == Some(&redis::Value::BulkString(b"slave".to_vec()))
                }),
        )
    })
    .await;
    // The first command after the switch may find its connection closed by the demotion
    // (sentinels kill the old master's clients); the one after is refused READONLY or sent
    // to the new master, and succeeds either way.
    let mut sent = None;
    for _ in 0..3 {
        if let Ok(handle) = client
            .enqueue_by_name::<()>(
                "it.count_redis",
                &(key.clone(), 0u64),
                EnqueueOptions::new(),
            )
            .await
        {
            sent = Some(handle);
            break;
        }
    }
    let second = sent.expect("an enqueue after the failover succeeded");
    let worker = start_worker(&client, 2);
    for handle in [first, second] {
        handle.wait(WAIT).await.unwrap();
    }
    worker.stop().await;
}
