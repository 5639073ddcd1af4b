//! Notifications: e-mail over SMTP (lettre), the Telegram Bot API, and Sentry error reports.
//! Each channel is off until configured; a channel that fails is logged and never fails the
//! job that sent the message twice (the other channel still gets it).

mod channel;
pub mod email;
pub mod sentry;
pub mod telegram;

pub use channel::{EmailSettings, Image, NotifyError, SmtpSecurity, TelegramSettings};

/// The e-mail channel's name in [`Sent`] and [`Notifier::channels`].
pub const EMAIL: &str = "email";
/// The Telegram channel's name in [`Sent`] and [`Notifier::channels`].
pub const TELEGRAM: &str = "telegram";

/// What [`Notifier::alert`] and [`Notifier::report`] achieved, channel by channel.
#[derive(Debug, Default)]
pub struct Sent {
    /// The channels that took the message.
    pub succeeded: Vec<&'static str>,
    /// The channels that failed, with why.
    pub failed: Vec<(&'static str, NotifyError)>,
}

impl Sent {
    /// No channel failed (true also when no channel is configured).
    pub fn all_ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// At least one channel took the message.
    pub fn any_ok(&self) -> bool {
        !self.succeeded.is_empty()
    }

    /// Why `channel` failed, if it did.
    pub fn error(&self, channel: &str) -> Option<&NotifyError> {
        self.failed
            .iter()
            .find(|(name, _)| *name == channel)
            .map(|(_, error)| error)
    }

    fn record(&mut self, channel: &'static str, result: Option<Result<(), NotifyError>>) {
        match result {
            None => {}
            Some(Ok(())) => self.succeeded.push(channel),
            Some(Err(error)) => {
                tracing::warn!(channel, error = %DisplayChain(&error), "notification failed");
                self.failed.push((channel, error));
            }
        }
    }
}

/// Every configured channel; cheap to clone (the SMTP pool and HTTP client are shared).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    email: Option<email::Mailer>,
    telegram: Option<telegram::Telegram>,
}

impl Notifier {
    /// Sets up the channels that have settings; a bad setting fails here, at start-up, rather
    /// than when the first alert is due.
    pub fn new(
        email: Option<EmailSettings>,
        telegram: Option<TelegramSettings>,
    ) -> Result<Notifier, NotifyError> {
        Ok(Notifier {
            email: email.as_ref().map(email::Mailer::new).transpose()?,
            telegram: telegram.as_ref().map(telegram::Telegram::new).transpose()?,
        })
    }

    /// No channel: every message is dropped (with nothing to report).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Builds a notifier from channels set up by hand (for instance a [`telegram::Telegram`]
    /// with a shorter flood-control wait).
    pub fn from_channels(
        email: Option<email::Mailer>,
        telegram: Option<telegram::Telegram>,
    ) -> Notifier {
        Notifier { email, telegram }
    }

    /// The names of the configured channels, for the start-up log.
    pub fn channels(&self) -> Vec<&'static str> {
        let mut channels = Vec::new();
        if self.email.is_some() {
            channels.push(EMAIL);
        }
        if self.telegram.is_some() {
            channels.push(TELEGRAM);
        }
        channels
    }

    /// Sends a short plain-text alert to every channel at once; a channel that fails is
    /// logged and recorded, the others still get the alert.
    pub async fn alert(&self, subject: &str, text: &str) -> Sent {
        let email = async {
            let mailer = self.email.as_ref()?;
            let html = format!(
                "<!DOCTYPE html>\n<html><body><h3>{}</h3>\n<pre style=\"white-space: pre-wrap\">{}</pre></body></html>\n",
                escape_html(subject),
                escape_html(text)
            );
            Some(mailer.send(subject, &html, text, &[]).await)
        };
        let telegram = async {
            let telegram = self.telegram.as_ref()?;
            let message = format!("<b>{}</b>\n{}", escape_html(subject), escape_html(text));
            Some(telegram.send_message(&message).await)
        };
        let (email, telegram) = tokio::join!(email, telegram);
        let mut sent = Sent::default();
        sent.record(EMAIL, email);
        sent.record(TELEGRAM, telegram);
        sent
    }

    /// Sends a report: the HTML page (with `chart` inline) by e-mail, and `telegram_summary`
    /// (Telegram HTML) with the chart to Telegram. A summary too long for a photo caption goes
    /// as a message of its own before the photo.
    pub async fn report(
        &self,
        subject: &str,
        html: &str,
        text: &str,
        telegram_summary: &str,
        chart: Option<&Image>,
    ) -> Sent {
        let email = async {
            let mailer = self.email.as_ref()?;
            let images = chart.map(std::slice::from_ref).unwrap_or_default();
            Some(mailer.send(subject, html, text, images).await)
        };
        let telegram = async {
            let telegram = self.telegram.as_ref()?;
            Some(telegram_report(telegram, telegram_summary, chart).await)
        };
        let (email, telegram) = tokio::join!(email, telegram);
        let mut sent = Sent::default();
        sent.record(EMAIL, email);
        sent.record(TELEGRAM, telegram);
        sent
    }
}

async fn telegram_report(
    telegram: &telegram::Telegram,
    summary: &str,
    chart: Option<&Image>,
) -> Result<(), NotifyError> {
    let Some(chart) = chart else {
        return telegram.send_message(summary).await;
    };
    // Counting the HTML source over-estimates the caption (tags do not count), so a caption
    // that passes here always fits.
    if telegram::utf16_len(summary) <= telegram::CAPTION_LIMIT {
        return telegram
            .send_photo(&chart.png, &chart.file_name, summary)
            .await;
    }
    telegram.send_message(summary).await?;
    telegram.send_photo(&chart.png, &chart.file_name, "").await
}

/// Escapes `&`, `<`, `>` and `"` for HTML text and attribute values; this is all Telegram's
/// HTML mode needs escaped, and enough for the e-mail page.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Shows an error with its sources, each once, for logs.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
