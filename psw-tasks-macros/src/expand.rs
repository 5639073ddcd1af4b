//! The code `#[task]` generates: the function unchanged, a typed handle named after it, and the
//! handle's registration with the runtime.

use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Error, FnArg, Ident, Item, ItemFn, Pat, PatIdent, ReturnType, Type};

use crate::args::{self, Args, Errors};
use crate::rules::{Misfire, Priority};

/// One wording for every way a signature can be generic.
const GENERIC: &str = "tasks cannot be generic: their arguments must have one concrete wire type";

/// Expand `#[task(attr)] item`; on mistakes, the item unchanged plus every error, so that the
/// user sees the mistakes and no follow-on errors about a missing function.
pub(crate) fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr, item.clone()) {
        Ok(tokens) => tokens,
        Err(err) => {
            let errors = err.to_compile_error();
            quote!(#item #errors)
        }
    }
}

/// The whole expansion, or every mistake in the options and the function at once.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = errors.ok(args::parse(attr));
    let task = errors.ok(Task::parse(item));
    if let (Some(args), Some(task)) = (&args, &task)
        && args.schedule.is_some()
        && let Some((name, _)) = task.wire.first()
    {
        errors.push(Error::new_spanned(
            name,
            "a scheduled task takes no arguments, as the beat has none to give; schedule one \
             with arguments at run time with `Scheduler::add`",
        ));
    }
    match (args, task) {
        (Some(args), Some(task)) => errors.finish(()).map(|()| generate(&args, &task)),
        // Something failed, so `finish` returns the recorded errors.
        _ => errors.finish(TokenStream::new()),
    }
}

/// An `async fn` that passed every check, split into what the expansion needs.
struct Task {
    item: ItemFn,
    /// Whether the first parameter receives the `TaskContext` (and so is not sent on the wire).
    has_context: bool,
    /// The parameters sent on the wire, in order.
    wire: Vec<(Ident, Type)>,
    /// The declared return type, which must implement `IntoOutcome`.
    output: Type,
}

impl Task {
    fn parse(item: TokenStream) -> syn::Result<Task> {
        let item = match syn::parse2::<Item>(item)? {
            Item::Fn(item) => item,
            other => {
                return Err(Error::new_spanned(
                    other,
                    "`#[task]` goes on an `async fn`, like `async fn send_email(to: String)`",
                ));
            }
        };
        let sig = &item.sig;
        let mut errors = Errors::default();

        if sig.asyncness.is_none() {
            errors.push(Error::new_spanned(
                sig.fn_token,
                "`#[task]` functions must be `async fn`",
            ));
        }
        if !sig.generics.params.is_empty() {
            errors.push(Error::new_spanned(&sig.generics, GENERIC));
        } else if let Some(where_clause) = &sig.generics.where_clause {
            errors.push(Error::new_spanned(where_clause, GENERIC));
        }

        let mut has_context = false;
        let mut wire = Vec::new();
        // Counts only typed parameters, so a stray `self` does not add a second complaint.
        let mut typed = 0;
        for input in &sig.inputs {
            let input = match input {
                FnArg::Receiver(receiver) => {
                    errors.push(Error::new_spanned(
                        receiver,
                        "`#[task]` goes on free functions, not methods",
                    ));
                    continue;
                }
                FnArg::Typed(input) => input,
            };
            typed += 1;
            if is_context(&input.ty) {
                if typed == 1 {
                    // The handler passes the context positionally, so its pattern may be anything.
                    has_context = true;
                } else {
                    errors.push(Error::new_spanned(
                        &input.ty,
                        "the `TaskContext` parameter must come first",
                    ));
                }
                continue;
            }
            match &*input.pat {
                Pat::Ident(PatIdent {
                    by_ref: None,
                    subpat: None,
                    ident,
                    ..
                }) => wire.push((ident.clone(), (*input.ty).clone())),
                pattern => errors.push(Error::new_spanned(
                    pattern,
                    "task arguments must be plain names, like `symbols: Vec<String>`",
                )),
            }
            match &*input.ty {
                Type::ImplTrait(ty) => errors.push(Error::new_spanned(ty, GENERIC)),
                Type::Reference(ty) if typed == 1 && is_context(&ty.elem) => {
                    errors.push(Error::new_spanned(
                        ty,
                        "the context is passed by value, like `ctx: TaskContext`",
                    ));
                }
                // Arguments are decoded from the message, so nothing outlives the call to borrow.
                Type::Reference(ty) => errors.push(Error::new_spanned(
                    ty,
                    "task arguments must own their data, like `String` rather than `&str`",
                )),
                _ => {}
            }
        }

        let output = match &sig.output {
            ReturnType::Type(_, ty) => Some((**ty).clone()),
            ReturnType::Default => {
                // `()` would fail the `IntoOutcome` bound deep in the expansion; say it here.
                errors.push(Error::new_spanned(
                    sig,
                    "a task must return `Result<T, E>` where `E: Into<TaskError>`",
                ));
                None
            }
        };

        errors.finish(())?;
        let output = output.expect("a missing return type is an error above");
        Ok(Task {
            item,
            has_context,
            wire,
            output,
        })
    }
}

