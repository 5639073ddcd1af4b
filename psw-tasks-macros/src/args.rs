//! The options inside `#[task(..)]`, parsed and checked with the span of each mistake.

use std::time::Duration;

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Error, Expr, Lit, LitStr, MetaNameValue, Token};

use crate::rules::{self, Misfire, NameProblem, Priority};

/// Every option `#[task]` accepts, in the order the "unknown option" message lists them.
const OPTIONS: &[&str] = &[
    "name",
    "queue",
    "retries",
    "backoff",
    "backoff_base",
    "backoff_max",
    "jitter",
    "ignore_result",
    "timeout",
    "unique",
    "rate_limit",
    "concurrency",
    "priority",
    "schedule",
    "every",
    "tz",
    "misfire",
    "overlap",
];

/// The options of one task, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Args {
    /// The explicit wire name; `None` derives it from the module path.
    pub(crate) name: Option<String>,
    pub(crate) queue: String,
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) jitter: bool,
    pub(crate) ignore_result: bool,
    /// The per-attempt time limit; `None` means none.
    pub(crate) timeout: Option<Duration>,
    /// How long a job is unique; `None` means it is not.
    pub(crate) unique: Option<UniqueArg>,
    /// How often a job may start, across the cluster; `None` means freely.
    pub(crate) rate_limit: Option<LimitArg<rules::RateSpec>>,
    /// How many jobs may run at once, across the cluster; `None` means any number.
    pub(crate) concurrency: Option<LimitArg<u32>>,
    /// The level within its queue a job of the task is sent to unless the caller says.
    pub(crate) priority: Priority,
    /// When the beat fires the task; `None` means never.
    pub(crate) schedule: Option<Schedule>,
}

/// `schedule = ".."` or `every = ".."`, with the options that only apply to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub(crate) timing: Timing,
    /// The IANA zone of a cron expression.
    pub(crate) tz: String,
    pub(crate) misfire: Misfire,
    pub(crate) overlap: bool,
}

/// `unique = ".."`: as `psw_tasks::Unique`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UniqueArg {
    UntilStarted,
    UntilFinished,
    For(Duration),
}

/// `rate_limit = ".."` and `concurrency = ..`: as `psw_tasks::TaskLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LimitArg<T> {
    Own(T),
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timing {
    Cron(String),
    Every(Duration),
}

impl Default for Args {
    fn default() -> Self {
        Args {
            name: None,
            queue: rules::DEFAULT_QUEUE.to_owned(),
            retries: rules::DEFAULT_RETRIES,
            backoff: Backoff::Exponential,
            backoff_base: Duration::from_millis(rules::DEFAULT_BACKOFF_BASE_MS),
            backoff_max: Duration::from_millis(rules::DEFAULT_BACKOFF_MAX_MS),
            jitter: rules::DEFAULT_JITTER,
            ignore_result: false,
            timeout: None,
            unique: None,
            rate_limit: None,
            concurrency: None,
            priority: Priority::Normal,
            schedule: None,
        }
    }
}

/// The `backoff = ".."` strategies, mirroring the runtime's `BackoffKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backoff {
    Exponential,
    Linear,
    Fixed,
    None,
}

impl Backoff {
    /// The name of the runtime's `BackoffKind` variant.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            Backoff::Exponential => "Exponential",
            Backoff::Linear => "Linear",
            Backoff::Fixed => "Fixed",
            Backoff::None => "None",
        }
    }
}

