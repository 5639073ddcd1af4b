//! Failures: dead letters grouped by task, reason and normalized error (each group's count,
//! first and last time and a sample), with replay, purge and export of a group, of a task's
//! letters, or of one letter; and the letters themselves, a page at a time after a cursor,
//! so that 100,000 letters page as fast as ten.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;

use super::layout::{Section, Viewer, action, failed, not_read_yet, render, segment, shown, when};
use crate::dashboard::app::App;
use crate::dashboard::cache::FIRST_LETTERS;
use crate::dashboard::queries::DeadQuery;
use crate::dead::{DeadFilter, DeadPage};

pub(super) async fn page(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(query): Query<DeadQuery>,
) -> Response {
    let Some(snapshot) = app.cache.snapshot() else {
        return render(&app, &viewer, Section::Failures, not_read_yet(&app));
    };
    let groups = &snapshot.groups;
    let filter = query.filter();
    let after = query.after.as_deref().filter(|after| !after.is_empty());
    // The first page of all letters is the cache's (refreshed every 30 s); a page
    // further on, or of a group or task, is read when asked.
    let page = if filter == DeadFilter::All && after.is_none() && query.limit.is_none() {
        DeadPage {
            letters: snapshot.first_letters.to_vec(),
            next: (snapshot.first_letters.len() == FIRST_LETTERS)
                .then(|| snapshot.first_letters.last().map(|l| l.entry_id.clone()))
                .flatten(),
        }
    } else {
        match app
            .client
            .dead_letters()
            .matching(
                &filter,
                after,
                query.limit.unwrap_or(FIRST_LETTERS).clamp(1, 500),
            )
            .await
        {
            Ok(page) => page,
            Err(err) => return failed(&app, &viewer, Section::Failures, &err),
        }
    };
    let mut by_task: BTreeMap<String, u64> = BTreeMap::new();
    for group in groups.iter() {
        *by_task
            .entry(group.task.clone().unwrap_or_default())
            .or_default() += group.count;
    }
    let filter_query = match &filter {
        DeadFilter::Group(group) => format!("&group={}", segment(group)),
        DeadFilter::Task(task) => format!("&task={}", segment(task)),
        _ => String::new(),
    };
    let body = html! {
        h1 { "Failures" }
        h2 { "Groups" }
        @if groups.is_empty() { p { "No dead letters." } }
        table #groups {
            thead { tr { th { "Letters" } th { "Task" } th { "Reason" } th { "Error" } th { "First" } th { "Last" } th {} } }
            tbody {
                @for group in groups.iter() {
                    @let id = segment(&group.id);
                    tr data-group=(group.id) {
                        td.count { (group.count) }
                        td { (shown(group.task.as_deref().unwrap_or("-"))) }
                        td { (group.reason.as_str()) }
                        td {
                            a href={ "/failures?group=" (id) } { code { (shown(&group.error)) } }
                            details { summary { "sample" } pre { (shown(&group.sample_error)) } }
                        }
                        td { (when(group.first_ms)) }
                        td { (when(group.last_ms)) }
                        td.actions {
                            (action(&viewer, &app, &format!("/api/failures/{id}/replay"), "Replay group", Some("Replay every letter of this group?")))
                            (action(&viewer, &app, &format!("/api/failures/{id}/purge"), "Purge group", Some("Delete every letter of this group? They cannot be replayed after.")))
                            a.button href={ "/api/failures/" (id) "/export" } download { "Export JSON lines" }
                        }
                    }
                }
            }
        }
        @if !by_task.is_empty() {
            h2 { "By task" }
            table #by-task {
                thead { tr { th { "Task" } th { "Letters" } th {} } }
                tbody {
                    @for (task, count) in &by_task {
                        @let name = segment(task);
                        tr {
                            td { a href={ "/failures?task=" (name) } { (shown(if task.is_empty() { "(unreadable)" } else { task })) } }
                            td { (count) }
                            td.actions {
                                @if !task.is_empty() {
                                    (action(&viewer, &app, &format!("/api/tasks/{name}/dead/replay"), "Replay all", Some("Replay every dead letter of this task?")))
                                    (action(&viewer, &app, &format!("/api/tasks/{name}/dead/purge"), "Purge all", Some("Delete every dead letter of this task?")))
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 {
            "Letters"
            @match &filter {
                DeadFilter::Group(group) => { " of group " code { (shown(group)) } " " a href="/failures" { "(all)" } },
                DeadFilter::Task(task) => { " of task " (shown(task)) " " a href="/failures" { "(all)" } },
                _ => {},
            }
        }
        table #letters {
            thead { tr { th { "Dead since" } th { "Entry" } th { "Job" } th { "Task" } th { "Queue" } th { "Reason" } th { "Error" } th {} } }
            tbody {
                @for letter in &page.letters {
                    @let entry = segment(&letter.entry_id);
                    tr data-entry=(letter.entry_id) {
                        td { (when(letter.at_ms)) }
                        td { code { (shown(&letter.entry_id)) } }
                        td { @if let Some(job) = &letter.job_id { a href={ "/jobs/" (segment(job)) } { (shown(job)) } } @else { "-" } }
                        td { (shown(letter.task.as_deref().unwrap_or("-"))) }
                        td { (shown(&letter.queue)) }
                        td { (letter.reason.as_str()) }
                        td { pre { (shown(&letter.error)) } }
                        td.actions {
                            @if !letter.truncated {
                                (action(&viewer, &app, &format!("/api/dead/{entry}/replay"), "Replay", None))
                            }
                            (action(&viewer, &app, &format!("/api/dead/{entry}/purge"), "Purge", Some("Delete this letter?")))
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next {
            p { a #next-page href={ "/failures?after=" (segment(next)) (filter_query) } { "Next page" } }
        }
    };
    render(&app, &viewer, Section::Failures, body)
}
