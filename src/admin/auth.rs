//! Who may call the admin routes: `Authorization: Bearer <admin_token>`.
//!
//! Routes that change state (`/reload`, drain, enable) need the token whenever one is
//! configured; with `admin_auth: "all"` every route does. Config validation already refused
//! the unsafe case (a non-loopback admin address without a token), so an admin listener
//! without a token is one only local processes can reach. The token is compared in constant
//! time (`subtle`), so the time of a refusal says nothing about how much of a guess was
//! right; it is read from the running config on each call, so a reload can rotate it.

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http::{header, HeaderValue, StatusCode};
use subtle::ConstantTimeEq;

use crate::{
    config::{AdminAuthConfig, AdminScope},
    local_reply::local_reply,
};

use super::AdminState;

/// Which kind of route a guard protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Reads state (`/metrics`, `/backends`, `/decisions`, the dashboard).
    Read,
    /// Changes state (`/reload`, drain, enable).
    Change,
}

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not the admin token.
    Wrong,
}

/// Checks `authorization` against `auth` for a route of `kind`.
pub fn check(
    auth: &AdminAuthConfig,
    kind: RouteKind,
    authorization: Option<&HeaderValue>,
) -> Result<(), Denial> {
    let Some(token) = &auth.token else {
        return Ok(());
    };
    if kind == RouteKind::Read && auth.scope == AdminScope::Changes {
        return Ok(());
    }
    let presented = authorization
        .map(HeaderValue::as_bytes)
        .and_then(bearer)
        .ok_or(Denial::Missing)?;
    if bool::from(presented.ct_eq(token.expose())) {
        Ok(())
    } else {
        Err(Denial::Wrong)
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|token| !token.is_empty())
}

/// The `401` of a refused call; the body says what was missing, never what was expected.
fn unauthorized(denial: Denial) -> Response<Body> {
    let reason = match denial {
        Denial::Missing => "admin token required (Authorization: Bearer <admin_token>)",
        Denial::Wrong => "invalid admin token",
    };
    let mut response = local_reply(StatusCode::UNAUTHORIZED, reason);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"alb admin\""),
    );
    response
}

async fn guard(
    state: State<AdminState>,
    kind: RouteKind,
    request: Request,
    next: Next,
) -> Response {
    let auth = state.auth();
    match check(&auth, kind, request.headers().get(header::AUTHORIZATION)) {
        Ok(()) => next.run(request).await,
        Err(denial) => {
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                reason = ?denial,
                "admin request refused"
            );
            unauthorized(denial)
        }
    }
}

/// Middleware for routes that read state.
pub async fn guard_read(state: State<AdminState>, request: Request, next: Next) -> Response {
    guard(state, RouteKind::Read, request, next).await
}

/// Middleware for routes that change state.
pub async fn guard_change(state: State<AdminState>, request: Request, next: Next) -> Response {
    guard(state, RouteKind::Change, request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn auth(json: &str) -> AdminAuthConfig {
        let config: Config = Config::parse(json, std::path::Path::new("t.json")).unwrap();
        config.admin_auth
    }

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn without_a_token_loopback_is_open() {
        let a = auth(r#"{"backends": ["http://127.0.0.1:1"]}"#);
        assert_eq!(check(&a, RouteKind::Change, None), Ok(()));
        assert_eq!(check(&a, RouteKind::Read, None), Ok(()));
    }

    #[test]
    fn changes_need_the_token_reads_do_not() {
        let a = auth(&format!(
            r#"{{"backends": ["http://127.0.0.1:1"], "admin_token": "{TOKEN}"}}"#
        ));
        let good = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
        let lower = HeaderValue::from_str(&format!("bearer {TOKEN}")).unwrap();
        let wrong = HeaderValue::from_static("Bearer 0123456789abcdef0124");
        let prefix = HeaderValue::from_static("Bearer 0123456789abcdef012");
        let basic = HeaderValue::from_static("Basic YWxiOmFsYg==");
        assert_eq!(check(&a, RouteKind::Change, None), Err(Denial::Missing));
        assert_eq!(
            check(&a, RouteKind::Change, Some(&basic)),
            Err(Denial::Missing)
        );
        assert_eq!(
            check(&a, RouteKind::Change, Some(&wrong)),
            Err(Denial::Wrong)
        );
        assert_eq!(
            check(&a, RouteKind::Change, Some(&prefix)),
            Err(Denial::Wrong)
        );
        assert_eq!(check(&a, RouteKind::Change, Some(&good)), Ok(()));
        assert_eq!(check(&a, RouteKind::Change, Some(&lower)), Ok(()));
        assert_eq!(check(&a, RouteKind::Read, None), Ok(()));
    }

    #[test]
    fn scope_all_guards_reads_too() {
        let a = auth(&format!(
            r#"{{"backends": ["http://127.0.0.1:1"], "admin_token": "{TOKEN}", "admin_auth": "all"}}"#
        ));
        assert_eq!(check(&a, RouteKind::Read, None), Err(Denial::Missing));
        let good = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
        assert_eq!(check(&a, RouteKind::Read, Some(&good)), Ok(()));
    }

    #[test]
    fn the_token_never_prints() {
        let a = auth(&format!(
            r#"{{"backends": ["http://127.0.0.1:1"], "admin_token": "{TOKEN}"}}"#
        ));
        assert!(!format!("{a:?}").contains(TOKEN));
        assert!(!serde_json::to_string(&a).unwrap().contains(TOKEN));
    }
}
