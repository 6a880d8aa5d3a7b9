//! The HTTP server: health endpoints now, the Skyport-compatible REST API beside them.

mod health;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Client for the Kubernetes API server.
    pub client: kube::Client,
    /// The namespace Berth keeps its objects in.
    pub namespace: String,
    ready: Arc<AtomicBool>,
}

impl AppState {
    /// New state; not ready until [`AppState::set_ready`] is called.
    pub fn new(client: kube::Client, namespace: String) -> Self {
        Self {
            client,
            namespace,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the process ready (or not) to serve traffic.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new().merge(health::router()).with_state(state)
}
