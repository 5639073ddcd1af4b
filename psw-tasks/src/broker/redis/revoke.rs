//! Cancelled jobs: a sorted set of their ids scored by when (server ms, `revoke.lua`), which
//! every worker reads from where it left off.

use std::time::Duration;

use super::connection::RedisBroker;

/// Mark `job_id` cancelled, the mark kept for `keep`; when, on the server's clock.
pub(super) async fn revoke(
    broker: &RedisBroker,
    job_id: &str,
    keep: Duration,
) -> redis::RedisResult<i64> {
    broker
        .scripts
        .revoke
        .key(broker.keys.revoked())
        .arg(job_id)
        .arg(keep.as_millis().max(1) as u64)
        .invoke_async(&mut broker.conn())
        .await
}

/// The jobs cancelled at or after `since_ms`, each with when, oldest first.
pub(super) async fn revocations_since(
    broker: &RedisBroker,
    since_ms: i64,
) -> redis::RedisResult<Vec<(String, i64)>> {
    let pairs: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(broker.keys.revoked())
        .arg(since_ms)
        .arg("+inf")
        .arg("BYSCORE")
        .arg("WITHSCORES")
        .query_async(&mut broker.conn())
        .await?;
    Ok(pairs.into_iter().map(|(id, at)| (id, at as i64)).collect())
}
