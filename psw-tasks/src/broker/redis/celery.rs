//! The Redis a Celery deployment uses (`CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND`): its
//! queue lists, read reliably, and its result records. A message is moved atomically off the
//! queue list into a list of the taking worker's own (`BLMOVE`), and removed from there only
//! once it is a job of ours; the reaper puts back what a dead worker had taken.

use std::path::Path;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::connection::{Endpoint, Readers, client, commands};
use crate::error::{Error, Result};
use crate::keys::{self, Keys};

/// A connection to a Celery deployment's Redis, with the namespace whose keys hold what the
/// workers took.
pub(crate) struct CeleryRedis {
    keys: Keys,
    commands: ConnectionManager,
    readers: Readers,
}

impl CeleryRedis {
    /// Connect to the Redis at `url` (read from `variable`, named in errors).
    pub(crate) async fn connect(
        url: &str,
        variable: &'static str,
        ca_cert: Option<&Path>,
        namespace: &str,
    ) -> Result<Self> {
        let client = client(url, variable, ca_cert)?;
        Ok(CeleryRedis {
            keys: Keys::new(namespace)?,
            commands: commands(&client, url, variable).await?,
            readers: Readers::new(Endpoint::Single(client)),
        })
    }

    /// Take the oldest message of the Celery list `queue` into `consumer`'s own list, waiting
    /// up to `block` for one.
    pub(crate) async fn take(
        &self,
        queue: &str,
        consumer: &str,
        block: Duration,
    ) -> Result<Option<Vec<u8>>> {
        let taken = self.keys.celery_taken(queue, consumer);
        let _: i64 = redis::cmd("SADD")
            .arg(self.keys.celery_taken_lists())
            .arg(&taken)
            .query_async(&mut self.commands.clone())
            .await
            .map_err(Error::redis)?;
        let mut reader = self.readers.take().await.map_err(Error::redis)?;
        // Producers LPUSH, and Celery's consumers pop from the right: the right is the oldest.
        let message: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(queue)
            .arg(&taken)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(block.as_secs_f64())
            .query_async(&mut reader)
            .await
            .map_err(Error::redis)?;
        self.readers.give_back(reader).await;
        Ok(message)
    }

    /// A taken message is a job of ours now (or was given back): drop it from the list.
    pub(crate) async fn forget(&self, queue: &str, consumer: &str, message: &[u8]) -> Result<()> {
        let _: i64 = redis::cmd("LREM")
            .arg(self.keys.celery_taken(queue, consumer))
            .arg(1)
            .arg(message)
            .query_async(&mut self.commands.clone())
            .await
            .map_err(Error::redis)?;
        Ok(())
    }

    /// Give a taken message back to the Celery workers, untouched: to the end of the line of
    /// its queue (where producers add), in one step with its removal from the taken list.
    pub(crate) async fn give_back(
        &self,
        queue: &str,
        consumer: &str,
        message: &[u8],
    ) -> Result<()> {
        let _: () = redis::pipe()
            .atomic()
            .cmd("LREM")
            .arg(self.keys.celery_taken(queue, consumer))
            .arg(1)
            .arg(message)
            .ignore()
            .cmd("LPUSH")
            .arg(queue)
            .arg(message)
            .ignore()
            .query_async(&mut self.commands.clone())
            .await
            .map_err(Error::redis)?;
        Ok(())
    }

    /// Put back, at the head of their queues, the messages taken by consumers not in `live`
    /// that never became jobs (their worker died in between). How many were put back.
    pub(crate) async fn reap(&self, live: &[String]) -> Result<u64> {
        let mut conn = self.commands.clone();
        let lists: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.celery_taken_lists())
            .query_async(&mut conn)
            .await
            .map_err(Error::redis)?;
        let prefix = format!("{}:", self.keys.celery_taken_lists());
        let mut restored = 0;
        for list in lists {
            // `<prefix><queue>:<consumer>`: consumer names hold no `:`.
            let Some((queue, consumer)) = list
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.rsplit_once(':'))
            else {
                continue;
            };
            if live.iter().any(|name| name == consumer) {
                continue;
            }
            loop {
                let moved: Option<Vec<u8>> = redis::cmd("LMOVE")
                    .arg(&list)
                    .arg(queue)
                    .arg("LEFT")
                    .arg("RIGHT")
                    .query_async(&mut conn)
                    .await
                    .map_err(Error::redis)?;
                if moved.is_none() {
                    break;
                }
                restored += 1;
            }
            let _: i64 = redis::cmd("SREM")
                .arg(self.keys.celery_taken_lists())
                .arg(&list)
                .query_async(&mut conn)
                .await
                .map_err(Error::redis)?;
        }
        Ok(restored)
    }

    /// Add a message for the Celery workers to the list `queue`, where Celery's producers add.
    pub(crate) async fn send(&self, queue: &str, message: &str) -> Result<()> {
        let _: i64 = redis::cmd("LPUSH")
            .arg(queue)
            .arg(message)
            .query_async(&mut self.commands.clone())
            .await
            .map_err(Error::redis)?;
        Ok(())
    }

    /// The result record stored for a task id, as JSON text.
    pub(crate) async fn result(&self, task_id: &str) -> Result<Option<String>> {
        redis::cmd("GET")
            .arg(keys::celery_result(task_id))
            .query_async(&mut self.commands.clone())
            .await
            .map_err(Error::redis)
    }

    /// Store a task's result record where Celery's Redis backend keeps it, for `ttl`, and
    /// announce it on the channel of the same name, as that backend does (`AsyncResult.get`
    /// listens there).
    pub(crate) async fn store_result(
        &self,
        task_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<()> {
        let key = keys::celery_result(task_id);
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(record)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .ignore()
            .cmd("PUBLISH")
            .arg(&key)
            .arg(record)
            .ignore()
            .query_async(&mut self.commands.clone())
            .await
            .map_err(Error::redis)?;
        Ok(())
    }
}
