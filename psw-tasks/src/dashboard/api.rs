//! The routes: the guard every request passes (login, then for actions the role, read-only and
//! CSRF checks), the JSON API under `/api/`, `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::app::App;
use super::auth::{Identity, Verdict};
use super::csrf::TOKEN_HEADER;
use super::exposition;
use super::settings::Role;
use crate::envelope::now_ms;
use crate::error::Error;
use crate::metrics::{RECENT_EXECUTIONS, SCHEDULE_RUNS};
use crate::registry::Registry;

type Shared = State<Arc<App>>;

/// Most dead letters one page lists.
const DEAD_PAGE: usize = 500;

pub(super) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/session", get(session))
        .route("/api/overview", get(overview))
        .route("/api/metrics", get(history))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{task}/executions", get(executions))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/queues/{queue}/pause", post(pause_queue))
        .route("/api/queues/{queue}/resume", post(resume_queue))
        .route("/api/schedules", get(schedules))
        .route("/api/schedules/{name}/runs", get(schedule_runs))
        .route("/api/schedules/{name}/pause", post(pause_schedule))
        .route("/api/schedules/{name}/resume", post(resume_schedule))
        .route("/api/schedules/{name}/run", post(run_schedule))
        .route("/api/dead", get(dead))
        .route("/api/dead/{entry}/replay", post(replay))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Every request: the login (but for `/healthz`), and for an action the role, read-only and
/// CSRF checks; then the security headers on the answer.
async fn guard(
    State(app): Shared,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let mut response = if path == "/healthz" {
        next.run(request).await
    } else {
        let headers = request.headers();
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        match app.auth.check(from.ip(), authorization, path == "/metrics") {
            Verdict::Throttled(wait) => {
                let mut response = refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins from this address; wait and try again",
                );
                let seconds = wait.as_secs().max(1).to_string();
                if let Ok(value) = HeaderValue::from_str(&seconds) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            Verdict::Refused => {
                let mut response = refusal(StatusCode::UNAUTHORIZED, "log in");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"psw-tasks\", charset=\"UTF-8\""),
                );
                response
            }
            Verdict::Allowed(identity) => {
                let refused = (request.method() != Method::GET)
                    .then(|| check_action(&app, &identity, headers))
                    .flatten();
                match refused {
                    Some(response) => response,
                    None => {
                        request.extensions_mut().insert(identity);
                        request.extensions_mut().insert(from);
                        next.run(request).await
                    }
                }
            }
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Why an action is refused, if it is: the server's own checks, whatever a page shows.
fn check_action(app: &App, identity: &Identity, headers: &HeaderMap) -> Option<Response> {
    if identity.role != Role::Admin {
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "refused: viewers may not act; ask an admin",
        ));
    }
    if app.read_only {
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "refused: the dashboard is read-only (PSW_DASHBOARD_READ_ONLY)",
        ));
    }
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    match app.csrf.check(
        &identity.name,
        text("sec-fetch-site"),
        text("origin"),
        text("host"),
        text(TOKEN_HEADER),
    ) {
        Ok(()) => None,
        Err(why) => Some(refusal(StatusCode::FORBIDDEN, why.message())),
    }
}

