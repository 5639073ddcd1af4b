use psw_tasks::{TaskError, task};

#[task(rate_limit = "10 per second")]
async fn fetch_quote() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
