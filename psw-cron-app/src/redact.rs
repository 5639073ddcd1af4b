//! What may be shown of a secret. URLs and DSNs (`DATABASE_URL`, `SENTRY_DSN`) are masked by
//! the same rule as Redis URLs, so the rule lives once, in `psw_tasks`.

/// `url` with its credentials masked, for logs and errors: `mysql://***@host/db`. A value that
/// is no URL keeps only what follows its last `@`, since what precedes it may be a secret.
pub use psw_tasks::redact_url as url;

/// What a `Debug` shows in place of a key, token or password.
pub const MASK: &str = "***";

#[cfg(test)]
mod tests {
    #[test]
    fn dsns_of_the_app_are_masked() {
        for (url, redacted) in [
            (
                "mysql://user:secret@mysql:3306/psw5_core",
                "mysql://***@mysql:3306/psw5_core",
            ),
            (
                "https://key@sentry.example.com/1",
                "https://***@sentry.example.com/1",
            ),
            (
                "sqlite://data/psw-cron.db?mode=rwc",
                "sqlite://data/psw-cron.db?mode=rwc",
            ),
            ("mysql:user:pw@host/db", "***@host/db"),
        ] {
            assert_eq!(super::url(url), redacted, "{url}");
        }
    }
}
