//! `/api/images`: the catalog's Skyport image documents, as admins wrote them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::AppState;

/// Routes of the image endpoints.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/images", get(list))
}

/// Every catalog image.
#[utoipa::path(get, path = "/api/images", tag = "images",
    responses((status = 200, description = "List of images", body = [super::openapi::ImageDoc]),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<Value>> {
    Json(
        state
            .store
            .catalog
            .list()
            .iter()
            .map(|i| i.document.clone())
            .collect(),
    )
}
