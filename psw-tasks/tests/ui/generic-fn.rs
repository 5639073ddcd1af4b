use psw_tasks::{TaskContext, TaskError, task};

#[task]
async fn total<T: Into<i64>>(_ctx: TaskContext, items: Vec<T>) -> Result<i64, TaskError> {
    Ok(items.into_iter().map(Into::into).sum())
}

fn main() {}
