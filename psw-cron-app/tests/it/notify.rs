//! The notification channels against local servers that speak the real protocols: an SMTP
//! server (with STARTTLS and AUTH PLAIN), a Telegram Bot API server and a Sentry ingest server.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mail_parser::{MessageParser, MimeHeaders};
use psw_cron_app::notify::email::Mailer;
use psw_cron_app::notify::telegram::{self, Telegram};
use psw_cron_app::notify::{
    EMAIL, EmailSettings, Image, Notifier, NotifyError, SmtpSecurity, TELEGRAM, TelegramSettings,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub(crate) const TOKEN: &str = "123456:TEST-secret_token";
const SECRET: &str = "TEST-secret_token";
pub(crate) const CHAT: &str = "-1001234567890";

/// The next item from a test server, failing the test after 5 s instead of hanging.
pub(crate) async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("nothing arrived within 5 s")
        .expect("the test server stopped")
}

/// An error with all its sources, as a log line would show it.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Stands for a chart: PNG's signature, then bytes that include CR, LF and dots.
fn chart() -> Image {
    let png = b"\x89PNG\r\n\x1a\n"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(3000))
        .collect();
    Image {
        file_name: "portfolio-3-2026-11-29.png".to_owned(),
        content_id: "chart-3".to_owned(),
        png,
    }
}

// ---------------------------------------------------------------------------------------------
// SMTP

/// What the test SMTP server does besides accepting mail.
#[derive(Clone, Default)]
pub(crate) struct SmtpBehaviour {
    /// Answer 550 to every RCPT TO.
    pub(crate) reject_rcpt: bool,
    /// Offer STARTTLS (and require it before MAIL FROM and AUTH).
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// One message as the server got it.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) sender: String,
    pub(crate) recipients: Vec<String>,
    /// The message after undoing dot-stuffing, without the final `.` line.
    pub(crate) data: Vec<u8>,
    over_tls: bool,
    /// The AUTH PLAIN initial response, when the client logged in.
    auth: Option<String>,
}

pub(crate) async fn start_smtp(
    behaviour: SmtpBehaviour,
) -> (u16, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (behaviour, tx) = (behaviour.clone(), tx.clone());
            tokio::spawn(async move {
                // A client that hangs up mid-way is the client's business.
                let _ = smtp_connection(stream, behaviour, tx).await;
            });
        }
    });
    (port, rx)
}

async fn smtp_connection(
    stream: TcpStream,
    behaviour: SmtpBehaviour,
    tx: mpsc::UnboundedSender<Received>,
) -> std::io::Result<()> {
    let mut plain = BufReader::new(stream);
    plain
        .get_mut()
        .write_all(b"220 mx.test.invalid ESMTP ready\r\n")
        .await?;
    if smtp_session(&mut plain, &behaviour, false, &tx).await? {
        let acceptor = behaviour.tls.clone().expect("STARTTLS only when offered");
        // The client waits for our 220 before its handshake, so nothing is left buffered.
        let tls = acceptor.accept(plain.into_inner()).await?;
        smtp_session(&mut BufReader::new(tls), &behaviour, true, &tx).await?;
    }
    Ok(())
}

