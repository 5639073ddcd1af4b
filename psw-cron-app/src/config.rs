//! The app's settings, read from the environment variables of the deployment it replaces
//! (`.env.example` lists them all). The broker's variables (`REDIS_URL`, `CELERY_BROKER_URL`,
//! `CELERY_WORKER_CONCURRENCY`, ...) are read by [`psw_tasks::Config`]; the rest are here.
//!
//! A bad value fails at start with an error that names the variable and the expected form.

use psw_tasks::RateLimit;
use std::path::PathBuf;
use std::time::Duration;

use chrono_tz::Tz;

use crate::notify::{EmailSettings, SmtpSecurity, TelegramSettings};
use crate::providers::ProviderSettings;
use crate::redact;

/// A setting whose value has the wrong form: the variable, its value (secrets masked) and the
/// form expected, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable} = {value:?}: expected {expected}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: String,
    /// The value it holds, with any secret in it masked.
    pub value: String,
    /// The form expected.
    pub expected: String,
}

impl ConfigError {
    fn new(
        variable: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError {
            variable: variable.into(),
            value: value.into(),
            expected: expected.into(),
        }
    }
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A duration like `500ms`, `30s`, `5m`, `1h` or `1d`, or a whole number of seconds, not zero.
fn parse_duration(variable: &str, value: &str) -> Result<Duration> {
    let parsed = match value.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(value),
    };
    match parsed {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(ConfigError::new(
            variable,
            value,
            "a positive duration like `500ms`, `30s`, `5m`, `1h` or `1d`",
        )),
    }
}

/// Everything the jobs need to know besides the broker. Its `Debug` masks every secret.
#[derive(Clone)]
pub struct AppConfig {
    /// `DATABASE_URL`: `sqlite://...` or `mysql://...` (`mariadb://` is read as `mysql://`);
    /// default a SQLite file in the data folder.
    pub database_url: String,
    /// Whether `database_url` is the embedded default.
    pub database_is_default: bool,
    /// `PSW_DATA_DIR` (default `./data`): the SQLite file of the default database.
    pub data_dir: PathBuf,
    /// Quote providers.
    pub providers: ProviderSettings,
    /// `PRICE_REFRESH` (default 10m): a stock whose price was fetched more recently is not due.
    pub price_refresh: Duration,
    /// `PRICE_MAX_AGE` (default 4d, a long weekend): an older price is not fresh enough to
    /// value a holding with.
    pub price_max_age: Duration,
    /// `REPORT_TIMEZONE`, else `CELERY_TIMEZONE` (default UTC): the zone of the 08:00 report
    /// run and of the report's day.
    pub report_zone: Tz,
    /// `PRICE_HISTORY_RETENTION` (default 365d).
    pub price_retention: Duration,
    /// `VALUE_HISTORY_RETENTION` (default 730d).
    pub value_retention: Duration,
    /// `REPORT_RETENTION` (default 90d).
    pub report_retention: Duration,
    /// `DEAD_LETTER_RETENTION` (default 30d): older dead letters are removed by the cleanup.
    pub dead_letter_retention: Duration,
    /// E-mail, when `EMAIL_SMTP_HOST` is set.
    pub email: Option<EmailSettings>,
    /// Telegram, when `TELEGRAM_BOT_TOKEN` is set.
    pub telegram: Option<TelegramSettings>,
    /// `SENTRY_DSN`.
    pub sentry_dsn: Option<String>,
    /// `SENTRY_ENVIRONMENT` (default `production`).
    pub sentry_environment: String,
    /// `FLOWER_BASIC_AUTH` (`user:password`): the dashboard's login.
    pub dashboard_auth: Option<(String, String)>,
    /// Thresholds of `monitor_task_health`.
    pub health: HealthThresholds,
    /// `ALERT_RATE_LIMIT` (default `10/1h`): at most this many dead-letter alerts per window
    /// per process; the rest are counted and summed up in the next alert.
    pub alert_limit: (u32, Duration),
}

