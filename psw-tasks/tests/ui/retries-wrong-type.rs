use psw_tasks::{TaskContext, TaskError, task};

#[task(retries = "3")]
async fn add(_ctx: TaskContext, a: i64, b: i64) -> Result<i64, TaskError> {
    Ok(a + b)
}

fn main() {}
