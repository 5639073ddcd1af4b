use psw_tasks::{TaskContext, TaskError, task};

#[task(
    name = "reports.daily",
    queue = "reports",
    retries = 5,
    backoff = "linear",
    backoff_base = "2s",
    backoff_max = "10m",
    jitter = false,
    ignore_result = true,
    timeout = "30s"
)]
pub async fn daily_report(ctx: TaskContext, day: String, mut pages: u32) -> Result<u32, TaskError> {
    pages += u32::try_from(day.len() + ctx.task_name().len()).unwrap_or(0);
    Ok(pages)
}

/// No context, no arguments and every default.
#[task]
async fn ping() -> Result<(), TaskError> {
    Ok(())
}

/// Fired by the beat: a cron expression in a zone, with its misfire and overlap options.
#[task(
    schedule = "30 2 * * *",
    tz = "Europe/Stockholm",
    misfire = "backfill(3)",
    overlap = false
)]
async fn nightly(ctx: TaskContext) -> Result<(), TaskError> {
    drop(ctx);
    Ok(())
}

/// Six fields (seconds first), and an interval.
#[task(schedule = "*/10 * * * * *", misfire = "skip")]
async fn every_ten_seconds() -> Result<(), TaskError> {
    Ok(())
}

#[task(every = "1m 30s")]
async fn every_ninety_seconds() -> Result<(), TaskError> {
    Ok(())
}

/// Global limits: its own rate, and a shared concurrency limit declared at the worker's start.
#[task(rate_limit = "100/10s burst 5", concurrency = "renderer", priority = "low")]
async fn render() -> Result<(), TaskError> {
    Ok(())
}

// The options are checked at compile time, so this file does nothing when run.
const _: () = {
    assert!(matches!(daily_report::NAME.as_bytes(), b"reports.daily"));
    assert!(matches!(daily_report::OPTIONS.queue.as_bytes(), b"reports"));
    assert!(daily_report::OPTIONS.retries == 5);
    assert!(daily_report::OPTIONS.backoff.base.as_millis() == 2_000);
    assert!(daily_report::OPTIONS.backoff.max.as_millis() == 600_000);
    assert!(!daily_report::OPTIONS.backoff.jitter);
    assert!(daily_report::OPTIONS.ignore_result);
    assert!(matches!(daily_report::OPTIONS.timeout, Some(t) if t.as_millis() == 30_000));
    assert!(matches!(ping::NAME.as_bytes(), b"ping"));
    assert!(ping::OPTIONS.retries == 3);
    assert!(ping::OPTIONS.timeout.is_none());
    assert!(ping::OPTIONS.rate_limit.is_none() && ping::OPTIONS.concurrency.is_none());
    assert!(matches!(
        render::OPTIONS.concurrency,
        Some(psw_tasks::TaskLimit::Named(name)) if name.len() == 8
    ));
    assert!(matches!(render::OPTIONS.priority, psw_tasks::Priority::Low));
    assert!(matches!(ping::OPTIONS.priority, psw_tasks::Priority::Normal));
};

/// The typed handle returns a handle to the function's success type.
async fn enqueue_report(
    client: &psw_tasks::Client,
) -> psw_tasks::Result<psw_tasks::TaskHandle<u32>> {
    daily_report::enqueue(client, "monday".to_owned(), 3).await
}

fn main() {
    // Never called: these only have to compile.
    let _direct = || daily_report(TaskContext::detached("x"), "monday".to_owned(), 3);
    let _ping = || ping();
    let _enqueue = enqueue_report;
    let _scheduled = || {
        (
            nightly(TaskContext::detached("n")),
            every_ten_seconds(),
            every_ninety_seconds(),
            render(),
        )
    };
}
