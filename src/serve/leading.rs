//! The controllers under leader election: stand as a candidate, reconcile while
//! leading, and on losing the Lease stop at once and stand again. While not
//! leading (or past the renew deadline) the controllers' client refuses writes
//! (see [`crate::controller::leader::Gate`]), so a replica that lost the Lease
//! never writes before it notices.

use kube::Client;
use tracing::{info, warn};

use super::Shutdown;
use crate::controller::{self, leader::Elector};
use crate::store::Store;

/// Runs the controllers until `shutdown`: at once without an elector, else in
/// every term this process leads.
pub async fn run(
    client: Client,
    store: Store,
    settings: controller::Config,
    elector: Option<Elector>,
    shutdown: Shutdown,
) {
    let Some(elector) = elector else {
        return controller::run(client, store, settings, shutdown).await;
    };
    loop {
        info!(identity = %elector.identity, "standing as a candidate for controller leader");
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown.clone().wait() => return,
        }
        let term = controller::run(
            client.clone(),
            store.clone(),
            settings.clone(),
            shutdown.clone(),
        );
        tokio::select! {
            // Shutdown: the controllers finished what was in flight.
            () = term => {
                elector.release().await;
                return;
            }
            // Lost: the controllers are dropped mid-flight; the gate refuses any
            // write that was still on its way.
            () = elector.hold() => {
                warn!(identity = %elector.identity, "stopped leading; reconciles stopped");
            }
        }
    }
}
