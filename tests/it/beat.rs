//! The beat: exactly once per slot across processes whose leader is killed, no overlapping
//! runs, and the `beat`, `all` and `schedules` commands.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{Schedule, Scheduler};
use psw_tasks_tests::{clear_local_runs, local_runs, runs_of};

use crate::processes::{run_cli, signal, spawn, wait_exit};
use crate::support::{eventually, queue_state, start_worker};

/// A field of a schedule's hash, read with a plain command.
fn schedule_field(ns: &TestNamespace, schedule: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("{{{}}}:beat:schedule:{schedule}", ns.name()))
        .arg(field)
        .query(&mut *ns.connection())
        .unwrap()
}

/// The pid of the beat holding the leader lease, read from the lease (`<host>-<pid>-<random>`).
fn leader_pid(ns: &TestNamespace) -> Option<u32> {
    let holder: Option<String> = redis::cmd("GET")
        .arg(format!("{{{}}}:beat:leader", ns.name()))
        .query(&mut *ns.connection())
        .unwrap();
    holder?.rsplit('-').nth(1)?.parse().ok()
}

/// Runs per slot (ms) of `it.beat_tick` in this process.
fn tick_runs() -> BTreeMap<i64, u32> {
    local_runs("beat_tick")
        .into_iter()
        .map(|(slot, runs)| (slot.parse().expect("a slot_ms header"), runs))
        .collect()
}

/// On one Redis, then on a Redis Cluster: one after the other, since the runs are counted in
/// this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_beats_with_the_leader_killed_every_15s_fire_each_second_once() {
    three_beats_fire_each_second_once(TestNamespace::new("beat-once")).await;
    clear_local_runs("beat_tick");
    three_beats_fire_each_second_once(TestNamespace::on_cluster("beat-once-cluster")).await;
}