// By hand, so that no password, key or DSN reaches a log; the destructuring makes a new field
// a compile error here rather than a silent omission.
impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AppConfig {
            database_url,
            database_is_default,
            data_dir,
            providers,
            price_refresh,
            price_max_age,
            report_zone,
            price_retention,
            value_retention,
            report_retention,
            dead_letter_retention,
            email,
            telegram,
            sentry_dsn,
            sentry_environment,
            dashboard_auth,
            health,
            alert_limit,
        } = self;
        f.debug_struct("AppConfig")
            .field("database_url", &redact::url(database_url))
            .field("database_is_default", database_is_default)
            .field("data_dir", data_dir)
            .field("providers", providers)
            .field("price_refresh", price_refresh)
            .field("price_max_age", price_max_age)
            .field("report_zone", report_zone)
            .field("price_retention", price_retention)
            .field("value_retention", value_retention)
            .field("report_retention", report_retention)
            .field("dead_letter_retention", dead_letter_retention)
            .field("email", email)
            .field("telegram", telegram)
            .field("sentry_dsn", &sentry_dsn.as_deref().map(redact::url))
            .field("sentry_environment", sentry_environment)
            .field(
                "dashboard_auth",
                &dashboard_auth
                    .as_ref()
                    .map(|(user, _)| (user, redact::MASK)),
            )
            .field("health", health)
            .field("alert_limit", alert_limit)
            .finish()
    }
}

/// When `monitor_task_health` raises an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthThresholds {
    /// `HEALTH_WINDOW` (default 15m): the span failure rates are computed over.
    pub window: Duration,
    /// `HEALTH_MAX_FAILURE_RATE` (default 0.5): failed attempts / finished attempts of a task.
    pub max_failure_rate: f64,
    /// `HEALTH_MIN_ATTEMPTS` (default 4): fewer attempts in the window say nothing.
    pub min_attempts: u64,
    /// `HEALTH_MAX_QUEUE_LAG` (default 1000): jobs waiting in one queue.
    pub max_queue_lag: u64,
    /// `HEALTH_MAX_DLQ_GROWTH` (default 10): new dead letters between two checks.
    pub max_dead_letter_growth: u64,
}

