use psw_tasks::{TaskError, task};

#[task(overlap = false)]
async fn refresh() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
