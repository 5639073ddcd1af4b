//! Broker behaviour, written once and run against both brokers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryBroker;
use super::redis::RedisBroker;
use super::{
    BeatAdvance, BeatDefinition, Broker, DeadLetterLimits, DeadReason, LastFired, NewJob,
    Settlement, WorkerReport, Write,
};
use crate::envelope::{JobId, now_ms};
use crate::keys::{Metric, Outcome, Tally};
use crate::metrics::{RECENT_EXECUTIONS, Resolution, SCHEDULE_RUNS};
use crate::rules::Misfire;
use crate::stats::{FORGET_AFTER, Heartbeat, collect};
use crate::testing::TestNamespace;

const Q: &str = "jobs";
const TTL: Duration = Duration::from_secs(60);

/// Three dead letters at most, or 64 KiB.
const LIMITS: DeadLetterLimits = DeadLetterLimits {
    max_len: 3,
    max_bytes: 64 * 1024,
};

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

/// Apply a batch of writes once (each call a batch of its own).
async fn apply(
    broker: &dyn Broker,
    consumer: &str,
    writes: &[Write],
    ttl: Duration,
) -> crate::error::Result<super::Applied> {
    broker.apply(consumer, fastrand::u64(..), writes, ttl).await
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
        unlock: None,
    }
}

/// Runs one behaviour against the memory broker, against Redis and against a Redis Cluster,
/// each time in a fresh namespace.
macro_rules! every_broker {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(std::sync::Arc::new(super::MemoryBroker::new().with_dead_letter_limits(super::LIMITS))).await;
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
                        .with_dead_letter_limits(super::LIMITS);
                    super::$name(std::sync::Arc::new(broker)).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    let ns = super::TestNamespace::on_cluster(stringify!($name));
                    let broker = super::RedisBroker::connect(ns.url(), "REDIS_URL", None, ns.name())
                        .await
                        .expect("connect to the test cluster")
                        .with_dead_letter_limits(super::LIMITS);
                    super::$name(std::sync::Arc::new(broker)).await;
                }
            )*
        }
    };
}

every_broker!(
    each_job_goes_to_one_consumer,
    fetch_waits_for_an_arrival,
    delayed_jobs_wait_for_their_due_time,
    concurrent_promoters_move_each_job_once,
    a_promotion_of_several_lanes_moves_at_most_limit_in_all,
    settling_stores_the_record_acks_and_announces,
    expired_leases_are_reclaimed_and_the_old_owner_cannot_renew,
    renewed_leases_are_not_reclaimed,
    retries_go_through_the_delayed_set,
    records_expire,
    writes_of_a_lost_delivery_are_fenced,
    a_mixed_batch_is_fenced_write_by_write,
    a_consumer_takes_back_only_its_own_entries_it_does_not_hold,
    a_consumer_never_takes_back_an_entry_it_holds_from_another,
    a_fetch_of_several_queues_takes_at_most_max_in_all,
    a_fetch_of_several_queues_waits_for_any_of_them,
    a_fixed_id_is_added_once_while_it_is_known,
    dead_letters_are_kept_capped_replayed_and_purged,
    dead_letters_keep_to_their_byte_budget,
    beat_registration_keeps_the_last_slot,
    beat_advance_is_a_compare_and_set,
    beat_lease_has_one_holder,
    heartbeats_are_listed_until_the_worker_leaves,
    silent_workers_stop_being_alive_and_are_forgotten,
    outcome_counts_are_summed_over_the_window,
    queue_stats_count_ready_pending_and_delayed_jobs,
    rate_limits_decide_as_gcra_on_simulated_time,
    concurrency_slots_are_leased,
    a_paused_queue_stays_paused_until_resumed,
    metrics_are_kept_in_both_resolutions,
    recent_executions_keep_the_newest,
    failure_groups_follow_the_letters_in_and_out,
    the_audit_log_lists_newest_first_and_pages_back,
    queued_jobs_are_read_from_the_stream_and_the_delayed_set,
);

async fn queued_jobs_are_read_from_the_stream_and_the_delayed_set(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    assert!(broker.queued(Q, 10).await.unwrap().is_empty());
    let due = now_ms() + 60_000;
    let mut jobs: Vec<NewJob> = (0..5u8).map(|i| job(&[i], None)).collect();
    jobs.extend((5..8u8).map(|i| job(&[i], Some(due + i64::from(i)))));
    broker.push(jobs).await.unwrap();
    // One taken by a worker stays in the stream until it is settled.
    let taken = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(taken[0].payload, [0]);
    let seen = |jobs: Vec<super::QueuedJob>| -> Vec<(u8, Option<i64>)> {
        assert!(jobs.iter().all(|job| job.lane == Q));
        jobs.iter()
            .map(|job| (job.payload[0], job.due_ms))
            .collect()
    };
    assert_eq!(
        seen(broker.queued(Q, 3).await.unwrap()),
        [
            (0, None),
            (1, None),
            (2, None),
            (5, Some(due + 5)),
            (6, Some(due + 6)),
            (7, Some(due + 7)),
        ],
        "the first three of each, oldest and soonest first"
    );
    apply(
        &*broker,
        "a",
        &[Write::Settle(Settlement::of(&taken[0]))],
        TTL,
    )
    .await
    .unwrap();
    let all = seen(broker.queued(Q, 100).await.unwrap());
    assert_eq!(all.len(), 7, "{all:?}");
    assert_eq!(all[0], (1, None), "a settled job has left");
    assert!(broker.queued("other", 10).await.unwrap().is_empty());
}

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
    let promoted = broker
        .promote_due(&[Q.to_owned()], now_ms(), 100)
        .await
        .unwrap();
    assert_eq!(promoted.moved, 0);
    assert_eq!(promoted.next_due_ms, Some(due));
    assert!(
        broker
            .fetch("a", &queues(), 10, Duration::from_millis(20))
            .await
            .unwrap()
            .is_empty()
    );
    let promoted = broker.promote_due(&[Q.to_owned()], due, 100).await.unwrap();
    assert_eq!(promoted.moved, 1);
    assert_eq!(promoted.next_due_ms, None);
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_millis(20))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"later");
}