impl AppConfig {
    /// Read the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read settings through `lookup` (a variable name to its value); blank counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let duration = |name: &str, default: Duration| match get(name) {
            Some(value) => parse_duration(name, &value),
            None => Ok(default),
        };
        const DAY: Duration = Duration::from_secs(24 * 3600);

        let data_dir = PathBuf::from(get("PSW_DATA_DIR").unwrap_or_else(|| "data".to_owned()));
        let (database_url, database_is_default) = match get("DATABASE_URL") {
            Some(url) => (database_url(&url)?, false),
            None => (
                format!(
                    "sqlite://{}?mode=rwc",
                    data_dir.join("psw-cron.db").display()
                ),
                true,
            ),
        };

        let timeout = duration("QUOTE_TIMEOUT", Duration::from_secs(10))?;
        let rate = |name: &str, default: &str| -> Result<RateLimit> {
            let value = get(name).unwrap_or_else(|| default.to_owned());
            value.parse::<RateLimit>().map_err(|_| {
                ConfigError::new(
                    name,
                    &value,
                    "a rate limit `<count>/<period>` (period `s`, `m`, `h`, `d` or a duration such as `10s`), optionally with `burst <n>`: `1000/m`, `100/10s burst 10`",
                )
            })
        };
        let providers = ProviderSettings {
            eodhd_api_key: get("EODHD_API_KEY"),
            eodhd_base_url: base_url(&get, "EODHD_BASE_URL", "https://eodhd.com/api")?,
            borsdata_api_key: get("BORSDATA_API_KEY"),
            borsdata_base_url: base_url(
                &get,
                "BORSDATA_BASE_URL",
                "https://apiservice.borsdata.se",
            )?,
            timeout,
            eodhd_rate_limit: rate("EODHD_RATE_LIMIT", crate::providers::eodhd::PUBLISHED_LIMIT)?,
            borsdata_rate_limit: rate(
                "BORSDATA_RATE_LIMIT",
                crate::providers::borsdata::PUBLISHED_LIMIT,
            )?,
        };

        let report_zone = match get("REPORT_TIMEZONE")
            .map(|zone| ("REPORT_TIMEZONE", zone))
            .or_else(|| get("CELERY_TIMEZONE").map(|zone| ("CELERY_TIMEZONE", zone)))
        {
            Some((name, zone)) => zone.parse::<Tz>().map_err(|_| {
                ConfigError::new(
                    name,
                    &zone,
                    "an IANA time zone name like `UTC` or `Europe/Stockholm`",
                )
            })?,
            None => Tz::UTC,
        };

        let email = match get("EMAIL_SMTP_HOST") {
            None => None,
            Some(host) => Some(email_settings(&get, host)?),
        };
        let telegram = match get("TELEGRAM_BOT_TOKEN") {
            None => None,
            Some(token) => {
                let chat_id = get("TELEGRAM_CHAT_ID").ok_or_else(|| {
                    ConfigError::new(
                        "TELEGRAM_CHAT_ID",
                        "",
                        "the chat to send to (a number like -1001234567890, or @channelname) when TELEGRAM_BOT_TOKEN is set",
                    )
                })?;
                if !token.contains(':') {
                    return Err(ConfigError::new(
                        "TELEGRAM_BOT_TOKEN",
                        "***",
                        "a bot token as BotFather gives it: `<bot id>:<secret>`",
                    ));
                }
                Some(TelegramSettings {
                    token,
                    chat_id,
                    api_url: base_url(&get, "TELEGRAM_API_URL", "https://api.telegram.org")?,
                    timeout: duration("TELEGRAM_TIMEOUT", Duration::from_secs(15))?,
                })
            }
        };

        let dashboard_auth = match get("FLOWER_BASIC_AUTH") {
            None => None,
            Some(value) => match value.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                    Some((user.to_owned(), password.to_owned()))
                }
                _ => {
                    return Err(ConfigError::new(
                        "FLOWER_BASIC_AUTH",
                        "***",
                        "`user:password`, both non-empty",
                    ));
                }
            },
        };

        let health = HealthThresholds {
            window: duration("HEALTH_WINDOW", Duration::from_secs(15 * 60))?,
            max_failure_rate: match get("HEALTH_MAX_FAILURE_RATE") {
                None => 0.5,
                Some(value) => match value.parse::<f64>() {
                    Ok(rate) if (0.0..=1.0).contains(&rate) => rate,
                    _ => {
                        return Err(ConfigError::new(
                            "HEALTH_MAX_FAILURE_RATE",
                            value,
                            "a fraction from 0 to 1, like 0.5",
                        ));
                    }
                },
            },
            min_attempts: count(&get, "HEALTH_MIN_ATTEMPTS", 4)?,
            max_queue_lag: count(&get, "HEALTH_MAX_QUEUE_LAG", 1000)?,
            max_dead_letter_growth: count(&get, "HEALTH_MAX_DLQ_GROWTH", 10)?,
        };

        let alert_limit = match get("ALERT_RATE_LIMIT") {
            None => (10, Duration::from_secs(3600)),
            Some(value) => {
                let parsed = value.split_once('/').and_then(|(count, window)| {
                    let count = count.trim().parse::<u32>().ok().filter(|c| *c > 0)?;
                    let window = parse_duration("ALERT_RATE_LIMIT", window.trim()).ok()?;
                    Some((count, window))
                });
                parsed.ok_or_else(|| {
                    ConfigError::new(
                        "ALERT_RATE_LIMIT",
                        &value,
                        "`<count>/<window>`, like `10/1h`: at most that many alerts per window",
                    )
                })?
            }
        };

        Ok(AppConfig {
            database_url,
            database_is_default,
            data_dir,
            providers,
            price_refresh: duration("PRICE_REFRESH", Duration::from_secs(10 * 60))?,
            price_max_age: duration("PRICE_MAX_AGE", 4 * DAY)?,
            report_zone,
            price_retention: duration("PRICE_HISTORY_RETENTION", 365 * DAY)?,
            value_retention: duration("VALUE_HISTORY_RETENTION", 730 * DAY)?,
            report_retention: duration("REPORT_RETENTION", 90 * DAY)?,
            dead_letter_retention: duration("DEAD_LETTER_RETENTION", 30 * DAY)?,
            email,
            telegram,
            sentry_dsn: match get("SENTRY_DSN") {
                None => None,
                Some(dsn) => match dsn.parse::<sentry::types::Dsn>() {
                    Ok(_) => Some(dsn),
                    Err(_) => {
                        return Err(ConfigError::new(
                            "SENTRY_DSN",
                            redact::url(&dsn),
                            "a DSN like `https://<key>@<host>/<project>`",
                        ));
                    }
                },
            },
            sentry_environment: get("SENTRY_ENVIRONMENT")
                .unwrap_or_else(|| "production".to_owned()),
            dashboard_auth,
            health,
            alert_limit,
        })
    }

    /// `DATABASE_URL` with any password masked, for logs.
    pub fn database_url_redacted(&self) -> String {
        redact::url(&self.database_url)
    }
}

fn database_url(url: &str) -> Result<String> {
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_owned(),
    };
    // SQLAlchemy spells drivers into the scheme (`mysql+pymysql://`): read it as plain MySQL
    // so that the Celery deployment's value works unchanged.
    let url = match url.split_once("://") {
        Some((scheme, rest)) if scheme.starts_with("mysql+") => format!("mysql://{rest}"),
        _ => url,
    };
    if url.starts_with("mysql://") || url.starts_with("sqlite:") {
        Ok(url)
    } else {
        Err(ConfigError::new(
            "DATABASE_URL",
            redact::url(&url),
            "a mysql://user:password@host:3306/database (or mariadb://) or sqlite://path/to/file.db URL",
        ))
    }
}

