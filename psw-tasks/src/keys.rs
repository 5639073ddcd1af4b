//! The only place Redis key names, hash and stream field names are spelled (mirrored in
//! `docs/protocol.md`). Pure: names only, no IO.
//!
//! Key layout 2. Every key carries a Redis Cluster hash tag, so that each command, MULTI or
//! script, which touches keys of one tag only, stays on one slot:
//! - a queue's keys (its lanes' streams and delayed sets, the locks and holds its conditional
//!   enqueues take with the add, a consumer's settle receipt for it) share `{namespace:queue}`,
//!   so that different queues land on different slots, and on a cluster on different nodes;
//! - the namespace-wide structures (records, dead letters, registry, stats, beat, audit) share
//!   `{namespace}`.
//!
//! Namespace and queue names hold no `:`, so a queue's tag never equals the namespace's.

use crate::error::{Error, Result};
use crate::rules::{self, NameProblem, split_lane};
use crate::wire::wire_enum;

/// The version of the key layout this code reads and writes, kept in `{ns}:layout`. Layout 1
/// put every key under `{ns}`; 2 gives each queue a tag of its own.
pub(crate) const LAYOUT_VERSION: u32 = 2;

/// The consumer group every worker of a namespace joins, on every queue stream.
pub(crate) const GROUP: &str = "workers";

/// The stream field that holds the encoded envelope, in queue streams and dead letters.
pub(crate) const JOB_FIELD: &str = "job";

wire_enum! {
    /// The fields of a schedule's hash, `{ns}:beat:schedule:<name>`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum ScheduleField {
        /// The last slot handled (ms), compared and set by every pass.
        Last => "last_ms",
        /// The stream entry id of the last job fired.
        Entry => "entry",
        /// The definition: task, queue, expression, zone, misfire policy, overlap.
        Task => "task",
        Queue => "queue",
        Schedule => "schedule",
        Tz => "tz",
        Misfire => "misfire",
        Overlap => "overlap",
        /// The last job fired: its id, its slot, when it was sent, whether late.
        Job => "job",
        Slot => "slot_ms",
        Fired => "fired_ms",
        Late => "late",
        /// Slots skipped because the last run was still going, and the latest of them.
        OverlapSkips => "overlap_skips",
        SkippedSlot => "skipped_slot_ms",
        /// `true` while the schedule is paused: its slots pass without a job.
        Paused => "paused",
        /// The jobs' arguments as JSON, for a run started by hand (`Client::run_schedule`).
        Args => "args",
    }
}

wire_enum! {
    /// The fields of a dead-letter entry in `{ns}:dead`, besides [`JOB_FIELD`] (the bytes).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum DeadField {
        Reason => "reason",
        Error => "error",
        Queue => "queue",
        Entry => "entry",
        At => "at_ms",
        Errors => "errors",
        Truncated => "truncated",
        Id => "id",
        Task => "task",
        /// What the letter takes against the queue's byte budget.
        Bytes => "bytes",
        /// Its failure group's id (`DeadLetter::group`), for the group index.
        Group => "group",
    }
}

wire_enum! {
    /// What an attempt came to, as the per-minute stats count it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub(crate) enum Outcome {
        Succeeded => "succeeded",
        Failed => "failed",
        Retried => "retried",
        DeadLettered => "dead_lettered",
    }
}

impl Outcome {
    /// Every outcome, in the order of a task's tally.
    pub(crate) const ALL: [Outcome; 4] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Retried,
        Outcome::DeadLettered,
    ];
}

wire_enum! {
    /// What a histogram of the stats buckets measures, per task.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub(crate) enum Metric {
        /// From an attempt's start to its end.
        Run => "run",
        /// From when a job was due (enqueued, or its ETA or retry time) to its start.
        Wait => "wait",
    }
}

/// One count of a task in a stats bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Tally {
    Outcome(Outcome),
    /// Values of a histogram up to this bound in ms (the one above the previous bound), or,
    /// with `None`, above the last bound.
    Bucket(Metric, Option<u64>),
    /// The sum of a histogram's values, in ms.
    Sum(Metric),
}

