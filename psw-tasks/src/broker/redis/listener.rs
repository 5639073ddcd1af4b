//! The finished-job listener: one subscription per broker to `{ns}:finished`, fanned out to
//! every waiter in the process, and kept up across lost connections.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How long a new waiter waits for the subscription to be active: announcements made before it
/// would be missed. If Redis is slow or away, waiters still re-read records.
const SUBSCRIBED_WAIT: Duration = Duration::from_secs(2);

/// The server to subscribe on at a given try (from 0).
pub(super) type ServerFor =
    Box<dyn Fn(usize) -> BoxFuture<'static, redis::RedisResult<redis::Client>> + Send + Sync>;

/// The listener, started by the first waiter and stopped with the broker.
#[derive(Default)]
pub(super) struct Finished {
    listener: OnceLock<Listener>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The listener's events, and whether it is subscribed right now.
struct Listener {
    events: broadcast::Sender<Arc<str>>,
    subscribed: watch::Receiver<bool>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Finished {
    /// The ids of jobs announced on `channel` from now on, heard on the server `server` gives
    /// for each try (the one server, any node of a cluster: a classic `PUBLISH` reaches them
    /// all, or the master the sentinels name).
    pub(super) async fn subscribe(
        &self,
        server: ServerFor,
        channel: String,
    ) -> broadcast::Receiver<Arc<str>> {
        let listener = self.listener.get_or_init(|| self.start(server, channel));
        let events = listener.events.subscribe();
        let mut subscribed = listener.subscribed.clone();
        let _ = tokio::time::timeout(SUBSCRIBED_WAIT, subscribed.wait_for(|&on| on)).await;
        events
    }

    fn start(&self, server: ServerFor, channel: String) -> Listener {
        let (events, _) = broadcast::channel(4096);
        let (subscribed_tx, subscribed) = watch::channel(false);
        let sender = events.clone();
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            // The next try asks for the next server: a dead cluster node is not tried again
            // and again while the others answer.
            for attempt in 0.. {
                let outcome = match server(attempt).await {
                    Ok(client) => listen(&client, &channel, &sender, &subscribed_tx).await,
                    Err(err) => Err(err),
                };
                subscribed_tx.send_replace(false);
                match outcome {
                    Ok(()) => delay = Duration::from_millis(100),
                    Err(err) => {
                        tracing::warn!(error = %err, "finished-job listener lost its connection; waiters re-read records until it is back");
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
                tokio::time::sleep(delay).await;
            }
        });
        *self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        Listener { events, subscribed }
    }
}

/// Subscribe and pass on every announced id until the connection ends.
async fn listen(
    client: &redis::Client,
    channel: &str,
    events: &broadcast::Sender<Arc<str>>,
    subscribed: &watch::Sender<bool>,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    subscribed.send_replace(true);
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            continue;
        };
        for id in payload.split(' ').filter(|id| !id.is_empty()) {
            let _ = events.send(Arc::from(id));
        }
    }
    Ok(())
}
