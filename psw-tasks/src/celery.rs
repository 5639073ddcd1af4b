//! Celery's wire format on Redis, as a Python service's `send_task` writes it and its
//! `AsyncResult` reads it back: a protocol-2 message read into what a job of ours needs, a
//! job's JSON `[args, kwargs]` mapped onto a task's parameters, and the result record
//! (`celery-task-meta-<id>`) of a job's outcome. Pure: no IO. `docs/celery.md` has the mapping.

use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::record::{FailureKind, JobRecord, State};

/// A Celery message read off a queue list: what a job of ours is made from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CeleryMessage {
    /// The task id (`headers.id`): our job id too, so that Python's `AsyncResult(id)` finds it.
    pub(crate) id: String,
    /// The task's name (`headers.task`).
    pub(crate) task: String,
    /// The body's `[args, kwargs]`, as JSON text: kept whole until the task's parameter names
    /// map it (at the worker, where the task is known).
    pub(crate) arguments: Vec<u8>,
    /// `headers.eta`, ms since the Unix epoch.
    pub(crate) eta_ms: Option<i64>,
    /// `headers.expires`, ms since the Unix epoch.
    pub(crate) expires_ms: Option<i64>,
    /// `headers.retries`: attempts Celery made before this one.
    pub(crate) retries: u32,
    /// `headers.ignore_result`: the caller does not want a result record.
    pub(crate) ignore_result: bool,
    /// `headers.timelimit`, `[hard, soft]` in seconds: the hard limit, else the soft one, as
    /// the job's time limit (a future cannot be interrupted softly).
    pub(crate) time_limit: Option<Duration>,
    /// A canvas the message is part of that psw-tasks does not run yet (`chord`, `group`):
    /// its name. Chains, callbacks and errbacks are run ([`follow_ups`]).
    pub(crate) unsupported_canvas: Option<&'static str>,
    /// It carries a chain, callbacks or errbacks: [`follow_ups`] when it ends.
    pub(crate) follow_ups: bool,
}

/// What to do with a Celery message for a task that no worker here links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CeleryUnknownTasks {
    /// Give it back, untouched, to the Celery workers that share the queue (the default,
    /// for a migration task by task).
    #[default]
    Leave,
    /// Dead-letter it (`unknown_task`), the Celery message kept: once no Celery worker is
    /// left on the queue.
    DeadLetter,
}

impl CeleryUnknownTasks {
    /// The spelling in `PSW_CELERY_UNKNOWN_TASKS`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "leave" => Some(CeleryUnknownTasks::Leave),
            "dead_letter" => Some(CeleryUnknownTasks::DeadLetter),
            _ => None,
        }
    }
}

