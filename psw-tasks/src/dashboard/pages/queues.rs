//! Queues: ready, running (pending), delayed, consumers and the oldest waiting job's age, with
//! pause and resume.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::layout::{Section, Viewer, action, duration_ms, not_read_yet, render, segment, shown};
use crate::dashboard::app::App;

pub(super) async fn page(State(app): State<Arc<App>>, viewer: Viewer) -> Response {
    let Some(snapshot) = app.cache.snapshot() else {
        return render(&app, &viewer, Section::Queues, not_read_yet(&app));
    };
    let body = html! {
        h1 { "Queues" }
        table #queues {
            thead { tr { th { "Queue" } th { "Ready" } th { "Running" } th { "Delayed" } th { "Consumers" } th { "Oldest waiting" } th { "State" } th {} } }
            tbody {
                @for queue in &snapshot.stats.queues {
                    @let name = segment(&queue.name);
                    tr id={ "q-" (name) } data-queue=(queue.name) {
                        td { (shown(&queue.name)) }
                        td.ready { (queue.ready) } td.pending { (queue.pending) } td { (queue.delayed) }
                        td { (queue.consumers) }
                        td { (queue.oldest_age_ms.map_or("-".to_owned(), |ms| duration_ms(ms as f64))) }
                        td.state { @if queue.paused { span.bad { "paused" } } @else { "active" } }
                        td {
                            @if queue.paused {
                                (action(&viewer, &app, &format!("/api/queues/{name}/resume"), "Resume", None))
                            } @else {
                                (action(&viewer, &app, &format!("/api/queues/{name}/pause"), "Pause", Some("Pause this queue? Workers stop taking its jobs within a second.")))
                            }
                        }
                    }
                }
            }
        }
    };
    render(&app, &viewer, Section::Queues, body)
}
