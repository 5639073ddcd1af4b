//! Configuration from the environment; every error names the variable and the expected form.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::celery::CeleryUnknownTasks;
use crate::error::{Error, Result};
use crate::keys::validate_name;
use crate::limit::{RateLimit, check_limit_name};
use crate::priority::parse_queue_list;
use crate::redact;

/// Dead letters kept unless `PSW_DLQ_MAX_LEN` says otherwise.
pub(crate) const DEFAULT_DEAD_LETTER_CAP: u64 = 100_000;
/// Bytes the dead letters may take unless `PSW_DLQ_MAX_BYTES` says otherwise.
pub(crate) const DEFAULT_DEAD_LETTER_BYTES: u64 = 256 * 1024 * 1024;

/// The URL schemes the redis client accepts: TCP, TLS and Unix sockets, by both names.
const REDIS_SCHEMES: [&str; 7] = [
    "redis://",
    "rediss://",
    "valkey://",
    "valkeys://",
    "redis+unix://",
    "valkey+unix://",
    "unix://",
];

/// The schemes of a Redis Cluster's URL (psw-tasks' own Redis only: Celery's Redis transport
/// does not run on a cluster).
const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster://", "rediss+cluster://"];

/// The schemes of a URL naming Redis Sentinels and the master they watch (psw-tasks' own
/// Redis only, as for a cluster).
const SENTINEL_SCHEMES: [&str; 2] = ["redis+sentinel://", "rediss+sentinel://"];

/// The form of a Redis URL, in words, for configuration errors.
pub(crate) const REDIS_URL_FORM: &str = "a redis://[user:password@]host[:port][/db], rediss:// (TLS) \
     or redis+unix:///path/to/socket[?db=N&pass=password] URL";

/// The form of psw-tasks' own Redis URL, which may name a cluster, in words.
pub(crate) const BROKER_URL_FORM: &str = "a redis://[user:password@]host[:port][/db], rediss:// (TLS), \
     redis+unix:///path/to/socket[?db=N&pass=password] or \
     redis+cluster://[user:password@]host:port,host:port (rediss+cluster:// for TLS) or \
     redis+sentinel://[user:password@]host:port,host:port/<master name>[/db] (rediss+sentinel:// \
     for TLS) URL";

/// The leases a worker accepts. Renewed every third, a lease shorter than 300 ms leaves no time
/// for a round trip under load (and a zero one would stop the renewer); past an hour, the jobs
/// of a dead worker would wait that long for another.
pub(crate) const LEASES: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(300)..=Duration::from_secs(3600);