/// Serves commands until QUIT or the end of the connection; `true` when the client asked for
/// STARTTLS (the caller upgrades and serves a new session).
async fn smtp_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    behaviour: &SmtpBehaviour,
    over_tls: bool,
    tx: &mpsc::UnboundedSender<Received>,
) -> std::io::Result<bool> {
    let must_start_tls = behaviour.tls.is_some() && !over_tls;
    let mut sender: Option<String> = None;
    let mut recipients = Vec::new();
    let mut auth = None;
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(false);
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                let mut lines = vec!["mx.test.invalid greets you", "8BITMIME", "SMTPUTF8"];
                if must_start_tls {
                    lines.push("STARTTLS");
                } else {
                    lines.push("AUTH PLAIN LOGIN");
                }
                let last = lines.len() - 1;
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
                    .collect()
            }
            "HELO" => "250 mx.test.invalid\r\n".to_owned(),
            "STARTTLS" if must_start_tls => {
                stream.get_mut().write_all(b"220 2.0.0 ready\r\n").await?;
                return Ok(true);
            }
            "AUTH" | "MAIL" if must_start_tls => {
                "530 5.7.0 Must issue a STARTTLS command first\r\n".to_owned()
            }
            "AUTH" => {
                let mut words = command.split_whitespace().skip(1);
                let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                let initial = words.next().map(str::to_owned);
                if mechanism != "PLAIN" {
                    "504 5.5.4 only PLAIN here\r\n".to_owned()
                } else {
                    let response = match initial {
                        Some(response) => response,
                        None => {
                            stream.get_mut().write_all(b"334 \r\n").await?;
                            let mut response = String::new();
                            stream.read_line(&mut response).await?;
                            response.trim_end().to_owned()
                        }
                    };
                    auth = Some(response);
                    "235 2.7.0 Authentication successful\r\n".to_owned()
                }
            }
            "MAIL" => {
                sender = Some(angle_address(&command));
                recipients.clear();
                "250 2.1.0 Ok\r\n".to_owned()
            }
            "RCPT" if sender.is_none() => "503 5.5.1 need MAIL first\r\n".to_owned(),
            "RCPT" if behaviour.reject_rcpt => format!(
                "550 5.1.1 <{}>: Recipient address rejected: User unknown\r\n",
                angle_address(&command)
            ),
            "RCPT" => {
                recipients.push(angle_address(&command));
                "250 2.1.5 Ok\r\n".to_owned()
            }
            "DATA" if recipients.is_empty() => "554 5.5.1 no valid recipients\r\n".to_owned(),
            "DATA" => {
                stream
                    .get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = Vec::new();
                loop {
                    let mut data_line = Vec::new();
                    if stream.read_until(b'\n', &mut data_line).await? == 0 {
                        return Ok(false);
                    }
                    if data_line == b".\r\n" {
                        break;
                    }
                    let unstuffed = if data_line.starts_with(b"..") {
                        &data_line[1..]
                    } else {
                        &data_line[..]
                    };
                    data.extend_from_slice(unstuffed);
                }
                let _ = tx.send(Received {
                    sender: sender.take().unwrap_or_default(),
                    recipients: std::mem::take(&mut recipients),
                    data,
                    over_tls,
                    auth: auth.clone(),
                });
                "250 2.0.0 Ok: queued\r\n".to_owned()
            }
            "RSET" => {
                sender = None;
                recipients.clear();
                "250 2.0.0 Ok\r\n".to_owned()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".to_owned(),
            "QUIT" => {
                stream.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(false);
            }
            _ => "502 5.5.2 Error: command not recognized\r\n".to_owned(),
        };
        stream.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// `MAIL FROM:<a@b> SIZE=10` → `a@b`.
fn angle_address(command: &str) -> String {
    let start = command.find('<').map_or(0, |i| i + 1);
    let end = command[start..]
        .find('>')
        .map_or(command.len(), |i| start + i);
    command[start..end].to_owned()
}

fn email_settings(port: u16) -> EmailSettings {
    EmailSettings {
        host: "127.0.0.1".to_owned(),
        port,
        security: SmtpSecurity::None,
        credentials: None,
        from: "PSW5 <cron@example.com>".to_owned(),
        to: vec![
            "me@example.com".to_owned(),
            "Ann <ann@example.com>".to_owned(),
        ],
        timeout: Duration::from_secs(5),
        ca_cert: None,
    }
}

/// The text of a part, with line ends made `\n` (the wire has CRLF).
fn unix_lines(text: &str) -> String {
    text.replace("\r\n", "\n")
}

