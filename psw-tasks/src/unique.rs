//! Unique jobs: while a job holds its lock, another enqueue of the same key adds nothing and
//! returns a handle on the job that holds it. Pure: what a lock is, how long it lasts, its
//! default key; the broker takes and releases it.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::wire::{wire_enum, wire_serde};

/// How long a task's (or a job's) uniqueness lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unique {
    /// Until a worker starts the job.
    UntilStarted,
    /// Until the job ends: succeeds, fails for good, is dead-lettered or expires (a retry keeps
    /// it). Not past [`UNIQUE_HOLD`] after its due time, should the job be lost.
    UntilFinished,
    /// For this long after the enqueue, whatever the job does.
    For(Duration),
}

/// Longest an `UntilStarted` or `UntilFinished` lock lasts past the job's due time: a job lost
/// with its queue (deleted, or Redis restarted empty) or dropped as undecodable never releases
/// its lock, which then goes by itself.
pub const UNIQUE_HOLD: Duration = Duration::from_secs(24 * 3600);

wire_enum! {
    /// When a worker releases a job's lock, as the envelope carries it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Release {
        Started => "started",
        Finished => "finished",
        /// A kind a newer version wrote: the lock is left to expire.
        Unknown => "unknown",
    }
}

wire_serde!(Release, Unknown);

impl Unique {
    /// When a worker releases the lock; `None` for a lock that only expires.
    pub(crate) fn release(self) -> Option<Release> {
        match self {
            Unique::UntilStarted => Some(Release::Started),
            Unique::UntilFinished => Some(Release::Finished),
            Unique::For(_) => None,
        }
    }

    /// How long the lock is taken for, for a job due `delay` after its enqueue.
    pub(crate) fn hold(self, delay: Duration) -> Duration {
        match self {
            Unique::For(duration) => duration,
            Unique::UntilStarted | Unique::UntilFinished => delay + UNIQUE_HOLD,
        }
    }
}

/// The default key of a job: its task and the SHA-256 of its encoded arguments, in hex, so
/// that a producer in another language makes the same (`docs/protocol.md`).
pub(crate) fn default_key(task: &str, args: &[u8]) -> String {
    let digest = Sha256::digest(args);
    let mut key = String::with_capacity(task.len() + 1 + 64);
    key.push_str(task);
    key.push('/');
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_is_the_task_and_the_arguments_digest() {
        let args = rmp_serde::to_vec_named(&("AAPL", 3)).unwrap();
        let key = default_key("quotes.fetch", &args);
        assert!(key.starts_with("quotes.fetch/"), "{key}");
        assert_eq!(key.len(), "quotes.fetch/".len() + 64);
        assert_eq!(key, default_key("quotes.fetch", &args), "stable");
        let other = rmp_serde::to_vec_named(&("AAPL", 4)).unwrap();
        assert_ne!(key, default_key("quotes.fetch", &other));
        // SHA-256 of the empty string, as any other implementation computes it.
        assert_eq!(
            default_key("t", b""),
            "t/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn locks_last_as_their_kind_says() {
        let hour = Duration::from_secs(3600);
        assert_eq!(Unique::For(hour).hold(hour), hour);
        assert_eq!(Unique::UntilFinished.hold(hour), hour + UNIQUE_HOLD);
        assert_eq!(Unique::For(hour).release(), None);
        assert_eq!(Unique::UntilStarted.release(), Some(Release::Started));
    }
}
