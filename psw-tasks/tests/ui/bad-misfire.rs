use psw_tasks::{TaskError, task};

#[task(schedule = "0 * * * *", misfire = "catch_up")]
async fn refresh() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
