use psw_tasks::{TaskContext, TaskError, task};

#[task]
async fn check(_ctx: TaskContext, a: i64) -> Option<TaskError> {
    (a < 0).then(|| TaskError::permanent("negative"))
}

fn main() {}
