//! The wire format of one job: a versioned MessagePack map (see `docs/protocol.md`).
//!
//! Pure: no IO here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::AttemptError;
use crate::unique::Release;
use crate::wire::wire_enum;

/// The envelope version this build writes; it reads every version up to this one.
pub(crate) const VERSION: u32 = 1;

/// A job's id: a UUIDv7 in its hyphenated text form, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        JobId(uuid::Uuid::now_v7().hyphenated().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Move the text out, leaving an empty id to be put back.
    pub(crate) fn take(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        JobId(id)
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        JobId(id.to_owned())
    }
}

/// One job as it travels through streams and the delayed set.
///
/// Fields are encoded by name, so fields can be added later: a new field must carry
/// `#[serde(default)]`, and readers ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) v: u32,
    pub(crate) id: JobId,
    pub(crate) task: String,
    pub(crate) queue: String,
    /// The positional arguments, a MessagePack array, kept encoded until the handler decodes it.
    #[serde(with = "serde_bytes")]
    pub(crate) args: Vec<u8>,
    /// Attempts made before this one.
    #[serde(default)]
    pub(crate) attempt: u32,
    /// Overrides the task's `retries` when set by the producer.
    #[serde(default)]
    pub(crate) retries: Option<u32>,
    pub(crate) created_ms: i64,
    #[serde(default)]
    pub(crate) eta_ms: Option<i64>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    /// Errors of earlier attempts, carried along so that any worker can write the full record.
    #[serde(default)]
    pub(crate) errors: Vec<AttemptError>,
    /// Errors of middle attempts dropped from `errors` to keep the envelope under the limit.
    #[serde(default)]
    pub(crate) errors_dropped: u32,
    /// When the job expires, in ms since the Unix epoch: a delivery that reaches a worker
    /// later is not run but recorded REVOKED (`expired`). Left out when there is none, so an
    /// envelope without it is what it was before expiry existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_ms: Option<i64>,
    /// The unique lock the job holds (`{ns:<queue>}:unique:<key>`), for the worker to release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_key: Option<String>,
    /// When the worker releases it: at the start or at the end of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_release: Option<Release>,
    /// The debounce key (`{ns:<queue>}:debounce:<key>`): the job runs only if it is still the last
    /// one enqueued with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) debounce_key: Option<String>,
}

impl Envelope {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(|err| Error::encode("job envelope", err))
    }

    /// Encode, shrinking the error history until the envelope is at most `limit` bytes: the
    /// middle attempts' errors go first (counted in `errors_dropped`), then the first's, then
    /// the latest message is cut. The arguments are never touched: an envelope whose arguments
    /// alone are over the limit is returned as it is.
    pub(crate) fn encode_within(&mut self, limit: usize) -> Result<Vec<u8>> {
        loop {
            let bytes = self.encode()?;
            let Some(excess) = bytes.len().checked_sub(limit).filter(|&excess| excess > 0) else {
                return Ok(bytes);
            };
            match self.errors.len() {
                0 => return Ok(bytes),
                1 => {
                    let last = &mut self.errors[0];
                    if last.message.is_empty() {
                        self.errors.clear();
                        self.errors_dropped += 1;
                    } else {
                        // The mark adds some bytes back: cut a little more than the excess.
                        let keep = last.message.len().saturating_sub(excess + 64);
                        last.message = crate::record::cap_message(&last.message, keep);
                        if keep == 0 {
                            last.message.clear();
                        }
                    }
                }
                2 => {
                    self.errors.remove(0);
                    self.errors_dropped += 1;
                }
                _ => {
                    self.errors.remove(1);
                    self.errors_dropped += 1;
                }
            }
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let envelope: Envelope =
            rmp_serde::from_slice(bytes).map_err(|err| Error::decode("job envelope", &err))?;
        if envelope.v > VERSION {
            return Err(Error::Decode {
                what: "job envelope".to_owned(),
                source: Box::new(UnsupportedVersion(envelope.v)),
            });
        }
        Ok(envelope)
    }
}

#[derive(Debug)]
struct UnsupportedVersion(u32);

impl fmt::Display for UnsupportedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "envelope version {} is newer than this worker understands ({VERSION})",
            self.0
        )
    }
}

impl std::error::Error for UnsupportedVersion {}

/// The prefix of the headers psw-tasks sets itself; producers may not set headers with it.
pub(crate) const RESERVED_HEADER_PREFIX: &str = "psw-";

