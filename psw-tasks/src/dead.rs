//! The dead-letter queue as users see it: jobs that could not run, or failed for good, kept
//! with their reason, every attempt's error and their bytes, to be read, replayed or purged;
//! and the hook a worker calls for each one it stores.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::broker::{Broker, DeadJob, DeadLetterStats, FailureGroup};
use crate::envelope::{Envelope, JobId, RESERVED_HEADER_PREFIX, SystemHeader, now_ms};
use crate::error::{Error, Result};
use crate::shard;

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

/// Dead letters read per round trip by the walks ([`DeadLetters::replay_all`] and the like).
const PAGE: usize = 500;

/// The most letters one [`DeadLetters::matching`] call looks at, so that a page of a rare
/// group among 100,000 letters answers in bounded time; the cursor it returns goes on.
const SCAN_LIMIT: usize = 5_000;

/// Which dead letters a walk takes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadFilter {
    /// Every letter.
    All,
    /// The letters of one task.
    Task(String),
    /// The letters of one failure group ([`FailureGroup::id`]).
    Group(String),
}

impl DeadFilter {
    fn matches(&self, job: &DeadJob) -> bool {
        match self {
            DeadFilter::All => true,
            DeadFilter::Task(task) => job.task.as_deref() == Some(task.as_str()),
            DeadFilter::Group(group) => job.group == *group,
        }
    }
}

/// One page of a filtered walk: the letters, and where the next page starts (`None` at the
/// end).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadPage {
    /// The letters that matched, oldest first.
    pub letters: Vec<DeadJob>,
    /// The entry id to pass as `after` for the next page; `None` when the walk is done.
    pub next: Option<String>,
}

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

    /// Up to `limit` dead letters after the entry id `after` (exclusive), oldest first: one
    /// range read, as fast at 100,000 letters as at ten.
    pub async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<DeadJob>> {
        self.broker.dead_page(after, None, limit).await
    }

    /// Up to `limit` letters that match `filter`, after `after`, oldest first; looks at no more
    /// than 5,000 letters per call, and says where to go on.
    pub async fn matching(
        &self,
        filter: &DeadFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DeadPage> {
        let limit = limit.max(1);
        let mut letters = Vec::new();
        let mut cursor = after.map(str::to_owned);
        let mut scanned = 0;
        while scanned < SCAN_LIMIT {
            let batch = self.broker.dead_page(cursor.as_deref(), None, PAGE).await?;
            let Some(last) = batch.last() else {
                return Ok(DeadPage {
                    letters,
                    next: None,
                });
            };
            let full = batch.len() == PAGE;
            cursor = Some(last.entry_id.clone());
            scanned += batch.len();
            for job in batch {
                if filter.matches(&job) {
                    if letters.len() == limit {
                        // Start the next page at this one.
                        return Ok(DeadPage {
                            next: letters.last().map(|j: &DeadJob| j.entry_id.clone()),
                            letters,
                        });
                    }
                    letters.push(job);
                }
            }
            if !full {
                return Ok(DeadPage {
                    letters,
                    next: None,
                });
            }
        }
        Ok(DeadPage {
            letters,
            next: cursor,
        })
    }

    /// The failure groups of the letters stored now, biggest first: one read of an index the
    /// broker keeps as letters come and go, however many letters there are.
    pub async fn groups(&self) -> Result<Vec<FailureGroup>> {
        self.broker.dead_groups().await
    }

    /// Delete one dead letter without replaying it; false if it was gone.
    pub async fn remove(&self, entry_id: &str) -> Result<bool> {
        Ok(self.broker.dead_remove(&[entry_id.to_owned()]).await? == 1)
    }

    /// Delete every letter that matches `filter` and was stored when the call began; returns
    /// how many went.
    pub async fn purge_matching(&self, filter: &DeadFilter) -> Result<u64> {
        if *filter == DeadFilter::All {
            return self.purge().await;
        }
        let mut removed = 0;
        let Some(until) = self.broker.dead_newest().await? else {
            return Ok(0);
        };
        let mut after: Option<String> = None;
        loop {
            let batch = self
                .broker
                .dead_page(after.as_deref(), Some(&until), PAGE)
                .await?;
            let Some(last) = batch.last() else {
                return Ok(removed);
            };
            after = Some(last.entry_id.clone());
            let ids: Vec<String> = batch
                .into_iter()
                .filter(|job| filter.matches(job))
                .map(|job| job.entry_id)
                .collect();
            if !ids.is_empty() {
                removed += self.broker.dead_remove(&ids).await?;
            }
        }
    }

    /// The dead letter of a job, by the job's id: the newest if it died more than once.
    /// Walks the letters from the newest, so a recent failure is found at once; looks at no
    /// more than `look_at` letters (`None`: all of them).
    pub async fn find_job(&self, job_id: &str, look_at: Option<usize>) -> Result<Option<DeadJob>> {
        let mut before: Option<String> = None;
        let mut looked = 0;
        while look_at.is_none_or(|most| looked < most) {
            let batch = self.broker.dead_page_back(before.as_deref(), PAGE).await?;
            let Some(oldest) = batch.last() else {
                return Ok(None);
            };
            before = Some(oldest.entry_id.clone());
            looked += batch.len();
            if let Some(job) = batch
                .into_iter()
                .find(|job| job.job_id.as_deref() == Some(job_id))
            {
                return Ok(Some(job));
            }
        }
        Ok(None)
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
        // Back to the queue (and the lane of its priority, and its shard) it was read from:
        // the envelope's own field may name another.
        envelope.queue = shard::queue_of_lane(&job.queue).to_owned();
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
        let filter = task.map_or(DeadFilter::All, |task| DeadFilter::Task(task.to_owned()));
        self.replay_matching(&filter).await
    }

    /// Replay every letter of one failure group, as [`DeadLetters::replay_all`] does a task's.
    pub async fn replay_group(&self, group: &str) -> Result<ReplayReport> {
        self.replay_matching(&DeadFilter::Group(group.to_owned()))
            .await
    }

    /// Replay every letter that matches `filter`, each at most once, as
    /// [`DeadLetters::replay_all`].
    pub async fn replay_matching(&self, filter: &DeadFilter) -> Result<ReplayReport> {
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
                if !filter.matches(&job) {
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
