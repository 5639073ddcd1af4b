//! Test support: a reachable Redis and a fresh key namespace per test, removed afterwards; and
//! [`imports`], which holds a crate's modules to the layers of its `ARCHITECTURE.md`.
//!
//! The Redis is `REDIS_URL` when it answers, else one on 127.0.0.1:6379, else a
//! `redis-server` started here on a free port (and stopped when the test process exits).
//! Without any of these, tests fail with a message that says what to install.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::config::Config;

pub mod imports;

/// The URL of a Redis that answers PING, found or started once per process.
pub fn redis_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match find_or_start() {
        Ok(url) => url,
        Err(why) => panic!("no Redis for the tests: {why}"),
    })
}

fn answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut conn).is_ok()
}

fn find_or_start() -> Result<String, String> {
    // A process a test started on a cluster (its REDIS_URL the cluster's) is told the single
    // test Redis of its parent, to count in the same place.
    for variable in ["PSW_TEST_REDIS_URL", "REDIS_URL"] {
        if let Ok(url) = std::env::var(variable)
            && answers(&url)
        {
            return Ok(url);
        }
    }
    let local = "redis://127.0.0.1:6379";
    if answers(local) {
        return Ok(local.to_owned());
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port: {e}"))?
        .port();
    start_watched_server(port, "", "", "").map_err(|why| {
        format!(
            "REDIS_URL is unset or does not answer, nothing answers on 127.0.0.1:6379, and {why}"
        )
    })
}

/// Start `redis-server` on `port` with the configuration file `config` (none if empty) and
/// `options`, in the current directory, and wait until it answers: its URL. A watchdog shell
/// stops the server (and runs `cleanup`) when this test process is gone, so no run leaves a
/// stray server behind.
fn start_watched_server(
    port: u16,
    config: &str,
    options: &str,
    cleanup: &str,
) -> Result<String, String> {
    let script = format!(
        "redis-server {config} --port {port} --bind 127.0.0.1 --save '' --appendonly no \
         --maxmemory-policy noeviction {options} >/dev/null 2>&1 & server=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $server; {cleanup}",
        parent = std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run sh to start redis-server: {e}"))?;
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(&url) {
        if Instant::now() > deadline {
            return Err(format!(
                "`redis-server {options}` did not start on port {port} (install it: apt-get install redis-server)"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(url)
}

/// A Redis Cluster of three masters, each with a replica, on loopback ports.
#[derive(Debug)]
pub struct TestCluster {
    /// `redis+cluster://` with three of its nodes.
    pub url: String,
    /// Every node, as a `redis://` URL of its own.
    pub nodes: Vec<String>,
}

/// The test cluster: `PSW_TEST_CLUSTER_NODES` (comma-separated `host:port` of every node of a
/// running cluster) when set, else one started here once per process from `redis-server
/// --cluster-enabled yes` nodes and `redis-cli --cluster create` (stopped when the test
/// process exits). Without `redis-server` and `redis-cli`, tests fail saying so.
pub fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let nodes = match std::env::var("PSW_TEST_CLUSTER_NODES") {
            Ok(nodes) => Ok(nodes.split(',').map(str::to_owned).collect()),
            Err(_) => start_cluster_nodes(),
        };
        nodes
            .and_then(ready_cluster)
            .unwrap_or_else(|why| panic!("no Redis Cluster for the tests: {why}"))
    })
}

/// A server of a cluster or of a sentinel group, as a test that kills it needs it.
#[derive(Debug, Clone)]
pub struct RedisNode {
    /// `redis://host:port`.
    pub url: String,
    /// Its process id.
    pub pid: u32,
}

impl TestCluster {
    /// A cluster of its own, started here (for a test that kills its nodes): leaked, so that
    /// namespaces on it can outlive the test's borrows.
    pub fn start() -> Result<&'static TestCluster, String> {
        let cluster = ready_cluster(start_cluster_nodes()?)?;
        Ok(Box::leak(Box::new(cluster)))
    }

    /// The master that holds `key`'s slot now.
    pub fn master_of(&self, key: &str) -> Result<RedisNode, String> {
        let fail = |e: redis::RedisError| e.to_string();
        for node in &self.nodes {
            let Ok(client) = redis::Client::open(node.as_str()) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500))
            else {
                continue;
            };
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut conn)
                .map_err(fail)?;
            let ranges: Vec<(i64, i64, (String, i64))> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Vec<redis::Value>>(&mut conn)
                .map_err(fail)?
                .into_iter()
                .filter_map(|range| match range {
                    redis::Value::Array(parts) if parts.len() >= 3 => {
                        let start = redis::from_redis_value(parts[0].clone()).ok()?;
                        let end = redis::from_redis_value(parts[1].clone()).ok()?;
                        let master = match &parts[2] {
                            redis::Value::Array(node) if node.len() >= 2 => (
                                redis::from_redis_value(node[0].clone()).ok()?,
                                redis::from_redis_value(node[1].clone()).ok()?,
                            ),
                            _ => return None,
                        };
                        Some((start, end, master))
                    }
                    _ => None,
                })
                .collect();
            let Some((_, _, (host, port))) = ranges
                .into_iter()
                .find(|(start, end, _)| (*start..=*end).contains(&slot))
            else {
                return Err(format!("no master serves slot {slot}"));
            };
            let url = format!("redis://{host}:{port}");
            let pid = pid_of(&url).ok_or_else(|| format!("no process id from {url}"))?;
            return Ok(RedisNode { url, pid });
        }
        Err("no node of the cluster answers".to_owned())
    }
}

