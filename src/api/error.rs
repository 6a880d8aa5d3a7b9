//! The one error type of the REST API and its one mapping to HTTP: every error is
//! `{"error": "..."}` with the status code the reference gives.

use std::borrow::Cow;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::store::apikeys::KeyError;
use crate::store::claims::ClaimError;
use crate::store::deploy::DeployError;
use crate::store::edit::EditError;
use crate::store::instances::InstanceError;
use crate::store::nodes::NodeError;
use crate::store::tokens::TokenError;
use crate::store::users::UserError;

/// An error answer of the REST API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is invalid; the message names the problem.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: the API key is missing or wrong.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the caller is known, but may not do this.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: no such route.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 405: the route exists with another method.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
    }

    /// 409: the user exists.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 422: the request is well-formed but contradicts an earlier one.
    pub fn unprocessable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than {} KiB", limit / 1024),
        )
    }

    /// 415: the body is neither JSON nor a form.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json or application/x-www-form-urlencoded",
        )
    }

    /// 431: the header section is too large.
    pub fn headers_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("Request headers are larger than {} KiB", limit / 1024),
        )
    }

    /// 429: too many failed attempts.
    pub fn too_many_requests(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// 503: the API server cannot be reached or refused for a passing reason.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: something failed on our side. The details go to the log, not to the client.
    pub fn internal(action: &'static str, err: &dyn std::fmt::Display) -> Self {
        error!(%action, error = %err, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to {action}"),
        )
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Maps an API server error met while doing `action`.
    pub fn kube(action: &'static str, err: kube::Error) -> Self {
        match &err {
            // The API server refused what we sent: its message explains it.
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
                Self::bad_request(s.message.clone())
            }
            kube::Error::Api(s) if s.code == 429 || s.code == 503 || s.code == 504 => {
                Self::unavailable("The Kubernetes API server is busy; try again")
            }
            kube::Error::Api(_) => Self::internal(action, &err),
            // Not an answer at all: the API server is away (restarting, unreachable).
            _ => {
                tracing::warn!(%action, error = %err, "Kubernetes API server unavailable");
                Self::unavailable("The Kubernetes API server is unavailable; try again")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Exists => Self::conflict("User already exists"),
            UserError::Hash(_) => Self::internal("hash the password", &e),
            UserError::Api(e) => Self::kube("create the user", e),
        }
    }
}

impl From<ClaimError> for ApiError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Taken { .. } => Self::bad_request(e.to_string()),
            ClaimError::Api(e) => Self::kube("claim a unique value", e),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Api(e) => Self::kube("manage API keys", e),
            other => Self::bad_request(other.to_string()),
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Invalid(message) => Self::bad_request(message),
            DeployError::KeyReused => Self::unprocessable(e.to_string()),
            DeployError::Api { action, source } => Self::kube(action, source),
            DeployError::NoFreeId | DeployError::Task(_) => {
                Self::internal("deploy the instance", &e)
            }
        }
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> Self {
        match e {
            EditError::NotFound | EditError::Invalid(_) => Self::bad_request(e.to_string()),
            EditError::Changed => Self::conflict(e.to_string()),
            EditError::Api { action, source } => Self::kube(action, source),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotFound | NodeError::HasInstances => Self::bad_request(e.to_string()),
            NodeError::Api { action, source } => Self::kube(action, source),
        }
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::NotFound => Self::bad_request(e.to_string()),
            InstanceError::Suspended => Self::conflict(e.to_string()),
            InstanceError::Api { action, source } => Self::kube(action, source),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => Self::unauthorized("Token expired"),
            TokenError::Invalid => Self::unauthorized("Invalid token"),
            TokenError::NoKey => Self::unavailable("No token signing key yet; try again"),
        }
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
