//! Dead letters as the seam carries them: one to store ([`DeadLetter`]), one read back
//! ([`DeadJob`]), why it is there ([`DeadReason`]), the queue's size ([`DeadLetterStats`]), and
//! the failure groups letters fall into ([`FailureGroup`]): same task, same reason, same error
//! once the numbers, ids and quoted values that differ from job to job are masked.

use sha2::{Digest, Sha256};

use crate::envelope::JobId;
use crate::record::{AttemptError, FailureKind};
use crate::retry::Retry;
use crate::wire::{wire_enum, wire_serde};

wire_enum! {
    /// Why a job is in the dead-letter queue.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum DeadReason {
        /// It failed on every attempt its retries allowed.
        RetriesExhausted => "retries_exhausted",
        /// It failed with an error that is never retried ([`crate::TaskError::permanent`]).
        PermanentError => "permanent_error",
        /// Its last attempt ran past the task's time limit.
        TimedOut => "timed_out",
        /// Its arguments do not decode into the task's parameters.
        BadArgs => "bad_args",
        /// Its entry is not a job envelope this version can read.
        DecodeError => "decode_error",
        /// The envelope of its next attempt could not be encoded.
        EncodeError => "encode_error",
        /// No worker of its queue knows its task, after several looks.
        UnknownTask => "unknown_task",
        /// It was delivered too often without finishing: it ended its worker each time.
        Poisoned => "poisoned",
        /// Its entry is over the size limit.
        Oversized => "oversized",
        /// Its result is over the size limit (`PSW_MAX_RESULT_SIZE`).
        OversizedResult => "oversized_result",
        /// Its outcome could not be stored: the broker refused the write.
        StoreFailed => "store_failed",
        /// A Celery message that is part of a canvas psw-tasks does not run yet: a chord or
        /// a group.
        UnsupportedCanvas => "unsupported_canvas",
        /// A reason this version does not know, written by a newer one.
        Unknown => "unknown",
    }
}

wire_serde!(DeadReason, Unknown);

impl DeadReason {
    /// The reason of a job that failed for good with an error of `kind`.
    pub(crate) fn after_failure(kind: FailureKind, retry: Retry) -> DeadReason {
        match (kind, retry) {
            (FailureKind::BadArgs, _) => DeadReason::BadArgs,
            (FailureKind::Timeout, _) => DeadReason::TimedOut,
            (FailureKind::OversizedResult, _) => DeadReason::OversizedResult,
            (FailureKind::StoreFailed, _) => DeadReason::StoreFailed,
            (_, Retry::Never) => DeadReason::PermanentError,
            _ => DeadReason::RetriesExhausted,
        }
    }
}

/// A delivery that could not be run or failed for good, to be stored with its raw bytes.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) job_id: Option<JobId>,
    pub(crate) task: Option<String>,
    pub(crate) reason: DeadReason,
    pub(crate) error: String,
    /// Every attempt's error (empty when none ran).
    pub(crate) errors: Vec<AttemptError>,
    /// The entry's bytes, cut at the cap; `truncated` says whether they were.
    pub(crate) payload: Vec<u8>,
    pub(crate) truncated: bool,
    /// When it was dead-lettered, in ms since the Unix epoch.
    pub(crate) at_ms: i64,
}

impl DeadLetter {
    /// Bytes of its ids and names, as the fields besides the payload and error carry them.
    pub(crate) fn queue_and_ids_len(&self) -> usize {
        self.job_id.as_ref().map_or(0, |id| id.as_str().len())
            + self.task.as_ref().map_or(0, String::len)
            + self
                .errors
                .iter()
                .map(|error| error.message.len() + 32)
                .sum::<usize>()
            + 128
    }

    /// Its failure group's id.
    pub(crate) fn group(&self) -> String {
        group_id(self.task.as_deref(), self.reason, &self.error)
    }