impl TestCluster {
    /// Whether a node that answers reports the cluster down (`cluster_state:fail`): a slot
    /// has no master.
    pub fn is_down(&self) -> bool {
        self.nodes.iter().any(|node| {
            redis::Client::open(node.as_str())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut conn| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut conn))
                .is_ok_and(|info| info.contains("cluster_state:fail"))
        })
    }

    /// Tell every replica not to take over a failed master: a master killed now leaves its
    /// slots unserved (the cluster answers `CLUSTERDOWN`) until it comes back.
    pub fn forbid_failover(&self) -> Result<(), String> {
        for node in &self.nodes {
            let client = redis::Client::open(node.as_str()).map_err(|e| e.to_string())?;
            let mut conn = client.get_connection().map_err(|e| e.to_string())?;
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-replica-no-failover")
                .arg("yes")
                .query::<()>(&mut conn)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The process id of the Redis at `url`, from `INFO server`.
fn pid_of(url: &str) -> Option<u32> {
    let info: String = query(url, redis::cmd("INFO").arg("server")).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// The cluster of `nodes` (`host:port`) once every node says it is up.
fn ready_cluster(nodes: Vec<String>) -> Result<TestCluster, String> {
    let urls: Vec<String> = nodes.iter().map(|node| format!("redis://{node}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = urls.iter().all(|url| cluster_ready(url));
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the cluster of {} did not report cluster_state:ok within 30 s",
                nodes.join(",")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(TestCluster {
        url: format!("redis+cluster://{}", nodes[..3.min(nodes.len())].join(",")),
        nodes: urls,
    })
}

/// Whether a node says its cluster is up and knows all 16384 slots, and, for a replica, that
/// it has its master's data: a replica still in its first sync cannot be promoted, and a
/// failover test would wait for nothing.
fn cluster_ready(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    let cluster_ok = redis::cmd("CLUSTER")
        .arg("INFO")
        .query::<String>(&mut conn)
        .is_ok_and(|info| {
            info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
        });
    let replicated = redis::cmd("INFO")
        .arg("replication")
        .query::<String>(&mut conn)
        .is_ok_and(|info| {
            (info.contains("role:master") && !info.contains("connected_slaves:0"))
                || (info.contains("role:slave") && info.contains("master_link_status:up"))
        });
    cluster_ok && replicated
}

/// A free loopback port whose cluster bus port (10000 above it) is free too.
fn free_cluster_port() -> Result<u16, String> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free pair of ports for a cluster node".to_owned())
}

fn start_cluster_nodes() -> Result<Vec<String>, String> {
    let dir = std::env::temp_dir().join(format!("psw-test-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let mut nodes = Vec::new();
    for _ in 0..6 {
        let port = free_cluster_port()?;
        // The node timeout is short so that a failover test sees its replica promoted in
        // seconds.
        let dir = dir.display();
        start_watched_server(
            port,
            "",
            &format!(
                "--dir {dir} --cluster-enabled yes --cluster-config-file nodes-{port}.conf \
                 --cluster-node-timeout 2000"
            ),
            &format!("rm -f {dir}/nodes-{port}.conf"),
        )?;
        let node = format!("127.0.0.1:{port}");
        nodes.push(node);
    }
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&nodes)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-cli (install redis-tools): {e}"))?;
    if !created.status.success() {
        return Err(format!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        ));
    }
    Ok(nodes)
}

/// The name the test sentinels know their master by.
const SENTINEL_MASTER: &str = "psw";

/// A master, its replica and three sentinels watching them, on loopback ports.
#[derive(Debug)]
pub struct TestSentinels {
    /// `redis+sentinel://` with the three sentinels and the master's name.
    pub url: String,
    /// The master and the replica, as `redis://` URLs.
    pub servers: Vec<String>,
    /// The sentinels, as `redis://` URLs.
    pub sentinels: Vec<String>,
}

impl TestSentinels {
    /// A group of its own, started here (for a test that kills its master), stopped when the
    /// test process exits; leaked, as [`TestCluster::start`]. The sentinels think a master
    /// down after a second without an answer, so a failover takes two or three.
    pub fn start() -> Result<&'static TestSentinels, String> {
        let dir = std::env::temp_dir().join(format!(
            "psw-test-sentinel-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let free_port = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|addr| addr.port())
                .map_err(|e| format!("cannot find a free port: {e}"))
        };
        // In the group's directory: a replica stores the copy it syncs from as dump.rdb.
        let in_dir = format!("--dir {}", dir.display());
        let master_port = free_port()?;
        let master = start_watched_server(master_port, "", &in_dir, "")?;
        let replica = start_watched_server(
            free_port()?,
            "",
            &format!("{in_dir} --replicaof 127.0.0.1 {master_port}"),
            &format!("rm -f {}/dump.rdb", dir.display()),
        )?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port()?;
            // A sentinel rewrites its configuration file, so each has one of its own.
            let config = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n"
                ),
            )
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
            let config = config.display().to_string();
            sentinels.push(start_watched_server(
                port,
                &config,
                "--sentinel",
                &format!("rm -f {config}"),
            )?);
        }
        let group = TestSentinels {
            url: format!(
                "redis+sentinel://{}/{SENTINEL_MASTER}",
                sentinels
                    .iter()
                    .map(|url| url.trim_start_matches("redis://"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            servers: vec![master, replica],
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !group.ready() {
            if Instant::now() > deadline {
                return Err(
                    "the sentinels did not all see the master, its replica and each other within 30 s"
                        .to_owned(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Box::leak(Box::new(group)))
    }

    /// Whether the replica has its master's data and every sentinel knows the replica and
    /// the two other sentinels: before that, a killed master would not be failed over.
    fn ready(&self) -> bool {
        let synced = query(&self.servers[1], redis::cmd("INFO").arg("replication"))
            .is_ok_and(|info: String| info.contains("master_link_status:up"));
        synced
            && self.sentinels.iter().all(|sentinel| {
                let known = |what: &str| {
                    query::<Vec<redis::Value>>(
                        sentinel,
                        redis::cmd("SENTINEL").arg(what).arg(SENTINEL_MASTER),
                    )
                    .map_or(0, |found| found.len())
                };
                known("replicas") >= 1 && known("sentinels") >= 2
            })
    }

    /// The master the sentinels name now.
    pub fn master(&self) -> Result<RedisNode, String> {
        let mut last = "no sentinel answers".to_owned();
        for sentinel in &self.sentinels {
            match query::<(String, u16)>(
                sentinel,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(SENTINEL_MASTER),
            ) {
                Ok((host, port)) => {
                    let url = format!("redis://{host}:{port}");
                    let pid = pid_of(&url).ok_or_else(|| format!("no process id from {url}"))?;
                    return Ok(RedisNode { url, pid });
                }
                Err(err) => last = err.to_string(),
            }
        }
        Err(last)
    }
}

/// `cmd`'s reply from the Redis at `url`, on a connection of its own.
fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    cmd.query(&mut conn)
}

/// Where a test namespace lives.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// The test Redis ([`redis_url`]).
    Single,
    Cluster(&'static TestCluster),
    Sentinels(&'static TestSentinels),
}

/// A key namespace of one test, on the test Redis (or a test cluster, or a sentinel group's
/// master); its keys are deleted on drop.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    place: Place,
}

impl TestNamespace {
    /// A fresh namespace whose name starts with `label`.
    pub fn new(label: &str) -> Self {
        TestNamespace {
            name: format!("test-{label}-{:016x}", fastrand::u64(..)),
            place: Place::Single,
        }
    }

    /// A fresh namespace on the test cluster ([`cluster`]).
    pub fn on_cluster(label: &str) -> Self {
        TestNamespace::on(cluster(), label)
    }

    /// A fresh namespace on `cluster`.
    pub fn on(cluster: &'static TestCluster, label: &str) -> Self {
        let mut namespace = TestNamespace::new(label);
        namespace.place = Place::Cluster(cluster);
        namespace
    }

    /// A fresh namespace on the master of `sentinels`.
    pub fn on_sentinels(sentinels: &'static TestSentinels, label: &str) -> Self {
        let mut namespace = TestNamespace::new(label);
        namespace.place = Place::Sentinels(sentinels);
        namespace
    }

    /// A plain connection to where the namespace lives (a cluster connection on a cluster),
    /// for a test's own commands on its keys.
    pub fn connection(&self) -> Box<dyn redis::ConnectionLike> {
        match self.place {
            Place::Cluster(cluster) => Box::new(
                redis::cluster::ClusterClient::new(cluster.nodes.clone())
                    .and_then(|client| client.get_connection())
                    .expect("connect to the test cluster"),
            ),
            Place::Sentinels(sentinels) => Box::new(
                sentinels
                    .master()
                    .map_err(|why| panic!("no master from the test sentinels: {why}"))
                    .and_then(|master| redis::Client::open(master.url))
                    .and_then(|client| client.get_connection())
                    .expect("connect to the test sentinels' master"),
            ),
            Place::Single => Box::new(
                redis::Client::open(redis_url())
                    .and_then(|client| client.get_connection())
                    .expect("connect to the test Redis"),
            ),
        }
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of `lane`'s stream in this namespace (`{ns:queue}:queue:<lane>`), for a test's
    /// own commands on it.
    pub fn stream_key(&self, lane: &str) -> String {
        self.key_names().stream(lane)
    }

    /// The key of `lane`'s delayed set in this namespace.
    pub fn delayed_key(&self, lane: &str) -> String {
        self.key_names().delayed(lane)
    }

    fn key_names(&self) -> crate::keys::Keys {
        crate::keys::Keys::new(&self.name).expect("test namespaces have valid names")
    }

    /// The Redis URL (a `redis+cluster://` one on a cluster, `redis+sentinel://` on
    /// sentinels).
    pub fn url(&self) -> &'static str {
        match self.place {
            Place::Cluster(cluster) => &cluster.url,
            Place::Sentinels(sentinels) => &sentinels.url,
            Place::Single => redis_url(),
        }
    }

    /// Settings pointing at the test Redis and this namespace.
    pub fn config(&self) -> Config {
        Config::redis(self.url()).with_namespace(self.name.clone())
    }

    /// Each server the namespace's keys may be on: the test Redis, and every cluster node or
    /// sentinel group's server.
    fn servers(&self) -> Vec<String> {
        let elsewhere = match self.place {
            Place::Cluster(cluster) => &cluster.nodes[..],
            Place::Sentinels(sentinels) => &sentinels.servers[..],
            Place::Single => &[],
        };
        // And the test Redis, where tasks of a test elsewhere count their runs.
        elsewhere
            .iter()
            .cloned()
            .chain([redis_url().to_owned()])
            .collect()
    }

    /// A client on the test Redis in this namespace.
    pub async fn client(&self) -> Client {
        Client::connect(&self.config())
            .await
            .expect("connect to the test Redis")
    }

    /// Every key of this namespace.
    pub fn keys(&self) -> Vec<String> {
        // A server elsewhere that does not answer (a test killed it) holds nothing to find;
        // the one test Redis must answer.
        let mut keys: Vec<String> = Vec::new();
        for server in self.servers() {
            match keys_on(&server, &self.name) {
                Ok(found) => keys.extend(found),
                Err(_) if server != redis_url() => {}
                Err(err) => panic!("KEYS on the test Redis: {err}"),
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

fn keys_on(server: &str, namespace: &str) -> redis::RedisResult<Vec<String>> {
    let client = redis::Client::open(server)?;
    let mut conn = client.get_connection()?;
    // `{ns}:…` and every queue's `{ns:queue}:…`.
    redis::cmd("KEYS")
        .arg(format!("{{{namespace}[}}:]*"))
        .query(&mut conn)
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // On a cluster, each node deletes what it holds (a replica refuses, its master does);
        // so do a sentinel group's master and replica.
        for server in self.servers() {
            let Ok(keys) = keys_on(&server, &self.name) else {
                continue;
            };
            if keys.is_empty() {
                continue;
            }
            let Ok(client) = redis::Client::open(server.as_str()) else {
                continue;
            };
            if let Ok(mut conn) = client.get_connection() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

/// Poll `check` every 20 ms until it holds; panic naming `what` after `limit`. Tests wait on
/// a condition with a deadline, never on a bare sleep.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pure hot-path pieces, reachable from the micro-benchmarks (they are not public API).
pub mod hot_path {
    use crate::envelope::{Envelope, JobId, VERSION};
    use crate::task::TaskOptions;

    /// An opaque envelope.
    #[derive(Debug)]
    pub struct SampleEnvelope(Envelope);

    /// An envelope with `payload` bytes of arguments, like the benchmark's jobs.
    pub fn sample_envelope(payload: usize) -> SampleEnvelope {
        SampleEnvelope(Envelope {
            v: VERSION,
            id: JobId::generate(),
            task: "bench.noop".to_owned(),
            queue: "default".to_owned(),
            args: rmp_serde::to_vec(&(serde_bytes::ByteBuf::from(vec![7u8; payload]),))
                .expect("encodable"),
            attempt: 0,
            retries: None,
            created_ms: 1_700_000_000_000,
            eta_ms: None,
            headers: Default::default(),
            errors: Vec::new(),
            errors_dropped: 0,
            expires_ms: None,
            unique_key: None,
            unique_release: None,
            debounce_key: None,
        })
    }

    /// Encode as enqueue does.
    pub fn encode(envelope: &SampleEnvelope) -> Vec<u8> {
        envelope.0.encode().expect("encodable")
    }

    /// Decode as the worker does.
    pub fn decode(bytes: &[u8]) -> usize {
        Envelope::decode(bytes).expect("decodable").args.len()
    }

    /// The next fire time after `after_ms` of a schedule, as the beat computes it.
    pub fn next_fire(schedule: &crate::Schedule, after_ms: i64) -> Option<i64> {
        schedule.next_after(after_ms)
    }

    /// The default backoff's delay after `attempt`.
    pub fn backoff(attempt: u32, unit_random: f64) -> std::time::Duration {
        crate::retry::backoff_delay(&TaskOptions::DEFAULT.backoff, attempt, unit_random)
    }
}