/// Where Celery's Redis result backend keeps a task's result record, and the channel it
/// announces it on (Celery's own name, outside any namespace: Python's `AsyncResult` reads it).
pub(crate) fn celery_result(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    namespace: String,
    /// `{namespace}`: the tag of the namespace-wide keys.
    prefix: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Result<Self> {
        validate_name("PSW_NAMESPACE", namespace)?;
        Ok(Keys {
            namespace: namespace.to_owned(),
            prefix: format!("{{{namespace}}}"),
        })
    }

    /// The hash tag of the keys of the queue `lane` belongs to (a lane is a queue's level, see
    /// `priority`): `{namespace:queue}`. Every lane of a queue shares it, so that one script
    /// can read or move between them.
    pub(crate) fn queue_tag(&self, lane: &str) -> String {
        let queue = split_lane(lane).0;
        format!("{{{}:{queue}}}", self.namespace)
    }

    /// The layout version the namespace's data was written in (a string integer).
    pub(crate) fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// Where layout 1 kept a lane's stream, to tell a worker of layout 2 that jobs wait there.
    pub(crate) fn layout_1_stream(&self, lane: &str) -> String {
        format!("{}:queue:{lane}", self.prefix)
    }

    /// Where layout 1 kept a lane's delayed set.
    pub(crate) fn layout_1_delayed(&self, lane: &str) -> String {
        format!("{}:delayed:{lane}", self.prefix)
    }

    /// The lane whose stream is the key `stream` (the inverse of [`Keys::stream`]).
    pub(crate) fn lane_of_stream<'k>(&self, stream: &'k str) -> Option<&'k str> {
        let rest = stream
            .strip_prefix('{')?
            .strip_prefix(self.namespace.as_str())?;
        let rest = rest.strip_prefix(':')?;
        let (queue, rest) = rest.split_once('}')?;
        let lane = rest.strip_prefix(":queue:")?;
        (split_lane(lane).0 == queue).then_some(lane)
    }

    /// List of the Celery messages a worker took off the Celery list `queue` and has not yet
    /// turned into jobs: what the reaper puts back if the worker dies in between.
    pub(crate) fn celery_taken(&self, queue: &str, consumer: &str) -> String {
        format!("{}:celery:taken:{queue}:{consumer}", self.prefix)
    }

    /// Set of the keys of the taken-message lists in use, for the reaper.
    pub(crate) fn celery_taken_lists(&self) -> String {
        format!("{}:celery:taken", self.prefix)
    }

    /// Stream of ready jobs of one lane (a queue, or one of its priority levels).
    pub(crate) fn stream(&self, lane: &str) -> String {
        format!("{}:queue:{lane}", self.queue_tag(lane))
    }

    /// Sorted set of delayed jobs of one lane, scored by due time in ms.
    pub(crate) fn delayed(&self, lane: &str) -> String {
        format!("{}:delayed:{lane}", self.queue_tag(lane))
    }

    /// A consumer's receipt of its last settled batch's part on one queue's slot (on a
    /// cluster a batch settles per slot; see `settle.rs`).
    pub(crate) fn queue_receipt(&self, lane: &str, consumer: &str) -> String {
        format!("{}:receipt:{consumer}", self.queue_tag(lane))
    }

    /// A job's record.
    pub(crate) fn record(&self, job_id: &str) -> String {
        format!("{}:result:{job_id}", self.prefix)
    }

    /// The hold of a fixed job id, set by an idempotent enqueue to `lane`'s queue: while it
    /// lasts, another enqueue of that id there adds nothing. On the queue's slot, since the
    /// hold is taken in one step with the add.
    pub(crate) fn id_hold(&self, lane: &str, job_id: &str) -> String {
        format!("{}:id:{job_id}", self.queue_tag(lane))
    }

    /// A unique job's lock in `lane`'s queue: the id of the job that holds it.
    pub(crate) fn unique(&self, lane: &str, key: &str) -> String {
        format!("{}:unique:{key}", self.queue_tag(lane))
    }

    /// A debounce key of `lane`'s queue: the id of the last job enqueued with it, the one that
    /// runs.
    pub(crate) fn debounce(&self, lane: &str, key: &str) -> String {
        format!("{}:debounce:{key}", self.queue_tag(lane))
    }

    /// A rate limit's GCRA state (a hash of `tat` and `line`, µs since the epoch), by scope:
    /// `task:<task>` for a task's own limit, the name for a shared one.
    pub(crate) fn rate(&self, scope: &str) -> String {
        format!("{}:rate:{scope}", self.prefix)
    }

    /// A concurrency limit's slots (a sorted set of holders' job ids, scored by the end of
    /// their lease in ms), by scope as for [`Keys::rate`].
    pub(crate) fn slots(&self, scope: &str) -> String {
        format!("{}:slots:{scope}", self.prefix)
    }

    /// The cancelled jobs: a sorted set of job ids scored by when they were cancelled (ms,
    /// server `TIME`), kept as long as a record.
    pub(crate) fn revoked(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    /// The paused queues: a set of queue names (never lanes: a queue pauses whole).
    pub(crate) fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }

    /// What every unique lock's key of `queue` starts with, to list them.
    pub(crate) fn unique_prefix(&self, queue: &str) -> String {
        format!("{}:unique:", self.queue_tag(queue))
    }

    /// Set of queue names that workers or producers have used.
    pub(crate) fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Stream of jobs that could not be run.
    pub(crate) fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// Counter of dead letters trimmed to keep the dead-letter stream under its cap.
    pub(crate) fn dead_trimmed(&self) -> String {
        format!("{}:dead:trimmed", self.prefix)
    }

    /// What the dead letters take against their byte budget, in bytes.
    pub(crate) fn dead_bytes(&self) -> String {
        format!("{}:dead:bytes", self.prefix)
    }

    /// The failure groups of the dead letters (a hash): per group id, its count, and
    /// `<id>:first`, `<id>:last` (ms), `<id>:sample` (the newest letter's entry id),
    /// `<id>:task`, `<id>:reason` and `<id>:error` (the newest letter's).
    pub(crate) fn dead_groups(&self) -> String {
        format!("{}:dead:groups", self.prefix)
    }

    /// The audit log of actions taken from the dashboard (a capped stream).
    pub(crate) fn audit(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    /// A consumer's receipt of its last settled batch: the batch's number and its reply.
    pub(crate) fn receipt(&self, consumer: &str) -> String {
        format!("{}:receipt:{consumer}", self.prefix)
    }

    /// Pub/sub channel announcing ids of finished jobs.
    pub(crate) fn finished_channel(&self) -> String {
        format!("{}:finished", self.prefix)
    }

    /// Hash of one schedule ([`ScheduleField`]): its definition, the last slot handled, the
    /// last job fired.
    pub(crate) fn schedule(&self, name: &str) -> String {
        format!("{}:beat:schedule:{name}", self.prefix)
    }

    /// List of a schedule's last runs, newest first (MessagePack maps, as `recent`).
    pub(crate) fn schedule_runs(&self, name: &str) -> String {
        format!("{}:beat:runs:{name}", self.prefix)
    }

    /// Set of the names of the schedules any beat has run.
    pub(crate) fn schedules(&self) -> String {
        format!("{}:beat:schedules", self.prefix)
    }

    /// The beat leader's lease: the holder's name, with a TTL.
    pub(crate) fn beat_leader(&self) -> String {
        format!("{}:beat:leader", self.prefix)
    }

    /// Hash of the live workers: consumer name -> encoded heartbeat.
    pub(crate) fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Hash of the counts of one minute (minutes since the Unix epoch): [`stats_field`] ->
    /// count.
    pub(crate) fn stats(&self, minute: i64) -> String {
        format!("{}:stats:{minute}", self.prefix)
    }

    /// As [`Keys::stats`], for ten minutes (`floor(ms / 600000)`), kept for a week.
    pub(crate) fn stats_ten(&self, index: i64) -> String {
        format!("{}:stats:10m:{index}", self.prefix)
    }

    /// As [`Keys::stats`], summed since the namespace's first heartbeat: never expires, so
    /// its counts only grow (Prometheus counters).
    pub(crate) fn stats_total(&self) -> String {
        format!("{}:stats:total", self.prefix)
    }

    /// List of a task's recent executions, newest first (MessagePack maps).
    pub(crate) fn recent(&self, task: &str) -> String {
        format!("{}:recent:{task}", self.prefix)
    }
}

