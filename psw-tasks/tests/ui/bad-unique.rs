use psw_tasks::{TaskError, task};

#[task(unique = "until_done")]
async fn refresh() -> Result<(), TaskError> {
    Ok(())
}

fn main() {}
