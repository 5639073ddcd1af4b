use psw_tasks::{TaskContext, TaskError, task};

#[task(backoff_base = "2 fortnights")]
async fn add(_ctx: TaskContext, a: i64, b: i64) -> Result<i64, TaskError> {
    Ok(a + b)
}

fn main() {}
