use psw_tasks::{TaskContext, TaskError, task};

#[task]
async fn add(_ctx: TaskContext, a: i64, b: i64) -> i64 {
    a + b
}

// The error type must be usable too, so the import above stays in use.
#[task]
async fn sub(_ctx: TaskContext, a: i64, b: i64) -> Result<i64, TaskError> {
    Ok(a - b)
}

fn main() {}
