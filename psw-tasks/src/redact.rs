//! What may be shown of a value that may be secret: URLs with their credentials masked,
//! decoding errors without the values they quote, and text from outside made safe to print.
//!
//! Job arguments are the user's data (API keys, tokens, personal details), and they reach
//! logs, job records, dead letters and alerts only through error messages. Those messages are
//! made here, so the rule "never an argument value" is kept in one place.

use std::borrow::Cow;

/// `url` with its credentials replaced by `***` (`redis://***@host:6379`): everything between
/// the scheme and the last `@` of the whole value (a password may hold a raw `@`, `?`, `#` or
/// `/`, so no earlier delimiter ends the login), and the `pass=` or `password=` query
/// parameters that `redis+unix://` and `unix://` URLs carry. Every form the redis crate
/// accepts is covered; a value that is no URL loses whatever precedes an `@`, since that may
/// still be a secret.
pub fn url(url: &str) -> String {
    let (head, rest) = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            (format!("{}://***", &url[..scheme_end]), &url[at..])
        }
        // No scheme (a mistyped value): whatever comes before the `@` may still be a secret.
        (None, Some(at)) => ("***".to_owned(), &url[at..]),
        _ => (String::new(), url),
    };
    let (body, query) = match rest.split_once('?') {
        Some((body, query)) => (body, Some(query)),
        None => (rest, None),
    };
    let mut redacted = head + body;
    if let Some(query) = query {
        redacted.push('?');
        let parameters = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                _ => parameter.to_owned(),
            });
        redacted.push_str(&parameters.collect::<Vec<_>>().join("&"));
    }
    redacted
}

fn is_secret_parameter(name: &str) -> bool {
    ["pass", "password", "secret", "token", "key"]
        .iter()
        .any(|secret| name.eq_ignore_ascii_case(secret))
}

/// A MessagePack decoding error as words that never quote the input: the kind of value found
/// and what was expected stay, the value itself goes. serde's own messages quote values in
/// `"..."` or `` `...` `` (`invalid type: string "sk_live_…", expected a sequence`); those are
/// cut wherever they describe the input. rmp-serde's own variants (a wrong marker, bad UTF-8)
/// carry no value and pass as they are.
pub(crate) fn decode_error(err: &rmp_serde::decode::Error) -> String {
    match err {
        rmp_serde::decode::Error::Syntax(message) => serde_message(message),
        rmp_serde::decode::Error::Uncategorized(message) => {
            format!("uncategorized error: {}", serde_message(message))
        }
        other => other.to_string(),
    }
}

/// The messages serde builds (see `serde::de::Error`): each describes the input, then, from
/// the last `, expected` on, what the type expects, in its author's words.
const SERDE_FORMS: [&str; 5] = [
    "invalid type: ",
    "invalid value: ",
    "invalid length ",
    "unknown variant ",
    "unknown field ",
];

/// The kinds of input serde names (`serde::de::Unexpected`), some followed by the value.
const INPUT_KINDS: [&str; 16] = [
    "string",
    "character",
    "integer",
    "floating point",
    "boolean",
    "byte array",
    "unit value",
    "Option value",
    "newtype struct",
    "sequence",
    "map",
    "enum",
    "unit variant",
    "newtype variant",
    "tuple variant",
    "struct variant",
];

/// A serde error message without the input values it quotes.
///
/// serde's own forms are rebuilt from their parts: the form, the kind of input (never its
/// value) and what was expected. The value may hold anything, `, expected` included, but it
/// comes before the description, so the last `, expected` (or `, there are no`) ends it. A message of any other form
/// comes from a type's own `Deserialize` and may quote its input anywhere, so every quoted part
/// is cut. Names of missing or duplicate fields are the type's own, and stay.
pub(crate) fn serde_message(message: &str) -> String {
    if message.starts_with("missing field `") || message.starts_with("duplicate field `") {
        return message.to_owned();
    }
    let Some(form) = SERDE_FORMS.iter().find(|form| message.starts_with(**form)) else {
        return without_quoted(message);
    };
    let described = &message[form.len()..];
    // Whichever of serde's two endings comes last is the real one: the value before it may
    // hold the other.
    let (found, expected) = match described
        .rfind(", expected")
        .max(described.rfind(", there are no"))
    {
        Some(end) => described.split_at(end),
        None => (described, ""),
    };
    let kind = match *form {
        "invalid type: " | "invalid value: " => INPUT_KINDS
            .iter()
            .find(|kind| found.starts_with(**kind))
            .copied()
            .unwrap_or("a value"),
        // A length is a count, not the input's content.
        "invalid length " if found.bytes().all(|b| b.is_ascii_digit()) => found,
        // An unknown variant's or field's name is the input's.
        _ => "",
    };
    format!(
        "{}{kind}{expected}",
        if kind.is_empty() {
            form.trim_end()
        } else {
            form
        }
    )
}

