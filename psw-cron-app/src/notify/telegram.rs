//! The Telegram Bot API: `sendMessage` and `sendPhoto` with HTML formatting.
//!
//! The bot token is part of every request URL, so it is kept out of everything this module
//! shows: reqwest errors lose their URL, and answers are scrubbed of it.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;

use super::channel::{NotifyError, TelegramSettings};

/// The longest `sendMessage` text, in UTF-16 code units (how Telegram counts).
pub const MESSAGE_LIMIT: usize = 4096;
/// The longest photo caption, in UTF-16 code units.
pub const CAPTION_LIMIT: usize = 1024;
/// The longest flood-control wait (`retry_after`) honoured by retrying; a longer one is an error.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Sends messages and photos to one chat through one bot.
#[derive(Clone)]
pub struct Telegram {
    client: reqwest::Client,
    api_url: String,
    token: String,
    chat_id: String,
    max_retry_wait: Duration,
}

impl std::fmt::Debug for Telegram {
    // By hand: the token must not reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telegram")
            .field("api_url", &self.api_url)
            .field("chat_id", &self.chat_id)
            .field("max_retry_wait", &self.max_retry_wait)
            .finish_non_exhaustive()
    }
}

/// A Bot API answer: `{"ok":true,"result":...}` or
/// `{"ok":false,"error_code":...,"description":...,"parameters":{...}}`.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    error_code: Option<i64>,
    description: Option<String>,
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
}

