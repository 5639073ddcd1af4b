//! From a URL to connections: `redis://` or `rediss://` (TLS on rustls with aws-lc-rs, with an
//! optional private CA), the shared connection every non-blocking command uses, the readers'
//! own connections, and [`RedisBroker`], which bundles them with the keys and scripts every
//! command needs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::listener::Finished;
use super::scripts::Scripts;
use crate::broker::DeadLetterLimits;
use crate::config::REDIS_URL_FORM;
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::redact;

/// How long making a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the shared connection waits for a reply. Longer than the redis crate's 500 ms
/// default: a settle script of a thousand writes on a loaded server can take more.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest block a fetch may ask for; the readers' response timeout sits above it.
pub(super) const MAX_BLOCK: Duration = Duration::from_secs(10);

pub(crate) struct RedisBroker {
    pub(super) client: redis::Client,
    pub(super) keys: Keys,
    /// The start of every queue stream's key, to tell a stream's queue from its key.
    pub(super) queue_prefix: String,
    pub(super) commands: ConnectionManager,
    pub(super) readers: Readers,
    pub(super) finished: Finished,
    pub(super) scripts: Scripts,
    /// How much the dead-letter stream may hold.
    pub(super) dead_letter_limits: DeadLetterLimits,
    /// Queues this process has added to the set of queue names: a producer announces a queue
    /// once, so that `stats` sees jobs waiting where no worker listens, without a command more
    /// on every enqueue.
    pub(super) announced: Mutex<HashSet<String>>,
}

impl RedisBroker {
    /// Connect to the Redis at `url` (read from `variable`, named in errors), trusting the CA in
    /// `ca_cert` for `rediss://`, with the keys of `namespace`.
    pub(crate) async fn connect(
        url: &str,
        variable: &'static str,
        ca_cert: Option<&Path>,
        namespace: &str,
    ) -> Result<Self> {
        let keys = Keys::new(namespace)?;
        let client = client(url, variable, ca_cert)?;
        let commands = commands(&client, url, variable).await?;
        Ok(RedisBroker {
            queue_prefix: keys.stream(""),
            keys,
            readers: Readers::new(client.clone()),
            client,
            commands,
            finished: Finished::default(),
            scripts: Scripts::new(),
            dead_letter_limits: DeadLetterLimits::default(),
            announced: Mutex::default(),
        })
    }

    /// Keep the dead letters within `limits`; older ones are trimmed, counted and logged.
    pub(crate) fn with_dead_letter_limits(mut self, limits: DeadLetterLimits) -> Self {
        self.dead_letter_limits = limits;
        self
    }

    /// The shared multiplexed connection, for every command that does not block.
    pub(super) fn conn(&self) -> ConnectionManager {
        self.commands.clone()
    }
}

/// Connections for blocking reads, one per read at a time: on the shared multiplexed
/// connection a blocked XREADGROUP would hold up every other command.
pub(super) struct Readers {
    client: redis::Client,
    idle: tokio::sync::Mutex<Vec<ConnectionManager>>,
}

impl Readers {
    pub(super) fn new(client: redis::Client) -> Self {
        Readers {
            client,
            idle: tokio::sync::Mutex::default(),
        }
    }

    /// An idle reader, or a new one.
    pub(super) async fn take(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(conn) = self.idle.lock().await.pop() {
            return Ok(conn);
        }
        self.client
            .get_connection_manager_with_config(settings(MAX_BLOCK + Duration::from_secs(20)))
            .await
    }

    /// Give back a reader whose last command succeeded. One that failed is dropped rather than
    /// pooled: the manager would reconnect it, but a fresh one is as cheap and surely clean.
    pub(super) async fn give_back(&self, conn: ConnectionManager) {
        self.idle.lock().await.push(conn);
    }
}

fn install_tls_provider() {
    // rustls needs one process-wide provider; aws-lc-rs everywhere (mixing with ring panics).
    // Another part of the program may have installed it already, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The client of `url`, read from `variable`; with `ca_cert`, a `rediss://` server's
/// certificate is checked against that CA instead of the system's roots.
pub(super) fn client(
    url: &str,
    variable: &'static str,
    ca_cert: Option<&Path>,
) -> Result<redis::Client> {
    let bad_url = |err: redis::RedisError| {
        Error::config(
            variable,
            redact::url(url),
            format!("{REDIS_URL_FORM} ({err})"),
        )
    };
    let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
    if tls {
        install_tls_provider();
    }
    match ca_cert {
        Some(path) if tls => {
            let root_cert = std::fs::read(path).map_err(|err| {
                Error::config(
                    "PSW_REDIS_CA_CERT",
                    path.display().to_string(),
                    format!(
                        "a readable PEM file with the CA certificate of the Redis server ({err})"
                    ),
                )
            })?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(bad_url)
        }
        _ => redis::Client::open(url).map_err(bad_url),
    }
}

/// Settings of a connection whose replies may take up to `response_timeout`.
fn settings(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
}

/// The shared connection; failing to make it names the URL's variable and what to do.
pub(super) async fn commands(
    client: &redis::Client,
    url: &str,
    variable: &'static str,
) -> Result<ConnectionManager> {
    client
        .get_connection_manager_with_config(settings(RESPONSE_TIMEOUT))
        .await
        .map_err(|err| Error::connect(variable, redact::url(url), err))
}
