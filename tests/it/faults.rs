//! Nothing lost, round two: faults found by trying the system from outside, each with the test
//! that showed it (`docs/reliability.md` has a row for each).

use std::time::Duration;

use psw_tasks::EnqueueOptions;
use psw_tasks::testing::TestNamespace;

use crate::support::{eventually, start_worker, xadd};

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
