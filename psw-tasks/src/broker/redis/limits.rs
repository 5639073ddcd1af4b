//! Global flow limits' state: GCRA rate limits (`rate_acquire.lua`) and leased concurrency
//! slots (`slot_acquire.lua`, `slot_renew.lua`, and a plain `ZREM` to give one back). Each
//! call touches one key.

use std::time::Duration;

use super::connection::RedisBroker;
use crate::limit::RateLimit;

/// One GCRA decision; `None` to start now, else the wait.
pub(super) async fn acquire_rate(
    broker: &RedisBroker,
    scope: &str,
    limit: RateLimit,
    patience: Duration,
    now_us: Option<i64>,
) -> redis::RedisResult<Option<Duration>> {
    let wait_us: i64 = broker
        .scripts
        .rate_acquire
        .key(broker.keys.rate(scope))
        .arg(limit.interval_us())
        .arg(limit.tolerance_us())
        .arg(patience.as_micros() as u64)
        .arg(now_us.map(|us| us.to_string()).unwrap_or_default())
        .invoke_async(&mut broker.conn())
        .await?;
    Ok((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
}

/// Take or keep `holder`'s slot of `scope`.
pub(super) async fn acquire_slot(
    broker: &RedisBroker,
    scope: &str,
    holder: &str,
    max: u32,
    lease: Duration,
) -> redis::RedisResult<bool> {
    let taken: i64 = broker
        .scripts
        .slot_acquire
        .key(broker.keys.slots(scope))
        .arg(holder)
        .arg(max)
        .arg(lease.as_millis().max(1) as u64)
        .invoke_async(&mut broker.conn())
        .await?;
    Ok(taken == 1)
}

/// Extend each held slot's lease, one call per slot (each its own key, so its own slot on a
/// cluster); how many were still held.
pub(super) async fn renew_slots(
    broker: &RedisBroker,
    held: &[(String, String)],
    lease: Duration,
) -> redis::RedisResult<usize> {
    let mut renewed = 0;
    for (scope, holder) in held {
        let kept: i64 = broker
            .scripts
            .slot_renew
            .key(broker.keys.slots(scope))
            .arg(holder)
            .arg(lease.as_millis().max(1) as u64)
            .invoke_async(&mut broker.conn())
            .await?;
        renewed += kept as usize;
    }
    Ok(renewed)
}

/// Give `holder`'s slot of `scope` back.
pub(super) async fn release_slot(
    broker: &RedisBroker,
    scope: &str,
    holder: &str,
) -> redis::RedisResult<()> {
    let _: i64 = redis::cmd("ZREM")
        .arg(broker.keys.slots(scope))
        .arg(holder)
        .query_async(&mut broker.conn())
        .await?;
    Ok(())
}
