//! Writes to an existing Instance (delete, suspend), each made visible in the
//! Instance informer as soon as the API server took it.

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::Store;
use crate::crd::Instance;
use crate::names::{FIELD_MANAGER, GROUP, VERSION};

/// Why a write to an Instance did not happen.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// No Instance has this id (400 in the reference).
    #[error("Instance not found")]
    NotFound,
    /// The API server failed while doing the action.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The failure.
        #[source]
        source: kube::Error,
    },
}

/// Deletes an Instance; the controller and the garbage collector remove what it
/// owns (its Pod, volume claim and host-port claims).
pub async fn delete(store: &Store, id: &str) -> Result<(), InstanceError> {
    let deleted = match store
        .instance_api()
        .delete(id, &DeleteParams::background())
        .await
    {
        Ok(either) => either.left(),
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(InstanceError::NotFound),
        Err(source) => {
            return Err(InstanceError::Api {
                action: "delete the instance",
                source,
            });
        }
    };
    if let Some(gone) = deleted.or_else(|| store.instances.get(id).map(|i| (*i).clone())) {
        store.instances.remove(&gone);
    }
    tracing::info!(instance = %id, "instance deleted");
    Ok(())
}

/// Suspends an Instance (its Pod goes; its data and resource stay) or brings it back.
pub async fn set_suspended(
    store: &Store,
    id: &str,
    suspended: bool,
) -> Result<Instance, InstanceError> {
    if store.instances.get(id).is_none() {
        return Err(InstanceError::NotFound);
    }
    let patch = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Instance",
        "spec": { "suspended": suspended }
    });
    // Forced: the API is the one writer of spec, and it created the object with
    // a plain create, which server-side apply counts as another manager.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let updated = match store
        .instance_api()
        .patch(id, &params, &Patch::Apply(&patch))
        .await
    {
        Ok(u) => u,
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(InstanceError::NotFound),
        Err(source) => {
            return Err(InstanceError::Api {
                action: "update the instance",
                source,
            });
        }
    };
    store.instances.upsert(updated.clone());
    let word = if suspended {
        "suspended"
    } else {
        "unsuspended"
    };
    tracing::info!(instance = %id, "instance {word}");
    Ok(updated)
}
