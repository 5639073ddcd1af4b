//! Broker behaviour, written once and run against both brokers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryBroker;
use super::redis::RedisBroker;
use super::{Broker, NewJob, Settlement, Write};
use crate::envelope::{JobId, now_ms};
use crate::testing::TestNamespace;

const Q: &str = "jobs";
const TTL: Duration = Duration::from_secs(60);

fn queues() -> Vec<String> {
    vec![Q.to_owned()]
}

fn job(payload: &[u8], due_ms: Option<i64>) -> NewJob {
    NewJob {
        queue: Q.to_owned(),
        payload: payload.to_vec(),
        due_ms,
    }
}

fn settle(queue: &Arc<str>, entry_id: &str) -> Settlement {
    Settlement {
        queue: queue.clone(),
        entry_id: entry_id.to_owned(),
        record: None,
        finished: None,
        retry: None,
        dead: None,
    }
}

/// Runs one behaviour against the memory broker and against Redis in a fresh namespace.
macro_rules! both_brokers {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(std::sync::Arc::new(super::MemoryBroker::new())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let ns = super::TestNamespace::new(stringify!($name));
                    let broker = super::RedisBroker::connect(ns.url(), "REDIS_URL", None, ns.name())
                        .await
                        .expect("connect to the test Redis");
                    super::$name(std::sync::Arc::new(broker)).await;
                }
            )*
        }
    };
}

both_brokers!(
    each_job_goes_to_one_consumer,
    fetch_waits_for_an_arrival,
    delayed_jobs_wait_for_their_due_time,
    concurrent_promoters_move_each_job_once,
    settling_stores_the_record_acks_and_announces,
    expired_leases_are_reclaimed_and_the_old_owner_cannot_renew,
    renewed_leases_are_not_reclaimed,
    retries_go_through_the_delayed_set,
    records_expire,
);

async fn each_job_goes_to_one_consumer(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let jobs: Vec<NewJob> = (0..10u8).map(|i| job(&[i], None)).collect();
    broker.push(jobs).await.unwrap();
    let a = broker
        .fetch("a", &queues(), 6, Duration::from_millis(50))
        .await
        .unwrap();
    let b = broker
        .fetch("b", &queues(), 100, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 4);
    let payloads: Vec<u8> = a.iter().chain(&b).map(|d| d.payload[0]).collect();
    assert_eq!(
        payloads,
        (0..10).collect::<Vec<u8>>(),
        "in order, once each"
    );
    assert!(a.iter().all(|d| &*d.queue == Q));
    let none = broker
        .fetch("c", &queues(), 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn fetch_waits_for_an_arrival(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let producer = broker.clone();
    let push = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        producer.push(vec![job(b"late", None)]).await.unwrap();
    });
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_secs(5))
        .await
        .unwrap();
    push.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"late");
}

async fn delayed_jobs_wait_for_their_due_time(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let due = now_ms() + 60_000;
    broker.push(vec![job(b"later", Some(due))]).await.unwrap();
    let promoted = broker.promote_due(Q, now_ms(), 100).await.unwrap();
    assert_eq!(promoted.moved, 0);
    assert_eq!(promoted.next_due_ms, Some(due));
    assert!(
        broker
            .fetch("a", &queues(), 10, Duration::from_millis(20))
            .await
            .unwrap()
            .is_empty()
    );
    let promoted = broker.promote_due(Q, due, 100).await.unwrap();
    assert_eq!(promoted.moved, 1);
    assert_eq!(promoted.next_due_ms, None);
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_millis(20))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"later");
}

async fn concurrent_promoters_move_each_job_once(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let due = now_ms() + 60_000;
    let jobs: Vec<NewJob> = (0..300u32)
        .map(|i| job(&i.to_be_bytes(), Some(due)))
        .collect();
    broker.push(jobs).await.unwrap();
    let promoters: Vec<_> = (0..4)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let mut moved = 0;
                loop {
                    let promoted = broker.promote_due(Q, due, 7).await.unwrap();
                    moved += promoted.moved;
                    if promoted.moved == 0 {
                        return moved;
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for promoter in promoters {
        total += promoter.await.unwrap();
    }
    assert_eq!(total, 300);
    let got = broker
        .fetch("a", &queues(), 1000, Duration::from_millis(50))
        .await
        .unwrap();
    let unique: HashSet<Vec<u8>> = got.iter().map(|d| d.payload.clone()).collect();
    assert_eq!(got.len(), 300);
    assert_eq!(unique.len(), 300);
}

async fn settling_stores_the_record_acks_and_announces(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let mut events = broker.finished_events().await.unwrap();
    // The Redis listener subscribes in the background: give it a moment before announcing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.push(vec![job(b"x", None)]).await.unwrap();
    let got = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    let id = JobId::generate();
    let mut settlement = settle(&got[0].queue, &got[0].entry_id);
    settlement.record = Some((id.clone(), b"record".to_vec()));
    settlement.finished = Some(id.clone());
    broker
        .apply(&[Write::Settle(settlement)], TTL)
        .await
        .unwrap();
    assert_eq!(
        broker.load_record(id.as_str()).await.unwrap().as_deref(),
        Some(&b"record"[..])
    );
    let announced = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("announced in time")
        .unwrap();
    assert_eq!(&*announced, id.as_str());
    let reclaimed = broker.reclaim("b", Q, Duration::ZERO, 10).await.unwrap();
    assert!(reclaimed.is_empty(), "an acknowledged job is not pending");
}

async fn expired_leases_are_reclaimed_and_the_old_owner_cannot_renew(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    broker.push(vec![job(b"x", None)]).await.unwrap();
    let got = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let reclaimed = broker
        .reclaim("b", Q, Duration::from_millis(100), 10)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].entry_id, got[0].entry_id);
    assert_eq!(reclaimed[0].payload, b"x");
    let ids = vec![got[0].entry_id.clone()];
    assert_eq!(broker.renew("a", Q, &ids).await.unwrap(), 0);
    assert_eq!(broker.renew("b", Q, &ids).await.unwrap(), 1);
}

async fn renewed_leases_are_not_reclaimed(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    broker.push(vec![job(b"x", None)]).await.unwrap();
    let got = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    let ids = vec![got[0].entry_id.clone()];
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(broker.renew("a", Q, &ids).await.unwrap(), 1);
        let reclaimed = broker
            .reclaim("b", Q, Duration::from_millis(500), 10)
            .await
            .unwrap();
        assert!(reclaimed.is_empty(), "a renewed lease is not taken over");
    }
}

async fn retries_go_through_the_delayed_set(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    broker.push(vec![job(b"first", None)]).await.unwrap();
    let got = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    let due = now_ms() + 60_000;
    let mut settlement = settle(&got[0].queue, &got[0].entry_id);
    settlement.retry = Some(job(b"second", Some(due)));
    broker
        .apply(&[Write::Settle(settlement)], TTL)
        .await
        .unwrap();
    assert!(
        broker
            .fetch("a", &queues(), 1, Duration::from_millis(20))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(broker.promote_due(Q, due, 10).await.unwrap().moved, 1);
    let again = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(again[0].payload, b"second");
}

async fn records_expire(broker: Arc<dyn Broker>) {
    let id = JobId::generate();
    broker
        .apply(
            &[Write::Record {
                id: id.clone(),
                record: b"r".to_vec(),
            }],
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert!(broker.load_record(id.as_str()).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(broker.load_record(id.as_str()).await.unwrap().is_none());
}