/// A queue's lanes are promoted in one call: the first lane's due jobs first, the limit over
/// all of them, and the earliest due time left in any.
async fn a_promotion_of_several_lanes_moves_at_most_limit_in_all(broker: Arc<dyn Broker>) {
    let lanes = vec![format!("{Q}:high"), Q.to_owned()];
    broker.prepare(&lanes).await.unwrap();
    // Due times ahead of the clock, so that the push keeps them delayed; promoted "then".
    let now = now_ms() + 10_000;
    let later = now + 60_000;
    let delayed = |lane: &String, payload: &[u8], due: i64| NewJob {
        queue: lane.clone(),
        payload: payload.to_vec(),
        due_ms: Some(due),
    };
    broker
        .push(vec![
            delayed(&lanes[1], b"n1", now - 20),
            delayed(&lanes[1], b"n-later", later),
            delayed(&lanes[0], b"h1", now - 10),
            delayed(&lanes[0], b"h2", now - 10),
            delayed(&lanes[1], b"n2", now - 10),
        ])
        .await
        .unwrap();
    let promoted = broker.promote_due(&lanes, now, 3).await.unwrap();
    assert_eq!(promoted.moved, 3, "the limit is over both lanes");
    assert_eq!(promoted.next_due_ms, Some(now - 10), "n2 is left, due");
    let promoted = broker.promote_due(&lanes, now, 10).await.unwrap();
    assert_eq!((promoted.moved, promoted.next_due_ms), (1, Some(later)));
    let got = broker
        .fetch("a", &lanes, 10, Duration::from_millis(20))
        .await
        .unwrap();
    let payloads: Vec<&[u8]> = got.iter().map(|d| d.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        [&b"h1"[..], b"h2", b"n1", b"n2"],
        "high lane first"
    );
    assert_eq!(&*got[0].queue, lanes[0].as_str());
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
                    let promoted = broker.promote_due(&[Q.to_owned()], due, 7).await.unwrap();
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
    apply(&*broker, "a", &[Write::Settle(settlement)], TTL)
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
    let reclaimed = broker
        .reclaim("b", Q, Duration::ZERO, 10, &[])
        .await
        .unwrap();
    assert!(reclaimed.is_empty(), "an acknowledged job is not pending");
}

async fn expired_leases_are_reclaimed_and_the_old_owner_cannot_renew(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let held = hold_one(broker.as_ref(), "a").await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let reclaimed = broker
        .reclaim("b", Q, Duration::from_millis(100), 10, &[])
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
            .reclaim("b", Q, Duration::from_millis(500), 10, &[])
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
    settlement.retry = Some(Box::new(job(b"second", Some(due))));
    apply(&*broker, "a", &[Write::Settle(settlement)], TTL)
        .await
        .unwrap();
    assert!(
        broker
            .fetch("a", &queues(), 1, Duration::from_millis(20))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        broker
            .promote_due(&[Q.to_owned()], due, 10)
            .await
            .unwrap()
            .moved,
        1
    );
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
    let applied = apply(&*broker, "a", &[write], Duration::from_millis(50))
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
        .reclaim("b", Q, Duration::from_millis(50), 10, &[])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.entry_id, first.entry_id);
    assert_eq!(second.deliveries, 2);

    // The paused first owner comes back: its record and acknowledgement are refused.
    let stale_id = JobId::from("stale");
    let mut stale = Settlement::of(&first);
    stale.record = Some((stale_id.clone(), b"stale".to_vec()));
    let applied = apply(&*broker, "a", &[Write::Settle(stale)], TTL)
        .await
        .unwrap();
    assert_eq!(applied.fenced, vec![0]);
    assert!(broker.load_record("stale").await.unwrap().is_none());
    // A write naming the right owner but an older delivery is refused too.
    let mut old = Settlement::of(&first);
    old.record = Some((stale_id, b"stale".to_vec()));
    let applied = apply(&*broker, "b", &[Write::Settle(old)], TTL)
        .await
        .unwrap();
    assert_eq!(applied.fenced, vec![0]);

    // The new owner settles; its write stands and the entry is gone.
    let mut fresh = Settlement::of(&second);
    fresh.record = Some((JobId::from("fresh"), b"fresh".to_vec()));
    let applied = apply(&*broker, "b", &[Write::Settle(fresh)], TTL)
        .await
        .unwrap();
    assert!(applied.fenced.is_empty());
    assert_eq!(
        broker.load_record("fresh").await.unwrap().as_deref(),
        Some(&b"fresh"[..])
    );
    assert!(
        broker
            .reclaim("c", Q, Duration::ZERO, 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Bare acknowledgements and writing ops travel apart to the settle script: the fenced
/// indexes must still name the right writes of the batch.
async fn a_mixed_batch_is_fenced_write_by_write(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    broker
        .push((0..4u8).map(|i| job(&[i], None)).collect())
        .await
        .unwrap();
    let held = broker
        .fetch("a", &queues(), 4, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(held.len(), 4);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let taken = broker
        .reclaim("b", Q, Duration::from_millis(50), 1, &[])
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let (lost, kept): (Vec<_>, Vec<_>) = held
        .iter()
        .partition(|delivery| delivery.entry_id == taken[0].entry_id);
    let (lost, first, last, failed) = (lost[0], kept[0], kept[1], kept[2]);

    let mut lost_with_record = Settlement::of(lost);
    lost_with_record.record = Some((JobId::from("lost"), b"lost".to_vec()));
    let mut lost_retry = Settlement::of(lost);
    lost_retry.retry = Some(Box::new(job(b"again", Some(1))));
    let mut dead = Settlement::of(failed);
    dead.dead = Some(Box::new(letter(1)));
    let writes = vec![
        Write::Settle(Settlement::of(first)),
        Write::Settle(Settlement::of(lost)),
        Write::Settle(lost_with_record),
        Write::Record {
            queue: last.queue.clone(),
            entry_id: last.entry_id.clone(),
            deliveries: last.deliveries,
            id: JobId::from("running"),
            record: b"running".to_vec(),
        },
        Write::Settle(Settlement::of(last)),
        // Settled above in this same batch: stale now.
        Write::Settle(Settlement::of(first)),
        Write::Settle(lost_retry),
        Write::Settle(dead),
    ];
    let applied = apply(&*broker, "a", &writes, TTL).await.unwrap();
    assert_eq!(applied.fenced, vec![1, 2, 5, 6]);
    assert_eq!(applied.dead_entries.len(), 1);
    assert!(broker.load_record("lost").await.unwrap().is_none());
    assert!(broker.load_record("running").await.unwrap().is_some());
    assert_eq!(
        broker
            .promote_due(&[Q.to_owned()], i64::MAX, 10)
            .await
            .unwrap()
            .moved,
        0,
        "the fenced retry was not scheduled"
    );
    // Only the entry `b` took over is still pending.
    let left = broker
        .reclaim("c", Q, Duration::ZERO, 10, &[])
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].entry_id, lost.entry_id);
}

async fn a_consumer_takes_back_only_its_own_entries_it_does_not_hold(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let held = hold_one(broker.as_ref(), "a").await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    // `a` was paused past its lease but still runs the job: no second copy of it.
    let holds = vec![held.entry_id.clone()];
    let own = broker
        .reclaim("a", Q, Duration::from_millis(50), 10, &holds)
        .await
        .unwrap();
    assert!(own.is_empty(), "{own:?}");
    // A read whose reply never reached `a`: pending under `a`, which does not hold it.
    let orphan = broker
        .reclaim("a", Q, Duration::from_millis(50), 10, &[])
        .await
        .unwrap();
    assert_eq!(orphan.len(), 1);
    assert_eq!(orphan[0].entry_id, held.entry_id);
    assert_eq!(orphan[0].deliveries, 2);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let other = broker
        .reclaim("b", Q, Duration::from_millis(50), 10, &[])
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].deliveries, 3);
}

