//! The beat: turns schedules into jobs, exactly one per (schedule, slot) however many beat
//! processes run. It only enqueues; workers run the jobs. `docs/scheduling.md` has the
//! semantics.
//!
//! Architecture invariant: the scheduler sees the `Broker` trait only, never Redis types, and
//! never runs a task. `schedule.rs` is pure; time comes from a `Clock`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::broker::{BeatAdvance, BeatDefinition, BeatState, Broker, LastFired};
use crate::client::{Client, EnqueueOptions};
use crate::envelope::{NoArgs, SystemHeader};
use crate::error::{Error, Result};
use crate::keys::validate_schedule_name;
use crate::priority;
use crate::process::{process_name, shutdown_signal};
use crate::record::{JobRecord, State};
use crate::registry::Registry;
use crate::schedule::{self, Schedule};
use crate::task::TaskOptions;

mod clock;
pub(crate) mod listing;
#[cfg(test)]
mod tests;

pub(crate) use clock::{Clock, SystemClock};

/// Passes of one schedule retried at once after losing a race to another beat.
const RACES: usize = 5;
/// How soon a schedule is looked at again after the broker failed.
const RETRY_AFTER_MS: i64 = 1000;

/// One schedule the beat fires: its name, the task and arguments of its jobs, and when.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    task: String,
    /// The task's options (its queue and level), the defaults for a task not linked here.
    options: &'static TaskOptions,
    /// Where the jobs go: the lane of that level (the queue itself unless its task has a
    /// `priority`), so that the overlap check looks in the stream they are in.
    lane: String,
    schedule: Schedule,
    /// The argument array, MessagePack-encoded once.
    args: Vec<u8>,
    /// The same as JSON, stored with the definition for a run by hand; `None` for arguments
    /// JSON cannot hold.
    args_json: Option<String>,
}

impl Entry {
    /// The definition stored with the schedule, for `schedules` in any process.
    fn definition(&self) -> BeatDefinition {
        BeatDefinition {
            task: self.task.clone(),
            queue: self.lane.clone(),
            schedule: self.schedule.to_string(),
            tz: self.schedule.zone().name().to_owned(),
            misfire: self.schedule.misfire_policy(),
            overlap: self.schedule.allows_overlap(),
            args: self.args_json.clone(),
        }
    }
}

/// Configures a [`Scheduler`].
pub struct SchedulerBuilder {
    client: Client,
    task_schedules: bool,
    lease: Duration,
    grace: Duration,
    clock: Arc<dyn Clock>,
    server_clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("task_schedules", &self.task_schedules)
            .field("lease", &self.lease)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl SchedulerBuilder {
    /// Whether the schedules declared with `#[task(schedule = ..)]` and `every` are included
    /// (default `true`).
    pub fn task_schedules(mut self, include: bool) -> Self {
        self.task_schedules = include;
        self
    }

    /// How long the leader's lease lasts without renewal (default 5 s): a standby beat takes
    /// over at most this long after the leader dies. Only work is saved by it; exactly once
    /// does not depend on it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// How late a slot may fire and still count as on time (default 30 s); later slots are
    /// late and go through their schedule's misfire policy.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// This host's clock, for sleeping and for telling the skew (tests simulate one).
    #[cfg(test)]
    pub(crate) fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Stands in for the broker's clock, which decides what is due (tests simulate it).
    #[cfg(test)]
    pub(crate) fn server_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.server_clock = Some(clock);
        self
    }

    /// Collect the task schedules (and check them) and make the scheduler.
    pub fn build(self) -> Result<Scheduler> {
        let registry = Registry::from_linked()?;
        let mut scheduler = Scheduler {
            client: self.client,
            entries: Vec::new(),
            registry,
            lease: self.lease,
            grace: self.grace,
            clock: self.clock,
            server_clock: self.server_clock,
            holder: holder_name(),
        };
        if self.task_schedules {
            let declared: Vec<_> = scheduler
                .registry
                .iter()
                .filter_map(|task| Some((task, task.schedule()?)))
                .collect();
            for (task, declared) in declared {
                let args = rmp_serde::to_vec_named(&NoArgs)
                    .map_err(|err| Error::encode("an empty argument list", err))?;
                scheduler.push(task.name(), task.name(), declared.schedule()?, args)?;
            }
        }
        Ok(scheduler)
    }
}

/// The name of this beat in the leader lease: unique per process, with the pid to find it by.
fn holder_name() -> String {
    process_name("beat")
}

