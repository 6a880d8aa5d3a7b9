//! `berth serve`: the REST API and the controllers in one process, sharing one
//! set of informers (one watch per kind) and one shutdown signal. `--api-only` and
//! `--controller-only` split them; controllers elect a leader with a Lease when
//! `--leader-elect` is on (always with `--controller-only`).

mod http;
mod leading;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::controller::leader::{Elector, Timing};
use crate::controller::{self, PodSettings};
use crate::store::{Roles, Store};

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
    /// Lease duration, renew deadline and retry period of the election.
    pub election: Timing,
    /// Instance Pod settings.
    pub pods: PodSettings,
    /// How many Instances reconcile at once.
    pub concurrency: u16,
    /// How long to keep serving (unready) after SIGTERM before closing connections.
    pub shutdown_delay: Duration,
    /// How long a watch may fail before `/readyz` fails.
    pub watch_grace: Duration,
    /// Who may frame the console page (CSP `frame-ancestors` sources).
    pub console_frame_ancestors: String,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long a game server may take to stop by itself (unless its catalog entry says).
    pub stop_timeout: Duration,
}

/// One shutdown signal for everything: flipped once, seen by every clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that flips it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once shutdown began.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|down| *down).await;
    }
}

/// A candidate for the controllers' Lease, named after the Pod (or host).
fn elector(client: &kube::Client, namespace: &str, timing: Timing) -> Elector {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "berth".into());
    let identity = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    Elector::new(
        kube::Api::<Lease>::namespaced(client.clone(), namespace),
        identity,
        timing,
    )
}

/// Runs until SIGTERM or SIGINT, then drains in-flight requests and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let kube_config = kube::Config::infer()
        .await
        .context("failed to configure the Kubernetes client (KUBECONFIG or in-cluster config)")?;
    let client = crate::metrics::client(kube_config.clone(), None)?;
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let version = client
        .apiserver_version()
        .await
        .context("failed to reach the Kubernetes API server")?;
    info!(server = %version.git_version, %namespace, mode = ?config.mode, "connected to the Kubernetes API server");

    let roles = Roles {
        api: config.mode != Mode::ControllerOnly,
        controllers: config.mode != Mode::ApiOnly,
    };
    let mut store = Store::new(client.clone(), &namespace, roles);
    store.storage_class = config.pods.storage_class.clone();
    store.streaming_lists = crate::store::watch::streams_lists(&version);
    tokio::spawn(store.clone().run());
    tokio::spawn({
        let store = store.clone();
        async move {
            store.synced().await;
            info!(
                instances = store.instances.len(),
                nodes = store.nodes.len(),
                users = store.users.count(),
                "informers synced; ready"
            );
        }
    });
    if roles.api {
        tokio::spawn(signing_key(Api::namespaced(client.clone(), &namespace)));
        tokio::spawn({
            // After the lists: the decoy hash is ~25 ms of a core, which decoding
            // them needs on a small machine (a login before then makes it itself).
            let store = store.clone();
            async move {
                store.synced().await;
                store.users.warm().await;
            }
        });
    }
    let state = AppState::framed_by(
        store.clone(),
        config.watch_grace,
        &config.console_frame_ancestors,
    );

    let (stop_tx, shutdown) = Shutdown::new();
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    info!(address = %config.listen, "serving HTTP");
    state.set_ready(true);

    let controllers = roles.controllers.then(|| {
        let elect = config.leader_elect || config.mode == Mode::ControllerOnly;
        let elector = elect.then(|| elector(&client, &namespace, config.election));
        let settings = controller::Config {
            pods: config.pods.clone(),
            concurrency: config.concurrency,
            identity: elector
                .as_ref()
                .map_or_else(|| "berth".to_owned(), |e| e.identity.clone()),
            stop_timeout: config.stop_timeout,
        };
        // The controllers write through a client of their own, fenced by the
        // elector's gate when electing.
        let writer = crate::metrics::client(kube_config, elector.as_ref().map(|e| e.gate.clone()));
        writer.map(|writer| {
            tokio::spawn(leading::run(
                writer,
                store.clone(),
                settings,
                elector,
                shutdown.clone(),
            ))
        })
    });
    let controllers = controllers.transpose()?;

    let app = api::router(state.clone(), roles.api);
    let stop = {
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
    };
    http::serve(listener, app, config.header_read_timeout, stop).await;
    if let Some(handle) = controllers {
        handle
            .await
            .map_err(|e| anyhow::anyhow!("controllers panicked: {e}"))?;
    }
    info!("shut down cleanly");
    Ok(())
}

/// Makes the token signing Secret when it is missing (the chart makes it; a run
/// without the chart makes its own), trying until it exists.
async fn signing_key(secrets: Api<k8s_openapi::api::core::v1::Secret>) {
    let mut wait = Duration::from_secs(1);
    loop {
        match crate::store::tokens::ensure_signing_key(&secrets).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, "cannot make the token signing Secret; console and user tokens are unavailable until it exists");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
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
