//! The crate's one public error type and its `Result` alias.

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
    Redis(#[source] redis::RedisError),

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

    /// Arguments or a result could not be encoded or decoded.
    #[error("could not {action} {what}")]
    Codec {
        /// `encode` or `decode`.
        action: &'static str,
        /// What was being handled (`arguments of task x`, `job record`, ...).
        what: String,
        /// The serializer's message.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// No task of that name is registered in this process.
    #[error("no task named `{0}` is registered in this binary")]
    UnknownTask(String),

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

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        Error::Redis(err)
    }
}

impl Error {
    /// An [`Error::Config`]: `variable` holds `value`, which is not of the `expected` form.
    pub fn config(
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
        Error::Codec {
            action: "encode",
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn decode(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Codec {
            action: "decode",
            what: what.into(),
            source: Box::new(source),
        }
    }
}

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
