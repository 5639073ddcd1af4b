//! [`RateLimiter`]: a shared rate limit for code outside tasks (an API client used by many
//! tasks and processes), made with `Client::rate_limiter`. Waits until the limit allows.

use std::sync::Arc;

use crate::broker::Broker;
use crate::error::Result;
use crate::limit::{RUNNER_PATIENCE, RateLimit};

/// One start of a shared rate limit at a time, across every process on the namespace: the
/// same limit as `TaskContext::rate_limit(name)` and `#[task(rate_limit = "name")]` of that
/// name. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    broker: Arc<dyn Broker>,
    name: Arc<str>,
    limit: RateLimit,
}

impl RateLimiter {
    pub(crate) fn new(broker: Arc<dyn Broker>, name: &str, limit: RateLimit) -> RateLimiter {
        RateLimiter {
            broker,
            name: name.into(),
            limit,
        }
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Wait until one start is allowed, and count it: a turn up to 100 ms away is reserved and
    /// waited for; a later one is a place in the line of waiters, so a crowd of callers is let
    /// through one by one, not all at once. Fails only when Redis does.
    pub async fn acquire(&self) -> Result<()> {
        // A turn close by is reserved; a later one is a place in line, to ask again at.
        loop {
            match self
                .broker
                .acquire_rate(&self.name, self.limit, RUNNER_PATIENCE, None)
                .await?
            {
                None => return Ok(()),
                Some(wait) if wait <= RUNNER_PATIENCE => {
                    tokio::time::sleep(wait).await;
                    return Ok(());
                }
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("limit", &self.limit.to_string())
            .finish()
    }
}
