//! Cross-site request forgery protection for actions: a request must come from the
//! dashboard's own origin (`Sec-Fetch-Site`, `Origin`) and carry its session's token.
//!
//! A session is a user of this dashboard process: the token is drawn at the user's first
//! `GET /api/session`, lives as long as the process, and a page reads it from there.

use std::collections::HashMap;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

/// The header an action carries the token in.
pub(crate) const TOKEN_HEADER: &str = "x-csrf-token";

#[derive(Default)]
pub(crate) struct Csrf {
    tokens: Mutex<HashMap<String, String>>,
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    CrossSite,
    OtherOrigin,
    MissingToken,
    WrongToken,
}

impl Refusal {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::CrossSite => "refused: the request came from another site (Sec-Fetch-Site)",
            Refusal::OtherOrigin => "refused: the request's Origin is not this dashboard",
            Refusal::MissingToken => "refused: no CSRF token (X-CSRF-Token, from GET /api/session)",
            Refusal::WrongToken => "refused: the CSRF token is not this session's",
        }
    }
}

impl Csrf {
    /// The token of `user`'s session, drawn on first use.
    pub(crate) fn token(&self, user: &str) -> String {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tokens
            .entry(user.to_owned())
            .or_insert_with(|| {
                // Two version-4 UUIDs: 244 bits from the operating system's generator.
                format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                )
            })
            .clone()
    }

    /// Check an action of `user`: `fetch_site` and `origin` as the browser sent them,
    /// `host` the Host header, `token` the token header.
    pub(crate) fn check(
        &self,
        user: &str,
        fetch_site: Option<&str>,
        origin: Option<&str>,
        host: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), Refusal> {
        if let Some(site) = fetch_site
            && !matches!(site, "same-origin" | "none")
        {
            return Err(Refusal::CrossSite);
        }
        if let Some(origin) = origin {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if origin_host.is_none() || origin_host != host {
                return Err(Refusal::OtherOrigin);
            }
        }
        let token = token.ok_or(Refusal::MissingToken)?;
        let expected = self.token(user);
        if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_needs_its_own_origin_and_its_sessions_token() {
        let csrf = Csrf::default();
        let token = csrf.token("ops");
        assert_eq!(token.len(), 64);
        assert_eq!(csrf.token("ops"), token, "one per session");
        assert_ne!(csrf.token("ann"), token);
        let host = Some("127.0.0.1:5555");
        let ok = |site, origin, given: Option<&str>| csrf.check("ops", site, origin, host, given);
        assert_eq!(
            ok(
                Some("same-origin"),
                Some("http://127.0.0.1:5555"),
                Some(&token)
            ),
            Ok(())
        );
        assert_eq!(ok(None, None, Some(&token)), Ok(()), "not a browser");
        assert_eq!(
            ok(Some("cross-site"), None, Some(&token)),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            ok(Some("same-site"), None, Some(&token)),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            ok(None, Some("http://evil.example"), Some(&token)),
            Err(Refusal::OtherOrigin)
        );
        assert_eq!(
            ok(None, Some("null"), Some(&token)),
            Err(Refusal::OtherOrigin)
        );
        assert_eq!(ok(None, None, None), Err(Refusal::MissingToken));
        assert_eq!(ok(None, None, Some("guess")), Err(Refusal::WrongToken));
        let anns = csrf.token("ann");
        assert_eq!(
            ok(None, None, Some(&anns)),
            Err(Refusal::WrongToken),
            "another session's"
        );
    }
}