/// Settings shared by clients and workers. Its `Debug` masks the credentials of the Redis URL.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Where Redis is; `None` runs on the in-process broker.
    pub redis_url: Option<String>,
    /// PEM file of the CA that signed the Redis server's certificate, for `rediss://` servers
    /// whose certificate the system does not trust (private CAs of managed Redis).
    pub redis_ca_cert: Option<PathBuf>,
    /// Prefix and hash tag of every key, so apps and tests can share one Redis.
    pub namespace: String,
    /// Jobs one worker runs at once.
    pub concurrency: usize,
    /// Deliveries a worker holds beyond its concurrency (waiting to run, or run and waiting for
    /// their outcome to be stored); `None` means three times
    /// the concurrency.
    pub prefetch: Option<usize>,
    /// Queues a worker consumes; `None` means the queues of the registered tasks.
    pub queues: Option<Vec<String>>,
    /// Weights of a worker's queues (`PSW_QUEUES=high:5,default:2,low:1`): each read starts
    /// with a queue drawn with a chance proportional to its weight (unlisted queues weigh 1).
    /// Empty means round-robin.
    pub queue_weights: BTreeMap<String, u32>,
    /// Queues split over several streams (`PSW_QUEUE_SHARDS=prices=8,mail=2`): producers
    /// spread a queue's jobs over its shards, which on a Redis Cluster land on different
    /// slots, and workers read them all. Every producer and worker of the namespace must have
    /// the same counts. Unlisted queues have one.
    pub queue_shards: BTreeMap<String, u32>,
    /// Read a worker's queues in their order, always the first first (`PSW_STRICT_PRIORITY`):
    /// a busy first queue starves the others.
    pub strict_priority: bool,
    /// Shared rate limits by name (`PSW_RATE_LIMITS=eodhd=1000/m,borsdata=100/10s burst 5`),
    /// for `#[task(rate_limit = "name")]` and `TaskContext::rate_limit`.
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// Shared concurrency limits by name (`PSW_CONCURRENCY_LIMITS=renderer=2`), for
    /// `#[task(concurrency = "name")]`.
    pub concurrency_limits: BTreeMap<String, u32>,
    /// How long job records are kept.
    pub result_ttl: Duration,
    /// Most dead letters kept; past it the oldest are trimmed, counted and logged.
    pub dead_letter_cap: u64,
    /// Most bytes the dead letters take in Redis; past it the oldest are trimmed and counted.
    pub dead_letter_max_bytes: u64,
    /// Most bytes of a delivery kept in its dead letter; longer ones are cut (and marked, as
    /// they cannot be replayed).
    pub dead_letter_max_payload: usize,
    /// Deliveries of one job before it is dead-lettered as poisoned (it crashed its worker
    /// each time).
    pub max_deliveries: u64,
    /// How long a job of a task no worker here knows waits before another look; after four
    /// looks it is dead-lettered (`unknown_task`). Covers rolling deploys.
    pub unknown_task_delay: Duration,
    /// Largest encoded job accepted by `enqueue`, in bytes.
    pub max_message_size: usize,
    /// Largest encoded result a job may store, in bytes; `None` means `max_message_size`. A job
    /// whose result is larger fails (kind `oversized_result`).
    pub max_result_size: Option<usize>,
    /// How long a job stays claimed without a heartbeat before another worker takes it over.
    pub lease: Duration,
    /// How long a stopping worker lets running jobs finish.
    pub shutdown_grace: Duration,
    /// Whether workers keep the metrics history: run-time and queue-wait histograms per task
    /// and each task's recent executions (`PSW_METRICS_HISTORY`, default on).
    pub metrics_history: bool,
    /// Celery queues (Redis lists) workers also take jobs from (`PSW_CELERY_QUEUES`,
    /// comma-separated; none by default): `docs/celery.md`.
    pub celery_queues: Vec<String>,
    /// The Redis of the Celery deployment whose queues are read (`CELERY_BROKER_URL`; when
    /// unset, psw-tasks' own Redis).
    pub celery_broker_url: Option<String>,
    /// Where Celery callers read results (`CELERY_RESULT_BACKEND`, a Redis URL): a job taken
    /// from a Celery queue stores its outcome there too, in Celery's format.
    pub celery_result_backend: Option<String>,
    /// Whether a job from a Celery message records `STARTED` for its caller when it starts, as
    /// Celery's `task_track_started` (`PSW_CELERY_TRACK_STARTED`, default off, as Celery's).
    pub celery_track_started: bool,
    /// What becomes of a Celery message for a task no worker here links
    /// (`PSW_CELERY_UNKNOWN_TASKS`: `leave`, the default, or `dead_letter`).
    pub celery_unknown_tasks: CeleryUnknownTasks,
    variable_of_url: &'static str,
}

