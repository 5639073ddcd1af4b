//! When a schedule fires, and what the beat does about slots it finds due: pure functions of
//! times given to them, no IO and no clock (`docs/scheduling.md` has the semantics).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::error::{Error, Result};
use crate::rules::{self, Misfire};

/// Most slots one pass fires on time; the rest wait for the next pass, so a long outage of a
/// one-second schedule cannot make one pass unbounded.
const MAX_FIRES: usize = 10_000;

impl FromStr for Misfire {
    type Err = Error;

    /// `skip`, `coalesce` or `backfill(N)` with N from 1 to 1000.
    fn from_str(text: &str) -> Result<Self> {
        rules::parse_misfire(text).map_err(|reason| Error::schedule(text, reason))
    }
}

/// A schedule: a cron expression in a time zone, or a fixed interval, with its misfire policy and
/// whether runs may overlap.
///
/// ```
/// use psw_tasks::{Misfire, Schedule};
/// # fn main() -> psw_tasks::Result<()> {
/// let nightly = Schedule::cron("30 2 * * *")?
///     .tz("Europe/Stockholm")?
///     .misfire(Misfire::Backfill(3))
///     .overlap(false);
/// let from_config = Schedule::parse("every 90s")?;
/// assert_eq!(from_config.to_string(), "every 1m 30s");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    when: When,
    tz: Tz,
    misfire: Misfire,
    overlap: bool,
}

#[derive(Debug, Clone)]
enum When {
    Cron { text: String, cron: Box<Cron> },
    Every { ms: i64 },
}

impl Schedule {
    /// A crontab expression: 5 fields (`minute hour day-of-month month day-of-week`, as Celery's
    /// `crontab()`), or 6 with seconds first; `@daily` and the other nicknames work too.
    pub fn cron(expression: &str) -> Result<Schedule> {
        let cron =
            rules::parse_cron(expression).map_err(|reason| Error::schedule(expression, reason))?;
        Ok(Schedule {
            when: When::Cron {
                text: expression.trim().to_owned(),
                cron: Box::new(cron),
            },
            tz: Tz::UTC,
            misfire: Misfire::default(),
            overlap: true,
        })
    }

    /// Every `interval` (whole seconds, at least one), at multiples of it since the Unix epoch,
    /// so that every beat process computes the same slots.
    pub fn every(interval: Duration) -> Result<Schedule> {
        let text = humantime::format_duration(interval).to_string();
        if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 {
            return Err(Error::schedule(
                text,
                "an interval is a whole number of seconds, at least one",
            ));
        }
        let ms = i64::try_from(interval.as_millis())
            .map_err(|_| Error::schedule(&text, "the interval is too long"))?;
        Ok(Schedule {
            when: When::Every { ms },
            tz: Tz::UTC,
            misfire: Misfire::default(),
            overlap: true,
        })
    }

    /// `every <duration>` (like `every 90s`), else a cron expression: the form configuration
    /// files use, and the one `Display` writes.
    pub fn parse(text: &str) -> Result<Schedule> {
        match text.trim().strip_prefix("every ") {
            Some(interval) => {
                let interval = humantime::parse_duration(interval.trim()).map_err(|err| {
                    Error::schedule(text, format!("{err}; write it like `every 90s`"))
                })?;
                Schedule::every(interval)
            }
            None => Schedule::cron(text),
        }
    }

    /// Read the cron expression in this IANA time zone (default UTC), like `Europe/Stockholm`.
    pub fn tz(mut self, zone: &str) -> Result<Schedule> {
        if matches!(self.when, When::Every { .. }) {
            return Err(Error::schedule(
                zone,
                "a time zone applies to cron expressions; `every` counts from the Unix epoch",
            ));
        }
        self.tz = rules::parse_zone(zone).map_err(|reason| Error::schedule(zone, reason))?;
        Ok(self)
    }

    /// What to do with slots found late (default [`Misfire::Coalesce`]).
    pub fn misfire(mut self, misfire: Misfire) -> Schedule {
        self.misfire = misfire;
        self
    }

    /// Whether a slot may fire while the previous run is still queued or running (default
    /// `true`); with `false` such a slot is skipped and counted.
    pub fn overlap(mut self, allowed: bool) -> Schedule {
        self.overlap = allowed;
        self
    }

    pub(crate) fn zone(&self) -> Tz {
        self.tz
    }

    pub(crate) fn misfire_policy(&self) -> Misfire {
        self.misfire
    }

    pub(crate) fn allows_overlap(&self) -> bool {
        self.overlap
    }

