//! Retry policies and decisions: how delays grow ([`Backoff`]), whether a failure may be
//! retried ([`Retry`]), and what to do after a failed attempt. Pure: no IO, no clock; the
//! random part of the jitter is passed in.

use std::time::Duration;

use crate::rules;

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    /// `base * 2^attempt`, capped at `max`.
    Exponential,
    /// `base * (attempt + 1)`, capped at `max`.
    Linear,
    /// Always `base`.
    Fixed,
    /// Retry at once.
    None,
}

impl BackoffKind {
    /// The spelling used by `#[task(backoff = "..")]` and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            BackoffKind::Exponential => rules::BACKOFF_EXPONENTIAL,
            BackoffKind::Linear => rules::BACKOFF_LINEAR,
            BackoffKind::Fixed => rules::BACKOFF_FIXED,
            BackoffKind::None => rules::BACKOFF_NONE,
        }
    }
}

/// The retry delay policy of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Growth curve.
    pub kind: BackoffKind,
    /// First delay.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Whether each delay is shortened by a random part of up to a quarter, so that jobs that
    /// failed together do not retry together.
    pub jitter: bool,
}

/// Whether a failed attempt may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retried after the backoff while retries remain.
    Allowed,
    /// Never retried: the job fails at once.
    Never,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    RetryAfter(Duration),
    Fail,
}

/// The delay before attempt `attempt + 1`, after attempt `attempt` (from 0) failed.
/// `unit_random` is a number in [0, 1) that drives the jitter.
pub(crate) fn backoff_delay(backoff: &Backoff, attempt: u32, unit_random: f64) -> Duration {
    let base = backoff.base;
    let raw = match backoff.kind {
        BackoffKind::None => Duration::ZERO,
        BackoffKind::Fixed => base,
        BackoffKind::Linear => base.saturating_mul(attempt.saturating_add(1)),
        BackoffKind::Exponential => base.saturating_mul(2u32.saturating_pow(attempt.min(31))),
    };
    let capped = raw.min(backoff.max);
    if backoff.jitter {
        // Shorten by up to a quarter: spreads a herd of failures without ever waiting longer
        // than the curve promises.
        capped.mul_f64(1.0 - 0.25 * unit_random.clamp(0.0, 1.0))
    } else {
        capped
    }
}

/// Retry or fail, given the attempt that just failed and the retries allowed.
pub(crate) fn decide(
    backoff: &Backoff,
    retry: Retry,
    requested_delay: Option<Duration>,
    attempt: u32,
    max_retries: u32,
    unit_random: f64,
) -> Decision {
    if retry == Retry::Never || attempt >= max_retries {
        return Decision::Fail;
    }
    Decision::RetryAfter(
        requested_delay.unwrap_or_else(|| backoff_delay(backoff, attempt, unit_random)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(kind: BackoffKind, jitter: bool) -> Backoff {
        Backoff {
            kind,
            base: S,
            max: 10 * S,
            jitter,
        }
    }

    fn check(backoff: Backoff, attempt: u32, random: f64, expected: Duration) {
        assert_eq!(
            backoff_delay(&backoff, attempt, random),
            expected,
            "{backoff:?} attempt {attempt} random {random}"
        );
    }

    #[test]
    fn delays_follow_each_curve_and_cap() {
        use BackoffKind::*;
        check(policy(Exponential, false), 0, 0.0, S);
        check(policy(Exponential, false), 1, 0.0, 2 * S);
        check(policy(Exponential, false), 3, 0.0, 8 * S);
        check(policy(Exponential, false), 4, 0.0, 10 * S);
        check(policy(Exponential, false), 1000, 0.0, 10 * S);
        check(policy(Linear, false), 0, 0.0, S);
        check(policy(Linear, false), 2, 0.0, 3 * S);
        check(policy(Linear, false), 50, 0.0, 10 * S);
        check(policy(Fixed, false), 7, 0.0, S);
        check(policy(None, false), 3, 0.0, Duration::ZERO);
    }

    #[test]
    fn jitter_only_shortens_by_up_to_a_quarter() {
        use BackoffKind::*;
        check(policy(Exponential, true), 2, 0.0, 4 * S);
        check(
            policy(Exponential, true),
            2,
            0.5,
            Duration::from_millis(3500),
        );
        check(
            policy(Exponential, true),
            2,
            0.25,
            Duration::from_millis(3750),
        );
        check(
            policy(Exponential, true),
            9,
            1.0,
            Duration::from_millis(7500),
        );
    }

    #[test]
    fn decisions() {
        let exp = policy(BackoffKind::Exponential, false);
        assert_eq!(
            decide(&exp, Retry::Allowed, None, 0, 3, 0.0),
            Decision::RetryAfter(S)
        );
        assert_eq!(
            decide(&exp, Retry::Allowed, None, 2, 3, 0.0),
            Decision::RetryAfter(4 * S)
        );
        assert_eq!(
            decide(&exp, Retry::Allowed, None, 3, 3, 0.0),
            Decision::Fail
        );
        assert_eq!(decide(&exp, Retry::Never, None, 0, 3, 0.0), Decision::Fail);
        assert_eq!(
            decide(&exp, Retry::Allowed, Some(60 * S), 1, 3, 0.0),
            Decision::RetryAfter(60 * S)
        );
        assert_eq!(
            decide(&exp, Retry::Allowed, None, 0, 0, 0.0),
            Decision::Fail
        );
    }
}
