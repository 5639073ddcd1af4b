//! A bare `#[task]` gets the runtime's defaults: the macro and `TaskOptions::DEFAULT` build them
//! from the one set of constants, and this holds them to it.

use psw_tasks::{TaskError, TaskOptions, task};

#[task(name = "defaults.bare")]
async fn bare() -> Result<(), TaskError> {
    Ok(())
}

#[test]
fn a_bare_task_has_the_default_options() {
    assert_eq!(bare::OPTIONS, TaskOptions::DEFAULT);
    assert_eq!(TaskOptions::default(), TaskOptions::DEFAULT);
}
