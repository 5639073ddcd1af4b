use psw_tasks::{TaskError, task};

#[task(concurrency = 0)]
async fn render() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