#[tokio::test]
async fn report_email_has_text_html_and_the_chart_inline() {
    let (port, mut inbox) = start_smtp(SmtpBehaviour::default()).await;
    let notifier = Notifier::new(Some(email_settings(port)), None).unwrap();
    assert_eq!(notifier.channels(), vec![EMAIL]);
    let chart = chart();
    let html = "<html><body><h1>Portfolio 3</h1><p>Value 1 234 kr</p>\
                <img src=\"cid:chart-3\" alt=\"chart\"></body></html>";
    let text = "Portfolio 3\nValue 1 234 kr\n.a line that starts with a dot\n";

    let sent = notifier
        .report(
            "PSW5 report 2026-11-29",
            html,
            text,
            "<b>summary</b>",
            Some(&chart),
        )
        .await;

    assert_eq!(sent.succeeded, vec![EMAIL]);
    assert!(sent.all_ok(), "{:?}", sent.failed);
    let received = next(&mut inbox).await;
    assert_eq!(received.sender, "cron@example.com");
    assert_eq!(received.recipients, ["me@example.com", "ann@example.com"]);
    assert!(!received.over_tls);

    let message = MessageParser::default().parse(&received.data).unwrap();
    assert_eq!(message.subject(), Some("PSW5 report 2026-11-29"));
    let from = message.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("cron@example.com"));
    assert_eq!(from.name(), Some("PSW5"));
    let to: Vec<_> = message
        .to()
        .unwrap()
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(to, ["me@example.com", "ann@example.com"]);

    let root = message.root_part().content_type().unwrap();
    assert_eq!(
        (root.ctype(), root.subtype()),
        ("multipart", Some("alternative"))
    );
    let raw = String::from_utf8_lossy(&received.data);
    assert!(
        raw.contains("Content-Type: multipart/related"),
        "the HTML and its image belong together: {raw}"
    );
    let text_part = message.text_part(0).unwrap();
    assert!(!text_part.is_text_html());
    assert_eq!(unix_lines(text_part.text_contents().unwrap()), text);
    let html_part = message.html_part(0).unwrap();
    assert!(html_part.is_text_html());
    assert_eq!(html_part.text_contents().unwrap(), html);

    assert_eq!(message.attachment_count(), 1);
    let image = message.attachment(0).unwrap();
    let content_type = image.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("image", Some("png"))
    );
    assert_eq!(image.content_id(), Some("chart-3"));
    assert!(html.contains(&format!("cid:{}", image.content_id().unwrap())));
    let disposition = image.content_disposition().unwrap();
    assert_eq!(disposition.ctype(), "inline");
    assert_eq!(image.attachment_name(), Some("portfolio-3-2026-11-29.png"));
    assert_eq!(image.contents(), chart.png.as_slice());
}

#[tokio::test]
async fn alert_email_carries_the_text_and_escaped_html() {
    let (port, mut inbox) = start_smtp(SmtpBehaviour::default()).await;
    let notifier = Notifier::new(Some(email_settings(port)), None).unwrap();

    let text = "update_prices failed 3 times\nerror: <html> & \"quotes\"\n";
    let sent = notifier.alert("Dead job: update_prices", text).await;

    assert_eq!(sent.succeeded, vec![EMAIL]);
    let received = next(&mut inbox).await;
    let message = MessageParser::default().parse(&received.data).unwrap();
    assert_eq!(message.subject(), Some("Dead job: update_prices"));
    assert_eq!(message.attachment_count(), 0);
    assert_eq!(
        unix_lines(message.text_part(0).unwrap().text_contents().unwrap()),
        text
    );
    let html = message.html_part(0).unwrap().text_contents().unwrap();
    assert!(html.contains("<h3>Dead job: update_prices</h3>"), "{html}");
    assert!(
        html.contains("error: &lt;html&gt; &amp; &quot;quotes&quot;"),
        "{html}"
    );
    assert!(!html.contains("<html> &"), "{html}");
}

#[tokio::test]
async fn a_rejected_recipient_fails_email_but_telegram_still_gets_the_alert() {
    let (port, mut inbox) = start_smtp(SmtpBehaviour {
        reject_rcpt: true,
        ..SmtpBehaviour::default()
    })
    .await;
    let (api_url, mut bot) = start_bot(BotMode::Ok).await;
    let notifier = Notifier::new(
        Some(email_settings(port)),
        Some(telegram_settings(&api_url)),
    )
    .unwrap();
    assert_eq!(notifier.channels(), vec![EMAIL, TELEGRAM]);

    let sent = notifier.alert("Health check", "database <down>").await;

    assert_eq!(sent.succeeded, vec![TELEGRAM]);
    assert!(!sent.all_ok() && sent.any_ok());
    match sent.error(EMAIL) {
        Some(NotifyError::Smtp {
            server,
            detail,
            permanent,
        }) => {
            assert_eq!(server, &format!("127.0.0.1:{port}"));
            assert!(detail.contains("550"), "{detail}");
            assert!(detail.contains("User unknown"), "{detail}");
            assert!(permanent);
        }
        other => panic!("expected an SMTP error, got {other:?}"),
    }
    assert!(inbox.try_recv().is_err(), "no message was accepted");
    let BotCall::Message { bot: path, body } = next(&mut bot).await else {
        panic!("expected sendMessage");
    };
    assert_eq!(path, format!("bot{TOKEN}"));
    assert_eq!(body["text"], "<b>Health check</b>\ndatabase &lt;down&gt;");
}

