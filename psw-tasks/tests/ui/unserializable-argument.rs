use psw_tasks::{TaskContext, TaskError, task};

pub struct Connection;

#[task]
async fn ping(_ctx: TaskContext, conn: Connection) -> Result<(), TaskError> {
    drop(conn);
    Ok(())
}

fn main() {}
