//! The app's modules keep the layers of ARCHITECTURE.md and use each other in no circle.

use std::path::Path;

use psw_tasks::testing::imports::assert_layered;

#[test]
fn the_app_keeps_its_layers_and_has_no_cycles() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_layered(
        &crate_dir.join("src/lib.rs"),
        "lib",
        &crate_dir.join("../ARCHITECTURE.md"),
        "Layers of `psw-cron-app`",
    );
}
