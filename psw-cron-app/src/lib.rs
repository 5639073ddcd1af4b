//! psw-cron-app: the PSW5 background jobs (stock prices, portfolio values, daily reports,
//! cleanup, health checks and dead-letter alerts), run with psw-tasks.
//!
//! Everything generic lives in `psw_tasks`; this crate holds the jobs and the real parts they
//! talk to: the database ([`db`]), the quote providers ([`providers`]), the notification
//! channels ([`notify`]) and the reports ([`report`]).

pub mod cli;
pub mod config;
pub mod db;
pub mod holdings;
pub mod jobs;
pub mod money;
pub mod notify;
pub mod providers;
pub mod redact;
pub mod report;
pub mod time;