/// Why a list element is not a Celery message we can take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MessageError {
    #[error("not a JSON object with `headers` and `body`")]
    NotAMessage,
    #[error("content type `{0}`: only `application/json` is read (Celery's default serializer)")]
    ContentType(String),
    #[error("body encoding `{0}`: only `base64` is read")]
    BodyEncoding(String),
    #[error("the body is not base64 of JSON `[args, kwargs, embed]`")]
    Body,
    #[error("header `{0}` is missing or not text (protocol 2 messages carry it)")]
    Header(&'static str),
    #[error("header `{name}` is not an ISO 8601 time")]
    Time { name: &'static str },
}

impl CeleryMessage {
    /// Read a list element: the JSON envelope kombu writes, its body base64 of
    /// `[args, kwargs, embed]`.
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, MessageError> {
        let message: Value = serde_json::from_slice(raw).map_err(|_| MessageError::NotAMessage)?;
        let (Some(headers), Some(body)) = (
            message.get("headers").and_then(Value::as_object),
            message.get("body").and_then(Value::as_str),
        ) else {
            return Err(MessageError::NotAMessage);
        };
        let content_type = message
            .get("content-type")
            .and_then(Value::as_str)
            .unwrap_or("application/json");
        if content_type != "application/json" {
            return Err(MessageError::ContentType(content_type.to_owned()));
        }
        let encoding = message
            .pointer("/properties/body_encoding")
            .and_then(Value::as_str)
            .unwrap_or("base64");
        if encoding != "base64" {
            return Err(MessageError::BodyEncoding(encoding.to_owned()));
        }
        let body = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| MessageError::Body)?;
        let body: Value = serde_json::from_slice(&body).map_err(|_| MessageError::Body)?;
        let Some([args, kwargs, embed]) = body.as_array().map(Vec::as_slice) else {
            return Err(MessageError::Body);
        };
        if !args.is_array() || !kwargs.is_object() {
            return Err(MessageError::Body);
        }
        let text = |name: &'static str| {
            headers
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(MessageError::Header(name))
        };
        let time = |name: &'static str| match headers.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(at)) => parse_time(at).map(Some).ok_or(MessageError::Time { name }),
            Some(_) => Err(MessageError::Time { name }),
        };
        let unsupported_canvas = unsupported_canvas(headers, embed);
        let time_limit = match headers.get("timelimit") {
            Some(Value::Array(limits)) => limits
                .iter()
                .find_map(Value::as_f64)
                .filter(|seconds| *seconds > 0.0 && seconds.is_finite())
                .map(Duration::from_secs_f64),
            _ => None,
        };
        Ok(CeleryMessage {
            id: text("id")?,
            task: text("task")?,
            arguments: serde_json::to_vec(&json!([args, kwargs]))
                .map_err(|_| MessageError::Body)?,
            eta_ms: time("eta")?,
            expires_ms: time("expires")?,
            retries: headers
                .get("retries")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .try_into()
                .unwrap_or(u32::MAX),
            ignore_result: headers
                .get("ignore_result")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            time_limit,
            unsupported_canvas,
            follow_ups: ["chain", "callbacks", "errbacks"].into_iter().any(|part| {
                embed
                    .get(part)
                    .and_then(Value::as_array)
                    .is_some_and(|steps| !steps.is_empty())
            }),
        })
    }
}

/// The part of a canvas psw-tasks does not run: a chord, a group, or either as a step of a
/// chain or as a callback.
fn unsupported_canvas(headers: &Map<String, Value>, embed: &Value) -> Option<&'static str> {
    if embed.get("chord").is_some_and(|chord| !chord.is_null()) {
        return Some("chord");
    }
    if headers.get("group").is_some_and(|group| !group.is_null()) {
        return Some("group");
    }
    let nested = ["chain", "callbacks", "errbacks"]
        .into_iter()
        .filter_map(|part| embed.get(part).and_then(Value::as_array))
        .flatten()
        .filter_map(|signature| signature.get("subtask_type").and_then(Value::as_str))
        .next()?;
    Some(if nested == "chord" { "chord" } else { "group" })
}

/// An ISO 8601 time as Celery writes it (`2026-12-03T07:30:00.123456+00:00`; a time without
/// an offset is UTC, as Celery means it), in ms since the Unix epoch.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|at| at.and_utc().timestamp_millis())
}

