//! Tasks: the registry linked into this binary (queue, retries, back-off, time limit,
//! schedule) with each task's last hour (counts, failure rate, run-time percentiles), and a
//! task's recent executions.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};

use super::layout::{
    Section, Viewer, duration_ms, failed, missing, quantile, render, segment, shown, when,
};
use crate::dashboard::app::App;
use crate::metrics::TaskCounts;
use crate::registry::{Registry, TaskDescriptor};

fn options_cells(task: &TaskDescriptor, schedules: &[(String, String, String)]) -> Markup {
    let options = task.options();
    let backoff = &options.backoff;
    html! {
        td { (shown(options.queue)) }
        td { (options.priority.as_str()) }
        td { (options.retries) }
        td { (backoff.kind.as_str()) " " (duration_ms(backoff.base.as_millis() as f64)) " to " (duration_ms(backoff.max.as_millis() as f64)) }
        td { (options.timeout.map_or("-".to_owned(), |t| duration_ms(t.as_millis() as f64))) }
        td {
            @for (name, _, schedule) in schedules.iter().filter(|(_, t, _)| t == task.name()) {
                a href={ "/schedules/" (segment(name)) } { (shown(name)) } ": " (shown(schedule)) br;
            }
        }
    }
}

fn count_cells(counts: Option<&TaskCounts>) -> Markup {
    html! {
        @match counts {
            Some(c) => {
                td { (c.succeeded) } td { (c.failed) } td { (c.retried) } td { (c.dead_lettered) }
                td { (c.failure_rate().map_or("-".to_owned(), |r| format!("{:.1} %", r * 100.0))) }
                td { (quantile(&c.run_time, 0.5)) " / " (quantile(&c.run_time, 0.95)) " / " (quantile(&c.run_time, 0.99)) }
            }
            None => { td { "0" } td { "0" } td { "0" } td { "0" } td { "-" } td { "-" } }
        }
    }
}

pub(super) async fn list(State(app): State<Arc<App>>, viewer: Viewer) -> Response {
    let registry = match Registry::from_linked() {
        Ok(registry) => registry,
        Err(err) => return failed(&app, &viewer, Section::Tasks, &err),
    };
    let schedules = crate::scheduler::listing::linked(&app.client).unwrap_or_default();
    let snapshot = app.cache.snapshot();
    let counts = |name: &str| {
        snapshot
            .as_ref()
            .and_then(|s| s.stats.tasks.iter().find(|c| c.task == name).cloned())
    };
    let body = html! {
        h1 { "Tasks" }
        p.meta { "Linked into this binary; counts over the last hour." }
        table #tasks {
            thead { tr {
                th { "Task" } th { "Queue" } th { "Priority" } th { "Retries" } th { "Back-off" } th { "Time limit" } th { "Schedule" }
                th { "Succeeded" } th { "Failed" } th { "Retried" } th { "Dead" } th { "Failure rate" } th { "Run p50 / p95 / p99" }
            } }
            tbody {
                @for task in registry.iter() {
                    tr {
                        td { a href={ "/tasks/" (segment(task.name())) } { (shown(task.name())) } }
                        (options_cells(task, &schedules))
                        (count_cells(counts(task.name()).as_ref()))
                    }
                }
            }
        }
    };
    render(&app, &viewer, Section::Tasks, body)
}

pub(super) async fn one(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Response {
    let registry = match Registry::from_linked() {
        Ok(registry) => registry,
        Err(err) => return failed(&app, &viewer, Section::Tasks, &err),
    };
    let task = registry.get(&name);
    let snapshot = app.cache.snapshot();
    let counts = snapshot
        .as_ref()
        .and_then(|s| s.stats.tasks.iter().find(|c| c.task == name).cloned());
    let executions = match app.client.recent_executions(&name, 100).await {
        Ok(list) => list,
        Err(err) => return failed(&app, &viewer, Section::Tasks, &err),
    };
    if task.is_none() && counts.is_none() && executions.is_empty() {
        return missing(&app, &viewer, Section::Tasks, "No such task here.");
    }
    let schedules = crate::scheduler::listing::linked(&app.client).unwrap_or_default();
    let body = html! {
        h1 { "Task " (shown(&name)) }
        @if let Some(task) = task {
            table {
                thead { tr { th { "Queue" } th { "Priority" } th { "Retries" } th { "Back-off" } th { "Time limit" } th { "Schedule" } } }
                tbody { tr { (options_cells(task, &schedules)) } }
            }
        } @else {
            p.meta { "Not linked into this binary: counts and executions only." }
        }
        h2 { "Last hour" }
        table {
            thead { tr { th { "Succeeded" } th { "Failed" } th { "Retried" } th { "Dead" } th { "Failure rate" } th { "Run p50 / p95 / p99" } } }
            tbody { tr { (count_cells(counts.as_ref())) } }
        }
        @if let Some(c) = &counts {
            p.meta { "Queue wait p50 / p95 / p99: " (quantile(&c.queue_wait, 0.5)) " / " (quantile(&c.queue_wait, 0.95)) " / " (quantile(&c.queue_wait, 0.99)) }
        }
        h2 { "Recent executions" }
        table #executions {
            thead { tr { th { "Finished" } th { "Job" } th { "Attempt" } th { "Outcome" } th { "Run time" } th { "Worker" } } }
            tbody {
                @for run in &executions {
                    tr {
                        td { (when(run.finished_ms)) }
                        td { a href={ "/jobs/" (segment(&run.job_id)) } { (shown(&run.job_id)) } }
                        td { (run.attempt) }
                        td class=(run.outcome.as_str()) { (run.outcome.as_str()) }
                        td { (duration_ms(run.run_ms as f64)) }
                        td { (shown(&run.worker)) }
                    }
                }
            }
        }
    };
    render(&app, &viewer, Section::Tasks, body)
}
