//! Who may use the dashboard: HTTP basic auth against the configured users, compared in
//! constant time, a bearer token for `/metrics`, and a back-off for addresses that keep
//! failing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::settings::{Role, User};

/// Failed logins an address may make before it must wait.
const FREE_FAILURES: u32 = 5;
/// The first wait after them; it doubles with each further failure up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(300);
/// An address's failures are forgotten after this long without one.
const FORGET_FAILURES: Duration = Duration::from_secs(600);

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) role: Role,
}

/// What a request's credentials come to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed(Identity),
    /// No or wrong credentials.
    Refused,
    /// Too many failures from this address: wait this long.
    Throttled(Duration),
}

struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

pub(crate) struct Authenticator {
    /// Each user with the digest of `name:password`, compared in constant time.
    users: Vec<(User, [u8; 32])>,
    metrics_token: Option<[u8; 32]>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

impl Authenticator {
    pub(crate) fn new(users: Vec<User>, metrics_token: Option<&str>) -> Self {
        Authenticator {
            users: users
                .into_iter()
                .map(|user| {
                    let digest = digest(format!("{}:{}", user.name, user.password).as_bytes());
                    (user, digest)
                })
                .collect(),
            metrics_token: metrics_token.map(|token| digest(token.as_bytes())),
            failures: Mutex::default(),
        }
    }

    /// Whether anyone may come in without a login (no users: a loopback-only dashboard).
    pub(crate) fn is_open(&self) -> bool {
        self.users.is_empty()
    }

    /// The verdict on a request from `from` with this `Authorization` header; `metrics`
    /// allows the bearer token too.
    pub(crate) fn check(
        &self,
        from: IpAddr,
        authorization: Option<&str>,
        metrics: bool,
    ) -> Verdict {
        if let Some(wait) = self.waiting(from) {
            return Verdict::Throttled(wait);
        }
        if self.is_open() {
            return Verdict::Allowed(Identity {
                name: "local".to_owned(),
                role: Role::Admin,
            });
        }
        let found = authorization.and_then(|header| self.identify(header, metrics));
        match found {
            Some(identity) => {
                self.lock().remove(&from);
                Verdict::Allowed(identity)
            }
            None => {
                // A browser's first request carries no credentials: only wrong ones count.
                if authorization.is_some() {
                    self.failed(from);
                }
                Verdict::Refused
            }
        }
    }

    fn identify(&self, header: &str, metrics: bool) -> Option<Identity> {
        let (scheme, value) = header.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let expected = self.metrics_token.as_ref().filter(|_| metrics)?;
            let given = digest(value.trim().as_bytes());
            return bool::from(given.ct_eq(expected)).then(|| Identity {
                name: "metrics".to_owned(),
                role: Role::Viewer,
            });
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        let given = digest(&decoded);
        // Every user is compared, so the time taken says nothing of which (if any) matched.
        let mut found = None;
        for (user, expected) in &self.users {
            if bool::from(given.ct_eq(expected)) {
                found = Some(Identity {
                    name: user.name.clone(),
                    role: user.role,
                });
            }
        }
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long `from` must still wait, if it must.
    fn waiting(&self, from: IpAddr) -> Option<Duration> {
        let failures = self.lock();
        let until = failures.get(&from)?.blocked_until?;
        until.checked_duration_since(Instant::now())
    }

    fn failed(&self, from: IpAddr) {
        let now = Instant::now();
        let mut failures = self.lock();
        failures.retain(|_, f| now.duration_since(f.last) < FORGET_FAILURES);
        let entry = failures.entry(from).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        entry.count += 1;
        entry.last = now;
        if entry.count >= FREE_FAILURES {
            let doublings = (entry.count - FREE_FAILURES).min(16);
            let wait = (FIRST_WAIT * 2u32.pow(doublings)).min(LONGEST_WAIT);
            entry.blocked_until = Some(now + wait);
            tracing::warn!(address = %from, failures = entry.count, wait_s = wait.as_secs(), "repeated failed dashboard logins; this address waits");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(
            vec![
                User {
                    name: "ops".into(),
                    password: "s3cret".into(),
                    role: Role::Admin,
                },
                User {
                    name: "ann".into(),
                    password: "pw".into(),
                    role: Role::Viewer,
                },
            ],
            Some("tok"),
        )
    }

    #[test]
    fn users_are_told_apart_and_the_token_opens_only_metrics() {
        let auth = authenticator();
        let from: IpAddr = "10.0.0.1".parse().unwrap();
        let ops = basic("ops", "s3cret");
        assert!(matches!(
            auth.check(from, Some(&ops), false),
            Verdict::Allowed(Identity {
                role: Role::Admin,
                ..
            })
        ));
        let ann = basic("ann", "pw");
        assert!(matches!(
            auth.check(from, Some(&ann), false),
            Verdict::Allowed(Identity {
                role: Role::Viewer,
                ..
            })
        ));
        assert_eq!(
            auth.check(from, Some(&basic("ops", "pw")), false),
            Verdict::Refused
        );
        assert_eq!(auth.check(from, None, false), Verdict::Refused);
        assert_eq!(
            auth.check(from, Some("Bearer tok"), false),
            Verdict::Refused
        );
        assert!(matches!(
            auth.check(from, Some("Bearer tok"), true),
            Verdict::Allowed(_)
        ));
        assert_eq!(
            auth.check(from, Some("Bearer nope"), true),
            Verdict::Refused
        );
    }

    #[test]
    fn an_address_that_keeps_failing_waits_longer_each_time() {
        let auth = authenticator();
        let from: IpAddr = "10.0.0.2".parse().unwrap();
        let other: IpAddr = "10.0.0.3".parse().unwrap();
        let wrong = basic("ops", "guess");
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(auth.check(from, Some(&wrong), false), Verdict::Refused);
        }
        assert_eq!(auth.check(from, Some(&wrong), false), Verdict::Refused);
        let Verdict::Throttled(wait) = auth.check(from, Some(&basic("ops", "s3cret")), false)
        else {
            panic!("throttled, even with the right password");
        };
        assert!(wait <= FIRST_WAIT, "{wait:?}");
        assert!(matches!(
            auth.check(other, Some(&basic("ops", "s3cret")), false),
            Verdict::Allowed(_)
        ));
    }
}
