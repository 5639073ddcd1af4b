//! The dashboard (Flower's job): a JSON API and `/metrics` over one cached reading of the
//! broker, behind a login on every route but `/healthz`, with CSRF protection and a role
//! check on every action. `docs/dashboard.md` documents the API.
//!
//! Architecture invariant: the dashboard sees `Client` and the stores only, never the broker
//! or Redis.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{Error, Result};

mod api;
mod app;
mod auth;
mod cache;
mod charts;
mod csrf;
mod exposition;
mod pages;
mod queries;
mod settings;

use app::App;
use auth::Authenticator;
use cache::Cache;
use csrf::Csrf;
use settings::Settings;

/// A dashboard bound to its address, ready to serve.
pub struct Dashboard {
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    refresh: std::time::Duration,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// Bind the dashboard of `client`'s namespace with the settings of the environment
    /// (`PSW_DASHBOARD_ADDR`, `PSW_DASHBOARD_AUTH`, `FLOWER_BASIC_AUTH`, `PSW_METRICS_TOKEN`,
    /// `PSW_DASHBOARD_READ_ONLY`, `PSW_DASHBOARD_REFRESH`); `addr` overrides the address.
    pub async fn bind(client: &Client, addr: Option<&str>) -> Result<Dashboard> {
        Self::bind_with(client, |name| std::env::var(name).ok(), addr).await
    }

    /// As [`Dashboard::bind`], reading the settings through `lookup` (a variable name to its
    /// value) rather than the environment.
    pub async fn bind_with(
        client: &Client,
        lookup: impl Fn(&str) -> Option<String>,
        addr: Option<&str>,
    ) -> Result<Dashboard> {
        let settings = Settings::from_lookup(lookup, addr)?;
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .map_err(|err| {
                Error::config(
                    "PSW_DASHBOARD_ADDR",
                    settings.addr.to_string(),
                    format!("an address this host can listen on ({err})"),
                )
            })?;
        if settings.users.is_empty() {
            tracing::warn!(addr = %settings.addr, "the dashboard has no login (PSW_DASHBOARD_AUTH is unset); it listens on loopback only");
        }
        let app = Arc::new(App {
            client: client.clone(),
            auth: Authenticator::new(settings.users, settings.metrics_token.as_deref()),
            csrf: Csrf::default(),
            cache: Arc::new(Cache::default()),
            read_only: settings.read_only,
        });
        Ok(Dashboard {
            app,
            listener,
            refresh: settings.refresh,
        })
    }

    /// The address it listens on (the port chosen, when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until `shutdown` completes.
    pub async fn serve_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr = self.local_addr()?;
        let stop = CancellationToken::new();
        // The first reading before the first request, so that pages never start empty.
        if let Err(err) = self
            .app
            .cache
            .refresh(&self.app.client, cache::Due::ALL)
            .await
        {
            tracing::warn!(error = %crate::error::chain(&err), "the dashboard's first reading failed; retrying on its cadence");
        }
        let refresher = tokio::spawn(cache::run(
            self.app.cache.clone(),
            self.app.client.clone(),
            self.refresh,
            stop.clone(),
        ));
        tracing::info!(%addr, "dashboard listening on http://{addr}");
        let router = api::router(self.app.clone());
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        stop.cancel();
        let _ = refresher.await;
        Ok(served?)
    }
}
