//! The rules `#[task]` checks at compile time and psw-tasks applies at run time: cron
//! expressions, time zones, misfire policies, key-safe names, rate limits, and the defaults of
//! `#[task]`.
//!
//! One file compiled into both crates: `psw-tasks-macros` includes it by path, because a
//! proc-macro crate cannot share code with its runtime any other way. So it uses nothing of
//! either crate, only croner, chrono, chrono-tz and humantime, which both depend on.

use std::fmt;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};

/// The queue of a task that names none.
pub(crate) const DEFAULT_QUEUE: &str = "default";
/// Retries of a task that sets none.
pub(crate) const DEFAULT_RETRIES: u32 = 3;
/// First retry delay of a task that sets none, in ms.
pub(crate) const DEFAULT_BACKOFF_BASE_MS: u64 = 1_000;
/// Longest retry delay of a task that sets none, in ms.
pub(crate) const DEFAULT_BACKOFF_MAX_MS: u64 = 3_600_000;
/// Whether retry delays are jittered unless a task says otherwise.
pub(crate) const DEFAULT_JITTER: bool = true;
/// The zone a cron schedule is read in unless it names one.
pub(crate) const DEFAULT_ZONE: &str = "UTC";

/// How the backoff curves are spelled in `#[task(backoff = "..")]` and in listings.
pub(crate) const BACKOFF_EXPONENTIAL: &str = "exp";
pub(crate) const BACKOFF_LINEAR: &str = "linear";
pub(crate) const BACKOFF_FIXED: &str = "fixed";
pub(crate) const BACKOFF_NONE: &str = "none";

/// Largest `backfill(N)`.
pub(crate) const MAX_BACKFILL: u32 = 1000;

/// What a schedule does with slots that are found more than the grace period late (the beat was
/// down, or Redis was away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misfire {
    /// Drop them.
    Skip,
    /// Fire once for all of them, for the latest (the default).
    #[default]
    Coalesce,
    /// Fire each of the latest N of them, oldest first; drop older ones.
    Backfill(u32),
}

impl fmt::Display for Misfire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfire::Skip => f.write_str("skip"),
            Misfire::Coalesce => f.write_str("coalesce"),
            Misfire::Backfill(n) => write!(f, "backfill({n})"),
        }
    }
}

/// A job's level within its queue. A worker reads a queue's levels strictly in this order
/// within the queue's turn, so a busy `High` level holds back `Normal` and `Low` of the same
/// queue (never other queues: their turns come as the worker's queue order says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Read before the rest of its queue.
    High,
    /// The queue's own stream (the default): what a producer that knows nothing of levels
    /// adds to.
    #[default]
    Normal,
    /// Read only when the rest of its queue is empty.
    Low,
}

impl Priority {
    /// Every level, in the order a worker reads them.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// How the level is spelled in `#[task(priority = "..")]`, the CLI and stream names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `priority` accepts.
/// The queue and level of a lane's name (a queue's own name is its normal level): the lanes
/// of a priority queue are `<queue>:high` and `<queue>:low` (see `priority`). Here, below the
/// key names, since every lane's keys carry its queue's hash tag.
// The macros crate includes this file and names no lanes.
#[allow(dead_code)]
pub(crate) fn split_lane(name: &str) -> (&str, Priority) {
    if let Some((queue, level)) = name.rsplit_once(':') {
        for priority in [Priority::High, Priority::Low] {
            if level == priority.as_str() {
                return (queue, priority);
            }
        }
    }
    (name, Priority::Normal)
}

pub(crate) const PRIORITY_FORM: &str = "`high`, `normal` or `low`";

/// `high`, `normal` or `low`.
pub(crate) fn parse_priority(text: &str) -> Result<Priority, String> {
    Priority::ALL
        .into_iter()
        .find(|level| level.as_str() == text)
        .ok_or_else(|| format!("expected {PRIORITY_FORM}, not {text:?}"))
}

/// `skip`, `coalesce` or `backfill(N)` with N from 1 to [`MAX_BACKFILL`].
pub(crate) fn parse_misfire(text: &str) -> Result<Misfire, &'static str> {
    let backfill = text
        .strip_prefix("backfill(")
        .and_then(|rest| rest.strip_suffix(')'))
        .map(|n| n.trim().parse::<u32>());
    match (text, backfill) {
        ("skip", _) => Ok(Misfire::Skip),
        ("coalesce", _) => Ok(Misfire::Coalesce),
        (_, Some(Ok(n))) if (1..=MAX_BACKFILL).contains(&n) => Ok(Misfire::Backfill(n)),
        _ => Err("expected `skip`, `coalesce` or `backfill(N)` with N from 1 to 1000"),
    }
}

/// An IANA time zone name.
pub(crate) fn parse_zone(zone: &str) -> Result<Tz, &'static str> {
    zone.parse::<Tz>()
        .map_err(|_| "not a time zone; expected an IANA name like `Europe/Stockholm` or `UTC`")
}

/// The field names of 5- and 6-field expressions, with what each accepts.
const FIELDS: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L or W"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT, with # or L"),
];

