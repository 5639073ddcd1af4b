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
use super::queries::{AuditQuery, DeadQuery, JOB_QUEUE_LOOK};
use super::settings::Role;
use crate::audit::{AuditAction, AuditEntry};
use crate::dead::DeadFilter;
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
        .route("/api/dead/{entry}/purge", post(purge_letter))
        .route("/api/failures", get(failures))
        .route("/api/failures/{group}/export", get(export_group))
        .route("/api/failures/{group}/replay", post(replay_group))
        .route("/api/failures/{group}/purge", post(purge_group))
        .route("/api/tasks/{task}/dead/replay", post(replay_task))
        .route("/api/tasks/{task}/dead/purge", post(purge_task))
        .route("/api/jobs/{id}/retry", post(retry_job))
        .route("/api/audit", get(audit_log))
        .route("/api/charts", get(charts))
        .merge(super::pages::router())
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

/// Who acts, from where: what every action handler takes, to answer and to audit.
struct Actor {
    identity: Identity,
    from: SocketAddr,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Actor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        // The guard put both there; an action without them did not pass it.
        let identity = parts.extensions.get::<Identity>().cloned();
        let from = parts.extensions.get::<SocketAddr>().copied();
        match (identity, from) {
            (Some(identity), Some(from)) => Ok(Actor { identity, from }),
            _ => Err(refusal(StatusCode::UNAUTHORIZED, "log in")),
        }
    }
}

