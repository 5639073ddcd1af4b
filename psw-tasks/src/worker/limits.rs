//! The worker's global flow limits: the shared ones configured at its start, the check a job
//! passes before it starts (its rate limit, then a concurrency slot), and the slots its running
//! jobs hold, leased and renewed with the entries' leases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::broker::Broker;
use crate::limit::{RUNNER_PATIENCE, RateLimit, TaskLimit};
use crate::task::{RateLimits, TaskError, TaskOptions};

/// How long a job waits when its limit could not be checked (Redis away): it does not start
/// unchecked, since a limit may stand for a provider's quota.
const UNCHECKED_WAIT: Duration = Duration::from_secs(1);

/// The shared limits by name, and the slots held now.
pub(crate) struct Limits {
    broker: Arc<dyn Broker>,
    rates: HashMap<String, RateLimit>,
    slots: HashMap<String, u32>,
    /// (scope, holder) of every slot a running job of this worker holds.
    held: Mutex<Vec<(String, String)>>,
}

/// Why a job may not start yet.
pub(crate) enum Wait {
    /// Its rate limit does not let it start before this long.
    Rate(Duration),
    /// Every slot of its concurrency limit is taken.
    Slot,
}

/// A concurrency slot a running job holds: its scope and holder (the job id).
pub(crate) struct Slot {
    scope: String,
    holder: String,
}