/// Parse `key = value, ...`; every mistake is reported at once, each on its own token.
pub(crate) fn parse(attr: TokenStream) -> syn::Result<Args> {
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut args = Args::default();
    let mut errors = Errors::default();
    // The literals that set a duration, kept so the base/max comparison can point at one.
    let mut base_lit = None;
    let mut max_lit = None;
    let mut seen: Vec<String> = Vec::new();
    // The schedule options, kept with their tokens until they can be checked together.
    let mut timing: Option<(Timing, &Expr)> = None;
    let mut tz: Option<(String, &Expr)> = None;
    let mut misfire: Option<(Misfire, &Expr)> = None;
    let mut overlap: Option<(bool, &Expr)> = None;

    for pair in &pairs {
        let Some(key) = pair.path.get_ident() else {
            let path = quote::ToTokens::to_token_stream(&pair.path)
                .to_string()
                .replace(' ', "");
            errors.push(unknown_option(&pair.path, &path));
            continue;
        };
        let key_name = key.to_string();
        if !OPTIONS.contains(&key_name.as_str()) {
            errors.push(unknown_option(key, &key_name));
            continue;
        }
        if seen.contains(&key_name) {
            errors.push(specified_more_than_once(key));
            continue;
        }
        seen.push(key_name.clone());

        let value = &pair.value;
        let result = match key_name.as_str() {
            "name" => string(value, "name", "reports.daily").and_then(|lit| {
                if lit.value().is_empty() {
                    return Err(Error::new_spanned(
                        lit,
                        "`name` must not be empty; leave it out to use the function's path",
                    ));
                }
                args.name = Some(lit.value());
                Ok(())
            }),
            "queue" => string(value, "queue", "emails")
                .and_then(queue)
                .map(|queue| args.queue = queue),
            "retries" => retries(value).map(|retries| args.retries = retries),
            "backoff" => string(value, "backoff", "exp")
                .and_then(backoff)
                .map(|backoff| args.backoff = backoff),
            "backoff_base" => string(value, "backoff_base", "1s").and_then(|lit| {
                args.backoff_base = duration(lit, "backoff_base")?;
                base_lit = Some(lit);
                Ok(())
            }),
            "backoff_max" => string(value, "backoff_max", "1h").and_then(|lit| {
                args.backoff_max = duration(lit, "backoff_max")?;
                max_lit = Some(lit);
                Ok(())
            }),
            "jitter" => boolean(value, "jitter", false).map(|jitter| args.jitter = jitter),
            "ignore_result" => boolean(value, "ignore_result", true)
                .map(|ignore_result| args.ignore_result = ignore_result),
            "timeout" => string(value, "timeout", "30s").and_then(|lit| {
                let timeout = duration(lit, "timeout")?;
                if timeout.is_zero() {
                    return Err(Error::new_spanned(
                        lit,
                        "`timeout` must be longer than zero; leave it out for no time limit",
                    ));
                }
                args.timeout = Some(timeout);
                Ok(())
            }),
            "unique" => string(value, "unique", "until_finished").and_then(|lit| {
                args.unique = Some(unique(lit)?);
                Ok(())
            }),
            "rate_limit" => string(value, "rate_limit", "60/m").and_then(|lit| {
                args.rate_limit = Some(rate_limit(lit)?);
                Ok(())
            }),
            "concurrency" => concurrency(value).map(|limit| args.concurrency = Some(limit)),
            "priority" => string(value, "priority", "high").and_then(|lit| {
                args.priority = rules::parse_priority(&lit.value()).map_err(|reason| {
                    Error::new_spanned(lit, format!("invalid `priority`: {reason}"))
                })?;
                Ok(())
            }),
            "schedule" | "every" if timing.is_some() => Err(Error::new_spanned(
                key,
                "`schedule` and `every` cannot both be set; pick one",
            )),
            "schedule" => string(value, "schedule", "*/15 * * * *").and_then(|lit| {
                let expression = lit.value();
                rules::parse_cron(&expression).map_err(|reason| {
                    Error::new_spanned(lit, format!("invalid schedule {expression:?}: {reason}"))
                })?;
                timing = Some((Timing::Cron(expression), value));
                Ok(())
            }),
            "every" => string(value, "every", "90s").and_then(|lit| {
                let interval = duration(lit, "every")?;
                if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 {
                    return Err(Error::new_spanned(
                        lit,
                        "`every` is a whole number of seconds, at least one, like \"90s\"",
                    ));
                }
                timing = Some((Timing::Every(interval), value));
                Ok(())
            }),
            "tz" => string(value, "tz", "Europe/Stockholm").and_then(|lit| {
                let zone = lit.value();
                if let Err(reason) = rules::parse_zone(&zone) {
                    return Err(Error::new_spanned(
                        lit,
                        format!("invalid schedule {zone:?}: {reason}"),
                    ));
                }
                tz = Some((zone, value));
                Ok(())
            }),
            "misfire" => string(value, "misfire", "coalesce").and_then(|lit| {
                misfire = Some((parse_misfire(lit)?, value));
                Ok(())
            }),
            "overlap" => boolean(value, "overlap", false).map(|allowed| {
                overlap = Some((allowed, value));
            }),
            _ => unreachable!("every name in OPTIONS has an arm"),
        };
        errors.ok(result);
    }

    if args.backoff_base > args.backoff_max {
        let base = humantime::format_duration(args.backoff_base);
        let max = humantime::format_duration(args.backoff_max);
        match (max_lit, base_lit) {
            (Some(lit), _) => errors.push(Error::new_spanned(
                lit,
                format!("`backoff_max` must be at least `backoff_base` ({base})"),
            )),
            (None, Some(lit)) => errors.push(Error::new_spanned(
                lit,
                format!(
                    "`backoff_base` must be at most `backoff_max` ({max} by default); \
                     lower it or set `backoff_max`"
                ),
            )),
            (None, None) => unreachable!("the defaults have base <= max"),
        }
    }

    match timing {
        Some((timing, _)) => {
            if let (Timing::Every(_), Some((_, value))) = (&timing, &tz) {
                errors.push(Error::new_spanned(
                    value,
                    "`tz` applies to `schedule`; `every` counts from the Unix epoch and has no \
                     time zone",
                ));
            }
            args.schedule = Some(Schedule {
                timing,
                tz: tz.map_or_else(|| rules::DEFAULT_ZONE.to_owned(), |(zone, _)| zone),
                misfire: misfire.map_or(Misfire::default(), |(misfire, _)| misfire),
                overlap: overlap.is_none_or(|(allowed, _)| allowed),
            });
        }
        None => {
            for (key, value) in [
                ("tz", tz.map(|(_, value)| value)),
                ("misfire", misfire.map(|(_, value)| value)),
                ("overlap", overlap.map(|(_, value)| value)),
            ] {
                if let Some(value) = value {
                    errors.push(Error::new_spanned(
                        value,
                        format!(
                            "`{key}` applies to scheduled tasks; set `schedule` or `every` too"
                        ),
                    ));
                }
            }
        }
    }

    errors.finish(args)
}

