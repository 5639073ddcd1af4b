//! Cancelled jobs as this worker knows them: read from the broker every half second from where
//! the last read left off, checked before each job starts, and told to a running job whose
//! task waits for it (`TaskContext::cancelled`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::error::Result;
use crate::task::Cancellations;

/// How often the worker reads new cancellations: a cancel reaches it within this (and a
/// round trip).
pub(crate) const REFRESH: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(crate) struct Revocations {
    /// Cancelled job ids, with when (the broker's clock, ms).
    known: RwLock<HashMap<String, i64>>,
    /// How many are known, so that the check before each job is one atomic load while
    /// nothing is cancelled.
    count: AtomicUsize,
    /// Tokens of running jobs whose tasks wait for their cancellation.
    watched: Mutex<HashMap<String, CancellationToken>>,
    watching: AtomicUsize,
    /// Where the next read starts: the latest mark seen (read again, as marks of that same
    /// millisecond may come after it).
    since_ms: Mutex<i64>,
}

impl Revocations {
    /// Whether `job_id` was cancelled, as far as this worker has read.
    pub(crate) fn is_revoked(&self, job_id: &str) -> bool {
        self.count.load(Ordering::Acquire) > 0
            && self
                .known
                .read()
                .expect("no panic while held")
                .contains_key(job_id)
    }

    /// The job ended: stop watching it.
    pub(crate) fn finished(&self, job_id: &str) {
        if self.watching.load(Ordering::Acquire) > 0 {
            let mut watched = self.watched.lock().expect("no panic while held");
            if watched.remove(job_id).is_some() {
                self.watching.store(watched.len(), Ordering::Release);
            }
        }
    }

    /// Read the cancellations since the last read, cancel the tokens of running jobs among
    /// them, and forget marks older than `keep` (the broker dropped them too).
    pub(crate) async fn refresh(&self, broker: &dyn Broker, keep: Duration) -> Result<()> {
        let since = *self.since_ms.lock().expect("no panic while held");
        let marks = broker.revocations_since(since).await?;
        let Some(&(_, latest)) = marks.last() else {
            return Ok(());
        };
        {
            let mut known = self.known.write().expect("no panic while held");
            for (id, at) in &marks {
                known.insert(id.clone(), *at);
            }
            let oldest_kept = latest - keep.as_millis() as i64;
            known.retain(|_, at| *at > oldest_kept);
            self.count.store(known.len(), Ordering::Release);
        }
        if self.watching.load(Ordering::Acquire) > 0 {
            let watched = self.watched.lock().expect("no panic while held");
            for (id, _) in &marks {
                if let Some(token) = watched.get(id) {
                    token.cancel();
                }
            }
        }
        *self.since_ms.lock().expect("no panic while held") = latest;
        Ok(())
    }
}

impl Cancellations for Revocations {
    fn token(&self, job_id: &str) -> CancellationToken {
        let mut watched = self.watched.lock().expect("no panic while held");
        let token = watched.entry(job_id.to_owned()).or_default().clone();
        self.watching.store(watched.len(), Ordering::Release);
        // Checked while the watch is held: a refresh that marked it before is seen here, and
        // one after finds the token.
        if self.is_revoked(job_id) {
            token.cancel();
        }
        token
    }

    fn is_cancelled(&self, job_id: &str) -> bool {
        self.is_revoked(job_id)
    }
}

/// Read new cancellations every [`REFRESH`] until `stop`.
pub(crate) async fn run(
    revocations: Arc<Revocations>,
    broker: Arc<dyn Broker>,
    keep: Duration,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
        match revocations.refresh(broker.as_ref(), keep).await {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %crate::error::chain(&err), "reading cancelled jobs failed; retrying");
            }
            Err(_) => {}
        }
    }
}
