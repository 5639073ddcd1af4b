//! The `#[task]` attribute of psw-tasks; the work is in `expand`, an ordinary, testable module.

mod args;
mod expand;

/// Turns an `async fn` into a task; `psw_tasks` documents the options.
#[proc_macro_attribute]
pub fn task(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand::task(attr.into(), item.into()).into()
}
