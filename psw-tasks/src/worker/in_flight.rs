//! What a worker holds: every delivery from its fetch until its settlement is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

use crate::broker::Delivery;

/// One delivery held.
struct Held {
    /// Its delivery count, which tells a stale copy of the entry from the live one.
    deliveries: u64,
    /// Its claim on the worker's bound (concurrency + prefetch), given back only when the
    /// delivery stops being held. Given back when the task returned instead, the next fetch
    /// would run ahead of the writer, and Redis would see the worker pending on more entries
    /// than its bound.
    _claim: Option<OwnedSemaphorePermit>,
}

/// The deliveries this worker holds, per queue: entry id -> its delivery count and claim, from
/// the fetch until the writer has stored their settlement. Their leases are renewed; every
/// other entry pending under this consumer is an orphan (a read whose reply was lost) that the
/// reclaim takes back, and none of them is ever reclaimed by this worker.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<Arc<str>, HashMap<String, Held>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, HashMap<String, Held>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hold a fetched batch, each delivery with its claim (one lock for the batch: the writer
    /// releases on another thread), and keep in `deliveries` only those to run: not one whose
    /// entry is held already. Redis hands an entry out again while its first copy runs only when the
    /// consumer group was destroyed and created anew from `0` (`XGROUP DESTROY`); the copy
    /// running settles it.
    pub(crate) fn track(
        &self,
        deliveries: &mut Vec<Delivery>,
        claims: impl IntoIterator<Item = Option<OwnedSemaphorePermit>>,
    ) {
        let mut held = self.lock();
        let mut claims = claims.into_iter();
        deliveries.retain(|delivery| {
            let claim = claims.next().flatten();
            let entries = match held.get_mut(&delivery.queue) {
                Some(entries) => entries,
                None => held.entry(delivery.queue.clone()).or_default(),
            };
            if entries.contains_key(&delivery.entry_id) {
                tracing::warn!(queue = %delivery.queue, entry = %delivery.entry_id, "an entry this worker runs was handed out again (its consumer group was created anew?); the second copy is not run");
                return false;
            }
            entries.insert(
                delivery.entry_id.clone(),
                Held {
                    deliveries: delivery.deliveries,
                    _claim: claim,
                },
            );
            true
        });
    }

    /// Forget deliveries once their settlement is stored (or refused), giving back their
    /// claims: (queue, entry id, delivery count) each.
    pub(crate) fn release<'d>(
        &self,
        settled: impl IntoIterator<Item = (&'d Arc<str>, &'d str, u64)>,
    ) {
        let mut held = self.lock();
        for (queue, entry_id, deliveries) in settled {
            if let Some(entries) = held.get_mut(queue)
                && entries
                    .get(entry_id)
                    .is_some_and(|held| held.deliveries == deliveries)
            {
                entries.remove(entry_id);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<(Arc<str>, Vec<String>)> {
        self.lock()
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(queue, ids)| (queue.clone(), ids.keys().cloned().collect()))
            .collect()
    }

    pub(crate) fn ids(&self, queue: &str) -> Vec<String> {
        self.lock()
            .get(queue)
            .map(|ids| ids.keys().cloned().collect())
            .unwrap_or_default()
    }
}
