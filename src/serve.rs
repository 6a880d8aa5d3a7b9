//! `berth serve`: the REST API and the controllers in one process, sharing one
//! client, one state and one shutdown signal.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::info;

use crate::api::{self, AppState};
use crate::store::Store;

/// Settings of `berth serve`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Namespace Berth keeps its objects in; `None` takes the kubeconfig's (or the
    /// in-cluster service account's) namespace.
    pub namespace: Option<String>,
}

/// Runs until SIGTERM or SIGINT, then drains in-flight requests and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("failed to configure the Kubernetes client (KUBECONFIG or in-cluster config)")?;
    let namespace = config
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let version = client
        .apiserver_version()
        .await
        .context("failed to reach the Kubernetes API server")?;
    info!(server = %version.git_version, %namespace, "connected to the Kubernetes API server");

    let store = Store::new(client, &namespace);
    tokio::spawn(store.clone().run());
    let state = AppState::new(store.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    info!(address = %config.listen, "serving HTTP");
    state.set_ready(true);
    tokio::spawn(async move {
        store.synced().await;
        info!(
            instances = store.instances.len(),
            nodes = store.nodes.len(),
            users = store.users.count(),
            "caches synced; ready"
        );
    });

    axum::serve(listener, api::router(state.clone()))
        .with_graceful_shutdown(shutdown_signal(state))
        .await
        .context("HTTP server failed")?;
    info!("shut down cleanly");
    Ok(())
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C), and marks the
/// process unready first so that load balancers stop sending new requests.
async fn shutdown_signal(state: AppState) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received, shutting down"),
        () = term => info!("SIGTERM received, shutting down"),
    }
    state.set_ready(false);
}
