//! The dashboard's settings from the environment. Errors name the variable and the expected
//! form, and never show a password (a user is shown as `name:***`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{parse_bool, parse_duration};
use crate::error::{Error, Result};
use crate::wire::wire_enum;

/// Where the dashboard listens unless `PSW_DASHBOARD_ADDR` says otherwise (Flower's port).
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:5555";

const AUTH_FORM: &str = "a comma-separated list of user:password, each optionally followed by :admin or :viewer (admin when left out)";

wire_enum! {
    /// What a dashboard user may do.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Role {
        /// Read everything and act: pause, cancel, replay, run.
        Admin => "admin",
        /// Read everything, act on nothing.
        Viewer => "viewer",
    }
}

/// One user of the dashboard.
#[derive(Clone)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) password: String,
    pub(crate) role: Role,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:***:{}", self.name, self.role)
    }
}

/// The dashboard's settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) addr: SocketAddr,
    /// From `PSW_DASHBOARD_AUTH` and `FLOWER_BASIC_AUTH`; none only on a loopback address.
    pub(crate) users: Vec<User>,
    /// A bearer token that may read `/metrics` (`PSW_METRICS_TOKEN`), for a Prometheus server.
    pub(crate) metrics_token: Option<String>,
    /// Refuse every action (`PSW_DASHBOARD_READ_ONLY`).
    pub(crate) read_only: bool,
    /// How often the dashboard reads the broker (`PSW_DASHBOARD_REFRESH`, default 2 s): ten
    /// open tabs cost the broker what one does.
    pub(crate) refresh: Duration,
}

impl Settings {
    /// Read the settings through `lookup` (a variable name to its value); `addr` (from the
    /// command line) wins over `PSW_DASHBOARD_ADDR`.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        addr: Option<&str>,
    ) -> Result<Self> {
        let get = |name: &'static str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (name, v))
        };
        let (variable, addr_text) = match (addr, get("PSW_DASHBOARD_ADDR")) {
            (Some(addr), _) => ("--addr", addr.to_owned()),
            (None, Some((name, value))) => (name, value),
            (None, None) => ("PSW_DASHBOARD_ADDR", DEFAULT_ADDR.to_owned()),
        };
        let addr: SocketAddr = addr_text.parse().map_err(|_| {
            Error::config(
                variable,
                addr_text.as_str(),
                "an IP address and port, like 127.0.0.1:5555 or 0.0.0.0:5555",
            )
        })?;
        let mut users = Vec::new();
        if let Some((name, value)) = get("PSW_DASHBOARD_AUTH") {
            users.extend(parse_users(name, &value, true)?);
        }
        if let Some((name, value)) = get("FLOWER_BASIC_AUTH") {
            users.extend(parse_users(name, &value, false)?);
        }
        if users.is_empty() && !addr.ip().is_loopback() {
            return Err(Error::config(
                "PSW_DASHBOARD_AUTH",
                "",
                format!(
                    "{AUTH_FORM}: the dashboard listens on {addr}, which is not a loopback address, and refuses to serve it without a login (set PSW_DASHBOARD_AUTH or FLOWER_BASIC_AUTH, or listen on 127.0.0.1)"
                ),
            ));
        }
        let metrics_token = get("PSW_METRICS_TOKEN").map(|(_, token)| token);
        let read_only = match get("PSW_DASHBOARD_READ_ONLY") {
            Some((name, value)) => parse_bool(name, &value)?,
            None => false,
        };
        let refresh = match get("PSW_DASHBOARD_REFRESH") {
            Some((name, value)) => parse_duration(name, &value)?.max(Duration::from_millis(100)),
            None => Duration::from_secs(2),
        };
        Ok(Settings {
            addr,
            users,
            metrics_token,
            read_only,
            refresh,
        })
    }
}

/// `user:password[:role]` entries; `with_roles` reads a trailing `:admin` or `:viewer` as the
/// role (Flower's `FLOWER_BASIC_AUTH` has none: all its users are admins).
fn parse_users(variable: &str, value: &str, with_roles: bool) -> Result<Vec<User>> {
    let mut users = Vec::new();
    for item in value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let shown = match item.split_once(':') {
            Some((name, _)) => format!("{name}:***"),
            None => "***".to_owned(),
        };
        let (entry, role) = match item.rsplit_once(':') {
            Some((entry, role)) if with_roles && entry.contains(':') => match Role::from_wire(role)
            {
                Some(role) => (entry, role),
                None => (item, Role::Admin),
            },
            _ => (item, Role::Admin),
        };
        match entry.split_once(':') {
            Some((name, password)) if !name.is_empty() && !password.is_empty() => {
                users.push(User {
                    name: name.to_owned(),
                    password: password.to_owned(),
                    role,
                });
            }
            _ => {
                return Err(Error::config(
                    variable,
                    shown,
                    format!("{AUTH_FORM}: each entry needs a user and a password"),
                ));
            }
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings> {
        Settings::from_lookup(
            |name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            },
            None,
        )
    }

    #[test]
    fn users_come_from_both_variables_with_their_roles() {
        let s = settings(&[
            (
                "PSW_DASHBOARD_AUTH",
                "ops:s3cret:admin, ann:pw:viewer,bob:a:b",
            ),
            ("FLOWER_BASIC_AUTH", "flower:petal"),
        ])
        .unwrap();
        let users: Vec<(&str, &str, Role)> = s
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.password.as_str(), u.role))
            .collect();
        assert_eq!(
            users,
            [
                ("ops", "s3cret", Role::Admin),
                ("ann", "pw", Role::Viewer),
                ("bob", "a:b", Role::Admin),
                ("flower", "petal", Role::Admin),
            ]
        );
        assert_eq!(s.addr.to_string(), DEFAULT_ADDR);
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
    }

    #[test]
    fn no_login_is_refused_off_loopback_and_errors_hide_passwords() {
        let err = settings(&[("PSW_DASHBOARD_ADDR", "0.0.0.0:5555")]).unwrap_err();
        assert!(err.to_string().contains("PSW_DASHBOARD_AUTH"), "{err}");
        assert!(err.to_string().contains("not a loopback"), "{err}");
        assert!(settings(&[("PSW_DASHBOARD_ADDR", "[::1]:5555")]).is_ok());
        let err = settings(&[("PSW_DASHBOARD_AUTH", "ops:s3cret,lonely")]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = settings(&[("PSW_DASHBOARD_AUTH", "ops:")]).unwrap_err();
        assert!(err.to_string().contains("ops:***"), "{err}");
        let err = settings(&[("PSW_DASHBOARD_ADDR", "localhost")]).unwrap_err();
        assert!(err.to_string().contains("PSW_DASHBOARD_ADDR"), "{err}");
        let err = settings(&[("PSW_DASHBOARD_READ_ONLY", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("PSW_DASHBOARD_READ_ONLY"), "{err}");
    }
}