/// The JSON `[args, kwargs]` of a Celery job mapped onto a task's parameters, as the
/// MessagePack array the task decodes: positional ones in order, keyword ones by name. An
/// argument too many, missing, unknown or given twice is named in the error (`bad_args`).
pub(crate) fn positional(parameters: &[&str], arguments: &[u8]) -> Result<Vec<u8>, String> {
    let parsed: Value = serde_json::from_slice(arguments)
        .map_err(|_| "the Celery arguments are not JSON `[args, kwargs]`".to_owned())?;
    let (args, kwargs) = match parsed.as_array().map(Vec::as_slice) {
        Some([Value::Array(args), Value::Object(kwargs)]) => (args, kwargs),
        _ => return Err("the Celery arguments are not JSON `[args, kwargs]`".to_owned()),
    };
    if args.len() > parameters.len() {
        return Err(format!(
            "{} positional arguments given, the task takes {} ({})",
            args.len(),
            parameters.len(),
            names(parameters)
        ));
    }
    let mut values: Vec<Option<Value>> = args.iter().cloned().map(Some).collect();
    values.resize(parameters.len(), None);
    let mut kwargs: Map<String, Value> = kwargs.clone();
    for (index, name) in parameters.iter().enumerate() {
        if let Some(value) = kwargs.remove(*name) {
            if values[index].is_some() {
                return Err(format!(
                    "argument `{name}` given twice: by position and by name"
                ));
            }
            values[index] = Some(value);
        }
    }
    if let Some(extra) = kwargs.keys().next() {
        return Err(format!(
            "unexpected keyword argument `{}`; the task takes {}",
            crate::redact::printable(extra),
            names(parameters)
        ));
    }
    let values: Vec<Value> = values
        .into_iter()
        .zip(parameters)
        .map(|(value, name)| value.ok_or_else(|| format!("missing argument `{name}`")))
        .collect::<Result<_, _>>()?;
    rmp_serde::to_vec(&values).map_err(|_| "the arguments do not encode".to_owned())
}

fn names(parameters: &[&str]) -> String {
    if parameters.is_empty() {
        return "none".to_owned();
    }
    parameters
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Celery's state name of a record's state.
fn state_name(state: State) -> &'static str {
    match state {
        State::Pending => "PENDING",
        State::Started | State::Progress => "STARTED",
        State::Retry => "RETRY",
        State::Success => "SUCCESS",
        State::Failure => "FAILURE",
        State::Revoked => "REVOKED",
    }
}

/// The Python exception a failure is raised as on the caller's side: a built-in one, so
/// that Celery rebuilds it without importing anything of ours.
fn exception_type(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Timeout => "TimeoutError",
        FailureKind::BadArgs => "TypeError",
        _ => "RuntimeError",
    }
}

/// The result record Celery's Redis backend keeps at `celery-task-meta-<id>`, for a record of
/// ours, as the JSON text `AsyncResult` reads (`status`, `result`, `traceback`, `children`,
/// `date_done`, `task_id`). `result_json` is the task's result as JSON, for SUCCESS.
pub(crate) fn result_record(record: &JobRecord, result_json: Option<Value>, now_ms: i64) -> String {
    let status = state_name(record.state);
    let error = record.errors.last();
    let (result, traceback) = match record.state {
        State::Success => (result_json.unwrap_or(Value::Null), Value::Null),
        State::Failure | State::Retry => {
            let (kind, message) = error.map_or((FailureKind::Error, "failed"), |error| {
                (error.kind, error.message.as_str())
            });
            (
                json!({
                    "exc_type": exception_type(kind),
                    "exc_message": [message],
                    "exc_module": "builtins",
                }),
                Value::String(format!(
                    "psw-tasks: attempt {} of `{}` failed ({}): {message}",
                    record.attempt + 1,
                    record.task,
                    kind.as_str()
                )),
            )
        }
        State::Revoked => (
            json!({
                "exc_type": "TaskRevokedError",
                "exc_message": [record.revoked.map_or("revoked", |why| why.as_str())],
                "exc_module": "celery.exceptions",
            }),
            Value::Null,
        ),
        State::Pending | State::Started | State::Progress => (Value::Null, Value::Null),
    };
    json!({
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": date_done(record.finished_ms.unwrap_or(now_ms)),
        "task_id": record.id,
    })
    .to_string()
}

/// A protocol-2 message to send, as Celery's own `send_task` writes it: what a task call
/// carries (arguments, timing, its place in a canvas).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub(crate) id: String,
    pub(crate) task: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Map<String, Value>,
    /// The Celery queue (its list, named by the routing key).
    pub(crate) queue: String,
    pub(crate) eta_ms: Option<i64>,
    pub(crate) expires_ms: Option<i64>,
    /// `[hard, soft]` time limits, in seconds.
    pub(crate) time_limit: [Option<f64>; 2],
    pub(crate) root_id: String,
    pub(crate) parent_id: Option<String>,
    /// The chain's steps still to come, the next last (as Celery keeps it), or `null`.
    pub(crate) chain: Value,
    pub(crate) callbacks: Value,
    pub(crate) errbacks: Value,
}

