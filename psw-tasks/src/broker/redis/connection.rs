//! From a URL to connections: `redis://` or `rediss://` (TLS on rustls with aws-lc-rs, with an
//! optional private CA), or a Redis Cluster's nodes (`redis+cluster://host:port,host:port`);
//! the shared connection every non-blocking command uses, the readers' own connections, and
//! [`RedisBroker`], which bundles them with the keys and scripts every command needs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use super::listener::Finished;
use super::scripts::Scripts;
use crate::broker::DeadLetterLimits;
use crate::config::{BROKER_URL_FORM, REDIS_URL_FORM, cluster_nodes};
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
    /// The start of every queue stream's key, to tell a stream's queue from its key.
    pub(super) queue_prefix: String,
    pub(super) commands: Conn,
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
        let endpoint = Endpoint::of(url, variable, ca_cert)?;
        let commands = endpoint
            .connect(RESPONSE_TIMEOUT)
            .await
            .map_err(|err| Error::connect(variable, redact::url(url), err))?;
        Ok(RedisBroker {
            queue_prefix: keys.stream(""),
            keys,
            readers: Readers::new(endpoint.clone()),
            endpoint,
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
    pub(super) fn conn(&self) -> Conn {
        self.commands.clone()
    }
}

/// Where the broker's Redis is: one server, or the nodes of a Redis Cluster.
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
}

impl Endpoint {
    /// The endpoint of `url` (read from `variable`, named in errors).
    pub(super) fn of(url: &str, variable: &'static str, ca_cert: Option<&Path>) -> Result<Self> {
        let Some(nodes) = cluster_nodes(url) else {
            return Ok(Endpoint::Single(client(url, variable, ca_cert)?));
        };
        let bad_url = |why: String| {
            Error::config(
                variable,
                redact::url(url),
                format!("{BROKER_URL_FORM} ({why})"),
            )
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
        }
    }

    /// The servers to subscribe on, in the order to try them: the one server, or each node.
    pub(super) fn subscribers(&self) -> Vec<redis::Client> {
        match self {
            Endpoint::Single(client) => vec![client.clone()],
            Endpoint::Cluster { nodes, .. } => nodes.clone(),
        }
    }
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
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
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
            Conn::Single(conn) => cmd.query_async(conn).await,
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
