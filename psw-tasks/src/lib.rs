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

mod backend;
mod broker;
pub mod cli;
mod client;
mod config;
mod dead;
mod envelope;
mod error;
mod registry;
mod retry;
mod scheduler;
mod stats;
mod task;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
mod worker;

#[doc(inline)]
pub use crate::backend::{AttemptError, JobRecord, Progress, State};
#[doc(inline)]
pub use crate::client::{Client, EnqueueOptions, TaskHandle};
#[doc(inline)]
pub use crate::config::{Config, parse_duration, redact_url};
#[doc(inline)]
pub use crate::dead::{DeadJob, DeadLetterStats, DeadLetters};
#[doc(inline)]
pub use crate::envelope::JobId;
#[doc(inline)]
pub use crate::error::{Error, Result};
#[doc(inline)]
pub use crate::registry::{Registry, TaskDescriptor};
#[doc(inline)]
pub use crate::scheduler::{Misfire, Schedule, Scheduler, SchedulerBuilder};
#[doc(inline)]
pub use crate::stats::{ClusterStats, QueueStats, TaskCounts, WorkerInfo};
#[doc(inline)]
pub use crate::task::{Backoff, BackoffKind, Retry, TaskContext, TaskError, TaskOptions};
#[doc(inline)]
pub use crate::worker::{Worker, WorkerBuilder, WorkerStats};

/// Turns an `async fn` into a task; see the crate docs and `README.md` for the options.
#[doc(inline)]
pub use psw_tasks_macros::task;

/// What `#[task]` expands to. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    use std::time::Duration;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub use crate::envelope::NoArgs;
    pub use crate::registry::{HandlerFuture, TaskDescriptor};
    pub use crate::scheduler::{DeclaredSchedule, Misfire};
    pub use crate::task::{Backoff, BackoffKind, TaskOptions};
    pub use inventory;

    use crate::{Client, EnqueueOptions, TaskError, TaskHandle};

    /// What a task function may return.
    #[diagnostic::on_unimplemented(
        message = "a task must return `Result<T, E>` where `E: Into<TaskError>`, not `{Self}`",
        label = "return a `Result` here"
    )]
    pub trait IntoOutcome {
        /// The success value, stored as the job's result.
        type Output: Serialize + DeserializeOwned + Send + 'static;
        /// Split into the result or the attempt's error.
        fn into_outcome(self) -> Result<Self::Output, TaskError>;
    }

    impl<O, E> IntoOutcome for Result<O, E>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
        E: Into<TaskError>,
    {
        type Output = O;
        fn into_outcome(self) -> Result<O, TaskError> {
            self.map_err(Into::into)
        }
    }

    /// Compile-time check that an argument can travel in an envelope.
    pub fn assert_task_argument<T: Serialize + DeserializeOwned + Send + 'static>() {}

    /// The default wire name: `module::path::function` without the crate's own name.
    pub const fn default_name(path: &'static str) -> &'static str {
        let bytes = path.as_bytes();
        let mut i = 0;
        while i + 1 < bytes.len() {
            if bytes[i] == b':' && bytes[i + 1] == b':' {
                let (_, rest) = bytes.split_at(i + 2);
                return match std::str::from_utf8(rest) {
                    Ok(rest) => rest,
                    Err(_) => path,
                };
            }
            i += 1;
        }
        path
    }

    /// Options as the macro spells them; `timeout_ms == 0` means no time limit.
    #[allow(
        clippy::too_many_arguments,
        reason = "one positional call site: the macro"
    )]
    pub const fn options(
        queue: &'static str,
        retries: u32,
        kind: BackoffKind,
        base_ms: u64,
        max_ms: u64,
        jitter: bool,
        ignore_result: bool,
        timeout_ms: u64,
    ) -> TaskOptions {
        TaskOptions {
            queue,
            retries,
            backoff: Backoff {
                kind,
                base: Duration::from_millis(base_ms),
                max: Duration::from_millis(max_ms),
                jitter,
            },
            ignore_result,
            timeout: if timeout_ms == 0 {
                None
            } else {
                Some(Duration::from_millis(timeout_ms))
            },
        }
    }

    /// Decode the argument array; a mismatch is a permanent `bad_args` failure carrying the
    /// serde error (with its path), since retrying cannot fix it.
    pub fn decode_args<A: DeserializeOwned>(bytes: &[u8]) -> Result<A, TaskError> {
        rmp_serde::from_slice(bytes).map_err(|err| {
            TaskError::permanent(format!(
                "arguments do not match the task's parameters: {err}"
            ))
            .with_kind("bad_args")
        })
    }

    /// Encode what the task function returned.
    pub fn finish<R: IntoOutcome>(returned: R) -> Result<Vec<u8>, TaskError> {
        let output = returned.into_outcome()?;
        rmp_serde::to_vec_named(&output).map_err(|err| {
            TaskError::permanent(format!("could not encode the task's result: {err}"))
        })
    }

    /// Enqueue on behalf of a typed handle.
    pub async fn enqueue<A: Serialize, O>(
        client: &Client,
        name: &'static str,
        options: &TaskOptions,
        args: &A,
        enqueue_options: EnqueueOptions,
    ) -> crate::Result<TaskHandle<O>> {
        client
            .enqueue_typed(name, options.queue, args, enqueue_options)
            .await
    }
}
