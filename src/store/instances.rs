//! Writes to an existing Instance (delete, suspend, power, reinstall), each made
//! visible in the Instance informer as soon as the API server took it. Power and
//! reinstall are intents in the spec that the controller carries out; each is a
//! JSON merge patch of the one field it changes (a partial server-side apply
//! would disown, and so remove, the fields an earlier apply of ours had set).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::Store;
use crate::crd::{Instance, Power};
use crate::names::{FIELD_MANAGER, GROUP, VERSION};

/// A power action, as panels send it (Wings' `set state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the server.
    Start,
    /// Stop it gracefully (StopCommand, then its stop timeout).
    Stop,
    /// Stop it gracefully, then run it in a new Pod.
    Restart,
    /// Stop it at once.
    Kill,
}

impl std::str::FromStr for Action {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "start" => Ok(Self::Start),
            "stop" => Ok(Self::Stop),
            "restart" => Ok(Self::Restart),
            "kill" => Ok(Self::Kill),
            _ => Err(()),
        }
    }
}

impl Action {
    /// The spec change that asks for this action (pure).
    pub fn intent(self, now: &Time) -> Value {
        match self {
            Self::Start => json!({ "power": Power::Running }),
            Self::Stop => json!({ "power": Power::Stopped }),
            Self::Kill => json!({ "power": Power::Killed }),
            Self::Restart => json!({ "power": Power::Running, "restartRequestedAt": now }),
        }
    }
}

/// Why a write to an Instance did not happen.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// No Instance has this id (400 in the reference).
    #[error("Instance not found")]
    NotFound,
    /// The instance is suspended: the host's lock, which power requests cannot lift (409).
    #[error("The instance is suspended; unsuspend it first")]
    Suspended,
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

/// Merge-patches `spec` into Instance `id` (only the fields given change).
async fn patch_spec(
    store: &Store,
    id: &str,
    spec: Value,
    action: &'static str,
) -> Result<Instance, InstanceError> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patch = json!({ "spec": spec });
    match store
        .instance_api()
        .patch(id, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(updated) => {
            store.instances.upsert(updated.clone());
            Ok(updated)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Err(InstanceError::NotFound),
        Err(source) => Err(InstanceError::Api { action, source }),
    }
}

/// Asks for a power action: the desired power (and a restart request) in the
/// spec; the controller carries it out. A suspended instance cannot be started.
pub async fn power(store: &Store, id: &str, action: Action) -> Result<Instance, InstanceError> {
    let inst = store.instances.get(id).ok_or(InstanceError::NotFound)?;
    if inst.spec.suspended && matches!(action, Action::Start | Action::Restart) {
        return Err(InstanceError::Suspended);
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let updated = patch_spec(
        store,
        id,
        action.intent(&now),
        "change the instance's power",
    )
    .await?;
    tracing::info!(instance = %id, ?action, "power requested");
    Ok(updated)
}

/// Asks for a reinstall: the install step again in a new Pod, on an emptied data
/// folder when `wipe`.
pub async fn reinstall(store: &Store, id: &str, wipe: bool) -> Result<Instance, InstanceError> {
    store.instances.get(id).ok_or(InstanceError::NotFound)?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let spec = json!({ "reinstall": { "requestedAt": now, "wipe": wipe } });
    let updated = patch_spec(store, id, spec, "request a reinstall").await?;
    tracing::info!(instance = %id, wipe, "reinstall requested");
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_wings_words_and_become_intents() {
        assert_eq!("kill".parse::<Action>(), Ok(Action::Kill));
        assert!("reboot".parse::<Action>().is_err());
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(2_000_000_000).expect("ts"));
        assert_eq!(Action::Stop.intent(&now), json!({ "power": "Stopped" }));
        assert_eq!(
            Action::Restart.intent(&now),
            json!({ "power": "Running", "restartRequestedAt": "2033-05-18T03:33:20Z" })
        );
    }
}
