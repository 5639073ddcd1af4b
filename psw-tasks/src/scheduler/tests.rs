//! The beat on simulated clocks, against the memory broker and Redis: days of schedule in
//! milliseconds, outages, restarts and racing beats.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;

use super::Scheduler;
use super::clock::{Clock, SimClock, Skewed, SystemClock};
use crate::client::Client;
use crate::envelope::{Envelope, SystemHeader};
use crate::rules::Misfire;
use crate::schedule::Schedule;
use crate::testing::TestNamespace;

/// A client on the memory broker and one on Redis in a fresh namespace (kept until the end).
async fn clients(label: &str) -> Vec<(&'static str, Client, Option<TestNamespace>)> {
    let ns = TestNamespace::new(label);
    let redis = ns.client().await;
    vec![
        ("memory", Client::memory(), None),
        ("redis", redis, Some(ns)),
    ]
}

/// A scheduler of `schedules` only, all firing the task `sim.task` (not linked: its jobs go
/// to the `default` queue).
fn scheduler(client: &Client, schedules: &[(&str, Schedule)], clock: Arc<dyn Clock>) -> Scheduler {
    scheduler_on(client, schedules, clock.clone(), clock)
}

/// A scheduler of `schedules` on a host whose clock is `local`, with `server` as the broker's.
fn scheduler_on(
    client: &Client,
    schedules: &[(&str, Schedule)],
    local: Arc<dyn Clock>,
    server: Arc<dyn Clock>,
) -> Scheduler {
    let mut scheduler = Scheduler::builder(client)
        .task_schedules(false)
        .clock(local)
        .server_clock(server)
        .build()
        .unwrap();
    for (name, schedule) in schedules {
        scheduler
            .add(name, "sim.task", schedule.clone(), ())
            .unwrap();
    }
    scheduler
}

/// Run a beat of `schedules` on a simulated clock from `start_ms` until `end_ms`.
async fn run_beat(client: &Client, schedules: &[(&str, Schedule)], start_ms: i64, end_ms: i64) {
    let clock = Arc::new(SimClock::new(start_ms, end_ms));
    let scheduler = scheduler(client, schedules, clock.clone());
    tokio::time::timeout(
        Duration::from_secs(60),
        scheduler.run_until(async move { clock.finished().await }),
    )
    .await
    .expect("the simulated run ends")
    .expect("the beat runs without error");
}

/// A fired job: its schedule, slot and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fired {
    schedule: String,
    slot_ms: i64,
    late: bool,
    missed_from_ms: Option<i64>,
    id: String,
}

/// Every job in the `default` queue, taken out of it, in order.
async fn take_fired(client: &Client) -> Vec<Fired> {
    let broker = client.broker();
    let queues = vec!["default".to_owned()];
    broker.prepare(&queues).await.unwrap();
    let mut fired = Vec::new();
    loop {
        let got = broker
            .fetch("test", &queues, 10_000, Duration::from_millis(20))
            .await
            .unwrap();
        if got.is_empty() {
            return fired;
        }
        for delivery in got {
            let envelope = Envelope::decode(&delivery.payload).unwrap();
            let header = |name: SystemHeader| envelope.header(name).map(str::to_owned);
            fired.push(Fired {
                schedule: header(SystemHeader::Schedule).unwrap(),
                slot_ms: header(SystemHeader::SlotMs).unwrap().parse().unwrap(),
                late: header(SystemHeader::Late).unwrap() == "true",
                missed_from_ms: header(SystemHeader::MissedFromMs).map(|ms| ms.parse().unwrap()),
                id: envelope.id.to_string(),
            });
        }
    }
}

fn stockholm(month: u32, day: u32, hour: u32, minute: u32) -> i64 {
    chrono_tz::Europe::Stockholm
        .with_ymd_and_hms(2026, month, day, hour, minute, 0)
        .earliest()
        .unwrap()
        .timestamp_millis()
}

