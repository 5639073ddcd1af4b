//! The command line: the app's own subcommands next to the standard ones of psw-tasks.
//!
//! With no subcommand, everything runs in one process on the embedded defaults (in-process
//! broker unless `REDIS_URL` / `CELERY_BROKER_URL` is set, SQLite unless `DATABASE_URL` is set,
//! demo data on first run). `worker` and `beat` run the parts separately, as the deployment's
//! containers did.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use psw_tasks::cli::{Command as Standard, Setup};
use psw_tasks::{Client, Config, Dashboard, EnqueueOptions};

use crate::config::AppConfig;
use crate::db::Db;
use crate::jobs::{self, App};
use crate::notify::Notifier;
use crate::providers::Provider;

/// psw-cron-app: the PSW5 background jobs.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "The PSW5 background jobs: stock prices, portfolio values, reports, cleanup, health"
)]
pub struct Cli {
    /// What to do (default: run worker and beat in one process).
    #[command(subcommand)]
    pub command: Option<AppCommand>,
}

/// The app's subcommands.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Bring the database schema up to date (also done at every start).
    Migrate,
    /// Create the demo portfolio (five US stocks) unless it exists.
    SeedDemo,
    /// Load holdings from a CSV file (columns: symbol, quantity, and optionally exchange, name,
    /// currency); bad rows are reported with their line and the rest are loaded.
    ImportHoldings {
        /// The CSV file.
        file: PathBuf,
        /// The portfolio to load into (created when missing).
        #[arg(long, default_value = crate::holdings::DEMO_PORTFOLIO)]
        portfolio: String,
        /// Currency of a new portfolio and of rows without one.
        #[arg(long, default_value = "USD")]
        currency: String,
    },
    /// Write each portfolio's latest report to a folder, as an HTML page and its PNG chart.
    ExportReports {
        /// The folder (created when missing).
        #[arg(long, default_value = "reports")]
        out: PathBuf,
    },
    /// The standard psw-tasks subcommands.
    #[command(flatten)]
    Jobs(Standard),
}

