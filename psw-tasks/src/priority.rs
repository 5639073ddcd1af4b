//! Queue priorities: in which order a worker on several queues reads them, read after read,
//! and the priority levels within one queue. Pure: the caller gives the read's number and the
//! random numbers.
//!
//! A read takes what it may from the first queue of its order, then from the next, until its
//! budget is spent, so the first queue is the one served. Round-robin starts each read one
//! queue further; weights draw the first queue (and the rest of the order) with chances
//! proportional to them, as Sidekiq's weighted queues do, so a busy heavy queue cannot starve
//! a light one; strict order always reads the first queue first, and can.
//!
//! Within a queue's turn its levels ([`Priority`]) are read strictly, high first. Each level is
//! a lane: a queue of its own to the broker, named `<queue>:high` or `<queue>:low` (the normal
//! level is the queue itself, so producers that know nothing of levels are unchanged). Queue
//! names cannot hold `:`, so a lane's name never clashes with a queue's; everything kept per
//! queue (stream, delayed set, leases, retries, dead letters' origin) is kept per lane.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::keys::validate_name;
pub(crate) use crate::rules::{Priority, split_lane};

/// The lane of `queue` that holds its jobs of `priority`.
pub(crate) fn lane(queue: &str, priority: Priority) -> String {
    match priority {
        Priority::Normal => queue.to_owned(),
        level => format!("{queue}:{level}"),
    }
}

/// Every lane of `queue`, in the order a worker reads them.
pub(crate) fn lanes(queue: &str) -> impl Iterator<Item = String> + '_ {
    Priority::ALL
        .into_iter()
        .map(move |level| lane(queue, level))
}

/// How a worker orders its queues on each read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueOrder {
    /// Each read starts one queue further (the default).
    RoundRobin,
    /// Each read draws its order by these weights, one per queue in the worker's order.
    Weighted(Vec<u32>),
    /// Every read starts with the first queue.
    Strict,
}

impl QueueOrder {
    /// The order (indices into the worker's `count` queues) of read number `turn`; `random`
    /// gives numbers uniform in [0, 1), one per queue for weights.
    pub(crate) fn order(
        &self,
        count: usize,
        turn: usize,
        mut random: impl FnMut() -> f64,
    ) -> Vec<usize> {
        match self {
            QueueOrder::Strict => (0..count).collect(),
            QueueOrder::RoundRobin => {
                let start = turn % count.max(1);
                (start..count).chain(0..start).collect()
            }
            // Efraimidis and Spirakis: sorting by u^(1/w), largest first, draws an order in
            // which each queue comes first with the chance weight / total (compared as
            // ln(u) / w, the same order without the power).
            QueueOrder::Weighted(weights) => {
                let mut keyed: Vec<(f64, usize)> = (0..count)
                    .map(|index| {
                        let weight = f64::from(weights.get(index).copied().unwrap_or(1).max(1));
                        ((1.0 - random()).ln() / weight, index)
                    })
                    .collect();
                keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
                keyed.into_iter().map(|(_, index)| index).collect()
            }
        }
    }
}

/// A list of queues with optional weights, `high:5,default:2,low` (a queue without one weighs
/// 1), as `variable` gives it: the names in order and the weights given.
pub(crate) fn parse_queue_list(
    variable: &str,
    value: &str,
) -> Result<(Vec<String>, BTreeMap<String, u32>)> {
    let mut queues = Vec::new();
    let mut weights = BTreeMap::new();
    for item in value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (name, weight) = match item.split_once(':') {
            Some((name, weight)) => {
                let weight = weight
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&weight| weight >= 1)
                    .ok_or_else(|| {
                        Error::config(
                            variable,
                            item,
                            "a comma-separated list of queue names, each with an optional weight \
                             of 1 or more, like `high:5,default:2,low:1`",
                        )
                    })?;
                (name.trim(), Some(weight))
            }
            None => (item, None),
        };
        validate_name(variable, name)?;
        if queues.iter().any(|queue| queue == name) {
            return Err(Error::config(
                variable,
                name,
                "each queue named once in the list",
            ));
        }
        queues.push(name.to_owned());
        if let Some(weight) = weight {
            weights.insert(name.to_owned(), weight);
        }
    }
    Ok((queues, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_starts_one_further_each_read_and_strict_never() {
        let order = QueueOrder::RoundRobin;
        assert_eq!(order.order(3, 0, || 0.5), [0, 1, 2]);
        assert_eq!(order.order(3, 1, || 0.5), [1, 2, 0]);
        assert_eq!(order.order(3, 5, || 0.5), [2, 0, 1]);
        for turn in 0..4 {
            assert_eq!(QueueOrder::Strict.order(3, turn, || 0.5), [0, 1, 2]);
        }
    }

    #[test]
    fn weights_give_each_queue_its_share_of_first_places() {
        let order = QueueOrder::Weighted(vec![5, 2, 1]);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut first = [0u32; 3];
        let reads = 80_000;
        for turn in 0..reads {
            let drawn = order.order(3, turn, || rng.f64());
            let mut sorted = drawn.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "every queue once");
            first[drawn[0]] += 1;
        }
        for (queue, weight) in [5.0, 2.0, 1.0].into_iter().enumerate() {
            let share = f64::from(first[queue]) / reads as f64;
            let expected = weight / 8.0;
            assert!(
                (share - expected).abs() < 0.01,
                "queue {queue}: {share} of first places, expected {expected}"
            );
        }
    }

    #[test]
    fn lanes_name_a_queues_levels_and_give_them_back() {
        assert_eq!(
            lanes("prices").collect::<Vec<_>>(),
            ["prices:high", "prices", "prices:low"]
        );
        for level in Priority::ALL {
            assert_eq!(split_lane(&lane("prices", level)), ("prices", level));
        }
        assert_eq!(split_lane("default"), ("default", Priority::Normal));
    }

    #[test]
    fn queue_lists_parse_with_and_without_weights() {
        let (queues, weights) = parse_queue_list("PSW_QUEUES", "high:5, default ,low:1").unwrap();
        assert_eq!(queues, ["high", "default", "low"]);
        assert_eq!(
            weights,
            BTreeMap::from([("high".to_owned(), 5), ("low".to_owned(), 1)])
        );
        for bad in ["high:0", "high:x", "high:", "a b:2", "high,high:2"] {
            let err = parse_queue_list("PSW_QUEUES", bad).unwrap_err().to_string();
            assert!(err.contains("PSW_QUEUES"), "{bad}: {err}");
        }
    }
}
