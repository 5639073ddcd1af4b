//! The `#[task]` attribute of psw-tasks; the work is in `expand`, an ordinary, testable module.

mod args;
mod expand;
// The runtime's own rules (cron, zones, misfire, names, defaults), compiled here from the one
// file that holds them, so that what compiles is what runs.
#[path = "../../psw-tasks/src/rules.rs"]
#[allow(
    unreachable_pub,
    reason = "`Misfire` is public API of psw-tasks, which re-exports it; here it is internal"
)]
mod rules;

/// Turns an `async fn` into a task; `psw_tasks` documents the options.
#[proc_macro_attribute]
pub fn task(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand::task(attr.into(), item.into()).into()
}
