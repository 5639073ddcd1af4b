//! The audit log: every action taken from the dashboard, newest first, a page at a time.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;

use super::layout::{Section, Viewer, failed, render, segment, shown, when};
use crate::dashboard::app::App;
use crate::dashboard::queries::AuditQuery;

const PAGE: usize = 100;

pub(super) async fn page(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Response {
    let before = query.before.as_deref().filter(|before| !before.is_empty());
    let limit = query.limit.unwrap_or(PAGE).clamp(1, 500);
    let entries = match app.client.audit_log(before, limit).await {
        Ok(entries) => entries,
        Err(err) => return failed(&app, &viewer, Section::Audit, &err),
    };
    let body = html! {
        h1 { "Audit" }
        p.meta { "Every action taken here: who, what, when, from where, and how many jobs. The last 10,000 are kept." }
        table #audit {
            thead { tr { th { "When" } th { "User" } th { "Address" } th { "Action" } th { "Target" } th { "Jobs" } } }
            tbody {
                @for entry in &entries {
                    tr {
                        td { (when(entry.at_ms)) }
                        td { (shown(&entry.user)) }
                        td { (shown(&entry.address)) }
                        td { (entry.action.as_str()) }
                        td { code { (shown(&entry.target)) } }
                        td { (entry.jobs) }
                    }
                }
            }
        }
        @if entries.len() == limit {
            @if let Some(last) = entries.last() {
                p { a href={ "/audit?before=" (segment(&last.id)) } { "Older" } }
            }
        }
    };
    render(&app, &viewer, Section::Audit, body)
}