async fn three_beats_fire_each_second_once(ns: TestNamespace) {
    let client = ns.client().await;
    let worker = start_worker(&client, 8);
    let started = tokio::time::Instant::now();
    let mut beats: Vec<Child> = (0..3).map(|_| spawn(&ns, "beat", &[])).collect();

    for round in 1..=3 {
        tokio::time::sleep_until(started + Duration::from_secs(15 * round)).await;
        let mut leader = None;
        eventually(Duration::from_secs(15), "one of the beats leads", || {
            leader = leader_pid(&ns).and_then(|pid| beats.iter().position(|b| b.id() == pid));
            std::future::ready(leader.is_some())
        })
        .await;
        let mut killed = beats.remove(leader.expect("found above"));
        signal(&killed, "KILL");
        wait_exit(&mut killed, Duration::from_secs(10));
        beats.push(spawn(&ns, "beat", &[]));
    }
    tokio::time::sleep_until(started + Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "60 seconds of slots ran",
        || async {
            let runs = tick_runs();
            match (runs.keys().next(), runs.keys().last()) {
                (Some(first), Some(last)) => last - first >= 59_000,
                _ => false,
            }
        },
    )
    .await;
    for beat in &beats {
        signal(beat, "TERM");
    }
    for beat in &mut beats {
        assert!(wait_exit(beat, Duration::from_secs(10)).success());
    }
    eventually(Duration::from_secs(20), "every job ran", || async {
        queue_state(&ns, "beat") == (0, 0)
    })
    .await;
    worker.stop().await;

    let runs = tick_runs();
    let slots: Vec<i64> = runs.keys().copied().collect();
    assert!(
        runs.values().all(|&n| n == 1),
        "no slot fired twice: {runs:?}"
    );
    assert!(
        slots.windows(2).all(|w| w[1] - w[0] == 1000),
        "no slot missing: {slots:?}"
    );
    let first = slots[0];
    let window: Vec<i64> = slots
        .iter()
        .copied()
        .filter(|&slot| slot < first + 60_000)
        .collect();
    assert_eq!(window.len(), 60, "exactly 60 jobs in 60 seconds");
    assert!(slots.iter().all(|slot| slot % 1000 == 0), "whole seconds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_overlap_no_run_starts_while_the_last_one_runs() {
    let ns = TestNamespace::new("beat-overlap");
    let client = ns.client().await;
    let ledger = ns.name().to_owned();
    let worker = start_worker(&client, 4);
    let mut scheduler = Scheduler::builder(&client)
        .task_schedules(false)
        .build()
        .unwrap();
    let every_second = Schedule::every(Duration::from_secs(1))
        .unwrap()
        .overlap(false);
    // Each run takes 2.5 s, so slots come due while the last run is still going.
    scheduler
        .add(
            "overlap",
            "it.timed",
            every_second,
            (ledger.clone(), 2500u64),
        )
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let beat = tokio::spawn(scheduler.run_until(async {
        let _ = stopped.await;
    }));
    eventually(Duration::from_secs(30), "two runs finished", || {
        std::future::ready(runs_of(&ledger).len() >= 2)
    })
    .await;
    let _ = stop.send(());
    beat.await.unwrap().unwrap();
    eventually(Duration::from_secs(20), "the last run finished", || async {
        queue_state(&ns, "default") == (0, 0)
    })
    .await;
    worker.stop().await;

    let mut runs = runs_of(&ledger);
    runs.sort();
    assert!(
        runs.windows(2).all(|w| w[0].1 <= w[1].0),
        "each run starts after the last one ended: {runs:?}"
    );
    let skipped: u64 = schedule_field(&ns, "overlap", "overlap_skips")
        .expect("skips are recorded")
        .parse()
        .unwrap();
    assert!(skipped >= 1, "the slots due meanwhile were skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_runs_worker_and_beat_and_schedules_lists_them() {
    let ns = TestNamespace::new("beat-all");
    let mut all = spawn(&ns, "all", &[]);
    let client = ns.client().await;
    eventually(Duration::from_secs(20), "a tick ran", || async {
        match schedule_field(&ns, "it.beat_tick", "job") {
            Some(job) => matches!(
                client.record(&job).await.unwrap(),
                Some(record) if record.state == psw_tasks::State::Success
            ),
            None => false,
        }
    })
    .await;
    signal(&all, "TERM");
    assert!(wait_exit(&mut all, Duration::from_secs(20)).success());

    let (ok, out, err) = run_cli(&ns, &["schedules"], &[]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    let tick = lines
        .iter()
        .position(|line| line.starts_with("it.beat_tick "))
        .unwrap_or_else(|| panic!("it.beat_tick listed:\n{out}"));
    for column in ["every 1s", "UTC", "coalesce", "yes"] {
        assert!(lines[tick].contains(column), "{column} in {}", lines[tick]);
    }
    // The last tick may have been fired just before the stop and not run.
    assert!(
        lines[tick].contains("SUCCESS") || lines[tick].contains("queued"),
        "{}",
        lines[tick]
    );
    assert_eq!(lines[tick + 1].matches(" UTC").count(), 5, "{out}");
    let nightly = lines
        .iter()
        .position(|line| line.starts_with("it.nightly "))
        .unwrap_or_else(|| panic!("it.nightly listed:\n{out}"));
    for column in ["30 2 * * *", "Europe/Stockholm", "backfill(3)", "no"] {
        assert!(
            lines[nightly].contains(column),
            "{column} in {}",
            lines[nightly]
        );
    }
    let next = lines[nightly + 1];
    assert!(next.starts_with("  next: "), "{out}");
    assert_eq!(next.matches(" 02:30:00 CE").count(), 5, "{out}");
    assert!(lines[nightly].ends_with("active"), "{}", lines[nightly]);

    // Paused from the command line, and listed so; an unknown name is refused by name.
    let (ok, out, err) = run_cli(&ns, &["schedule", "pause", "it.nightly"], &[]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "paused it.nightly");
    let (ok, out, err) = run_cli(&ns, &["schedules"], &[]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|line| line.starts_with("it.nightly "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with("paused"), "{line}");
    let (ok, _, err) = run_cli(&ns, &["schedule", "run", "no.such"], &[]);
    assert!(!ok && err.contains("no.such"), "{err}");
}
