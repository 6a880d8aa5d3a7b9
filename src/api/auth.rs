//! The API key check, as an extractor: every `/api` route sits behind it, and no
//! handler reads the header itself.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;

/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Proof that the request carried a valid API key.
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(API_KEY_HEADER) else {
            return Err(ApiError::unauthorized("API key is required"));
        };
        let key = value.to_str().unwrap_or_default();
        if !key.is_empty() && state.store.keys.verify(key) {
            Ok(ApiKey)
        } else {
            Err(ApiError::unauthorized("Invalid API key"))
        }
    }
}
