//! Background jobs for Rust services, over Redis Streams.
//!
//! Annotate an `async fn` with [`#[task]`](macro@task), enqueue it with typed arguments from any
//! process, and run a [`Worker`] anywhere that shares the Redis:
//!
//! ```no_run
//! use psw_tasks::{task, Client, TaskContext, TaskError, Worker};
//! use std::time::Duration;
//!
//! #[task(retries = 3, backoff = "exp")]
//! async fn add(ctx: TaskContext, a: i64, b: i64) -> Result<i64, TaskError> {
//!     ctx.set_progress(1, 1, ()).await?;
//!     Ok(a + b)
//! }
//!
//! # async fn run() -> psw_tasks::Result<()> {
//! let client = Client::redis("redis://127.0.0.1:6379").await?;
//! let handle = add::enqueue(&client, 2, 3).await?;
//! let worker = Worker::builder(&client).concurrency(4).build()?;
//! tokio::spawn(worker.run());
//! assert_eq!(handle.wait(Duration::from_secs(5)).await?, 5);
//! # Ok(())
//! # }
//! ```
//!
//! `ARCHITECTURE.md` maps the crate; `docs/protocol.md` gives the wire format and Redis keys.

// Lets `#[task]` be used inside this crate (its expansion names `::psw_tasks`).
extern crate self as psw_tasks;

// The modules by layer, bottom to top: a module uses only its own layer and those below
// (ARCHITECTURE.md has the table, and `testing::imports` checks the code against it).
//
// 1. model: pure, no IO.
mod audit;
mod celery;
mod envelope;
mod error;
mod keys;
mod limit;
mod metrics;
mod priority;
mod record;
mod redact;
mod registry;
mod retry;
mod revoke;
mod rules;
mod schedule;
mod shard;
mod task;
mod unique;
mod wire;

// 2. process: the environment and the operating system.
mod config;
mod process;

// 3. broker: the seam, and the only IO on Redis.
mod broker;

// 4. stores: what is kept in the broker, as users read it.
mod dead;
mod history;
mod limiter;
mod stats;

// 5. services: producing, running and firing jobs.
mod celery_client;
mod client;
mod scheduler;
mod worker;

// 6. dashboard: the monitoring dashboard over the services.
mod dashboard;

// 7. surface: the entry points.
#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
pub mod cli;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

#[doc(inline)]
pub use crate::audit::{AuditAction, AuditEntry};
#[doc(inline)]
pub use crate::broker::{
    DeadJob, DeadLetterStats, DeadReason, FailureGroup, QueueStats, QueuedJob, UniqueLock,
};
#[doc(inline)]
pub use crate::celery::CeleryUnknownTasks;
pub use crate::celery_client::{CeleryClient, CeleryOptions, CeleryTask};
#[doc(inline)]
pub use crate::client::{Client, EnqueueOptions, Expiry, TaskHandle};
#[doc(inline)]
pub use crate::config::Config;
#[doc(inline)]
pub use crate::dashboard::Dashboard;
#[doc(inline)]
pub use crate::dead::{DeadFilter, DeadLetters, DeadPage, ReplayReport};
#[doc(inline)]
pub use crate::envelope::JobId;
#[doc(inline)]
pub use crate::error::{Error, RedisError, Result};
#[doc(inline)]
pub use crate::history::{MetricsHistory, MetricsPoint};
#[doc(inline)]
pub use crate::limit::{RateLimit, TaskLimit};
#[doc(inline)]
pub use crate::limiter::RateLimiter;
#[doc(inline)]
pub use crate::metrics::{
    Execution, ExecutionOutcome, HISTOGRAM_BOUNDS_MS, Histogram, RECENT_EXECUTIONS, Resolution,
    SCHEDULE_RUNS, TaskCounts,
};
#[doc(inline)]
pub use crate::record::{AttemptError, FailureKind, JobRecord, Progress, State};
/// A URL with its credentials masked, to log a Redis URL (of any form) or a DSN safely.
pub use crate::redact::url as redact_url;

#[doc(inline)]
pub use crate::registry::{Registry, TaskDescriptor};
#[doc(inline)]
pub use crate::retry::{Backoff, BackoffKind, Retry};
#[doc(inline)]
pub use crate::revoke::RevokeReason;
#[doc(inline)]
pub use crate::rules::{Misfire, Priority};
#[doc(inline)]
pub use crate::schedule::Schedule;
#[doc(inline)]
pub use crate::scheduler::{Scheduler, SchedulerBuilder};
#[doc(inline)]
pub use crate::stats::{ActiveJob, ClusterStats, WorkerInfo};
#[doc(inline)]
pub use crate::task::{TaskContext, TaskError, TaskOptions};
#[doc(inline)]
pub use crate::unique::{UNIQUE_HOLD, Unique};
#[doc(inline)]
pub use crate::worker::{Worker, WorkerBuilder, WorkerStats};

/// Turns an `async fn` into a task; see the crate docs and `README.md` for the options.
#[doc(inline)]
pub use psw_tasks_macros::task;
