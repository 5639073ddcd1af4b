//! Keeping each call on one slot: on a Redis Cluster a pipeline, MULTI or script may name keys
//! of one hash tag only (the redis crate's cluster client refuses a pipeline that crosses
//! slots, and Redis a script that does). Work over several queues is split by their tags there,
//! and kept whole on one server, where it is one round trip.

use std::collections::HashMap;

use super::connection::{Endpoint, RedisBroker};

impl RedisBroker {
    /// Whether keys of different hash tags may be on different slots, as on a cluster.
    pub(super) fn spans_slots(&self) -> bool {
        matches!(self.endpoint, Endpoint::Cluster { .. })
    }

    /// `items` in the groups one call may take, each item with its position in `items`: on a
    /// cluster one group per hash tag (`tag` gives each item's), in the order the tags are
    /// first seen; elsewhere a single group.
    pub(super) fn per_slot<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        tag: impl Fn(&T) -> String,
    ) -> Vec<Vec<(usize, T)>> {
        let items = items.into_iter().enumerate();
        if !self.spans_slots() {
            let all: Vec<(usize, T)> = items.collect();
            return if all.is_empty() {
                Vec::new()
            } else {
                vec![all]
            };
        }
        let mut groups: Vec<Vec<(usize, T)>> = Vec::new();
        let mut by_tag: HashMap<String, usize> = HashMap::new();
        for (position, item) in items {
            let at = *by_tag.entry(tag(&item)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[at].push((position, item));
        }
        groups
    }
}

/// The replies of groups of calls made by [`RedisBroker::per_slot`], put back in the order of
/// the items they were made from.
pub(super) fn in_item_order<R>(groups: Vec<Vec<(usize, R)>>) -> Vec<R> {
    let mut all: Vec<(usize, R)> = groups.into_iter().flatten().collect();
    all.sort_by_key(|(position, _)| *position);
    all.into_iter().map(|(_, reply)| reply).collect()
}

/// The hash tag of `key`: what its first `{` and the next `}` hold, as Redis hashes it (the
/// whole key when there is none).
pub(super) fn tag_of(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}
