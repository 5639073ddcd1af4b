//! One job, looked up by id (or by a log line that holds one): its state, progress, result,
//! every attempt's error, its timeline and its envelope with the arguments as escaped JSON
//! (from its dead letter, for a job that failed for good; from its queue, for one waiting
//! or running). Cancel, and retry a failed one.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{
    Section, Viewer, action, failed, json_text, progress, render, segment, shown, when, when_opt,
};
use crate::broker::{DeadJob, QueuedJob};
use crate::dashboard::app::App;
use crate::dashboard::queries::JOB_QUEUE_LOOK;
use crate::record::{JobRecord, State as JobState};

/// Dead letters the job page looks through, newest first, for a failed job's letter.
const JOB_LETTER_LOOK: usize = 5_000;

/// The candidates of a pasted text the look-up also seeks in the queues, when none has a
/// record: each costs a round trip per lane.
const QUEUE_CANDIDATES: usize = 3;

#[derive(Deserialize)]
pub(super) struct Lookup {
    id: Option<String>,
}

/// The tokens of pasted text that could be a job id, longest first: a log line holds the id
/// among other words (`job=…`, quotes, brackets).
fn candidates(text: &str) -> Vec<&str> {
    let mut tokens: Vec<&str> = text
        .split(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == ':')
        })
        .flat_map(|token| {
            token
                .rsplit_once('=')
                .map_or([token, ""], |(_, id)| [token, id])
        })
        .filter(|token| token.len() >= 6)
        .collect();
    tokens.sort_by_key(|token| std::cmp::Reverse(token.len()));
    tokens.dedup();
    tokens.truncate(20);
    tokens
}

fn form(value: &str) -> Markup {
    html! {
        form.lookup-big action="/jobs" method="get" {
            label { "Job id, or a log line that holds one " input type="search" name="id" value=(value); }
            button type="submit" { "Look up" }
        }
    }
}

pub(super) async fn lookup(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(query): Query<Lookup>,
) -> Response {
    let text = query.id.unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return render(
            &app,
            &viewer,
            Section::Jobs,
            html! { h1 { "Look a job up" } (form("")) },
        );
    }
    let candidates = candidates(text);
    for candidate in &candidates {
        match app.client.record(candidate).await {
            Ok(Some(_)) => {
                return Redirect::to(&format!("/jobs/{}", segment(candidate))).into_response();
            }
            Ok(None) => {}
            Err(err) => return failed(&app, &viewer, Section::Jobs, &err),
        }
    }
    // A job no worker has started has no record yet: it may be waiting in a queue.
    for candidate in candidates.iter().take(QUEUE_CANDIDATES) {
        match app.client.find_queued(candidate, JOB_QUEUE_LOOK).await {
            Ok(Some(_)) => {
                return Redirect::to(&format!("/jobs/{}", segment(candidate))).into_response();
            }
            Ok(None) => {}
            Err(err) => return failed(&app, &viewer, Section::Jobs, &err),
        }
    }
    let body = html! {
        h1 { "Look a job up" }
        p.warning { "No job found in " code { (shown(text)) } " (expired, of a task that keeps no results, or deep in a long queue)." }
        (form(text))
    };
    render(&app, &viewer, Section::Jobs, body)
}

