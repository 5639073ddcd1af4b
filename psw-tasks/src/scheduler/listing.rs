//! The `schedules` listing: every schedule of this binary and of the namespace, with its next
//! fire times in its zone and its last run.

use std::collections::HashMap;

use super::Scheduler;
use crate::client::Client;
use crate::error::Result;
use crate::rules::DEFAULT_ZONE;
use crate::schedule::Schedule;

/// One line of `schedules`: a schedule, its next fire times, its last run.
#[derive(Debug, Clone)]
pub(crate) struct Listing {
    pub(crate) name: String,
    pub(crate) task: String,
    pub(crate) schedule: String,
    pub(crate) zone: String,
    pub(crate) misfire: String,
    pub(crate) overlap: String,
    /// Local wall-clock times.
    pub(crate) next: Vec<String>,
    /// The slot of the last job, local, with ` (late)` when it went out late.
    pub(crate) last: Option<String>,
    /// The last job's state, `queued`, or `-`.
    pub(crate) outcome: String,
    pub(crate) skipped: u64,
    /// Whether it is paused.
    pub(crate) paused: bool,
}

/// Every schedule of this binary's tasks and every one registered by any beat in the
/// namespace, sorted by name, with `count` next fire times after `now_ms`.
pub(crate) async fn listings(client: &Client, now_ms: i64, count: usize) -> Result<Vec<Listing>> {
    let broker = client.broker();
    let mut schedules: HashMap<String, (String, Schedule)> = HashMap::new();
    let linked = Scheduler::builder(client).build()?;
    for entry in linked.entries {
        schedules.insert(entry.name, (entry.task, entry.schedule));
    }
    let mut names: Vec<String> = broker.beat_schedules().await?;
    names.extend(schedules.keys().cloned());
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let state = broker.beat_state(&name).await?;
        let stored = || -> Option<(String, Schedule)> {
            let definition = state.definition.as_ref()?;
            let schedule = Schedule::parse(&definition.schedule).ok()?;
            let schedule = match definition.tz.as_str() {
                DEFAULT_ZONE => schedule,
                zone => schedule.tz(zone).ok()?,
            };
            Some((
                definition.task.clone(),
                schedule
                    .misfire(definition.misfire)
                    .overlap(definition.overlap),
            ))
        };
        let Some((task, schedule)) = schedules.remove(&name).or_else(stored) else {
            continue;
        };
        let mut next = Vec::new();
        let mut at = schedule.next_after(now_ms);
        while let Some(slot) = at.filter(|_| next.len() < count) {
            next.push(schedule.local(slot));
            at = schedule.next_after(slot);
        }
        let last = state.fired.as_ref().map(|fired| {
            let late = if fired.late { " (late)" } else { "" };
            format!("{}{late}", schedule.local(fired.slot_ms))
        });
        let outcome = match &state.last_job {
            None => "-".to_owned(),
            Some(job) => match client.record(job).await? {
                Some(record) => record.state.as_str().to_owned(),
                None => match (&state.definition, &state.entry) {
                    (Some(definition), Some(entry))
                        if broker.in_stream(&definition.queue, entry).await? =>
                    {
                        "queued".to_owned()
                    }
                    // Expired, or a task that keeps no record.
                    _ => "unknown".to_owned(),
                },
            },
        };
        out.push(Listing {
            name,
            task,
            schedule: schedule.to_string(),
            zone: schedule.zone().name().to_owned(),
            misfire: schedule.misfire_policy().to_string(),
            overlap: if schedule.allows_overlap() {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
            next,
            last,
            outcome,
            skipped: state.overlap_skips,
            paused: state.paused,
        });
    }
    Ok(out)
}

/// The schedules linked into this binary, as (name, task, schedule in words): no broker read,
/// for the dashboard's task registry.
pub(crate) fn linked(client: &Client) -> Result<Vec<(String, String, String)>> {
    let scheduler = Scheduler::builder(client).build()?;
    Ok(scheduler
        .entries
        .into_iter()
        .map(|entry| (entry.name, entry.task, entry.schedule.to_string()))
        .collect())
}
