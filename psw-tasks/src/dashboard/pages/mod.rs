//! The dashboard's pages: server-rendered with maud, which escapes every value spliced in,
//! plus one static script (`static/app.js`: local times, live updates, actions, charts) and
//! the vendored uPlot. One file per page; `layout.rs` holds what pages share, and this
//! one the routes.
//!
//! Live updates: the script asks for the page again with `X-Psw-Fragment: 1` and swaps in the
//! `<main>` it gets, rendered and escaped here like any page. Every page reads the dashboard's
//! cached reading, or one look-up of what it shows.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use super::app::App;

mod assets;
mod audit;
mod failures;
mod job;
mod layout;
mod overview;
mod queues;
mod schedules;
mod tasks;
mod workers;

pub(super) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(overview::page))
        .route("/queues", get(queues::page))
        .route("/workers", get(workers::page))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{task}", get(tasks::one))
        .route("/jobs", get(job::lookup))
        .route("/jobs/{id}", get(job::page))
        .route("/failures", get(failures::page))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::one))
        .route("/audit", get(audit::page))
        .route("/static/{file}", get(assets::serve))
}
