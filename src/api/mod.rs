//! The HTTP server: the Skyport-compatible REST API under `/api` (behind the API
//! key), and `/healthz`, `/readyz` beside it.

mod auth;
mod body;
mod error;
mod health;
mod images;
mod instances;
mod nodes;
pub mod openapi;
mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;

pub use auth::API_KEY_HEADER;
pub use error::ApiError;

use crate::store::Store;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Caches and writers of everything the API touches.
    pub store: Store,
    ready: Arc<AtomicBool>,
}

impl AppState {
    /// New state; not ready until [`AppState::set_ready`] is called and the caches synced.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the process ready (or not) to serve traffic.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200: started, not shutting down, caches synced.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.store.is_synced()
    }
}

/// The REST API routes, each behind the API key.
fn api_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(users::router())
        .merge(instances::router())
        .merge(nodes::router())
        .merge(images::router())
        .merge(openapi::router())
        .route_layer(middleware::from_extractor_with_state::<auth::ApiKey, _>(
            state.clone(),
        ))
}

/// Counts every answer by status class for `/metrics`.
async fn count_responses(
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let resp = next.run(req).await;
    crate::metrics::count_http(resp.status().as_u16());
    resp
}

/// The whole HTTP surface; without `with_api` only health and metrics (controller-only mode).
pub fn router(state: AppState, with_api: bool) -> Router {
    let routes = if with_api {
        api_routes(&state)
    } else {
        Router::new()
    };
    Router::new()
        .merge(routes)
        .merge(health::router())
        .fallback(|| async { ApiError::not_found("Not found") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // Fields reads the body with its own limit; this also bounds anything else.
        .layer(DefaultBodyLimit::max(body::MAX_BODY))
        .layer(middleware::from_fn(count_responses))
        .with_state(state)
}
