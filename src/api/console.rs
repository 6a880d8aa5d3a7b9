//! The console over HTTP: `POST /api/instances/:id/console-token` (the panel asks
//! for a user's token), `GET /api/instances/:id/logs` and `/stats` (the panel or a
//! user's token), and `GET /api/instances/:id/ws`, the console websocket in Wings'
//! protocol (authenticated by its first frame, as Wings' is: browsers cannot set
//! headers on a websocket).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::AppState;
use super::body::{Fields, has_control};
use super::error::{ApiError, ApiResult};
use super::principal::Principal;
use crate::console::{output, session, stats, wings_state};
use crate::crd::Instance;
use crate::store::tokens::{CONSOLE_TTL, Claims, Perm};

/// Largest frame a console socket accepts (a command line is far shorter).
pub const MAX_FRAME: usize = 64 * 1024;
/// Most lines `logs` answers with.
pub const MAX_TAIL: i64 = 5000;
/// The error of a bad `?tail=`.
const BAD_TAIL: &str = "tail must be a whole number from 1 to 5000";

/// Routes only the panel calls (behind the API key).
pub fn panel_router() -> Router<AppState> {
    Router::new().route("/api/instances/{id}/console-token", post(console_token))
}

/// Routes the panel or a user's token calls.
pub fn shared_router() -> Router<AppState> {
    Router::new()
        .route("/api/instances/{id}/logs", get(logs))
        .route("/api/instances/{id}/stats", get(stats_now))
}

/// Routes that authenticate by themselves.
pub fn open_router() -> Router<AppState> {
    Router::new().route("/api/instances/{id}/ws", get(socket))
}

/// The instance named by a path, or the reference's 400.
pub fn instance(state: &AppState, id: &str) -> ApiResult<std::sync::Arc<Instance>> {
    if id.is_empty() || id.len() > 253 || has_control(id) {
        return Err(ApiError::bad_request("Instance not found"));
    }
    state
        .store
        .instances
        .get(id)
        .ok_or_else(|| ApiError::bad_request("Instance not found"))
}

/// The websocket URL of instance `id`'s console, as the client reached Berth.
fn socket_url(headers: &HeaderMap, id: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let scheme = if secure { "wss" } else { "ws" };
    format!("{scheme}://{host}/api/instances/{id}/ws")
}

/// Permissions asked for, or all.
fn permissions(fields: &Fields) -> ApiResult<Vec<Perm>> {
    let Some(asked) = fields.get("permissions") else {
        return Ok(Perm::ALL.to_vec());
    };
    let list = asked
        .as_array()
        .ok_or_else(|| ApiError::bad_request("permissions must be a list"))?;
    let mut perms = Vec::new();
    for p in list {
        let perm: Perm = serde_json::from_value(p.clone())
            .map_err(|_| ApiError::bad_request("permissions are console, power and stats"))?;
        if !perms.contains(&perm) {
            perms.push(perm);
        }
    }
    if perms.is_empty() {
        return Err(ApiError::bad_request("permissions must not be empty"));
    }
    Ok(perms)
}

/// A 10-minute token for a user's console: the user must own the instance or be
/// an admin.
#[utoipa::path(post, path = "/api/instances/{id}/console-token", tag = "console",
    params(("id" = String, Path, description = "Instance id")),
    request_body(content = super::openapi::ConsoleTokenDoc, content_type = "application/json"),
    responses((status = 200, description = "The token, the socket to use it on, and when it expires", body = super::openapi::ConsoleTokenAnswerDoc),
              (status = 400, description = "Instance or user not found, or bad permissions", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc),
              (status = 403, description = "The user neither owns the instance nor is an admin", body = super::openapi::ErrorDoc),
              (status = 503, description = "No signing key yet", body = super::openapi::ErrorDoc)))]
pub async fn console_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    let inst = instance(&state, &id)?;
    let user_id = fields.required_text("userId", super::users::MAX_USER_ID)?;
    let perms = permissions(&fields)?;
    let user = state
        .store
        .users
        .by_id(&user_id)
        .ok_or_else(|| ApiError::bad_request("User not found"))?;
    if inst.spec.user_id != user.user_id && !user.admin {
        return Err(ApiError::forbidden(
            "The user neither owns this instance nor is an admin",
        ));
    }
    let claims = Claims::new(&user.user_id, Some(&id), perms.clone(), CONSOLE_TTL);
    let token = state.store.tokens.issue(&claims)?;
    Ok(Json(json!({
        "token": token,
        "socket": socket_url(&headers, &id),
        "expiresAt": rfc3339(claims.exp),
        "permissions": perms,
    })))
}

