use psw_tasks::{TaskContext, TaskError, task};

#[task(every = "90s")]
async fn refresh(_ctx: TaskContext, symbol: String) -> Result<(), TaskError> {
    drop(symbol);
    Ok(())
}

fn main() {}
