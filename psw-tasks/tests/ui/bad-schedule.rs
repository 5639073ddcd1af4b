use psw_tasks::{TaskError, task};

// Celery's crontab has five fields; a sixth would be seconds, a seventh is not accepted.
#[task(schedule = "*/15 * * *")]
async fn report() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
