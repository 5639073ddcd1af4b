use psw_tasks::{TaskError, task};

#[task(schedule = "0 9 30 2 *")]
async fn report() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
