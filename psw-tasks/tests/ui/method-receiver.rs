use psw_tasks::{TaskContext, TaskError, task};

pub struct Calculator;

impl Calculator {
    #[task]
    pub async fn add(&self, _ctx: TaskContext, a: i64, b: i64) -> Result<i64, TaskError> {
        Ok(a + b)
    }
}

fn main() {}