/// `text` with every `"..."` (Rust's escaped form, as `{:?}` writes it) and `` `...` `` part
/// cut; an unterminated quote cuts to the end.
fn without_quoted(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut escaped = false;
                for inner in chars.by_ref() {
                    match inner {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            '`' => {
                for inner in chars.by_ref() {
                    if inner == '`' {
                        break;
                    }
                }
            }
            c => kept.push(c),
        }
    }
    // A cut leaves `found  at` or `found ,`: close the gaps it left.
    let mut tidy = String::with_capacity(kept.len());
    for word in kept.split(' ').filter(|word| !word.is_empty()) {
        if !tidy.is_empty() && !word.starts_with(',') {
            tidy.push(' ');
        }
        tidy.push_str(word);
    }
    tidy
}

/// `text` with control characters (newlines, escape sequences, NUL) written as escapes, so
/// that text from outside cannot forge lines or drive the terminal it is printed to.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_form_loses_its_secrets() {
        for (url, redacted) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:secret@host:6379/2", "redis://***@host:6379/2"),
            ("rediss://user:p@ss@host", "rediss://***@host"),
            ("valkey://user:secret@host", "valkey://***@host"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=secret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "unix:///run/redis.sock?user=app&password=secret",
                "unix:///run/redis.sock?user=app&password=***",
            ),
            (
                "redis://host:6379/0?protocol=resp3",
                "redis://host:6379/0?protocol=resp3",
            ),
            ("redis://host?x=secret@y", "redis://***@y"),
            // Raw delimiters in a password: the login still ends at the last `@`.
            ("redis://:pa?ss@host", "redis://***@host"),
            ("redis://:pa#ss@host:6379", "redis://***@host:6379"),
            (
                "redis://:pa/ss@host/0?password=x",
                "redis://***@host/0?password=***",
            ),
            ("secret@host:6379", "***@host:6379"),
            (
                "mysql://user:secret@db:3306/psw5",
                "mysql://***@db:3306/psw5",
            ),
            ("mysql://u:1234/x@db/psw", "mysql://***@db/psw"),
            (
                "sqlite://data/psw.db?mode=rwc",
                "sqlite://data/psw.db?mode=rwc",
            ),
        ] {
            assert_eq!(super::url(url), redacted, "{url}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code, reason = "only decoded, to make serde's messages")]
    struct Request {
        symbols: Vec<String>,
        mode: Mode,
    }

    #[derive(Debug, serde::Deserialize)]
    enum Mode {
        Fast,
    }

    fn decode_message<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        value: &impl serde::Serialize,
    ) -> String {
        let bytes = rmp_serde::to_vec_named(value).unwrap();
        decode_error(&rmp_serde::from_slice::<T>(&bytes).unwrap_err())
    }

    #[test]
    fn decoding_errors_say_what_was_found_and_expected_but_never_the_value() {
        let secret = "sk_live_SECRET \"quoted\" `ticked`";
        for (message, expected) in [
            (
                decode_message::<Vec<String>>(&secret),
                "invalid type: string, expected a sequence",
            ),
            (
                decode_message::<Request>(&secret),
                "invalid type: string, expected struct Request",
            ),
            (
                decode_message::<Request>(&serde_json::json!({"symbols": ["A"], "mode": secret})),
                "unknown variant, expected `Fast`",
            ),
            (
                decode_message::<u8>(&-1_234_567_i64),
                "invalid value: integer, expected u8",
            ),
            (
                decode_message::<Request>(&serde_json::json!({"mode": "Fast"})),
                "missing field `symbols`",
            ),
        ] {
            assert!(!message.contains("SECRET"), "{message}");
            assert!(!message.contains("1234567"), "{message}");
            assert_eq!(message, expected);
        }
    }

    #[test]
    fn a_value_that_mimics_the_form_cannot_escape() {
        for (message, expected) in [
            (
                "invalid value: character ```, expected a digit",
                "invalid value: character, expected a digit",
            ),
            (
                "unknown variant `x`, expected SECRET`, expected `Fast`",
                "unknown variant, expected `Fast`",
            ),
            (
                "unknown field `SECRET`, there are no fields",
                "unknown field, there are no fields",
            ),
            // A key that holds the other ending: the last ending is serde's.
            (
                "unknown field `SECRET, expected TOKEN`, there are no fields",
                "unknown field, there are no fields",
            ),
            (
                "unknown field `SECRET, there are no TOKEN`, expected `mode`",
                "unknown field, expected `mode`",
            ),
            (
                "invalid type: SECRET thing, expected a map",
                "invalid type: a value, expected a map",
            ),
            (
                "invalid length 3, expected a tuple of size 2",
                "invalid length 3, expected a tuple of size 2",
            ),
        ] {
            assert_eq!(serde_message(message), expected);
        }
    }

    #[test]
    fn a_types_own_message_loses_every_quoted_part() {
        assert_eq!(
            serde_message("invalid character: expected `urn:uuid:`, found `S` at 1"),
            "invalid character: expected, found at 1"
        );
        assert_eq!(serde_message("bad \"SECRET"), "bad");
    }

    #[test]
    fn control_characters_print_as_escapes() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(
            printable("a\nforged line\u{1b}[2J\0"),
            "a\\nforged line\\u{1b}[2J\\u{0}"
        );
    }
}
