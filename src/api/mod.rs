//! The HTTP server: the Skyport-compatible REST API under `/api` (behind the API
//! key), and `/healthz`, `/readyz` beside it.

mod auth;
mod body;
mod console;
mod error;
mod health;
mod idempotency;
mod images;
mod instances;
mod lists;
mod login;
mod nodes;
pub mod openapi;
pub mod page;
mod principal;
mod root;
mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;

pub use auth::{API_KEY_HEADER, Caller};
pub use error::ApiError;

use crate::store::Store;

/// State shared by every handler: a handle, cloned for every request (axum's
/// `State`), so one refcount (a field-by-field clone of the store's API clients
/// was a few percent of Berth's CPU during a deploy wave).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares.
pub struct Shared {
    /// Informers and write protocols of everything the API touches.
    pub store: Store,
    /// How long a watch may fail before `/readyz` fails.
    pub watch_grace: std::time::Duration,
    /// Publishes the API's Events (an edit, on its Instance).
    pub events: crate::controller::events::Events,
    /// The consoles open on this replica.
    pub consoles: crate::console::Consoles,
    /// Who may frame the console page (CSP `frame-ancestors`).
    pub frame_ancestors: Arc<str>,
    ready: Arc<AtomicBool>,
    failures: auth::FailureLimiter,
    logins: auth::FailureLimiter,
    lists: lists::ListCache,
}

impl AppState {
    /// New state; not ready until [`AppState::set_ready`] is called and the
    /// informers synced. `/readyz` fails while a watch has failed for longer than
    /// `watch_grace`.
    pub fn new(store: Store, watch_grace: std::time::Duration) -> Self {
        Self::framed_by(store, watch_grace, "*")
    }

    /// Like [`AppState::new`], with the console page framed only by
    /// `frame_ancestors` (a CSP `frame-ancestors` value).
    pub fn framed_by(
        store: Store,
        watch_grace: std::time::Duration,
        frame_ancestors: &str,
    ) -> Self {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "berth-api".into());
        Self(Arc::new(Shared {
            events: crate::controller::events::Events::new(
                store.client.clone(),
                crate::names::MANAGED_BY,
                &identity,
            ),
            consoles: crate::console::Consoles::new(
                store.client.clone(),
                &store.namespace,
                &store.instances,
                &store.pods,
            ),
            frame_ancestors: Arc::from(frame_ancestors),
            store,
            watch_grace,
            ready: Arc::new(AtomicBool::new(false)),
            failures: auth::FailureLimiter::default(),
            logins: auth::FailureLimiter::default(),
            lists: lists::ListCache::default(),
        }))
    }

    /// Cached list answers.
    pub fn lists(&self) -> &lists::ListCache {
        &self.lists
    }

    /// Marks the process ready (or not) to serve traffic.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Why `/readyz` fails, or `None` when this process can serve: started, not
    /// shutting down, informers synced, and no watch failing for too long (its
    /// informer may be stale).
    pub fn unready(&self) -> Option<String> {
        if !self.ready.load(Ordering::Acquire) {
            return Some("not serving (starting or shutting down)".into());
        }
        if !self.store.is_synced() {
            return Some("informers have not listed everything yet".into());
        }
        self.store.stale(self.watch_grace).map(|s| {
            format!(
                "the watch of {} has been failing for {} s",
                s.kind, s.for_secs
            )
        })
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The REST API routes: the panel's behind the API key; those end users may call
/// too behind the API key or a user's token; the login and the console socket
/// authenticate by themselves.
fn api_routes(state: &AppState) -> Router<AppState> {
    let panel = Router::new()
        .merge(users::router())
        .merge(instances::router())
        .merge(nodes::router())
        .merge(images::router())
        .merge(openapi::router())
        .merge(console::panel_router())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let shared = Router::new()
        .merge(instances::shared_router())
        .merge(console::shared_router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate_either,
        ));
    panel
        .merge(shared)
        .merge(login::router())
        .merge(console::open_router())
        .merge(page::router())
}

/// Runs the API key or token check and hands the principal to the handlers.
async fn authenticate_either(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = req.into_parts();
    match principal::of_request(&mut parts, &state).await {
        Ok(who) => {
            parts.extensions.insert(who);
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// Runs the API key check and hands the caller to the handlers.
async fn authenticate(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::extract::FromRequestParts;
    use axum::response::IntoResponse;
    let (mut parts, body) = req.into_parts();
    match auth::Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// Longest request processing allowed before the client gets a 503.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest header section accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Bounds every request: header size and processing time, with JSON errors.
async fn limits(req: axum::extract::Request, next: middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::headers_too_large(MAX_HEADER_BYTES).into_response();
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::unavailable("Request timed out").into_response(),
    }
}

/// The route pattern that answered a request (`/api/instances/{id}/power`), carried
/// out to [`observe_responses`] on the answer: the route is known only inside
/// the router, the time only outside it.
#[derive(Clone)]
struct Route(axum::extract::MatchedPath);

/// Puts the matched route on the answer.
async fn note_route(
    route: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(Route(route));
    resp
}

/// Counts and times every answer by route and status class for `/metrics`.
async fn observe_responses(
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<Route>()
        .map_or("unmatched", |r| r.0.as_str());
    crate::metrics::observe_http(route, resp.status().as_u16(), started.elapsed());
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
        .merge(root::router())
        .route_layer(middleware::from_fn(note_route))
        .fallback(|| async { ApiError::not_found("Not found") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // Fields reads the body with its own limit; this also bounds anything else.
        .layer(DefaultBodyLimit::max(body::MAX_BODY))
        .layer(middleware::from_fn(limits))
        .layer(middleware::from_fn(observe_responses))
        .with_state(state)
}
