//! Global flow limits: how often a task (or a shared resource) may be used, and how many of
//! its jobs may run at once, across every worker. Pure: the limits, the GCRA decision both
//! brokers make (the Redis one in `rate_acquire.lua`, the same steps), and how long a job
//! waiting for a concurrency slot waits; the broker keeps the state.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::rules;

/// At most `count` starts per `per`, across the cluster, and at most `burst` of them at once.
///
/// Enforced with GCRA (the generic cell rate algorithm): starts are spaced `per / count`
/// apart, and up to `burst - 1` of them may come early after a quiet spell. So in any window
/// of length `per` there are at most `count + burst - 1` starts. Written `"60/m"`,
/// `"10/s burst 5"` or `"100/10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    count: u32,
    per: Duration,
    burst: u32,
}

impl RateLimit {
    /// `count` starts per `per`, evenly spaced (a burst of 1). `None` for a count of zero, a
    /// period under a millisecond, or more than one start per microsecond.
    pub fn new(count: u32, per: Duration) -> Option<RateLimit> {
        let per_ms = u64::try_from(per.as_millis()).ok()?;
        rules::check_rate(count, per_ms).ok()?;
        Some(RateLimit {
            count,
            per: Duration::from_millis(per_ms),
            burst: 1,
        })
    }

    /// The same limit, letting up to `burst` (at least 1) start at once after a quiet spell.
    pub fn with_burst(self, burst: u32) -> RateLimit {
        RateLimit {
            burst: burst.max(1),
            ..self
        }
    }

    /// How many starts per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// How many may start at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The space between two starts, in whole microseconds, rounded up: a limit is never
    /// exceeded by rounding.
    pub(crate) fn interval_us(&self) -> i64 {
        let per_us = self.per.as_micros() as i64;
        (per_us + i64::from(self.count) - 1) / i64::from(self.count)
    }

    /// How early a start may come, in microseconds: `burst - 1` intervals.
    pub(crate) fn tolerance_us(&self) -> i64 {
        self.interval_us() * i64::from(self.burst - 1)
    }

    /// From what `rules::parse_rate` read; the macro builds limits through here too.
    pub(crate) const fn from_spec(count: u32, per_ms: u64, burst: u32) -> RateLimit {
        RateLimit {
            count,
            per: Duration::from_millis(per_ms),
            burst,
        }
    }
}

impl FromStr for RateLimit {
    type Err = Error;