impl Step {
    /// A call on its own: no canvas, no timing.
    pub(crate) fn new(
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        queue: &str,
    ) -> Step {
        let id = crate::envelope::JobId::generate().to_string();
        Step {
            root_id: id.clone(),
            id,
            task: task.to_owned(),
            args,
            kwargs,
            queue: queue.to_owned(),
            eta_ms: None,
            expires_ms: None,
            time_limit: [None, None],
            parent_id: None,
            chain: Value::Null,
            callbacks: Value::Null,
            errbacks: Value::Null,
        }
    }

    /// The message, JSON body in base64 with the headers and properties kombu sets, for a
    /// worker to run. The arguments are not repeated in `argsrepr`/`kwargsrepr`, which Celery
    /// workers log: they may hold secrets.
    pub(crate) fn message(&self, origin: &str) -> String {
        let body = json!([
            self.args,
            self.kwargs,
            {"callbacks": self.callbacks, "errbacks": self.errbacks, "chain": self.chain, "chord": null}
        ]);
        let body = base64::engine::general_purpose::STANDARD.encode(body.to_string());
        json!({
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": self.task,
                "id": self.id,
                "shadow": null,
                "eta": self.eta_ms.map(date_done),
                "expires": self.expires_ms.map(date_done),
                "group": null,
                "group_index": null,
                "retries": 0,
                "timelimit": self.time_limit,
                "root_id": self.root_id,
                "parent_id": self.parent_id,
                "argsrepr": "(…)",
                "kwargsrepr": "{…}",
                "origin": origin,
                "ignore_result": false,
                "replaced_task_nesting": 0,
                "stamped_headers": null,
                "stamps": {},
            },
            "properties": {
                "correlation_id": self.id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": crate::envelope::JobId::generate().to_string(),
            },
        })
        .to_string()
    }
}

/// How a job that came from a Celery message ended, for the canvas it carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended<'a> {
    /// It succeeded with this result: the chain's next step and the callbacks get it.
    Succeeded(&'a Value),
    /// It failed for good: the errbacks are called.
    Failed,
}

/// The messages Celery's worker would send when the job of `raw` (the Celery message it came
/// from) ended: on success the chain's next step, carrying the rest of the chain, and each
/// callback, with the result as their first argument (unless immutable); on failure each
/// errback, with the failed task's id first (Celery's form for an errback that runs on
/// another worker). Steps go to their own `queue` option, else to the queue the message
/// came from. A signature that cannot be read is skipped, and named in the errors.
pub(crate) fn follow_ups(raw: &str, ended: Ended<'_>, now_ms: i64) -> (Vec<Step>, Vec<String>) {
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    let Some((message, embed)) = read_embed(raw) else {
        return (steps, errors);
    };
    let headers = &message["headers"];
    let id = headers["id"].as_str().unwrap_or_default();
    let parent = Parent {
        id,
        root_id: headers["root_id"].as_str().unwrap_or(id),
        queue: message
            .pointer("/properties/delivery_info/routing_key")
            .and_then(Value::as_str)
            .unwrap_or("celery"),
        now_ms,
    };
    let mut add = |signature: &Value, first: &Value, chain: Value| match parent
        .step(signature, first, chain)
    {
        Ok(step) => steps.push(step),
        Err(why) => errors.push(why),
    };
    match ended {
        Ended::Succeeded(result) => {
            if let Some(chain) = embed.get("chain").and_then(Value::as_array)
                && let Some((next, rest)) = chain.split_last()
            {
                let rest = if rest.is_empty() {
                    Value::Null
                } else {
                    Value::Array(rest.to_vec())
                };
                add(next, result, rest);
            }
            for callback in embed
                .get("callbacks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                add(callback, result, Value::Null);
            }
        }
        Ended::Failed => {
            let failed = Value::String(id.to_owned());
            for errback in embed
                .get("errbacks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                add(errback, &failed, Value::Null);
            }
        }
    }
    (steps, errors)
}