impl Limits {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        rates: HashMap<String, RateLimit>,
        slots: HashMap<String, u32>,
    ) -> Limits {
        Limits {
            broker,
            rates,
            slots,
            held: Mutex::default(),
        }
    }

    /// The rate limit of a task, its own or the shared one it names.
    fn rate_of(&self, limit: &TaskLimit<RateLimit>) -> Option<RateLimit> {
        match limit {
            TaskLimit::Own(rate) => Some(*rate),
            TaskLimit::Named(name) => self.rates.get(*name).copied(),
        }
    }

    /// The number of slots of a task's concurrency limit.
    fn slots_of(&self, limit: &TaskLimit<u32>) -> Option<u32> {
        match limit {
            TaskLimit::Own(slots) => Some(*slots),
            TaskLimit::Named(name) => self.slots.get(*name).copied(),
        }
    }

    /// The names a task uses that are not configured here, with the variable that sets them.
    pub(crate) fn missing(&self, options: &TaskOptions) -> Option<(&'static str, &'static str)> {
        if let Some(limit @ TaskLimit::Named(name)) = &options.rate_limit
            && self.rate_of(limit).is_none()
        {
            return Some(("PSW_RATE_LIMITS", name));
        }
        if let Some(limit @ TaskLimit::Named(name)) = &options.concurrency
            && self.slots_of(limit).is_none()
        {
            return Some(("PSW_CONCURRENCY_LIMITS", name));
        }
        None
    }

    /// Check a job's limits before it starts (`Ok` with the slot it holds until it ends, if it
    /// has a concurrency limit): a concurrency slot first, then its rate limit,
    /// giving the slot back if the rate limit says wait, so that a rate limit counts only
    /// jobs that start.
    pub(crate) async fn admit(
        &self,
        options: &TaskOptions,
        task: &str,
        job_id: &str,
        lease: Duration,
    ) -> Result<Option<Slot>, Wait> {
        let slot = match &options.concurrency {
            Some(limit) => match self.slots_of(limit) {
                Some(max) => match self.take_slot(limit.scope(task), job_id, max, lease).await {
                    Some(slot) => Some(slot),
                    None => return Err(Wait::Slot),
                },
                None => None,
            },
            None => None,
        };
        let Some((limit, rate)) = options
            .rate_limit
            .as_ref()
            .and_then(|limit| Some((limit, self.rate_of(limit)?)))
        else {
            return Ok(slot);
        };
        // A turn close by is reserved and waited for here; a later one is a place in line to
        // come back at and ask again.
        let wait = match self
            .broker
            .acquire_rate(&limit.scope(task), rate, RUNNER_PATIENCE, None)
            .await
        {
            Ok(None) => return Ok(slot),
            Ok(Some(wait)) if wait <= RUNNER_PATIENCE => {
                tokio::time::sleep(wait).await;
                return Ok(slot);
            }
            Ok(Some(wait)) => wait,
            Err(err) => {
                tracing::warn!(task, error = %crate::error::chain(&err), "could not check the task's rate limit; the job waits");
                UNCHECKED_WAIT
            }
        };
        if let Some(slot) = slot {
            self.release(slot).await;
        }
        Err(Wait::Rate(wait))
    }

    async fn take_slot(
        &self,
        scope: String,
        job_id: &str,
        max: u32,
        lease: Duration,
    ) -> Option<Slot> {
        match self.broker.acquire_slot(&scope, job_id, max, lease).await {
            Ok(true) => {
                self.lock().push((scope.clone(), job_id.to_owned()));
                Some(Slot {
                    scope,
                    holder: job_id.to_owned(),
                })
            }
            Ok(false) => None,
            Err(err) => {
                tracing::warn!(id = job_id, error = %crate::error::chain(&err), "could not take a concurrency slot; the job waits");
                None
            }
        }
    }

    /// Give a finished job's slot back. If Redis refuses, the lease runs out by itself.
    pub(crate) async fn release(&self, slot: Slot) {
        self.lock()
            .retain(|(scope, holder)| !(*scope == slot.scope && *holder == slot.holder));
        if let Err(err) = self.broker.release_slot(&slot.scope, &slot.holder).await {
            tracing::warn!(id = %slot.holder, error = %crate::error::chain(&err), "could not give a concurrency slot back; its lease runs out by itself");
        }
    }

    /// Every slot held now, for the renewer.
    pub(crate) fn held(&self) -> Vec<(String, String)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RateLimits for Limits {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        patience: Duration,
    ) -> BoxFuture<'a, Result<Option<Duration>, TaskError>> {
        Box::pin(async move {
            let Some(rate) = self.rates.get(name).copied() else {
                return Err(TaskError::retry(format!(
                    "no rate limit named `{name}` is configured on this worker (PSW_RATE_LIMITS={name}=<count>/<period>, or WorkerBuilder::rate_limit)"
                )));
            };
            self.broker
                .acquire_rate(name, rate, patience, None)
                .await
                .map_err(|err| {
                    TaskError::retry(format!(
                        "could not check the rate limit `{name}`: {}",
                        crate::error::chain(&err)
                    ))
                })
        })
    }
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("rates", &self.rates)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;

    #[test]
    fn a_task_naming_an_undeclared_limit_is_found_with_its_variable() {
        let limits = Limits::new(
            Arc::new(MemoryBroker::new()),
            HashMap::from([("eodhd".to_owned(), "1000/m".parse().unwrap())]),
            HashMap::new(),
        );
        let named = |rate: &'static str, slots: Option<&'static str>| TaskOptions {
            rate_limit: Some(TaskLimit::Named(rate)),
            concurrency: slots.map(TaskLimit::Named),
            ..TaskOptions::DEFAULT
        };
        assert_eq!(limits.missing(&named("eodhd", None)), None);
        assert_eq!(
            limits.missing(&named("borsdata", None)),
            Some(("PSW_RATE_LIMITS", "borsdata"))
        );
        assert_eq!(
            limits.missing(&named("eodhd", Some("renderer"))),
            Some(("PSW_CONCURRENCY_LIMITS", "renderer"))
        );
        let own = TaskOptions {
            rate_limit: Some(TaskLimit::Own("1/s".parse().unwrap())),
            concurrency: Some(TaskLimit::Own(1)),
            ..TaskOptions::DEFAULT
        };
        assert_eq!(
            limits.missing(&own),
            None,
            "a task's own limits need no declaration"
        );
    }
}
