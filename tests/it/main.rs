//! Integration tests across crates: real Redis, real worker processes.

mod connections;
mod jobs;
mod processes;
mod support;