/// Seconds may lead (6 fields); years are refused so that 7 fields are a mistake, not a
/// surprise.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Parse a cron expression (5 fields, 6 with seconds first, or a nickname like `@daily`), or
/// say which field is wrong and what it accepts.
pub(crate) fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let nickname = fields.len() == 1 && fields[0].starts_with('@');
    if !nickname && !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds \
             first, found {}",
            fields.len()
        ));
    }
    let parser = parser();
    let cron = parser.parse(text).map_err(|err| {
        let names = &FIELDS[6 - fields.len().max(5)..];
        // The field that fails on its own, with every other field a wildcard.
        let culprit = (0..fields.len()).find(|&i| {
            let probe: Vec<&str> = (0..fields.len())
                .map(|j| if i == j { fields[j] } else { "*" })
                .collect();
            parser.parse(&probe.join(" ")).is_err()
        });
        match culprit.filter(|_| !nickname) {
            Some(i) => format!(
                "{} field `{}`: {}; expected {}",
                names[i].0,
                fields[i],
                cron_reason(&err),
                names[i].1
            ),
            None => cron_reason(&err),
        }
    })?;
    // From a fixed instant, so that the answer never depends on when it is asked.
    let reference = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
    if reference.is_none_or(|at| cron.find_next_occurrence(&at, false).is_err()) {
        return Err("it never fires: no date matches it".to_owned());
    }
    Ok(cron)
}

/// croner's message without its prefix, capital and period.
fn cron_reason(err: &CronError) -> String {
    let text = match err {
        // croner names the character inside a rewritten field (`MON` becomes `1`): name only it.
        CronError::IllegalCharacters(text) => {
            return match text.split('\'').nth(1) {
                Some(character) => format!("illegal character `{character}`"),
                None => "illegal character".to_owned(),
            };
        }
        CronError::ComponentError(text) | CronError::InvalidPattern(text) => text.clone(),
        other => other.to_string(),
    };
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "not a cron expression".to_owned(),
    }
}

/// What makes a name unfit to be part of a Redis key (a namespace or a queue name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameProblem {
    Empty,
    TooLong,
    /// Whitespace or a control character.
    Whitespace,
    /// `{` or `}` (they would change the Cluster hash tag) or `:` (it separates key parts).
    Reserved(char),
}

/// Whether `name` can be part of a key: namespaces and queue names.
pub(crate) fn check_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > 200 {
        return Err(NameProblem::TooLong);
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameProblem::Whitespace);
    }
    match name.chars().find(|c| matches!(c, '{' | '}' | ':')) {
        Some(reserved) => Err(NameProblem::Reserved(reserved)),
        None => Ok(()),
    }
}

/// How a rate limit is written, for error messages.
pub(crate) const RATE_FORM: &str = "`<count>/<period>`, the period `s`, `m`, `h`, `d` or a duration such as `10s`, then optionally `burst <n>`: \"60/m\", \"10/s burst 5\", \"100/10s\"";

/// A rate limit as written: `count` starts per `per_ms`, at most `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateSpec {
    pub(crate) count: u32,
    pub(crate) per_ms: u64,
    pub(crate) burst: u32,
}

/// Whether a `rate_limit` or `concurrency` value is a limit of its own (`"60/m"`, `2`) rather
/// than the name of a shared one: names start with a letter, limits with a digit.
pub(crate) fn is_named_limit(text: &str) -> bool {
    !text.trim_start().starts_with(|c: char| c.is_ascii_digit())
}

/// Whether `count` starts per `per_ms` can be kept: at least one of each, and no more than one
/// start per microsecond, since starts are spaced by whole microseconds.
pub(crate) fn check_rate(count: u32, per_ms: u64) -> Result<(), String> {
    if count == 0 || per_ms == 0 {
        return Err("the count and the period are at least 1".to_owned());
    }
    if per_ms.saturating_mul(1000) / u64::from(count) == 0 {
        return Err(format!(
            "{count} per {per_ms} ms is more than one start per microsecond"
        ));
    }
    Ok(())
}

/// Whether `name` can name a shared limit: key-safe ([`check_name`]) and starting with a
/// letter, so that it is never read as a limit of its own.
pub(crate) fn is_limit_name(name: &str) -> bool {
    check_name(name).is_ok() && is_named_limit(name)
}

/// Parse `60/m`, `10/s burst 5`, `100/10s`: see [`RATE_FORM`].
pub(crate) fn parse_rate(text: &str) -> Result<RateSpec, String> {
    let mut words = text.split_whitespace();
    let Some(rate) = words.next() else {
        return Err("it is empty".to_owned());
    };
    let burst = match (words.next(), words.next(), words.next()) {
        (None, _, _) => 1,
        (Some("burst"), Some(n), None) => match n.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!(
                    "the burst {n:?} is not a whole number of at least 1"
                ));
            }
        },
        _ => return Err("only `burst <n>` may follow the rate".to_owned()),
    };
    let Some((count, period)) = rate.split_once('/') else {
        return Err(format!(
            "{rate:?} has no `/` between the count and the period"
        ));
    };
    let count = match count.parse::<u32>() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(format!(
                "the count {count:?} is not a whole number of at least 1"
            ));
        }
    };
    let per_ms = match period {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => match humantime::parse_duration(other) {
            Ok(per) if per.as_millis() >= 1 && per.subsec_nanos() % 1_000_000 == 0 => {
                u64::try_from(per.as_millis())
                    .map_err(|_| format!("the period {other:?} is too long"))?
            }
            Ok(_) => {
                return Err(format!(
                    "the period {other:?} is not a whole number of milliseconds"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "the period {other:?} is not s, m, h, d or a duration"
                ));
            }
        },
    };
    check_rate(count, per_ms)?;
    Ok(RateSpec {
        count,
        per_ms,
        burst,
    })
}
