//! Job records: states, results, progress and attempt errors, as stored with a TTL. Pure: no IO
//! here (the broker stores the encoded bytes).
//!
//! The record is one MessagePack map per job, written whole by the worker that owns the job at
//! each state change, so readers never see a half-updated record and no write needs a read.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::revoke::RevokeReason;
use crate::wire::{wire_enum, wire_serde};

/// A job's state, as in Celery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Unknown to the backend: queued, delayed, or never seen.
    Pending,
    /// A worker has started it.
    Started,
    /// The task reported progress.
    Progress,
    /// An attempt failed; another is scheduled.
    Retry,
    /// Finished with a result.
    Success,
    /// Failed for good.
    Failure,
    /// Never run, and never will be: `JobRecord::revoked` says why (an expiry that passed
    /// before a worker started it, a later job of its debounce key).
    Revoked,
}

impl State {
    /// Whether the job will not change state again.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// The upper-case name used on the wire and by Celery.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Started => "STARTED",
            State::Progress => "PROGRESS",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress reported by a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub current: u64,
    /// Units in all.
    pub total: u64,
    /// Anything else the task attached.
    #[serde(default)]
    pub meta: Option<serde_json::Value>,
}

wire_enum! {
    /// What kind of failure ended an attempt, as stored in the record.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum FailureKind {
        /// The task returned an error that may be retried (any `std::error::Error` through `?`).
        Error => "error",
        /// The task returned [`crate::TaskError::permanent`]: never retried.
        Permanent => "permanent",
        /// The task panicked.
        Panic => "panic",
        /// The attempt ran past the task's `timeout`.
        Timeout => "timeout",
        /// The arguments did not decode into the task's parameters.
        BadArgs => "bad_args",
        /// The result is over the size limit (`PSW_MAX_RESULT_SIZE`): it is not stored.
        OversizedResult => "oversized_result",
        /// The outcome could not be stored (the broker refused it): the job failed for good.
        StoreFailed => "store_failed",
        /// A kind this version does not know, written by a newer one.
        Unknown => "unknown",
    }
}

wire_serde!(FailureKind, Unknown);

/// Longest error message kept for one attempt: a whole cause chain or a stack dump is cut here,
/// marked, so that the history a retry carries stays small.
pub(crate) const MAX_ERROR_MESSAGE: usize = 8 * 1024;

/// `message` cut to at most `max` bytes (at a character boundary), with the cut marked.
pub(crate) fn cap_message(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let mark = |cut: usize| format!(" [cut: {cut} more bytes]");
    let keep = max.saturating_sub(mark(message.len()).len());
    let mut end = keep.min(message.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{}", &message[..end], mark(message.len() - end))
}

/// The error of one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Which attempt, from 0.
    pub attempt: u32,
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The error's message.
    pub message: String,
    /// When the attempt failed, in ms since the Unix epoch.
    pub at_ms: i64,
}

/// Everything stored about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// The task's wire name.
    pub task: String,
    /// The state.
    pub state: State,
    /// The current or last attempt, from 0.
    pub attempt: u32,
    /// The MessagePack-encoded result, once the state is SUCCESS.
    #[serde(default, with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    /// The failed attempts' errors, oldest first: every one, or (for a job whose history had to
    /// shrink to fit the size limit) the first and the latest, `errors_dropped` fewer.
    #[serde(default)]
    pub errors: Vec<AttemptError>,
    /// Errors of middle attempts dropped from `errors` to keep the job under the size limit.
    #[serde(default)]
    pub errors_dropped: u32,
    /// The last progress report.
    #[serde(default)]
    pub progress: Option<Progress>,
    /// When the job was enqueued.
    pub created_ms: i64,
    /// When the current attempt started.
    #[serde(default)]
    pub started_ms: Option<i64>,
    /// When the job reached SUCCESS, FAILURE or REVOKED.
    #[serde(default)]
    pub finished_ms: Option<i64>,
    /// When the next attempt is due, in the RETRY state.
    #[serde(default)]
    pub retry_at_ms: Option<i64>,
    /// Why the job was revoked, in the REVOKED state. Left out of the record otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<RevokeReason>,
}