/// Fires the jobs of schedules until shut down: the `beat` of Celery, safe to run on every node.
///
/// Every beat process may fire every slot; a compare-and-set of the schedule's last handled
/// slot, in the same atomic step that adds the job, lets exactly one of them do it. A leader
/// lease keeps the others idle so that they do no wasted work, and one of them takes over when
/// the leader stops renewing it.
pub struct Scheduler {
    client: Client,
    entries: Vec<Entry>,
    registry: Registry,
    lease: Duration,
    grace: Duration,
    /// This host's clock: it times the sleeps, and is compared with the broker's.
    clock: Arc<dyn Clock>,
    /// In tests, the broker's clock; else the broker is asked (Redis `TIME`).
    server_clock: Option<Arc<dyn Clock>>,
    holder: String,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("holder", &self.holder)
            .field(
                "schedules",
                &self.entries.iter().map(|e| &e.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The end of one pass over a schedule.
enum Pass {
    /// Handled up to `last_ms`.
    Done { last_ms: i64 },
    /// Another beat changed the schedule first: look again.
    Raced,
}

impl Scheduler {
    /// Start configuring a scheduler that enqueues through `client`.
    pub fn builder(client: &Client) -> SchedulerBuilder {
        SchedulerBuilder {
            client: client.clone(),
            task_schedules: true,
            lease: Duration::from_secs(5),
            grace: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
            server_clock: None,
        }
    }

    /// Fire `task` (a wire name, linked into this binary or not) on `schedule` with `args`, the
    /// tuple of its arguments (like `("AAPL", 3)`, or `()`), under the schedule name `name`.
    /// Jobs go to the task's queue when it is linked, else to `default`.
    pub fn add(
        &mut self,
        name: &str,
        task: &str,
        schedule: Schedule,
        args: impl Serialize,
    ) -> Result<()> {
        let args = rmp_serde::to_vec_named(&args)
            .map_err(|err| Error::encode(format!("arguments of schedule `{name}`"), err))?;
        self.push(name, task, schedule, args)
    }

    fn push(&mut self, name: &str, task: &str, schedule: Schedule, args: Vec<u8>) -> Result<()> {
        validate_schedule_name(name)?;
        if self.entries.iter().any(|entry| entry.name == name) {
            return Err(Error::schedule(
                name,
                "a schedule of this name is already added",
            ));
        }
        if task.is_empty() {
            return Err(Error::schedule(name, "the task name is empty"));
        }
        let options = self
            .registry
            .get(task)
            .map_or(&TaskOptions::DEFAULT, |descriptor| descriptor.options());
        let args_json = rmp_serde::from_slice::<serde_json::Value>(&args)
            .ok()
            .and_then(|args| serde_json::to_string(&args).ok());
        self.entries.push(Entry {
            name: name.to_owned(),
            task: task.to_owned(),
            options,
            lane: priority::lane(options.queue, options.priority),
            schedule,
            args,
            args_json,
        });
        Ok(())
    }

    /// This beat's name in the leader lease (`<host>-<pid>-<random>`).
    pub fn holder_name(&self) -> &str {
        &self.holder
    }

    /// Run until SIGINT or SIGTERM.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Run until `shutdown` completes, then give up the lease so that a standby takes over at
    /// once.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let broker = self.client.broker().clone();
        tokio::pin!(shutdown);

        // Redis may be unreachable at start: wait for it rather than exit.
        let mut delay = Duration::from_millis(100);
        while let Err(err) = self.register(broker.as_ref()).await {
            tracing::error!(error = %crate::error::chain(&err), "cannot register the schedules; retrying");
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        if self.entries.is_empty() {
            tracing::warn!(
                "no schedules: declare them with #[task(schedule = ..)] or add them with Scheduler::add"
            );
        }
        tracing::info!(holder = %self.holder, schedules = self.entries.len(), "beat started");

        // When each schedule is next looked at, by the broker's clock; at once, to catch up
        // after a restart.
        let mut due: Vec<Option<i64>> = self.entries.iter().map(|_| Some(i64::MIN)).collect();
        let mut leader = false;
        let mut next_lease = tokio::time::Instant::now();
        let mut skew = SkewWatch::default();
        // This host's clock minus the broker's, as last read: turns due times into sleeps.
        let mut offset = 0;
        loop {
            if tokio::time::Instant::now() >= next_lease {
                match broker.beat_lease(&self.holder, self.lease).await {
                    Ok(held) => {
                        if held != leader {
                            tracing::info!(holder = %self.holder, leader = held, "beat leadership changed");
                        }
                        leader = held;
                    }
                    // Keep the last view: acting on a stale one costs work, never a duplicate.
                    Err(err) => {
                        tracing::warn!(error = %crate::error::chain(&err), "renewing the beat lease failed")
                    }
                }
                next_lease = tokio::time::Instant::now() + self.lease / 3;
            }
            // What is due follows the broker's clock, which every beat shares; a beat whose own
            // clock runs ahead or behind fires nothing early and misses nothing.
            let now = match self.server_now(broker.as_ref()).await {
                Ok(now) => {
                    offset = self.clock.now_ms() - now;
                    skew.observe(offset);
                    Some(now)
                }
                Err(err) => {
                    tracing::warn!(error = %crate::error::chain(&err), "cannot read the broker's clock; no slot fires until it answers");
                    None
                }
            };
            if leader && let Some(now) = now {
                for (entry, due) in self.entries.iter().zip(&mut due) {
                    if due.is_some_and(|at| at <= now) {
                        *due = self.tick(broker.as_ref(), entry, now).await;
                    }
                }
            }
            let wake = match now {
                Some(_) => due.iter().flatten().min().copied().filter(|_| leader),
                // Unanswered: look again after a pause (in the broker's time, by the last
                // offset), not at once, or the loop would spin through the outage.
                None => Some(self.clock.now_ms() - offset + RETRY_AFTER_MS),
            };
            let slot = async {
                match wake {
                    Some(at) => self.clock.sleep_until(at.saturating_add(offset)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = slot => {}
                () = tokio::time::sleep_until(next_lease) => {}
            }
        }
        if leader && let Err(err) = broker.beat_lease(&self.holder, Duration::ZERO).await {
            tracing::warn!(error = %crate::error::chain(&err), "could not give up the beat lease; a standby takes over when it expires");
        }
        tracing::info!(holder = %self.holder, "beat stopped");
        Ok(())
    }

    /// The time by the broker's clock.
    async fn server_now(&self, broker: &dyn Broker) -> Result<i64> {
        match &self.server_clock {
            Some(clock) => Ok(clock.now_ms()),
            None => broker.server_time_ms().await,
        }
    }

    async fn register(&self, broker: &dyn Broker) -> Result<()> {
        let now = self.server_now(broker).await?;
        for entry in &self.entries {
            broker
                .beat_register(&entry.name, now, &entry.definition())
                .await?;
        }
        Ok(())
    }

    /// Handle the due slots of one schedule; returns when to look at it next.
    async fn tick(&self, broker: &dyn Broker, entry: &Entry, now: i64) -> Option<i64> {
        for _ in 0..RACES {
            match self.pass(broker, entry, now).await {
                // Due at once again only if a pass stopped short (`MAX_FIRES`).
                Ok(Pass::Done { last_ms }) => return entry.schedule.next_after(last_ms),
                Ok(Pass::Raced) => {}
                Err(err) => {
                    tracing::warn!(schedule = %entry.name, error = %crate::error::chain(&err), "firing the schedule failed; retrying");
                    return Some(now + RETRY_AFTER_MS);
                }
            }
        }
        Some(now + RETRY_AFTER_MS)
    }

    async fn pass(&self, broker: &dyn Broker, entry: &Entry, now: i64) -> Result<Pass> {
        let state = broker.beat_state(&entry.name).await?;
        let Some(last_ms) = state.last_ms else {
            // The hash is gone (deleted by hand, or Redis restarted empty): start from now.
            tracing::warn!(schedule = %entry.name, "the schedule's state was missing; slots are counted from now");
            broker
                .beat_register(&entry.name, now, &entry.definition())
                .await?;
            return Ok(Pass::Raced);
        };
        let plan = schedule::plan(&entry.schedule, last_ms, now, self.grace);
        let Some(through_ms) = plan.through_ms else {
            return Ok(Pass::Done { last_ms });
        };
        let mut advance = BeatAdvance {
            schedule: entry.name.clone(),
            expected_ms: last_ms,
            through_ms,
            queue: entry.lane.clone(),
            payloads: Vec::new(),
            job_ids: Vec::new(),
            fired: None,
            skipped_slot_ms: None,
        };
        if state.paused {
            // Paused: the due slots pass without a job, and are not caught up on resume.
            if !broker.beat_advance(&advance).await? {
                return Ok(Pass::Raced);
            }
            if !plan.fires.is_empty() {
                tracing::info!(schedule = %entry.name, slots = plan.fires.len(), "paused: its due slots pass without a job");
            }
            return Ok(Pass::Done {
                last_ms: through_ms,
            });
        }
        let skipped = match plan.fires.last() {
            Some(fire)
                if !entry.schedule.allows_overlap()
                    && running(broker, &entry.lane, &state).await? =>
            {
                advance.skipped_slot_ms = Some(fire.slot_ms);
                Some(fire.slot_ms)
            }
            _ => None,
        };
        if skipped.is_none() {
            for fire in &plan.fires {
                advance.payloads.push(self.job(entry, fire)?);
                advance
                    .job_ids
                    .push(schedule::slot_job_id(&entry.name, fire.slot_ms).to_string());
            }
            advance.fired = plan.fires.last().map(|fire| LastFired {
                job: schedule::slot_job_id(&entry.name, fire.slot_ms),
                slot_ms: fire.slot_ms,
                fired_ms: now,
                late: fire.late,
            });
        }
        if !broker.beat_advance(&advance).await? {
            return Ok(Pass::Raced);
        }
        if let Some(slot) = skipped {
            tracing::info!(schedule = %entry.name, slot = %entry.schedule.local(slot), "skipped: the previous run is still queued or running (overlap = false)");
        }
        if skipped.is_none() {
            for fire in &plan.fires {
                tracing::info!(schedule = %entry.name, task = %entry.task, slot = %entry.schedule.local(fire.slot_ms), late = fire.late, "fired");
            }
        }
        if let Some(from) = plan.missed_from_ms {
            tracing::warn!(schedule = %entry.name, from = %entry.schedule.local(from), misfire = %entry.schedule.misfire_policy(), "slots were missed (the beat was down or Redis away)");
        }
        Ok(Pass::Done {
            last_ms: through_ms,
        })
    }

    /// The envelope of one slot's job: its id is derived from (schedule, slot), and its
    /// headers say which slot it is and whether it went out late.
    fn job(&self, entry: &Entry, fire: &schedule::Fire) -> Result<Vec<u8>> {
        let mut options = EnqueueOptions::new()
            .job_id(schedule::slot_job_id(&entry.name, fire.slot_ms))
            .system_header(SystemHeader::Schedule, entry.name.clone())
            .system_header(SystemHeader::SlotMs, fire.slot_ms.to_string())
            .system_header(SystemHeader::Late, fire.late.to_string());
        if let Some(from) = fire.missed_from_ms {
            options = options.system_header(SystemHeader::MissedFromMs, from.to_string());
        }
        let (_, job) =
            self.client
                .prepare(&entry.task, entry.options, entry.args.clone(), &options)?;
        Ok(job.payload)
    }
}

/// How far this host's clock is off the broker's, told once when it passes a second and again
/// when it changes by a second more or comes back.
#[derive(Debug, Default)]
struct SkewWatch {
    /// The skew last warned about.
    warned: Option<i64>,
}

/// A skew the beat tolerates without a word: NTP keeps hosts far closer.
const SKEW_WARNING_MS: i64 = 1000;

impl SkewWatch {
    fn observe(&mut self, offset_ms: i64) {
        let off = offset_ms.abs() > SKEW_WARNING_MS;
        match self.warned {
            Some(warned) if off && (offset_ms - warned).abs() <= SKEW_WARNING_MS => {}
            _ if off => {
                let direction = if offset_ms > 0 { "ahead of" } else { "behind" };
                tracing::warn!(
                    skew_ms = offset_ms,
                    "this host's clock is {} {direction} the broker's (Redis TIME); slots follow the broker's clock",
                    humantime::format_duration(std::time::Duration::from_millis(
                        offset_ms.unsigned_abs()
                    ))
                );
                self.warned = Some(offset_ms);
            }
            Some(_) => {
                tracing::info!(
                    skew_ms = offset_ms,
                    "this host's clock is back in step with the broker's"
                );
                self.warned = None;
            }
            None => {}
        }
    }
}

/// Whether the schedule's last job (fired to `queue`) is still queued, running, or waiting to
/// retry.
async fn running(broker: &dyn Broker, queue: &str, state: &BeatState) -> Result<bool> {
    if let Some(entry_id) = &state.entry
        && broker.in_stream(queue, entry_id).await?
    {
        return Ok(true);
    }
    // Settled: the record says whether it finished or goes on (a retry waits in the delayed
    // set). Read after the stream, so a job settled in between is seen in its new state.
    let Some(job) = &state.last_job else {
        return Ok(false);
    };
    let Some(bytes) = broker.load_record(job).await? else {
        return Ok(false);
    };
    let record = JobRecord::decode(&bytes)?;
    Ok(matches!(
        record.state,
        State::Started | State::Progress | State::Retry
    ))
}
