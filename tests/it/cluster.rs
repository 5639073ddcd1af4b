//! On a real Redis Cluster (three masters, a replica each, started by the test support): a
//! worker and a client connected with `redis+cluster://` run jobs, answer waiters, retry, and
//! keep their records and dead letters, as on one Redis.

use std::time::Duration;

use psw_tasks::State;
use psw_tasks::testing::TestNamespace;
use psw_tasks_tests::{add, refuses};

use crate::support::start_worker;

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
