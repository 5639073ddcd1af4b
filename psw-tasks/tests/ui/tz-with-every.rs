use psw_tasks::{TaskError, task};

#[task(every = "1h", tz = "Europe/Stockholm")]
async fn refresh() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
