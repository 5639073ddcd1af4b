//! Integration tests across crates: real Redis, real worker processes.

mod jobs;
mod processes;
mod support;