    /// The first slot strictly after `after_ms`; `None` when there is none (out of range).
    pub(crate) fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.when {
            When::Every { ms } => after_ms.div_euclid(*ms).checked_add(1)?.checked_mul(*ms),
            When::Cron { cron, .. } => {
                let from = self.at_second(after_ms)?;
                let next = cron.find_next_occurrence(&from, false).ok()?;
                Some(next.timestamp_millis())
            }
        }
    }

    /// The latest slot at or before `at_ms`.
    pub(crate) fn at_or_before(&self, at_ms: i64) -> Option<i64> {
        match &self.when {
            When::Every { ms } => at_ms.div_euclid(*ms).checked_mul(*ms),
            When::Cron { cron, .. } => {
                let from = self.at_second(at_ms)?;
                let previous = cron.find_previous_occurrence(&from, true).ok()?;
                Some(previous.timestamp_millis())
            }
        }
    }

    /// The latest slot strictly before `slot_ms`.
    fn before(&self, slot_ms: i64) -> Option<i64> {
        self.at_or_before(slot_ms.checked_sub(1)?)
    }

    /// `ms` in the schedule's zone, cut to the whole second: slots are whole seconds.
    fn at_second(&self, ms: i64) -> Option<DateTime<Tz>> {
        Some(
            Utc.timestamp_opt(ms.div_euclid(1000), 0)
                .single()?
                .with_timezone(&self.tz),
        )
    }

    /// A slot as wall-clock time in the schedule's zone, like `2026-03-29 03:00:00 CEST`.
    pub(crate) fn local(&self, slot_ms: i64) -> String {
        match self.at_second(slot_ms) {
            Some(at) => at.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
            None => slot_ms.to_string(),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.when {
            When::Cron { text, .. } => f.write_str(text),
            When::Every { ms } => write!(
                f,
                "every {}",
                humantime::format_duration(Duration::from_millis(*ms as u64))
            ),
        }
    }
}

/// A schedule as `#[task(schedule = .., every = .., tz = .., misfire = .., overlap = ..)]` wrote
/// it, checked at compile time and parsed when a scheduler starts.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclaredSchedule {
    /// The cron expression, or `""` for an interval.
    pub(crate) cron: &'static str,
    pub(crate) every_ms: u64,
    pub(crate) tz: &'static str,
    pub(crate) misfire: Misfire,
    pub(crate) overlap: bool,
}

impl DeclaredSchedule {
    #[doc(hidden)]
    pub const fn new(
        cron: &'static str,
        every_ms: u64,
        tz: &'static str,
        misfire: Misfire,
        overlap: bool,
    ) -> Self {
        DeclaredSchedule {
            cron,
            every_ms,
            tz,
            misfire,
            overlap,
        }
    }

    pub(crate) fn schedule(&self) -> Result<Schedule> {
        let schedule = if self.cron.is_empty() {
            Schedule::every(Duration::from_millis(self.every_ms))?
        } else {
            Schedule::cron(self.cron)?.tz(self.tz)?
        };
        Ok(schedule.misfire(self.misfire).overlap(self.overlap))
    }
}

/// The id of the job of one slot: readable, and the same in every beat process.
pub(crate) fn slot_job_id(schedule: &str, slot_ms: i64) -> String {
    let at = Utc.timestamp_millis_opt(slot_ms).single().map_or_else(
        || slot_ms.to_string(),
        |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    format!("{schedule}@{at}")
}

/// One job to create: its slot, and whether it goes out more than the grace period late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fire {
    pub(crate) slot_ms: i64,
    pub(crate) late: bool,
    /// For a coalesced run: the earliest slot it stands for.
    pub(crate) missed_from_ms: Option<i64>,
}

/// What one pass does: the jobs to create, and the slot up to which the schedule is then done
/// (fired or dropped), which becomes its persisted `last`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) fires: Vec<Fire>,
    pub(crate) through_ms: Option<i64>,
    /// The earliest late slot, when some were late.
    pub(crate) missed_from_ms: Option<i64>,
}

