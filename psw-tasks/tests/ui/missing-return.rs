use psw_tasks::{TaskContext, TaskError, task};

#[task]
async fn log_line(_ctx: TaskContext, line: String) {
    if line.is_empty() {
        eprintln!("{:?}", TaskError::permanent("empty line"));
    }
    println!("{line}");
}

fn main() {}