// By hand, so that the password in the Redis URL never reaches a log; the destructuring
// makes a new field a compile error here rather than a silent omission.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Config {
            redis_url,
            redis_ca_cert,
            namespace,
            concurrency,
            prefetch,
            queues,
            queue_weights,
            queue_shards,
            strict_priority,
            rate_limits,
            concurrency_limits,
            result_ttl,
            dead_letter_cap,
            dead_letter_max_bytes,
            dead_letter_max_payload,
            max_deliveries,
            unknown_task_delay,
            max_message_size,
            max_result_size,
            lease,
            shutdown_grace,
            metrics_history,
            celery_queues,
            celery_broker_url,
            celery_result_backend,
            celery_track_started,
            celery_unknown_tasks,
            variable_of_url,
        } = self;
        f.debug_struct("Config")
            .field("redis_url", &redis_url.as_deref().map(redact::url))
            .field("redis_ca_cert", redis_ca_cert)
            .field("namespace", namespace)
            .field("concurrency", concurrency)
            .field("prefetch", prefetch)
            .field("queues", queues)
            .field("queue_weights", queue_weights)
            .field("queue_shards", queue_shards)
            .field("strict_priority", strict_priority)
            .field("rate_limits", rate_limits)
            .field("concurrency_limits", concurrency_limits)
            .field("result_ttl", result_ttl)
            .field("dead_letter_cap", dead_letter_cap)
            .field("dead_letter_max_bytes", dead_letter_max_bytes)
            .field("dead_letter_max_payload", dead_letter_max_payload)
            .field("max_deliveries", max_deliveries)
            .field("unknown_task_delay", unknown_task_delay)
            .field("max_message_size", max_message_size)
            .field("max_result_size", max_result_size)
            .field("lease", lease)
            .field("shutdown_grace", shutdown_grace)
            .field("metrics_history", metrics_history)
            .field("celery_queues", celery_queues)
            .field(
                "celery_broker_url",
                &celery_broker_url.as_deref().map(redact::url),
            )
            .field(
                "celery_result_backend",
                &celery_result_backend.as_deref().map(redact::url),
            )
            .field("celery_track_started", celery_track_started)
            .field("celery_unknown_tasks", celery_unknown_tasks)
            .field("variable_of_url", variable_of_url)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: None,
            redis_ca_cert: None,
            namespace: "psw".to_owned(),
            concurrency: 10,
            prefetch: None,
            queues: None,
            queue_weights: BTreeMap::new(),
            queue_shards: BTreeMap::new(),
            strict_priority: false,
            rate_limits: BTreeMap::new(),
            concurrency_limits: BTreeMap::new(),
            result_ttl: Duration::from_secs(24 * 3600),
            max_message_size: 512 * 1024,
            max_result_size: None,
            dead_letter_cap: DEFAULT_DEAD_LETTER_CAP,
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_BYTES,
            dead_letter_max_payload: 1024 * 1024,
            max_deliveries: 5,
            unknown_task_delay: Duration::from_secs(15),
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            metrics_history: true,
            celery_queues: Vec::new(),
            celery_broker_url: None,
            celery_result_backend: None,
            celery_track_started: false,
            celery_unknown_tasks: CeleryUnknownTasks::Leave,
            variable_of_url: "REDIS_URL",
        }
    }
}

impl Config {
    /// The defaults with a Redis URL.
    pub fn redis(url: impl Into<String>) -> Self {
        Config {
            redis_url: Some(url.into()),
            ..Config::default()
        }
    }