    /// The dead letter as it reads back once stored under `entry_id`, from `queue`.
    pub(crate) fn stored(&self, queue: &str, entry_id: String, bytes: u64) -> DeadJob {
        DeadJob {
            entry_id,
            job_id: self.job_id.as_ref().map(|id| id.to_string()),
            task: self.task.clone(),
            queue: queue.to_owned(),
            reason: self.reason,
            error: self.error.clone(),
            errors: self.errors.clone(),
            at_ms: self.at_ms,
            payload_size: self.payload.len(),
            truncated: self.truncated,
            bytes,
            group: self.group(),
            payload: self.payload.clone(),
        }
    }
}

/// How much the dead-letter queue may hold before its oldest letters are trimmed (and
/// counted): a number of letters (`PSW_DLQ_MAX_LEN`) and a number of bytes
/// (`PSW_DLQ_MAX_BYTES`), whichever is reached first. The newest letter always stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadLetterLimits {
    pub(crate) max_len: u64,
    pub(crate) max_bytes: u64,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits {
            max_len: crate::config::DEFAULT_DEAD_LETTER_CAP,
            max_bytes: crate::config::DEFAULT_DEAD_LETTER_BYTES,
        }
    }
}

/// What a dead letter of `field_bytes` bytes of fields takes in Redis's memory: the entry and
/// its node, rounded up as the allocator (jemalloc) rounds a block of that size, four size
/// classes per doubling. Counted so, the stream's `MEMORY USAGE` stays under the budget.
pub(crate) fn footprint(field_bytes: usize) -> u64 {
    const NODE: u64 = 96;
    let bytes = field_bytes as u64 + NODE;
    if bytes <= 4096 {
        return bytes.next_multiple_of(16);
    }
    let class = (bytes - 1).ilog2();
    let step = (1u64 << class) / 4;
    bytes.next_multiple_of(step)
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadJob {
    /// Its id in the dead-letter stream (what `dlq show` and `dlq replay` take).
    pub entry_id: String,
    /// The job id, when the entry could be decoded.
    pub job_id: Option<String>,
    /// The task name, when the entry could be decoded.
    pub task: Option<String>,
    /// The queue it came from.
    pub queue: String,
    /// Why it is here.
    pub reason: DeadReason,
    /// The last error, in words.
    pub error: String,
    /// Every attempt's error, oldest first (empty when the job never ran).
    pub errors: Vec<AttemptError>,
    /// When it was dead-lettered, in ms since the Unix epoch.
    pub at_ms: i64,
    /// Size of the stored bytes.
    pub payload_size: usize,
    /// Whether the bytes were cut at the cap (such a job cannot be replayed).
    pub truncated: bool,
    /// What it takes against the queue's byte budget (`PSW_DLQ_MAX_BYTES`).
    pub bytes: u64,
    /// Its failure group's id ([`FailureGroup::id`]).
    pub group: String,
    pub(crate) payload: Vec<u8>,
}

impl DeadJob {
    /// The letter as JSON, without its bytes (what `dlq show` prints and the dashboard
    /// serves).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "entry_id": self.entry_id,
            "job_id": self.job_id,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason.as_str(),
            "error": self.error,
            "errors": self.errors,
            "at_ms": self.at_ms,
            "payload_size": self.payload_size,
            "truncated": self.truncated,
            "group": self.group,
        })
    }
}

impl DeadJob {
    /// Its envelope as JSON, the arguments decoded from MessagePack: what the dashboard shows
    /// and exports. `None` when the bytes are cut or not an envelope.
    pub fn envelope_json(&self) -> Option<serde_json::Value> {
        if self.truncated {
            return None;
        }
        crate::envelope::Envelope::decode(&self.payload)
            .ok()
            .map(|envelope| envelope.to_json())
    }

