//! From a URL to connections: `redis://` or `rediss://` (TLS on rustls with aws-lc-rs, with an
//! optional private CA), a Redis Cluster's nodes (`redis+cluster://host:port,host:port`), or
//! the sentinels of a master (`redis+sentinel://host:port,host:port/<master>`); the shared
//! connection every non-blocking command uses, the readers' own connections, and
//! [`RedisBroker`], which bundles them with the keys and scripts every command needs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};

use super::listener::{Finished, ServerFor};
use super::scripts::Scripts;
use crate::broker::DeadLetterLimits;
use crate::config::{BROKER_URL_FORM, REDIS_URL_FORM, SentinelUrl, cluster_nodes, sentinel_url};
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
    pub(super) endpoint: Endpoint,
    pub(super) keys: Keys,
    pub(super) commands: Conn,
    /// Shared with the waits a fetch on several slots leaves running (`fetch.rs`).
    pub(super) readers: Arc<Readers>,
    pub(super) finished: Finished,
    pub(super) scripts: Scripts,
    /// How much the dead-letter stream may hold.
    pub(super) dead_letter_limits: DeadLetterLimits,
    /// Queues this process has added to the set of queue names: a producer announces a queue
    /// once, so that `stats` sees jobs waiting where no worker listens, without a command more
    /// on every enqueue.
    pub(super) announced: Mutex<HashSet<String>>,
    /// Whether this process has checked the namespace's key layout (`queues::prepare`).
    pub(super) layout_checked: std::sync::atomic::AtomicBool,
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
        let endpoint = Endpoint::of(url, variable, ca_cert)?;
        let commands = endpoint
            .connect(RESPONSE_TIMEOUT)
            .await
            .map_err(|err| Error::connect(variable, redact::url(url), err))?;
        Ok(RedisBroker {
            keys,
            readers: Arc::new(Readers::new(endpoint.clone())),
            endpoint,
            commands,
            finished: Finished::default(),
            scripts: Scripts::new(),
            dead_letter_limits: DeadLetterLimits::default(),
            announced: Mutex::default(),
            layout_checked: Default::default(),
        })
    }

    /// Keep the dead letters within `limits`; older ones are trimmed, counted and logged.
    pub(crate) fn with_dead_letter_limits(mut self, limits: DeadLetterLimits) -> Self {
        self.dead_letter_limits = limits;
        self
    }

    /// The shared multiplexed connection, for every command that does not block.
    pub(super) fn conn(&self) -> Conn {
        self.commands.clone()
    }
}

/// How long the sentinels may take to name the master, and a new master to take a connection.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time between two questions to the sentinels from one connection: while a dead
/// master is still named (the sentinels take a second or two to agree it is down), every
/// failing command would ask again.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Where the broker's Redis is: one server, the nodes of a Redis Cluster, or the master a group
/// of sentinels names.
// Made once per broker and kept: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(super) enum Endpoint {
    Single(redis::Client),
    Cluster {
        /// The nodes to start from, and the CA to trust: each connection gets a client of its
        /// own, since a cluster client's bound on a whole request (retries, redirections and
        /// reconnections included) is set when the client is built.
        start: Vec<redis::ConnectionInfo>,
        root_cert: Option<Vec<u8>>,
        /// Each node on its own, for what is not routed by key: the finished channel is
        /// subscribed on one of them (a classic `PUBLISH` reaches every node of a cluster).
        nodes: Vec<redis::Client>,
    },
    Sentinel(Arc<Sentinels>),
}

/// What a connection needs to ask the sentinels for their master and to reach it.
pub(super) struct Sentinels {
    sentinels: Vec<redis::ConnectionAddr>,
    master: String,
    settings: redis::RedisConnectionInfo,
    tls: bool,
    root_cert: Option<Vec<u8>>,
}

