//! The crate's one public error type and its `Result` alias.

use std::fmt;
use std::time::Duration;

/// Everything that can go wrong when talking to psw-tasks from the outside.
///
/// A failing *task* is not an error of this kind: handlers return [`crate::TaskError`], and the
/// outcome is stored in the job's record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis refused or dropped a command.
    #[error("redis command failed")]
    Redis(#[source] RedisError),

    /// Redis could not be reached when connecting (or refused the login).
    #[error("cannot connect to Redis at {address} (from {variable}; {advice})")]
    Connect {
        /// The variable the URL came from, like `REDIS_URL`.
        variable: &'static str,
        /// The URL that was tried, without its password.
        address: String,
        /// What to do about it.
        advice: &'static str,
        /// Why it failed.
        #[source]
        source: RedisError,
    },

    /// The consumer group of a queue is missing: Redis lost its data (it restarted without
    /// persistence, or the keys were deleted). Workers recreate the groups when they see it.
    #[error("the consumer group of a queue is missing (did Redis restart without its data?)")]
    GroupMissing(#[source] RedisError),

    /// An environment variable or option holds a value of the wrong form.
    #[error("invalid configuration: {variable} = {value:?}: expected {expected}")]
    Config {
        /// The variable or option name.
        variable: String,
        /// The value that was given.
        value: String,
        /// The form that was expected, in words.
        expected: String,
    },

    /// The encoded job is larger than the configured limit.
    #[error("job for task `{task}` is {size} bytes, over the limit of {limit} bytes")]
    MessageTooLarge {
        /// Task name.
        task: String,
        /// Encoded size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// Arguments, a record or another value could not be encoded.
    #[error("could not encode {what}")]
    Encode {
        /// What was being encoded (`arguments of task x`, `job record`, ...).
        what: String,
        /// The serializer's message.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Bytes read back (a record, an envelope, a result) could not be decoded.
    #[error("could not decode {what}")]
    Decode {
        /// What was being decoded (`job envelope`, `result of job x`, ...).
        what: String,
        /// The deserializer's message.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Two `#[task]` functions claim one wire name.
    #[error("task name `{name}` is registered twice: at {first} and at {second}")]
    DuplicateTask {
        /// The wire name.
        name: String,
        /// `file:line` of one definition.
        first: String,
        /// `file:line` of the other.
        second: String,
    },

    /// A job finished in the FAILURE state while its result was awaited.
    #[error("job {id} failed: {message}")]
    JobFailed {
        /// The job id.
        id: String,
        /// The last attempt's error.
        message: String,
    },

    /// A job was revoked (never run, recorded REVOKED) while its result was awaited.
    #[error("job {id} was revoked ({reason}): it did not run")]
    JobRevoked {
        /// The job id.
        id: String,
        /// Why.
        reason: crate::revoke::RevokeReason,
    },

    /// A wait ran out of time before the job finished.
    #[error("job {id} did not finish within {timeout:?}")]
    Timeout {
        /// The job id.
        id: String,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// The record of the job has expired or was never written (results off for that task).
    #[error("job {0} has no stored result (expired, or the task ignores results)")]
    NoResult(String),

    /// No dead letter has that entry id (never, or replayed or purged since).
    #[error("no dead letter {0}")]
    NotDeadLettered(String),

    /// A dead letter that cannot be put back.
    #[error("dead letter {entry_id} cannot be replayed: {why}")]
    Replay {
        /// Its entry id.
        entry_id: String,
        /// Why not.
        why: String,
    },

    /// The broker refused to store something (a key of the wrong type, say); the rest of its
    /// batch was stored.
    #[error("could not store {what}: {reason}")]
    Store {
        /// What it was (`the record of job x`).
        what: String,
        /// The broker's reason.
        reason: String,
    },

    /// This worker no longer holds the job: its lease ran out and another worker took it over,
    /// so what this run writes is refused.
    #[error("this worker lost job {0} to another (its lease ran out)")]
    LeaseLost(String),

    /// The broker is shutting down or was closed.
    #[error("the broker is closed")]
    Closed,

    /// An I/O error outside Redis (signals, files).
    #[error("i/o failed")]
    Io(#[from] std::io::Error),

    /// A schedule's expression, interval, time zone, misfire policy or name is not valid.
    #[error("invalid schedule {value:?}: {reason}")]
    Schedule {
        /// The text that was given.
        value: String,
        /// What is wrong with it, and the expected form.
        reason: String,
    },
}

/// What Redis or the connection to it reported. Opaque, so that the redis crate is not part of
/// this crate's API: its text says what happened.
pub struct RedisError(redis::RedisError);

impl fmt::Debug for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for RedisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The text above is the redis error's own: its cause comes next, not itself again. The
        // redis crate writes some causes (I/O errors) into its own text too: those are not
        // repeated either.
        let cause = std::error::Error::source(&self.0)?;
        (!self.0.to_string().contains(&cause.to_string())).then_some(cause)
    }
}

impl Error {
    /// An [`Error::Config`]: `variable` holds `value`, which is not of the `expected` form.
    pub(crate) fn config(
        variable: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Error::Config {
            variable: variable.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }

    /// A failed Redis command; a missing consumer group gets its own variant, so that the
    /// worker recovers by type, not by reading the message.
    pub(crate) fn redis(err: redis::RedisError) -> Self {
        if err.code() == Some("NOGROUP") {
            return Error::GroupMissing(RedisError(err));
        }
        Error::Redis(RedisError(err))
    }

    /// Connecting to the Redis at `address` (already redacted) from `variable` failed.
    pub(crate) fn connect(variable: &'static str, address: String, err: redis::RedisError) -> Self {
        let advice = if err.kind() == redis::ErrorKind::AuthenticationFailed {
            "check the user and password in the URL"
        } else if err.is_connection_refusal() || err.is_timeout() || err.is_io_error() {
            "is Redis running there? start one with `redis-server`, or point the variable at yours"
        } else {
            "check the URL and the server"
        };
        Error::Connect {
            variable,
            address,
            advice,
            source: RedisError(err),
        }
    }

    pub(crate) fn schedule(value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Schedule {
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn encode(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Encode {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// A MessagePack decoding error, in words that quote none of the bytes: they may be a
    /// job's arguments or result.
    pub(crate) fn decode(what: impl Into<String>, source: &rmp_serde::decode::Error) -> Self {
        Error::Decode {
            what: what.into(),
            source: Box::new(DecodeCause(crate::redact::decode_error(source))),
        }
    }
}

/// Why bytes did not decode, with any value they held cut (see [`crate::redact`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DecodeCause(String);

/// An error and its causes on one line, `outer: cause: root`, for logs and stderr (`Display`
/// shows only the outer error, by the convention that sources are not repeated).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> redis::RedisError {
        redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[test]
    fn a_refused_connection_names_the_variable_the_address_and_what_to_do() {
        let err = Error::connect("REDIS_URL", "redis://127.0.0.1:6379".into(), refused());
        assert_eq!(
            chain(&err),
            "cannot connect to Redis at redis://127.0.0.1:6379 (from REDIS_URL; is Redis running \
             there? start one with `redis-server`, or point the variable at yours): connection \
             refused"
        );
    }
}
