//! What every page shares: the layout around it (navigation, job look-up, the live-update
//! controls), who looks at it, and the small pieces pages are made of (times, durations,
//! progress bars, action buttons, escaped names).

use axum::extract::FromRequestParts;
use axum::http::{StatusCode, request::Parts};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::dashboard::app::App;
use crate::dashboard::auth::Identity;
use crate::dashboard::settings::Role;
use crate::redact::printable;

/// The header the page script sends to get only a page's `<main>`.
const FRAGMENT_HEADER: &str = "x-psw-fragment";

/// The pages' sections, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Queues,
    Workers,
    Tasks,
    Jobs,
    Failures,
    Schedules,
    Audit,
}

impl Section {
    const ALL: [Section; 8] = [
        Section::Overview,
        Section::Queues,
        Section::Workers,
        Section::Tasks,
        Section::Jobs,
        Section::Failures,
        Section::Schedules,
        Section::Audit,
    ];

    fn title(self) -> &'static str {
        match self {
            Section::Overview => "Overview",
            Section::Queues => "Queues",
            Section::Workers => "Workers",
            Section::Tasks => "Tasks",
            Section::Jobs => "Job",
            Section::Failures => "Failures",
            Section::Schedules => "Schedules",
            Section::Audit => "Audit",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Section::Overview => "/",
            Section::Queues => "/queues",
            Section::Workers => "/workers",
            Section::Tasks => "/tasks",
            Section::Jobs => "/jobs",
            Section::Failures => "/failures",
            Section::Schedules => "/schedules",
            Section::Audit => "/audit",
        }
    }
}

/// Who looks at a page, and whether the script asked for its `<main>` only.
pub(crate) struct Viewer {
    pub(crate) identity: Identity,
    fragment: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let identity = parts
            .extensions
            .get::<Identity>()
            .cloned()
            .ok_or_else(|| StatusCode::UNAUTHORIZED.into_response())?;
        Ok(Viewer {
            identity,
            fragment: parts.headers.contains_key(FRAGMENT_HEADER),
        })
    }
}

impl Viewer {
    /// Whether this viewer's actions would be taken: an admin of a dashboard that is not
    /// read-only. Only to hide buttons; every action is checked again by the server.
    pub(crate) fn may_act(&self, app: &App) -> bool {
        self.identity.role == Role::Admin && !app.read_only
    }
}

/// A page: the whole document, or its `<main>` for a live update.
pub(crate) fn render(app: &App, viewer: &Viewer, section: Section, body: Markup) -> Response {
    if viewer.fragment {
        return Html(body.into_string()).into_response();
    }
    let document = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (section.title()) " · psw-tasks" }
                link rel="stylesheet" href="/static/uPlot.min.css";
                link rel="stylesheet" href="/static/app.css";
                script src="/static/uPlot.iife.min.js" defer {}
                script src="/static/app.js" defer {}
            }
            body data-may-act=(viewer.may_act(app)) {
                header {
                    strong.brand { "psw-tasks" }
                    nav {
                        @for each in Section::ALL {
                            a href=(each.path()) class=[(each == section).then_some("current")] { (each.title()) }
                        }
                    }
                    form.lookup action="/jobs" method="get" {
                        input type="search" name="id" placeholder="job id, or a log line" aria-label="Look a job up";
                    }
                    span.live {
                        button #live-toggle type="button" { "Pause updates" }
                        select #live-interval aria-label="Update every" {
                            option value="2000" { "2 s" }
                            option value="5000" { "5 s" }
                            option value="15000" { "15 s" }
                            option value="60000" { "1 min" }
                        }
                        span #live-status {}
                    }
                    span.user {
                        (shown(&viewer.identity.name)) " (" (viewer.identity.role.as_str()) ")"
                        @if app.read_only { " · read-only" }
                    }
                }
                div #flash role="status" {}
                main #main { (body) }
            }
        }
    };
    Html(document.into_string()).into_response()
}

/// A name or message as shown: control characters (terminal escapes) made visible as
/// escapes; maud then escapes the HTML.
pub(crate) fn shown(text: &str) -> String {
    printable(text).into_owned()
}

/// A time: UTC in the markup, turned into the browser's zone by the script, UTC on hover.
pub(crate) fn when(ms: i64) -> Markup {
    let utc = chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".to_owned());
    html! { time data-ms=(ms) title=(utc) { (utc) } }
}

/// An optional time.
pub(crate) fn when_opt(ms: Option<i64>) -> Markup {
    match ms {
        Some(ms) if ms > 0 => when(ms),
        _ => html! { "-" },
    }
}

/// A duration in words: `850 ms`, `4.2 s`, `3 min`, `2.5 h`.
pub(crate) fn duration_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        format!("{:.0} min", ms / 60_000.0)
    } else {
        format!("{:.1} h", ms / 3_600_000.0)
    }
}

/// A percentile of a histogram in words, `-` when nothing ran.
pub(crate) fn quantile(histogram: &crate::metrics::Histogram, q: f64) -> String {
    histogram
        .quantile(q)
        .map_or_else(|| "-".to_owned(), |d| duration_ms(d.as_secs_f64() * 1000.0))
}

/// A button that POSTs to `path` (through the script, with the CSRF token), for viewers who
/// may act; `confirm` asks first.
pub(crate) fn action(
    viewer: &Viewer,
    app: &App,
    path: &str,
    label: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        @if viewer.may_act(app) {
            button.action type="button" data-action=(path) data-confirm=[confirm] { (label) }
        }
    }
}

/// A path segment: the name percent-encoded, so that any queue, task or id makes a valid
/// link (and an escaped one: maud escapes the attribute too).
pub(crate) fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A progress bar with its numbers.
pub(crate) fn progress(progress: Option<&crate::record::Progress>) -> Markup {
    html! {
        @match progress {
            Some(p) if p.total > 0 => {
                progress max=(p.total) value=(p.current.min(p.total)) {}
                " " span.progress-text { (p.current) " / " (p.total) }
            }
            _ => "-",
        }
    }
}

/// What a page says when the broker has not been read yet.
pub(crate) fn not_read_yet(app: &App) -> Markup {
    html! {
        p.warning {
            "The broker has not been read yet"
            @if let Some(error) = app.cache.error() { ": " (shown(&error)) }
        }
    }
}

/// A JSON value as indented text, escaped by maud where it is spliced.
pub(crate) fn json_text(value: &serde_json::Value) -> String {
    shown(&serde_json::to_string_pretty(value).unwrap_or_default())
}

/// A page that is not there.
pub(crate) fn missing(app: &App, viewer: &Viewer, section: Section, what: &str) -> Response {
    let mut response = render(app, viewer, section, html! { p.warning { (what) } });
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// A page whose reading failed: the error, without secrets (`redact`), escaped.
pub(crate) fn failed(
    app: &App,
    viewer: &Viewer,
    section: Section,
    err: &crate::error::Error,
) -> Response {
    let mut response = render(
        app,
        viewer,
        section,
        html! {
            p.warning { "The broker could not be read: " (shown(&crate::error::chain(err))) }
        },
    );
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}
