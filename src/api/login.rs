//! `POST /api/auth/login`: a user's username (or email) and password for a user
//! token (1 hour) that may use the console, power, logs and stats of the user's
//! own instances. An unknown user and a wrong password get the same answer after
//! the same work; wrong passwords from one address are slowed down as bad API keys
//! are (a limiter of their own, so a guessing user does not lock out the panel).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::body::Fields;
use super::console::rfc3339;
use super::error::{ApiError, ApiResult};
use super::users::{MAX_EMAIL, MAX_PASSWORD, MAX_USERNAME};
use crate::store::tokens::{Claims, Perm, USER_TTL};
use crate::store::users::LoginName;

/// Routes of the login (no API key: end users call it).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/auth/login", post(login))
}

/// A user token for a username (or email) and password.
#[utoipa::path(post, path = "/api/auth/login", tag = "users",
    request_body(content = super::openapi::LoginDoc, content_type = "application/json"),
    responses((status = 200, description = "The user's token and when it expires", body = super::openapi::LoginAnswerDoc),
              (status = 400, description = "A missing or malformed field", body = super::openapi::ErrorDoc),
              (status = 401, description = "Wrong username, email or password", body = super::openapi::ErrorDoc),
              (status = 429, description = "Too many failed logins from this address", body = super::openapi::ErrorDoc),
              (status = 503, description = "Berth is starting, or has no signing key yet", body = super::openapi::ErrorDoc)),
    security(()))]
pub async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    let attempt = state.logins.attempt(
        peer.map(|Extension(c)| c.0.ip()),
        "Too many failed logins; try again later",
    )?;
    let name = match (
        fields.text("username", MAX_USERNAME)?,
        fields.text("email", MAX_EMAIL)?,
    ) {
        (Some(u), _) if !u.is_empty() => LoginName::Username(u),
        (_, Some(e)) if !e.is_empty() => LoginName::Email(e),
        _ => return Err(ApiError::bad_request("username or email is required")),
    };
    let password = fields.required_text("password", MAX_PASSWORD)?;
    if !state.store.is_synced() {
        return Err(ApiError::unavailable(
            "Berth is starting; try again in a moment",
        ));
    }
    let Some(user) = state.store.users.login(&name, &password).await else {
        attempt.failed();
        return Err(ApiError::unauthorized(
            "Invalid username, email or password",
        ));
    };
    let claims = Claims::new(&user.user_id, None, Perm::ALL.to_vec(), USER_TTL);
    let token = state.store.tokens.issue(&claims)?;
    Ok(Json(json!({
        "token": token,
        "expiresAt": rfc3339(claims.exp),
        "user": user,
    })))
}
