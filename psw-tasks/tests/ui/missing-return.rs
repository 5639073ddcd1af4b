use psw_tasks::{TaskContext, TaskError, task};

#[task]
async fn log(_ctx: TaskContext, line: String) {
    let _: Option<TaskError> = None;
    println!("{line}");
}

fn main() {}
