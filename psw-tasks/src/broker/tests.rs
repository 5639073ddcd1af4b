//! Broker behaviour, written once and run against both brokers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryBroker;
use super::redis::RedisBroker;
use super::{BeatAdvance, Broker, NewJob, Settlement, Write};
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

/// Push one job and fetch it as `consumer`, which then holds it.
async fn hold_one(broker: &dyn Broker, consumer: &str) -> super::Delivery {
    broker.push(vec![job(b"x", None)]).await.unwrap();
    let mut got = broker
        .fetch(consumer, &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the job just pushed");
    got.remove(0)
}

fn settle(queue: &Arc<str>, entry_id: &str) -> Settlement {
    Settlement {
        queue: queue.clone(),
        entry_id: entry_id.to_owned(),
        deliveries: 1,
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
                    super::$name(std::sync::Arc::new(super::MemoryBroker::new().with_dead_letter_cap(3))).await;
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
                        .expect("connect to the test Redis")
                        .with_dead_letter_cap(3);
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
    writes_of_a_lost_delivery_are_fenced,
    a_consumer_never_takes_back_its_own_entries,
    dead_letters_are_kept_capped_replayed_and_purged,
    beat_registration_keeps_the_last_slot,
    beat_advance_is_a_compare_and_set,
    beat_lease_has_one_holder,
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
    let held = hold_one(broker.as_ref(), "a").await;
    let id = JobId::generate();
    let mut settlement = settle(&held.queue, &held.entry_id);
    settlement.record = Some((id.clone(), b"record".to_vec()));
    settlement.finished = Some(id.clone());
    broker
        .apply("a", &[Write::Settle(settlement)], TTL)
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
    let held = hold_one(broker.as_ref(), "a").await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let reclaimed = broker
        .reclaim("b", Q, Duration::from_millis(100), 10)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].entry_id, held.entry_id);
    assert_eq!(reclaimed[0].payload, b"x");
    let ids = vec![held.entry_id.clone()];
    assert_eq!(broker.renew("a", Q, &ids).await.unwrap(), 0);
    assert_eq!(broker.renew("b", Q, &ids).await.unwrap(), 1);
}

