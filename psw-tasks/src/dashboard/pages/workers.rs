//! Workers: host, pid, start, concurrency, counts, and each running job with its progress; a
//! worker that stopped heart-beating shows as lost.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::layout::{Section, Viewer, not_read_yet, progress, render, segment, shown, when};
use crate::dashboard::app::App;

/// Host and pid from a consumer name `<host>-<pid>-<random>` (a host may hold dashes).
fn host_and_pid(name: &str) -> (&str, &str) {
    let mut parts = name.rsplitn(3, '-');
    let _random = parts.next();
    match (parts.next(), parts.next()) {
        (Some(pid), Some(host)) if pid.bytes().all(|b| b.is_ascii_digit()) => (host, pid),
        _ => (name, "-"),
    }
}

pub(super) async fn page(State(app): State<Arc<App>>, viewer: Viewer) -> Response {
    let Some(snapshot) = app.cache.snapshot() else {
        return render(&app, &viewer, Section::Workers, not_read_yet(&app));
    };
    let body = html! {
        h1 { "Workers" }
        @if snapshot.stats.workers.is_empty() { p { "No worker has sent a heartbeat in the last hour." } }
        @for worker in &snapshot.stats.workers {
            @let (host, pid) = host_and_pid(&worker.name);
            section.worker data-worker=(worker.name) {
                h2 {
                    (shown(host)) " · pid " (shown(pid)) " "
                    @if worker.alive { span.good { "alive" } } @else { span.bad { "lost" } }
                }
                dl {
                    dt { "Name" } dd { (shown(&worker.name)) }
                    dt { "Queues" } dd { @for (i, q) in worker.queues.iter().enumerate() { @if i > 0 { ", " } (shown(q)) } }
                    dt { "Started" } dd { (when(worker.started_ms)) }
                    dt { "Last heartbeat" } dd { (when(worker.seen_ms)) }
                    dt { "Concurrency" } dd { (worker.running) " running of " (worker.concurrency) }
                    dt { "Processed" } dd { (worker.succeeded) " succeeded, " (worker.failed) " failed, " (worker.retried) " retried, " (worker.dead_lettered) " dead-lettered" }
                }
                @if !worker.active.is_empty() {
                    table.active {
                        thead { tr { th { "Job" } th { "Task" } th { "Started" } th { "Progress" } } }
                        tbody {
                            @for job in &worker.active {
                                tr data-job=(job.id) {
                                    td { a href={ "/jobs/" (segment(&job.id)) } { (shown(&job.id)) } }
                                    td { (shown(&job.task)) }
                                    td { (when(job.started_ms)) }
                                    td { (progress(job.progress.as_ref())) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    render(&app, &viewer, Section::Workers, body)
}

#[cfg(test)]
mod tests {
    use super::host_and_pid;

    #[test]
    fn a_consumer_name_gives_its_host_and_pid() {
        assert_eq!(host_and_pid("web-1-4242-x9ab"), ("web-1", "4242"));
        assert_eq!(host_and_pid("odd"), ("odd", "-"));
    }
}
