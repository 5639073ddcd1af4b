use psw_tasks::{TaskContext, TaskError, task};

#[task]
async fn add(_ctx: TaskContext, (a, b): (i64, i64)) -> Result<i64, TaskError> {
    Ok(a + b)
}

fn main() {}
