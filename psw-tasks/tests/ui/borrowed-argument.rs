use psw_tasks::{TaskContext, TaskError, task};

#[task]
async fn greet(_ctx: TaskContext, name: &str) -> Result<String, TaskError> {
    Ok(format!("hello {name}"))
}

fn main() {}