/// `skip`, `coalesce` or `backfill(N)`, in the runtime's wording.
fn parse_misfire(lit: &LitStr) -> syn::Result<Misfire> {
    let text = lit.value();
    rules::parse_misfire(&text)
        .map_err(|reason| Error::new_spanned(lit, format!("invalid schedule {text:?}: {reason}")))
}

/// The one place that words a repeated option, so every option says it the same way.
fn specified_more_than_once(key: &syn::Ident) -> Error {
    Error::new_spanned(key, format!("`{key}` specified more than once"))
}

/// The one wording of an unknown option, which lists every option there is.
fn unknown_option(tokens: impl quote::ToTokens, name: &str) -> Error {
    let expected = OPTIONS
        .iter()
        .map(|option| format!("`{option}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Error::new_spanned(
        tokens,
        format!("unknown option `{name}`; expected one of {expected}"),
    )
}

/// Several errors reported as one, so a user fixes them in a single round.
#[derive(Default)]
pub(crate) struct Errors(Option<Error>);

impl Errors {
    /// Add one problem.
    pub(crate) fn push(&mut self, error: Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// The value of `result`, or `None` after adding its problem.
    pub(crate) fn ok<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    /// `value` when nothing was pushed, else every problem.
    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}

/// The literal of a value, looking through the invisible groups that `macro_rules!` adds
/// around a `$value:expr`.
fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(expr) => Some(&expr.lit),
        Expr::Group(group) => literal(&group.expr),
        _ => None,
    }
}

