//! What every job shares: [`App`] (the database, the quote provider, the notification channels,
//! the settings, the psw-tasks client), how a task finds it, and the dead-letter alert with its
//! budget.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use psw_tasks::{Client, DeadJob, TaskContext, TaskError, WorkerBuilder};

use crate::config::AppConfig;
use crate::db::Db;
use crate::notify::Notifier;
use crate::providers::Provider;

/// What every job shares: the database, the quote provider, the notification channels, the
/// settings, and the psw-tasks client (for the health monitor and the dead-letter cleanup).
#[derive(Debug)]
pub struct App {
    /// The app's database.
    pub db: Db,
    /// The quote provider in use.
    pub provider: Provider,
    /// E-mail and Telegram.
    pub notifier: Notifier,
    /// The settings.
    pub config: AppConfig,
    /// The job system.
    pub client: Client,
    alerts: Mutex<AlertBudget>,
}

impl App {
    /// Put the parts together.
    pub fn new(
        db: Db,
        provider: Provider,
        notifier: Notifier,
        config: AppConfig,
        client: Client,
    ) -> Self {
        let (limit, window) = config.alert_limit;
        App {
            db,
            provider,
            notifier,
            config,
            client,
            alerts: Mutex::new(AlertBudget::new(limit, window)),
        }
    }

    /// `builder` with what every worker of the app gets: this app as the tasks' shared state,
    /// and [`App::dead_letter_alert`] as its dead-letter hook.
    pub fn configure_worker(self: &Arc<Self>, builder: WorkerBuilder) -> WorkerBuilder {
        let hook_app = self.clone();
        builder.state(self.clone()).on_dead(move |job| {
            let app = hook_app.clone();
            async move { app.dead_letter_alert(job).await }
        })
    }

    /// The worker's dead-letter hook: alert by every channel and report to Sentry, within the
    /// alert budget (`ALERT_RATE_LIMIT`) so that an incident does not flood the channels.
    pub async fn dead_letter_alert(&self, job: DeadJob) {
        let task = job.task.as_deref().unwrap_or("(undecodable)");
        let job_id = job.job_id.as_deref().unwrap_or("(unknown)");
        crate::notify::sentry::capture_task_failure(task, job_id, job.reason.as_str(), &job.error);
        let suppressed = {
            let mut budget = self
                .alerts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match budget.take(Instant::now()) {
                Some(suppressed) => suppressed,
                None => {
                    tracing::warn!(task, job_id, reason = %job.reason, "dead-letter alert suppressed by ALERT_RATE_LIMIT");
                    return;
                }
            }
        };
        let mut text = format!(
            "Task: {task}\nJob: {job_id}\nQueue: {}\nReason: {}\nLast error: {}\nAttempts: {}\nDead-letter entry: {} (replay with `psw-cron-app dlq replay {}`)",
            job.queue,
            job.reason,
            job.error,
            job.errors.len(),
            job.entry_id,
            job.entry_id,
        );
        if suppressed > 0 {
            text.push_str(&format!(
                "\n\n{suppressed} earlier dead-letter alert(s) were suppressed by ALERT_RATE_LIMIT: see `psw-cron-app dlq list`."
            ));
        }
        self.notifier
            .alert(&format!("PSW5 job failed for good: {task}"), &text)
            .await;
    }
}

/// At most `limit` alerts per `window`; counts the ones held back so the next alert can say so.
#[derive(Debug)]
struct AlertBudget {
    limit: u32,
    window: Duration,
    window_start: Option<Instant>,
    sent: u32,
    suppressed: u64,
}

impl AlertBudget {
    fn new(limit: u32, window: Duration) -> Self {
        AlertBudget {
            limit,
            window,
            window_start: None,
            sent: 0,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last sent one)` when an alert may go now.
    fn take(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(start) if now.duration_since(start) < self.window => {}
            _ => {
                self.window_start = Some(now);
                self.sent = 0;
            }
        }
        if self.sent < self.limit {
            self.sent += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// The shared app of a running task.
pub(crate) fn app(ctx: &TaskContext) -> Result<&Arc<App>, TaskError> {
    ctx.state::<Arc<App>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_budget_holds_back_and_then_tells() {
        let mut budget = AlertBudget::new(2, Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(budget.take(start), Some(0));
        assert_eq!(budget.take(start), Some(0));
        assert_eq!(budget.take(start + Duration::from_secs(1)), None);
        assert_eq!(budget.take(start + Duration::from_secs(2)), None);
        assert_eq!(budget.take(start + Duration::from_secs(61)), Some(2));
        assert_eq!(budget.take(start + Duration::from_secs(62)), Some(0));
    }
}
