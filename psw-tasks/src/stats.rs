//! Cluster statistics from [`crate::Client::stats`]: which workers run, what the queues hold and how
//! each task fared lately, for health checks and dashboards.
//!
//! Workers publish a heartbeat every third of their lease, carrying their counters and the
//! outcomes they counted since the last one; readers compute everything else from Redis.
//! `docs/protocol.md` has the keys and their encoding.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::broker::{Broker, DeadLetterStats, QueueStats};
use crate::error::{Error, Result};
use crate::history::{self, MetricsHistory};
use crate::metrics::{Resolution, TaskCounts};
use crate::priority;
use crate::record::Progress;
use crate::shard;

/// A worker whose last heartbeat is older than this is forgotten by readers: it was killed
/// without a chance to remove itself.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Heartbeats a worker may miss and still be alive: one late beat is not a dead worker.
const ALIVE_BEATS: u64 = 3;

/// A snapshot of the namespace: workers, queues, recent task outcomes and dead letters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Workers that sent a heartbeat within the last hour, alive or not, sorted by name.
    pub workers: Vec<WorkerInfo>,
    /// Every queue a worker has prepared or consumes now, sorted by name.
    pub queues: Vec<QueueStats>,
    /// Outcomes, run times and queue waits per task summed over the window, sorted by task;
    /// tasks without any are left out.
    pub tasks: Vec<TaskCounts>,
    /// The dead-letter queue now.
    #[serde(serialize_with = "dead_json")]
    pub dead: DeadLetterStats,
    /// The window `tasks` sums over: the one asked for, at most a day (older counts are
    /// gone). The minute buckets it overlaps are summed, so the counts cover between the
    /// window and the window plus a minute.
    #[serde(rename = "window_ms", serialize_with = "duration_ms")]
    pub window: Duration,
    /// When the snapshot was taken, by the reader's clock, in ms since the Unix epoch.
    pub at_ms: i64,
}

/// One worker process, as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its consumer name in the queues' consumer groups (`<host>-<pid>-<random>`).
    pub name: String,
    /// The queues it consumes.
    pub queues: Vec<String>,
    /// Jobs it runs at once at most.
    pub concurrency: u64,
    /// When it started, in ms since the Unix epoch (its clock).
    pub started_ms: i64,
    /// When it sent its last heartbeat, in ms since the Unix epoch (its clock).
    pub seen_ms: i64,
    /// Time between its heartbeats (a third of its lease), in ms.
    pub heartbeat_ms: u64,
    /// Whether its last heartbeat is at most three heartbeat intervals old by the reader's
    /// clock (keep clocks in sync). A worker that stops gracefully removes itself; one that
    /// was killed stays listed, not alive, for an hour.
    pub alive: bool,
    /// Jobs it was running at its last heartbeat (holding a run slot, the last ones possibly
    /// storing their outcome).
    pub running: u64,
    /// Attempts that succeeded in it since it started.
    pub succeeded: u64,
    /// Attempts that failed in it since it started (errors, panics, time limits), whether they
    /// were retried or not.
    pub failed: u64,
    /// Failed attempts it scheduled again.
    pub retried: u64,
    /// Dead letters it wrote: failed for good, and deliveries it could not run at all
    /// (unknown task, undecodable, oversized, poisoned).
    pub dead_lettered: u64,
    /// The jobs it was running at its last heartbeat, oldest first.
    pub active: Vec<ActiveJob>,
}

/// A job a worker runs now, as its heartbeat tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActiveJob {
    /// The job's id.
    pub id: String,
    /// Its task's wire name.
    pub task: String,
    /// When this attempt started, in ms since the Unix epoch (the worker's clock).
    pub started_ms: i64,
    /// Its last progress report, if its task keeps results and reported any.
    #[serde(default)]
    pub progress: Option<Progress>,
}

fn dead_json<S: Serializer>(
    dead: &DeadLetterStats,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    let mut out = serializer.serialize_struct("DeadLetterStats", 4)?;
    out.serialize_field("len", &dead.len)?;
    out.serialize_field("trimmed", &dead.trimmed)?;
    out.serialize_field("added", &dead.added)?;
    out.serialize_field("bytes", &dead.bytes)?;
    out.end()
}

fn duration_ms<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_millis() as u64)
}

/// A worker's heartbeat as stored: a MessagePack map (`docs/protocol.md`). Fields a reader does
/// not know are ignored and missing ones are zero, so versions can differ.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Heartbeat {
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: u64,
    pub(crate) started_ms: i64,
    pub(crate) seen_ms: i64,
    pub(crate) heartbeat_ms: u64,
    pub(crate) running: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) active: Vec<ActiveJob>,
}