    /// Read the environment (see `README.md` for the variables).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read settings through `lookup` (a variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let defaults = Config::default();
        let get = |name: &'static str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (name, v))
        };
        let first = |names: &[&'static str]| names.iter().find_map(|name| get(name));

        let (variable_of_url, redis_url) = match first(&["REDIS_URL", "CELERY_BROKER_URL"]) {
            Some((name, url)) => {
                // A cluster or sentinels only in REDIS_URL: CELERY_BROKER_URL is Celery's too,
                // and Celery reads it as one server.
                let ours = name == "REDIS_URL";
                let form = if ours {
                    BROKER_URL_FORM
                } else {
                    REDIS_URL_FORM
                };
                let is = |schemes: &[&str]| ours && schemes.iter().any(|s| url.starts_with(s));
                let (is_cluster, is_sentinel) = (is(&CLUSTER_SCHEMES), is(&SENTINEL_SCHEMES));
                let known = is_cluster
                    || is_sentinel
                    || REDIS_SCHEMES.iter().any(|scheme| url.starts_with(scheme));
                let complete = if is_cluster {
                    cluster_nodes(&url).is_some_and(|nodes| hosts_given(&nodes))
                } else if is_sentinel {
                    sentinel_url(&url).is_some_and(|sentinel| {
                        hosts_given(&sentinel.sentinels) && !sentinel.master.is_empty()
                    })
                } else {
                    true
                };
                if !known || !complete {
                    return Err(Error::config(name, redact::url(&url), form));
                }
                (name, Some(url))
            }
            None => ("REDIS_URL", None),
        };

        // Our records live next to the queues (a record and its acknowledgement are one
        // script); Celery's result backend is where Celery callers read results, written in
        // Celery's format for the jobs taken from its queues.
        let redis_variable = |name: &'static str| -> Result<Option<String>> {
            match get(name) {
                Some((_, url)) if REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) => Ok(Some(url)),
                Some((name, url)) => Err(Error::config(name, redact::url(&url), REDIS_URL_FORM)),
                None => Ok(None),
            }
        };
        let celery_result_backend = redis_variable("CELERY_RESULT_BACKEND")?;
        let celery_broker_url = redis_variable("CELERY_BROKER_URL")?;
        let celery_queues = match get("PSW_CELERY_QUEUES") {
            Some((name, value)) => {
                let queues: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|queue| !queue.is_empty())
                    .map(str::to_owned)
                    .collect();
                for queue in &queues {
                    validate_name(name, queue)?;
                }
                queues
            }
            None => Vec::new(),
        };

        let celery_track_started = match get("PSW_CELERY_TRACK_STARTED") {
            Some((name, value)) => parse_bool(name, &value)?,
            None => false,
        };
        let celery_unknown_tasks = match get("PSW_CELERY_UNKNOWN_TASKS") {
            Some((name, value)) => CeleryUnknownTasks::parse(&value)
                .ok_or_else(|| Error::config(name, value, "`leave` or `dead_letter`"))?,
            None => CeleryUnknownTasks::Leave,
        };

        let redis_ca_cert = get("PSW_REDIS_CA_CERT").map(|(_, path)| PathBuf::from(path));

        let namespace = match get("PSW_NAMESPACE") {
            Some((name, value)) => {
                validate_name(name, &value)?;
                value
            }
            None => defaults.namespace,
        };

        let concurrency = match first(&["PSW_WORKER_CONCURRENCY", "CELERY_WORKER_CONCURRENCY"]) {
            Some((name, value)) => match value.parse::<usize>() {
                Ok(n) if (1..=100_000).contains(&n) => n,
                _ => {
                    return Err(Error::config(
                        name,
                        value,
                        "a whole number from 1 to 100000",
                    ));
                }
            },
            None => defaults.concurrency,
        };

        let prefetch = match get("PSW_WORKER_PREFETCH") {
            Some((name, value)) => match value.parse::<usize>() {
                Ok(n) if n <= 100_000 => Some(n),
                _ => {
                    return Err(Error::config(
                        name,
                        value,
                        "a whole number from 0 to 100000",
                    ));
                }
            },
            None => None,
        };

        let (queues, queue_weights) = match get("PSW_QUEUES") {
            Some((name, value)) => {
                let (queues, weights) = parse_queue_list(name, &value)?;
                (Some(queues), weights)
            }
            None => (None, BTreeMap::new()),
        };
        let queue_shards = match get("PSW_QUEUE_SHARDS") {
            Some((name, value)) => crate::shard::parse_shards(name, &value)?,
            None => BTreeMap::new(),
        };
        let strict_priority = match get("PSW_STRICT_PRIORITY") {
            Some((name, value)) => parse_bool(name, &value)?,
            None => false,
        };
        let metrics_history = match get("PSW_METRICS_HISTORY") {
            Some((name, value)) => parse_bool(name, &value)?,
            None => defaults.metrics_history,
        };

        let rate_limits = match get("PSW_RATE_LIMITS") {
            Some((name, value)) => parse_named(
                name,
                &value,
                "<name>=<count>/<period>, such as `eodhd=1000/m,borsdata=100/10s burst 5`",
                |limit| limit.parse::<RateLimit>().ok(),
            )?,
            None => BTreeMap::new(),
        };
        let concurrency_limits = match get("PSW_CONCURRENCY_LIMITS") {
            Some((name, value)) => parse_named(
                name,
                &value,
                "<name>=<slots>, slots a whole number of at least 1, such as `renderer=2,mailer=5`",
                |slots| slots.parse::<u32>().ok().filter(|&n| n >= 1),
            )?,
            None => BTreeMap::new(),
        };

        let duration = |names: &[&'static str], default: Duration| -> Result<Duration> {
            match first(names) {
                Some((name, value)) => parse_duration(name, &value),
                None => Ok(default),
            }
        };
        let result_ttl = duration(&["PSW_RESULT_TTL"], defaults.result_ttl)?;
        let lease = duration(&["PSW_LEASE"], defaults.lease)?;
        if !LEASES.contains(&lease) {
            return Err(Error::config(
                "PSW_LEASE",
                humantime::format_duration(lease).to_string(),
                "a duration from 300ms to 1h, like `30s`: shorter and the renewals cannot keep \
                 up, longer and a dead worker's jobs wait that long",
            ));
        }
        let shutdown_grace = duration(&["PSW_SHUTDOWN_GRACE"], defaults.shutdown_grace)?;
        let unknown_task_delay =
            duration(&["PSW_UNKNOWN_TASK_DELAY"], defaults.unknown_task_delay)?;

        let count = |name: &'static str, default: u64| -> Result<u64> {
            match get(name) {
                Some((name, value)) => match value.parse::<u64>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(Error::config(name, value, "a whole number of at least 1")),
                },
                None => Ok(default),
            }
        };
        let dead_letter_cap = count("PSW_DLQ_MAX_LEN", defaults.dead_letter_cap)?;
        let max_deliveries = count("PSW_MAX_DELIVERIES", defaults.max_deliveries)?;

        let max_message_size = match get("PSW_MAX_MESSAGE_SIZE") {
            Some((name, value)) => parse_size(name, &value)?,
            None => defaults.max_message_size,
        };
        let dead_letter_max_bytes = match get("PSW_DLQ_MAX_BYTES") {
            Some((name, value)) => parse_size(name, &value)? as u64,
            None => defaults.dead_letter_max_bytes,
        };
        let dead_letter_max_payload = match get("PSW_DLQ_MAX_PAYLOAD") {
            Some((name, value)) => parse_size(name, &value)?,
            None => defaults.dead_letter_max_payload,
        };
        let max_result_size = match get("PSW_MAX_RESULT_SIZE") {
            Some((name, value)) => Some(parse_size(name, &value)?),
            None => None,
        };

        Ok(Config {
            redis_url,
            redis_ca_cert,
            namespace,
            concurrency,
            prefetch,
            queues,
            queue_weights,
            queue_shards,
            strict_priority,
            rate_limits,
            concurrency_limits,
            result_ttl,
            max_message_size,
            max_result_size,
            dead_letter_cap,
            dead_letter_max_bytes,
            dead_letter_max_payload,
            max_deliveries,
            unknown_task_delay,
            lease,
            shutdown_grace,
            metrics_history,
            celery_queues,
            celery_broker_url,
            celery_result_backend,
            celery_track_started,
            celery_unknown_tasks,
            variable_of_url,
        })
    }

    /// Set the namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Split `queue` over `shards` streams (as `PSW_QUEUE_SHARDS` does; 1 to 256).
    pub fn with_queue_shards(mut self, queue: impl Into<String>, shards: u32) -> Self {
        self.queue_shards
            .insert(queue.into(), shards.clamp(1, crate::shard::MAX_SHARDS));
        self
    }

    /// How many shards `queue` has (1 unless `queue_shards` says more).
    pub fn shards_of(&self, queue: &str) -> u32 {
        self.queue_shards.get(queue).copied().unwrap_or(1).max(1)
    }

    /// The largest result a job may store: `max_result_size`, else `max_message_size`.
    pub fn result_size_limit(&self) -> usize {
        self.max_result_size.unwrap_or(self.max_message_size)
    }

    /// The variable the Redis URL came from, for error messages.
    pub(crate) fn url_variable(&self) -> &'static str {
        self.variable_of_url
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), as `variable` gives it.
/// A comma-separated list of `name=limit`, each name a limit's and each limit read by `limit`.
fn parse_named<T>(
    variable: &str,
    value: &str,
    expected: &str,
    limit: impl Fn(&str) -> Option<T>,
) -> Result<BTreeMap<String, T>> {
    let mut limits = BTreeMap::new();
    for item in value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let parsed = item.split_once('=').and_then(|(name, spec)| {
            let name = name.trim();
            check_limit_name(name, variable).ok()?;
            Some((name.to_owned(), limit(spec.trim())?))
        });
        let Some((name, parsed)) = parsed else {
            return Err(Error::config(
                variable,
                value,
                format!("a list of {expected}; `{item}` is not one"),
            ));
        };
        limits.insert(name, parsed);
    }
    Ok(limits)
}