fn string<'a>(value: &'a Expr, key: &str, example: &str) -> syn::Result<&'a LitStr> {
    match literal(value) {
        Some(Lit::Str(lit)) => Ok(lit),
        _ => Err(Error::new_spanned(
            value,
            format!("`{key}` expects a string, like `{key} = \"{example}\"`"),
        )),
    }
}

fn boolean(value: &Expr, key: &str, example: bool) -> syn::Result<bool> {
    match literal(value) {
        Some(Lit::Bool(lit)) => Ok(lit.value),
        _ => Err(Error::new_spanned(
            value,
            format!("`{key}` expects `true` or `false`, like `{key} = {example}`"),
        )),
    }
}

fn retries(value: &Expr) -> syn::Result<u32> {
    match literal(value) {
        // syn reads `-1` here as one negative literal.
        Some(Lit::Int(lit)) if lit.base10_digits().starts_with('-') => Err(Error::new_spanned(
            lit,
            "`retries` cannot be negative; use `retries = 0` for no retries",
        )),
        Some(Lit::Int(lit)) => lit.base10_parse::<u32>().map_err(|_| {
            Error::new_spanned(lit, format!("`retries` must be at most {}", u32::MAX))
        }),
        _ => Err(Error::new_spanned(
            value,
            "`retries` expects an integer, like `retries = 3`",
        )),
    }
}

/// A queue name is part of Redis keys: the runtime's rule for key-safe names, worded for the
/// option.
fn queue(lit: &LitStr) -> syn::Result<String> {
    let queue = lit.value();
    let problem = match rules::check_name(&queue) {
        Ok(()) => return Ok(queue),
        Err(problem) => problem,
    };
    let message = match problem {
        NameProblem::Empty => {
            "`queue` must not be empty; leave it out to use \"default\"".to_owned()
        }
        NameProblem::Whitespace => {
            "`queue` must not contain whitespace, like `queue = \"emails\"`".to_owned()
        }
        NameProblem::TooLong => "`queue` must be at most 200 characters".to_owned(),
        NameProblem::Reserved(c) => format!(
            "`queue` must not contain `{c}`: queue names become part of Redis keys, where `:` \
             separates parts and braces make the hash tag"
        ),
    };
    Err(Error::new_spanned(lit, message))
}

fn backoff(lit: &LitStr) -> syn::Result<Backoff> {
    match lit.value().as_str() {
        rules::BACKOFF_EXPONENTIAL => Ok(Backoff::Exponential),
        rules::BACKOFF_LINEAR => Ok(Backoff::Linear),
        rules::BACKOFF_FIXED => Ok(Backoff::Fixed),
        rules::BACKOFF_NONE => Ok(Backoff::None),
        other => Err(Error::new_spanned(
            lit,
            format!(
                "unknown backoff `{other}`; expected one of {:?}, {:?}, {:?}, {:?}",
                rules::BACKOFF_EXPONENTIAL,
                rules::BACKOFF_LINEAR,
                rules::BACKOFF_FIXED,
                rules::BACKOFF_NONE
            ),
        )),
    }
}

/// `"60/m"`, `"10/s burst 5"`, or the name of a shared limit such as `"eodhd"`.
fn rate_limit(lit: &LitStr) -> syn::Result<LimitArg<rules::RateSpec>> {
    let text = lit.value();
    if rules::is_named_limit(&text) {
        return limit_name(lit).map(LimitArg::Named);
    }
    rules::parse_rate(&text).map(LimitArg::Own).map_err(|reason| {
        Error::new_spanned(
            lit,
            format!(
                "invalid `rate_limit` {text:?}: {reason}; expected {}, or the name of a shared limit",
                rules::RATE_FORM
            ),
        )
    })
}

/// `concurrency = 2`, or `concurrency = "renderer"` for a shared limit.
fn concurrency(value: &Expr) -> syn::Result<LimitArg<u32>> {
    let expected = "`concurrency` expects a whole number of at least 1, like `concurrency = 2`, or the name of a shared limit, like `concurrency = \"renderer\"`";
    match literal(value) {
        Some(Lit::Int(lit)) => match lit.base10_parse::<u32>() {
            Ok(n) if n >= 1 => Ok(LimitArg::Own(n)),
            _ => Err(Error::new_spanned(lit, expected)),
        },
        Some(Lit::Str(lit)) => limit_name(lit).map(LimitArg::Named),
        _ => Err(Error::new_spanned(value, expected)),
    }
}

