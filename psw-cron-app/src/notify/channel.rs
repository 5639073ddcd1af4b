//! What every channel shares: its settings, the image a message may carry, and why sending
//! failed.

/// How the SMTP connection is secured: `EMAIL_SMTP_TLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required); the default on port 587.
    StartTls,
    /// TLS from the first byte (SMTPS); the default on port 465.
    Tls,
    /// No TLS at all: only for a relay on localhost or in tests. The default on other ports.
    None,
}

/// `EMAIL_SMTP_*`, `EMAIL_FROM`, `EMAIL_TO`: set when `EMAIL_SMTP_HOST` is. Its `Debug` masks
/// the password.
#[derive(Clone)]
pub struct EmailSettings {
    /// `EMAIL_SMTP_HOST`.
    pub host: String,
    /// `EMAIL_SMTP_PORT` (default 587).
    pub port: u16,
    /// `EMAIL_SMTP_TLS`.
    pub security: SmtpSecurity,
    /// `EMAIL_SMTP_USER` and `EMAIL_SMTP_PASSWORD`, when the server wants a login.
    pub credentials: Option<(String, String)>,
    /// `EMAIL_FROM`, like `PSW5 <cron@example.com>`.
    pub from: String,
    /// `EMAIL_TO`, comma-separated.
    pub to: Vec<String>,
    /// One SMTP conversation's limit.
    pub timeout: std::time::Duration,
    /// `EMAIL_SMTP_CA_CERT`: a PEM file of a private CA to trust besides the public roots.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// `TELEGRAM_BOT_TOKEN` and `TELEGRAM_CHAT_ID`. Its `Debug` masks the token.
#[derive(Clone)]
pub struct TelegramSettings {
    /// The bot's token.
    pub token: String,
    /// Where messages go: a chat id or `@channel`.
    pub chat_id: String,
    /// `TELEGRAM_API_URL` (default `https://api.telegram.org`).
    pub api_url: String,
    /// One request's limit.
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let EmailSettings {
            host,
            port,
            security,
            credentials,
            from,
            to,
            timeout,
            ca_cert,
        } = self;
        f.debug_struct("EmailSettings")
            .field("host", host)
            .field("port", port)
            .field("security", security)
            .field(
                "credentials",
                &credentials
                    .as_ref()
                    .map(|(user, _)| (user, crate::redact::MASK)),
            )
            .field("from", from)
            .field("to", to)
            .field("timeout", timeout)
            .field("ca_cert", ca_cert)
            .finish()
    }
}

impl std::fmt::Debug for TelegramSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TelegramSettings {
            token: _,
            chat_id,
            api_url,
            timeout,
        } = self;
        f.debug_struct("TelegramSettings")
            .field("token", &crate::redact::MASK)
            .field("chat_id", chat_id)
            .field("api_url", &crate::redact::url(api_url))
            .field("timeout", timeout)
            .finish()
    }
}

/// A PNG image to send along.
#[derive(Debug, Clone)]
pub struct Image {
    /// File name, like `portfolio-3-2026-11-29.png`.
    pub file_name: String,
    /// Content id the HTML refers to (`<img src="cid:...">`).
    pub content_id: String,
    /// The PNG bytes.
    pub png: Vec<u8>,
}

/// Why a notification could not be set up or sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A setting has a value the channel cannot use.
    #[error("{variable}={value:?} is invalid: expected {expected}")]
    Config {
        /// The environment variable.
        variable: &'static str,
        /// What it was set to; secrets are replaced by a placeholder.
        value: String,
        /// The form it should have.
        expected: &'static str,
    },
    /// A file named by a setting could not be read.
    #[error("cannot read {variable} file {}", path.display())]
    ReadFile {
        /// The environment variable.
        variable: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The e-mail could not be put together.
    #[error("cannot build the e-mail")]
    Message(#[source] lettre::error::Error),
    /// The SMTP server refused the message or could not be reached.
    ///
    /// The cause is kept as text: lettre's error prints its own source in its message and
    /// returns it again from `source()`, so chaining it would show every cause twice.
    #[error("smtp server {server}: {detail}")]
    Smtp {
        /// `host:port`.
        server: String,
        /// lettre's description, with the server's reply when there was one.
        detail: String,
        /// The server answered with a 5xx code: sending the same message again will not help.
        permanent: bool,
    },
    /// The Bot API answered `"ok": false` (or something that is not a Bot API answer).
    #[error("telegram {method} failed ({status}): {description}")]
    Telegram {
        /// `sendMessage` or `sendPhoto`.
        method: &'static str,
        /// The API's `error_code`, else the HTTP status.
        status: u16,
        /// The API's `description`.
        description: String,
        /// Seconds to wait before trying again, when the API asked for it (flood control).
        retry_after: Option<u64>,
    },
    /// The HTTP request did not get an answer (connection, TLS, timeout).
    #[error("telegram {method} request failed")]
    Http {
        /// `sendMessage` or `sendPhoto`.
        method: &'static str,
        /// reqwest's error, with the URL (which holds the bot token) removed.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be created (no TLS backend, bad system configuration).
    #[error("cannot create the http client")]
    HttpClient(#[source] reqwest::Error),
}