fn read_embed(raw: &str) -> Option<(Value, Value)> {
    let message: Value = serde_json::from_str(raw).ok()?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(message.get("body")?.as_str()?)
        .ok()?;
    let body: Value = serde_json::from_slice(&body).ok()?;
    let embed = body.get(2)?.clone();
    Some((message, embed))
}

/// The job whose canvas is followed.
struct Parent<'a> {
    id: &'a str,
    root_id: &'a str,
    queue: &'a str,
    now_ms: i64,
}

impl Parent<'_> {
    /// The message of one signature (`{task, args, kwargs, options, immutable}`), `first`
    /// put before its own arguments unless it is immutable.
    fn step(&self, signature: &Value, first: &Value, chain: Value) -> Result<Step, String> {
        let task = signature
            .get("task")
            .and_then(Value::as_str)
            .ok_or_else(|| "a canvas signature without a task name".to_owned())?;
        let options = signature.get("options").cloned().unwrap_or(Value::Null);
        let option_text = |name: &str| options.get(name).and_then(Value::as_str);
        let mut args = Vec::new();
        if !signature
            .get("immutable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            args.push(first.clone());
        }
        args.extend(
            signature
                .get("args")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .cloned(),
        );
        let kwargs = signature
            .get("kwargs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        // `countdown` in seconds, `eta` and `expires` as times (or `expires` in seconds).
        let seconds = |name: &str| {
            options
                .get(name)
                .and_then(Value::as_f64)
                .map(|seconds| self.now_ms + (seconds * 1000.0) as i64)
        };
        let time = |name: &str| option_text(name).and_then(parse_time);
        Ok(Step {
            id: option_text("task_id").map_or_else(
                || crate::envelope::JobId::generate().to_string(),
                str::to_owned,
            ),
            task: task.to_owned(),
            args,
            kwargs,
            queue: option_text("queue")
                .or_else(|| option_text("routing_key"))
                .unwrap_or(self.queue)
                .to_owned(),
            eta_ms: seconds("countdown").or_else(|| time("eta")),
            expires_ms: seconds("expires").or_else(|| time("expires")),
            time_limit: [
                options.get("time_limit").and_then(Value::as_f64),
                options.get("soft_time_limit").and_then(Value::as_f64),
            ],
            root_id: self.root_id.to_owned(),
            parent_id: Some(self.id.to_owned()),
            chain,
            callbacks: signatures(options.get("link")),
            errbacks: signatures(options.get("link_error")),
        })
    }
}

/// A signature option that holds one signature or a list of them, as the list the message
/// carries.
fn signatures(option: Option<&Value>) -> Value {
    match option {
        Some(Value::Array(list)) if !list.is_empty() => Value::Array(list.clone()),
        Some(one @ Value::Object(_)) => Value::Array(vec![one.clone()]),
        _ => Value::Null,
    }
}

/// A `STARTED` record, as a Celery worker with `track_started` writes it: the worker's
/// process id and name as its result.
pub(crate) fn started_record(task_id: &str, hostname: &str, now_ms: i64) -> String {
    json!({
        "status": "STARTED",
        "result": {"pid": std::process::id(), "hostname": hostname},
        "traceback": null,
        "children": [],
        "date_done": date_done(now_ms),
        "task_id": task_id,
    })
    .to_string()
}

/// A Celery result record as read back: the task's state, and its outcome once it has one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CeleryOutcome {
    /// Not finished: `PENDING`, `STARTED`, `RETRY` or a custom state.
    Running(String),
    Success(Value),
    /// `FAILURE`: the exception's type and message, as the Python side raised it.
    Failure(String),
    Revoked,
}