    fn from_str(text: &str) -> Result<RateLimit> {
        let spec = rules::parse_rate(text).map_err(|reason| {
            Error::config(
                "rate limit",
                text,
                format!("{} ({reason})", rules::RATE_FORM),
            )
        })?;
        Ok(RateLimit::from_spec(spec.count, spec.per_ms, spec.burst))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.per.as_millis() {
            1_000 => "s".to_owned(),
            60_000 => "m".to_owned(),
            3_600_000 => "h".to_owned(),
            86_400_000 => "d".to_owned(),
            _ => humantime::format_duration(self.per)
                .to_string()
                .replace(' ', ""),
        };
        write!(f, "{}/{per}", self.count)?;
        if self.burst > 1 {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// A task's own limit, or the name of a shared one configured at the worker's start
/// (`PSW_RATE_LIMITS`, `PSW_CONCURRENCY_LIMITS`, `WorkerBuilder::rate_limit`,
/// `WorkerBuilder::concurrency_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskLimit<T> {
    /// This task's alone: `#[task(rate_limit = "60/m")]`, `#[task(concurrency = 2)]`.
    Own(T),
    /// Shared with every task and `TaskContext::rate_limit` call naming it:
    /// `#[task(rate_limit = "eodhd")]`, `#[task(concurrency = "renderer")]`.
    Named(&'static str),
}

impl<T> TaskLimit<T> {
    /// The scope the broker keeps the limit's state under: `task:<task>` for a task's own,
    /// the name for a shared one (names hold no `:`, so the two never meet).
    pub(crate) fn scope(&self, task: &str) -> String {
        match self {
            TaskLimit::Own(_) => format!("task:{task}"),
            TaskLimit::Named(name) => (*name).to_owned(),
        }
    }
}

/// Whether `name` can name a shared limit: a key-safe name (no `:`, braces or blanks).
pub(crate) fn check_limit_name(name: &str, variable: &str) -> Result<()> {
    if !rules::is_limit_name(name) {
        return Err(Error::config(
            variable,
            name,
            "a limit name: it starts with a letter, has no blanks, `:`, `{` or `}`, and is at most 200 bytes",
        ));
    }
    Ok(())
}

/// The state GCRA keeps per limit, in microseconds since the epoch: `tat`, when the next
/// start would be on time, and `line`, the end of the line of jobs told to come back later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateState {
    pub(crate) tat_us: i64,
    pub(crate) line_us: i64,
}

/// One GCRA decision at `now_us`: `None` when a start may happen now (and it is counted), else
/// how long to wait, in microseconds.
///
/// A caller whose turn is at most `patience_us` away reserves it: the start is counted at
/// that moment, and the caller starts after the wait without asking again (as Guava's
/// `RateLimiter` does). One whose turn is further is given a place in the line of such
/// callers, each one interval after the one before, to ask again then: a backlog put back
/// comes back one by one instead of all at the next free moment. Starts are counted exactly;
/// a reserved one happens at its moment or as much later as the caller's timer wakes it.
pub(crate) fn acquire(
    state: &mut RateState,
    now_us: i64,
    interval_us: i64,
    tolerance_us: i64,
    patience_us: i64,
) -> Option<i64> {
    let tat = state.tat_us.max(now_us);
    let allowed_at = tat - tolerance_us;
    if allowed_at <= now_us {
        state.tat_us = tat + interval_us;
        return None;
    }
    if allowed_at - now_us <= patience_us {
        state.tat_us = tat + interval_us;
        return Some(allowed_at - now_us);
    }
    let place = state.line_us.max(allowed_at);
    state.line_us = place + interval_us;
    Some(place - now_us)
}

/// How far ahead a job over its rate limit reserves its turn and waits for it in its runner;
/// a later turn puts it back instead. Without it a put-back job, back through the delayed set
/// a little late, would find its moment taken and go to the end of the line, and the limit
/// would go unused.
pub(crate) const RUNNER_PATIENCE: Duration = Duration::from_millis(100);

/// How long a job that found every concurrency slot taken waits before it asks again, the
/// `waits`-th time: 100 ms doubling up to 10 s, each between half and the whole of that
/// (`random` in `[0, 1)`), so that a crowd of waiters spreads and a long wait costs little.
pub(crate) fn slot_wait(waits: u32, random: f64) -> Duration {
    const FIRST_MS: f64 = 100.0;
    const LONGEST_MS: f64 = 10_000.0;
    let ceiling = (FIRST_MS * 2f64.powi(waits.min(20) as i32)).min(LONGEST_MS);
    Duration::from_millis((ceiling * (0.5 + random / 2.0)) as u64)
}

/// The longest `TaskContext::rate_limit` waits inside a running task; a longer wait puts the
/// job back instead, so that it does not hold a worker's slot.
pub(crate) const IN_TASK_WAIT: Duration = Duration::from_secs(1);

/// The most of `starts` (µs) that fall in any window of `window_us`, for the tests that count
/// them.
#[cfg(test)]
pub(crate) fn most_in_window(starts: &[i64], window_us: i64) -> usize {
    let mut sorted = starts.to_vec();
    sorted.sort_unstable();
    (0..sorted.len())
        .map(|i| sorted[i..].partition_point(|&at| at < sorted[i] + window_us))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        for (text, count, per_ms, burst) in [
            ("60/m", 60, 60_000, 1),
            ("10/s burst 5", 10, 1_000, 5),
            ("100/10s", 100, 10_000, 1),
            ("1000/d", 1000, 86_400_000, 1),
            ("3/h", 3, 3_600_000, 1),
        ] {
            let limit: RateLimit = text.parse().unwrap();
            assert_eq!(
                (limit.count(), limit.per().as_millis() as u64, limit.burst()),
                (count, per_ms, burst),
                "{text}"
            );
            assert_eq!(limit.to_string(), text);
        }
        for bad in [
            "",
            "60",
            "0/s",
            "x/s",
            "10/fortnight",
            "10/s burst",
            "10/s burst 0",
            "10/s bursts 2",
            "2000000/s",
        ] {
            let err = bad.parse::<RateLimit>().unwrap_err().to_string();
            assert!(err.contains("expected `<count>/<period>`"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert!(rules::is_named_limit("eodhd"));
        assert!(!rules::is_named_limit("60/m"));
    }

    #[test]
    fn intervals_round_up_so_the_limit_holds() {
        let seven: RateLimit = "7/s".parse().unwrap();
        assert_eq!(seven.interval_us(), 142_858);
        assert!(seven.interval_us() * 7 >= 1_000_000);
        assert_eq!(
            "10/s burst 5".parse::<RateLimit>().unwrap().tolerance_us(),
            400_000
        );
        assert_eq!(RateLimit::new(0, Duration::from_secs(1)), None);
        assert_eq!(
            RateLimit::new(5, Duration::from_secs(1))
                .unwrap()
                .with_burst(0)
                .burst(),
            1
        );
    }

    /// Simulated arrivals of three workers over 20 simulated seconds: no 1-second window holds
    /// more than the limit plus its burst, the line spreads the waiters, and an idle limit
    /// gives its whole burst at once.
    #[test]
    fn no_window_holds_more_than_the_limit_and_its_burst() {
        for text in ["10/s", "10/s burst 5"] {
            let limit: RateLimit = text.parse().unwrap();
            let (interval, tolerance) = (limit.interval_us(), limit.tolerance_us());
            let mut state = RateState::default();
            let start = 1_700_000_000_000_000i64;
            // Each of 3 workers with 4 runners asks when its next job is due: at random
            // moments, or at the moment it was told to come back.
            let mut due: Vec<i64> = (0..12).map(|i| start + i * 7_919).collect();
            let mut starts = Vec::new();
            let mut checks = 0u64;
            let end = start + 20_000_000;
            loop {
                let (runner, &now) = due.iter().enumerate().min_by_key(|(_, at)| **at).unwrap();
                if now >= end {
                    break;
                }
                checks += 1;
                // Half the runners reserve a turn up to 50 ms away, as workers do.
                let patience = if runner.is_multiple_of(2) { 50_000 } else { 0 };
                match acquire(&mut state, now, interval, tolerance, patience) {
                    None => {
                        starts.push(now);
                        due[runner] = now + 1_000 + fastrand::i64(0..20_000);
                    }
                    Some(wait) if wait <= patience => {
                        starts.push(now + wait);
                        due[runner] = now + wait + 1_000 + fastrand::i64(0..20_000);
                    }
                    Some(wait) => {
                        assert!(wait > 0);
                        due[runner] = now + wait;
                    }
                }
            }
            let most = most_in_window(&starts, 1_000_000);
            let allowed = (limit.count() + limit.burst()) as usize;
            assert!(
                most <= allowed,
                "{text}: {most} starts in one second, limit {allowed}"
            );
            // Busy all along, so the limit is reached, not just respected.
            assert!(
                starts.len() >= 190,
                "{text}: only {} starts in 20 s",
                starts.len()
            );
            // Waiters come back one by one: about one refusal per start, not one per runner
            // per start.
            assert!(
                checks < starts.len() as u64 * 3,
                "{text}: {checks} checks for {} starts",
                starts.len()
            );
        }
        let burst: RateLimit = "10/s burst 5".parse().unwrap();
        let mut state = RateState::default();
        let now = 5_000_000;
        let at_once = (0..10)
            .take_while(|_| {
                acquire(
                    &mut state,
                    now,
                    burst.interval_us(),
                    burst.tolerance_us(),
                    0,
                )
                .is_none()
            })
            .count();
        assert_eq!(at_once, 5);
    }

    #[test]
    fn a_patient_caller_reserves_its_turn_and_takes_no_place_in_line() {
        let (interval, now) = (100_000, 1_000_000);
        let mut state = RateState::default();
        assert_eq!(acquire(&mut state, now, interval, 0, 0), None);
        // 100 ms to the next turn: within 150 ms of patience, reserved; the line is untouched.
        assert_eq!(
            acquire(&mut state, now, interval, 0, 150_000),
            Some(100_000)
        );
        assert_eq!(state.line_us, 0);
        // The next turn is 200 ms away: past the patience, a place in line, not reserved.
        assert_eq!(
            acquire(&mut state, now, interval, 0, 150_000),
            Some(200_000)
        );
        assert_eq!(acquire(&mut state, now, interval, 0, 0), Some(300_000));
        // The first in line comes back on time and starts: the reservation held its own turn.
        assert_eq!(acquire(&mut state, now + 200_000, interval, 0, 0), None);
        assert_eq!(state.tat_us, now + 300_000);
    }

    #[test]
    fn slot_waits_grow_and_stay_bounded() {
        assert_eq!(slot_wait(0, 0.0), Duration::from_millis(50));
        assert_eq!(slot_wait(0, 0.999_999), Duration::from_millis(99));
        assert!(slot_wait(3, 0.5) > slot_wait(2, 0.5));
        assert!(slot_wait(1_000, 0.999_999) <= Duration::from_secs(10));
        assert!(slot_wait(1_000, 0.0) >= Duration::from_secs(5));
    }
}
