//! Fixtures: a fresh database per test (SQLite always, MariaDB / MySQL when one can be
//! reached), and the shared app state around it.

use std::collections::HashMap;
use std::sync::Arc;

use psw_cron_app::config::AppConfig;
use psw_cron_app::db::Db;
use psw_cron_app::jobs::App;
use psw_cron_app::notify::Notifier;
use psw_cron_app::providers::Provider;
use psw_tasks::Client;
use sqlx::{AssertSqlSafe, Connection};

/// Where the MariaDB / MySQL of the tests is: `PSW_TEST_MYSQL_URL`, else the one this machine
/// kind runs. The user must be allowed to create databases.
fn mysql_admin_url() -> String {
    std::env::var("PSW_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A database of one test, deleted when dropped (the SQLite file with its folder; a MySQL
/// database by the next run, see [`drop_stale_mysql_databases`]).
pub(crate) struct TestDb {
    pub(crate) db: Db,
    pub(crate) kind: &'static str,
    _dir: Option<tempfile::TempDir>,
    mysql: Option<String>,
}

impl TestDb {
    /// Close the pool and remove the database.
    pub(crate) async fn finish(self) {
        self.db.close().await;
        if let Some(name) = self.mysql {
            let mut admin = sqlx::mysql::MySqlConnection::connect(&mysql_admin_url())
                .await
                .expect("reconnect to MySQL to drop a test database");
            sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                .execute(&mut admin)
                .await
                .expect("drop a test database");
        }
    }
}

/// A migrated, empty database of each kind there is: SQLite, and MariaDB / MySQL when it can be
/// reached. `PSW_TEST_REQUIRE_MYSQL=1` (set by `.ci/run` once it has one running) makes a
/// missing MySQL an error rather than a skip.
pub(crate) async fn databases() -> Vec<TestDb> {
    let mut all = vec![sqlite().await];
    match mysql().await {
        Ok(db) => all.push(db),
        Err(reason) if std::env::var_os("PSW_TEST_REQUIRE_MYSQL").is_some() => {
            panic!("PSW_TEST_REQUIRE_MYSQL is set but MySQL cannot be used: {reason}")
        }
        Err(reason) => eprintln!("note: MySQL/MariaDB tests skipped: {reason}"),
    }
    all
}

/// A migrated, empty SQLite database in a temporary folder.
pub(crate) async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sub/test.db").display()
    );
    let db = Db::connect(&url).await.expect("open SQLite");
    db.migrate().await.expect("migrate SQLite");
    TestDb {
        db,
        kind: "sqlite",
        _dir: Some(dir),
        mysql: None,
    }
}

async fn mysql() -> Result<TestDb, String> {
    let admin_url = mysql_admin_url();
    let mut admin = sqlx::mysql::MySqlConnection::connect(&admin_url)
        .await
        .map_err(|err| format!("cannot connect to {admin_url}: {err}"))?;
    drop_stale_mysql_databases(&mut admin).await;
    let name = format!("psw_test_{}_{:08x}", std::process::id(), fastrand::u32(..));
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
    )))
    .execute(&mut admin)
    .await
    .map_err(|err| format!("cannot create a test database: {err}"))?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("a database URL has a path");
    let db = Db::connect(&format!("{base}/{name}"))
        .await
        .map_err(|err| err.to_string())?;
    db.migrate()
        .await
        .map_err(|err| format!("cannot migrate MySQL: {err:?}"))?;
    Ok(TestDb {
        db,
        kind: "mysql",
        _dir: None,
        mysql: Some(name),
    })
}

/// Drop the test databases of test processes that are gone (a failed test leaves its own).
async fn drop_stale_mysql_databases(admin: &mut sqlx::mysql::MySqlConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>("SHOW DATABASES LIKE 'psw\\_test\\_%'")
        .fetch_all(&mut *admin)
        .await
    else {
        return;
    };
    for name in names {
        let pid = name
            .split('_')
            .nth(2)
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// App settings from `vars` over the defaults.
pub(crate) fn config(vars: &[(&str, &str)]) -> AppConfig {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AppConfig::from_lookup(|name| vars.get(name).cloned()).expect("valid test settings")
}

/// The shared state of the jobs around `db` and `client`, configured by `vars`.
pub(crate) fn app(db: &Db, client: &Client, vars: &[(&str, &str)]) -> Arc<App> {
    let config = config(vars);
    let provider = Provider::from_settings(&config.providers);
    let notifier = Notifier::new(config.email.clone(), config.telegram.clone()).expect("notifier");
    Arc::new(App::new(
        db.clone(),
        provider,
        notifier,
        config,
        client.clone(),
    ))
}

/// A worker of the app's tasks running in this test until stopped.
pub(crate) struct RunningWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<psw_tasks::Result<()>>,
}

impl RunningWorker {
    /// Start one on `app`'s client, set up as the binary sets up its workers.
    pub(crate) fn start(app: &Arc<App>) -> RunningWorker {
        let worker = app
            .configure_worker(psw_tasks::Worker::builder(&app.client))
            .concurrency(4)
            .shutdown_grace(std::time::Duration::from_secs(10))
            .build()
            .expect("build a worker");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(worker.run_until(async {
            let _ = stopped.await;
        }));
        RunningWorker {
            stop: Some(stop),
            task,
        }
    }

    /// Stop it and wait for it, at most 30 s.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("the worker stops within 30 s")
            .expect("the worker task did not panic")
            .expect("the worker ran without error");
    }
}

pub(crate) use psw_tasks::testing::eventually;

/// What this test binary's code logs, from the first call on: every event of `psw_tasks` and
/// `psw_cron_app`, at every level, formatted as the binary's plain log lines.
#[derive(Clone)]
pub(crate) struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Capture the logs of this process (a process has one global subscriber, installed here once).
pub(crate) fn captured_logs() -> CapturedLogs {
    static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs(Arc::default());
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "psw_tasks=trace,psw_cron_app=trace",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("no other subscriber is installed in the app's tests");
        logs
    })
    .clone()
}