/// Separates task and tally in the fields of a stats hash. Tallies never hold it, so
/// splitting at the last one gives any task name back whole.
const STATS_SEPARATOR: char = '|';

/// Separates a histogram's metric from its bucket's bound (or `sum`) in a tally.
const BUCKET_SEPARATOR: char = ':';
/// The bound of the bucket above the last bound.
const OPEN_BOUND: &str = "inf";
const SUM: &str = "sum";

/// The field of a stats hash holding `tally` of `task`: `<task>|<outcome>`,
/// `<task>|<metric>:<bound ms>`, `<task>|<metric>:inf` or `<task>|<metric>:sum`.
pub(crate) fn stats_field(task: &str, tally: Tally) -> String {
    match tally {
        Tally::Outcome(outcome) => format!("{task}{STATS_SEPARATOR}{outcome}"),
        Tally::Bucket(metric, Some(bound)) => {
            format!("{task}{STATS_SEPARATOR}{metric}{BUCKET_SEPARATOR}{bound}")
        }
        Tally::Bucket(metric, None) => {
            format!("{task}{STATS_SEPARATOR}{metric}{BUCKET_SEPARATOR}{OPEN_BOUND}")
        }
        Tally::Sum(metric) => format!("{task}{STATS_SEPARATOR}{metric}{BUCKET_SEPARATOR}{SUM}"),
    }
}

