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
    if let Ok(url) = std::env::var("REDIS_URL")
        && answers(&url)
    {
        return Ok(url);
    }
    let local = "redis://127.0.0.1:6379";
    if answers(local) {
        return Ok(local.to_owned());
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port: {e}"))?
        .port();
    // A watchdog shell stops the server when this test process is gone, so no run leaves a
    // stray server behind.
    let script = format!(
        "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
         --maxmemory-policy noeviction >/dev/null 2>&1 & server=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $server",
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
    while Instant::now() < deadline {
        if answers(&url) {
            return Ok(url);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "REDIS_URL is unset or does not answer, nothing answers on 127.0.0.1:6379, and \
         `redis-server` did not start on port {port} (install it: apt-get install redis-server)"
    ))
}

/// A key namespace of one test, on the test Redis; its keys are deleted on drop.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// A fresh namespace whose name starts with `label`.
    pub fn new(label: &str) -> Self {
        TestNamespace {
            name: format!("test-{label}-{:016x}", fastrand::u64(..)),
        }
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis URL.
    pub fn url(&self) -> &'static str {
        redis_url()
    }

    /// Settings pointing at the test Redis and this namespace.
    pub fn config(&self) -> Config {
        Config::redis(redis_url()).with_namespace(self.name.clone())
    }

    /// A client on the test Redis in this namespace.
    pub async fn client(&self) -> Client {
        Client::connect(&self.config())
            .await
            .expect("connect to the test Redis")
    }

    /// Every key of this namespace.
    pub fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(redis_url()).expect("test Redis URL");
        let mut conn = client.get_connection().expect("connect to the test Redis");
        let pattern = format!("{{{}}}:*", self.name);
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .expect("KEYS on the test Redis")
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys = self.keys();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
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
