//! The overview: throughput and latency charts for the last hour, day or week, queue depths,
//! workers alive, and the dead letters' growth.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::layout::{Section, Viewer, duration_ms, not_read_yet, render, segment, shown, when};
use crate::dashboard::app::App;

pub(super) async fn page(State(app): State<Arc<App>>, viewer: Viewer) -> Response {
    let Some(snapshot) = app.cache.snapshot() else {
        return render(&app, &viewer, Section::Overview, not_read_yet(&app));
    };
    let stats = &snapshot.stats;
    let alive = stats.workers.iter().filter(|w| w.alive).count();
    let lost = stats.workers.len() - alive;
    let ready: u64 = stats.queues.iter().map(|q| q.ready).sum();
    let running: u64 = stats.queues.iter().map(|q| q.pending).sum();
    let delayed: u64 = stats.queues.iter().map(|q| q.delayed).sum();
    let (mut succeeded, mut failed, mut retried, mut dead) = (0, 0, 0, 0);
    for task in &stats.tasks {
        succeeded += task.succeeded;
        failed += task.failed;
        retried += task.retried;
        dead += task.dead_lettered;
    }
    let body = html! {
        h1 { "Overview" }
        p.meta { "Read " (when(snapshot.at_ms)) }
        div.cards {
            div.card { span.label { "Workers alive" } span.value #workers-alive { (alive) }
                @if lost > 0 { span.bad { (lost) " lost" } } }
            div.card { span.label { "Ready" } span.value #jobs-ready { (ready) } }
            div.card { span.label { "Running" } span.value { (running) } }
            div.card { span.label { "Delayed" } span.value { (delayed) } }
            div.card { span.label { "Dead letters" } span.value #dead-letters { (stats.dead.len) }
                span.meta { (stats.dead.added) " added, " (stats.dead.trimmed) " trimmed" } }
            div.card { span.label { "Last hour" } span.value { (succeeded) " ok" }
                span.meta { (failed) " failed, " (retried) " retried, " (dead) " dead" } }
        }
        section #charts {
            div.windows {
                button type="button" data-window="hour" class="current" { "Hour" }
                button type="button" data-window="day" { "Day" }
                button type="button" data-window="week" { "Week" }
            }
            h2 { "Throughput (jobs per bucket)" }
            div #chart-throughput .chart {}
            h2 { "Latency (queue wait and run time, p50 / p95 / p99)" }
            div #chart-latency .chart {}
        }
        h2 { "Queues" }
        table {
            thead { tr { th { "Queue" } th { "Ready" } th { "Running" } th { "Delayed" } th { "Oldest waiting" } th { "State" } } }
            tbody {
                @for queue in &stats.queues {
                    tr {
                        td { a href={ "/queues#q-" (segment(&queue.name)) } { (shown(&queue.name)) } }
                        td { (queue.ready) } td { (queue.pending) } td { (queue.delayed) }
                        td { (queue.oldest_age_ms.map_or("-".to_owned(), |ms| duration_ms(ms as f64))) }
                        td { @if queue.paused { span.bad { "paused" } } @else { "active" } }
                    }
                }
            }
        }
    };
    render(&app, &viewer, Section::Overview, body)
}