/// (task, tally) of a stats field; `None` for a field this version does not know (a newer
/// one wrote it) or one without the separator.
pub(crate) fn split_stats_field(field: &str) -> Option<(&str, Tally)> {
    let (task, tally) = field.rsplit_once(STATS_SEPARATOR)?;
    let tally = match tally.split_once(BUCKET_SEPARATOR) {
        None => Tally::Outcome(Outcome::from_wire(tally)?),
        Some((metric, bound)) => {
            let metric = Metric::from_wire(metric)?;
            match bound {
                SUM => Tally::Sum(metric),
                OPEN_BOUND => Tally::Bucket(metric, None),
                bound => Tally::Bucket(metric, Some(bound.parse().ok()?)),
            }
        }
    };
    Some((task, tally))
}

/// Schedule names end a key and make job ids (`name@slot`): no whitespace (ids are announced
/// space-separated), no braces (the hash tag), no `@`, not empty. Unlike queue names they may
/// hold `:`, as default task names (`jobs::daily`) do.
pub(crate) fn validate_schedule_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 200
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '@'));
    if bad {
        return Err(Error::schedule(
            name,
            "a schedule name is 1 to 200 characters without whitespace, `{`, `}` or `@`",
        ));
    }
    Ok(())
}

/// Namespaces and queue names become parts of keys ([`rules::check_name`], which `#[task]`
/// applies to `queue` at compile time too); `variable` names where the name came from.
pub(crate) fn validate_name(variable: &str, name: &str) -> Result<()> {
    rules::check_name(name).map_err(|_: NameProblem| {
        Error::config(
            variable,
            name,
            "a non-empty name of at most 200 characters without whitespace, `{`, `}` or `:`",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_s_keys_share_its_tag_and_every_other_the_namespace_s() {
        let keys = Keys::new("app").unwrap();
        for key in [
            keys.stream("mail"),
            keys.stream("mail:high"),
            keys.delayed("mail:low"),
            keys.id_hold("mail:high", "0190"),
            keys.unique("mail", "send/ab"),
            keys.debounce("mail:low", "k"),
            keys.queue_receipt("mail:high", "w-1"),
            keys.unique_prefix("mail"),
        ] {
            assert!(key.starts_with("{app:mail}:"), "{key}");
        }
        assert_eq!(keys.stream("mail"), "{app:mail}:queue:mail");
        assert_eq!(keys.stream("mail:high"), "{app:mail}:queue:mail:high");
        for lane in ["mail", "mail:high", "mail:low"] {
            assert_eq!(keys.lane_of_stream(&keys.stream(lane)), Some(lane));
        }
        assert_eq!(keys.lane_of_stream("{app}:queue:mail"), None);
        assert_eq!(keys.lane_of_stream("{app:mail}:queue:other"), None);
        assert_eq!(keys.lane_of_stream("{other:mail}:queue:mail"), None);
        for key in [
            keys.layout(),
            keys.layout_1_stream("mail"),
            keys.record("0190"),
            keys.queues(),
            keys.dead(),
            keys.schedule("jobs::daily"),
            keys.schedules(),
            keys.beat_leader(),
            keys.workers(),
            keys.revoked(),
            keys.paused(),
            keys.stats(29_000_000),
            keys.stats_ten(2_900_000),
            keys.stats_total(),
            keys.recent("jobs::daily"),
            keys.schedule_runs("jobs::daily"),
        ] {
            assert!(key.starts_with("{app}:"), "{key}");
        }
    }

    #[test]
    fn stats_fields_give_any_task_name_back() {
        let tallies = [
            Tally::Outcome(Outcome::Failed),
            Tally::Bucket(Metric::Run, Some(250)),
            Tally::Bucket(Metric::Wait, None),
            Tally::Sum(Metric::Run),
        ];
        for task in ["it.add", "jobs::daily", "a|b", "a:b|c:d", ""] {
            for tally in tallies {
                let field = stats_field(task, tally);
                assert_eq!(split_stats_field(&field), Some((task, tally)), "{field}");
            }
        }
        assert_eq!(
            stats_field("t", Tally::Bucket(Metric::Run, Some(5))),
            "t|run:5"
        );
        assert_eq!(split_stats_field("no separator"), None);
        assert_eq!(split_stats_field("it.add|from_the_future"), None);
        assert_eq!(split_stats_field("it.add|run:soon"), None);
        assert_eq!(split_stats_field("it.add|cpu:5"), None);
    }

    #[test]
    fn rejects_names_that_would_break_keys() {
        for bad in ["", "a b", "a{b", "a}b", "a:b"] {
            let err = Keys::new(bad).unwrap_err();
            assert!(err.to_string().contains("PSW_NAMESPACE"), "{err}");
        }
    }
}