/// What happened to the job, oldest first.
fn timeline(record: &JobRecord, letter: Option<&DeadJob>) -> Vec<(i64, String)> {
    let mut events = vec![(record.created_ms, "enqueued".to_owned())];
    for error in &record.errors {
        events.push((
            error.at_ms,
            format!("attempt {} failed ({})", error.attempt, error.kind.as_str()),
        ));
    }
    if let Some(started) = record.started_ms {
        events.push((started, format!("attempt {} started", record.attempt)));
    }
    if let Some(retry) = record.retry_at_ms {
        events.push((retry, "retry due".to_owned()));
    }
    if let Some(finished) = record.finished_ms {
        events.push((finished, format!("finished: {}", record.state.as_str())));
    }
    if let Some(letter) = letter {
        events.push((
            letter.at_ms,
            format!("dead-lettered: {}", letter.reason.as_str()),
        ));
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

pub(super) async fn page(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let record = match app.client.record(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return waiting(&app, &viewer, &id).await,
        Err(err) => return failed(&app, &viewer, Section::Jobs, &err),
    };
    // A job not finished yet has its envelope in its queue (a running one, until settled).
    let queued = if record.state.is_terminal() {
        None
    } else {
        match app.client.find_queued(&id, JOB_QUEUE_LOOK).await {
            Ok(queued) => queued,
            Err(err) => return failed(&app, &viewer, Section::Jobs, &err),
        }
    };
    // Only a job that failed for good has a dead letter to show and retry; the page looks
    // among the newest letters only, so that it answers fast at any size.
    let letter = if record.state == JobState::Failure {
        match app
            .client
            .dead_letters()
            .find_job(&id, Some(JOB_LETTER_LOOK))
            .await
        {
            Ok(letter) => letter,
            Err(err) => return failed(&app, &viewer, Section::Jobs, &err),
        }
    } else {
        None
    };
    let result = record.result_json().ok().flatten();
    let segment_id = segment(&id);
    let body = html! {
        h1 { "Job " (shown(&id)) }
        div.actions {
            @if !record.state.is_terminal() {
                (action(&viewer, &app, &format!("/api/jobs/{segment_id}/cancel"), "Cancel", Some("Cancel this job? A running task is told; one not started never runs.")))
            }
            @if letter.is_some() {
                (action(&viewer, &app, &format!("/api/jobs/{segment_id}/retry"), "Retry", Some("Retry this job from its dead letter?")))
            }
        }
        dl #job data-state=(record.state.as_str()) {
            dt { "Task" } dd { a href={ "/tasks/" (segment(&record.task)) } { (shown(&record.task)) } }
            dt { "State" } dd.state { (record.state.as_str()) @if let Some(why) = record.revoked { " (" (why.as_str()) ")" } }
            dt { "Attempt" } dd { (record.attempt) }
            dt { "Progress" } dd { (progress(record.progress.as_ref())) }
            dt { "Enqueued" } dd { (when(record.created_ms)) }
            dt { "Started" } dd { (when_opt(record.started_ms)) }
            dt { "Finished" } dd { (when_opt(record.finished_ms)) }
            dt { "Retry due" } dd { (when_opt(record.retry_at_ms)) }
        }
        @if let Some(result) = &result {
            h2 { "Result" }
            pre.json { (json_text(result)) }
        }
        @if !record.errors.is_empty() {
            h2 { "Errors" }
            @if record.errors_dropped > 0 { p.meta { (record.errors_dropped) " middle attempts' errors were dropped to keep the envelope small." } }
            table.errors {
                thead { tr { th { "Attempt" } th { "When" } th { "Kind" } th { "Message" } } }
                tbody {
                    @for error in &record.errors {
                        tr { td { (error.attempt) } td { (when(error.at_ms)) } td { (error.kind.as_str()) } td { pre { (shown(&error.message)) } } }
                    }
                }
            }
        }
        h2 { "Timeline" }
        ol.timeline {
            @for (at, what) in timeline(&record, letter.as_ref()) {
                li { (when(at)) " " (what) }
            }
        }
        @if record.state == JobState::Failure && letter.is_none() {
            p.meta { "Its dead letter is not among the newest 5,000 (or was replayed or purged): find it on " a href="/failures" { "Failures" } "." }
        }
        @if let Some(queued) = &queued {
            (queued_envelope(queued))
        }
        @if let Some(letter) = &letter {
            h2 { "Envelope" }
            p.meta { "From its dead letter " a href={ "/failures?group=" (segment(&letter.group)) } { (shown(&letter.entry_id)) } ", " (letter.reason.as_str()) "." }
            @match letter.envelope_json() {
                Some(envelope) => pre.json #envelope { (json_text(&envelope)) },
                None => p.warning { "Its bytes are cut or not an envelope." },
            }
        }
    };
    render(&app, &viewer, Section::Jobs, body)
}

/// A job with no record: one that waits in a queue, not started yet, or one unknown here.
async fn waiting(app: &Arc<App>, viewer: &Viewer, id: &str) -> Response {
    let queued = match app.client.find_queued(id, JOB_QUEUE_LOOK).await {
        Ok(queued) => queued,
        Err(err) => return failed(app, viewer, Section::Jobs, &err),
    };
    let Some(queued) = queued else {
        let body = html! {
            h1 { "Job " (shown(id)) }
            p.warning { "No record of this job, and it is not among the first 1,000 of any queue: expired, of a task that keeps no results, or deep in a long queue." }
            (form(id))
        };
        return render(app, viewer, Section::Jobs, body);
    };
    let segment_id = segment(id);
    let body = html! {
        h1 { "Job " (shown(id)) }
        div.actions {
            (action(viewer, app, &format!("/api/jobs/{segment_id}/cancel"), "Cancel", Some("Cancel this job? It will never run.")))
        }
        dl #job data-state=(JobState::Pending.as_str()) {
            dt { "State" } dd.state { (JobState::Pending.as_str()) }
            dt { "Waits in" } dd { a href="/queues" { (shown(&queued.lane)) } }
            dt { "Due" } dd { @match queued.due_ms { Some(due) => (when(due)), None => "now: in the stream" } }
        }
        (queued_envelope(&queued))
    };
    render(app, viewer, Section::Jobs, body)
}

fn queued_envelope(queued: &QueuedJob) -> Markup {
    html! {
        h2 { "Envelope" }
        p.meta { "From its queue " (shown(&queued.lane)) @if queued.due_ms.is_some() { " (delayed set)" } "." }
        @match queued.envelope_json() {
            Some(envelope) => pre.json #envelope { (json_text(&envelope)) },
            None => p.warning { "Its bytes are not an envelope." },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn a_log_line_yields_the_id_it_holds() {
        let line = r#"2026-12-02T10:00:00Z WARN job failed job=0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b task="prices""#;
        assert!(candidates(line).contains(&"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"));
        assert_eq!(candidates("  abcdef123  "), ["abcdef123"]);
    }
}
