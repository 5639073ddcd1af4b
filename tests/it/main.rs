//! Integration tests across crates: real Redis, real worker processes.

mod beat;
mod browser;
mod celery;
mod cluster;
mod connections;
mod dashboard;
mod faults;
mod flow;
mod jobs;
mod monitor;
mod processes;
mod reliability;
mod sentinel;
mod stats;
mod support;
