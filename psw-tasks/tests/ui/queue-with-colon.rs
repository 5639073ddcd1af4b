use psw_tasks::{TaskContext, TaskError, task};

#[task(queue = "mail:high")]
async fn send(_ctx: TaskContext, to: String) -> Result<String, TaskError> {
    Ok(to)
}

fn main() {}