impl Sentinels {
    fn of(
        url: &SentinelUrl,
        ca_cert: Option<&Path>,
        bad_url: impl Fn(String) -> Error,
    ) -> Result<Self> {
        use redis::IntoConnectionInfo;
        let sentinels = url
            .sentinels
            .iter()
            .map(|node| {
                node.as_str()
                    .into_connection_info()
                    .map(|info| info.addr().clone())
                    .map_err(|err| bad_url(err.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let settings = url
            .master_settings
            .as_str()
            .into_connection_info()
            .map_err(|err| bad_url(err.to_string()))?
            .redis_settings()
            .clone();
        if url.tls {
            install_tls_provider();
        }
        let root_cert = match ca_cert.filter(|_| url.tls) {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        let sentinels = Sentinels {
            sentinels,
            master: url.master.clone(),
            settings,
            tls: url.tls,
            root_cert,
        };
        // Built once here for its checks; connections build their own.
        sentinels.client().map_err(|err| bad_url(err.to_string()))?;
        Ok(sentinels)
    }

    /// A client that asks the sentinels, in turn, for the master (checking that it says it is
    /// one).
    fn client(&self) -> redis::RedisResult<SentinelClient> {
        let mut builder = SentinelClientBuilder::new(
            self.sentinels.clone(),
            &self.master,
            SentinelServerType::Master,
        )?
        .set_client_to_redis_db(self.settings.db())
        .set_client_to_redis_protocol(redis::ProtocolVersion::RESP2);
        if let Some(username) = self.settings.username() {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = self.settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(root_cert) = &self.root_cert {
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert.clone()),
                };
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        builder.build()
    }
}

impl Endpoint {
    /// The endpoint of `url` (read from `variable`, named in errors).
    pub(super) fn of(url: &str, variable: &'static str, ca_cert: Option<&Path>) -> Result<Self> {
        let bad_url = |why: String| {
            Error::config(
                variable,
                redact::url(url),
                format!("{BROKER_URL_FORM} ({why})"),
            )
        };
        if let Some(sentinel) = sentinel_url(url) {
            if sentinel.sentinels.is_empty() || sentinel.master.is_empty() {
                return Err(bad_url("no sentinel or no master named".to_owned()));
            }
            let sentinels = Sentinels::of(&sentinel, ca_cert, bad_url)?;
            return Ok(Endpoint::Sentinel(Arc::new(sentinels)));
        }
        let Some(nodes) = cluster_nodes(url) else {
            return Ok(Endpoint::Single(client(url, variable, ca_cert)?));
        };
        if nodes.is_empty() {
            return Err(bad_url("no node named".to_owned()));
        }
        let nodes = nodes
            .iter()
            .map(|node| client(node, variable, ca_cert))
            .collect::<Result<Vec<_>>>()?;
        let start: Vec<redis::ConnectionInfo> = nodes
            .iter()
            .map(|node| node.get_connection_info().clone())
            .collect();
        let root_cert = match ca_cert.filter(|_| url.starts_with("rediss+cluster://")) {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        // Built once here for its checks of the URL; connections build their own.
        cluster_client(&start, root_cert.as_ref(), RESPONSE_TIMEOUT)
            .map_err(|err| bad_url(err.to_string()))?;
        Ok(Endpoint::Cluster {
            start,
            root_cert,
            nodes,
        })
    }

    /// A new connection whose replies may take up to `response_timeout`.
    pub(super) async fn connect(&self, response_timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Endpoint::Single(client) => client
                .get_connection_manager_with_config(settings(response_timeout))
                .await
                .map(Conn::Single),
            Endpoint::Cluster {
                start, root_cert, ..
            } => cluster_client(start, root_cert.as_ref(), response_timeout)?
                .get_async_connection()
                .await
                .map(|conn| Conn::Cluster(Box::new(conn))),
            Endpoint::Sentinel(sentinels) => {
                // Boxed: the sentinel lookup's future is deep, and every caller's would hold it.
                Box::pin(Followed::connect(sentinels, response_timeout))
                    .await
                    .map(Conn::Sentinel)
            }
        }
    }

    /// The server to subscribe on at the `attempt`th try (from 0): the one server, each node
    /// of a cluster in turn (the next after one that failed), or the master the sentinels
    /// name now.
    pub(super) fn subscriber(&self) -> ServerFor {
        let endpoint = self.clone();
        Box::new(move |attempt| {
            let endpoint = endpoint.clone();
            Box::pin(async move {
                match endpoint {
                    Endpoint::Single(client) => Ok(client),
                    Endpoint::Cluster { nodes, .. } => Ok(nodes[attempt % nodes.len()].clone()),
                    Endpoint::Sentinel(sentinels) => {
                        let mut asking = sentinels.client()?;
                        timed(asking.async_get_client()).await
                    }
                }
            })
        })
    }
}

/// `future`, or a timeout error after [`FOLLOW_TIMEOUT`].
async fn timed<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(FOLLOW_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the sentinels or their master did not answer in time",
            )))
        })
}

