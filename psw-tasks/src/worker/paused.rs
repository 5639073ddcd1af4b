//! The paused queues as the fetch loop last read them, shared with the runners: a job fetched
//! before its queue was paused, still waiting for a runner, is given back rather than started.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub(crate) struct Paused {
    /// Whether any queue is paused: while none is, a runner's check is this one load.
    any: AtomicBool,
    queues: RwLock<Vec<String>>,
}

impl Paused {
    /// The paused queues now; the ones before.
    pub(crate) fn set(&self, queues: Vec<String>) -> Vec<String> {
        let any = !queues.is_empty();
        let before = std::mem::replace(
            &mut *self
                .queues
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            queues,
        );
        self.any.store(any, Ordering::Release);
        before
    }

    /// Whether any queue is paused.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Whether the queue of `lane` (a queue, one of its priority levels, or of its shards'
    /// lanes) is paused.
    pub(crate) fn holds_lane(&self, lane: &str) -> bool {
        if !self.any() {
            return false;
        }
        let queue = crate::shard::queue_of_lane(lane);
        self.queues
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .any(|paused| paused == queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_holds_every_lane_of_its_queue() {
        let paused = Paused::default();
        assert!(!paused.holds_lane("mail"));
        assert!(paused.set(vec!["mail".to_owned()]).is_empty());
        for lane in ["mail", "mail:high", "mail:low", "mail:3", "mail:3:high"] {
            assert!(paused.holds_lane(lane), "{lane}");
        }
        assert!(!paused.holds_lane("mailer"));
        assert_eq!(paused.set(Vec::new()), ["mail"]);
        assert!(!paused.holds_lane("mail"));
    }
}
