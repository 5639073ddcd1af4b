//! Schedules: next fire times in each schedule's zone, the last run and its outcome, run now,
//! pause and resume; and one schedule's last runs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use maud::html;

use super::layout::{
    Section, Viewer, action, duration_ms, failed, not_read_yet, render, segment, shown, when,
    when_opt,
};
use crate::dashboard::app::App;
use crate::metrics::SCHEDULE_RUNS;

pub(super) async fn list(State(app): State<Arc<App>>, viewer: Viewer) -> Response {
    let Some(snapshot) = app.cache.snapshot() else {
        return render(&app, &viewer, Section::Schedules, not_read_yet(&app));
    };
    let listings = &snapshot.schedules;
    let body = html! {
        h1 { "Schedules" }
        table #schedules {
            thead { tr { th { "Name" } th { "Task" } th { "When" } th { "Zone" } th { "Next (its zone)" } th { "Last" } th { "Outcome" } th { "State" } th {} } }
            tbody {
                @for l in listings.iter() {
                    @let name = segment(&l.name);
                    tr data-schedule=(l.name) {
                        td { a href={ "/schedules/" (name) } { (shown(&l.name)) } }
                        td { (shown(&l.task)) }
                        td { code { (shown(&l.schedule)) } }
                        td { (shown(&l.zone)) }
                        td { @for next in l.next.iter().take(3) { (shown(next)) br; } }
                        td { (shown(l.last.as_deref().unwrap_or("-"))) }
                        td { (shown(&l.outcome)) }
                        td { @if l.paused { span.bad { "paused" } } @else { "active" } }
                        td.actions {
                            (action(&viewer, &app, &format!("/api/schedules/{name}/run"), "Run now", Some("Run this schedule's job now?")))
                            @if l.paused {
                                (action(&viewer, &app, &format!("/api/schedules/{name}/resume"), "Resume", None))
                            } @else {
                                (action(&viewer, &app, &format!("/api/schedules/{name}/pause"), "Pause", Some("Pause this schedule? Its slots pass without a job until resumed.")))
                            }
                        }
                    }
                }
            }
        }
    };
    render(&app, &viewer, Section::Schedules, body)
}

pub(super) async fn one(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Response {
    let runs = match app.client.schedule_runs(&name, SCHEDULE_RUNS).await {
        Ok(runs) => runs,
        Err(err) => return failed(&app, &viewer, Section::Schedules, &err),
    };
    let body = html! {
        h1 { "Schedule " (shown(&name)) }
        h2 { "Last runs" }
        @if runs.is_empty() { p { "No run recorded yet." } }
        table #runs {
            thead { tr { th { "Slot" } th { "Finished" } th { "Job" } th { "Outcome" } th { "Run time" } } }
            tbody {
                @for run in &runs {
                    tr {
                        td { (when_opt(run.slot_ms)) }
                        td { (when(run.finished_ms)) }
                        td { a href={ "/jobs/" (segment(&run.job_id)) } { (shown(&run.job_id)) } }
                        td class=(run.outcome.as_str()) { (run.outcome.as_str()) }
                        td { (duration_ms(run.run_ms as f64)) }
                    }
                }
            }
        }
    };
    render(&app, &viewer, Section::Schedules, body)
}