async fn a_consumer_never_takes_back_an_entry_it_holds_from_another(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    // `a` holds the entry and is paused past its lease; `b` takes it over, then dies.
    let held = hold_one(broker.as_ref(), "a").await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let taken = broker
        .reclaim("b", Q, Duration::from_millis(50), 10, &[])
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // `a` wakes up, still running its copy: its reclaim must leave the entry to others.
    let holds = vec![held.entry_id.clone()];
    let again = broker
        .reclaim("a", Q, Duration::from_millis(50), 10, &holds)
        .await
        .unwrap();
    assert!(again.is_empty(), "a second copy in `a`: {again:?}");
    let other = broker
        .reclaim("c", Q, Duration::from_millis(50), 10, &[])
        .await
        .unwrap();
    assert_eq!(other.len(), 1, "anyone else takes it");
}

fn four_queues() -> Vec<String> {
    (1..=4).map(|n| format!("q{n}")).collect()
}

async fn a_fetch_of_several_queues_takes_at_most_max_in_all(broker: Arc<dyn Broker>) {
    let queues = four_queues();
    broker.prepare(&queues).await.unwrap();
    let jobs = queues.iter().flat_map(|queue| {
        (0..5u8).map(|i| NewJob {
            queue: queue.clone(),
            payload: vec![i],
            due_ms: None,
        })
    });
    broker.push(jobs.collect()).await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let got = broker
            .fetch("a", &queues, 3, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(got.len() <= 3, "{} deliveries for a budget of 3", got.len());
        if got.is_empty() {
            break;
        }
        seen.extend(got.into_iter().map(|d| (d.queue, d.payload)));
    }
    assert_eq!(seen.len(), 20, "every job of every queue, once");
    // The queues are read in the order given (the worker's priorities decide it): a budget
    // of 1 serves the first queue of each order.
    broker
        .push(
            queues
                .iter()
                .flat_map(|queue| {
                    (0..2u8).map(|i| NewJob {
                        queue: queue.clone(),
                        payload: vec![i],
                        due_ms: None,
                    })
                })
                .collect(),
        )
        .await
        .unwrap();
    for turn in 0..4 {
        let order: Vec<String> = queues[turn..]
            .iter()
            .chain(&queues[..turn])
            .cloned()
            .collect();
        let got = broker
            .fetch("a", &order, 1, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&*got[0].queue, order[0], "the first queue of the order");
    }
}

async fn a_fetch_of_several_queues_waits_for_any_of_them(broker: Arc<dyn Broker>) {
    let queues = four_queues();
    broker.prepare(&queues).await.unwrap();
    let producer = broker.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let jobs = (0..3u8).map(|i| NewJob {
            queue: "q3".to_owned(),
            payload: vec![i],
            due_ms: None,
        });
        producer.push(jobs.collect()).await.unwrap();
    });
    let started = std::time::Instant::now();
    let got = broker
        .fetch("a", &queues, 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "woken by the arrival, not the timeout"
    );
    assert!(!got.is_empty() && got.len() <= 2, "{got:?}");
    assert!(got.iter().all(|d| &*d.queue == "q3"));
}

async fn a_fixed_id_is_added_once_while_it_is_known(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let hold = Duration::from_secs(60);
    assert!(
        broker
            .push_once(job(b"1", None), "once", hold)
            .await
            .unwrap()
    );
    assert!(
        !broker
            .push_once(job(b"2", None), "once", hold)
            .await
            .unwrap()
    );
    // Delayed, the same.
    let later = Some(now_ms() + 60_000);
    assert!(
        broker
            .push_once(job(b"3", later), "later", hold)
            .await
            .unwrap()
    );
    assert!(
        !broker
            .push_once(job(b"4", later), "later", hold)
            .await
            .unwrap()
    );
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].payload, b"1");
    // A job whose record is kept is known, whether or not its id is still held.
    let done = JobId::from("done");
    let record = Write::Record {
        queue: got[0].queue.clone(),
        entry_id: got[0].entry_id.clone(),
        deliveries: 1,
        id: done.clone(),
        record: b"r".to_vec(),
    };
    apply(broker.as_ref(), "a", &[record], TTL).await.unwrap();
    assert!(
        !broker
            .push_once(job(b"5", None), "done", hold)
            .await
            .unwrap()
    );
    // Once neither the hold nor a record is left, the id is free again.
    let short = Duration::from_millis(50);
    assert!(
        broker
            .push_once(job(b"6", None), "brief", short)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        broker
            .push_once(job(b"7", None), "brief", short)
            .await
            .unwrap()
    );
}