    /// The Celery message the job was made from, as it was read off its Celery queue: to
    /// `LPUSH` back there for the Celery workers (`docs/celery.md`). `None` for a job of ours.
    pub fn celery_message(&self) -> Option<String> {
        let envelope = crate::envelope::Envelope::decode(&self.payload).ok()?;
        envelope
            .header(crate::envelope::SystemHeader::CeleryMessage)
            .map(str::to_owned)
    }
}

/// The longest normalized message a group keeps: past it, messages count as one.
const GROUP_MESSAGE_MAX: usize = 240;

/// An error message with what differs from job to job masked, so that failures of one cause
/// fall into one group: runs of digits become `<n>`, hex ids (eight or more hex digits, or a
/// UUID) `<id>`, text in quotes `"<s>"`; white space is collapsed.
pub(crate) fn normalize_error(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(GROUP_MESSAGE_MAX));
    let chars: Vec<char> = message.chars().collect();
    let mut i = 0;
    let mut space = false;
    while i < chars.len() && out.len() < GROUP_MESSAGE_MAX {
        let c = chars[i];
        if c.is_whitespace() {
            space = !out.is_empty();
            i += 1;
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        if (c == '"' || c == '\'')
            && let Some(len) = chars[i + 1..].iter().position(|&q| q == c)
        {
            out.push_str("\"<s>\"");
            i += len + 2;
            continue;
        }
        if c.is_ascii_hexdigit() || c == '-' {
            // A token of hex digits and dashes: an id if long enough and not a plain word.
            let len = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit() || **c == '-')
                .count();
            let token = &chars[i..i + len];
            let digits = token.iter().filter(|c| c.is_ascii_hexdigit()).count();
            let at_word_start = i == 0 || !chars[i - 1].is_alphanumeric();
            let ends_word = chars.get(i + len).is_none_or(|c| !c.is_alphanumeric());
            if at_word_start && ends_word && digits >= 8 && token.iter().any(char::is_ascii_digit) {
                out.push_str("<id>");
                i += len;
                continue;
            }
        }
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push_str("<n>");
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The id of the failure group of a letter of `task` dead for `reason` with `error`: the first
/// 16 hex digits of the SHA-256 of the three, the error normalized.
pub(crate) fn group_id(task: Option<&str>, reason: DeadReason, error: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(task.unwrap_or_default().as_bytes());
    digest.update([0]);
    digest.update(reason.as_str().as_bytes());
    digest.update([0]);
    digest.update(normalize_error(error).as_bytes());
    digest.finalize()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Dead letters of one cause: one task, one reason, one normalized error message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureGroup {
    /// Its id: what [`crate::DeadLetters::replay_group`] and the dashboard take.
    pub id: String,
    /// The task, when the letters could be decoded.
    pub task: Option<String>,
    /// Why its letters are dead.
    pub reason: DeadReason,
    /// The error message with what differs from letter to letter masked.
    pub error: String,
    /// The newest letter's error as it was.
    pub sample_error: String,
    /// How many letters it holds.
    pub count: u64,
    /// When its first letter came (ms since the Unix epoch; a letter since removed counts).
    pub first_ms: i64,
    /// When its newest letter came.
    pub last_ms: i64,
    /// The newest letter's entry id (gone if that letter was replayed or purged since).
    pub sample_entry_id: Option<String>,
}

impl FailureGroup {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        task: Option<String>,
        reason: DeadReason,
        sample_error: String,
        count: u64,
        first_ms: i64,
        last_ms: i64,
        sample_entry_id: Option<String>,
    ) -> FailureGroup {
        FailureGroup {
            id,
            task: task.filter(|task| !task.is_empty()),
            reason,
            error: normalize_error(&sample_error),
            sample_error,
            count,
            first_ms,
            last_ms,
            sample_entry_id,
        }
    }

    /// The biggest groups first, then the most recent.
    pub(crate) fn sort(groups: &mut [FailureGroup]) {
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.last_ms.cmp(&a.last_ms))
                .then(a.id.cmp(&b.id))
        });
    }

    /// The group as JSON (what the dashboard serves).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "task": self.task,
            "reason": self.reason.as_str(),
            "error": self.error,
            "sample_error": self.sample_error,
            "count": self.count,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "sample_entry_id": self.sample_entry_id,
        })
    }
}

