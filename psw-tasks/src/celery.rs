//! Celery's wire format on Redis, as a Python service's `send_task` writes it and its
//! `AsyncResult` reads it back: a protocol-2 message read into what a job of ours needs, a
//! job's JSON `[args, kwargs]` mapped onto a task's parameters, and the result record
//! (`celery-task-meta-<id>`) of a job's outcome. Pure: no IO. `docs/celery.md` has the mapping.

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
    /// A canvas the message carries that psw-tasks does not run yet (`chord`, `group`,
    /// `chain`, `callbacks`, `errbacks`): its name.
    pub(crate) canvas: Option<&'static str>,
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
        let canvas = ["chord", "group", "chain", "callbacks", "errbacks"]
            .into_iter()
            .find(|name| embed.get(*name).is_some_and(|part| !part.is_null()))
            .or_else(|| {
                headers
                    .get("group")
                    .filter(|g| !g.is_null())
                    .map(|_| "group")
            });
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
            canvas,
        })
    }
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

/// A protocol-2 message as Celery's own `send_task` writes it (JSON body in base64, the
/// headers and properties kombu sets), for a Celery worker to run. The arguments are not
/// repeated in `argsrepr`/`kwargsrepr`, which Celery workers log: they may hold secrets.
pub(crate) fn message(
    id: &str,
    task: &str,
    args: &[Value],
    kwargs: &Map<String, Value>,
    queue: &str,
    eta_ms: Option<i64>,
    origin: &str,
) -> String {
    let body = json!([
        args,
        kwargs,
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
    ]);
    let body = base64::engine::general_purpose::STANDARD.encode(body.to_string());
    json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": id,
            "shadow": null,
            "eta": eta_ms.map(date_done),
            "expires": null,
            "group": null,
            "group_index": null,
            "retries": 0,
            "timelimit": [null, null],
            "root_id": id,
            "parent_id": null,
            "argsrepr": "(…)",
            "kwargsrepr": "{…}",
            "origin": origin,
            "ignore_result": false,
            "replaced_task_nesting": 0,
            "stamped_headers": null,
            "stamps": {},
        },
        "properties": {
            "correlation_id": id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": crate::envelope::JobId::generate().to_string(),
        },
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
        assert_eq!(parsed.canvas, None);
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
        let chord = message(json!([]), json!({}), json!({"group": "g1"}));
        assert_eq!(CeleryMessage::parse(&chord).unwrap().canvas, Some("group"));
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
        let sent = super::message(
            "id-1",
            "legacy.multiply",
            &[json!(6), json!(7)],
            &kwargs,
            "legacy",
            None,
            "me",
        );
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
