//! What the broker keeps about each schedule of the beat, as typed values (the Redis broker
//! spells them as the fields of `keys::ScheduleField`).

use crate::rules::Misfire;

/// A schedule's definition, stored with it so that any process can list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BeatDefinition {
    pub(crate) task: String,
    pub(crate) queue: String,
    /// A cron expression or `every <duration>`, as `Schedule`'s `Display` writes it.
    pub(crate) schedule: String,
    /// The IANA zone the expression is read in.
    pub(crate) tz: String,
    pub(crate) misfire: Misfire,
    pub(crate) overlap: bool,
    /// The jobs' arguments as JSON, for a run started by hand; `None` when a beat of an
    /// earlier version registered it, or the arguments have no JSON form.
    pub(crate) args: Option<String>,
}

/// The last job a schedule fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastFired {
    /// Its job id.
    pub(crate) job: String,
    /// The slot it stands for, ms.
    pub(crate) slot_ms: i64,
    /// When it was sent, ms.
    pub(crate) fired_ms: i64,
    /// Whether it went out more than the grace period late.
    pub(crate) late: bool,
}

/// Everything stored about one schedule; all empty for a schedule no beat registered (or whose
/// state Redis lost).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BeatState {
    /// The last slot handled (fired or dropped), ms: the compare-and-set value.
    pub(crate) last_ms: Option<i64>,
    /// `None` also when a part of it is missing or unreadable (written by another version).
    pub(crate) definition: Option<BeatDefinition>,
    pub(crate) fired: Option<LastFired>,
    /// The id of the last job fired, read on its own: the overlap check needs nothing else.
    pub(crate) last_job: Option<String>,
    /// The stream entry id of the last job fired.
    pub(crate) entry: Option<String>,
    /// Slots skipped because the last run was still going (`overlap = false`).
    pub(crate) overlap_skips: u64,
    /// The latest of them.
    pub(crate) skipped_slot_ms: Option<i64>,
    /// Whether it is paused: its slots pass without a job.
    pub(crate) paused: bool,
}

/// One pass of a schedule, applied only if the schedule's last handled slot is still
/// `expected_ms`: this compare-and-set is what makes each (schedule, slot) produce one job
/// however many beat processes run, paused or not.
#[derive(Debug, Clone)]
pub(crate) struct BeatAdvance {
    pub(crate) schedule: String,
    /// The last slot handled that the pass was planned from.
    pub(crate) expected_ms: i64,
    /// The last slot handled after it.
    pub(crate) through_ms: i64,
    /// The jobs it fires, ready now, all on `queue`; the entry id of the last one is stored.
    pub(crate) queue: String,
    pub(crate) payloads: Vec<Vec<u8>>,
    /// Each payload's job id (`name@slot`), in order: on a cluster, what adds it once.
    pub(crate) job_ids: Vec<String>,
    /// The last job of the pass, stored as the schedule's last fired.
    pub(crate) fired: Option<LastFired>,
    /// A slot skipped because the previous run was still going: counted, and kept as the
    /// latest skipped.
    pub(crate) skipped_slot_ms: Option<i64>,
}