impl JobRecord {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(|err| Error::encode("job record", err))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        rmp_serde::from_slice(bytes).map_err(|err| Error::decode("job record", &err))
    }

    /// Decode the stored result into the task's output type.
    pub fn result_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.result
            .as_deref()
            .map(|bytes| {
                rmp_serde::from_slice(bytes)
                    .map_err(|err| Error::decode(format!("result of job {}", self.id), &err))
            })
            .transpose()
    }

    /// The result as JSON, for tools that do not know the task's types.
    pub fn result_json(&self) -> Result<Option<serde_json::Value>> {
        self.result_as::<serde_json::Value>()
    }

    /// The last attempt's error message, if any attempt failed.
    pub fn last_error(&self) -> Option<&str> {
        self.errors.last().map(|e| e.message.as_str())
    }

    /// The record as JSON, its result decoded from MessagePack (what `result` prints and the
    /// dashboard serves).
    pub fn to_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "id": self.id,
            "task": self.task,
            "state": self.state.as_str(),
            "attempt": self.attempt,
            "result": self.result_json()?,
            "errors": self.errors,
            "errors_dropped": self.errors_dropped,
            "progress": self.progress,
            "created_ms": self.created_ms,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "retry_at_ms": self.retry_at_ms,
            "revoked": self.revoked.map(|reason| reason.as_str()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_decodes_result() {
        let record = JobRecord {
            id: "id".into(),
            task: "t".into(),
            state: State::Success,
            attempt: 1,
            result: Some(rmp_serde::to_vec_named(&vec![1u32, 2]).unwrap()),
            errors: vec![AttemptError {
                attempt: 0,
                kind: FailureKind::Error,
                message: "boom".into(),
                at_ms: 3,
            }],
            errors_dropped: 0,
            progress: Some(Progress {
                current: 1,
                total: 2,
                meta: Some(serde_json::json!({"symbol": "AAPL"})),
            }),
            created_ms: 1,
            started_ms: Some(2),
            finished_ms: Some(4),
            retry_at_ms: None,
            revoked: None,
        };
        let decoded = JobRecord::decode(&record.encode().unwrap()).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.result_as::<Vec<u32>>().unwrap(), Some(vec![1, 2]));
        assert_eq!(
            decoded.result_json().unwrap(),
            Some(serde_json::json!([1, 2]))
        );
        assert_eq!(decoded.last_error(), Some("boom"));
    }

    #[test]
    fn failure_kinds_travel_as_their_words_and_unknown_ones_are_kept_readable() {
        for kind in [
            FailureKind::Error,
            FailureKind::Permanent,
            FailureKind::Panic,
            FailureKind::Timeout,
            FailureKind::BadArgs,
        ] {
            let bytes = rmp_serde::to_vec_named(&kind).unwrap();
            assert_eq!(
                rmp_serde::from_slice::<String>(&bytes).unwrap(),
                kind.as_str()
            );
            assert_eq!(rmp_serde::from_slice::<FailureKind>(&bytes).unwrap(), kind);
        }
        assert_eq!(FailureKind::BadArgs, "bad_args");
        let newer = rmp_serde::to_vec_named("cancelled").unwrap();
        assert_eq!(
            rmp_serde::from_slice::<FailureKind>(&newer).unwrap(),
            FailureKind::Unknown
        );
    }

    #[test]
    fn long_messages_are_cut_where_it_is_marked() {
        assert_eq!(cap_message("short", 100), "short");
        let long = "é".repeat(10_000);
        let cut = cap_message(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with("more bytes]"), "{cut}");
        assert!(cut.starts_with("éé"), "cut at a character boundary");
    }

    #[test]
    fn states_spell_like_celery() {
        let bytes = rmp_serde::to_vec_named(&State::Progress).unwrap();
        assert_eq!(rmp_serde::from_slice::<String>(&bytes).unwrap(), "PROGRESS");
        assert!(State::Failure.is_terminal());
        assert!(!State::Retry.is_terminal());
    }
}