/// The name of a shared limit: key-safe, starting with a letter.
fn limit_name(lit: &LitStr) -> syn::Result<String> {
    let name = lit.value();
    if !rules::is_limit_name(&name) {
        return Err(Error::new_spanned(
            lit,
            format!(
                "{name:?} cannot name a shared limit: it starts with a letter and has no blanks, `:`, `{{` or `}}`"
            ),
        ));
    }
    Ok(name)
}

/// A humantime duration that the runtime can hold: whole milliseconds that fit in a `u64`.
/// `"until_started"`, `"until_finished"` or `"for = 1h"` (also `"for 1h"`).
fn unique(lit: &LitStr) -> syn::Result<UniqueArg> {
    let text = lit.value();
    let expected = "`unique` is \"until_started\", \"until_finished\" or \"for = <duration>\", like \"for = 1h\"";
    match text.trim() {
        "until_started" => Ok(UniqueArg::UntilStarted),
        "until_finished" => Ok(UniqueArg::UntilFinished),
        other => {
            let Some(rest) = other.strip_prefix("for") else {
                return Err(Error::new_spanned(lit, format!("{expected}, not {text:?}")));
            };
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
            let hold = humantime::parse_duration(rest).map_err(|err| {
                Error::new_spanned(lit, format!("{expected}; {rest:?} is no duration: {err}"))
            })?;
            if hold.is_zero()
                || hold.subsec_nanos() % 1_000_000 != 0
                || u64::try_from(hold.as_millis()).is_err()
            {
                return Err(Error::new_spanned(
                    lit,
                    "`unique = \"for = ..\"` is a whole number of milliseconds, more than zero",
                ));
            }
            Ok(UniqueArg::For(hold))
        }
    }
}

