//! The PSW5 jobs, as `#[task]` functions, and the state they share.
//!
//! Every task reads the shared [`App`] with `ctx.state::<Arc<App>>()` (`app.rs`) and hands it
//! to a plain function (`update_prices`, `value_portfolios`, ...) that the tests call directly as well.
//!
//! | task | schedule | what |
//! |---|---|---|
//! | `psw_cron.tasks.update_stock_prices` | `*/15 * * * *` | quotes of the stocks due |
//! | `psw_cron.tasks.calculate_portfolio_values` | `0 */6 * * *` | value history |
//! | `psw_cron.tasks.generate_daily_reports` | `0 8 * * *` in `REPORT_TIMEZONE` | reports, e-mail, Telegram |
//! | `psw_cron.tasks.cleanup_old_data` | `0 2 * * 0` | retention |
//! | `psw_cron.tasks.monitor_task_health` | `* * * * *` | alerts on thresholds |
//! | `psw_cron.ping` | none | answers, to check a deployment end to end |

use psw_tasks::{Schedule, Scheduler, TaskContext, TaskError, task};

use crate::config::AppConfig;

mod app;
pub mod cleanup;
pub mod health;
pub mod portfolio;
pub mod prices;
pub mod reports;

pub use app::App;

/// The name of the report schedule, added at run time because its zone is configuration.
pub const REPORT_SCHEDULE: &str = "generate-daily-reports";

/// Answers with the message, to check a deployment end to end:
/// `psw-cron-app enqueue psw_cron.ping --args '["hello"]' --wait 10s`.
#[task(name = "psw_cron.ping", retries = 0)]
pub async fn ping(ctx: TaskContext, message: String) -> Result<String, TaskError> {
    Ok(format!("pong: {message} (job {})", ctx.job_id()))
}

/// The schedules whose zone or form is configuration, for [`psw_tasks::cli::Setup::beat`].
pub fn add_schedules(scheduler: &mut Scheduler, config: &AppConfig) -> psw_tasks::Result<()> {
    scheduler.add(
        REPORT_SCHEDULE,
        reports::generate_daily_reports::NAME,
        Schedule::cron("0 8 * * *")?
            .tz(config.report_zone.name())?
            .overlap(false),
        (),
    )
}