/// The slots of `schedule` after `last_ms` and up to `now_ms`: on time if at most `grace` old,
/// late otherwise, and the late ones go through the misfire policy. Without overlap, only the
/// latest job is kept (two fired at once would overlap each other).
pub(crate) fn plan(schedule: &Schedule, last_ms: i64, now_ms: i64, grace: Duration) -> Plan {
    let mut plan = Plan::default();
    let Some(first) = schedule
        .next_after(last_ms)
        .filter(|&first| first <= now_ms)
    else {
        return plan;
    };
    // Slots before this are more than `grace` old: late.
    let cutoff = now_ms.saturating_sub(grace.as_millis() as i64);
    if first < cutoff {
        let latest = schedule
            .before(cutoff)
            .filter(|&latest| latest >= first)
            .unwrap_or(first);
        plan.through_ms = Some(latest);
        plan.missed_from_ms = Some(first);
        let late = |slot_ms| Fire {
            slot_ms,
            late: true,
            missed_from_ms: None,
        };
        match schedule.misfire {
            Misfire::Skip => {}
            Misfire::Coalesce => plan.fires.push(Fire {
                missed_from_ms: Some(first),
                ..late(latest)
            }),
            Misfire::Backfill(n) => {
                let mut slot = Some(latest);
                while let Some(at) = slot.filter(|&at| at > last_ms) {
                    if plan.fires.len() == n as usize {
                        break;
                    }
                    plan.fires.push(late(at));
                    slot = schedule.before(at);
                }
                plan.fires.reverse();
            }
        }
    }
    let mut slot = schedule.next_after(plan.through_ms.unwrap_or(last_ms));
    while let Some(at) = slot.filter(|&at| at <= now_ms) {
        if plan.fires.len() >= MAX_FIRES {
            break;
        }
        plan.fires.push(Fire {
            slot_ms: at,
            late: false,
            missed_from_ms: None,
        });
        plan.through_ms = Some(at);
        slot = schedule.next_after(at);
    }
    if !schedule.overlap
        && let Some(latest) = plan.fires.pop()
    {
        plan.fires = vec![latest];
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `2026-03-01` at `hh:mm:ss` UTC, in ms.
    fn at(time: &str) -> i64 {
        let time = chrono::NaiveTime::parse_from_str(time, "%H:%M:%S%.f").unwrap();
        chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
            .unwrap()
            .and_time(time)
            .and_utc()
            .timestamp_millis()
    }

    fn hms(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms)
            .unwrap()
            .format("%H:%M:%S")
            .to_string()
    }

    /// Plan `schedule` with `last` and `now` (times of day) and a 30 s grace; compare the fires
    /// (`10:01:00`, `10:09:00 late`, `10:10:00 late from 10:01:00`) and `through`.
    fn check(input: (&Schedule, &str, &str), expected: (&[&str], Option<&str>)) {
        let (schedule, last, now) = input;
        let plan = plan(schedule, at(last), at(now), Duration::from_secs(30));
        let fires: Vec<String> = plan
            .fires
            .iter()
            .map(|fire| {
                let mut text = hms(fire.slot_ms);
                if fire.late {
                    text.push_str(" late");
                }
                if let Some(from) = fire.missed_from_ms {
                    text.push_str(&format!(" from {}", hms(from)));
                }
                text
            })
            .collect();
        let actual = (fires, plan.through_ms.map(hms));
        let expected = (
            expected.0.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            expected.1.map(str::to_owned),
        );
        assert_eq!(actual, expected, "{schedule} {last} -> {now}");
    }

    #[test]
    fn plans_on_time_and_late_slots() {
        let minutely = Schedule::cron("* * * * *").unwrap();
        let coalesce = minutely.clone();
        let skip = minutely.clone().misfire(Misfire::Skip);
        let backfill = minutely.clone().misfire(Misfire::Backfill(3));
        let no_overlap = minutely.clone().overlap(false);
        let seconds = Schedule::every(Duration::from_secs(1)).unwrap();
        // ((schedule, last handled, now), (slots fired, last slot))
        type Case<'a> = (
            (&'a Schedule, &'a str, &'a str),
            (&'a [&'a str], Option<&'a str>),
        );
        let cases: &[Case<'_>] = &[
            // Nothing due yet.
            ((&coalesce, "10:00:00", "10:00:59"), (&[], None)),
            // Due now, and up to the grace period (30 s) late is still on time.
            (
                (&coalesce, "10:00:00", "10:01:00"),
                (&["10:01:00"], Some("10:01:00")),
            ),
            (
                (&coalesce, "10:00:00", "10:01:30"),
                (&["10:01:00"], Some("10:01:00")),
            ),
            (
                (&coalesce, "10:00:00", "10:01:30.001"),
                (&["10:01:00 late from 10:01:00"], Some("10:01:00")),
            ),
            // `last` is not a slot (the schedule was first seen then).
            (
                (&coalesce, "10:00:20", "10:01:05"),
                (&["10:01:00"], Some("10:01:00")),
            ),
            // Two slots within the grace period are both on time.
            (
                (&seconds, "10:00:00", "10:00:02"),
                (&["10:00:01", "10:00:02"], Some("10:00:02")),
            ),
            // Ten minutes down: late slots 10:01..10:10 follow the policy.
            (
                (&coalesce, "10:00:00", "10:10:45"),
                (&["10:10:00 late from 10:01:00"], Some("10:10:00")),
            ),
            ((&skip, "10:00:00", "10:10:45"), (&[], Some("10:10:00"))),
            (
                (&backfill, "10:00:00", "10:10:45"),
                (
                    &["10:08:00 late", "10:09:00 late", "10:10:00 late"],
                    Some("10:10:00"),
                ),
            ),
            // Late and on-time slots in one pass: the on-time one fires as usual.
            (
                (&coalesce, "10:00:00", "10:11:10"),
                (
                    &["10:10:00 late from 10:01:00", "10:11:00"],
                    Some("10:11:00"),
                ),
            ),
            (
                (&skip, "10:00:00", "10:11:10"),
                (&["10:11:00"], Some("10:11:00")),
            ),
            // Backfill never reaches back past `last`.
            (
                (&backfill, "10:08:00", "10:10:45"),
                (&["10:09:00 late", "10:10:00 late"], Some("10:10:00")),
            ),
            // Without overlap, only the latest job of a pass goes out.
            (
                (&no_overlap, "10:00:00", "10:11:10"),
                (&["10:11:00"], Some("10:11:00")),
            ),
            // A beat whose clock is behind the one that advanced `last` does nothing.
            ((&coalesce, "10:05:00", "10:04:00"), (&[], None)),
        ];
        for (input, expected) in cases {
            check(*input, *expected);
        }
    }

    #[test]
    fn every_counts_from_the_epoch() {
        let every = Schedule::every(Duration::from_secs(90)).unwrap();
        assert_eq!(every.next_after(at("10:00:00")), Some(at("10:01:30")));
        assert_eq!(every.next_after(at("10:01:29")), Some(at("10:01:30")));
        assert_eq!(every.next_after(at("10:01:30")), Some(at("10:03:00")));
        assert_eq!(every.at_or_before(at("10:01:30")), Some(at("10:01:30")));
        assert_eq!(every.at_or_before(at("10:01:29")), Some(at("10:00:00")));
        assert_eq!(every.to_string(), "every 1m 30s");
    }

    #[test]
    fn cron_slots_are_whole_seconds_after_a_fraction() {
        let every_second = Schedule::cron("* * * * * *").unwrap();
        assert_eq!(
            every_second.next_after(at("10:00:00") + 300),
            Some(at("10:00:01"))
        );
        assert_eq!(
            every_second.at_or_before(at("10:00:01") + 999),
            Some(at("10:00:01"))
        );
    }

    /// Slot times of `expression` in Europe/Stockholm on one local day.
    fn stockholm_day(expression: &str, month: u32, day: u32) -> Vec<String> {
        let schedule = Schedule::cron(expression)
            .unwrap()
            .tz("Europe/Stockholm")
            .unwrap();
        let tz = schedule.zone();
        let start = tz
            .with_ymd_and_hms(2026, month, day, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let end = tz
            .with_ymd_and_hms(2026, month, day + 1, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let mut slots = Vec::new();
        let mut slot = schedule.next_after(start - 1);
        while let Some(at) = slot.filter(|&at| at < end) {
            slots.push(schedule.local(at));
            slot = schedule.next_after(at);
        }
        slots
    }

    #[test]
    fn dst_days_in_stockholm() {
        // Spring forward: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        assert_eq!(
            stockholm_day("30 2 * * *", 3, 29),
            ["2026-03-29 03:00:00 CEST"]
        );
        let hourly = stockholm_day("0 * * * *", 3, 29);
        assert_eq!(hourly.len(), 23);
        assert!(
            !hourly.iter().any(|slot| slot.contains(" 02:")),
            "{hourly:?}"
        );
        // Fall back: 03:00 CEST becomes 02:00 CET; 02:30 happens twice and fires once.
        assert_eq!(
            stockholm_day("30 2 * * *", 10, 25),
            ["2026-10-25 02:30:00 CEST"]
        );
        let hourly = stockholm_day("0 * * * *", 10, 25);
        assert_eq!(hourly.len(), 25);
        assert_eq!(
            hourly[1..5],
            [
                "2026-10-25 01:00:00 CEST",
                "2026-10-25 02:00:00 CEST",
                "2026-10-25 02:00:00 CET",
                "2026-10-25 03:00:00 CET"
            ]
        );
        // Either way each day's first and the next day's are a day apart in wall-clock time.
        assert_eq!(
            stockholm_day("30 2 * * *", 3, 30),
            ["2026-03-30 02:30:00 CEST"]
        );
        assert_eq!(
            stockholm_day("30 2 * * *", 10, 26),
            ["2026-10-26 02:30:00 CET"]
        );
    }

    #[test]
    fn late_slots_are_found_across_the_fall_back_hour() {
        let hourly = Schedule::cron("0 * * * *")
            .unwrap()
            .tz("Europe/Stockholm")
            .unwrap()
            .misfire(Misfire::Backfill(10));
        let tz = hourly.zone();
        let last = tz
            .with_ymd_and_hms(2026, 10, 25, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let now = tz
            .with_ymd_and_hms(2026, 10, 25, 4, 10, 0)
            .unwrap()
            .timestamp_millis();
        let plan = plan(&hourly, last, now, Duration::from_secs(30));
        let slots: Vec<String> = plan.fires.iter().map(|f| hourly.local(f.slot_ms)).collect();
        assert_eq!(
            slots,
            [
                "2026-10-25 01:00:00 CEST",
                "2026-10-25 02:00:00 CEST",
                "2026-10-25 02:00:00 CET",
                "2026-10-25 03:00:00 CET",
                "2026-10-25 04:00:00 CET",
            ]
        );
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            (
                "*/15 * * *",
                "invalid schedule \"*/15 * * *\": expected 5 fields (minute hour day-of-month \
                 month day-of-week) or 6 with seconds first, found 4",
            ),
            (
                "0 0 0 * * * 2026",
                "invalid schedule \"0 0 0 * * * 2026\": expected 5 fields (minute hour \
                 day-of-month month day-of-week) or 6 with seconds first, found 7",
            ),
            (
                "60 * * * *",
                "invalid schedule \"60 * * * *\": minute field `60`: number out of bounds; \
                 expected 0-59",
            ),
            ("*/5 * * * * *", ""),
            (
                "61 * * * * *",
                "invalid schedule \"61 * * * * *\": second field `61`: number out of bounds; \
                 expected 0-59",
            ),
            (
                "0 0 * * MON-FOO",
                "invalid schedule \"0 0 * * MON-FOO\": day-of-week field `MON-FOO`: illegal \
                 character `F`; expected 0-7 or SUN-SAT, with # or L",
            ),
            (
                "0/5 * * * *",
                "invalid schedule \"0/5 * * * *\": minute field `0/5`: invalid step syntax: \
                 single number steps like \"0/5\" are not allowed. Use \"*/5\" for wildcard steps \
                 or \"X-Y/5\" for range steps; expected 0-59",
            ),
            (
                "0 0 30 2 *",
                "invalid schedule \"0 0 30 2 *\": it never fires: no date matches it",
            ),
            ("@daily", ""),
            (
                "@reboot",
                "invalid schedule \"@reboot\": pattern must have 5 or 6 fields when years are \
                 disallowed",
            ),
        ];
        for (expression, expected) in cases {
            let actual = Schedule::cron(expression).err().map(|e| e.to_string());
            assert_eq!(actual.as_deref().unwrap_or(""), *expected, "{expression}");
        }
        let zone = Schedule::cron("0 3 * * *")
            .unwrap()
            .tz("Europe/Stockolm")
            .unwrap_err();
        assert_eq!(
            zone.to_string(),
            "invalid schedule \"Europe/Stockolm\": not a time zone; expected an IANA name like \
             `Europe/Stockholm` or `UTC`"
        );
        let every = Schedule::every(Duration::from_millis(1500)).unwrap_err();
        assert_eq!(
            every.to_string(),
            "invalid schedule \"1s 500ms\": an interval is a whole number of seconds, at least one"
        );
        let zoned_every = Schedule::parse("every 1m").unwrap().tz("UTC").unwrap_err();
        assert!(
            zoned_every
                .to_string()
                .contains("`every` counts from the Unix epoch")
        );
        assert_eq!(
            "backfill(0)".parse::<Misfire>().unwrap_err().to_string(),
            "invalid schedule \"backfill(0)\": expected `skip`, `coalesce` or `backfill(N)` \
             with N from 1 to 1000"
        );
        assert_eq!(
            "backfill(10)".parse::<Misfire>().unwrap(),
            Misfire::Backfill(10)
        );
        assert_eq!(Misfire::Backfill(10).to_string(), "backfill(10)");
    }

    #[test]
    fn slot_job_ids_are_readable_and_deterministic() {
        assert_eq!(
            slot_job_id("reports.daily", at("10:15:00")),
            "reports.daily@2026-03-01T10:15:00Z"
        );
    }
}
