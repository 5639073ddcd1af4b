//! What a worker holds: every delivery from its fetch until its settlement is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::broker::Delivery;

/// The deliveries this worker holds, per queue: entry id -> delivery count, from the fetch
/// until the writer has stored their settlement. Their leases are renewed; every other entry
/// pending under this consumer is an orphan (a read whose reply was lost) that the reclaim
/// takes back. The count tells a stale copy of an entry (one this worker lost and took back)
/// from the live one.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<Arc<str>, HashMap<String, u64>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, HashMap<String, u64>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hold a fetched batch (one lock for the batch: the writer releases on another thread).
    pub(crate) fn track(&self, deliveries: &[Delivery]) {
        let mut held = self.lock();
        for delivery in deliveries {
            let entries = match held.get_mut(&delivery.queue) {
                Some(entries) => entries,
                None => held.entry(delivery.queue.clone()).or_default(),
            };
            entries.insert(delivery.entry_id.clone(), delivery.deliveries);
        }
    }

    /// Forget deliveries once their settlement is stored (or refused): (queue, entry id,
    /// delivery count) each.
    pub(crate) fn release<'d>(
        &self,
        settled: impl IntoIterator<Item = (&'d Arc<str>, &'d str, u64)>,
    ) {
        let mut held = self.lock();
        for (queue, entry_id, deliveries) in settled {
            if let Some(entries) = held.get_mut(queue)
                && entries.get(entry_id) == Some(&deliveries)
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
