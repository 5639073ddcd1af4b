use psw_tasks::{TaskError, task};

#[task(schedule = "0 25 * * *")]
async fn report() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
