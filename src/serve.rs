//! `berth serve`: the REST API and the controllers in one process, sharing one
//! client, one state and one shutdown signal. `--api-only` and `--controller-only`
//! split them; controllers elect a leader with a Lease when `--leader-elect` is on
//! (always with `--controller-only`), so replicas never reconcile at once.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use crate::api::{self, AppState};
use crate::controller::{self, PodSettings, leader::Elector};
use crate::store::Store;

/// What this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The REST API and the controllers.
    All,
    /// Only the REST API (stateless; scale freely).
    ApiOnly,
    /// Only the controllers (and health and metrics endpoints).
    ControllerOnly,
}

/// Settings of `berth serve`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Namespace Berth keeps its objects in; `None` takes the kubeconfig's (or the
    /// in-cluster service account's) namespace.
    pub namespace: Option<String>,
    /// What runs.
    pub mode: Mode,
    /// Whether the controllers elect a leader first.
    pub leader_elect: bool,
    /// How long a leader's Lease lasts without renewal.
    pub lease_duration: Duration,
    /// Instance Pod settings.
    pub pods: PodSettings,
    /// How many Instances reconcile at once.
    pub concurrency: u16,
    /// How long to keep serving (unready) after SIGTERM before closing connections.
    pub shutdown_delay: Duration,
}

/// One shutdown signal for everything: flipped once, seen by every clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once shutdown began.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }
}

/// Runs until SIGTERM or SIGINT, then drains in-flight requests and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = crate::metrics::client()
        .await
        .context("failed to configure the Kubernetes client (KUBECONFIG or in-cluster config)")?;
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let version = client
        .apiserver_version()
        .await
        .context("failed to reach the Kubernetes API server")?;
    info!(server = %version.git_version, %namespace, mode = ?config.mode, "connected to the Kubernetes API server");

    let with_api = config.mode != Mode::ControllerOnly;
    let with_controllers = config.mode != Mode::ApiOnly;
    let store = Store::new(client.clone(), &namespace, with_api);
    tokio::spawn(store.clone().run());
    let state = AppState::new(store.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = Shutdown(stop_rx);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    info!(address = %config.listen, "serving HTTP");
    state.set_ready(true);
    {
        let store = store.clone();
        tokio::spawn(async move {
            store.synced().await;
            info!(
                instances = store.instances.len(),
                nodes = store.nodes.len(),
                users = store.users.count(),
                "caches synced; ready"
            );
        });
    }

    let controllers = with_controllers.then(|| {
        let elector = (config.leader_elect || config.mode == Mode::ControllerOnly).then(|| {
            let host = std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "berth".into());
            let identity = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
            Elector::new(
                kube::Api::<Lease>::namespaced(client.clone(), &namespace),
                identity,
                config.lease_duration,
            )
        });
        let settings = controller::Config {
            namespace: namespace.clone(),
            pods: config.pods.clone(),
            concurrency: config.concurrency,
            identity: elector
                .as_ref()
                .map_or_else(|| "berth".to_owned(), |e| e.identity.clone()),
        };
        tokio::spawn(run_controllers(
            client.clone(),
            store.clone(),
            settings,
            elector,
            shutdown.clone(),
        ))
    });

    let app = api::router(state.clone(), with_api);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let state = state.clone();
        let delay = config.shutdown_delay;
        async move {
            signal().await;
            // Unready first, and keep serving a moment: load balancers and clients
            // holding kept-alive connections move away before connections close.
            state.set_ready(false);
            tokio::time::sleep(delay).await;
            let _ = stop_tx.send(true);
        }
    });
    server.await.context("HTTP server failed")?;
    if let Some(handle) = controllers {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(anyhow::anyhow!("controllers panicked: {e}")),
        }
    }
    info!("shut down cleanly");
    Ok(())
}

/// Runs the controllers, after winning the Lease when electing. Losing the Lease
/// ends the process with an error: stopping at once is the only way to be sure
/// that two replicas never reconcile together.
async fn run_controllers(
    client: kube::Client,
    store: Store,
    settings: controller::Config,
    elector: Option<Elector>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if let Some(e) = &elector {
        info!(identity = %e.identity, "waiting to become the controller leader");
        tokio::select! {
            () = e.acquire() => {}
            () = shutdown.clone().wait() => return Ok(()),
        }
    }
    let hold = async {
        match &elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let stop = shutdown.clone();
    let lost = tokio::select! {
        () = controller::run(client, store.catalog.clone(), settings, stop) => false,
        () = hold => true,
    };
    if let Some(e) = &elector {
        e.release().await;
    }
    if lost {
        error!("lost the controller Lease; exiting so that only the new leader reconciles");
        std::process::exit(1);
    }
    Ok(())
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn signal() {
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
}