impl Heartbeat {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(|err| Error::encode("worker heartbeat", err))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        rmp_serde::from_slice(bytes).map_err(|err| Error::decode("worker heartbeat", &err))
    }

    fn into_info(self, name: String, now_ms: i64) -> WorkerInfo {
        WorkerInfo {
            name,
            queues: self.queues,
            concurrency: self.concurrency,
            started_ms: self.started_ms,
            seen_ms: self.seen_ms,
            heartbeat_ms: self.heartbeat_ms,
            alive: now_ms - self.seen_ms <= (ALIVE_BEATS * self.heartbeat_ms) as i64,
            running: self.running,
            succeeded: self.succeeded,
            failed: self.failed,
            retried: self.retried,
            dead_lettered: self.dead_lettered,
            active: self.active,
        }
    }
}

/// The namespace's stats as of `now_ms` (passed in, so tests need no clock). Heartbeats older
/// than [`FORGET_AFTER`] are deleted on the way.
pub(crate) async fn collect(
    broker: &dyn Broker,
    window: Duration,
    now_ms: i64,
) -> Result<ClusterStats> {
    let window = window.min(Resolution::Minute.kept());
    let history = history::collect(broker, Resolution::Minute, window, now_ms).await?;
    collect_over(broker, &history, window, now_ms).await
}

/// As [`collect`], with the tasks' counts summed from `history`, a reading of the window
/// the caller has made already (the dashboard's, kept between its refreshes).
pub(crate) async fn collect_over(
    broker: &dyn Broker,
    history: &MetricsHistory,
    window: Duration,
    now_ms: i64,
) -> Result<ClusterStats> {
    let forget_before = now_ms - FORGET_AFTER.as_millis() as i64;
    let mut workers = Vec::new();
    let mut gone = Vec::new();
    for (name, bytes) in broker.workers().await? {
        match Heartbeat::decode(&bytes) {
            Ok(beat) if beat.seen_ms < forget_before => gone.push(name),
            Ok(beat) => workers.push(beat.into_info(name, now_ms)),
            // Left in place: it may be a newer version's, which that version can read.
            Err(err) => {
                tracing::debug!(worker = %name, error = %crate::error::chain(&err), "unreadable heartbeat skipped")
            }
        }
    }
    if !gone.is_empty() {
        broker.forget_workers(&gone).await?;
    }
    workers.sort_by(|a, b| a.name.cmp(&b.name));

    // A queue's priority lanes and shards are counted as the queue.
    let mut names: BTreeSet<String> = broker
        .queue_names()
        .await?
        .iter()
        .map(|name| priority::split_lane(name).0.to_owned())
        .collect();
    names.extend(workers.iter().flat_map(|w| w.queues.iter().cloned()));
    let lanes: Vec<String> = names
        .iter()
        .flat_map(|name| priority::lanes(name))
        .collect();
    let mut queues = fold_lanes(broker.queue_stats(&lanes).await?);
    let paused = broker.paused_queues().await?;
    for queue in &mut queues {
        queue.paused = paused.contains(&queue.name);
    }

    let tasks = history.totals();
    let dead = broker.dead_stats().await?;
    Ok(ClusterStats {
        workers,
        queues,
        tasks,
        dead,
        window,
        at_ms: now_ms,
    })
}

/// One entry per queue from the stats of its lanes (its levels, and its shards' levels):
/// their jobs summed, their consumers (the same workers read every lane of a queue) the most
/// of any; sorted by queue.
fn fold_lanes(lanes: Vec<QueueStats>) -> Vec<QueueStats> {
    let mut queues: Vec<QueueStats> = Vec::new();
    for lane in lanes {
        let queue = shard::queue_of_lane(&lane.name);
        match queues.iter_mut().find(|known| known.name == queue) {
            Some(last) => {
                last.ready += lane.ready;
                last.pending += lane.pending;
                last.delayed += lane.delayed;
                last.consumers = last.consumers.max(lane.consumers);
                last.oldest_age_ms = last.oldest_age_ms.max(lane.oldest_age_ms);
            }
            None => queues.push(QueueStats {
                name: queue.to_owned(),
                ..lane
            }),
        }
    }
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_alive_for_three_heartbeats() {
        let beat = Heartbeat {
            seen_ms: 10_000,
            heartbeat_ms: 1_000,
            ..Heartbeat::default()
        };
        let decoded = Heartbeat::decode(&beat.encode().unwrap()).unwrap();
        assert_eq!(decoded, beat);
        assert!(beat.clone().into_info("w".into(), 13_000).alive);
        assert!(!beat.into_info("w".into(), 13_001).alive);
    }

    #[test]
    fn json_has_ms_and_the_failure_rate() {
        let stats = ClusterStats {
            workers: Vec::new(),
            queues: Vec::new(),
            tasks: vec![TaskCounts {
                succeeded: 3,
                failed: 1,
                ..TaskCounts::of("t")
            }],
            dead: DeadLetterStats {
                len: 2,
                trimmed: 0,
                added: 2,
                bytes: 2_000,
            },
            window: Duration::from_secs(900),
            at_ms: 5,
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["window_ms"], 900_000);
        assert_eq!(json["dead"]["len"], 2);
        assert_eq!(json["tasks"][0]["failure_rate"], 0.25);
    }
}