fn duration(lit: &LitStr, key: &str) -> syn::Result<Duration> {
    let text = lit.value();
    let duration = humantime::parse_duration(&text).map_err(|err| {
        Error::new_spanned(
            lit,
            format!("invalid duration \"{text}\": {err}; write it like \"30s\" or \"1h 30m\""),
        )
    })?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(Error::new_spanned(
            lit,
            format!("`{key}` has millisecond precision; write whole milliseconds, like \"1500ms\""),
        ));
    }
    if u64::try_from(duration.as_millis()).is_err() {
        return Err(Error::new_spanned(
            lit,
            format!("`{key}` is too long; it must fit in a u64 of milliseconds"),
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse `input` and compare with the expected options or the expected messages, one a line.
    fn check(input: &str, expected: Result<Args, &str>) {
        let tokens: TokenStream = input.parse().expect("test input lexes");
        let actual = parse(tokens).map_err(|err| {
            err.into_iter()
                .map(|err| err.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        });
        let expected = expected.map_err(str::to_owned);
        assert_eq!(actual, expected, "input: {input}");
    }

    fn scheduled(timing: Timing) -> Schedule {
        Schedule {
            timing,
            tz: "UTC".into(),
            misfire: Misfire::Coalesce,
            overlap: true,
        }
    }

    fn with(change: impl FnOnce(&mut Args)) -> Args {
        let mut args = Args::default();
        change(&mut args);
        args
    }

    #[test]
    fn valid_options() {
        let cases: &[(&str, Args)] = &[
            ("", Args::default()),
            (
                r#"name = "reports.daily""#,
                with(|a| a.name = Some("reports.daily".into())),
            ),
            (r#"queue = "emails""#, with(|a| a.queue = "emails".into())),
            ("retries = 0", with(|a| a.retries = 0)),
            ("retries = 10,", with(|a| a.retries = 10)),
            (r#"backoff = "exp""#, Args::default()),
            (
                r#"backoff = "linear""#,
                with(|a| a.backoff = Backoff::Linear),
            ),
            (r#"backoff = "fixed""#, with(|a| a.backoff = Backoff::Fixed)),
            (r#"backoff = "none""#, with(|a| a.backoff = Backoff::None)),
            (
                r#"backoff_base = "250ms""#,
                with(|a| a.backoff_base = Duration::from_millis(250)),
            ),
            (
                r#"backoff_max = "1h 30m""#,
                with(|a| a.backoff_max = Duration::from_secs(90 * 60)),
            ),
            (
                r#"backoff_base = "1m", backoff_max = "1m""#,
                with(|a| {
                    a.backoff_base = Duration::from_secs(60);
                    a.backoff_max = Duration::from_secs(60);
                }),
            ),
            ("jitter = false", with(|a| a.jitter = false)),
            ("ignore_result = true", with(|a| a.ignore_result = true)),
            (
                r#"timeout = "30s""#,
                with(|a| a.timeout = Some(Duration::from_secs(30))),
            ),
            (
                r#"unique = "until_started""#,
                with(|a| a.unique = Some(UniqueArg::UntilStarted)),
            ),
            (
                r#"unique = "for = 1h""#,
                with(|a| a.unique = Some(UniqueArg::For(Duration::from_secs(3600)))),
            ),
            (
                r#"unique = "for 90s""#,
                with(|a| a.unique = Some(UniqueArg::For(Duration::from_secs(90)))),
            ),
            (
                r#"rate_limit = "10/s burst 5", concurrency = 2"#,
                with(|a| {
                    a.rate_limit = Some(LimitArg::Own(rules::RateSpec {
                        count: 10,
                        per_ms: 1000,
                        burst: 5,
                    }));
                    a.concurrency = Some(LimitArg::Own(2));
                }),
            ),
            (
                r#"rate_limit = "eodhd", concurrency = "renderer""#,
                with(|a| {
                    a.rate_limit = Some(LimitArg::Named("eodhd".into()));
                    a.concurrency = Some(LimitArg::Named("renderer".into()));
                }),
            ),
            (
                r#"name = "n", queue = "q", retries = 5, backoff = "linear", backoff_base = "2s",
                   backoff_max = "10m", jitter = false, ignore_result = true, timeout = "1m""#,
                Args {
                    name: Some("n".into()),
                    queue: "q".into(),
                    retries: 5,
                    backoff: Backoff::Linear,
                    backoff_base: Duration::from_secs(2),
                    backoff_max: Duration::from_secs(600),
                    jitter: false,
                    ignore_result: true,
                    timeout: Some(Duration::from_secs(60)),
                    unique: None,
                    rate_limit: None,
                    concurrency: None,
                    priority: Priority::Normal,
                    schedule: None,
                },
            ),
            (
                r#"schedule = "*/15 * * * *""#,
                with(|a| a.schedule = Some(scheduled(Timing::Cron("*/15 * * * *".into())))),
            ),
            (
                r#"schedule = "30 2 * * *", tz = "Europe/Stockholm", misfire = "backfill(10)",
                   overlap = false"#,
                with(|a| {
                    a.schedule = Some(Schedule {
                        tz: "Europe/Stockholm".into(),
                        misfire: Misfire::Backfill(10),
                        overlap: false,
                        ..scheduled(Timing::Cron("30 2 * * *".into()))
                    })
                }),
            ),
            (
                r#"schedule = "*/10 * * * * *", misfire = "skip""#,
                with(|a| {
                    a.schedule = Some(Schedule {
                        misfire: Misfire::Skip,
                        ..scheduled(Timing::Cron("*/10 * * * * *".into()))
                    })
                }),
            ),
            (r#"priority = "low""#, with(|a| a.priority = Priority::Low)),
            (
                r#"every = "90s""#,
                with(|a| a.schedule = Some(scheduled(Timing::Every(Duration::from_secs(90))))),
            ),
            (
                r#"schedule = "@daily""#,
                with(|a| a.schedule = Some(scheduled(Timing::Cron("@daily".into())))),
            ),
        ];
        for (input, expected) in cases {
            check(input, Ok(expected.clone()));
        }
    }

    #[test]
    fn mistakes() {
        let cases: &[(&str, &str)] = &[
            (
                "foo = 1",
                "unknown option `foo`; expected one of `name`, `queue`, `retries`, `backoff`, \
                 `backoff_base`, `backoff_max`, `jitter`, `ignore_result`, `timeout`, `unique`, \
                 `rate_limit`, `concurrency`, `priority`, `schedule`, `every`, `tz`, `misfire`, `overlap`",
            ),
            (
                "a::b = 1",
                "unknown option `a::b`; expected one of `name`, `queue`, `retries`, `backoff`, \
                 `backoff_base`, `backoff_max`, `jitter`, `ignore_result`, `timeout`, `unique`, \
                 `rate_limit`, `concurrency`, `priority`, `schedule`, `every`, `tz`, `misfire`, `overlap`",
            ),
            (
                "retries = 1, retries = 2",
                "`retries` specified more than once",
            ),
            (
                r#"priority = "urgent""#,
                "invalid `priority`: expected `high`, `normal` or `low`, not \"urgent\"",
            ),
            (
                r#"rate_limit = "10/fortnight""#,
                "invalid `rate_limit` \"10/fortnight\": the period \"fortnight\" is not s, m, h, d or a duration; expected `<count>/<period>`, the period `s`, `m`, `h`, `d` or a duration such as `10s`, then optionally `burst <n>`: \"60/m\", \"10/s burst 5\", \"100/10s\", or the name of a shared limit",
            ),
            (
                r#"rate_limit = "api key""#,
                "\"api key\" cannot name a shared limit: it starts with a letter and has no blanks, `:`, `{` or `}`",
            ),
            (
                "concurrency = 0",
                "`concurrency` expects a whole number of at least 1, like `concurrency = 2`, or the name of a shared limit, like `concurrency = \"renderer\"`",
            ),
            (
                r#"retries = "3""#,
                "`retries` expects an integer, like `retries = 3`",
            ),
            (
                "retries = -1",
                "`retries` cannot be negative; use `retries = 0` for no retries",
            ),
            (
                "retries = 2.5",
                "`retries` expects an integer, like `retries = 3`",
            ),
            (
                "retries = 4294967296",
                "`retries` must be at most 4294967295",
            ),
            (
                "name = 1",
                "`name` expects a string, like `name = \"reports.daily\"`",
            ),
            (
                r#"name = """#,
                "`name` must not be empty; leave it out to use the function's path",
            ),
            (
                "queue = emails",
                "`queue` expects a string, like `queue = \"emails\"`",
            ),
            (
                r#"queue = """#,
                "`queue` must not be empty; leave it out to use \"default\"",
            ),
            (
                r#"queue = "high prio""#,
                "`queue` must not contain whitespace, like `queue = \"emails\"`",
            ),
            (
                r#"queue = "mail:high""#,
                "`queue` must not contain `:`: queue names become part of Redis keys, where `:` \
                 separates parts and braces make the hash tag",
            ),
            (
                r#"queue = "{mail}""#,
                "`queue` must not contain `{`: queue names become part of Redis keys, where `:` \
                 separates parts and braces make the hash tag",
            ),
            (
                "backoff = 2",
                "`backoff` expects a string, like `backoff = \"exp\"`",
            ),
            (
                r#"backoff = "quadratic""#,
                "unknown backoff `quadratic`; expected one of \"exp\", \"linear\", \"fixed\", \"none\"",
            ),
            (
                "backoff_base = 1",
                "`backoff_base` expects a string, like `backoff_base = \"1s\"`",
            ),
            (
                r#"backoff_base = "soon""#,
                "invalid duration \"soon\": expected number at 0; write it like \"30s\" or \"1h 30m\"",
            ),
            (
                r#"backoff_base = "1500us""#,
                "`backoff_base` has millisecond precision; write whole milliseconds, like \"1500ms\"",
            ),
            (
                r#"backoff_max = "1s", backoff_base = "1m""#,
                "`backoff_max` must be at least `backoff_base` (1m)",
            ),
            (
                r#"backoff_base = "2h""#,
                "`backoff_base` must be at most `backoff_max` (1h by default); \
                 lower it or set `backoff_max`",
            ),
            (
                "jitter = 1",
                "`jitter` expects `true` or `false`, like `jitter = false`",
            ),
            (
                r#"ignore_result = "yes""#,
                "`ignore_result` expects `true` or `false`, like `ignore_result = true`",
            ),
            (
                "timeout = 30",
                "`timeout` expects a string, like `timeout = \"30s\"`",
            ),
            (
                r#"timeout = "0s""#,
                "`timeout` must be longer than zero; leave it out for no time limit",
            ),
            (
                r#"unique = "for = 0s""#,
                "`unique = \"for = ..\"` is a whole number of milliseconds, more than zero",
            ),
            (
                r#"unique = "for = soon""#,
                "`unique` is \"until_started\", \"until_finished\" or \"for = <duration>\", like \"for = 1h\"; \"soon\" is no duration: expected number at 0",
            ),
            (
                r#"timeout = "18446744073709552s""#,
                "`timeout` is too long; it must fit in a u64 of milliseconds",
            ),
            ("retries", "expected `=`"),
            (
                r#"schedule = "*/15 * * *""#,
                "invalid schedule \"*/15 * * *\": expected 5 fields (minute hour day-of-month \
                 month day-of-week) or 6 with seconds first, found 4",
            ),
            (
                r#"schedule = "61 * * * *""#,
                "invalid schedule \"61 * * * *\": minute field `61`: number out of bounds; \
                 expected 0-59",
            ),
            (
                r#"schedule = "0 0 30 2 *""#,
                "invalid schedule \"0 0 30 2 *\": it never fires: no date matches it",
            ),
            (
                r#"schedule = "0 0 * * MON-FOO""#,
                "invalid schedule \"0 0 * * MON-FOO\": day-of-week field `MON-FOO`: illegal \
                 character `F`; expected 0-7 or SUN-SAT, with # or L",
            ),
            (
                "schedule = 5",
                "`schedule` expects a string, like `schedule = \"*/15 * * * *\"`",
            ),
            (
                r#"every = "1500ms""#,
                "`every` is a whole number of seconds, at least one, like \"90s\"",
            ),
            (
                r#"every = "1m", schedule = "* * * * *""#,
                "`schedule` and `every` cannot both be set; pick one",
            ),
            (
                r#"schedule = "0 3 * * *", tz = "Europe/Stockolm""#,
                "invalid schedule \"Europe/Stockolm\": not a time zone; expected an IANA name \
                 like `Europe/Stockholm` or `UTC`",
            ),
            (
                r#"every = "1h", tz = "UTC""#,
                "`tz` applies to `schedule`; `every` counts from the Unix epoch and has no time \
                 zone",
            ),
            (
                r#"schedule = "0 3 * * *", misfire = "backfill(0)""#,
                "invalid schedule \"backfill(0)\": expected `skip`, `coalesce` or `backfill(N)` \
                 with N from 1 to 1000",
            ),
            (
                r#"tz = "UTC", overlap = false"#,
                "`tz` applies to scheduled tasks; set `schedule` or `every` too\n\
                 `overlap` applies to scheduled tasks; set `schedule` or `every` too",
            ),
            // Every independent mistake is reported in one round.
            (
                r#"retries = "x", bogus = 1, jitter = 2, retries = 3"#,
                "`retries` expects an integer, like `retries = 3`\n\
                 unknown option `bogus`; expected one of `name`, `queue`, `retries`, `backoff`, \
                 `backoff_base`, `backoff_max`, `jitter`, `ignore_result`, `timeout`, `unique`, \
                 `rate_limit`, `concurrency`, `priority`, `schedule`, `every`, `tz`, `misfire`, `overlap`\n\
                 `jitter` expects `true` or `false`, like `jitter = false`\n\
                 `retries` specified more than once",
            ),
        ];
        for (input, expected) in cases {
            check(input, Err(expected));
        }
    }
}