/// The node URLs of a `redis+cluster://` or `rediss+cluster://` URL
/// (`redis+cluster://[user:password@]host:port,host:port[/]`), each as a `redis://` (or
/// `rediss://`) URL with the credentials; `None` for any other URL.
pub(crate) fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+cluster://")?)
    };
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{credentials}{host}"))
            .collect(),
    )
}

/// The parts of a sentinel URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// Each sentinel as a `redis://host:port` (or `rediss://`) URL, without credentials:
    /// sentinels are asked without them.
    pub(crate) sentinels: Vec<String>,
    /// The name the sentinels know the master by.
    pub(crate) master: String,
    /// A `redis://[user:password@]sentinel/<db>` URL carrying what the master is reached
    /// with: the credentials and the database (its host means nothing).
    pub(crate) master_settings: String,
    /// TLS to the master and the sentinels (`rediss+sentinel://`).
    pub(crate) tls: bool,
}

/// The parts of a `redis+sentinel://[user:password@]host:port,host:port/<master>[/<db>]` (or
/// `rediss+sentinel://`) URL; `None` for any other URL.
pub(crate) fn sentinel_url(url: &str) -> Option<SentinelUrl> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+sentinel://")?)
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), authority),
    };
    let path = path.split('?').next().unwrap_or_default();
    let (master, db) = path.split_once('/').unwrap_or((path, ""));
    Some(SentinelUrl {
        sentinels: hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{host}"))
            .collect(),
        master: master.to_owned(),
        master_settings: format!("redis://{credentials}sentinel/{db}"),
        tls: scheme == "rediss",
    })
}

