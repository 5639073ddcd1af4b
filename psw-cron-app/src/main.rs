//! The psw-cron-app binary; everything is in the library (see `psw_cron_app::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    psw_cron_app::cli::main()
}