/// An error of the runtime as an answer: what the caller got wrong, what is not there, or
/// what failed here. Error texts carry no secrets (`redact`).
fn failed(err: Error) -> Response {
    let status = match &err {
        Error::Config { .. } | Error::Schedule { .. } | Error::Replay { .. } => {
            StatusCode::BAD_REQUEST
        }
        Error::NotDeadLettered(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refusal(status, &crate::error::chain(&err))
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// An action done: logged with who did it and from where (never its arguments).
fn acted(identity: &Identity, from: &SocketAddr, action: &str, target: &str) {
    tracing::info!(user = %identity.name, address = %from.ip(), action, target = %crate::redact::printable(target), "dashboard action");
}

async fn metrics(State(app): Shared) -> Response {
    match app.cache.snapshot() {
        Some(snapshot) => (
            [(header::CONTENT_TYPE, exposition::CONTENT_TYPE)],
            snapshot.exposition.clone(),
        )
            .into_response(),
        None => not_read_yet(&app),
    }
}

fn not_read_yet(app: &App) -> Response {
    let error = app
        .cache
        .error()
        .unwrap_or_else(|| "not read yet".to_owned());
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("the broker has not been read yet: {error}"),
    )
}

async fn session(State(app): Shared, identity: axum::Extension<Identity>) -> Response {
    ok(json!({
        "user": identity.name,
        "role": identity.role.as_str(),
        "csrf_token": app.csrf.token(&identity.name),
        "read_only": app.read_only,
    }))
}

async fn overview(State(app): Shared) -> Response {
    match app.cache.snapshot() {
        Some(snapshot) => ok(json!({
            "at_ms": snapshot.at_ms,
            "stale_error": app.cache.error(),
            "stats": snapshot.stats,
        })),
        None => not_read_yet(&app),
    }
}

#[derive(Deserialize)]
struct Window {
    window: Option<String>,
}

async fn history(State(app): Shared, Query(query): Query<Window>) -> Response {
    let Some(snapshot) = app.cache.snapshot() else {
        return not_read_yet(&app);
    };
    let chosen = match query.window.as_deref().unwrap_or("hour") {
        "hour" => Some(&snapshot.hour),
        "day" => snapshot.day.as_ref(),
        "week" => snapshot.week.as_ref(),
        _ => {
            return refusal(StatusCode::BAD_REQUEST, "window is one of hour, day, week");
        }
    };
    match chosen {
        Some(history) => ok(json!(history)),
        None => not_read_yet(&app),
    }
}

async fn tasks(State(app): Shared) -> Response {
    let registry = match Registry::from_linked() {
        Ok(registry) => registry,
        Err(err) => return failed(err),
    };
    let snapshot = app.cache.snapshot();
    let list: Vec<Value> = registry
        .iter()
        .map(|task| {
            let options = task.options();
            let counts = snapshot
                .as_ref()
                .and_then(|s| s.stats.tasks.iter().find(|c| c.task == task.name()));
            json!({
                "name": task.name(),
                "queue": options.queue,
                "priority": options.priority.as_str(),
                "retries": options.retries,
                "timeout_ms": options.timeout.map(|t| t.as_millis() as u64),
                "ignore_result": options.ignore_result,
                "last_hour": counts,
            })
        })
        .collect();
    ok(json!(list))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn executions(
    State(app): Shared,
    Path(task): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    let limit = q.limit.unwrap_or(100).min(RECENT_EXECUTIONS);
    match app.client.recent_executions(&task, limit).await {
        Ok(list) => ok(json!(list)),
        Err(err) => failed(err),
    }
}

async fn job(State(app): Shared, Path(id): Path<String>) -> Response {
    match app.client.record(&id).await {
        Ok(Some(record)) => match record.to_json() {
            Ok(json) => ok(json),
            Err(err) => failed(err),
        },
        Ok(None) => refusal(
            StatusCode::NOT_FOUND,
            "no record of this job (pending, expired, or of a task that keeps none)",
        ),
        Err(err) => failed(err),
    }
}

async fn cancel(
    State(app): Shared,
    identity: axum::Extension<Identity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    acted(&identity, &from, "cancel", &id);
    match app.client.cancel(&id).await {
        Ok(()) => ok(json!({ "cancelled": id })),
        Err(err) => failed(err),
    }
}

async fn pause_queue(
    State(app): Shared,
    identity: axum::Extension<Identity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(queue): Path<String>,
) -> Response {
    acted(&identity, &from, "pause queue", &queue);
    match app.client.pause_queue(&queue).await {
        Ok(changed) => ok(json!({ "queue": queue, "paused": true, "changed": changed })),
        Err(err) => failed(err),
    }
}

async fn resume_queue(
    State(app): Shared,
    identity: axum::Extension<Identity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(queue): Path<String>,
) -> Response {
    acted(&identity, &from, "resume queue", &queue);
    match app.client.resume_queue(&queue).await {
        Ok(changed) => ok(json!({ "queue": queue, "paused": false, "changed": changed })),
        Err(err) => failed(err),
    }
}

async fn schedules(State(app): Shared) -> Response {
    match crate::scheduler::listing::listings(&app.client, now_ms(), 5).await {
        Ok(listings) => ok(json!(
            listings
                .iter()
                .map(|l| json!({
                    "name": l.name,
                    "task": l.task,
                    "schedule": l.schedule,
                    "zone": l.zone,
                    "misfire": l.misfire,
                    "overlap": l.overlap,
                    "next": l.next,
                    "last": l.last,
                    "outcome": l.outcome,
                    "skipped": l.skipped,
                    "paused": l.paused,
                }))
                .collect::<Vec<_>>()
        )),
        Err(err) => failed(err),
    }
}

async fn schedule_runs(State(app): Shared, Path(name): Path<String>) -> Response {
    match app.client.schedule_runs(&name, SCHEDULE_RUNS).await {
        Ok(runs) => ok(json!(runs)),
        Err(err) => failed(err),
    }
}

async fn pause_schedule(
    State(app): Shared,
    identity: axum::Extension<Identity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Response {
    acted(&identity, &from, "pause schedule", &name);
    match app.client.pause_schedule(&name).await {
        Ok(()) => ok(json!({ "schedule": name, "paused": true })),
        Err(err) => failed(err),
    }
}

async fn resume_schedule(
    State(app): Shared,
    identity: axum::Extension<Identity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Response {
    acted(&identity, &from, "resume schedule", &name);
    match app.client.resume_schedule(&name).await {
        Ok(()) => ok(json!({ "schedule": name, "paused": false })),
        Err(err) => failed(err),
    }
}

async fn run_schedule(
    State(app): Shared,
    identity: axum::Extension<Identity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Response {
    acted(&identity, &from, "run schedule", &name);
    match app.client.run_schedule(&name).await {
        Ok(handle) => ok(json!({ "schedule": name, "job_id": handle.id().as_str() })),
        Err(err) => failed(err),
    }
}

async fn dead(State(app): Shared, Query(q): Query<Limit>) -> Response {
    let limit = q.limit.unwrap_or(100).min(DEAD_PAGE);
    match app.client.dead_letters().list(limit).await {
        Ok(list) => ok(json!(
            list.iter().map(|job| job.to_json()).collect::<Vec<_>>()
        )),
        Err(err) => failed(err),
    }
}

async fn replay(
    State(app): Shared,
    identity: axum::Extension<Identity>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(entry): Path<String>,
) -> Response {
    acted(&identity, &from, "replay dead letter", &entry);
    match app.client.dead_letters().replay(&entry).await {
        Ok(id) => ok(json!({ "entry": entry, "job_id": id.as_str() })),
        Err(err) => failed(err),
    }
}
