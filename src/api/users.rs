//! `/api/users`, `/api/getUser`, `/api/users/create` (and `/api/auth/create-user`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::body::Fields;
use super::error::{ApiError, ApiResult};
use super::lists::{ListRequest, Rendered};
use crate::store::users::{NewUser, User};

/// Longest username.
pub const MAX_USERNAME: usize = 64;
/// Longest email (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;
/// Longest caller-chosen userId.
pub const MAX_USER_ID: usize = 128;
/// Shortest password.
pub const MIN_PASSWORD: usize = 8;
/// Longest password: hashing is costly, and nobody types more.
pub const MAX_PASSWORD: usize = 1024;

/// Routes of the user endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list))
        .route("/api/getUser", post(get_user))
        .route("/api/users/create", post(create))
        .route("/api/auth/create-user", post(create))
}

/// Every user, or a page of them (`?page=&perPage=`).
#[utoipa::path(get, path = "/api/users", tag = "users",
    params(super::lists::PageQuery),
    responses((status = 200, description = "List of users (a page: `X-Total-Count` and `Link` headers)", body = [User]),
              (status = 400, description = "A bad page or perPage", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn list(State(state): State<AppState>, request: ListRequest) -> axum::response::Response {
    let users = state.store.users.clone();
    let list = state
        .lists()
        .get("users", users.versions(), move |_| {
            Rendered::new(users.list().into_iter())
        })
        .await;
    request.respond(&list).await
}

/// A user by email or username.
#[utoipa::path(post, path = "/api/getUser", tag = "users",
    request_body(content = super::openapi::GetUserDoc, content_type = "application/json"),
    responses((status = 201, description = "User details", body = User),
              (status = 400, description = "Missing or invalid parameters, or user not found", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn get_user(
    State(state): State<AppState>,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<User>)> {
    fields.require(&["type", "value"])?;
    let kind = fields.required_text("type", 16)?;
    let value = fields.required_text("value", MAX_EMAIL)?;
    let user = match kind.as_str() {
        "email" => state.store.users.by_email(&value),
        "username" => state.store.users.by_username(&value),
        _ => return Err(ApiError::bad_request("type must be 'email' or 'username'")),
    };
    let user = user.ok_or_else(|| ApiError::bad_request("User not found"))?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Whether an email looks deliverable enough to accept: one `@`, both sides non-empty,
/// no spaces, a dot-free local part is fine, the domain has no empty labels.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
        && domain.split('.').all(|label| !label.is_empty())
}

/// Reads and checks a create-user body.
fn new_user(fields: &Fields) -> ApiResult<NewUser> {
    fields.require(&["username", "email", "password"])?;
    let username = fields.required_text("username", MAX_USERNAME)?;
    if username.trim() != username {
        return Err(ApiError::bad_request(
            "username must not start or end with spaces",
        ));
    }
    let email = fields.required_text("email", MAX_EMAIL)?.trim().to_owned();
    if !valid_email(&email) {
        return Err(ApiError::bad_request("email is not a valid email address"));
    }
    let password = match fields.get("password") {
        Some(serde_json::Value::String(p)) => p.clone(),
        _ => return Err(ApiError::bad_request("password must be a string")),
    };
    let length = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&length) {
        return Err(ApiError::bad_request(format!(
            "password must be between {MIN_PASSWORD} and {MAX_PASSWORD} characters"
        )));
    }
    let user_id = match fields.text("userId", MAX_USER_ID)? {
        Some(id) if id.trim() != id => {
            return Err(ApiError::bad_request(
                "userId must not start or end with spaces",
            ));
        }
        Some(id) => id,
        None => uuid::Uuid::new_v4().to_string(),
    };
    Ok(NewUser {
        user_id,
        username,
        email,
        password,
        admin: fields.boolean("admin")?.unwrap_or(false),
    })
}

/// Creates a user.
#[utoipa::path(post, path = "/api/users/create", tag = "users",
    request_body(content = super::openapi::CreateUserDoc, content_type = "application/json"),
    responses((status = 201, description = "User created", body = User),
              (status = 400, description = "Missing or invalid parameters", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc),
              (status = 409, description = "User already exists", body = super::openapi::ErrorDoc)))]
pub async fn create(
    State(state): State<AppState>,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<User>)> {
    let new = new_user(&fields)?;
    let user = state.store.users.create(new).await?;
    tracing::info!(user_id = %user.user_id, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in [
            "a@b.c",
            "first.last+tag@example.co.uk",
            "ü@exämple.de",
            "x@localhost",
        ] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "@b.c", "a@", "a@@b.c", "a b@c.d", "a@b..c", "a@b.c.",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
