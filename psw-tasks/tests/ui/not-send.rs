use std::rc::Rc;

use psw_tasks::{TaskContext, TaskError, task};

async fn later() {}

#[task]
async fn double(_ctx: TaskContext, a: i64) -> Result<i64, TaskError> {
    let shared = Rc::new(a);
    later().await;
    Ok(*shared * 2)
}

fn main() {}