/// Size of the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterStats {
    /// Dead letters stored now.
    pub len: u64,
    /// Dead letters removed, since the namespace began, to keep under the cap
    /// (`PSW_DLQ_MAX_LEN`).
    pub trimmed: u64,
    /// Dead letters ever added since the queue was created or last purged whole: a count that
    /// replays and retention do not lower, for watching its growth (Redis 7.0's `entries-added`
    /// of the stream; on older Redis, `len + trimmed`).
    pub added: u64,
    /// What the dead letters stored now take against the byte budget (`PSW_DLQ_MAX_BYTES`).
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: FailureKind, retry: Retry, expected: DeadReason) {
        assert_eq!(
            DeadReason::after_failure(kind, retry),
            expected,
            "{kind} {retry:?}"
        );
    }

    #[test]
    fn a_failure_for_good_is_filed_under_its_cause() {
        check(FailureKind::BadArgs, Retry::Never, DeadReason::BadArgs);
        check(FailureKind::Timeout, Retry::Allowed, DeadReason::TimedOut);
        check(
            FailureKind::Permanent,
            Retry::Never,
            DeadReason::PermanentError,
        );
        check(
            FailureKind::Error,
            Retry::Allowed,
            DeadReason::RetriesExhausted,
        );
        check(
            FailureKind::Panic,
            Retry::Allowed,
            DeadReason::RetriesExhausted,
        );
    }

    #[test]
    fn footprints_round_up_as_the_allocator_does() {
        assert_eq!(footprint(0), 96);
        assert_eq!(footprint(1000), 1104);
        // 600 KiB lands in jemalloc's 640 KiB class.
        assert_eq!(footprint(600 * 1024), 640 * 1024);
        assert_eq!(footprint(640 * 1024 - 96), 640 * 1024);
        assert_eq!(footprint(640 * 1024), 768 * 1024);
    }

    #[test]
    fn errors_that_differ_by_ids_numbers_and_quoted_values_fall_into_one_group() {
        assert_eq!(
            normalize_error(
                "timeout after 30.5 s fetching 'AAPL' for job 3f2a9c1e-77aa-4b1c-9e0f-0123456789ab"
            ),
            "timeout after <n> s fetching \"<s>\" for job <id>"
        );
        assert_eq!(normalize_error("  a \n\t b  "), "a b");
        // Plain words that happen to be hex stay.
        assert_eq!(normalize_error("deadbeef decade"), "deadbeef decade");
        assert_eq!(normalize_error("row 17 of 200"), "row <n> of <n>");
        let one = group_id(Some("t"), DeadReason::RetriesExhausted, "row 17 failed");
        assert_eq!(
            one,
            group_id(Some("t"), DeadReason::RetriesExhausted, "row 9 failed")
        );
        assert_eq!(one.len(), 16);
        assert_ne!(
            one,
            group_id(Some("u"), DeadReason::RetriesExhausted, "row 9 failed")
        );
        assert_ne!(
            one,
            group_id(Some("t"), DeadReason::TimedOut, "row 9 failed")
        );
        assert_ne!(
            one,
            group_id(Some("t"), DeadReason::RetriesExhausted, "column 9 failed")
        );
        let long = "x".repeat(10_000);
        assert!(normalize_error(&long).len() <= GROUP_MESSAGE_MAX);
    }

    #[test]
    fn reasons_travel_as_their_words() {
        assert_eq!(DeadReason::EncodeError.as_str(), "encode_error");
        assert_eq!(
            DeadReason::from_wire("timed_out"),
            Some(DeadReason::TimedOut)
        );
        assert_eq!(DeadReason::from_wire("from_the_future"), None);
        assert_eq!(DeadReason::Poisoned, "poisoned");
    }
}
