//! What may be shown of a secret: URLs and DSNs with their credentials masked, for logs and
//! error messages.

/// `url` with its credentials masked, for logs and errors: `mysql://***@host/db`. A value that
/// is no URL keeps only what follows its last `@`, since what precedes it may be a secret.
pub fn url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // Both setters only fail for URLs that cannot hold credentials at all.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("***");
            parsed.to_string()
        }
        // No credentials as a URL reads them, and no `@` that could hide any.
        Ok(_) if !url.contains('@') => url.to_owned(),
        // Not a URL, or one whose secret did not parse as one (a mistyped scheme, a password
        // with a `/` in it): mask everything before the last `@`.
        _ => match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_in_urls_are_masked() {
        for (url, redacted) in [
            (
                "mysql://user:secret@mysql:3306/psw5_core",
                "mysql://***@mysql:3306/psw5_core",
            ),
            (
                "https://key@sentry.example.com/1",
                "https://***@sentry.example.com/1",
            ),
            ("mysql://user:p@ss@db/x", "mysql://***@db/x"),
            (
                "sqlite://data/psw-cron.db?mode=rwc",
                "sqlite://data/psw-cron.db?mode=rwc",
            ),
            ("pw@nowhere", "***@nowhere"),
            ("mysql:user:pw@host/db", "***@host/db"),
            ("mysql://u:1234/x@db/psw", "***@db/psw"),
        ] {
            assert_eq!(super::url(url), redacted, "{url}");
        }
    }
}
