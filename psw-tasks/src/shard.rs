//! Sharded queues: one hot queue split over N streams, which on a Redis Cluster land on
//! different slots, so that one queue is not bound to one master. Pure: names and choices.
//!
//! Shard 0 of a queue is the queue itself, so a queue of one shard is an ordinary queue and
//! raising its count later keeps the keys it had. Shard k ≥ 1 is the queue `<queue>:<k>` to
//! everything below the worker and the client: its own lanes (`<queue>:<k>:high`...), streams,
//! delayed sets and hash tag `{ns:<queue>:<k>}` (key names come from `keys`, which tags a lane
//! by what `split_lane` leaves of it). Queue names hold no `:` and levels are words, so a
//! shard's name never clashes with a queue's or reads as a level.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::validate_name;
use crate::rules::split_lane;

/// The most shards a queue may have.
pub(crate) const MAX_SHARDS: u32 = 256;

/// The form of `PSW_QUEUE_SHARDS`.
pub(crate) const SHARDS_FORM: &str =
    "a comma-separated list of `queue=shards`, each count from 1 to 256, like `prices=8,mail=2`";

/// The name of shard `shard` of `queue`, as the broker knows it (before any level).
pub(crate) fn shard_queue(queue: &str, shard: u32) -> String {
    match shard {
        0 => queue.to_owned(),
        shard => format!("{queue}:{shard}"),
    }
}

/// Every shard of `queue` of `shards`, shard 0 first.
pub(crate) fn shard_queues(queue: &str, shards: u32) -> impl Iterator<Item = String> + '_ {
    (0..shards.max(1)).map(move |shard| shard_queue(queue, shard))
}

/// The queue a shard's name belongs to (`prices:3` → `prices`; a queue's own name is itself).
pub(crate) fn queue_of_shard(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((queue, shard))
            if !shard.is_empty()
                && shard.bytes().all(|b| b.is_ascii_digit())
                && shard.parse::<u32>().is_ok_and(|shard| shard >= 1) =>
        {
            queue
        }
        _ => name,
    }
}

/// The queue a lane belongs to, its level and shard taken off: what users name, pause and
/// see in stats.
pub(crate) fn queue_of_lane(lane: &str) -> &str {
    queue_of_shard(split_lane(lane).0)
}

/// The shard a job goes to among `shards`: the one `key` hashes to when the job has one (a
/// fixed id, a unique or debounce key: its hold or lock must be in one place whichever
/// producer adds it), else `turn` round-robin. The hash is the first 8 bytes of the SHA-256 of
/// the key, big-endian, modulo the count, so that producers in other languages can follow it.
pub(crate) fn pick(shards: u32, key: Option<&str>, turn: u64) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let at = match key {
        Some(key) => {
            let digest = Sha256::digest(key.as_bytes());
            u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
        }
        None => turn,
    };
    (at % u64::from(shards)) as u32
}

/// `PSW_QUEUE_SHARDS` (`prices=8,mail=2`), read from `variable`.
pub(crate) fn parse_shards(variable: &str, value: &str) -> Result<BTreeMap<String, u32>> {
    let mut shards = BTreeMap::new();
    for item in value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let bad = || {
            Error::config(
                variable,
                value,
                format!("{SHARDS_FORM}; `{item}` is not one"),
            )
        };
        let (queue, count) = item.split_once('=').ok_or_else(bad)?;
        let queue = queue.trim();
        validate_name(variable, queue)?;
        let count = count
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|count| (1..=MAX_SHARDS).contains(count))
            .ok_or_else(bad)?;
        shards.insert(queue.to_owned(), count);
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Priority;

    #[test]
    fn shard_names_give_their_queue_back() {
        assert_eq!(shard_queue("prices", 0), "prices");
        assert_eq!(shard_queue("prices", 3), "prices:3");
        let names: Vec<String> = shard_queues("prices", 3).collect();
        assert_eq!(names, ["prices", "prices:1", "prices:2"]);
        for name in &names {
            assert_eq!(queue_of_shard(name), "prices");
        }
        for lane in [
            "prices:3:high",
            "prices:3",
            "prices:low",
            "prices",
            "prices:12:low",
        ] {
            assert_eq!(queue_of_lane(lane), "prices", "{lane}");
        }
        assert_eq!(split_lane("prices:3:high"), ("prices:3", Priority::High));
        assert_eq!(split_lane("prices:3"), ("prices:3", Priority::Normal));
        assert_eq!(
            queue_of_shard("prices:0"),
            "prices:0",
            "shard 0 has no suffix"
        );
        assert_eq!(queue_of_shard("prices:x"), "prices:x");
    }

    #[test]
    fn keyed_jobs_keep_to_one_shard_and_others_rotate() {
        assert_eq!(pick(1, Some("k"), 7), 0);
        let first = pick(8, Some("report/ab12"), 0);
        for turn in 0..20 {
            assert_eq!(pick(8, Some("report/ab12"), turn), first);
        }
        let rotated: Vec<u32> = (0..6).map(|turn| pick(3, None, turn)).collect();
        assert_eq!(rotated, [0, 1, 2, 0, 1, 2]);
        let spread: std::collections::HashSet<u32> = (0..200)
            .map(|n| pick(4, Some(&format!("key-{n}")), 0))
            .collect();
        assert_eq!(spread.len(), 4, "keys spread over every shard");
    }

    #[test]
    fn the_setting_names_the_variable_and_the_form() {
        let parsed = parse_shards("PSW_QUEUE_SHARDS", "prices=8, mail = 2").unwrap();
        assert_eq!(parsed.get("prices"), Some(&8));
        assert_eq!(parsed.get("mail"), Some(&2));
        for bad in [
            "prices",
            "prices=0",
            "prices=257",
            "prices=x",
            "a b=2",
            "p:1=2",
        ] {
            let err = parse_shards("PSW_QUEUE_SHARDS", bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("PSW_QUEUE_SHARDS"), "{bad}: {err}");
        }
    }
}
