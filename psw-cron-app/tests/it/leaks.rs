//! Argument values never leave the job: a job whose arguments do not fit its task is
//! dead-lettered as `bad_args` with a message naming the argument and the type it expected,
//! and the value reaches neither the log, the job's record, the dead letter's text nor the
//! alert (issue 12.7).

use std::time::Duration;

use psw_tasks::testing::TestNamespace;
use psw_tasks::{DeadReason, EnqueueOptions, FailureKind, State, TaskError, task};
use serde_json::json;

use crate::notify::{BotCall, BotMode, CHAT, TOKEN, next, start_bot};
use crate::support::{RunningWorker, app, captured_logs, eventually};

/// A value no test writes anywhere else, so that finding it anywhere is a leak.
const SECRET: &str = "sk_live_SECRET_7f3a";

/// A request as a service would pass one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Request {
    symbols: Vec<String>,
    days: u32,
}

/// Takes a list: a string in its place is a `bad_args`.
#[task(name = "it.leaks.takes_list", retries = 2)]
async fn takes_list(symbols: Vec<String>) -> Result<usize, TaskError> {
    Ok(symbols.len())
}

/// Takes a struct after a plain argument: a string in its place, or in one of its fields, is a
/// `bad_args`.
#[task(name = "it.leaks.takes_request", retries = 2)]
async fn takes_request(label: String, request: Request) -> Result<String, TaskError> {
    Ok(format!(
        "{label}: {} for {} days",
        request.symbols.len(),
        request.days
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_passed_as_the_wrong_type_reaches_no_log_record_dead_letter_or_alert() {
    let logs = captured_logs();
    let test = crate::support::sqlite().await;
    let ns = TestNamespace::new("leaks");
    let client = ns.client().await;
    let (bot_url, mut bot) = start_bot(BotMode::Ok).await;
    let app = app(
        &test.db,
        &client,
        &[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_CHAT_ID", CHAT),
            ("TELEGRAM_API_URL", &bot_url),
        ],
    );
    let worker = RunningWorker::start(&app);

    // The value where a list goes, where a struct goes, and where a struct's list goes.
    let cases = [
        (
            takes_list::NAME,
            json!([SECRET]),
            "argument 1 (`symbols`)",
            "expected a sequence",
        ),
        (
            takes_request::NAME,
            json!(["ok", SECRET]),
            "argument 2 (`request`)",
            "expected struct Request",
        ),
        (
            takes_request::NAME,
            json!(["ok", {"symbols": SECRET, "days": 3}]),
            "argument 2 (`request`)",
            "expected a sequence",
        ),
    ];
    for (task, args, argument, expected) in &cases {
        let handle = client
            .enqueue_by_name::<serde_json::Value>(task, args, EnqueueOptions::new())
            .await
            .unwrap();
        eventually(Duration::from_secs(30), "the job fails", || async {
            handle.state().await.unwrap() == State::Failure
        })
        .await;

        let record = handle.record().await.unwrap().expect("a record");
        let error = record.errors.last().expect("the attempt's error");
        assert_eq!(error.kind, FailureKind::BadArgs);
        assert!(error.message.contains(argument), "{}", error.message);
        assert!(error.message.contains(expected), "{}", error.message);
        assert_eq!(record.errors.len(), 1, "bad arguments are never retried");
        let record = format!("{record:?}");
        assert!(
            !record.contains(SECRET),
            "the record holds the value: {record}"
        );

        let BotCall::Message { body, .. } = next(&mut bot).await else {
            panic!("expected a sendMessage alert");
        };
        let alert = body.to_string();
        assert!(alert.contains(task) && alert.contains(argument), "{alert}");
        assert!(
            !alert.contains(SECRET),
            "the alert holds the value: {alert}"
        );
    }

    let dead = client.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), cases.len());
    for letter in &dead {
        assert_eq!(letter.reason, DeadReason::BadArgs);
        let shown = format!("{letter:?}");
        assert!(
            !shown.contains(SECRET),
            "the dead letter holds the value: {shown}"
        );
    }
    worker.stop().await;

    let logged = logs.text();
    // The log saw the failures (so the search below searched something)...
    assert!(
        logged.contains("it.leaks.takes_request") && logged.contains("bad_args"),
        "the failures were logged:\n{logged}"
    );
    // ...but never the value.
    assert!(
        !logged.contains(SECRET),
        "the log holds the value:\n{logged}"
    );
    test.finish().await;
}
