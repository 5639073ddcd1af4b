//! The dead-letter queue as users see it: jobs that could not run, or failed for good, kept
//! with their reason, every attempt's error and their bytes, to be read, replayed or purged;
//! and the hook a worker calls for each one it stores.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::broker::{Broker, DeadJob, DeadLetterStats};
use crate::envelope::{Envelope, JobId, RESERVED_HEADER_PREFIX, SystemHeader, now_ms};
use crate::error::{Error, Result};
use crate::priority;

/// What runs when a job is dead-lettered, after the dead letter is stored.
#[derive(Clone)]
pub(crate) struct DeadHook(Arc<dyn Fn(DeadJob) -> BoxFuture<'static, ()> + Send + Sync>);

impl DeadHook {
    pub(crate) fn new<F, Fut>(f: F) -> DeadHook
    where
        F: Fn(DeadJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        DeadHook(Arc::new(move |job| Box::pin(f(job))))
    }

    pub(crate) fn call(&self, job: DeadJob) -> BoxFuture<'static, ()> {
        (self.0)(job)
    }
}

impl std::fmt::Debug for DeadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadHook")
    }
}

/// The dead-letter queue of a namespace, from [`crate::Client::dead_letters`].
#[derive(Clone)]
pub struct DeadLetters {
    broker: Arc<dyn Broker>,
    /// Largest envelope a replay may put back (`PSW_MAX_MESSAGE_SIZE`), as for an enqueue.
    max_message_size: usize,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

/// What [`DeadLetters::replay_all`] did with the dead letters it looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Put back on their queues.
    pub replayed: u64,
    /// Left: their bytes were cut at the dead-letter cap, so they cannot be replayed.
    pub truncated: u64,
    /// Left: their bytes are not a job envelope (garbage, or a newer version's).
    pub unreadable: u64,
    /// Replayed or purged by another caller meanwhile.
    pub gone: u64,
}

/// Dead letters read per round trip by [`DeadLetters::replay_all`].
const PAGE: usize = 500;

impl DeadLetters {
    pub(crate) fn new(broker: Arc<dyn Broker>, max_message_size: usize) -> Self {
        DeadLetters {
            broker,
            max_message_size,
        }
    }

    /// Up to `limit` dead letters, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadJob>> {
        self.broker.dead_page(None, None, limit).await
    }

    /// One dead letter by its entry id.
    pub async fn get(&self, entry_id: &str) -> Result<Option<DeadJob>> {
        self.broker.dead_get(entry_id).await
    }

    /// How many there are, and how many the cap has removed.
    pub async fn stats(&self) -> Result<DeadLetterStats> {
        self.broker.dead_stats().await
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
        // A producer's own headers stay, and the system's that say what the job stands for; its
        // counters start again, and a `psw-` header this version does not know goes too.
        envelope
            .headers
            .retain(|name, _| match SystemHeader::from_wire(name) {
                Some(header) => !header.resets_on_replay(),
                None => !name.starts_with(RESERVED_HEADER_PREFIX),
            });
        // Back to the queue (and the lane of its priority) it was read from: the envelope's
        // own field may name another.
        envelope.queue = priority::split_lane(&job.queue).0.to_owned();
        // The history it carries back may not fit beside its arguments: it shrinks, as a
        // retry's does, so the replay is not dead-lettered again as oversized.
        let payload = envelope.encode_within(self.max_message_size)?;
        let replayed = self
            .broker
            .dead_replay(&job.entry_id, &job.queue, envelope.id.as_str(), payload)
            .await?;
        if !replayed {
            return Err(Error::NotDeadLettered(job.entry_id.clone()));
        }
        Ok(envelope.id)
    }

    /// Replay every dead job (of one task, if given) that was dead-lettered when the call began,
    /// each at most once: jobs that die again while it runs are new dead letters, which it
    /// leaves for the next call. Says how many it replayed and why it left the others.
    pub async fn replay_all(&self, task: Option<&str>) -> Result<ReplayReport> {
        let mut report = ReplayReport::default();
        // The newest dead letter now bounds the walk: entry ids only grow, so every letter
        // added from here on lies past it.
        let Some(until) = self.broker.dead_newest().await? else {
            return Ok(report);
        };
        let mut after: Option<String> = None;
        loop {
            let batch = self
                .broker
                .dead_page(after.as_deref(), Some(&until), PAGE)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(report);
            };
            after = Some(last.entry_id.clone());
            for job in batch {
                if task.is_some_and(|task| job.task.as_deref() != Some(task)) {
                    continue;
                }
                match self.replay_job(&job).await {
                    Ok(_) => report.replayed += 1,
                    Err(Error::Replay { why, .. }) => {
                        if job.truncated {
                            report.truncated += 1;
                        } else {
                            report.unreadable += 1;
                        }
                        tracing::warn!(entry = %job.entry_id, why, "dead letter not replayed");
                    }
                    // Replayed or purged by someone else meanwhile.
                    Err(Error::NotDeadLettered(_)) => report.gone += 1,
                    Err(err) => return Err(err),
                }
            }
        }
    }

    /// Delete every dead letter; returns how many there were.
    pub async fn purge(&self) -> Result<u64> {
        self.broker.dead_purge(None).await
    }

    /// Delete the dead letters older than `before` (a retention policy); returns how many.
    pub async fn purge_before(&self, before: std::time::SystemTime) -> Result<u64> {
        let before_ms = before
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        self.broker.dead_purge(Some(before_ms)).await
    }
}
