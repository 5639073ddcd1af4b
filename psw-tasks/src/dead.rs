//! The dead-letter queue: jobs that could not run, or failed for good, kept with their reason,
//! every attempt's error and their bytes, to be read, replayed or purged.

use std::future::Future;
use std::sync::Arc;

use crate::backend::AttemptError;
use crate::broker::BoxFuture;
use crate::broker::keys::JOB_FIELD;
use crate::envelope::{Envelope, JobId, now_ms};
use crate::{Client, Error, Result};

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
    /// Why: `retries_exhausted`, `permanent_error`, `timed_out`, `bad_args`, `decode_error`,
    /// `unknown_task`, `poisoned` or `oversized`.
    pub reason: String,
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
    payload: Vec<u8>,
}

impl DeadJob {
    pub(crate) fn from_fields(entry_id: String, fields: Vec<(String, Vec<u8>)>) -> Self {
        let mut job = DeadJob {
            entry_id,
            job_id: None,
            task: None,
            queue: String::new(),
            reason: String::new(),
            error: String::new(),
            errors: Vec::new(),
            at_ms: 0,
            payload_size: 0,
            truncated: false,
            payload: Vec::new(),
        };
        for (name, value) in fields {
            let text = || String::from_utf8_lossy(&value).into_owned();
            match name.as_str() {
                "id" => job.job_id = Some(text()),
                "task" => job.task = Some(text()),
                "queue" => job.queue = text(),
                "reason" => job.reason = text(),
                "error" => job.error = text(),
                "errors" => job.errors = rmp_serde::from_slice(&value).unwrap_or_default(),
                "at_ms" => job.at_ms = text().parse().unwrap_or(0),
                "truncated" => job.truncated = value == b"1",
                JOB_FIELD => {
                    job.payload_size = value.len();
                    job.payload = value;
                }
                _ => {}
            }
        }
        job
    }

    pub(crate) fn from_letter(
        letter: &crate::broker::DeadLetter,
        queue: &str,
        entry_id: String,
    ) -> Self {
        let fields = crate::broker::dead_fields(letter, queue, "")
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        DeadJob::from_fields(entry_id, fields)
    }
}

/// What runs when a job is dead-lettered, after the dead letter is stored.
#[derive(Clone)]
pub(crate) struct DeadHook(Arc<dyn Fn(DeadJob) -> BoxFuture<'static, ()> + Send + Sync>);

impl DeadHook {
    pub(crate) fn call(&self, job: DeadJob) -> BoxFuture<'static, ()> {
        (self.0)(job)
    }
}

impl std::fmt::Debug for DeadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadHook")
    }
}

pub(crate) fn hook<F, Fut>(f: F) -> DeadHook
where
    F: Fn(DeadJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    DeadHook(Arc::new(move |job| Box::pin(f(job))))
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
}

/// The dead-letter queue of a namespace, from [`Client::dead_letters`].
#[derive(Debug, Clone)]
pub struct DeadLetters {
    client: Client,
}

impl Client {
    /// The namespace's dead-letter queue.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            client: self.clone(),
        }
    }
}

impl DeadLetters {
    /// Up to `limit` dead letters, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadJob>> {
        let entries = self.client.broker().dead_range("-", limit).await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| DeadJob::from_fields(id, fields))
            .collect())
    }

    /// One dead letter by its entry id.
    pub async fn get(&self, entry_id: &str) -> Result<Option<DeadJob>> {
        let entries = self.client.broker().dead_range(entry_id, 1).await?;
        Ok(entries
            .into_iter()
            .find(|(id, _)| id == entry_id)
            .map(|(id, fields)| DeadJob::from_fields(id, fields)))
    }

    /// How many there are, and how many the cap has removed.
    pub async fn stats(&self) -> Result<DeadLetterStats> {
        self.client.broker().dead_stats().await
    }

    /// Put one dead job back on its queue as a fresh job (attempt 0, its error history kept),
    /// and remove the dead letter, atomically. Returns the job id.
    pub async fn replay(&self, entry_id: &str) -> Result<JobId> {
        let job = self
            .get(entry_id)
            .await?
            .ok_or_else(|| Error::NotDeadLettered(entry_id.to_owned()))?;
        self.replay_job(&job).await
    }

    async fn replay_job(&self, job: &DeadJob) -> Result<JobId> {
        let refuse = |why: &str| Error::Replay {
            entry_id: job.entry_id.clone(),
            why: why.to_owned(),
        };
        if job.truncated {
            return Err(refuse("its bytes were cut at the dead-letter cap"));
        }
        let mut envelope = Envelope::decode(&job.payload)
            .map_err(|_| refuse("its bytes are not a job envelope"))?;
        envelope.attempt = 0;
        envelope.eta_ms = None;
        // The history stays with the job: its record will show the runs before the replay.
        envelope.errors = job.errors.clone();
        envelope.created_ms = now_ms();
        envelope.headers.retain(|name, _| !name.starts_with("psw-"));
        // Back to the queue it was read from (the envelope's own field may name another).
        envelope.queue = job.queue.clone();
        let payload = envelope.encode()?;
        let replayed = self
            .client
            .broker()
            .dead_replay(
                &job.entry_id,
                &envelope.queue,
                envelope.id.as_str(),
                payload,
            )
            .await?;
        if !replayed {
            return Err(Error::NotDeadLettered(job.entry_id.clone()));
        }
        Ok(envelope.id)
    }

    /// Replay every dead job (of one task, if given) that can be replayed; returns how many.
    pub async fn replay_all(&self, task: Option<&str>) -> Result<usize> {
        let mut replayed = 0;
        let mut start = "-".to_owned();
        loop {
            let batch = self.client.broker().dead_range(&start, 500).await?;
            let Some((last, _)) = batch.last() else {
                return Ok(replayed);
            };
            start = format!("({last}");
            for (id, fields) in batch {
                let job = DeadJob::from_fields(id, fields);
                if task.is_some_and(|task| job.task.as_deref() != Some(task)) {
                    continue;
                }
                match self.replay_job(&job).await {
                    Ok(_) => replayed += 1,
                    Err(err) => {
                        tracing::warn!(entry = %job.entry_id, error = %err, "dead letter not replayed")
                    }
                }
            }
        }
    }

    /// Delete every dead letter; returns how many there were.
    pub async fn purge(&self) -> Result<u64> {
        self.client.broker().dead_purge(None).await
    }

    /// Delete the dead letters older than `before` (a retention policy); returns how many.
    pub async fn purge_before(&self, before: std::time::SystemTime) -> Result<u64> {
        let before_ms = before
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        self.client.broker().dead_purge(Some(before_ms)).await
    }
}
