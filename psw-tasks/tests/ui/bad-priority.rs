use psw_tasks::{TaskError, task};

#[task(priority = "urgent")]
async fn page() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