#[tokio::test]
async fn dst_days_in_stockholm_fire_23_and_25_hourly_jobs_and_one_daily() {
    let zoned = |expression: &str| {
        Schedule::cron(expression)
            .unwrap()
            .tz("Europe/Stockholm")
            .unwrap()
    };
    for (broker, client, _ns) in clients("dst").await {
        for ((month, day), hourly_runs, daily_at) in [
            ((3, 29), 23, "2026-03-29 03:00:00 CEST"),
            ((10, 25), 25, "2026-10-25 02:30:00 CEST"),
        ] {
            // Schedules of their own each day: the same ones would catch up the months between.
            let (hourly_name, daily_name) = (format!("hourly-{month}"), format!("daily-{month}"));
            let schedules = [
                (hourly_name.as_str(), zoned("0 * * * *")),
                (daily_name.as_str(), zoned("30 2 * * *")),
            ];
            // From just before the day's first midnight to just before the next.
            let start = stockholm(month, day, 0, 0) - 1;
            let end = stockholm(month, day + 1, 0, 0) - 1;
            let started = std::time::Instant::now();
            run_beat(&client, &schedules, start, end).await;
            let fired = take_fired(&client).await;
            let of = |name: &str| -> Vec<&Fired> {
                fired.iter().filter(|f| f.schedule == name).collect()
            };
            let hourly = of(&hourly_name);
            assert_eq!(
                hourly.len(),
                hourly_runs,
                "{broker} {month}-{day}: {hourly:?}"
            );
            assert!(
                hourly
                    .windows(2)
                    .all(|w| w[0].slot_ms + 3_600_000 == w[1].slot_ms),
                "{broker}: one hour apart in real time: {hourly:?}"
            );
            let daily = of(&daily_name);
            assert_eq!(daily.len(), 1, "{broker} {month}-{day}: {daily:?}");
            assert_eq!(schedules[1].1.local(daily[0].slot_ms), daily_at, "{broker}");
            assert!(fired.iter().all(|f| !f.late), "{broker}: {fired:?}");
            // A simulated day, not a real one.
            assert!(started.elapsed() < Duration::from_secs(30), "{broker}");
        }
    }
}

/// 10:00 UTC on 2026-03-01 plus `minutes`, in ms.
fn minute(minutes: i64) -> i64 {
    chrono::Utc
        .with_ymd_and_hms(2026, 3, 1, 10, 0, 0)
        .unwrap()
        .timestamp_millis()
        + minutes * 60_000
}

#[tokio::test]
async fn a_ten_minute_outage_follows_each_misfire_policy() {
    let every_minute = Schedule::cron("* * * * *").unwrap();
    let schedules = [
        ("coalesce", every_minute.clone().misfire(Misfire::Coalesce)),
        (
            "backfill",
            every_minute.clone().misfire(Misfire::Backfill(10)),
        ),
        ("skip", every_minute.clone().misfire(Misfire::Skip)),
    ];
    for (broker, client, _ns) in clients("misfire").await {
        // Up for the 10:00 slot, then down until 10:10:45, then up until after 10:12.
        run_beat(&client, &schedules, minute(0) - 30_000, minute(0) + 5_000).await;
        run_beat(&client, &schedules, minute(10) + 45_000, minute(12) + 5_000).await;
        let fired = take_fired(&client).await;
        let slots = |name: &str| -> Vec<(i64, bool, Option<i64>)> {
            let mut slots: Vec<_> = fired
                .iter()
                .filter(|f| f.schedule == name)
                .map(|f| (f.slot_ms, f.late, f.missed_from_ms))
                .collect();
            slots.sort();
            slots
        };
        let on_time = |m| (minute(m), false, None);
        assert_eq!(
            slots("coalesce"),
            [
                on_time(0),
                (minute(10), true, Some(minute(1))),
                on_time(11),
                on_time(12)
            ],
            "{broker}"
        );
        let mut backfilled = vec![on_time(0)];
        backfilled.extend((1..=10).map(|m| (minute(m), true, None)));
        backfilled.extend([on_time(11), on_time(12)]);
        assert_eq!(slots("backfill"), backfilled, "{broker}");
        assert_eq!(
            slots("skip"),
            [on_time(0), on_time(11), on_time(12)],
            "{broker}"
        );
        // Each job's id is derived from its schedule and slot.
        assert!(
            fired
                .iter()
                .any(|f| f.id == "coalesce@2026-03-01T10:10:00Z"),
            "{broker}: {fired:?}"
        );
    }
}

