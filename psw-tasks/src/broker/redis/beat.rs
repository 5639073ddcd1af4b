//! The beat's state in Redis: one hash per schedule (`keys::ScheduleField`), the set of their
//! names, the compare-and-set pass (`beat_advance.lua`) and the leader lease
//! (`beat_lease.lua`).

use std::collections::HashMap;
use std::time::Duration;

use super::connection::RedisBroker;
use super::queues::add_once;
use crate::broker::{BeatAdvance, BeatDefinition, BeatState, LastFired, NewJob};
use crate::keys::{JOB_FIELD, ScheduleField};
use crate::metrics::SCHEDULE_RUNS;
use crate::rules;

/// The stored state of `schedule`; empty if no beat registered it.
pub(super) async fn state(broker: &RedisBroker, schedule: &str) -> redis::RedisResult<BeatState> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(broker.keys.schedule(schedule))
        .query_async(&mut broker.conn())
        .await?;
    Ok(decode(&fields))
}

/// The typed state of a schedule's hash. Each part is read on its own, so that a part this
/// version cannot read (or that is missing) leaves the others intact.
fn decode(fields: &HashMap<String, String>) -> BeatState {
    let field = |name: ScheduleField| fields.get(name.as_str()).map(String::as_str);
    let number = |name: ScheduleField| field(name).and_then(|value| value.parse::<i64>().ok());
    let definition = (|| {
        Some(BeatDefinition {
            task: field(ScheduleField::Task)?.to_owned(),
            queue: field(ScheduleField::Queue)?.to_owned(),
            schedule: field(ScheduleField::Schedule)?.to_owned(),
            // Written by every version; read as UTC when it is missing, as it always was.
            tz: field(ScheduleField::Tz)
                .unwrap_or(rules::DEFAULT_ZONE)
                .to_owned(),
            misfire: rules::parse_misfire(field(ScheduleField::Misfire)?).ok()?,
            overlap: field(ScheduleField::Overlap)? == "true",
            args: field(ScheduleField::Args).map(str::to_owned),
        })
    })();
    let fired = (|| {
        Some(LastFired {
            job: field(ScheduleField::Job)?.to_owned(),
            slot_ms: number(ScheduleField::Slot)?,
            fired_ms: number(ScheduleField::Fired).unwrap_or(0),
            late: field(ScheduleField::Late) == Some("true"),
        })
    })();
    BeatState {
        last_ms: number(ScheduleField::Last),
        definition,
        fired,
        last_job: field(ScheduleField::Job).map(str::to_owned),
        entry: field(ScheduleField::Entry).map(str::to_owned),
        overlap_skips: number(ScheduleField::OverlapSkips).map_or(0, |n| n.max(0) as u64),
        skipped_slot_ms: number(ScheduleField::SkippedSlot),
        paused: field(ScheduleField::Paused) == Some("true"),
    }
}

/// `last_ms` unless it has one, the definition, and the name in the set of schedules, in one
/// transaction.
pub(super) async fn register(
    broker: &RedisBroker,
    schedule: &str,
    last_ms: i64,
    definition: &BeatDefinition,
) -> redis::RedisResult<()> {
    let key = broker.keys.schedule(schedule);
    let mut fields = vec![
        (ScheduleField::Task, definition.task.clone()),
        (ScheduleField::Queue, definition.queue.clone()),
        (ScheduleField::Schedule, definition.schedule.clone()),
        (ScheduleField::Tz, definition.tz.clone()),
        (ScheduleField::Misfire, definition.misfire.to_string()),
        (ScheduleField::Overlap, definition.overlap.to_string()),
    ];
    let mut pipe = redis::pipe();
    pipe.atomic();
    match &definition.args {
        Some(args) => fields.push((ScheduleField::Args, args.clone())),
        None => {
            pipe.cmd("HDEL")
                .arg(&key)
                .arg(ScheduleField::Args.as_str())
                .ignore();
        }
    }
    pipe.cmd("HSETNX")
        .arg(&key)
        .arg(ScheduleField::Last.as_str())
        .arg(last_ms)
        .ignore();
    let hset = pipe.cmd("HSET").arg(&key);
    for (field, value) in &fields {
        hset.arg(field.as_str()).arg(value);
    }
    hset.ignore();
    pipe.cmd("SADD")
        .arg(broker.keys.schedules())
        .arg(schedule)
        .ignore();
    pipe.exec_async(&mut broker.conn()).await
}

