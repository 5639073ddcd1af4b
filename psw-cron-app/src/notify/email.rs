//! E-mail over SMTP with lettre: STARTTLS, implicit TLS or (for a local relay) plain, through a
//! small connection pool.

use std::sync::LazyLock;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::channel::{EmailSettings, Image, NotifyError, SmtpSecurity};

static IMAGE_PNG: LazyLock<ContentType> =
    LazyLock::new(|| ContentType::parse("image/png").expect("image/png is a valid MIME type"));

/// Sends HTML e-mails (with a plain-text alternative and inline images) to the configured
/// recipients.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    server: String,
    security: SmtpSecurity,
}

impl std::fmt::Debug for Mailer {
    // By hand: the transport's Debug would include the login.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("security", &self.security)
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks the addresses and the CA file and sets up the transport; no connection is made
    /// until the first [`Mailer::send`].
    pub fn new(settings: &EmailSettings) -> Result<Mailer, NotifyError> {
        if settings.host.trim().is_empty() {
            return Err(NotifyError::Config {
                variable: "EMAIL_SMTP_HOST",
                value: settings.host.clone(),
                expected: "the SMTP server's host name, like `smtp.example.com`",
            });
        }
        let from = parse_mailbox(&settings.from).ok_or_else(|| NotifyError::Config {
            variable: "EMAIL_FROM",
            value: settings.from.clone(),
            expected: "one address, like `PSW5 <cron@example.com>` or `cron@example.com`",
        })?;
        let bad_to = |value: &str| NotifyError::Config {
            variable: "EMAIL_TO",
            value: value.to_owned(),
            expected: "comma-separated addresses, like `me@example.com, Ann <ann@example.com>`",
        };
        if settings.to.is_empty() {
            return Err(bad_to(""));
        }
        let to = settings
            .to
            .iter()
            .map(|address| parse_mailbox(address).ok_or_else(|| bad_to(address)))
            .collect::<Result<Vec<_>, _>>()?;

        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.trim())
                .port(settings.port)
                .timeout(Some(settings.timeout));
        builder = match settings.security {
            // Required, not Opportunistic: a server (or a man in the middle) that does not
            // offer STARTTLS must not get the password and the report in clear text.
            SmtpSecurity::StartTls => builder.tls(Tls::Required(tls_parameters(settings)?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters(settings)?)),
            SmtpSecurity::None => builder.tls(Tls::None),
        };
        if let Some((user, password)) = &settings.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            to,
            server: format!("{}:{}", settings.host.trim(), settings.port),
            security: settings.security,
        })
    }

    /// Sends one message to every recipient: `text` and `html` as alternatives, the `images`
    /// inline next to the HTML so that `<img src="cid:CONTENT_ID">` shows them.
    pub async fn send(
        &self,
        subject: &str,
        html: &str,
        text: &str,
        images: &[Image],
    ) -> Result<(), NotifyError> {
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let html_part = SinglePart::html(html.to_owned());
        let body = if images.is_empty() {
            MultiPart::alternative()
                .singlepart(SinglePart::plain(text.to_owned()))
                .singlepart(html_part)
        } else {
            let mut related = MultiPart::related().singlepart(html_part);
            for image in images {
                related = related.singlepart(
                    Attachment::new_inline_with_name(
                        image.content_id.clone(),
                        image.file_name.clone(),
                    )
                    .body(image.png.clone(), IMAGE_PNG.clone()),
                );
            }
            MultiPart::alternative()
                .singlepart(SinglePart::plain(text.to_owned()))
                .multipart(related)
        };
        let message = builder.multipart(body).map_err(NotifyError::Message)?;
        self.transport
            .send(message)
            .await
            .map_err(|error| NotifyError::Smtp {
                server: self.server.clone(),
                detail: describe(&error),
                permanent: error.is_permanent(),
            })?;
        Ok(())
    }
}

/// lettre's message, once: it nests errors of one kind in each other, each printing its
/// kind, which would read `Connection error: Connection error: invalid peer certificate`.
fn describe(error: &lettre::transport::smtp::Error) -> String {
    let text = error.to_string();
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts
            .last()
            .is_none_or(|last| !last.eq_ignore_ascii_case(part))
        {
            parts.push(part);
        }
    }
    let text = parts.join(": ");
    // lettre capitalises some kinds and not others; messages here start in lower case.
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

fn parse_mailbox(address: &str) -> Option<Mailbox> {
    address.trim().parse().ok()
}

/// TLS for `settings.host`, trusting the public web roots and, when set, the private CA.
fn tls_parameters(settings: &EmailSettings) -> Result<TlsParameters, NotifyError> {
    let mut builder = TlsParameters::builder(settings.host.trim().to_owned());
    if let Some(path) = &settings.ca_cert {
        let pem = std::fs::read(path).map_err(|source| NotifyError::ReadFile {
            variable: "EMAIL_SMTP_CA_CERT",
            path: path.clone(),
            source,
        })?;
        let bad_pem = || NotifyError::Config {
            variable: "EMAIL_SMTP_CA_CERT",
            value: path.display().to_string(),
            expected: "a PEM file with at least one `BEGIN CERTIFICATE` block",
        };
        // Parsed here rather than by lettre's `Certificate::from_pem`, which accepts a file
        // without any certificate and so would let a wrong file pass silently.
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad_pem())?;
        if certificates.is_empty() {
            return Err(bad_pem());
        }
        for certificate in certificates {
            let certificate = Certificate::from_der(certificate.to_vec()).map_err(|_| bad_pem())?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build_rustls().map_err(|error| NotifyError::Smtp {
        server: format!("{}:{}", settings.host.trim(), settings.port),
        detail: describe(&error),
        permanent: false,
    })
}
