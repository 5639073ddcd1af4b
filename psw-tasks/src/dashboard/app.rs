//! What every request handler of the dashboard shares.

use std::sync::Arc;

use super::auth::Authenticator;
use super::cache::Cache;
use super::csrf::Csrf;
use crate::client::Client;

pub(crate) struct App {
    pub(crate) client: Client,
    pub(crate) auth: Authenticator,
    pub(crate) csrf: Csrf,
    pub(crate) cache: Arc<Cache>,
    pub(crate) read_only: bool,
}