impl Telegram {
    /// Checks the settings and creates the HTTP client; nothing is sent yet.
    pub fn new(settings: &TelegramSettings) -> Result<Telegram, NotifyError> {
        if !is_token(&settings.token) {
            return Err(NotifyError::Config {
                variable: "TELEGRAM_BOT_TOKEN",
                value: format!("<hidden, {} characters>", settings.token.chars().count()),
                expected: "the token from @BotFather, like `123456789:AAE...` (digits, a colon, \
                           letters, digits, `_` and `-`)",
            });
        }
        let chat_id = settings.chat_id.trim();
        if !is_chat_id(chat_id) {
            return Err(NotifyError::Config {
                variable: "TELEGRAM_CHAT_ID",
                value: settings.chat_id.clone(),
                expected: "a numeric chat id like `-1001234567890` or a channel like `@mychannel`",
            });
        }
        let api_url = settings.api_url.trim().trim_end_matches('/');
        let bad_url = || NotifyError::Config {
            variable: "TELEGRAM_API_URL",
            value: settings.api_url.clone(),
            expected: "an http(s) URL like `https://api.telegram.org`",
        };
        let parsed = reqwest::Url::parse(api_url).map_err(|_| bad_url())?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad_url());
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|error| NotifyError::HttpClient(error.without_url()))?;
        Ok(Telegram {
            client,
            api_url: api_url.to_owned(),
            token: settings.token.clone(),
            chat_id: chat_id.to_owned(),
            max_retry_wait: DEFAULT_MAX_RETRY_WAIT,
        })
    }

    /// Sets the longest flood-control wait that is sat out (default
    /// [`DEFAULT_MAX_RETRY_WAIT`]); a longer `retry_after` fails at once.
    pub fn with_max_retry_wait(mut self, max_retry_wait: Duration) -> Telegram {
        self.max_retry_wait = max_retry_wait;
        self
    }

    /// Sends `text` (Telegram HTML) without link previews; text over [`MESSAGE_LIMIT`] is
    /// cut, closing any tag left open, and ends with `…`.
    pub async fn send_message(&self, text: &str) -> Result<(), NotifyError> {
        let body = serde_json::json!({
            "chat_id": self.chat_id,
            "text": truncate_html(text, MESSAGE_LIMIT),
            "parse_mode": "HTML",
            "disable_web_page_preview": true,
        });
        self.call("sendMessage", || self.request("sendMessage").json(&body))
            .await
    }

    /// Uploads a PNG with a caption (Telegram HTML, cut to [`CAPTION_LIMIT`]; empty for none).
    pub async fn send_photo(
        &self,
        png: &[u8],
        file_name: &str,
        caption: &str,
    ) -> Result<(), NotifyError> {
        let caption = truncate_html(caption, CAPTION_LIMIT);
        // A multipart form is consumed by sending, so each try builds its own.
        let form = || {
            let photo = reqwest::multipart::Part::bytes(png.to_vec())
                .file_name(file_name.to_owned())
                .mime_str("image/png")
                .expect("image/png is a valid MIME type");
            let mut form = reqwest::multipart::Form::new()
                .text("chat_id", self.chat_id.clone())
                .part("photo", photo);
            if !caption.is_empty() {
                form = form
                    .text("caption", caption.clone().into_owned())
                    .text("parse_mode", "HTML");
            }
            form
        };
        self.call("sendPhoto", || self.request("sendPhoto").multipart(form()))
            .await
    }

    fn request(&self, method: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/bot{}/{method}", self.api_url, self.token))
    }

    /// One call, tried again once after a flood-control wait short enough to sit out.
    async fn call(
        &self,
        method: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(), NotifyError> {
        match self.call_once(method, request()).await {
            Err(NotifyError::Telegram {
                retry_after: Some(seconds),
                ..
            }) if Duration::from_secs(seconds) <= self.max_retry_wait => {
                tracing::warn!(
                    method,
                    retry_after = seconds,
                    "telegram flood control; trying once more after the wait"
                );
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                self.call_once(method, request()).await
            }
            result => result,
        }
    }

    async fn call_once(
        &self,
        method: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(), NotifyError> {
        let http = |error: reqwest::Error| NotifyError::Http {
            method,
            source: error.without_url(),
        };
        let response = request.send().await.map_err(http)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(http)?;
        let answer: Answer = match serde_json::from_slice(&body) {
            Ok(answer) => answer,
            // A proxy or a wrong TELEGRAM_API_URL: show the start of what came back.
            Err(_) => {
                let text = String::from_utf8_lossy(&body);
                let start: String = text.chars().take(200).collect();
                return Err(NotifyError::Telegram {
                    method,
                    status,
                    description: format!(
                        "not a bot api answer: {}",
                        self.redact(start.split_whitespace().collect::<Vec<_>>().join(" "))
                    ),
                    retry_after: None,
                });
            }
        };
        if answer.ok {
            return Ok(());
        }
        Err(NotifyError::Telegram {
            method,
            status: answer
                .error_code
                .and_then(|code| u16::try_from(code).ok())
                .unwrap_or(status),
            description: self.redact(
                answer
                    .description
                    .unwrap_or_else(|| "no description".to_owned()),
            ),
            retry_after: answer.parameters.and_then(|p| p.retry_after),
        })
    }

    /// Replaces the token in text that came from the server (which may echo the URL).
    fn redact(&self, text: String) -> String {
        if text.contains(&self.token) {
            text.replace(&self.token, "<token>")
        } else {
            text
        }
    }
}

/// `123456789:AAE...`: the bot id, a colon, and the secret.
fn is_token(token: &str) -> bool {
    let Some((id, secret)) = token.split_once(':') else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_chat_id(chat_id: &str) -> bool {
    if let Some(name) = chat_id.strip_prefix('@') {
        return !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    }
    let digits = chat_id.strip_prefix('-').unwrap_or(chat_id);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The length Telegram's limits are counted in.
pub fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Cuts Telegram HTML to at most `limit` UTF-16 code units (of source, an upper bound on what
/// Telegram counts), never inside a tag or an entity and never inside a character, then adds
/// `…` and the end tags of the elements left open, so that the API still parses it.
pub fn truncate_html(text: &str, limit: usize) -> Cow<'_, str> {
    if utf16_len(text) <= limit {
        return Cow::Borrowed(text);
    }
    const ELLIPSIS: char = '…';
    let mut open: Vec<&str> = Vec::new();
    // UTF-16 length of the end tags `open` needs.
    let mut closing_len = 0;
    let mut used = 0;
    // The last place to cut, with the elements open there.
    let mut cut = (0, Vec::new());
    let mut tag_start = None;
    let mut in_entity = false;
    for (index, c) in text.char_indices() {
        if tag_start.is_none() && !in_entity {
            if used + ELLIPSIS.len_utf16() + closing_len > limit {
                break;
            }
            cut = (index, open.clone());
        }
        used += c.len_utf16();
        match c {
            '<' if tag_start.is_none() => {
                tag_start = Some(index);
                in_entity = false;
            }
            '>' => {
                if let Some(start) = tag_start.take() {
                    let tag = &text[start + 1..index];
                    if let Some(name) = tag.strip_prefix('/') {
                        let name = name.trim();
                        if let Some(at) = open.iter().rposition(|open| *open == name) {
                            for closed in open.drain(at..) {
                                closing_len -= closed.len() + 3;
                            }
                        }
                    } else if !tag.ends_with('/') {
                        let name = tag.split_whitespace().next().unwrap_or_default();
                        open.push(name);
                        // `</name>`: tag names are ASCII, so bytes are UTF-16 units.
                        closing_len += name.len() + 3;
                    }
                }
            }
            '&' if tag_start.is_none() => in_entity = true,
            ';' => in_entity = false,
            c if in_entity && !c.is_ascii_alphanumeric() && c != '#' => in_entity = false,
            _ => {}
        }
    }
    let (index, open) = cut;
    let mut out = String::with_capacity(index + 64);
    out.push_str(&text[..index]);
    out.push(ELLIPSIS);
    for name in open.iter().rev() {
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_left_alone() {
        assert_eq!(
            truncate_html("<b>hi</b> &amp; bye", 4096),
            "<b>hi</b> &amp; bye"
        );
    }

    #[test]
    fn cut_closes_open_tags_and_never_splits_entities_or_characters() {
        let text = format!("<b>title</b>\n<i>{}</i>", "é&amp;".repeat(100));
        for limit in 1..120 {
            let cut = truncate_html(&text, limit);
            assert!(utf16_len(&cut) <= limit, "{limit}: {cut}");
            let body = cut.trim_end_matches("</i>").trim_end_matches("</b>");
            let body = body
                .strip_suffix('…')
                .unwrap_or_else(|| panic!("{limit}: {cut}"));
            // Every `&` still starts a whole entity, every `<` a whole tag.
            assert!(
                body.match_indices('&')
                    .all(|(i, _)| body[i..].starts_with("&amp;")),
                "{limit}: {cut}"
            );
            assert_eq!(
                body.matches('<').count(),
                body.matches('>').count(),
                "{limit}: {cut}"
            );
            for tag in ["b", "i"] {
                let opened = cut.matches(&format!("<{tag}>")).count();
                let closed = cut.matches(&format!("</{tag}>")).count();
                assert_eq!(opened, closed, "{limit}: {cut}");
            }
        }
    }

    #[test]
    fn counts_utf16_units() {
        let text = "😀".repeat(3000); // 2 units each
        let cut = truncate_html(&text, 4096);
        assert!(utf16_len(&cut) <= 4096);
        assert!(utf16_len(&cut) >= 4094);
    }

    #[test]
    fn tokens_and_chat_ids() {
        assert!(is_token("123456:AAE-x_y9"));
        assert!(!is_token("123456"));
        assert!(!is_token("abc:def"));
        assert!(!is_token("123:"));
        assert!(is_chat_id("-1001234567890"));
        assert!(is_chat_id("42"));
        assert!(is_chat_id("@my_channel"));
        assert!(!is_chat_id("my channel"));
        assert!(!is_chat_id("-"));
    }
}
