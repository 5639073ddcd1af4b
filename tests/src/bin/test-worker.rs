//! The worker the process-level tests start and signal: the standard CLI over the test tasks.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Referencing the crate links its tasks (an unreferenced crate's registrations vanish).
    let registry = psw_tasks::Registry::from_linked().expect("task registry");
    for name in psw_tasks_tests::TASK_NAMES {
        assert!(registry.get(name).is_some(), "task {name} is not linked");
    }
    psw_tasks::cli::main().await
}
