//! Integration tests of the psw-tasks crate (one binary: each extra test file is another link).

mod defaults;
mod ui;