/// Read a `celery-task-meta-<id>` record.
pub(crate) fn outcome(record: &str) -> Option<CeleryOutcome> {
    let record: Value = serde_json::from_str(record).ok()?;
    let status = record.get("status")?.as_str()?;
    let result = record.get("result").cloned().unwrap_or(Value::Null);
    Some(match status {
        "SUCCESS" => CeleryOutcome::Success(result),
        "FAILURE" => {
            let kind = result
                .get("exc_type")
                .and_then(Value::as_str)
                .unwrap_or("Exception");
            let message = match result.get("exc_message") {
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|part| {
                        part.as_str()
                            .map_or_else(|| part.to_string(), str::to_owned)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(Value::String(text)) => text.clone(),
                _ => String::new(),
            };
            CeleryOutcome::Failure(format!("{kind}: {message}"))
        }
        "REVOKED" => CeleryOutcome::Revoked,
        other => CeleryOutcome::Running(other.to_owned()),
    })
}

/// A time as Celery's `date_done`: ISO 8601 in UTC with microseconds.
fn date_done(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as Celery 5.7's `send_task` writes it (the capture in the team's notes).
    fn message(args: Value, kwargs: Value, headers: Value) -> Vec<u8> {
        let body = base64::engine::general_purpose::STANDARD.encode(
            json!([args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
                .to_string(),
        );
        let mut all = json!({
            "lang": "py", "task": "psw_cron.ping", "id": "7d3c", "shadow": null, "eta": null,
            "expires": null, "group": null, "group_index": null, "retries": 0,
            "timelimit": [null, null], "root_id": "7d3c", "parent_id": null,
            "argsrepr": "('hi',)", "kwargsrepr": "{}", "origin": "gen1@host",
            "ignore_result": false,
        });
        for (name, value) in headers.as_object().unwrap() {
            all[name] = value.clone();
        }
        json!({
            "body": body, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": all,
            "properties": {"correlation_id": "7d3c", "reply_to": "r", "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
                "body_encoding": "base64", "delivery_tag": "tag"},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_send_task_message_is_read() {
        let raw = message(
            json!(["AAPL.US"]),
            json!({"force": true}),
            json!({"eta": "2026-12-03T07:30:00.250000+00:00", "retries": 2}),
        );
        let parsed = CeleryMessage::parse(&raw).unwrap();
        assert_eq!(parsed.id, "7d3c");
        assert_eq!(parsed.task, "psw_cron.ping");
        assert_eq!(parsed.retries, 2);
        assert_eq!(parsed.eta_ms, Some(1_796_283_000_250));
        assert_eq!(parsed.expires_ms, None);
        assert_eq!(parsed.unsupported_canvas, None);
        assert_eq!(
            serde_json::from_slice::<Value>(&parsed.arguments).unwrap(),
            json!([["AAPL.US"], {"force": true}])
        );
        assert_eq!(parse_time("2026-12-03T07:30:00"), Some(1_796_283_000_000));
    }

    #[test]
    fn what_is_not_a_json_protocol_2_message_is_named() {
        assert_eq!(
            CeleryMessage::parse(b"nope"),
            Err(MessageError::NotAMessage)
        );
        let mut pickled: Value =
            serde_json::from_slice(&message(json!([]), json!({}), json!({}))).unwrap();
        pickled["content-type"] = json!("application/x-python-serialize");
        let error = CeleryMessage::parse(pickled.to_string().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("application/json"), "{error}");
        let late = message(json!([]), json!({}), json!({"expires": "soon"}));
        assert_eq!(
            CeleryMessage::parse(&late),
            Err(MessageError::Time { name: "expires" })
        );
        let grouped = message(json!([]), json!({}), json!({"group": "g1"}));
        assert_eq!(
            CeleryMessage::parse(&grouped).unwrap().unsupported_canvas,
            Some("group")
        );
        let limited = message(json!([]), json!({}), json!({"timelimit": [null, 2.5]}));
        assert_eq!(
            CeleryMessage::parse(&limited).unwrap().time_limit,
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn arguments_map_by_position_and_by_name() {
        let map =
            |arguments: Value| positional(&["symbol", "force"], arguments.to_string().as_bytes());
        let decoded = |bytes: Vec<u8>| rmp_serde::from_slice::<(String, bool)>(&bytes).unwrap();
        assert_eq!(
            decoded(map(json!([["AAPL"], {"force": true}])).unwrap()),
            ("AAPL".to_owned(), true)
        );
        assert_eq!(
            decoded(map(json!([[], {"force": false, "symbol": "X"}])).unwrap()),
            ("X".to_owned(), false)
        );
        assert!(
            map(json!([["A"], {}]))
                .unwrap_err()
                .contains("missing argument `force`")
        );
        assert!(
            map(json!([["A", true, 3], {}]))
                .unwrap_err()
                .contains("3 positional")
        );
        assert!(
            map(json!([["A"], {"symbol": "B", "force": true}]))
                .unwrap_err()
                .contains("`symbol` given twice")
        );
        assert!(
            map(json!([["A"], {"force": true, "other": 1}]))
                .unwrap_err()
                .contains("unexpected keyword argument `other`")
        );
        assert_eq!(
            positional(&[], b"[[], {}]").unwrap(),
            rmp_serde::to_vec(&json!([])).unwrap()
        );
    }

    #[test]
    fn a_sent_message_reads_back_as_celery_wrote_it() {
        let kwargs: Map<String, Value> = [("scale".to_owned(), json!(2))].into_iter().collect();
        let mut step = Step::new(
            "legacy.multiply",
            vec![json!(6), json!(7)],
            kwargs,
            "legacy",
        );
        step.id = "id-1".to_owned();
        let sent = step.message("me");
        let parsed = CeleryMessage::parse(sent.as_bytes()).unwrap();
        assert_eq!(
            (parsed.id.as_str(), parsed.task.as_str()),
            ("id-1", "legacy.multiply")
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&parsed.arguments).unwrap(),
            json!([[6, 7], {"scale": 2}])
        );
        assert!(
            !sent.contains("\"argsrepr\":\"[6"),
            "arguments are not repeated for logs"
        );
        let failed = r#"{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["no"], "exc_module": "builtins"}}"#;
        assert_eq!(
            outcome(failed),
            Some(CeleryOutcome::Failure("ValueError: no".to_owned()))
        );
        assert_eq!(
            outcome(r#"{"status": "SUCCESS", "result": 84}"#),
            Some(CeleryOutcome::Success(json!(84)))
        );
    }

    /// A chain of three as Celery 5.7's `chain(a, b, c).apply_async()` sends its first
    /// message (the capture in `docs/celery.md`): the steps to come, the next last.
    fn chained() -> String {
        let signature = |task: &str, args: Value, id: &str, immutable: bool| {
            json!({"task": task, "args": args, "kwargs": {}, "subtask_type": null,
                "immutable": immutable, "options": {"queue": "prices", "task_id": id}})
        };
        let body = base64::engine::general_purpose::STANDARD.encode(
            json!([["x"], {}, {"callbacks": [{"task": "it.cb", "args": [], "kwargs": {},
                "options": {}, "subtask_type": null, "immutable": false}],
                "errbacks": [{"task": "it.eb", "args": [1], "kwargs": {},
                "options": {"queue": "errors"}, "subtask_type": null, "immutable": false}],
                "chain": [signature("it.c", json!([]), "id-c", true),
                    signature("it.b", json!([2]), "id-b", false)], "chord": null}])
            .to_string(),
        );
        json!({"body": body, "content-type": "application/json",
            "headers": {"task": "it.a", "id": "id-a", "root_id": "id-a"},
            "properties": {"body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": "celery"}}})
        .to_string()
    }

    #[test]
    fn a_chain_sends_its_next_step_with_the_rest_and_the_result() {
        let raw = chained();
        let parsed = CeleryMessage::parse(raw.as_bytes()).unwrap();
        assert!(parsed.follow_ups);
        assert_eq!(parsed.unsupported_canvas, None);
        let (steps, errors) = follow_ups(&raw, Ended::Succeeded(&json!(41)), 0);
        assert!(errors.is_empty(), "{errors:?}");
        let [next, callback] = steps.as_slice() else {
            panic!("{steps:?}")
        };
        assert_eq!((next.id.as_str(), next.task.as_str()), ("id-b", "it.b"));
        assert_eq!(
            next.args,
            vec![json!(41), json!(2)],
            "the result comes first"
        );
        assert_eq!(next.queue, "prices");
        assert_eq!(
            (next.root_id.as_str(), next.parent_id.as_deref()),
            ("id-a", Some("id-a"))
        );
        assert_eq!(
            next.chain[0]["task"], "it.c",
            "the rest of the chain goes along"
        );
        assert_eq!(callback.task, "it.cb");
        assert_eq!(
            callback.queue, "celery",
            "no queue option: where it came from"
        );
        // The next step's own message carries the rest, and the last one takes no result.
        let (last, _) = follow_ups(&next.message("w"), Ended::Succeeded(&json!(42)), 0);
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].id.as_str(), last[0].args.len()), ("id-c", 0));
        assert_eq!(last[0].chain, Value::Null);
        let (errbacks, _) = follow_ups(&raw, Ended::Failed, 0);
        assert_eq!(errbacks.len(), 1);
        assert_eq!(errbacks[0].args, vec![json!("id-a"), json!(1)]);
        assert_eq!(errbacks[0].queue, "errors");
    }

    #[test]
    fn chords_and_groups_are_named_as_not_run() {
        let mut in_chain: Value = serde_json::from_str(&chained()).unwrap();
        let body = base64::engine::general_purpose::STANDARD.encode(
            json!([[], {}, {"chain": [{"task": "celery.chord", "subtask_type": "chord"}]}])
                .to_string(),
        );
        in_chain["body"] = json!(body);
        assert_eq!(
            CeleryMessage::parse(in_chain.to_string().as_bytes())
                .unwrap()
                .unsupported_canvas,
            Some("chord")
        );
        let header = message(json!([]), json!({}), json!({}));
        let mut chord: Value = serde_json::from_slice(&header).unwrap();
        chord["body"] = json!(
            base64::engine::general_purpose::STANDARD
                .encode(json!([[], {}, {"chord": {"task": "it.sum"}}]).to_string())
        );
        assert_eq!(
            CeleryMessage::parse(chord.to_string().as_bytes())
                .unwrap()
                .unsupported_canvas,
            Some("chord")
        );
    }

    #[test]
    fn outcomes_become_celery_result_records() {
        let mut record = JobRecord {
            id: "7d3c".to_owned(),
            task: "psw_cron.ping".to_owned(),
            state: State::Success,
            attempt: 0,
            result: None,
            errors: Vec::new(),
            errors_dropped: 0,
            progress: None,
            created_ms: 0,
            started_ms: Some(0),
            finished_ms: Some(1_796_283_000_250),
            retry_at_ms: None,
            revoked: None,
        };
        let stored: Value =
            serde_json::from_str(&result_record(&record, Some(json!("pong hi")), 0)).unwrap();
        assert_eq!(stored["status"], "SUCCESS");
        assert_eq!(stored["result"], "pong hi");
        assert_eq!(stored["task_id"], "7d3c");
        assert_eq!(stored["date_done"], "2026-12-03T07:30:00.250000+00:00");
        record.state = State::Failure;
        record.errors.push(crate::record::AttemptError {
            attempt: 0,
            at_ms: 0,
            kind: FailureKind::BadArgs,
            message: "missing argument `force`".to_owned(),
        });
        let stored: Value = serde_json::from_str(&result_record(&record, None, 0)).unwrap();
        assert_eq!(stored["status"], "FAILURE");
        assert_eq!(stored["result"]["exc_type"], "TypeError");
        assert_eq!(
            stored["result"]["exc_message"][0],
            "missing argument `force`"
        );
    }
}