/// An action done: logged and added to the audit log with who did it, from where, on what
/// and how many jobs it touched (never its arguments). A failure to audit is logged; the
/// action has happened.
async fn audited(app: &App, actor: &Actor, action: AuditAction, target: &str, jobs: u64) {
    let target = crate::redact::printable(target);
    tracing::info!(user = %actor.identity.name, address = %actor.from.ip(), action = action.as_str(), target = %target, jobs, "dashboard action");
    let entry = AuditEntry::new(
        actor.identity.name.as_str(),
        actor.from.ip().to_string(),
        action,
        target.as_ref(),
        jobs,
    );
    if let Err(err) = app.client.record_audit(&entry).await {
        tracing::error!(error = %crate::error::chain(&err), "the audit log refused an entry");
    }
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

/// A job's record, with `queued` (its lane, due time and envelope) while it is in a queue;
/// a job no worker has started has no record, and answers from its queue alone.
async fn job(State(app): Shared, Path(id): Path<String>) -> Response {
    let record = match app.client.record(&id).await {
        Ok(record) => record,
        Err(err) => return failed(err),
    };
    if let Some(done) = record.as_ref().filter(|record| record.state.is_terminal()) {
        return match done.to_json() {
            Ok(json) => ok(json),
            Err(err) => failed(err),
        };
    }
    let queued = match app.client.find_queued(&id, JOB_QUEUE_LOOK).await {
        Ok(queued) => queued.map(|queued| {
            json!({
                "lane": queued.lane,
                "due_ms": queued.due_ms,
                "envelope": queued.envelope_json(),
            })
        }),
        Err(err) => return failed(err),
    };
    let mut json = match (record, &queued) {
        (Some(record), _) => match record.to_json() {
            Ok(json) => json,
            Err(err) => return failed(err),
        },
        (None, Some(_)) => json!({ "id": id, "state": crate::record::State::Pending.as_str() }),
        (None, None) => {
            return refusal(
                StatusCode::NOT_FOUND,
                "no record of this job, and not among the first 1,000 of any queue (expired, \
                 of a task that keeps none, or deep in a long queue)",
            );
        }
    };
    if let (Value::Object(fields), Some(queued)) = (&mut json, queued) {
        fields.insert("queued".to_owned(), queued);
    }
    ok(json)
}

async fn cancel(State(app): Shared, actor: Actor, Path(id): Path<String>) -> Response {
    match app.client.cancel(&id).await {
        Ok(()) => {
            audited(&app, &actor, AuditAction::JobCancel, &id, 1).await;
            ok(json!({ "cancelled": id }))
        }
        Err(err) => failed(err),
    }
}

async fn pause_queue(State(app): Shared, actor: Actor, Path(queue): Path<String>) -> Response {
    match app.client.pause_queue(&queue).await {
        Ok(changed) => {
            audited(&app, &actor, AuditAction::QueuePause, &queue, 0).await;
            ok(json!({ "queue": queue, "paused": true, "changed": changed }))
        }
        Err(err) => failed(err),
    }
}

async fn resume_queue(State(app): Shared, actor: Actor, Path(queue): Path<String>) -> Response {
    match app.client.resume_queue(&queue).await {
        Ok(changed) => {
            audited(&app, &actor, AuditAction::QueueResume, &queue, 0).await;
            ok(json!({ "queue": queue, "paused": false, "changed": changed }))
        }
        Err(err) => failed(err),
    }
}

async fn schedules(State(app): Shared) -> Response {
    match app.cache.snapshot() {
        Some(snapshot) => ok(json!(
            snapshot
                .schedules
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
        None => not_read_yet(&app),
    }
}

async fn schedule_runs(State(app): Shared, Path(name): Path<String>) -> Response {
    match app.client.schedule_runs(&name, SCHEDULE_RUNS).await {
        Ok(runs) => ok(json!(runs)),
        Err(err) => failed(err),
    }
}

async fn pause_schedule(State(app): Shared, actor: Actor, Path(name): Path<String>) -> Response {
    match app.client.pause_schedule(&name).await {
        Ok(()) => {
            audited(&app, &actor, AuditAction::SchedulePause, &name, 0).await;
            ok(json!({ "schedule": name, "paused": true }))
        }
        Err(err) => failed(err),
    }
}

async fn resume_schedule(State(app): Shared, actor: Actor, Path(name): Path<String>) -> Response {
    match app.client.resume_schedule(&name).await {
        Ok(()) => {
            audited(&app, &actor, AuditAction::ScheduleResume, &name, 0).await;
            ok(json!({ "schedule": name, "paused": false }))
        }
        Err(err) => failed(err),
    }
}

async fn run_schedule(State(app): Shared, actor: Actor, Path(name): Path<String>) -> Response {
    match app.client.run_schedule(&name).await {
        Ok(handle) => {
            audited(&app, &actor, AuditAction::ScheduleRun, &name, 1).await;
            ok(json!({ "schedule": name, "job_id": handle.id().as_str() }))
        }
        Err(err) => failed(err),
    }
}

async fn dead(State(app): Shared, Query(q): Query<DeadQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, DEAD_PAGE);
    let after = q.after.as_deref().filter(|after| !after.is_empty());
    match app
        .client
        .dead_letters()
        .matching(&q.filter(), after, limit)
        .await
    {
        Ok(page) => ok(json!({
            "letters": page.letters.iter().map(|job| job.to_json()).collect::<Vec<_>>(),
            "next": page.next,
        })),
        Err(err) => failed(err),
    }
}

async fn failures(State(app): Shared) -> Response {
    match app.cache.snapshot() {
        Some(snapshot) => ok(json!(
            snapshot
                .groups
                .iter()
                .map(|group| group.to_json())
                .collect::<Vec<_>>()
        )),
        None => not_read_yet(&app),
    }
}

/// A group's letters as JSON lines (one letter per line, its envelope decoded where it can
/// be), read a page at a time. Audited: an export carries the jobs' arguments.
async fn export_group(State(app): Shared, actor: Actor, Path(group): Path<String>) -> Response {
    let letters = app.client.dead_letters();
    let filter = DeadFilter::Group(group.clone());
    let mut body = String::new();
    let mut after: Option<String> = None;
    let mut count = 0;
    loop {
        let page = match letters.matching(&filter, after.as_deref(), DEAD_PAGE).await {
            Ok(page) => page,
            Err(err) => return failed(err),
        };
        for letter in &page.letters {
            let mut line = letter.to_json();
            line["envelope"] = letter.envelope_json().unwrap_or(Value::Null);
            body.push_str(&line.to_string());
            body.push('\n');
            count += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    audited(&app, &actor, AuditAction::GroupExport, &group, count).await;
    let disposition = format!(
        "attachment; filename=\"failures-{}.jsonl\"",
        file_safe(&group)
    );
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// A name reduced to what a file name may hold.
fn file_safe(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect()
}

fn replayed(report: crate::dead::ReplayReport) -> Value {
    json!({
        "replayed": report.replayed,
        "truncated": report.truncated,
        "unreadable": report.unreadable,
        "gone": report.gone,
    })
}

async fn replay_group(State(app): Shared, actor: Actor, Path(group): Path<String>) -> Response {
    match app.client.dead_letters().replay_group(&group).await {
        Ok(report) => {
            audited(
                &app,
                &actor,
                AuditAction::GroupReplay,
                &group,
                report.replayed,
            )
            .await;
            ok(replayed(report))
        }
        Err(err) => failed(err),
    }
}

async fn purge_group(State(app): Shared, actor: Actor, Path(group): Path<String>) -> Response {
    let filter = DeadFilter::Group(group.clone());
    match app.client.dead_letters().purge_matching(&filter).await {
        Ok(purged) => {
            audited(&app, &actor, AuditAction::GroupPurge, &group, purged).await;
            ok(json!({ "purged": purged }))
        }
        Err(err) => failed(err),
    }
}

async fn replay_task(State(app): Shared, actor: Actor, Path(task): Path<String>) -> Response {
    match app.client.dead_letters().replay_all(Some(&task)).await {
        Ok(report) => {
            audited(
                &app,
                &actor,
                AuditAction::TaskReplay,
                &task,
                report.replayed,
            )
            .await;
            ok(replayed(report))
        }
        Err(err) => failed(err),
    }
}

async fn purge_task(State(app): Shared, actor: Actor, Path(task): Path<String>) -> Response {
    let filter = DeadFilter::Task(task.clone());
    match app.client.dead_letters().purge_matching(&filter).await {
        Ok(purged) => {
            audited(&app, &actor, AuditAction::TaskPurge, &task, purged).await;
            ok(json!({ "purged": purged }))
        }
        Err(err) => failed(err),
    }
}

async fn purge_letter(State(app): Shared, actor: Actor, Path(entry): Path<String>) -> Response {
    match app.client.dead_letters().remove(&entry).await {
        Ok(true) => {
            audited(&app, &actor, AuditAction::DeadPurge, &entry, 1).await;
            ok(json!({ "purged": 1 }))
        }
        Ok(false) => failed(Error::NotDeadLettered(entry)),
        Err(err) => failed(err),
    }
}

/// Retry a failed job: replay its dead letter.
async fn retry_job(State(app): Shared, actor: Actor, Path(id): Path<String>) -> Response {
    let letters = app.client.dead_letters();
    let letter = match letters.find_job(&id, None).await {
        Ok(Some(letter)) => letter,
        Ok(None) => {
            return refusal(
                StatusCode::NOT_FOUND,
                "this job has no dead letter to retry (it did not fail for good, or it was replayed or purged)",
            );
        }
        Err(err) => return failed(err),
    };
    match letters.replay(&letter.entry_id).await {
        Ok(new_id) => {
            audited(&app, &actor, AuditAction::JobRetry, &id, 1).await;
            ok(json!({ "job_id": new_id.as_str(), "entry": letter.entry_id }))
        }
        Err(err) => failed(err),
    }
}

async fn audit_log(State(app): Shared, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, DEAD_PAGE);
    let before = q.before.as_deref().filter(|before| !before.is_empty());
    match app.client.audit_log(before, limit).await {
        Ok(entries) => ok(json!(entries)),
        Err(err) => failed(err),
    }
}

/// The overview's charts for a window, from the cached history: per point, the outcomes of
/// every task summed, and the queue-wait and run-time percentiles of their merged histograms.
async fn charts(State(app): Shared, Query(query): Query<Window>) -> Response {
    let Some(snapshot) = app.cache.snapshot() else {
        return not_read_yet(&app);
    };
    let history = match query.window.as_deref().unwrap_or("hour") {
        "hour" => Some(&snapshot.hour),
        "day" => snapshot.day.as_ref(),
        "week" => snapshot.week.as_ref(),
        _ => return refusal(StatusCode::BAD_REQUEST, "window is one of hour, day, week"),
    };
    match history {
        Some(history) => ok(super::charts::series(history)),
        None => not_read_yet(&app),
    }
}

async fn replay(State(app): Shared, actor: Actor, Path(entry): Path<String>) -> Response {
    match app.client.dead_letters().replay(&entry).await {
        Ok(id) => {
            audited(&app, &actor, AuditAction::DeadReplay, &entry, 1).await;
            ok(json!({ "entry": entry, "job_id": id.as_str() }))
        }
        Err(err) => failed(err),
    }
}