fn letter(n: u8) -> super::DeadLetter {
    super::DeadLetter {
        job_id: Some(JobId::from(format!("job-{n}"))),
        task: Some("t".to_owned()),
        reason: DeadReason::RetriesExhausted,
        error: format!("boom {n}"),
        errors: Vec::new(),
        payload: vec![n],
        truncated: false,
        at_ms: now_ms(),
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
            settlement.dead = Some(Box::new(letter(n)));
            Write::Settle(settlement)
        })
        .collect();
    let applied = apply(&*broker, "a", &writes, TTL).await.unwrap();
    assert_eq!(applied.dead_entries.len(), 4);
    // The cap (3 in these tests) removed the oldest, and says so.
    assert_eq!(applied.dead_trimmed, 1);
    let stats = broker.dead_stats().await.unwrap();
    assert_eq!((stats.len, stats.trimmed, stats.added), (3, 1, 4));
    let listed = broker.dead_page(None, None, 10).await.unwrap();
    let errors: Vec<&str> = listed.iter().map(|job| job.error.as_str()).collect();
    assert_eq!(errors, ["boom 1", "boom 2", "boom 3"]);
    assert_eq!(listed[0].reason, DeadReason::RetriesExhausted);
    assert_eq!(listed[0].job_id.as_deref(), Some("job-1"));
    assert_eq!((listed[0].queue.as_str(), listed[0].payload_size), (Q, 1));
    let after_first = broker
        .dead_page(Some(&listed[0].entry_id), None, 10)
        .await
        .unwrap();
    assert_eq!(after_first.len(), 2);
    let newest = broker.dead_newest().await.unwrap();
    assert_eq!(newest.as_ref(), Some(&listed[2].entry_id));
    let back = broker.dead_page_back(None, 2).await.unwrap();
    assert_eq!(back, [listed[2].clone(), listed[1].clone()], "newest first");
    let before = broker
        .dead_page_back(Some(&listed[1].entry_id), 10)
        .await
        .unwrap();
    assert_eq!(before, [listed[0].clone()], "`before` is exclusive");
    let middle = broker
        .dead_page(Some(&listed[0].entry_id), Some(&listed[1].entry_id), 10)
        .await
        .unwrap();
    assert_eq!(middle, [listed[1].clone()], "`until` is the last one");
    assert_eq!(
        broker.dead_get(&listed[1].entry_id).await.unwrap().as_ref(),
        Some(&listed[1])
    );

    let first = &listed[0].entry_id;
    assert!(
        broker
            .dead_replay(first, Q, "job-1", b"again".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(broker.dead_get(first).await.unwrap(), None);
    assert!(
        !broker
            .dead_replay(first, Q, "job-1", b"twice".to_vec())
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
    let now = crate::envelope::now_ms();
    assert_eq!(
        broker.dead_purge(Some(now - 60_000)).await.unwrap(),
        0,
        "none is a minute old"
    );
    assert_eq!(broker.dead_purge(Some(now + 60_000)).await.unwrap(), 2);
    let stats = broker.dead_stats().await.unwrap();
    assert_eq!(
        (stats.len, stats.added),
        (0, 4),
        "a replay and a retention purge do not lower the count of dead letters added"
    );
    assert_eq!(broker.dead_purge(None).await.unwrap(), 0);
    let stats = broker.dead_stats().await.unwrap();
    assert_eq!((stats.len, stats.trimmed), (0, 1));
    assert_eq!(
        stats.added, 0,
        "a whole purge starts the count again, as DEL does in Redis"
    );
}

fn definition(schedule: &str) -> BeatDefinition {
    BeatDefinition {
        task: "t".to_owned(),
        queue: Q.to_owned(),
        schedule: schedule.to_owned(),
        tz: "Europe/Stockholm".to_owned(),
        misfire: Misfire::Backfill(3),
        overlap: false,
        args: Some(r#"["AAPL",3]"#.to_owned()),
    }
}

async fn dead_letters_keep_to_their_byte_budget(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    // 30 KiB letters take 32 KiB each: two fit the 64 KiB budget, before the count cap of 3.
    let jobs: Vec<NewJob> = (0..5u8).map(|i| job(&[i], None)).collect();
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
            let mut letter = letter(n);
            letter.payload = vec![n; 30 * 1024];
            settlement.dead = Some(Box::new(letter));
            Write::Settle(settlement)
        })
        .collect();
    let applied = apply(&*broker, "a", &writes, TTL).await.unwrap();
    assert_eq!(applied.dead_trimmed, 3);
    let stats = broker.dead_stats().await.unwrap();
    assert_eq!((stats.len, stats.trimmed), (2, 3));
    assert!((60 * 1024..=64 * 1024).contains(&stats.bytes), "{stats:?}");
    let listed = broker.dead_page(None, None, 10).await.unwrap();
    assert_eq!(listed.iter().map(|job| job.bytes).sum::<u64>(), stats.bytes);
    assert_eq!(listed[0].payload[0], 3, "the oldest went first");
    assert!(
        broker
            .dead_replay(&listed[0].entry_id, Q, "job-3", b"again".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(
        broker.dead_stats().await.unwrap().bytes,
        listed[1].bytes,
        "a replayed letter's bytes are given back"
    );
    broker
        .dead_purge(Some(crate::envelope::now_ms() + 60_000))
        .await
        .unwrap();
    assert_eq!(broker.dead_stats().await.unwrap().bytes, 0);
}

async fn beat_registration_keeps_the_last_slot(broker: Arc<dyn Broker>) {
    assert_eq!(
        broker.beat_state("nightly").await.unwrap(),
        Default::default()
    );
    broker
        .beat_register("nightly", 1000, &definition("0 3 * * *"))
        .await
        .unwrap();
    broker
        .beat_register("nightly", 2000, &definition("0 4 * * *"))
        .await
        .unwrap();
    broker
        .beat_register("hourly", 5, &definition("0 * * * *"))
        .await
        .unwrap();
    let state = broker.beat_state("nightly").await.unwrap();
    assert_eq!(state.last_ms, Some(1000), "a restart does not move it");
    assert_eq!(
        state.definition,
        Some(definition("0 4 * * *")),
        "the definition is the latest"
    );
    assert_eq!(
        broker.beat_schedules().await.unwrap(),
        ["hourly", "nightly"]
    );

    // Paused and resumed, across a restart's registration; an unknown one is refused.
    assert!(!broker.beat_set_paused("weekly", true).await.unwrap());
    assert!(broker.beat_set_paused("nightly", true).await.unwrap());
    broker
        .beat_register("nightly", 3000, &definition("0 4 * * *"))
        .await
        .unwrap();
    assert!(broker.beat_state("nightly").await.unwrap().paused, "kept");
    assert!(!broker.beat_state("hourly").await.unwrap().paused);
    assert!(broker.beat_set_paused("nightly", false).await.unwrap());
    assert!(!broker.beat_state("nightly").await.unwrap().paused);
    // A beat of an earlier version stores no arguments: none are left from before.
    let without = BeatDefinition {
        args: None,
        ..definition("0 4 * * *")
    };
    broker
        .beat_register("nightly", 3000, &without)
        .await
        .unwrap();
    let state = broker.beat_state("nightly").await.unwrap();
    assert_eq!(state.definition.unwrap().args, None);
}

async fn beat_advance_is_a_compare_and_set(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    broker
        .beat_register("every", 1000, &definition("every 1s"))
        .await
        .unwrap();
    let advance = |payload: &[u8]| BeatAdvance {
        schedule: "every".to_owned(),
        expected_ms: 1000,
        through_ms: 2000,
        queue: Q.to_owned(),
        payloads: vec![payload.to_vec(), b"second".to_vec()],
        // Derived from the slots: the same for every racer.
        job_ids: vec!["every@1500".to_owned(), "every@2000".to_owned()],
        fired: Some(LastFired {
            job: String::from_utf8_lossy(payload).into_owned(),
            slot_ms: 2000,
            fired_ms: 2005,
            late: true,
        }),
        skipped_slot_ms: Some(1500),
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
    assert_eq!(state.last_ms, Some(2000));
    assert_eq!(
        (state.overlap_skips, state.skipped_slot_ms),
        (1, Some(1500)),
        "counted once"
    );
    let fired = state.fired.clone().expect("the winner's last job");
    assert_eq!(state.last_job.as_ref(), Some(&fired.job));
    assert_eq!(
        (fired.slot_ms, fired.fired_ms, fired.late),
        (2000, 2005, true)
    );
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "one racer's jobs, once");
    // On one server the winner's; on a cluster, where the adds come before the
    // compare-and-set, those of the first racer to add them.
    assert!(
        b"abcde".contains(&got[0].payload[0]),
        "{:?}",
        got[0].payload
    );
    assert_eq!(got[1].payload, b"second");
    let entry = state.entry.clone().expect("the last job's entry");
    assert_eq!(got[1].entry_id, entry, "the last job's entry is kept");
    assert!(broker.in_stream(Q, &entry).await.unwrap());
    apply(
        &*broker,
        "a",
        &[Write::Settle(settle(&got[1].queue, &got[1].entry_id))],
        TTL,
    )
    .await
    .unwrap();
    assert!(!broker.in_stream(Q, &entry).await.unwrap());
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
async fn a_batch_applied_again_returns_its_first_outcome_and_changes_nothing() {
    let ns = TestNamespace::new("receipt");
    let broker = RedisBroker::connect(ns.url(), "REDIS_URL", None, ns.name())
        .await
        .unwrap()
        .with_dead_letter_limits(LIMITS);
    broker.prepare(&queues()).await.unwrap();
    let first = hold_one(&broker, "a").await;
    let second = hold_one(&broker, "a").await;
    let mut dead = Settlement::of(&first);
    dead.dead = Some(Box::new(letter(1)));
    let writes = [Write::Settle(dead), Write::Settle(Settlement::of(&second))];
    let applied = broker.apply("a", 7, &writes, TTL).await.unwrap();
    assert_eq!(applied.fenced, Vec::<usize>::new());
    assert_eq!(applied.dead_entries.len(), 1);
    // Its reply lost, the writer applies the same batch again: the first outcome, not fencing.
    let again = broker.apply("a", 7, &writes, TTL).await.unwrap();
    assert_eq!(again, applied);
    assert_eq!(broker.dead_stats().await.unwrap().len, 1, "nothing twice");
    // A new batch about the same deliveries is fenced: they are settled.
    let later = broker.apply("a", 8, &writes, TTL).await.unwrap();
    assert_eq!(later.fenced, [0, 1]);
    // An empty reply round-trips too.
    let empty = broker
        .apply("a", 9, &[Write::Settle(Settlement::of(&first))], TTL)
        .await
        .unwrap();
    assert_eq!(
        broker
            .apply("a", 9, &[Write::Settle(Settlement::of(&first))], TTL)
            .await
            .unwrap(),
        empty
    );
}

#[tokio::test]
async fn a_lost_group_is_a_typed_error() {
    let ns = TestNamespace::new("nogroup");
    let broker = RedisBroker::connect(ns.url(), "REDIS_URL", None, ns.name())
        .await
        .unwrap();
    broker.prepare(&queues()).await.unwrap();
    // What Redis restarted without its data looks like to a worker: the stream and its group
    // are gone.
    let client = ::redis::Client::open(ns.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let stream = crate::keys::Keys::new(ns.name()).unwrap().stream(Q);
    let _: () = ::redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    let err = broker
        .fetch("a", &queues(), 1, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(matches!(err, crate::error::Error::GroupMissing(_)), "{err}");
    broker.prepare(&queues()).await.unwrap();
    let fetched = broker
        .fetch("a", &queues(), 1, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(fetched.is_empty(), "the group is back");
    // The same through the read of several queues.
    let several = vec![Q.to_owned(), "other".to_owned()];
    broker.prepare(&several).await.unwrap();
    let _: () = ::redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    let err = broker
        .fetch("a", &several, 1, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(matches!(err, crate::error::Error::GroupMissing(_)), "{err}");
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
        .reclaim("me", Q, Duration::from_millis(50), 10, &[])
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

const WINDOW: Duration = Duration::from_secs(15 * 60);
const MINUTE: i64 = 60_000;

/// A heartbeat last seen at `seen_ms`, beating every second.
fn heartbeat(seen_ms: i64) -> Option<Vec<u8>> {
    let beat = Heartbeat {
        queues: queues(),
        concurrency: 4,
        started_ms: seen_ms - 10_000,
        seen_ms,
        heartbeat_ms: 1000,
        running: 2,
        succeeded: 5,
        failed: 1,
        retried: 1,
        dead_lettered: 0,
        active: Vec::new(),
    };
    Some(beat.encode().unwrap())
}

fn report(
    consumer: &str,
    info: Option<Vec<u8>>,
    at_ms: i64,
    counts: &[(&str, &str, u64)],
) -> WorkerReport {
    WorkerReport {
        consumer: consumer.to_owned(),
        info,
        at_ms,
        counts: counts
            .iter()
            .map(|(task, outcome, n)| {
                let outcome = Outcome::from_wire(outcome).expect("an outcome");
                ((*task).to_owned(), Tally::Outcome(outcome), *n)
            })
            .collect(),
        executions: Vec::new(),
        schedule_runs: Vec::new(),
    }
}

async fn heartbeats_are_listed_until_the_worker_leaves(broker: Arc<dyn Broker>) {
    let now = now_ms();
    for name in ["w1", "w2"] {
        broker
            .report_worker(&report(name, heartbeat(now - 100), now - 100, &[]))
            .await
            .unwrap();
    }
    broker
        .report_worker(&report("w1", heartbeat(now), now, &[]))
        .await
        .unwrap();
    let stats = collect(broker.as_ref(), WINDOW, now).await.unwrap();
    let names: Vec<&str> = stats.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["w1", "w2"]);
    let w1 = &stats.workers[0];
    assert!(w1.alive);
    assert_eq!(
        w1.seen_ms, now,
        "the latest heartbeat replaces the one before"
    );
    assert_eq!((w1.concurrency, w1.running, w1.heartbeat_ms), (4, 2, 1000));
    assert_eq!((w1.succeeded, w1.failed, w1.retried), (5, 1, 1));
    assert_eq!(w1.queues, queues());

    // A stopping worker removes itself, and its last counts are stored.
    broker
        .report_worker(&report("w2", None, now, &[("t", "succeeded", 2)]))
        .await
        .unwrap();
    let stats = collect(broker.as_ref(), WINDOW, now).await.unwrap();
    let names: Vec<&str> = stats.workers.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["w1"]);
    assert_eq!(stats.tasks.len(), 1);
    assert_eq!(
        (stats.tasks[0].task.as_str(), stats.tasks[0].succeeded),
        ("t", 2)
    );
}

async fn silent_workers_stop_being_alive_and_are_forgotten(broker: Arc<dyn Broker>) {
    let now = now_ms();
    let forget = FORGET_AFTER.as_millis() as i64;
    for (name, seen) in [
        ("late", now - 3000),
        ("silent", now - 3001),
        ("gone", now - forget - 1),
    ] {
        broker
            .report_worker(&report(name, heartbeat(seen), seen, &[]))
            .await
            .unwrap();
    }
    let stats = collect(broker.as_ref(), WINDOW, now).await.unwrap();
    let workers: Vec<(&str, bool)> = stats
        .workers
        .iter()
        .map(|w| (w.name.as_str(), w.alive))
        .collect();
    assert_eq!(
        workers,
        [("late", true), ("silent", false)],
        "alive for three heartbeats; listed for an hour"
    );
    let stored: Vec<String> = broker
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert!(!stored.contains(&"gone".to_owned()), "deleted: {stored:?}");
    assert_eq!(stored.len(), 2);
}

async fn outcome_counts_are_summed_over_the_window(broker: Arc<dyn Broker>) {
    // The middle of the current minute, so that the buckets used are plain to see.
    let now = now_ms().div_euclid(MINUTE) * MINUTE + 30_000;
    let beats = [
        ("w1", now, vec![("a", "succeeded", 3), ("a", "failed", 1)]),
        ("w2", now, vec![("a", "succeeded", 4)]),
        (
            "w1",
            now - 5 * MINUTE,
            vec![
                ("a", "succeeded", 2),
                ("a", "retried", 1),
                ("a", "failed", 1),
            ],
        ),
        (
            "w1",
            now - 30 * MINUTE,
            vec![("a", "succeeded", 100), ("b", "dead_lettered", 1)],
        ),
    ];
    for (name, at, counts) in &beats {
        broker
            .report_worker(&report(name, heartbeat(*at), *at, counts))
            .await
            .unwrap();
    }
    let recent = collect(broker.as_ref(), Duration::from_secs(10 * 60), now)
        .await
        .unwrap();
    assert_eq!(
        recent.tasks.len(),
        1,
        "b only before the window: {:?}",
        recent.tasks
    );
    let a = &recent.tasks[0];
    assert_eq!(
        (
            a.task.as_str(),
            a.succeeded,
            a.failed,
            a.retried,
            a.dead_lettered
        ),
        ("a", 9, 2, 1, 0)
    );
    assert_eq!(a.failure_rate(), Some(2.0 / 11.0));
    // 30 minutes back from the middle of a minute reach into the middle of that minute.
    let hour = collect(broker.as_ref(), Duration::from_secs(30 * 60), now)
        .await
        .unwrap();
    let counts: Vec<(&str, u64, u64)> = hour
        .tasks
        .iter()
        .map(|t| (t.task.as_str(), t.succeeded, t.dead_lettered))
        .collect();
    assert_eq!(counts, [("a", 109, 0), ("b", 0, 1)]);
}

async fn queue_stats_count_ready_pending_and_delayed_jobs(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    let due = now_ms() + 60_000;
    let mut jobs: Vec<NewJob> = (0..4u8).map(|i| job(&[i], None)).collect();
    jobs.extend((4..6u8).map(|i| job(&[i], Some(due))));
    broker.push(jobs).await.unwrap();
    let counts = |stats: &crate::stats::ClusterStats| {
        let q = &stats.queues[0];
        (q.name.clone(), q.ready, q.pending, q.delayed, q.consumers)
    };
    let stats = collect(broker.as_ref(), WINDOW, now_ms()).await.unwrap();
    assert_eq!(counts(&stats), (Q.to_owned(), 4, 0, 2, 0));
    // The oldest ready job's age grows while it waits; delayed ones do not count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = collect(broker.as_ref(), WINDOW, now_ms()).await.unwrap();
    let age = stats.queues[0].oldest_age_ms.expect("jobs wait");
    assert!((300..60_000).contains(&age), "{age}");

    let first = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    let second = broker
        .fetch("b", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));
    let stats = collect(broker.as_ref(), WINDOW, now_ms()).await.unwrap();
    assert_eq!(counts(&stats), (Q.to_owned(), 2, 2, 2, 2));

    // Settling the last delivered entry deletes it: Redis can no longer tell the group's lag,
    // and the count comes from the stream length instead.
    apply(
        &*broker,
        "b",
        &[Write::Settle(Settlement::of(&second[0]))],
        TTL,
    )
    .await
    .unwrap();
    let stats = collect(broker.as_ref(), WINDOW, now_ms()).await.unwrap();
    assert_eq!(counts(&stats), (Q.to_owned(), 2, 1, 2, 2));

    assert_eq!(
        broker
            .promote_due(&[Q.to_owned()], due, 10)
            .await
            .unwrap()
            .moved,
        2
    );
    let stats = collect(broker.as_ref(), WINDOW, now_ms()).await.unwrap();
    assert_eq!(counts(&stats), (Q.to_owned(), 4, 1, 0, 2));
    let age = stats.queues[0].oldest_age_ms.expect("jobs wait");
    assert!(
        age >= 300,
        "still the first jobs, not the promoted ones: {age}"
    );

    // A queue a live worker names but no one prepared yet reads as empty.
    let now = now_ms();
    broker
        .report_worker(&report("w", heartbeat(now), now, &[]))
        .await
        .unwrap();
    let lonely = crate::stats::Heartbeat {
        queues: vec!["nowhere".to_owned()],
        seen_ms: now,
        heartbeat_ms: 1000,
        ..crate::stats::Heartbeat::default()
    };
    broker
        .report_worker(&report("lonely", Some(lonely.encode().unwrap()), now, &[]))
        .await
        .unwrap();
    let stats = collect(broker.as_ref(), WINDOW, now).await.unwrap();
    let names: Vec<(&str, u64)> = stats
        .queues
        .iter()
        .map(|q| {
            (
                q.name.as_str(),
                q.ready + q.pending + q.delayed + q.consumers,
            )
        })
        .collect();
    assert_eq!(names, [(Q, 7), ("nowhere", 0)]);
    assert_eq!(stats.queues[1].oldest_age_ms, None, "nothing waits");
}

#[tokio::test]
async fn outcome_buckets_expire_a_day_after_their_last_write() {
    let ns = TestNamespace::new("stats-ttl");
    let broker = RedisBroker::connect(ns.url(), "REDIS_URL", None, ns.name())
        .await
        .unwrap();
    let now = now_ms();
    broker
        .report_worker(&report("w", heartbeat(now), now, &[("a", "failed", 1)]))
        .await
        .unwrap();
    let key = format!("{{{}}}:stats:{}", ns.name(), now.div_euclid(MINUTE));
    let client = ::redis::Client::open(ns.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((24 * 3600 - 60..=24 * 3600).contains(&ttl), "{key}: {ttl}");
    let count: i64 = ::redis::cmd("HGET")
        .arg(&key)
        .arg("a|failed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// Three simulated workers of four runners (half of them waiting up to 50 ms for a reserved
/// turn) ask a `10/s burst 3` limit over 20 s of simulated time: each decision is the model's (`limit::acquire`, so the script and the in-process
/// broker agree with it step by step), and no 1-second window holds more than the limit and
/// its burst.
async fn rate_limits_decide_as_gcra_on_simulated_time(broker: Arc<dyn Broker>) {
    let limit: crate::limit::RateLimit = "10/s burst 3".parse().unwrap();
    let mut model = crate::limit::RateState::default();
    let start = 1_764_000_000_000_000i64;
    let end = start + 20_000_000;
    let mut due: Vec<i64> = (0..12).map(|i| start + i * 13_001).collect();
    let mut starts = Vec::new();
    // Half the runners wait up to 50 ms without taking a place in line, as workers do.
    let patience =
        |runner: usize| Duration::from_millis(if runner.is_multiple_of(2) { 50 } else { 0 });
    loop {
        let (runner, &now) = due.iter().enumerate().min_by_key(|(_, at)| **at).unwrap();
        if now >= end {
            break;
        }
        let decided = broker
            .acquire_rate("task:quotes", limit, patience(runner), Some(now))
            .await
            .unwrap();
        let expected = crate::limit::acquire(
            &mut model,
            now,
            limit.interval_us(),
            limit.tolerance_us(),
            patience(runner).as_micros() as i64,
        );
        assert_eq!(
            decided.map(|wait| wait.as_micros() as i64),
            expected,
            "at {} µs",
            now - start
        );
        // A reserved turn (within the runner's patience) starts after its wait unasked.
        match decided {
            None => {
                starts.push(now);
                due[runner] = now + 2_000 + fastrand::i64(0..50_000);
            }
            Some(wait) if wait <= patience(runner) => {
                let at = now + wait.as_micros() as i64;
                starts.push(at);
                due[runner] = at + 2_000 + fastrand::i64(0..50_000);
            }
            Some(wait) => due[runner] = now + wait.as_micros() as i64,
        }
    }
    let most = crate::limit::most_in_window(&starts, 1_000_000);
    assert!(most <= 13, "{most} starts in one second");
    assert!(starts.len() >= 195, "{} starts in 20 s", starts.len());
    // Another scope is another limit.
    assert_eq!(
        broker
            .acquire_rate("eodhd", limit, Duration::ZERO, Some(start))
            .await
            .unwrap(),
        None
    );
}

async fn concurrency_slots_are_leased(broker: Arc<dyn Broker>) {
    let lease = Duration::from_millis(400);
    let scope = "task:render";
    assert!(broker.acquire_slot(scope, "a", 2, lease).await.unwrap());
    assert!(broker.acquire_slot(scope, "b", 2, lease).await.unwrap());
    assert!(
        !broker.acquire_slot(scope, "c", 2, lease).await.unwrap(),
        "both taken"
    );
    assert!(
        broker.acquire_slot(scope, "a", 2, lease).await.unwrap(),
        "a holder keeps its own"
    );
    broker.release_slot(scope, "a").await.unwrap();
    assert!(
        broker.acquire_slot(scope, "c", 2, lease).await.unwrap(),
        "a's went to c"
    );
    // b keeps renewing, c does not: c's lease runs out and its slot comes back.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let held = [
        (scope.to_owned(), "b".to_owned()),
        (scope.to_owned(), "gone".to_owned()),
    ];
    assert_eq!(broker.renew_slots(&held, lease).await.unwrap(), 1);
    assert!(
        !broker.acquire_slot(scope, "d", 2, lease).await.unwrap(),
        "b and c still hold"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        broker.acquire_slot(scope, "d", 2, lease).await.unwrap(),
        "c's lease ran out"
    );
    assert!(
        !broker.acquire_slot(scope, "e", 2, lease).await.unwrap(),
        "b renewed: b and d"
    );
    assert!(
        broker.acquire_slot("other", "e", 2, lease).await.unwrap(),
        "another scope"
    );
}

async fn a_paused_queue_stays_paused_until_resumed(broker: Arc<dyn Broker>) {
    assert!(broker.paused_queues().await.unwrap().is_empty());
    assert!(broker.set_paused("mail", true).await.unwrap());
    assert!(
        !broker.set_paused("mail", true).await.unwrap(),
        "already paused"
    );
    assert!(broker.set_paused("alpha", true).await.unwrap());
    assert_eq!(broker.paused_queues().await.unwrap(), ["alpha", "mail"]);
    assert!(broker.set_paused("mail", false).await.unwrap());
    assert!(
        !broker.set_paused("mail", false).await.unwrap(),
        "already running"
    );
    assert_eq!(broker.paused_queues().await.unwrap(), ["alpha"]);
}

async fn metrics_are_kept_in_both_resolutions(broker: Arc<dyn Broker>) {
    let ten = Resolution::TenMinutes.span().as_millis() as i64;
    // The start of a ten-minute bucket, so that the buckets used are plain to see.
    let start = now_ms().div_euclid(ten) * ten - 2 * ten;
    let beat = |at: i64, counts: Vec<(Tally, u64)>| WorkerReport {
        consumer: "w".to_owned(),
        info: heartbeat(at),
        at_ms: at,
        counts: counts
            .into_iter()
            .map(|(tally, n)| ("t".to_owned(), tally, n))
            .collect(),
        executions: Vec::new(),
        schedule_runs: Vec::new(),
    };
    let succeeded = Tally::Outcome(Outcome::Succeeded);
    let fast = Tally::Bucket(Metric::Run, Some(10));
    let slow = Tally::Bucket(Metric::Run, None);
    for report in [
        beat(
            start,
            vec![(succeeded, 2), (fast, 2), (Tally::Sum(Metric::Run), 15)],
        ),
        beat(start + MINUTE, vec![(succeeded, 1), (slow, 1)]),
        beat(start + ten, vec![(succeeded, 4), (fast, 4)]),
    ] {
        broker.report_worker(&report).await.unwrap();
    }
    let minute = |at: i64| Resolution::Minute.bucket_of(at);
    let minutes = broker
        .metrics(Resolution::Minute, minute(start), minute(start + ten))
        .await
        .unwrap();
    let seen: Vec<(i64, u64, u64)> = minutes
        .iter()
        .map(|(index, tasks)| (*index, tasks[0].succeeded, tasks[0].run_time.count()))
        .collect();
    assert_eq!(
        seen,
        [
            (minute(start), 2, 2),
            (minute(start + MINUTE), 1, 1),
            (minute(start + ten), 4, 4)
        ],
        "only the minutes written, in order"
    );
    assert_eq!(minutes[0].1[0].run_time.sum(), Duration::from_millis(15));
    let tens = broker
        .metrics(
            Resolution::TenMinutes,
            Resolution::TenMinutes.bucket_of(start),
            Resolution::TenMinutes.bucket_of(start + ten),
        )
        .await
        .unwrap();
    let seen: Vec<(u64, u64)> = tens
        .iter()
        .map(|(_, tasks)| (tasks[0].succeeded, tasks[0].run_time.count()))
        .collect();
    assert_eq!(
        seen,
        [(3, 3), (4, 4)],
        "the first two minutes in one bucket"
    );
    let slowest = tens[0].1[0].run_time.quantile(1.0).unwrap();
    assert_eq!(
        slowest,
        Duration::from_secs(3600),
        "the open bucket reads as the last bound"
    );
    // The totals keep everything, whichever bucket it went to.
    let totals = broker.metric_totals().await.unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!((totals[0].task.as_str(), totals[0].succeeded), ("t", 7));
    assert_eq!(totals[0].run_time.count(), 7);
    assert_eq!(totals[0].run_time.sum(), Duration::from_millis(15));
}

async fn recent_executions_keep_the_newest(broker: Arc<dyn Broker>) {
    let report = |from: usize, to: usize| WorkerReport {
        consumer: "w".to_owned(),
        info: heartbeat(now_ms()),
        at_ms: now_ms(),
        counts: Vec::new(),
        executions: vec![
            (
                "t".to_owned(),
                (from..to).map(|i| i.to_string().into_bytes()).collect(),
            ),
            ("other".to_owned(), vec![b"x".to_vec()]),
        ],
        schedule_runs: vec![(
            "nightly".to_owned(),
            (from..to).map(|i| i.to_string().into_bytes()).collect(),
        )],
    };
    broker.report_worker(&report(0, 600)).await.unwrap();
    broker.report_worker(&report(600, 1100)).await.unwrap();
    let read = |bytes: &Vec<u8>| String::from_utf8(bytes.clone()).unwrap();
    let newest = broker.recent_executions("t", 3).await.unwrap();
    assert_eq!(
        newest.iter().map(read).collect::<Vec<_>>(),
        ["1099", "1098", "1097"],
        "newest first"
    );
    let all = broker.recent_executions("t", 5000).await.unwrap();
    assert_eq!(all.len(), RECENT_EXECUTIONS);
    assert_eq!(
        read(all.last().unwrap()),
        "100",
        "the oldest hundred are gone"
    );
    assert_eq!(
        broker.recent_executions("other", 10).await.unwrap().len(),
        2
    );
    assert!(
        broker
            .recent_executions("none", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let runs = broker.schedule_runs("nightly", 1000).await.unwrap();
    assert_eq!(runs.len(), SCHEDULE_RUNS, "a schedule keeps fewer");
    assert_eq!(read(&runs[0]), "1099");
    assert!(
        broker
            .recent_executions("nightly", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Dead-letter `delivery` with `error`.
fn dying(delivery: &super::Delivery, n: u8, error: &str) -> Write {
    let mut settlement = Settlement::of(delivery);
    let mut dead = letter(n);
    dead.error = error.to_owned();
    settlement.dead = Some(Box::new(dead));
    Write::Settle(settlement)
}

async fn failure_groups_follow_the_letters_in_and_out(broker: Arc<dyn Broker>) {
    broker.prepare(&queues()).await.unwrap();
    broker
        .push((0..5u8).map(|i| job(&[i], None)).collect())
        .await
        .unwrap();
    let got = broker
        .fetch("a", &queues(), 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(got.len(), 5);
    let errors = [
        "row 1 failed",
        "row 2 failed",
        "row 3 failed",
        "disk full",
        "disk full",
    ];
    let writes: Vec<Write> = got
        .iter()
        .zip(0u8..)
        .map(|(delivery, n)| dying(delivery, n, errors[n as usize]))
        .collect();
    let applied = apply(&*broker, "a", &writes, TTL).await.unwrap();
    // The cap (3) trimmed the two oldest rows: the index counts what is stored.
    assert_eq!(applied.dead_trimmed, 2);
    let groups = broker.dead_groups().await.unwrap();
    let counts: Vec<(u64, &str)> = groups.iter().map(|g| (g.count, g.error.as_str())).collect();
    assert_eq!(
        counts,
        [(2, "disk full"), (1, "row <n> failed")],
        "{groups:?}"
    );
    let disk = &groups[0];
    assert_eq!(disk.task.as_deref(), Some("t"));
    assert_eq!(disk.reason, DeadReason::RetriesExhausted);
    assert!(disk.first_ms <= disk.last_ms && disk.first_ms > 0);
    let letters = broker.dead_page(None, None, 10).await.unwrap();
    assert_eq!(
        disk.sample_entry_id.as_ref(),
        Some(&letters[2].entry_id),
        "the newest"
    );
    assert_eq!(letters[0].group, groups[1].id);
    assert_eq!(letters[2].group, disk.id);

    // A replay takes its letter out of the group; the group with none left goes.
    assert!(
        broker
            .dead_replay(&letters[0].entry_id, Q, "job-2", b"again".to_vec())
            .await
            .unwrap()
    );
    let groups = broker.dead_groups().await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    // Removing by id, twice: the second finds nothing and counts nothing.
    let one = [letters[1].entry_id.clone()];
    assert_eq!(broker.dead_remove(&one).await.unwrap(), 1);
    assert_eq!(broker.dead_remove(&one).await.unwrap(), 0);
    assert_eq!(broker.dead_groups().await.unwrap()[0].count, 1);
    assert_eq!(broker.dead_stats().await.unwrap().len, 1);
    // A retention purge and a whole purge empty the index with the stream.
    assert_eq!(broker.dead_purge(Some(now_ms() + 60_000)).await.unwrap(), 1);
    assert_eq!(broker.dead_groups().await.unwrap(), []);
    broker.push(vec![job(b"z", None)]).await.unwrap();
    let last = broker
        .fetch("a", &queues(), 1, Duration::from_millis(50))
        .await
        .unwrap();
    apply(&*broker, "a", &[dying(&last[0], 9, "late")], TTL)
        .await
        .unwrap();
    assert_eq!(broker.dead_groups().await.unwrap().len(), 1);
    broker.dead_purge(None).await.unwrap();
    assert_eq!(broker.dead_groups().await.unwrap(), []);
}

async fn the_audit_log_lists_newest_first_and_pages_back(broker: Arc<dyn Broker>) {
    use crate::audit::{AuditAction, AuditEntry};
    assert_eq!(broker.audit_page(None, 10).await.unwrap(), []);
    for n in 0..5u64 {
        let entry = AuditEntry::new(
            "ops",
            "127.0.0.1",
            AuditAction::GroupReplay,
            format!("g{n}"),
            n,
        );
        let id = broker.audit_append(&entry).await.unwrap();
        assert!(!id.is_empty());
    }
    let newest = broker.audit_page(None, 2).await.unwrap();
    let targets: Vec<&str> = newest.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["g4", "g3"]);
    assert_eq!((newest[0].user.as_str(), newest[0].jobs), ("ops", 4));
    assert_eq!(newest[0].action, AuditAction::GroupReplay);
    let older = broker.audit_page(Some(&newest[1].id), 10).await.unwrap();
    let targets: Vec<&str> = older.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["g2", "g1", "g0"]);
}
