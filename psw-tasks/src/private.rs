//! What `#[task]` expands to (`psw_tasks::__private`). Not a public API: it changes without
//! notice.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::envelope::NoArgs;
pub use crate::limit::{RateLimit, TaskLimit};
pub use crate::registry::{HandlerFuture, TaskDescriptor};
pub use crate::retry::{Backoff, BackoffKind};
pub use crate::rules::{Misfire, Priority};
pub use crate::schedule::DeclaredSchedule;
pub use crate::task::TaskOptions;
pub use crate::unique::Unique;
pub use inventory;

use crate::client::{Client, EnqueueOptions, TaskHandle};
use crate::record::FailureKind;
use crate::redact;
use crate::task::TaskError;

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
    unique: Option<Unique>,
    rate_limit: Option<TaskLimit<RateLimit>>,
    concurrency: Option<TaskLimit<u32>>,
    priority: Priority,
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
        unique,
        rate_limit,
        concurrency,
        priority,
    }
}

/// A task's `rate_limit = "<count>/<period> burst <n>"`, as the macro checked it.
pub const fn rate_limit(count: u32, per_ms: u64, burst: u32) -> RateLimit {
    RateLimit::from_spec(count, per_ms, burst)
}

/// A task's `unique = "for = .."`, from whole milliseconds.
pub const fn unique_for(ms: u64) -> Unique {
    Unique::For(Duration::from_millis(ms))
}

/// Decode the argument array; a mismatch is a permanent `bad_args` failure, since retrying
/// cannot fix it. `parameters` are the task's parameter names, in order. The message names the
/// argument and what its type expected, never the value found: arguments may be secrets, and
/// this message reaches the job's record, the dead letter, the log and every alert.
pub fn decode_args<A: DeserializeOwned>(bytes: &[u8], parameters: &[&str]) -> Result<A, TaskError> {
    // The plain decoder on the hot path; the tracking one only to explain a failure.
    rmp_serde::from_slice(bytes).map_err(|_| {
        let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
        let explained = match serde_path_to_error::deserialize::<_, A>(&mut decoder) {
            Err(err) => {
                let argument = match err.path().iter().next() {
                    Some(serde_path_to_error::Segment::Seq { index }) => {
                        match parameters.get(*index) {
                            Some(name) => format!("argument {} (`{name}`): ", index + 1),
                            None => format!("argument {}: ", index + 1),
                        }
                    }
                    _ => String::new(),
                };
                format!("{argument}{}", redact::decode_error(err.inner()))
            }
            // Cannot happen (the same bytes, the same type), but is no reason to panic.
            Ok(_) => "they decode only with their path traced".to_owned(),
        };
        let expected = if parameters.is_empty() {
            "none".to_owned()
        } else {
            parameters
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        TaskError::permanent(format!(
            "arguments do not match the task's parameters ({expected}): {explained}"
        ))
        .with_kind(FailureKind::BadArgs)
    })
}

/// Encode what the task function returned.
pub fn finish<R: IntoOutcome>(returned: R) -> Result<Vec<u8>, TaskError> {
    let output = returned.into_outcome()?;
    rmp_serde::to_vec_named(&output)
        .map_err(|err| TaskError::permanent(format!("could not encode the task's result: {err}")))
}

/// Enqueue on behalf of a typed handle.
pub async fn enqueue<A: Serialize, O>(
    client: &Client,
    name: &'static str,
    options: &TaskOptions,
    args: &A,
    enqueue_options: EnqueueOptions,
) -> crate::error::Result<TaskHandle<O>> {
    client
        .enqueue_typed(name, options, args, enqueue_options)
        .await
}