/// A connection to the master a group of sentinels names. When the server it holds stops
/// answering or refuses a write (it is a replica now), it asks the sentinels again and moves
/// to the master they name: after a failover it carries on by itself.
#[derive(Clone)]
pub(crate) struct Followed(Arc<Following>);

struct Following {
    /// The sentinels' client, and when they were last asked; locked while asking, so that
    /// one connection asks once at a time.
    asking: tokio::sync::Mutex<(SentinelClient, Option<Instant>)>,
    response_timeout: Duration,
    master: Mutex<Master>,
}

#[derive(Clone)]
struct Master {
    /// `host:port`, to tell a new master from the one held.
    address: String,
    conn: ConnectionManager,
}

impl Followed {
    async fn connect(
        sentinels: &Sentinels,
        response_timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let mut asking = sentinels.client()?;
        let master = timed(async {
            let client = asking.async_get_client().await?;
            Master::of(client, response_timeout).await
        })
        .await?;
        Ok(Followed(Arc::new(Following {
            asking: tokio::sync::Mutex::new((asking, Some(Instant::now()))),
            response_timeout,
            master: Mutex::new(master),
        })))
    }

    fn master(&self) -> Master {
        self.0
            .master
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Ask the sentinels for the master, the one at `failed` having failed a command; take a
    /// connection to it if it is another. Whether the connection holds another master now.
    async fn follow(&self, failed: &str) -> bool {
        let mut asking = self.0.asking.lock().await;
        if self.master().address != failed {
            // Another command of this connection moved it meanwhile.
            return true;
        }
        let (sentinels, asked) = &mut *asking;
        if asked.is_some_and(|at| at.elapsed() < FOLLOW_INTERVAL) {
            return false;
        }
        *asked = Some(Instant::now());
        let found = timed(async {
            let client = sentinels.async_get_client().await?;
            if address(&client) == failed {
                return Ok(None);
            }
            Master::of(client, self.0.response_timeout).await.map(Some)
        })
        .await;
        match found {
            Ok(Some(master)) => {
                tracing::warn!(from = failed, to = %master.address, "the sentinels name a new master; moved to it");
                *self
                    .0
                    .master
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = master;
                true
            }
            Ok(None) => false,
            Err(err) => {
                tracing::debug!(error = %err, "no master from the sentinels yet");
                false
            }
        }
    }

    /// After `err` from the master at `failed`: follow the sentinels if it says the master
    /// may be gone, and whether to send the command again. A write refused as read-only was
    /// not applied, so it goes again to a new master; after any other failure the command may
    /// have been applied, so the error is returned, and the caller's own retries reach the new
    /// master.
    async fn send_again(&self, failed: &str, err: &redis::RedisError) -> bool {
        if !master_lost(err) {
            return false;
        }
        let moved = self.follow(failed).await;
        moved && err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    }
}

impl Master {
    async fn of(client: redis::Client, response_timeout: Duration) -> redis::RedisResult<Self> {
        let address = address(&client);
        // Few reconnection tries: while the manager retries a dead master (six tries, waits
        // doubling from 100 ms), each command waits with it, seen holding an enqueue 9.5 s
        // where the sentinels had named the new master in 2.5; failing fast lets the
        // connection ask them.
        let settings = settings(response_timeout)
            .set_number_of_retries(1)
            .set_max_delay(FOLLOW_INTERVAL);
        let conn = client.get_connection_manager_with_config(settings).await?;
        Ok(Master { address, conn })
    }
}

fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// Whether `err` says the server held may no longer be the master: it is gone, or it refuses
/// writes as a replica.
fn master_lost(err: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// A cluster client whose every request, retries and redirections included, ends within
/// `response_timeout`. Without that overall bound the client retries a request 16 times, its
/// waits growing to minutes, and a worker whose cluster is gone could not stop.
fn cluster_client(
    start: &[redis::ConnectionInfo],
    root_cert: Option<&Vec<u8>>,
    response_timeout: Duration,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = ClusterClient::builder(start.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout)
        .overall_response_timeout(Some(response_timeout));
    if let Some(root_cert) = root_cert {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert.clone()),
        });
    }
    builder.build()
}

