//! The worker process the throughput benchmark starts: the standard CLI over the bench tasks.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Referencing the crate links its tasks (an unreferenced crate's registrations vanish).
    assert_eq!(psw_tasks_benches::task_name("noop", true), "bench.noop");
    psw_tasks::cli::main().await
}