/// Two beats of an `every 1m` schedule for an hour, one leading with a clock `offset_ms` off,
/// the other right: the slots come from Redis's (here: the broker's) clock, whichever leads.
async fn an_hour_with_a_skewed_leader(offset_ms: i64) {
    let every_minute = Schedule::every(Duration::from_secs(60)).unwrap();
    for (broker, client, _ns) in clients("skew").await {
        let schedules = [("minutely", every_minute.clone())];
        let (start, end) = (minute(0), minute(60));
        let truth = Arc::new(SimClock::new(start, end));
        let skewed: Arc<dyn Clock> = Arc::new(Skewed {
            base: truth.clone(),
            offset_ms,
        });
        let leader = scheduler_on(&client, &schedules, skewed, truth.clone());
        let follower = scheduler(&client, &schedules, truth.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        // The skewed one starts first and takes the lease; the right one waits behind it.
        let leading = tokio::spawn(leader.run_until(stop.clone().cancelled_owned()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let following = tokio::spawn(follower.run_until(stop.clone().cancelled_owned()));
        tokio::time::timeout(Duration::from_secs(60), truth.finished())
            .await
            .expect("the simulated hour ends");
        stop.cancel();
        leading.await.unwrap().unwrap();
        following.await.unwrap().unwrap();
        let mut slots: Vec<i64> = take_fired(&client)
            .await
            .iter()
            .map(|f| f.slot_ms)
            .collect();
        slots.sort();
        let expected: Vec<i64> = (1..=60).map(minute).collect();
        assert_eq!(
            slots, expected,
            "{broker}, leader {offset_ms} ms off: each minute of the hour once, none early"
        );
    }
}

#[tokio::test]
async fn a_leader_an_hour_ahead_fires_no_slot_early() {
    an_hour_with_a_skewed_leader(3_600_000).await;
}

#[tokio::test]
async fn a_leader_an_hour_behind_fires_every_slot() {
    an_hour_with_a_skewed_leader(-3_600_000).await;
}

#[tokio::test]
async fn a_beat_ten_minutes_ahead_plans_by_the_brokers_own_clock() {
    // Real time and, on Redis, Redis's `TIME`: no simulated stand-in for the broker's clock.
    let every_second = Schedule::every(Duration::from_secs(1)).unwrap();
    for (broker, client, _ns) in clients("real-skew").await {
        let ahead: Arc<dyn Clock> = Arc::new(Skewed {
            base: Arc::new(SystemClock),
            offset_ms: 600_000,
        });
        let mut beat = Scheduler::builder(&client)
            .task_schedules(false)
            .clock(ahead)
            .build()
            .unwrap();
        beat.add("seconds", "sim.task", every_second.clone(), ())
            .unwrap();
        let started = crate::envelope::now_ms();
        beat.run_until(tokio::time::sleep(Duration::from_millis(2500)))
            .await
            .unwrap();
        let ended = crate::envelope::now_ms();
        let slots: Vec<i64> = take_fired(&client)
            .await
            .iter()
            .map(|f| f.slot_ms)
            .collect();
        assert!(
            (1..=3).contains(&slots.len()),
            "{broker}: the seconds of 2.5 s, not of ten minutes ahead: {slots:?}"
        );
        assert!(
            slots
                .iter()
                .all(|&slot| slot > started - 1000 && slot <= ended),
            "{broker}: none early ({started}..{ended}): {slots:?}"
        );
    }
}

#[tokio::test]
async fn beats_racing_on_the_same_slots_fire_each_once() {
    let every_second = Schedule::every(Duration::from_secs(1)).unwrap();
    for (broker, client, _ns) in clients("race").await {
        let schedules = [("race", every_second.clone())];
        let beats: Vec<Scheduler> = (0..3)
            .map(|_| scheduler(&client, &schedules, Arc::new(SystemClock)))
            .collect();
        let base = minute(0);
        let store = client.broker().as_ref();
        for beat in &beats {
            // One after another: the first one's start counts.
            store_register(beat, base).await;
        }
        // All three act on every second, as beats that all believe they lead would.
        for second in 1..=100 {
            let now = base + second * 1000;
            let (a, b, c) = tokio::join!(
                beats[0].tick(store, &beats[0].entries[0], now),
                beats[1].tick(store, &beats[1].entries[0], now),
                beats[2].tick(store, &beats[2].entries[0], now),
            );
            assert!(a.is_some() && b.is_some() && c.is_some());
        }
        // A beat that was paused comes back with a stale clock: nothing fires twice.
        beats[1]
            .tick(store, &beats[1].entries[0], base + 50_000)
            .await;
        let fired = take_fired(&client).await;
        let mut slots: Vec<i64> = fired.iter().map(|f| f.slot_ms).collect();
        slots.sort();
        let expected: Vec<i64> = (1..=100).map(|s| base + s * 1000).collect();
        assert_eq!(slots, expected, "{broker}: every slot once");
    }
}

async fn store_register(beat: &Scheduler, now: i64) {
    let broker = beat.client.broker().clone();
    for entry in &beat.entries {
        broker
            .beat_register(&entry.name, now, &entry.definition())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_runtime_api_refuses_mistakes_clearly() {
    let client = Client::memory();
    let mut scheduler = Scheduler::builder(&client)
        .task_schedules(false)
        .build()
        .unwrap();
    let err = Schedule::cron("*/15 * * * * * *").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid schedule \"*/15 * * * * * *\": expected 5 fields (minute hour day-of-month \
         month day-of-week) or 6 with seconds first, found 7"
    );
    let every = Schedule::parse("every 90s").unwrap();
    scheduler
        .add("prices", "stocks.update", every.clone(), ("AAPL", 3))
        .unwrap();
    let err = scheduler
        .add("prices", "stocks.update", every.clone(), ())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid schedule \"prices\": a schedule of this name is already added"
    );
    let err = scheduler
        .add("my prices", "stocks.update", every, ())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid schedule \"my prices\": a schedule name is 1 to 200 characters without \
         whitespace, `{`, `}` or `@`"
    );
}

#[tokio::test]
async fn a_paused_schedule_lets_its_slots_pass_and_a_run_by_hand_goes_out_at_once() {
    // Backfill would catch up every missed slot: a pause must not look like an outage.
    let every_minute = Schedule::cron("* * * * *")
        .unwrap()
        .misfire(Misfire::Backfill(10));
    let schedules = [("paused", every_minute.clone()), ("other", every_minute)];
    for (broker, client, _ns) in clients("pause-schedule").await {
        run_beat(&client, &schedules, minute(0) - 30_000, minute(1) + 5_000).await;
        client.pause_schedule("paused").await.unwrap();
        let err = client.pause_schedule("nobody").await.unwrap_err();
        assert!(err.to_string().contains("nobody"), "{broker}: {err}");
        run_beat(&client, &schedules, minute(1) + 5_000, minute(4) + 5_000).await;
        // Run by hand while paused: its task and arguments, its name, no slot.
        let by_hand = client.run_schedule("paused").await.unwrap();
        client.resume_schedule("paused").await.unwrap();
        run_beat(&client, &schedules, minute(4) + 5_000, minute(6) + 5_000).await;

        let fired = take_fired_or_by_hand(&client).await;
        let slots = |name: &str| -> Vec<Option<i64>> {
            fired
                .iter()
                .filter(|(schedule, _, _)| schedule == name)
                .map(|(_, slot, _)| *slot)
                .collect()
        };
        let at = |minutes: &[i64]| -> Vec<Option<i64>> {
            minutes.iter().map(|&m| Some(minute(m))).collect()
        };
        let mut expected = at(&[0, 1]);
        expected.push(None);
        expected.extend(at(&[5, 6]));
        assert_eq!(
            slots("paused"),
            expected,
            "{broker}: 2 to 4 passed, not caught up"
        );
        assert_eq!(slots("other"), at(&[0, 1, 2, 3, 4, 5, 6]), "{broker}");
        assert!(
            fired
                .iter()
                .any(|(_, slot, id)| slot.is_none() && id == by_hand.id().as_str()),
            "{broker}"
        );
    }
}

/// Every job in the `default` queue, taken out of it, in order: (schedule, slot if any, id).
async fn take_fired_or_by_hand(client: &Client) -> Vec<(String, Option<i64>, String)> {
    let broker = client.broker();
    let queues = vec!["default".to_owned()];
    broker.prepare(&queues).await.unwrap();
    let mut fired = Vec::new();
    loop {
        let got = broker
            .fetch("test", &queues, 10_000, Duration::from_millis(20))
            .await
            .unwrap();
        if got.is_empty() {
            return fired;
        }
        for delivery in got {
            let envelope = Envelope::decode(&delivery.payload).unwrap();
            fired.push((
                envelope.header(SystemHeader::Schedule).unwrap().to_owned(),
                envelope
                    .header(SystemHeader::SlotMs)
                    .map(|ms| ms.parse().unwrap()),
                envelope.id.to_string(),
            ));
        }
    }
}