wire_enum! {
    /// The headers psw-tasks sets on a job (documented in `docs/protocol.md`): a task can trust
    /// them, since no producer of this crate can set a header with the `psw-` prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum SystemHeader {
        /// The schedule that fired the job.
        Schedule => "psw-schedule",
        /// The slot the beat fired the job for, in ms since the Unix epoch.
        SlotMs => "psw-slot-ms",
        /// Whether the beat fired the slot more than its grace period late (`true`/`false`).
        Late => "psw-late",
        /// For a coalesced late run: the earliest slot it stands for, in ms.
        MissedFromMs => "psw-missed-from-ms",
        /// How often a job of a task unknown to its workers was put back (a deploy in progress).
        UnknownTaskTries => "psw-unknown-task-tries",
        /// How often the job found every slot of its concurrency limit taken, for the wait
        /// before it asks again.
        SlotWaits => "psw-slot-waits",
        /// The job came from a Celery message: its arguments are JSON `[args, kwargs]`,
        /// mapped onto the task's parameters when it runs.
        CeleryArgs => "psw-celery-args",
        /// The Celery caller wants a result record (`celery-task-meta-<id>`): `final` for
        /// the outcome, `started` for a `STARTED` record as well (`PSW_CELERY_TRACK_STARTED`).
        CeleryResult => "psw-celery-result",
        /// The Celery message the job was made from, as read off the queue: for its canvas
        /// (chain, callbacks, errbacks) when it ends, and kept in its dead letter for replay
        /// on Celery.
        CeleryMessage => "psw-celery-message",
        /// The Celery message carries a chain, callbacks or errbacks: its next steps are
        /// sent when it ends.
        CeleryCanvas => "psw-celery-canvas",
        /// The Celery message's time limit (`timelimit`), in ms: over the task's own.
        CeleryTimeLimitMs => "psw-celery-time-limit-ms",
        /// The Celery message is not run but dead-lettered, for this reason (a dead-letter
        /// reason's name): a chord or group, or a task no worker links.
        CeleryRefused => "psw-celery-refused",
        /// What the refusal says, for the dead letter.
        CeleryRefusedWhy => "psw-celery-refused-why",
    }
}

impl SystemHeader {
    /// Whether a replayed dead letter starts this header afresh: counters of what happened to
    /// the job start over, what the job stands for (its schedule and slot) stays.
    pub(crate) fn resets_on_replay(self) -> bool {
        matches!(
            self,
            SystemHeader::UnknownTaskTries
                | SystemHeader::SlotWaits
                | SystemHeader::CeleryRefused
                | SystemHeader::CeleryRefusedWhy
        )
    }
}

impl Envelope {
    /// The envelope as JSON, the arguments decoded from MessagePack: what the dashboard shows
    /// and exports of a job (its letter, or where it waits).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let args: serde_json::Value = rmp_serde::from_slice(&self.args)
            .unwrap_or_else(|_| serde_json::Value::String("(arguments not readable)".to_owned()));
        serde_json::json!({
            "id": self.id.as_str(),
            "task": self.task,
            "queue": self.queue,
            "args": args,
            "attempt": self.attempt,
            "retries": self.retries,
            "created_ms": self.created_ms,
            "eta_ms": self.eta_ms,
            "expires_ms": self.expires_ms,
            "headers": self.headers,
        })
    }

    /// The unique lock a worker releases when this job ends: (key, job id).
    pub(crate) fn lock_released_at_end(&self) -> Option<(String, JobId)> {
        match (&self.unique_key, self.unique_release) {
            (Some(key), Some(Release::Finished)) => Some((key.clone(), self.id.clone())),
            _ => None,
        }
    }

    /// The unique lock this job holds until a worker releases it, at its start or its end
    /// (a `for` lock only expires): (key, job id).
    pub(crate) fn releasable_lock(&self) -> Option<(String, JobId)> {
        match (&self.unique_key, self.unique_release) {
            (Some(key), Some(Release::Started | Release::Finished)) => {
                Some((key.clone(), self.id.clone()))
            }
            _ => None,
        }
    }

    /// The unique lock a worker releases when it starts this job: (key, job id).
    pub(crate) fn lock_released_at_start(&self) -> Option<(&str, &JobId)> {
        match (&self.unique_key, self.unique_release) {
            (Some(key), Some(Release::Started)) => Some((key.as_str(), &self.id)),
            _ => None,
        }
    }

    /// The value of a system header.
    pub(crate) fn header(&self, header: SystemHeader) -> Option<&str> {
        self.headers.get(header.as_str()).map(String::as_str)
    }

    /// Set a system header.
    pub(crate) fn set_header(&mut self, header: SystemHeader, value: String) {
        self.headers.insert(header.as_str().to_owned(), value);
    }
}

/// Milliseconds since the Unix epoch, the time unit of every timestamp on the wire.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time as ms since the Unix epoch (0 for a time before it).
pub(crate) fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Arguments of a task that takes none: encoded as an empty array like every other argument
/// list, and decoded from an empty array or nil.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoArgs;