/// Whether `ty` names the context: a path ending in `TaskContext`, however it was imported.
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|last| last.ident == "TaskContext")
        }
        Type::Group(group) => is_context(&group.elem),
        Type::Paren(paren) => is_context(&paren.elem),
        _ => false,
    }
}

/// The function unchanged, then its typed handle, its compile-time checks and its registration.
fn generate(args: &Args, task: &Task) -> TokenStream {
    let item = &task.item;
    let vis = &item.vis;
    let ident = &item.sig.ident;
    let fn_name = ident.unraw().to_string();
    let output = &task.output;
    let names: Vec<&Ident> = task.wire.iter().map(|(name, _)| name).collect();
    let types: Vec<&Type> = task.wire.iter().map(|(_, ty)| ty).collect();

    // The expansion's own locals. Some of their uses sit in tokens spanned at the user's code;
    // made once with the call site's span, every use still resolves to its binding.
    let client = Ident::new("__client", Span::call_site());
    let enqueue_options = Ident::new("__options", Span::call_site());
    let ctx = Ident::new("__ctx", Span::call_site());
    let bytes = Ident::new("__args", Span::call_site());
    let decoded_args = Ident::new("__decoded", Span::call_site());

    let name = match &args.name {
        Some(name) => quote!(#name),
        None => {
            let suffix = format!("::{fn_name}");
            quote!(::psw_tasks::__private::default_name(
                ::core::concat!(::core::module_path!(), #suffix)
            ))
        }
    };
    let options = options(args);
    let schedule = args.schedule.as_ref().map(|schedule| {
        let declared = declared_schedule(schedule);
        quote!(.with_schedule(#declared))
    });

    // Every use of the return type carries its span, so a return type that is no `Result` is
    // reported there rather than on `#[task]`; the handler's `finish` doubles as that check.
    let returns = quote_spanned! {output.span()=>
        -> ::psw_tasks::Result<
            ::psw_tasks::TaskHandle<<#output as ::psw_tasks::__private::IntoOutcome>::Output>,
        >
    };
    let finish = quote_spanned! {output.span()=> ::psw_tasks::__private::finish::<#output>};
    // `enqueue` delegates so that the arguments are encoded in one place; an unspanned call
    // would repeat a bad return type's error on `#[task]`.
    let delegate = quote_spanned! {output.span()=>
        Self::enqueue_with(
            #client,
            <::psw_tasks::EnqueueOptions as ::core::default::Default>::default(),
            #(#names),*
        )
        .await
    };

    // Spanned at each argument's type, so a type that cannot travel is reported on itself.
    let argument_checks = types.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            const _: fn() = || {
                ::psw_tasks::__private::assert_task_argument::<#ty>();
            };
        }
    });
    // The tuple of all arguments repeats such an error; spanned at the parameter list, it
    // lands there rather than on `#[task]`.
    let params = item.sig.paren_token.span.join();
    let (encoded, decoded) = if task.wire.is_empty() {
        (
            quote!(&::psw_tasks::__private::NoArgs),
            quote!(::psw_tasks::__private::NoArgs),
        )
    } else {
        // The trailing commas make one argument a one-element tuple, not a parenthesized value.
        (
            quote_spanned!(params=> &(#(#names,)*)),
            quote_spanned!(params=> (#(#types,)*)),
        )
    };
    let send = quote_spanned! {params=>
        ::psw_tasks::__private::enqueue(
            #client,
            Self::NAME,
            &Self::OPTIONS,
            #encoded,
            #enqueue_options,
        )
        .await
    };
    // The parameter names, so that an argument that fails to decode is named in the error.
    let parameters: Vec<String> = names
        .iter()
        .map(|name| {
            let name = name.to_string();
            name.strip_prefix("r#").unwrap_or(&name).to_owned()
        })
        .collect();
    let decode = quote_spanned! {params=>
        ::psw_tasks::__private::decode_args::<#decoded>(#bytes, &[#(#parameters),*])
    };

    // The arguments are passed by position, so no argument name can shadow the function.
    let context = task.has_context.then(|| quote!(#ctx,));
    let positions = (0..task.wire.len()).map(syn::Index::from);
    // Spanned at the function's name, so a future that is not `Send` is reported there.
    let run = quote_spanned! {ident.span()=>
        ::std::boxed::Box::pin(async move {
            #finish(#ident(#context #(#decoded_args.#positions),*).await)
        })
    };

    let struct_doc =
        format!("Typed handle of the task `{fn_name}`: enqueue it with `{fn_name}::enqueue`.");
    // Spanned at the function's name, so the registry reports where the task is defined.
    let location = quote_spanned! {ident.span()=> ::core::file!(), ::core::line!()};

    quote! {
        #item

        #[doc = #struct_doc]
        #[allow(
            non_camel_case_types,
            reason = "named after the task function, so that enqueueing reads `task::enqueue(..)`"
        )]
        #[allow(dead_code, reason = "a namespace for the handle's items, never constructed")]
        // Braced, so it lives only in the type namespace and coexists with the function.
        #vis struct #ident {}

        #[allow(dead_code, reason = "a binary may run the task without enqueueing it")]
        #[allow(clippy::too_many_arguments, reason = "one parameter per task argument")]
        #[allow(non_snake_case, reason = "the function itself reports its parameters' names")]
        impl #ident {
            /// The task's wire name.
            #vis const NAME: &'static str = #name;

            /// The task's options, as set in `#[task(..)]`.
            #vis const OPTIONS: ::psw_tasks::TaskOptions = #options;

            /// Enqueues the task with the default enqueue options.
            #vis async fn enqueue(#client: &::psw_tasks::Client, #(#names: #types),*) #returns {
                #delegate
            }

            /// Enqueues the task with enqueue options: a countdown, an ETA, another queue, ...
            #vis async fn enqueue_with(
                #client: &::psw_tasks::Client,
                #enqueue_options: ::psw_tasks::EnqueueOptions,
                #(#names: #types),*
            ) #returns {
                #send
            }

            /// Decodes the arguments and runs the task; the worker calls it through the registry.
            #[doc(hidden)]
            #vis fn __handler(
                #ctx: ::psw_tasks::TaskContext,
                #bytes: &[u8],
            ) -> ::psw_tasks::__private::HandlerFuture {
                match #decode {
                    ::core::result::Result::Ok(#decoded_args) => #run,
                    ::core::result::Result::Err(__err) => {
                        ::std::boxed::Box::pin(async move { ::core::result::Result::Err(__err) })
                    }
                }
            }
        }

        #(#argument_checks)*

        ::psw_tasks::__private::inventory::submit! {
            ::psw_tasks::__private::TaskDescriptor::new(
                #ident::NAME,
                #ident::OPTIONS,
                #ident::__handler,
                #location,
            )
            .with_parameters(&[#(#parameters),*])
            #schedule
        }
    }
}

/// The call that builds the task's `TaskOptions` at compile time.
fn options(args: &Args) -> TokenStream {
    let queue = &args.queue;
    let retries = Literal::u32_suffixed(args.retries);
    let kind = format_ident!("{}", args.backoff.variant());
    let base_ms = millis(args.backoff_base);
    let max_ms = millis(args.backoff_max);
    let jitter = args.jitter;
    let ignore_result = args.ignore_result;
    // The runtime reads 0 as "no time limit"; `args` rejects an explicit zero.
    let timeout_ms = millis(args.timeout.unwrap_or_default());
    let unique = match args.unique {
        None => quote!(::core::option::Option::None),
        Some(args::UniqueArg::UntilStarted) => {
            quote!(::core::option::Option::Some(
                ::psw_tasks::__private::Unique::UntilStarted
            ))
        }
        Some(args::UniqueArg::UntilFinished) => {
            quote!(::core::option::Option::Some(
                ::psw_tasks::__private::Unique::UntilFinished
            ))
        }
        Some(args::UniqueArg::For(hold)) => {
            let hold_ms = millis(hold);
            quote!(::core::option::Option::Some(::psw_tasks::__private::unique_for(#hold_ms)))
        }
    };
    let rate_limit = match &args.rate_limit {
        None => quote!(::core::option::Option::None),
        Some(args::LimitArg::Own(spec)) => {
            let count = Literal::u32_suffixed(spec.count);
            let per_ms = Literal::u64_suffixed(spec.per_ms);
            let burst = Literal::u32_suffixed(spec.burst);
            quote!(::core::option::Option::Some(::psw_tasks::__private::TaskLimit::Own(
                ::psw_tasks::__private::rate_limit(#count, #per_ms, #burst)
            )))
        }
        Some(args::LimitArg::Named(name)) => {
            quote!(::core::option::Option::Some(::psw_tasks::__private::TaskLimit::Named(#name)))
        }
    };
    let concurrency = match &args.concurrency {
        None => quote!(::core::option::Option::None),
        Some(args::LimitArg::Own(n)) => {
            let n = Literal::u32_suffixed(*n);
            quote!(::core::option::Option::Some(::psw_tasks::__private::TaskLimit::Own(#n)))
        }
        Some(args::LimitArg::Named(name)) => {
            quote!(::core::option::Option::Some(::psw_tasks::__private::TaskLimit::Named(#name)))
        }
    };
    let priority = match args.priority {
        Priority::High => quote!(::psw_tasks::__private::Priority::High),
        Priority::Normal => quote!(::psw_tasks::__private::Priority::Normal),
        Priority::Low => quote!(::psw_tasks::__private::Priority::Low),
    };
    quote! {
        ::psw_tasks::__private::options(
            #queue,
            #retries,
            ::psw_tasks::__private::BackoffKind::#kind,
            #base_ms,
            #max_ms,
            #jitter,
            #ignore_result,
            #timeout_ms,
            #unique,
            #rate_limit,
            #concurrency,
            #priority,
        )
    }
}

/// The call that builds the task's schedule at compile time.
fn declared_schedule(schedule: &args::Schedule) -> TokenStream {
    let (cron, every_ms) = match &schedule.timing {
        args::Timing::Cron(expression) => (expression.clone(), millis(Duration::ZERO)),
        args::Timing::Every(interval) => (String::new(), millis(*interval)),
    };
    let tz = &schedule.tz;
    let misfire = match schedule.misfire {
        Misfire::Skip => quote!(::psw_tasks::__private::Misfire::Skip),
        Misfire::Coalesce => quote!(::psw_tasks::__private::Misfire::Coalesce),
        Misfire::Backfill(n) => {
            let n = Literal::u32_suffixed(n);
            quote!(::psw_tasks::__private::Misfire::Backfill(#n))
        }
    };
    let overlap = schedule.overlap;
    quote! {
        ::psw_tasks::__private::DeclaredSchedule::new(#cron, #every_ms, #tz, #misfire, #overlap)
    }
}

/// Milliseconds as a suffixed literal; `args` already rejected durations that do not fit.
fn millis(duration: Duration) -> Literal {
    let millis = u64::try_from(duration.as_millis()).expect("args checks that durations fit");
    Literal::u64_suffixed(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expand `#[task(attr)] item` and compare every error message, one a line (`""` for none).
    fn check(attr: &str, item: &str, expected: &str) {
        let attr: TokenStream = attr.parse().expect("test attr lexes");
        let tokens: TokenStream = item.parse().expect("test item lexes");
        let actual = match expand(attr, tokens) {
            Ok(_) => String::new(),
            Err(err) => err
                .into_iter()
                .map(|err| err.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        assert_eq!(actual, expected, "item: {item}");
    }

    #[test]
    fn function_checks() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "",
                "async fn f(ctx: TaskContext) -> Result<(), TaskError> {}",
                "",
            ),
            ("", "async fn f() -> Result<(), TaskError> {}", ""),
            (
                "",
                "pub(crate) async fn f(_: psw_tasks::TaskContext, mut a: u8, b: Vec<String>) -> R {}",
                "",
            ),
            (
                "",
                "fn f() -> Result<(), TaskError> {}",
                "`#[task]` functions must be `async fn`",
            ),
            (
                "",
                "async fn f<T>(t: T) -> Result<(), TaskError> {}",
                "tasks cannot be generic: their arguments must have one concrete wire type",
            ),
            (
                "",
                "async fn f() -> Result<(), TaskError> where u8: Copy {}",
                "tasks cannot be generic: their arguments must have one concrete wire type",
            ),
            (
                "",
                "async fn f(t: impl Send) -> Result<(), TaskError> {}",
                "tasks cannot be generic: their arguments must have one concrete wire type",
            ),
            (
                "",
                "async fn f(&self) -> Result<(), TaskError> {}",
                "`#[task]` goes on free functions, not methods",
            ),
            (
                "",
                "async fn f((a, b): (u8, u8)) -> Result<(), TaskError> {}",
                "task arguments must be plain names, like `symbols: Vec<String>`",
            ),
            (
                "",
                "async fn f(ref a: u8) -> Result<(), TaskError> {}",
                "task arguments must be plain names, like `symbols: Vec<String>`",
            ),
            (
                "",
                "async fn f(a: &str) -> Result<(), TaskError> {}",
                "task arguments must own their data, like `String` rather than `&str`",
            ),
            (
                "",
                "async fn f(ctx: &TaskContext) -> Result<(), TaskError> {}",
                "the context is passed by value, like `ctx: TaskContext`",
            ),
            (
                "",
                "async fn f(a: u8, ctx: TaskContext) -> Result<(), TaskError> {}",
                "the `TaskContext` parameter must come first",
            ),
            (
                "",
                "async fn f(ctx: TaskContext) {}",
                "a task must return `Result<T, E>` where `E: Into<TaskError>`",
            ),
            (
                "",
                "struct S;",
                "`#[task]` goes on an `async fn`, like `async fn send_email(to: String)`",
            ),
            (
                "every = \"1m\"",
                "async fn f(ctx: TaskContext, day: String) -> Result<(), TaskError> {}",
                "a scheduled task takes no arguments, as the beat has none to give; schedule one \
                 with arguments at run time with `Scheduler::add`",
            ),
            (
                "schedule = \"*/5 * * * *\"",
                "async fn f(ctx: TaskContext) -> Result<(), TaskError> {}",
                "",
            ),
            // The options and the function are checked together, so one round shows everything.
            (
                "retries = \"3\"",
                "fn f<T>(self, (a,): (u8,)) {}",
                "`retries` expects an integer, like `retries = 3`\n\
                 `#[task]` functions must be `async fn`\n\
                 tasks cannot be generic: their arguments must have one concrete wire type\n\
                 `#[task]` goes on free functions, not methods\n\
                 task arguments must be plain names, like `symbols: Vec<String>`\n\
                 a task must return `Result<T, E>` where `E: Into<TaskError>`",
            ),
        ];
        for (attr, item, expected) in cases {
            check(attr, item, expected);
        }
    }

    #[test]
    fn expansion_is_valid_rust() {
        let attr = quote!(retries = 5, backoff = "linear", timeout = "30s");
        let item = quote! {
            /// Refreshes the prices.
            pub async fn update_stock_prices(
                ctx: TaskContext,
                mut symbols: Vec<String>,
            ) -> Result<Summary, TaskError> {
                todo!()
            }
        };
        let file: syn::File = syn::parse2(expand(attr, item).unwrap()).unwrap();
        let expanded = quote!(#file).to_string();
        for expected in [
            "pub struct update_stock_prices { }",
            "pub async fn enqueue (__client : & :: psw_tasks :: Client , symbols : Vec < String >)",
            "update_stock_prices (__ctx , __decoded . 0) . await",
            "& (symbols ,)",
            "decode_args :: < (Vec < String > ,) > (__args , & [\"symbols\"])",
            "BackoffKind :: Linear",
            "30000u64",
            "default_name",
        ] {
            assert!(expanded.contains(expected), "{expected} in {expanded}");
        }
    }

    #[test]
    fn zero_arguments_travel_as_no_args() {
        let item = quote!(
            async fn ping() -> Result<(), TaskError> {
                Ok(())
            }
        );
        let file: syn::File = syn::parse2(expand(quote!(name = "ping"), item).unwrap()).unwrap();
        let expanded = quote!(#file).to_string();
        assert!(expanded.contains("decode_args :: < :: psw_tasks :: __private :: NoArgs >"));
        assert!(expanded.contains("(ping () . await)"));
        assert!(expanded.contains("const NAME : & 'static str = \"ping\""));
    }

    #[test]
    fn schedules_are_declared_with_the_descriptor() {
        let item = quote!(
            async fn nightly() -> Result<(), TaskError> {
                Ok(())
            }
        );
        let attr = quote!(
            schedule = "30 2 * * *",
            tz = "Europe/Stockholm",
            misfire = "backfill(3)"
        );
        let file: syn::File = syn::parse2(expand(attr, item).unwrap()).unwrap();
        let expanded = quote!(#file).to_string();
        assert!(
            expanded.contains(
                ". with_schedule (:: psw_tasks :: __private :: DeclaredSchedule :: new (\"30 2 * * *\" , \
                 0u64 , \"Europe/Stockholm\" , :: psw_tasks :: __private :: Misfire :: Backfill (3u32) , true))"
            ),
            "{expanded}"
        );
    }

    #[test]
    fn the_parameters_are_named_for_keyword_arguments() {
        let item = quote!(
            async fn quote(
                ctx: TaskContext,
                symbol: String,
                r#force: bool,
            ) -> Result<(), TaskError> {
                Ok(())
            }
        );
        let file: syn::File = syn::parse2(expand(quote!(), item).unwrap()).unwrap();
        let expanded = quote!(#file).to_string();
        assert!(
            expanded.contains(". with_parameters (& [\"symbol\" , \"force\"])"),
            "{expanded}"
        );
    }

    #[test]
    fn on_error_the_function_is_still_emitted() {
        let item = quote!(
            async fn ping() -> Result<(), TaskError> {
                Ok(())
            }
        );
        let file: syn::File = syn::parse2(task(quote!(retries = "x"), item)).unwrap();
        assert!(matches!(&file.items[0], Item::Fn(f) if f.sig.ident == "ping"));
        assert!(
            matches!(&file.items[1], Item::Macro(m) if m.mac.path.segments.last().unwrap().ident == "compile_error")
        );
        assert_eq!(file.items.len(), 2);
    }
}