/// Whether `nodes` (URLs) are at least one, each with a `host:port`.
fn hosts_given(nodes: &[String]) -> bool {
    !nodes.is_empty()
        && nodes.iter().all(|node| {
            let host = node
                .rsplit_once('@')
                .map_or(node.as_str(), |(_, host)| host);
            let host = host.split_once("://").map_or(host, |(_, host)| host);
            host.rsplit_once(':')
                .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok())
        })
}

pub(crate) fn parse_bool(variable: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(Error::config(variable, value, "true or false")),
    }
}

/// A duration like `500ms`, `30s`, `5m`, `1h` or `1d`, or a whole number of seconds.
pub(crate) fn parse_duration(variable: &str, value: &str) -> Result<Duration> {
    let parsed = match value.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(value),
    };
    match parsed {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(Error::config(
            variable,
            value,
            "a positive duration like `500ms`, `30s`, `5m`, `1h` or `1d`",
        )),
    }
}

/// A size in bytes, optionally with a `KiB`/`MiB` (or `KB`/`MB`, meaning the same) suffix.
fn parse_size(variable: &str, value: &str) -> Result<usize> {
    let lower = value.to_ascii_lowercase();
    let (digits, unit) = if let Some(d) = lower.strip_suffix("kib").or(lower.strip_suffix("kb")) {
        (d, 1024)
    } else if let Some(d) = lower.strip_suffix("mib").or(lower.strip_suffix("mb")) {
        (d, 1024 * 1024)
    } else if let Some(d) = lower.strip_suffix("gib").or(lower.strip_suffix("gb")) {
        (d, 1024 * 1024 * 1024)
    } else {
        (lower.as_str(), 1)
    };
    match digits.trim().parse::<usize>() {
        Ok(n) if n > 0 => n.checked_mul(unit).ok_or(()),
        _ => Err(()),
    }
    .map_err(|()| {
        Error::config(
            variable,
            value,
            "a positive size in bytes, optionally with KiB, MiB or GiB, like `524288` or `512KiB`",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    fn check_error(vars: &[(&str, &str)], expected: &str) {
        let err = config(vars).unwrap_err().to_string();
        assert_eq!(err, expected);
    }

    #[test]
    fn defaults_without_variables() {
        assert_eq!(config(&[]).unwrap(), Config::default());
    }

    #[test]
    fn reads_celery_names_as_fallbacks() {
        let c = config(&[
            ("CELERY_BROKER_URL", "redis://:pw@redis:6379/0"),
            // The same server and database, written another way.
            ("CELERY_RESULT_BACKEND", "redis://:pw@redis/0/"),
            ("CELERY_WORKER_CONCURRENCY", "4"),
        ])
        .unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://:pw@redis:6379/0"));
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.url_variable(), "CELERY_BROKER_URL");
        let c = config(&[
            ("REDIS_URL", "redis://a"),
            ("CELERY_BROKER_URL", "redis://b"),
            ("PSW_WORKER_CONCURRENCY", "7"),
            ("CELERY_WORKER_CONCURRENCY", "4"),
        ])
        .unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://a"));
        assert_eq!(c.concurrency, 7);
    }

    #[test]
    fn parses_durations_sizes_and_queues() {
        let c = config(&[
            ("PSW_RESULT_TTL", "2h"),
            ("PSW_LEASE", "45"),
            ("PSW_SHUTDOWN_GRACE", "500ms"),
            ("PSW_MAX_MESSAGE_SIZE", "1MiB"),
            ("PSW_QUEUES", "default, mail"),
        ])
        .unwrap();
        assert_eq!(c.result_ttl, Duration::from_secs(7200));
        assert_eq!(c.lease, Duration::from_secs(45));
        assert_eq!(c.shutdown_grace, Duration::from_millis(500));
        assert_eq!(c.max_message_size, 1024 * 1024);
        assert_eq!(c.queues, Some(vec!["default".into(), "mail".into()]));
    }

    #[test]
    fn reads_shared_limits_and_names_the_variable_of_a_bad_one() {
        let c = config(&[
            ("PSW_RATE_LIMITS", "eodhd=1000/m, borsdata=100/10s burst 5"),
            ("PSW_CONCURRENCY_LIMITS", "renderer=2"),
        ])
        .unwrap();
        assert_eq!(c.rate_limits["eodhd"].to_string(), "1000/m");
        assert_eq!(c.rate_limits["borsdata"].burst(), 5);
        assert_eq!(c.concurrency_limits["renderer"], 2);
        for (variable, value) in [
            ("PSW_RATE_LIMITS", "eodhd=1000"),
            ("PSW_RATE_LIMITS", "eodhd"),
            ("PSW_RATE_LIMITS", "bad:name=1/s"),
            ("PSW_CONCURRENCY_LIMITS", "renderer=0"),
            ("PSW_CONCURRENCY_LIMITS", "9lives=2"),
        ] {
            match config(&[(variable, value)]) {
                Err(Error::Config {
                    variable: named, ..
                }) => assert_eq!(named, variable, "{value}"),
                other => panic!("{variable}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn accepts_every_url_form_of_the_client_and_masks_it_in_debug() {
        for url in [
            "redis://:pw-secret@h:6379/1",
            "rediss://user:pw-secret@h",
            "valkey://h",
            "redis+unix:///run/redis.sock?db=2&pass=pw-secret",
            "unix:///run/redis.sock?pass=pw-secret",
        ] {
            let c = config(&[("REDIS_URL", url)]).unwrap();
            assert_eq!(c.redis_url.as_deref(), Some(url));
            let debug = format!("{c:?}");
            assert!(!debug.contains("pw-secret"), "{debug}");
            assert_eq!(debug.contains("***"), url.contains("pw-secret"), "{debug}");
        }
    }

    #[test]
    fn errors_name_the_variable_and_the_form() {
        check_error(
            &[("CELERY_BROKER_URL", "amqp://guest:secret@rabbit//")],
            "invalid configuration: CELERY_BROKER_URL = \"amqp://***@rabbit//\": expected a redis://[user:password@]host[:port][/db], rediss:// (TLS) or redis+unix:///path/to/socket[?db=N&pass=password] URL",
        );
        check_error(
            &[
                ("CELERY_BROKER_URL", "redis://:pw@redis:6379/0"),
                ("CELERY_RESULT_BACKEND", "db+postgresql://u:pw@db/results"),
            ],
            "invalid configuration: CELERY_RESULT_BACKEND = \"db+postgresql://***@db/results\": expected a redis://[user:password@]host[:port][/db], rediss:// (TLS) or redis+unix:///path/to/socket[?db=N&pass=password] URL",
        );
        check_error(
            &[("PSW_CELERY_QUEUES", "celery,bad queue")],
            "invalid configuration: PSW_CELERY_QUEUES = \"bad queue\": expected a non-empty name of at most 200 characters without whitespace, `{`, `}` or `:`",
        );
        for url in [
            "redis+cluster://",
            "redis+cluster://:pw@h1,h2:7001",
            "redis+cluster://h1:port",
        ] {
            let err = config(&[("REDIS_URL", url)]).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid configuration: REDIS_URL = ")
                    && err.contains("redis+cluster://[user:password@]host:port,host:port"),
                "{err}"
            );
            assert!(!err.contains("pw"), "{err}");
        }
        for url in [
            "redis+sentinel://h1:26379,h2:26379",
            "redis+sentinel://:pw@h1:26379/",
            "redis+sentinel://h1/mymaster",
        ] {
            let err = config(&[("REDIS_URL", url)]).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid configuration: REDIS_URL = ")
                    && err.contains(
                        "redis+sentinel://[user:password@]host:port,host:port/<master name>[/db]"
                    ),
                "{err}"
            );
            assert!(!err.contains("pw"), "{err}");
        }
        let sentinel = "redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2";
        let parsed = config(&[("REDIS_URL", sentinel)]).unwrap();
        assert_eq!(parsed.redis_url.as_deref(), Some(sentinel));
        assert_eq!(
            sentinel_url(sentinel),
            Some(SentinelUrl {
                sentinels: vec!["redis://h1:26379".to_owned(), "redis://h2:26380".to_owned()],
                master: "mymaster".to_owned(),
                master_settings: "redis://:pw@sentinel/2".to_owned(),
                tls: false,
            })
        );
        assert!(sentinel_url("rediss+sentinel://h:1/m").unwrap().tls);
        assert_eq!(sentinel_url("redis://h:6379/0"), None);
        check_error(
            &[("CELERY_BROKER_URL", "redis+sentinel://h1:26379/mymaster")],
            "invalid configuration: CELERY_BROKER_URL = \"redis+sentinel://h1:26379/mymaster\": expected a redis://[user:password@]host[:port][/db], rediss:// (TLS) or redis+unix:///path/to/socket[?db=N&pass=password] URL",
        );
        let cluster = config(&[("REDIS_URL", "redis+cluster://:pw@h1:7000,h2:7001")]).unwrap();
        assert_eq!(
            cluster.redis_url.as_deref(),
            Some("redis+cluster://:pw@h1:7000,h2:7001")
        );
        check_error(
            &[("CELERY_BROKER_URL", "redis+cluster://h1:7000")],
            "invalid configuration: CELERY_BROKER_URL = \"redis+cluster://h1:7000\": expected a redis://[user:password@]host[:port][/db], rediss:// (TLS) or redis+unix:///path/to/socket[?db=N&pass=password] URL",
        );
        check_error(
            &[("PSW_CELERY_UNKNOWN_TASKS", "drop")],
            "invalid configuration: PSW_CELERY_UNKNOWN_TASKS = \"drop\": expected `leave` or `dead_letter`",
        );
        check_error(
            &[("PSW_CELERY_TRACK_STARTED", "maybe")],
            "invalid configuration: PSW_CELERY_TRACK_STARTED = \"maybe\": expected true or false",
        );
        for lease in ["2ns", "100ms", "2h"] {
            let err = config(&[("PSW_LEASE", lease)]).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid configuration: PSW_LEASE = ")
                    && err.contains("expected a duration from 300ms to 1h"),
                "{err}"
            );
        }
        check_error(
            &[("PSW_WORKER_CONCURRENCY", "four")],
            "invalid configuration: PSW_WORKER_CONCURRENCY = \"four\": expected a whole number from 1 to 100000",
        );
        check_error(
            &[("PSW_RESULT_TTL", "soon")],
            "invalid configuration: PSW_RESULT_TTL = \"soon\": expected a positive duration like `500ms`, `30s`, `5m`, `1h` or `1d`",
        );
        check_error(
            &[("PSW_MAX_MESSAGE_SIZE", "big")],
            "invalid configuration: PSW_MAX_MESSAGE_SIZE = \"big\": expected a positive size in bytes, optionally with KiB, MiB or GiB, like `524288` or `512KiB`",
        );
        check_error(
            &[("PSW_QUEUES", "a,b c")],
            "invalid configuration: PSW_QUEUES = \"b c\": expected a non-empty name of at most 200 characters without whitespace, `{`, `}` or `:`",
        );
    }
}