/// Parse the process arguments, run, and report errors on stderr.
///
/// Sentry starts before the async runtime, as its docs ask: every runtime thread's hub then
/// inherits the client.
pub fn main() -> ExitCode {
    if let Err(err) = psw_tasks::cli::init_tracing() {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let outcome = AppConfig::from_env()
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            let sentry = crate::notify::sentry::init(
                config.sentry_dsn.as_deref(),
                &config.sentry_environment,
            )?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let outcome = runtime.block_on(run(config, cli.command));
            drop(sentry);
            outcome
        });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run one command with `config` (and the broker's configuration from the environment).
pub async fn run(config: AppConfig, command: Option<AppCommand>) -> Result<ExitCode> {
    match command {
        None => {
            let jobs = Config::from_env()?;
            let (app, seeded) = start(config, &jobs).await?;
            if seeded {
                // Something to look at at once rather than at the next schedule: prices now,
                // then values and the day's report once the prices are in.
                jobs::prices::update_stock_prices::enqueue(&app.client).await?;
                let later = |seconds| EnqueueOptions::new().countdown(Duration::from_secs(seconds));
                jobs::portfolio::calculate_portfolio_values::enqueue_with(&app.client, later(5))
                    .await?;
                jobs::reports::generate_daily_reports::enqueue_with(&app.client, later(10)).await?;
                tracing::info!("first run: demo prices, values and a report follow within 10 s");
            }
            // The dashboard beside the worker and the beat, on the same broker (the in-process
            // one when REDIS_URL is unset): Flower's place in the deployment we replace.
            let (stop_dashboard, stopped) = tokio::sync::oneshot::channel::<()>();
            let dashboard = match Dashboard::bind(&app.client, None).await {
                Ok(dashboard) => Some(tokio::spawn(dashboard.serve_until(async {
                    let _ = stopped.await;
                }))),
                // On the default address, a port taken (a second copy on this host) costs the
                // dashboard only; an address asked for, or a missing login, is an error.
                Err(psw_tasks::Error::Config { variable, .. })
                    if variable == "PSW_DASHBOARD_ADDR"
                        && std::env::var_os("PSW_DASHBOARD_ADDR").is_none() =>
                {
                    tracing::warn!(
                        "the dashboard's default address 127.0.0.1:5555 is taken; running without it (set PSW_DASHBOARD_ADDR)"
                    );
                    None
                }
                Err(err) => return Err(err.into()),
            };
            let served = serve(
                app,
                Standard::All {
                    queues: None,
                    concurrency: None,
                    strict_priority: false,
                },
            )
            .await;
            drop(stop_dashboard);
            if let Some(dashboard) = dashboard
                && let Ok(Err(err)) = dashboard.await
            {
                tracing::warn!(error = %err, "the dashboard stopped with an error");
            }
            served?;
        }
        Some(AppCommand::Migrate) => {
            let db = open(&config).await?;
            println!("database {} is up to date", config.database_url_redacted());
            db.close().await;
        }
        Some(AppCommand::SeedDemo) => {
            let db = open(&config).await?;
            let created = crate::holdings::seed_demo(&db, crate::time::now_ms()).await?;
            println!(
                "{}",
                if created {
                    "demo portfolio created"
                } else {
                    "demo portfolio exists already"
                }
            );
            db.close().await;
        }
        Some(AppCommand::ImportHoldings {
            file,
            portfolio,
            currency,
        }) => {
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let db = open(&config).await?;
            let import = crate::holdings::import_holdings(
                &db,
                input,
                &portfolio,
                &currency,
                crate::time::now_ms(),
            )
            .await?;
            db.close().await;
            for error in &import.errors {
                eprintln!("{}:{}: {}", file.display(), error.line, error.message);
            }
            println!(
                "{} holding(s) imported into {portfolio:?}, {} row(s) rejected",
                import.imported,
                import.errors.len()
            );
            if !import.errors.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Some(AppCommand::ExportReports { out }) => {
            let db = open(&config).await?;
            let written = export_reports(&db, &out).await;
            db.close().await;
            for path in written? {
                println!("{}", path.display());
            }
        }
        Some(AppCommand::Jobs(command)) => match command {
            command @ (Standard::Worker { .. } | Standard::Beat | Standard::All { .. }) => {
                let jobs = Config::from_env()?;
                let (app, _) = start(config, &jobs).await?;
                serve(app, command).await?;
            }
            other => psw_tasks::cli::run(other).await?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Connect, migrate, seed on first run, and put the shared state together; whether demo data
/// was seeded.
async fn start(config: AppConfig, jobs: &Config) -> Result<(Arc<App>, bool)> {
    let db = open(&config).await?;
    let seeded = if config.database_is_default {
        crate::holdings::seed_demo(&db, crate::time::now_ms()).await?
    } else {
        false
    };
    let notifier = Notifier::new(config.email.clone(), config.telegram.clone())?;
    let client = Client::connect(jobs).await?;
    // Paced across every process on the namespace: the quota is the API key's, not ours.
    let provider = Provider::from_settings(&config.providers).with_shared_limit(&client)?;

    let broker = match &jobs.redis_url {
        Some(url) => format!("Redis at {}", crate::redact::url(url)),
        None => "the in-process broker (set REDIS_URL to share jobs between processes)".to_owned(),
    };
    tracing::info!(%broker, "broker");
    tracing::info!(database = %config.database_url_redacted(), seeded, "database");
    if provider.is_simulated() {
        tracing::warn!(
            "quotes: SIMULATED random-walk prices (set EODHD_API_KEY or BORSDATA_API_KEY for real ones)"
        );
    } else {
        tracing::info!(provider = provider.name(), "quotes");
    }
    let channels = notifier.channels();
    tracing::info!(
        channels = if channels.is_empty() {
            "none (set EMAIL_SMTP_HOST or TELEGRAM_BOT_TOKEN)".to_owned()
        } else {
            channels.join(", ")
        },
        sentry = config.sentry_dsn.is_some(),
        "notifications"
    );
    let app = Arc::new(App::new(db, provider, notifier, config, client));
    Ok((app, seeded))
}

/// Run worker and/or beat with the app's state, dead-letter hook and schedules.
async fn serve(app: Arc<App>, command: Standard) -> Result<()> {
    let setup = Setup::new()
        .client(app.client.clone())
        .worker({
            let app = app.clone();
            move |builder| app.configure_worker(builder)
        })
        .beat({
            let config = app.config.clone();
            move |scheduler| jobs::add_schedules(scheduler, &config)
        });
    let outcome = psw_tasks::cli::run_with(command, &setup).await;
    app.db.close().await;
    Ok(outcome?)
}

/// Write the latest report of each portfolio to `out` (the HTML refers to its chart by file
/// name); the files written.
pub async fn export_reports(db: &Db, out: &std::path::Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for portfolio in db.portfolios().await? {
        let Some((date, _subject, html, chart)) = db.latest_report(portfolio.id).await? else {
            continue;
        };
        let png_name = jobs::reports::chart_file_name(portfolio.id, &date);
        let mut html = html;
        if let Some(chart) = chart {
            let png = out.join(&png_name);
            std::fs::write(&png, chart)
                .with_context(|| format!("cannot write {}", png.display()))?;
            // The e-mail refers to the chart by content id; a file on disk refers to it by name.
            let content_id = jobs::reports::chart_content_id(portfolio.id, &date);
            html = html.replace(&format!("cid:{content_id}"), &png_name);
            written.push(png);
        }
        let page = out.join(png_name.replace(".png", ".html"));
        std::fs::write(&page, html).with_context(|| format!("cannot write {}", page.display()))?;
        written.push(page);
    }
    Ok(written)
}

async fn open(config: &AppConfig) -> Result<Db> {
    let db = Db::connect(&config.database_url).await?;
    db.migrate().await?;
    Ok(db)
}
