//! Who calls a route that end users may call too (power, logs, stats): the panel,
//! with its API key, or a user, with a bearer token (a user token from a login, or
//! a console token for one instance). Bad tokens count against the caller's
//! address like bad API keys.

use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::auth::{API_KEY_HEADER, Caller, peer_ip};
use super::error::ApiError;
use crate::crd::Instance;
use crate::store::tokens::{Claims, Perm};

/// The caller of a route open to end users.
#[derive(Clone, Debug)]
pub enum Principal {
    /// The panel (an API key): everything.
    Panel,
    /// A user, as their token says.
    User(Claims),
}

impl Principal {
    /// Whether this caller may do `perm` on `inst`; a 403 naming it when not.
    pub fn may(&self, inst: &Instance, perm: Perm) -> Result<(), ApiError> {
        match self {
            Self::Panel => Ok(()),
            Self::User(c) => {
                let id = inst.metadata.name.as_deref().unwrap_or_default();
                if c.allows(id, &inst.spec.user_id, perm) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(format!(
                        "This token does not allow {} on this instance",
                        perm_name(perm)
                    )))
                }
            }
        }
    }
}

/// A permission as messages name it.
pub fn perm_name(perm: Perm) -> &'static str {
    match perm {
        Perm::Console => "console",
        Perm::Power => "power",
        Perm::Stats => "stats",
    }
}

/// The principal of a request: an API key when one is sent, else a bearer token.
pub async fn of_request(parts: &mut Parts, state: &AppState) -> Result<Principal, ApiError> {
    use axum::extract::FromRequestParts;
    if parts.headers.contains_key(API_KEY_HEADER) {
        return Caller::from_request_parts(parts, state)
            .await
            .map(|_| Principal::Panel);
    }
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = bearer else {
        return Err(ApiError::unauthorized("API key or token is required"));
    };
    let attempt = state.failures.attempt(
        peer_ip(parts),
        "Too many requests with an invalid token; try again later",
    )?;
    match state.store.tokens.verify(token) {
        // A deleted user's tokens stop working at once, not when they expire.
        Ok(claims) if state.store.users.by_id(&claims.sub).is_none() => {
            Err(ApiError::unauthorized("The token's user no longer exists"))
        }
        Ok(claims) => Ok(Principal::User(claims)),
        Err(e) => {
            attempt.failed();
            Err(e.into())
        }
    }
}