impl Serialize for NoArgs {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        serializer.serialize_tuple(0)?.end()
    }
}

impl<'de> Deserialize<'de> for NoArgs {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoArgs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty argument list")
            }
            fn visit_unit<E>(self) -> std::result::Result<NoArgs, E> {
                Ok(NoArgs)
            }
            fn visit_none<E>(self) -> std::result::Result<NoArgs, E> {
                Ok(NoArgs)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<NoArgs, A::Error> {
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(1, &self));
                }
                Ok(NoArgs)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            v: VERSION,
            id: JobId::generate(),
            task: "reports.daily".into(),
            queue: "default".into(),
            args: rmp_serde::to_vec_named(&("AAPL", 3)).unwrap(),
            attempt: 1,
            retries: Some(5),
            created_ms: 1_700_000_000_000,
            eta_ms: Some(1_700_000_010_000),
            headers: BTreeMap::from([("trace".into(), "abc".into())]),
            errors: vec![],
            errors_dropped: 0,
            expires_ms: None,
            unique_key: None,
            unique_release: None,
            debounce_key: None,
        }
    }

    #[test]
    fn round_trips() {
        let envelope = sample();
        assert_eq!(
            Envelope::decode(&envelope.encode().unwrap()).unwrap(),
            envelope
        );
    }

    #[test]
    fn reads_a_minimal_map_from_another_producer() {
        #[derive(Serialize)]
        struct Minimal<'a> {
            v: u32,
            id: &'a str,
            task: &'a str,
            queue: &'a str,
            #[serde(with = "serde_bytes")]
            args: &'a [u8],
            created_ms: i64,
            unknown_future_field: bool,
        }
        let args = rmp_serde::to_vec(&["x"]).unwrap();
        let bytes = rmp_serde::to_vec_named(&Minimal {
            v: 1,
            id: "0190-test",
            task: "t",
            queue: "q",
            args: &args,
            created_ms: 5,
            unknown_future_field: true,
        })
        .unwrap();
        let envelope = Envelope::decode(&bytes).unwrap();
        assert_eq!(envelope.task, "t");
        assert_eq!(envelope.attempt, 0);
        assert_eq!(envelope.retries, None);
        assert!(envelope.headers.is_empty());
    }

    #[test]
    fn rejects_newer_versions_and_garbage() {
        let mut envelope = sample();
        envelope.v = VERSION + 1;
        let err = Envelope::decode(&envelope.encode().unwrap()).unwrap_err();
        assert!(err.to_string().contains("decode job envelope"), "{err}");
        assert!(Envelope::decode(b"\xc1garbage").is_err());
        assert!(Envelope::decode(&[]).is_err());
    }

    #[test]
    fn a_history_shrinks_to_fit_from_the_middle_and_never_touches_the_arguments() {
        let mut envelope = sample();
        envelope.args = vec![0x91; 1000];
        envelope.errors = (0..10)
            .map(|attempt| AttemptError {
                attempt,
                kind: crate::record::FailureKind::Error,
                message: format!("attempt {attempt}: {}", "x".repeat(500)),
                at_ms: 1,
            })
            .collect();
        let full = envelope.encode().unwrap().len();
        let bytes = envelope.clone().encode_within(full).unwrap();
        assert_eq!(bytes.len(), full, "what fits is left whole");
        let bytes = envelope.encode_within(2_800).unwrap();
        assert!(bytes.len() <= 2_800, "{}", bytes.len());
        let attempts: Vec<u32> = envelope.errors.iter().map(|e| e.attempt).collect();
        assert_eq!(attempts, [0, 9], "the first and the latest stay");
        assert_eq!(envelope.errors_dropped, 8);
        assert_eq!(envelope.args, vec![0x91; 1000]);
        // Tighter still: the first goes, then the latest's message is cut.
        envelope.encode_within(1_400).unwrap();
        assert_eq!(envelope.errors.len(), 1);
        assert_eq!(envelope.errors[0].attempt, 9);
        assert!(envelope.errors[0].message.ends_with("more bytes]"));
        assert_eq!(envelope.errors_dropped, 9);
        assert!(envelope.encode().unwrap().len() <= 1_400);
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert!(a < b, "{a} !< {b}");
    }

    #[test]
    fn no_args_reads_empty_array_and_nil_only() {
        let empty = rmp_serde::to_vec(&NoArgs).unwrap();
        assert_eq!(empty, vec![0x90]);
        rmp_serde::from_slice::<NoArgs>(&[0x90]).unwrap();
        rmp_serde::from_slice::<NoArgs>(&[0xc0]).unwrap();
        assert!(rmp_serde::from_slice::<NoArgs>(&[0x91, 0x01]).is_err());
    }
}
