//! The beat's sense of time: the system clock, or in tests a simulated one that runs days of
//! schedule in milliseconds.

use std::time::Duration;

use futures_util::future::BoxFuture;

/// Longest single sleep on the system clock, so that a wall clock set forward (NTP, a
/// suspended VM) is noticed within this long rather than at the end of a long sleep.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Wall-clock time in ms since the Unix epoch, and waiting for a moment of it.
pub(crate) trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;

    /// Resolves at `at_ms` or earlier: callers look at `now_ms` again on waking.
    fn sleep_until(&self, at_ms: i64) -> BoxFuture<'_, ()>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::envelope::now_ms()
    }

    fn sleep_until(&self, at_ms: i64) -> BoxFuture<'_, ()> {
        let wait = Duration::from_millis((at_ms - self.now_ms()).max(0) as u64);
        Box::pin(tokio::time::sleep(wait.min(MAX_SLEEP)))
    }
}

#[cfg(test)]
pub(crate) use sim::{SimClock, Skewed};

#[cfg(test)]
mod sim {
    use std::sync::atomic::{AtomicI64, Ordering};

    use tokio::sync::watch;

    use super::Clock;
    use futures_util::future::BoxFuture;

    /// Simulated time that jumps to whatever moment is waited for, up to `end`; a wait past
    /// `end` never resolves and marks the clock finished.
    pub(crate) struct SimClock {
        now: AtomicI64,
        end: i64,
        finished: watch::Sender<bool>,
    }

    impl SimClock {
        pub(crate) fn new(start_ms: i64, end_ms: i64) -> Self {
            SimClock {
                now: AtomicI64::new(start_ms),
                end: end_ms,
                finished: watch::channel(false).0,
            }
        }

        /// Resolves once a wait past the end has begun (everything up to the end is done).
        pub(crate) async fn finished(&self) {
            let mut finished = self.finished.subscribe();
            let _ = finished.wait_for(|&done| done).await;
        }
    }

    impl Clock for SimClock {
        fn now_ms(&self) -> i64 {
            self.now.load(Ordering::SeqCst)
        }

        fn sleep_until(&self, at_ms: i64) -> BoxFuture<'_, ()> {
            if at_ms <= self.end {
                self.now.fetch_max(at_ms, Ordering::SeqCst);
                return Box::pin(std::future::ready(()));
            }
            self.now.fetch_max(self.end, Ordering::SeqCst);
            self.finished.send_replace(true);
            Box::pin(std::future::pending())
        }
    }

    /// Another clock, off by `offset_ms`: a host whose clock runs ahead (positive) or behind.
    pub(crate) struct Skewed {
        pub(crate) base: std::sync::Arc<dyn Clock>,
        pub(crate) offset_ms: i64,
    }

    impl Clock for Skewed {
        fn now_ms(&self) -> i64 {
            self.base.now_ms() + self.offset_ms
        }

        fn sleep_until(&self, at_ms: i64) -> BoxFuture<'_, ()> {
            self.base.sleep_until(at_ms - self.offset_ms)
        }
    }
}