/// Seconds since the epoch as RFC 3339.
pub fn rfc3339(secs: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
        .map_or_else(|_| String::new(), |t| t.to_string())
}

/// `?tail=`.
#[derive(Deserialize)]
pub struct Tail {
    tail: Option<String>,
}

/// The last lines of the server's console.
#[utoipa::path(get, path = "/api/instances/{id}/logs", tag = "console",
    params(("id" = String, Path, description = "Instance id"),
           ("tail" = Option<i64>, Query, description = "Lines (1 to 5000, default 100)")),
    responses((status = 200, description = "The lines, oldest first (none while the server has no Pod)", body = super::openapi::LogsDoc),
              (status = 400, description = "Instance not found, or a bad tail", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key or token missing or invalid", body = super::openapi::ErrorDoc),
              (status = 403, description = "The token does not allow the console of this instance", body = super::openapi::ErrorDoc),
              (status = 429, description = "Too many invalid tokens from this address", body = super::openapi::ErrorDoc)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Extension<Principal>,
    tail: Result<Query<Tail>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let inst = instance(&state, &id)?;
    who.may(&inst, Perm::Console)?;
    // A query that does not parse (a repeated or badly encoded parameter) gets
    // this API's JSON error, not axum's plain text.
    let Query(tail) = tail.map_err(|_| ApiError::bad_request(BAD_TAIL))?;
    let n = match tail.tail.as_deref() {
        None | Some("") => 100,
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_TAIL).contains(n))
            .ok_or_else(|| ApiError::bad_request(BAD_TAIL))?,
    };
    let lines = output::tail(&state.store.client, &state.store.namespace, &id, n)
        .await
        .map_err(|e| ApiError::kube("read the server's logs", e))?;
    Ok(Json(json!({ "Id": id, "lines": lines })))
}

/// Memory, CPU, uptime and state now, as Wings' `stats` event carries them.
#[utoipa::path(get, path = "/api/instances/{id}/stats", tag = "console",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Stats (use is absent where the cluster has no metrics API)", body = super::openapi::StatsDoc),
              (status = 400, description = "Instance not found", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key or token missing or invalid", body = super::openapi::ErrorDoc),
              (status = 403, description = "The token does not allow stats of this instance", body = super::openapi::ErrorDoc),
              (status = 429, description = "Too many invalid tokens from this address", body = super::openapi::ErrorDoc)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn stats_now(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    let inst = instance(&state, &id)?;
    who.may(&inst, Perm::Stats)?;
    let store = &state.store;
    Ok(Json(
        stats::stats(&store.client, &store.namespace, &inst, wings_state(&inst)).await,
    ))
}

/// The console websocket (Wings' protocol; authenticate with the first frame).
#[utoipa::path(get, path = "/api/instances/{id}/ws", tag = "console",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 101, description = "Switching to the websocket: send {\"event\":\"auth\",\"args\":[token]} first"),
              (status = 400, description = "Instance not found, or not a websocket upgrade", body = super::openapi::ErrorDoc)),
    security(()))]
pub async fn socket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    mut req: Request,
) -> Response {
    match upgrade(&state, &id, &mut req) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Answers a websocket upgrade (RFC 6455) and serves the socket in a task.
// Written against tungstenite directly: axum's `ws` pins an older
// tokio-tungstenite than kube's `ws`, which would build two copies.
fn upgrade(state: &AppState, id: &str, req: &mut Request) -> ApiResult<Response> {
    instance(state, id)?;
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err(ApiError::bad_request(
            "This is the console websocket: connect with a websocket client",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::bad_request("Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("Sec-WebSocket-Key is missing"))?;
    let accept = derive_accept_key(key.as_bytes());
    let upgrading = hyper::upgrade::on(req);
    let ctx = session::Context {
        store: state.store.clone(),
        consoles: state.consoles.clone(),
    };
    let id = id.to_owned();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrading.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME))
            // Small buffers: a socket costs little (thousands of them are normal).
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(256 * 1024);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (tx, rx) = ws.split();
        session::run(ctx, id, rx, tx).await;
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade".to_owned()),
            (header::UPGRADE, "websocket".to_owned()),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response())
}