/// A connection for commands: one server's (reconnecting), or a cluster's, which routes each
/// command to the node of its keys' slot and follows the slots when they move (a failover).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(Box<ClusterConnection>),
    Sentinel(Followed),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
            Conn::Sentinel(conn) => Box::pin(async move {
                let mut master = conn.master();
                match master.conn.req_packed_command(cmd).await {
                    Err(err) if conn.send_again(&master.address, &err).await => {
                        conn.master().conn.req_packed_command(cmd).await
                    }
                    other => other,
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(conn) => Box::pin(async move {
                let mut master = conn.master();
                match master
                    .conn
                    .req_packed_commands(pipeline, offset, count)
                    .await
                {
                    Err(err) if conn.send_again(&master.address, &err).await => {
                        let mut master = conn.master();
                        master
                            .conn
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    }
                    other => other,
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
            Conn::Sentinel(conn) => conn.master().conn.get_db(),
        }
    }
}

impl Conn {
    /// Run `cmd`, which names no key (`SCAN`), on the node that holds `key`'s slot: on one
    /// server, just run it.
    pub(super) async fn on_node_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(_) | Conn::Sentinel(_) => cmd.query_async(self).await,
            Conn::Cluster(conn) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let node = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(node));
                let value = conn.route_command(cmd.clone(), routing).await?;
                Ok(redis::FromRedisValue::from_redis_value(value)?)
            }
        }
    }
}

/// Connections for blocking reads, one per read at a time: on the shared multiplexed
/// connection a blocked XREADGROUP would hold up every other command.
pub(super) struct Readers {
    endpoint: Endpoint,
    idle: tokio::sync::Mutex<Vec<Conn>>,
}

impl Readers {
    pub(super) fn new(endpoint: Endpoint) -> Self {
        Readers {
            endpoint,
            idle: tokio::sync::Mutex::default(),
        }
    }

    /// An idle reader, or a new one.
    pub(super) async fn take(&self) -> redis::RedisResult<Conn> {
        if let Some(conn) = self.idle.lock().await.pop() {
            return Ok(conn);
        }
        self.endpoint
            .connect(MAX_BLOCK + Duration::from_secs(20))
            .await
    }

    /// Give back a reader whose last command succeeded. One that failed is dropped rather than
    /// pooled: the manager would reconnect it, but a fresh one is as cheap and surely clean.
    pub(super) async fn give_back(&self, conn: Conn) {
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
            let root_cert = read_ca(path)?;
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

fn read_ca(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| {
        Error::config(
            "PSW_REDIS_CA_CERT",
            path.display().to_string(),
            format!("a readable PEM file with the CA certificate of the Redis server ({err})"),
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_its_nodes_with_their_credentials() {
        assert_eq!(
            cluster_nodes("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001/"),
            Some(vec![
                "redis://app:s3cret@10.0.0.1:7000".to_owned(),
                "redis://app:s3cret@10.0.0.2:7001".to_owned(),
            ])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://h:7000"),
            Some(vec!["rediss://h:7000".to_owned()])
        );
        assert_eq!(cluster_nodes("redis://h:6379"), None);
    }

    #[test]
    fn a_cluster_url_without_nodes_is_a_config_error() {
        let Err(err) = Endpoint::of("redis+cluster://:pw@/", "REDIS_URL", None) else {
            panic!("accepted a cluster of no node");
        };
        let err = err.to_string();
        assert!(err.contains("REDIS_URL"), "{err}");
        assert!(err.contains("redis+cluster://"), "{err}");
        assert!(!err.contains("pw"), "the password is masked: {err}");
    }
}
