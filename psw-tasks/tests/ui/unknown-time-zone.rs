use psw_tasks::{TaskError, task};

#[task(schedule = "30 2 * * *", tz = "Europe/Stockolm")]
async fn report() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
