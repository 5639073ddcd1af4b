//! Error reports to Sentry: failed tasks through [`capture_task_failure`], panics through the
//! panic integration that [`init`] installs.

use std::borrow::Cow;

use sentry::protocol::{Event, Level};

use super::channel::NotifyError;

/// Starts the Sentry client when `dsn` is set (`SENTRY_DSN`; unset or blank leaves Sentry off).
///
/// Keep the guard until exit: dropping it sends what is still queued (waiting up to two
/// seconds). Call this before anything else touches Sentry, on the thread that runs `main`,
/// so that every thread's hub starts from this client.
pub fn init(
    dsn: Option<&str>,
    environment: &str,
) -> Result<Option<sentry::ClientInitGuard>, NotifyError> {
    let Some(dsn) = dsn.map(str::trim).filter(|dsn| !dsn.is_empty()) else {
        return Ok(None);
    };
    // Parsed here because `sentry::init` would panic on a bad DSN given as a string.
    let parsed: sentry::types::Dsn = dsn.parse().map_err(|_| NotifyError::Config {
        variable: "SENTRY_DSN",
        value: crate::redact::url(dsn),
        expected: "a DSN like `https://<key>@<host>/<project>`",
    })?;
    // Field by field: `ClientOptions` is non-exhaustive.
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(parsed);
    options.release = sentry::release_name!();
    options.environment = Some(Cow::Owned(environment.to_owned()));
    // Task failures carry their error text; where in this crate it was reported adds
    // nothing, and panics bring their own stack trace.
    options.attach_stacktrace = false;
    Ok(Some(sentry::init(options)))
}

/// Reports that a task's job failed for good (`reason`, like `dead` or `timeout`) as an
/// error event tagged with the task and the job id. Does nothing when Sentry is off.
///
/// Events are grouped by task and reason, not by error text, so that one failing task is one
/// issue however its error messages vary.
pub fn capture_task_failure(task: &str, job_id: &str, reason: &str, error: &str) {
    let event = Event {
        level: Level::Error,
        message: Some(format!("task {task} failed ({reason}): {error}")),
        logger: Some("psw-cron-app".to_owned()),
        transaction: Some(task.to_owned()),
        fingerprint: Cow::Owned(vec![
            Cow::Borrowed("task-failure"),
            Cow::Owned(task.to_owned()),
            Cow::Owned(reason.to_owned()),
        ]),
        tags: [
            ("task".to_owned(), task.to_owned()),
            ("job_id".to_owned(), job_id.to_owned()),
            ("reason".to_owned(), reason.to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    sentry::capture_event(event);
}