struct TestCa {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost.
fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "psw test ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        )
        .unwrap();
    TestCa {
        ca_pem: ca.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}

fn write_temp(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

#[tokio::test]
async fn starttls_trusts_the_private_ca_and_logs_in_only_after_the_upgrade() {
    let ca = test_ca();
    let ca_file = write_temp(&ca.ca_pem);
    let (port, mut inbox) = start_smtp(SmtpBehaviour {
        tls: Some(ca.acceptor.clone()),
        ..SmtpBehaviour::default()
    })
    .await;
    let settings = EmailSettings {
        security: SmtpSecurity::StartTls,
        credentials: Some(("cron".to_owned(), "s3cret pass".to_owned())),
        ca_cert: Some(ca_file.path().to_owned()),
        ..email_settings(port)
    };
    let mailer = Mailer::new(&settings).unwrap();

    mailer
        .send("over tls", "<p>hi</p>", "hi", &[])
        .await
        .unwrap();

    let received = next(&mut inbox).await;
    assert!(received.over_tls);
    // base64("\0cron\0s3cret pass"): AUTH PLAIN with the configured login.
    assert_eq!(received.auth.as_deref(), Some("AGNyb24AczNjcmV0IHBhc3M="));
    assert_eq!(received.recipients.len(), 2);

    // Without the CA the same server is not trusted: the certificate is checked.
    let untrusted = Mailer::new(&EmailSettings {
        ca_cert: None,
        ..settings.clone()
    })
    .unwrap();
    let error = untrusted
        .send("over tls", "<p>hi</p>", "hi", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, NotifyError::Smtp { detail, permanent: false, .. }
            if detail == "connection error: invalid peer certificate: UnknownIssuer"),
        "{error:?}"
    );
    assert!(inbox.try_recv().is_err());
}

#[tokio::test]
async fn required_starttls_is_not_downgraded_to_plain_text() {
    // This server does not offer STARTTLS: the mail (and the password) must not go in clear.
    let (port, mut inbox) = start_smtp(SmtpBehaviour::default()).await;
    let mailer = Mailer::new(&EmailSettings {
        security: SmtpSecurity::StartTls,
        credentials: Some(("cron".to_owned(), "s3cret pass".to_owned())),
        ..email_settings(port)
    })
    .unwrap();

    let error = mailer.send("plain?", "<p>no</p>", "no", &[]).await;

    assert!(matches!(error, Err(NotifyError::Smtp { .. })), "{error:?}");
    assert!(inbox.try_recv().is_err());
}

#[test]
fn bad_email_settings_are_config_errors_naming_the_variable() {
    let check = |settings: EmailSettings, variable: &str, value: &str| {
        let error = Mailer::new(&settings).unwrap_err();
        match &error {
            NotifyError::Config {
                variable: v,
                value: got,
                expected,
            } => {
                assert_eq!(*v, variable);
                assert_eq!(got, value);
                assert!(!expected.is_empty());
            }
            other => panic!("expected a config error for {variable}, got {other:?}"),
        }
        let shown = error.to_string();
        assert!(
            shown.contains(variable) && shown.contains("expected"),
            "{shown}"
        );
    };
    check(
        EmailSettings {
            from: "PSW5 cron at example".to_owned(),
            ..email_settings(25)
        },
        "EMAIL_FROM",
        "PSW5 cron at example",
    );
    check(
        EmailSettings {
            to: vec!["me@example.com".to_owned(), "not an address".to_owned()],
            ..email_settings(25)
        },
        "EMAIL_TO",
        "not an address",
    );
    check(
        EmailSettings {
            to: Vec::new(),
            ..email_settings(25)
        },
        "EMAIL_TO",
        "",
    );
    let not_pem = write_temp("this is not a certificate\n");
    check(
        EmailSettings {
            security: SmtpSecurity::StartTls,
            ca_cert: Some(not_pem.path().to_owned()),
            ..email_settings(587)
        },
        "EMAIL_SMTP_CA_CERT",
        &not_pem.path().display().to_string(),
    );
    let missing = PathBuf::from("/nonexistent/psw-test-ca.pem");
    let error = Mailer::new(&EmailSettings {
        security: SmtpSecurity::Tls,
        ca_cert: Some(missing.clone()),
        ..email_settings(465)
    })
    .unwrap_err();
    assert!(
        matches!(&error, NotifyError::ReadFile { variable: "EMAIL_SMTP_CA_CERT", path, .. } if *path == missing),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Telegram

/// How the test Bot API answers.
#[derive(Clone, Copy)]
pub(crate) enum BotMode {
    Ok,
    /// `400 Bad Request: chat not found`.
    ChatNotFound,
    /// The first call gets 429 with this `retry_after`, later ones succeed.
    FloodOnce(u64),
    /// A plain-text 404 that echoes the path (like a proxy in front of a wrong URL).
    EchoNotFound,
}

#[derive(Debug)]
pub(crate) enum BotCall {
    Message {
        bot: String,
        body: Value,
    },
    Photo {
        bot: String,
        fields: HashMap<String, String>,
        photo: Vec<u8>,
        file_name: Option<String>,
        content_type: Option<String>,
    },
}

#[derive(Clone)]
struct Bot {
    mode: BotMode,
    calls: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<BotCall>,
}

impl Bot {
    fn answer(&self, bot: &str, method: &str, result: Value) -> Response {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if bot != format!("bot{TOKEN}") {
            let body = json!({"ok": false, "error_code": 401, "description": "Unauthorized"});
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
        match self.mode {
            BotMode::Ok => {}
            BotMode::ChatNotFound => {
                let body = json!({
                    "ok": false, "error_code": 400, "description": "Bad Request: chat not found"
                });
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            BotMode::FloodOnce(seconds) if call == 0 => {
                let body = json!({
                    "ok": false,
                    "error_code": 429,
                    "description": format!("Too Many Requests: retry after {seconds}"),
                    "parameters": {"retry_after": seconds},
                });
                return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            }
            BotMode::FloodOnce(_) => {}
            BotMode::EchoNotFound => {
                let body = format!("<html><body>Cannot POST /{bot}/{method}</body></html>");
                return (StatusCode::NOT_FOUND, body).into_response();
            }
        }
        let mut message = json!({
            "message_id": 1000 + call,
            "date": 1_764_400_000,
            "chat": {"id": CHAT.parse::<i64>().unwrap(), "title": "PSW5", "type": "supergroup"},
        });
        message
            .as_object_mut()
            .unwrap()
            .extend(result.as_object().unwrap().clone());
        Json(json!({"ok": true, "result": message})).into_response()
    }
}

async fn send_message(
    State(state): State<Bot>,
    Path(bot): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let text = body["text"].clone();
    let _ = state.tx.send(BotCall::Message {
        bot: bot.clone(),
        body,
    });
    state.answer(&bot, "sendMessage", json!({"text": text}))
}

async fn send_photo(
    State(state): State<Bot>,
    Path(bot): Path<String>,
    mut multipart: Multipart,
) -> Response {
    let mut fields = HashMap::new();
    let (mut photo, mut file_name, mut content_type) = (Vec::new(), None, None);
    while let Some(field) = multipart.next_field().await.unwrap() {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "photo" {
            file_name = field.file_name().map(str::to_owned);
            content_type = field.content_type().map(str::to_owned);
            photo = field.bytes().await.unwrap().to_vec();
        } else {
            fields.insert(name, field.text().await.unwrap());
        }
    }
    let caption = fields.get("caption").cloned().unwrap_or_default();
    let _ = state.tx.send(BotCall::Photo {
        bot: bot.clone(),
        fields,
        photo,
        file_name,
        content_type,
    });
    let sizes =
        json!([{"file_id": "AgAC-test", "file_unique_id": "AQAD", "width": 800, "height": 400}]);
    state.answer(
        &bot,
        "sendPhoto",
        json!({"photo": sizes, "caption": caption}),
    )
}

/// A Bot API on 127.0.0.1; the URL to use as `TELEGRAM_API_URL`, and the calls it gets.
pub(crate) async fn start_bot(mode: BotMode) -> (String, mpsc::UnboundedReceiver<BotCall>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Bot {
        mode,
        calls: Arc::new(AtomicUsize::new(0)),
        tx,
    };
    let app = axum::Router::new()
        .route("/{bot}/sendMessage", post(send_message))
        .route("/{bot}/sendPhoto", post(send_photo))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

fn telegram_settings(api_url: &str) -> TelegramSettings {
    TelegramSettings {
        token: TOKEN.to_owned(),
        chat_id: CHAT.to_owned(),
        // A trailing slash, as people write it.
        api_url: format!("{api_url}/"),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn send_message_posts_html_json_to_the_bot_path() {
    let (api_url, mut bot) = start_bot(BotMode::Ok).await;
    let telegram = Telegram::new(&telegram_settings(&api_url)).unwrap();

    telegram
        .send_message("<b>PSW5</b> prices &amp; values")
        .await
        .unwrap();

    let BotCall::Message { bot: path, body } = next(&mut bot).await else {
        panic!("expected sendMessage");
    };
    assert_eq!(path, format!("bot{TOKEN}"));
    assert_eq!(
        body,
        json!({
            "chat_id": CHAT,
            "text": "<b>PSW5</b> prices &amp; values",
            "parse_mode": "HTML",
            "disable_web_page_preview": true,
        })
    );
}

#[tokio::test]
async fn a_long_message_is_cut_to_the_limit_with_its_tags_closed() {
    let (api_url, mut bot) = start_bot(BotMode::Ok).await;
    let telegram = Telegram::new(&telegram_settings(&api_url)).unwrap();
    let long = format!("<b>Report</b>\n<pre>{}</pre>", "å &amp; ö\n".repeat(700));
    assert!(telegram::utf16_len(&long) > telegram::MESSAGE_LIMIT);

    telegram.send_message(&long).await.unwrap();

    let BotCall::Message { body, .. } = next(&mut bot).await else {
        panic!("expected sendMessage");
    };
    let text = body["text"].as_str().unwrap();
    assert!(telegram::utf16_len(text) <= telegram::MESSAGE_LIMIT);
    assert!(telegram::utf16_len(text) > telegram::MESSAGE_LIMIT - 20);
    assert!(text.ends_with("…</pre>"), "{}", &text[text.len() - 40..]);
    assert!(long.starts_with(text.trim_end_matches("…</pre>")));
    let cut = text.trim_end_matches("…</pre>");
    assert!(
        !cut.ends_with('&') && !cut.ends_with("&amp"),
        "no broken entity"
    );
}

#[tokio::test]
async fn report_sends_the_chart_as_a_photo_with_the_summary_as_caption() {
    let (api_url, mut bot) = start_bot(BotMode::Ok).await;
    let notifier = Notifier::new(None, Some(telegram_settings(&api_url))).unwrap();
    let chart = chart();
    let summary = "<b>Portfolio 3</b>: 1 234 kr (+1.5 %)";

    let sent = notifier
        .report("subject", "<p>html</p>", "text", summary, Some(&chart))
        .await;

    assert_eq!(sent.succeeded, vec![TELEGRAM]);
    let BotCall::Photo {
        bot: path,
        fields,
        photo,
        file_name,
        content_type,
    } = next(&mut bot).await
    else {
        panic!("expected sendPhoto");
    };
    assert_eq!(path, format!("bot{TOKEN}"));
    assert_eq!(fields["chat_id"], CHAT);
    assert_eq!(fields["caption"], summary);
    assert_eq!(fields["parse_mode"], "HTML");
    assert_eq!(photo, chart.png);
    assert_eq!(file_name.as_deref(), Some("portfolio-3-2026-11-29.png"));
    assert_eq!(content_type.as_deref(), Some("image/png"));
    assert!(bot.try_recv().is_err(), "one call only");
}

#[tokio::test]
async fn a_summary_too_long_for_a_caption_goes_first_as_a_message() {
    let (api_url, mut bot) = start_bot(BotMode::Ok).await;
    let notifier = Notifier::new(None, Some(telegram_settings(&api_url))).unwrap();
    let chart = chart();
    let summary = format!("<b>Holdings</b>\n{}", "ABB 12.3 %\n".repeat(120));
    assert!(telegram::utf16_len(&summary) > telegram::CAPTION_LIMIT);

    let sent = notifier
        .report("subject", "<p>html</p>", "text", &summary, Some(&chart))
        .await;

    assert!(sent.all_ok(), "{:?}", sent.failed);
    let BotCall::Message { body, .. } = next(&mut bot).await else {
        panic!("expected sendMessage first");
    };
    assert_eq!(body["text"], summary.as_str());
    let BotCall::Photo { fields, photo, .. } = next(&mut bot).await else {
        panic!("expected sendPhoto second");
    };
    assert!(!fields.contains_key("caption"));
    assert_eq!(photo, chart.png);
}

#[tokio::test]
async fn an_api_error_surfaces_its_description_without_the_token() {
    let (api_url, _bot) = start_bot(BotMode::ChatNotFound).await;
    let telegram = Telegram::new(&telegram_settings(&api_url)).unwrap();

    let error = telegram.send_message("hello").await.unwrap_err();

    match &error {
        NotifyError::Telegram {
            method,
            status,
            description,
            retry_after,
        } => {
            assert_eq!(*method, "sendMessage");
            assert_eq!(*status, 400);
            assert_eq!(description, "Bad Request: chat not found");
            assert_eq!(*retry_after, None);
        }
        other => panic!("expected a Bot API error, got {other:?}"),
    }
    let shown = chain(&error);
    assert!(shown.contains("chat not found"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[tokio::test]
async fn flood_control_waits_retry_after_and_tries_once_more() {
    let (api_url, mut bot) = start_bot(BotMode::FloodOnce(1)).await;
    let telegram = Telegram::new(&telegram_settings(&api_url)).unwrap();
    let started = Instant::now();

    telegram.send_message("after the flood").await.unwrap();

    assert!(started.elapsed() >= Duration::from_secs(1));
    for _ in 0..2 {
        let BotCall::Message { body, .. } = next(&mut bot).await else {
            panic!("expected sendMessage");
        };
        assert_eq!(body["text"], "after the flood");
    }
    assert!(bot.try_recv().is_err(), "tried exactly twice");
}

#[tokio::test]
async fn a_flood_wait_longer_than_the_limit_is_an_error_at_once() {
    let (api_url, mut bot) = start_bot(BotMode::FloodOnce(3)).await;
    let telegram = Telegram::new(&telegram_settings(&api_url))
        .unwrap()
        .with_max_retry_wait(Duration::from_secs(2));
    let started = Instant::now();

    let error = telegram
        .send_photo(&chart().png, "c.png", "caption")
        .await
        .unwrap_err();

    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        matches!(
            error,
            NotifyError::Telegram {
                method: "sendPhoto",
                status: 429,
                retry_after: Some(3),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(matches!(next(&mut bot).await, BotCall::Photo { .. }));
    assert!(bot.try_recv().is_err(), "no second try");
}

#[tokio::test]
async fn the_token_stays_out_of_transport_errors_and_echoed_answers() {
    // Nothing listens on this port any more: reqwest's error would name the URL.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let telegram = Telegram::new(&telegram_settings(&dead_url)).unwrap();
    let error = telegram.send_message("hello").await.unwrap_err();
    assert!(
        matches!(
            error,
            NotifyError::Http {
                method: "sendMessage",
                ..
            }
        ),
        "{error:?}"
    );
    let shown = chain(&error);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
    assert!(!format!("{telegram:?}").contains(SECRET));

    let (api_url, _bot) = start_bot(BotMode::EchoNotFound).await;
    let telegram = Telegram::new(&telegram_settings(&api_url)).unwrap();
    let error = telegram.send_message("hello").await.unwrap_err();
    let shown = chain(&error);
    assert!(
        matches!(error, NotifyError::Telegram { status: 404, .. }),
        "{error:?}"
    );
    assert!(shown.contains("Cannot POST"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn bad_telegram_settings_are_config_errors_that_hide_the_token() {
    let settings = telegram_settings("http://127.0.0.1:9");
    let bad_token = "123456 TEST-secret_token";
    let error = Telegram::new(&TelegramSettings {
        token: bad_token.to_owned(),
        ..settings.clone()
    })
    .unwrap_err();
    assert!(
        matches!(
            &error,
            NotifyError::Config {
                variable: "TELEGRAM_BOT_TOKEN",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.to_string().contains(SECRET), "{error}");
    assert!(!format!("{error:?}").contains(SECRET), "{error:?}");

    let error = Telegram::new(&TelegramSettings {
        chat_id: "my chat".to_owned(),
        ..settings.clone()
    })
    .unwrap_err();
    assert!(
        matches!(&error, NotifyError::Config { variable: "TELEGRAM_CHAT_ID", value, .. } if value == "my chat"),
        "{error:?}"
    );

    let error = Telegram::new(&TelegramSettings {
        api_url: "api.telegram.org".to_owned(),
        ..settings.clone()
    })
    .unwrap_err();
    assert!(
        matches!(
            &error,
            NotifyError::Config {
                variable: "TELEGRAM_API_URL",
                ..
            }
        ),
        "{error:?}"
    );

    let notifier = Notifier::disabled();
    assert!(notifier.channels().is_empty());
}

#[tokio::test]
async fn a_disabled_notifier_sends_nothing_and_reports_nothing() {
    let sent = Notifier::disabled().alert("subject", "text").await;
    assert!(sent.succeeded.is_empty() && sent.failed.is_empty());
    assert!(sent.all_ok() && !sent.any_ok());
}

#[test]
fn escape_html_escapes_what_telegram_and_html_need() {
    assert_eq!(
        psw_cron_app::notify::escape_html(r#"a < b && c > "d" 'e'"#),
        "a &lt; b &amp;&amp; c &gt; &quot;d&quot; 'e'"
    );
}

// ---------------------------------------------------------------------------------------------
// Sentry

#[derive(Debug)]
struct Envelope {
    project: String,
    auth: String,
    body: String,
}

async fn envelope(
    State(tx): State<mpsc::UnboundedSender<Envelope>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<Value> {
    let auth = headers
        .get("x-sentry-auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = tx.send(Envelope {
        project,
        auth,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    Json(json!({"id": "00000000000000000000000000000000"}))
}

// The only test that starts Sentry: its client is bound to the process-wide hub. A runtime
// with workers, so that the server keeps answering while this thread blocks on the flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_receives_task_failures_tagged_with_task_and_job_id() {
    use psw_cron_app::notify::sentry;

    assert!(sentry::init(None, "test").unwrap().is_none());
    assert!(sentry::init(Some("  "), "test").unwrap().is_none());
    let Err(error) = sentry::init(Some("sentry.example.com/42"), "test") else {
        panic!("a DSN without a scheme was accepted");
    };
    assert!(
        matches!(
            &error,
            NotifyError::Config {
                variable: "SENTRY_DSN",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("https://<key>@<host>/<project>"));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/api/{project}/envelope/", post(envelope))
        .with_state(tx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dsn = format!("http://publickey@{addr}/42");
    let guard = sentry::init(Some(&dsn), "test").unwrap().expect("a client");
    sentry::capture_task_failure(
        "update_prices",
        "0193a1b2-job",
        "dead",
        "provider answered 503",
    );
    let flushed = tokio::task::spawn_blocking(move || {
        let flushed = guard.flush(Some(Duration::from_secs(5)));
        drop(guard);
        flushed
    })
    .await
    .unwrap();
    assert!(flushed, "the event was not delivered within 5 s");

    let envelope = next(&mut rx).await;
    assert_eq!(envelope.project, "42");
    assert!(
        envelope.auth.contains("sentry_key=publickey"),
        "{envelope:?}"
    );
    let event: Value = envelope
        .body
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|item| item.get("tags").is_some())
        .unwrap_or_else(|| panic!("no event in {}", envelope.body));
    // Error is the protocol's default level, which the SDK leaves out.
    assert!(
        event.get("level").is_none_or(|level| level == "error"),
        "{event}"
    );
    assert_eq!(event["tags"]["task"], "update_prices");
    assert_eq!(event["tags"]["job_id"], "0193a1b2-job");
    assert_eq!(event["tags"]["reason"], "dead");
    assert_eq!(event["environment"], "test");
    let message = event["message"]
        .as_str()
        .or_else(|| event["logentry"]["formatted"].as_str())
        .or_else(|| event["logentry"]["message"].as_str())
        .unwrap_or_default();
    assert!(message.contains("provider answered 503"), "{event}");
}
