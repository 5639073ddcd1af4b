//! The app's integration tests: one binary (each test binary is another link of the crate).

mod db;
mod default_run;
mod jobs;
mod leaks;
mod notify;
mod providers;
mod report;
mod structure;
mod support;