/// One pass, if `last_ms` is still the expected slot (`beat_advance.lua`).
pub(super) async fn advance(
    broker: &RedisBroker,
    advance: &BeatAdvance,
) -> redis::RedisResult<bool> {
    let mut fields: Vec<(ScheduleField, String)> = Vec::new();
    if let Some(fired) = &advance.fired {
        fields.extend([
            (ScheduleField::Job, fired.job.clone()),
            (ScheduleField::Slot, fired.slot_ms.to_string()),
            (ScheduleField::Fired, fired.fired_ms.to_string()),
            (ScheduleField::Late, fired.late.to_string()),
        ]);
    }
    if let Some(slot) = advance.skipped_slot_ms {
        fields.push((ScheduleField::SkippedSlot, slot.to_string()));
    }
    let counter = match advance.skipped_slot_ms {
        Some(_) => ScheduleField::OverlapSkips.as_str(),
        None => "",
    };
    if broker.spans_slots() && !advance.payloads.is_empty() {
        match add_jobs_once(broker, advance).await? {
            None => return Ok(false),
            Some(entry) => {
                if let Some(entry) = entry {
                    fields.push((ScheduleField::Entry, entry));
                }
            }
        }
    }
    let mut invocation = broker
        .scripts
        .beat_advance
        .key(broker.keys.schedule(&advance.schedule));
    if !broker.spans_slots() {
        invocation.key(broker.keys.stream(&advance.queue));
    }
    invocation
        .arg(ScheduleField::Last.as_str())
        .arg(advance.expected_ms)
        .arg(advance.through_ms)
        .arg(ScheduleField::Entry.as_str())
        .arg(JOB_FIELD)
        .arg(counter)
        .arg(fields.len());
    for (field, value) in &fields {
        invocation.arg(field.as_str()).arg(value);
    }
    if !broker.spans_slots() {
        for payload in &advance.payloads {
            invocation.arg(payload);
        }
    }
    let applied: i64 = invocation.invoke_async(&mut broker.conn()).await?;
    Ok(applied == 1)
}

/// How long a fired job's id stays held on a cluster: far longer than any beat takes from
/// adding a pass's jobs to setting its slot, so that a beat that takes the pass over after a
/// crash in between adds none of them again.
const FIRED_HOLD: Duration = Duration::from_secs(24 * 3600);

/// On a cluster the schedule's hash (the namespace's slot) and the queue (its own) are on
/// different slots, so a pass cannot add its jobs and set its slot in one step. The jobs go
/// first, each once by its id (`name@slot`, held as `push_once` holds it), then the
/// compare-and-set: beats racing on a slot add each job once between them, and a beat that
/// dies between the two leaves the slot to the next, whose adds find the ids held. `None`
/// when the slot was handled already; else the entry id of the last job.
async fn add_jobs_once(
    broker: &RedisBroker,
    advance: &BeatAdvance,
) -> redis::RedisResult<Option<Option<String>>> {
    let last: Option<i64> = redis::cmd("HGET")
        .arg(broker.keys.schedule(&advance.schedule))
        .arg(ScheduleField::Last.as_str())
        .query_async(&mut broker.conn())
        .await?;
    if last != Some(advance.expected_ms) {
        return Ok(None);
    }
    let mut entry = None;
    for (payload, id) in advance.payloads.iter().zip(&advance.job_ids) {
        let job = NewJob {
            queue: advance.queue.clone(),
            payload: payload.clone(),
            due_ms: None,
        };
        // Added by this call or by a racing beat: either way the job's entry.
        if let Some(entry_id) = add_once(broker, &job, id, FIRED_HOLD).await?.entry_id {
            entry = Some(entry_id);
        }
    }
    Ok(Some(entry))
}

/// Pause or resume a registered schedule (its hash exists); whether it is registered.
pub(super) async fn set_paused(
    broker: &RedisBroker,
    schedule: &str,
    paused: bool,
) -> redis::RedisResult<bool> {
    let key = broker.keys.schedule(schedule);
    let mut conn = broker.conn();
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await?;
    if !exists {
        return Ok(false);
    }
    let field = ScheduleField::Paused.as_str();
    if paused {
        redis::cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg("true")
            .exec_async(&mut conn)
            .await?;
    } else {
        redis::cmd("HDEL")
            .arg(&key)
            .arg(field)
            .exec_async(&mut conn)
            .await?;
    }
    Ok(true)
}

/// The newest `limit` runs of `schedule`.
pub(super) async fn runs(
    broker: &RedisBroker,
    schedule: &str,
    limit: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let key = broker.keys.schedule_runs(schedule);
    super::stats::newest(broker, key, limit, SCHEDULE_RUNS).await
}

/// Every registered schedule's name, sorted.
pub(super) async fn schedules(broker: &RedisBroker) -> redis::RedisResult<Vec<String>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(broker.keys.schedules())
        .query_async(&mut broker.conn())
        .await?;
    names.sort();
    Ok(names)
}

/// Redis's clock (`TIME`: seconds and microseconds), in ms.
pub(super) async fn server_time_ms(broker: &RedisBroker) -> redis::RedisResult<i64> {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut broker.conn()).await?;
    Ok(seconds * 1000 + micros / 1000)
}

/// Take, renew or (a zero `ttl`) give up the leader lease for `holder`.
pub(super) async fn lease(
    broker: &RedisBroker,
    holder: &str,
    ttl: Duration,
) -> redis::RedisResult<bool> {
    let held: i64 = broker
        .scripts
        .beat_lease
        .key(broker.keys.beat_leader())
        .arg(holder)
        .arg(ttl.as_millis() as u64)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(held == 1)
}