fn base_url(get: &impl Fn(&str) -> Option<String>, name: &str, default: &str) -> Result<String> {
    let url = get(name).unwrap_or_else(|| default.to_owned());
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(ConfigError::new(
            name,
            url,
            "an http:// or https:// base URL",
        ))
    }
}

fn count(get: &impl Fn(&str) -> Option<String>, name: &str, default: u64) -> Result<u64> {
    match get(name) {
        None => Ok(default),
        Some(value) => value
            .parse::<u64>()
            .map_err(|_| ConfigError::new(name, value, "a whole number")),
    }
}

fn email_settings(get: &impl Fn(&str) -> Option<String>, host: String) -> Result<EmailSettings> {
    let port = match get("EMAIL_SMTP_PORT") {
        None => 587,
        Some(value) => value
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| ConfigError::new("EMAIL_SMTP_PORT", value, "a port number like 587"))?,
    };
    let logs_in = get("EMAIL_SMTP_USER").is_some();
    let security = match get("EMAIL_SMTP_TLS").as_deref() {
        None => match port {
            587 => SmtpSecurity::StartTls,
            465 => SmtpSecurity::Tls,
            // A password never goes out in clear unless EMAIL_SMTP_TLS=none says so.
            _ if logs_in => SmtpSecurity::StartTls,
            _ => SmtpSecurity::None,
        },
        Some("starttls") => SmtpSecurity::StartTls,
        Some("tls") => SmtpSecurity::Tls,
        Some("none") => SmtpSecurity::None,
        Some(other) => {
            return Err(ConfigError::new(
                "EMAIL_SMTP_TLS",
                other,
                "`starttls`, `tls` or `none`",
            ));
        }
    };
    let credentials = match (get("EMAIL_SMTP_USER"), get("EMAIL_SMTP_PASSWORD")) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "EMAIL_SMTP_PASSWORD",
                "",
                "the SMTP password, since EMAIL_SMTP_USER is set",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "EMAIL_SMTP_USER",
                "",
                "the SMTP user name, since EMAIL_SMTP_PASSWORD is set",
            ));
        }
    };
    let from = get("EMAIL_FROM")
        .or_else(|| credentials.as_ref().map(|(user, _)| user.clone()))
        .ok_or_else(|| {
            ConfigError::new(
                "EMAIL_FROM",
                "",
                "the sender address, like `PSW5 <cron@example.com>` (needed when EMAIL_SMTP_HOST is set)",
            )
        })?;
    let to: Vec<String> = get("EMAIL_TO")
        .map(|list| {
            list.split(',')
                .map(|address| address.trim().to_owned())
                .filter(|address| !address.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if to.is_empty() {
        return Err(ConfigError::new(
            "EMAIL_TO",
            "",
            "the recipients, comma-separated (needed when EMAIL_SMTP_HOST is set)",
        ));
    }
    Ok(EmailSettings {
        host,
        port,
        security,
        credentials,
        from,
        to,
        timeout: match get("EMAIL_SMTP_TIMEOUT") {
            Some(value) => parse_duration("EMAIL_SMTP_TIMEOUT", &value)?,
            None => Duration::from_secs(30),
        },
        ca_cert: get("EMAIL_SMTP_CA_CERT").map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<AppConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AppConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn embedded_defaults_without_variables() {
        let c = config(&[]).unwrap();
        assert!(c.database_is_default);
        assert_eq!(c.database_url, "sqlite://data/psw-cron.db?mode=rwc");
        assert!(c.providers.eodhd_api_key.is_none() && c.providers.borsdata_api_key.is_none());
        assert!(c.email.is_none() && c.telegram.is_none() && c.sentry_dsn.is_none());
        assert_eq!(c.report_zone, Tz::UTC);
    }

    #[test]
    fn reads_the_deployment_variables() {
        let c = config(&[
            ("DATABASE_URL", "mysql://user:secret@mysql:3306/psw5_core"),
            ("EODHD_API_KEY", "key"),
            ("TELEGRAM_BOT_TOKEN", "123:abc"),
            ("TELEGRAM_CHAT_ID", "-100"),
            ("EMAIL_SMTP_HOST", "smtp.gmail.com"),
            ("EMAIL_SMTP_PORT", "587"),
            ("EMAIL_SMTP_USER", "cron@example.com"),
            ("EMAIL_SMTP_PASSWORD", "pw"),
            ("EMAIL_TO", "a@example.com, b@example.com"),
            ("FLOWER_BASIC_AUTH", "admin:secure_password"),
            ("SENTRY_DSN", "https://key@sentry.example.com/1"),
            ("CELERY_TIMEZONE", "Europe/Stockholm"),
        ])
        .unwrap();
        assert_eq!(
            c.database_url_redacted(),
            "mysql://***@mysql:3306/psw5_core"
        );
        let email = c.email.unwrap();
        assert_eq!(email.security, SmtpSecurity::StartTls);
        assert_eq!(email.from, "cron@example.com");
        assert_eq!(email.to, ["a@example.com", "b@example.com"]);
        assert_eq!(c.telegram.unwrap().api_url, "https://api.telegram.org");
        assert_eq!(c.dashboard_auth.unwrap().0, "admin");
        assert_eq!(c.report_zone, chrono_tz::Europe::Stockholm);
    }

    #[test]
    fn provider_rate_limits_default_to_the_published_ones() {
        let c = config(&[]).unwrap();
        assert_eq!(c.providers.eodhd_rate_limit.to_string(), "1000/m");
        assert_eq!(c.providers.borsdata_rate_limit.to_string(), "100/10s");
        let c = config(&[("EODHD_RATE_LIMIT", "20/s burst 5")]).unwrap();
        assert_eq!(c.providers.eodhd_rate_limit.burst(), 5);
        let err = config(&[("BORSDATA_RATE_LIMIT", "lots")]).unwrap_err();
        assert_eq!(err.variable, "BORSDATA_RATE_LIMIT");
        assert!(err.expected.contains("<count>/<period>"), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = config(&[
            (
                "DATABASE_URL",
                "mysql://user:SECRET-db@mysql:3306/psw5_core",
            ),
            ("EODHD_API_KEY", "SECRET-eodhd"),
            ("BORSDATA_API_KEY", "SECRET-borsdata"),
            ("TELEGRAM_BOT_TOKEN", "123:SECRET-telegram"),
            ("TELEGRAM_CHAT_ID", "-100"),
            ("EMAIL_SMTP_HOST", "smtp.example.com"),
            ("EMAIL_SMTP_USER", "cron@example.com"),
            ("EMAIL_SMTP_PASSWORD", "SECRET-smtp"),
            ("EMAIL_FROM", "cron@example.com"),
            ("EMAIL_TO", "a@example.com"),
            ("FLOWER_BASIC_AUTH", "admin:SECRET-dashboard"),
            ("SENTRY_DSN", "https://SECRET-sentry@sentry.example.com/1"),
        ])
        .unwrap();
        let debug = format!("{c:?} {c:#?}");
        assert!(!debug.contains("SECRET"), "a secret leaked: {debug}");
        // The rest is still there to debug with.
        for shown in [
            "smtp.example.com",
            "cron@example.com",
            "admin",
            "-100",
            "***",
        ] {
            assert!(debug.contains(shown), "{shown} in {debug}");
        }
    }

    #[test]
    fn errors_name_the_variable_and_the_form() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("DATABASE_URL", "postgres://u:pw@h/db")], "DATABASE_URL"),
            (&[("REPORT_TIMEZONE", "Mars/Olympus")], "REPORT_TIMEZONE"),
            (&[("TELEGRAM_BOT_TOKEN", "1:x")], "TELEGRAM_CHAT_ID"),
            (
                &[("EMAIL_SMTP_HOST", "h"), ("EMAIL_TO", "a@b")],
                "EMAIL_FROM",
            ),
            (
                &[("EMAIL_SMTP_HOST", "h"), ("EMAIL_SMTP_PORT", "x")],
                "EMAIL_SMTP_PORT",
            ),
            (&[("FLOWER_BASIC_AUTH", "admin")], "FLOWER_BASIC_AUTH"),
            (&[("ALERT_RATE_LIMIT", "ten")], "ALERT_RATE_LIMIT"),
            (
                &[("HEALTH_MAX_FAILURE_RATE", "2")],
                "HEALTH_MAX_FAILURE_RATE",
            ),
            (&[("PRICE_MAX_AGE", "soon")], "PRICE_MAX_AGE"),
            (&[("SENTRY_DSN", "pw@nowhere")], "SENTRY_DSN"),
        ];
        for (vars, variable) in cases {
            let err = config(vars).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid configuration: {variable} = ")),
                "{err}"
            );
            assert!(!err.contains("pw@"), "a password leaked: {err}");
        }
    }
}