async fn renewed_leases_are_not_reclaimed(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let held = hold_one(broker.as_ref(), "a").await;
    let ids = vec![held.entry_id.clone()];
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
        .apply("a", &[Write::Settle(settlement)], TTL)
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
    broker.prepare(&queues()).await.unwrap();
    let held = hold_one(broker.as_ref(), "a").await;
    let id = JobId::generate();
    let write = Write::Record {
        queue: held.queue.clone(),
        entry_id: held.entry_id.clone(),
        deliveries: held.deliveries,
        id: id.clone(),
        record: b"r".to_vec(),
    };
    let applied = broker
        .apply("a", &[write], Duration::from_millis(50))
        .await
        .unwrap();
    assert!(applied.fenced.is_empty());
    assert!(broker.load_record(id.as_str()).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(broker.load_record(id.as_str()).await.unwrap().is_none());
}

async fn writes_of_a_lost_delivery_are_fenced(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let first = hold_one(broker.as_ref(), "a").await;
    assert_eq!(first.deliveries, 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let second = broker
        .reclaim("b", Q, Duration::from_millis(50), 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.entry_id, first.entry_id);
    assert_eq!(second.deliveries, 2);

    // The paused first owner comes back: its record and acknowledgement are refused.
    let stale_id = JobId::from("stale");
    let mut stale = Settlement::of(&first);
    stale.record = Some((stale_id.clone(), b"stale".to_vec()));
    let applied = broker
        .apply("a", &[Write::Settle(stale)], TTL)
        .await
        .unwrap();
    assert_eq!(applied.fenced, vec![0]);
    assert!(broker.load_record("stale").await.unwrap().is_none());
    // A write naming the right owner but an older delivery is refused too.
    let mut old = Settlement::of(&first);
    old.record = Some((stale_id, b"stale".to_vec()));
    let applied = broker.apply("b", &[Write::Settle(old)], TTL).await.unwrap();
    assert_eq!(applied.fenced, vec![0]);

    // The new owner settles; its write stands and the entry is gone.
    let mut fresh = Settlement::of(&second);
    fresh.record = Some((JobId::from("fresh"), b"fresh".to_vec()));
    let applied = broker
        .apply("b", &[Write::Settle(fresh)], TTL)
        .await
        .unwrap();
    assert!(applied.fenced.is_empty());
    assert_eq!(
        broker.load_record("fresh").await.unwrap().as_deref(),
        Some(&b"fresh"[..])
    );
    assert!(
        broker
            .reclaim("c", Q, Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_consumer_never_takes_back_its_own_entries(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    hold_one(broker.as_ref(), "a").await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    // `a` was paused past its lease: it must not start a second copy of its own job.
    let own = broker
        .reclaim("a", Q, Duration::from_millis(50), 10)
        .await
        .unwrap();
    assert!(own.is_empty(), "{own:?}");
    let other = broker
        .reclaim("b", Q, Duration::from_millis(50), 10)
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].deliveries, 2);
}

fn letter(n: u8) -> super::DeadLetter {
    super::DeadLetter {
        job_id: Some(JobId::from(format!("job-{n}"))),
        task: Some("t".to_owned()),
        reason: "retries_exhausted",
        error: format!("boom {n}"),
        errors: vec![0x90],
        payload: vec![n],
        truncated: false,
    }
}

async fn dead_letters_are_kept_capped_replayed_and_purged(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let jobs: Vec<NewJob> = (0..4u8).map(|i| job(&[i], None)).collect();
    broker.push(jobs).await.unwrap();
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_millis(50))
        .await
        .unwrap();
    let writes: Vec<Write> = got
        .iter()
        .zip(0u8..)
        .map(|(delivery, n)| {
            let mut settlement = Settlement::of(delivery);
            settlement.dead = Some(letter(n));
            Write::Settle(settlement)
        })
        .collect();
    let applied = broker.apply("a", &writes, TTL).await.unwrap();
    assert_eq!(applied.dead_entries.len(), 4);
    // The cap (3 in these tests) removed the oldest, and says so.
    assert_eq!(applied.dead_trimmed, 1);
    assert_eq!(broker.dead_stats().await.unwrap(), (3, 1));
    let listed = broker.dead_range("-", 10).await.unwrap();
    let errors: Vec<String> = listed
        .iter()
        .map(|(_, fields)| {
            let error = fields.iter().find(|(name, _)| name == "error").unwrap();
            String::from_utf8(error.1.clone()).unwrap()
        })
        .collect();
    assert_eq!(errors, ["boom 1", "boom 2", "boom 3"]);
    let after_first = broker
        .dead_range(&format!("({}", listed[0].0), 10)
        .await
        .unwrap();
    assert_eq!(after_first.len(), 2);

    assert!(
        broker
            .dead_replay(&listed[0].0, Q, "job-1", b"again".to_vec())
            .await
            .unwrap()
    );
    assert!(
        !broker
            .dead_replay(&listed[0].0, Q, "job-1", b"twice".to_vec())
            .await
            .unwrap(),
        "once only"
    );
    let again = broker
        .fetch("a", &queues(), 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, b"again");
    assert_eq!(broker.dead_purge().await.unwrap(), 2);
    assert_eq!(broker.dead_stats().await.unwrap(), (0, 1));
}

async fn beat_registration_keeps_the_last_slot(broker: Arc<dyn Broker>) {
    assert!(broker.beat_state("nightly").await.unwrap().is_empty());
    let definition = [("schedule", "0 3 * * *".to_owned())];
    broker
        .beat_register("nightly", 1000, &definition)
        .await
        .unwrap();
    let changed = [("schedule", "0 4 * * *".to_owned())];
    broker
        .beat_register("nightly", 2000, &changed)
        .await
        .unwrap();
    broker.beat_register("hourly", 5, &[]).await.unwrap();
    let state = broker.beat_state("nightly").await.unwrap();
    assert_eq!(state["last_ms"], "1000", "a restart does not move it");
    assert_eq!(
        state["schedule"], "0 4 * * *",
        "the definition is the latest"
    );
    assert_eq!(
        broker.beat_schedules().await.unwrap(),
        ["hourly", "nightly"]
    );
}

async fn beat_advance_is_a_compare_and_set(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    broker.beat_register("every", 1000, &[]).await.unwrap();
    let advance = |payload: &[u8]| BeatAdvance {
        schedule: "every".to_owned(),
        expected_ms: 1000,
        through_ms: 2000,
        queue: Q.to_owned(),
        payloads: vec![payload.to_vec(), b"second".to_vec()],
        fields: vec![("job", String::from_utf8_lossy(payload).into_owned())],
        count: Some("fired_passes"),
    };
    // Racing passes planned from the same state: one of them applies.
    let racers: Vec<_> = (0..5u8)
        .map(|i| {
            let broker = broker.clone();
            let advance = advance(&[b'a' + i]);
            tokio::spawn(async move { broker.beat_advance(&advance).await.unwrap() })
        })
        .collect();
    let mut applied = 0;
    for racer in racers {
        applied += usize::from(racer.await.unwrap());
    }
    assert_eq!(applied, 1);
    let state = broker.beat_state("every").await.unwrap();
    assert_eq!(state["last_ms"], "2000");
    assert_eq!(state["fired_passes"], "1");
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "the winner's jobs, once");
    assert_eq!(got[0].payload, state["job"].as_bytes());
    assert_eq!(
        got[1].entry_id, state["entry"],
        "the last job's entry is kept"
    );
    assert!(broker.in_stream(Q, &state["entry"]).await.unwrap());
    broker
        .apply(
            "a",
            &[Write::Settle(settle(&got[1].queue, &got[1].entry_id))],
            TTL,
        )
        .await
        .unwrap();
    assert!(!broker.in_stream(Q, &state["entry"]).await.unwrap());
    assert!(!broker.beat_advance(&advance(b"late")).await.unwrap());
}

async fn beat_lease_has_one_holder(broker: Arc<dyn Broker>) {
    let lease = Duration::from_millis(300);
    assert!(broker.beat_lease("a", lease).await.unwrap());
    assert!(!broker.beat_lease("b", lease).await.unwrap());
    assert!(broker.beat_lease("a", lease).await.unwrap(), "renewed");
    assert!(!broker.beat_lease("b", Duration::ZERO).await.unwrap());
    assert!(
        !broker.beat_lease("b", lease).await.unwrap(),
        "only its holder gives it up"
    );
    assert!(!broker.beat_lease("a", Duration::ZERO).await.unwrap());
    assert!(broker.beat_lease("b", lease).await.unwrap(), "given up");
    // A holder that stops renewing loses it.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert!(broker.beat_lease("c", lease).await.unwrap());
}

#[tokio::test]
async fn consumers_of_dead_workers_are_pruned_once_they_own_nothing() {
    let ns = TestNamespace::new("prune");
    let broker = RedisBroker::connect(ns.url(), "REDIS_URL", None, ns.name())
        .await
        .unwrap();
    broker.prepare(&queues()).await.unwrap();
    broker.push(vec![job(b"x", None)]).await.unwrap();
    // `dead` takes the job and dies.
    broker
        .fetch("dead", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    // `dead` still owns its entry: kept, whatever its idle time.
    let removed = broker
        .prune_consumers(Q, "me", Duration::from_millis(50))
        .await
        .unwrap();
    assert!(!removed.contains(&"dead".to_owned()), "{removed:?}");
    // Its entry is reclaimed by `me`; then `dead` owns nothing and goes.
    let reclaimed = broker
        .reclaim("me", Q, Duration::from_millis(50), 10)
        .await
        .unwrap();
    assert!(!reclaimed.is_empty());
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut removed = broker
        .prune_consumers(Q, "me", Duration::from_millis(50))
        .await
        .unwrap();
    removed.sort();
    assert!(removed.contains(&"dead".to_owned()), "{removed:?}");
    assert!(!removed.contains(&"me".to_owned()), "never itself");
}
