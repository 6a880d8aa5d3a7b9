//! Berth's custom resources. Their CRDs are generated from these types only:
//! `berth crd` prints them, `crds/` holds the committed copy.

// Repeated `type_ = "string"` in printcolumn(...) reads to clippy as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
mod instance;
#[allow(clippy::duplicated_attributes)]
mod node;

pub use instance::{
    Instance, InstanceSpec, InstanceState, InstanceStatus, PortMapping, Power, PowerState,
    Reinstall, ports_string,
};
pub use node::{Node, NodeResources, NodeSpec, NodeState, NodeStatus};

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt};

use crate::names::FIELD_MANAGER;

/// Why installing the CRDs failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused the CRD.
    #[error("failed to apply CRD {name}: {source}")]
    Apply {
        /// The CRD's name.
        name: String,
        /// The API server's answer.
        source: kube::Error,
    },
    /// The CRD was stored but never became Established.
    #[error("CRD {name} did not become Established within {timeout:?}")]
    NotEstablished {
        /// The CRD's name.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Every CRD Berth defines, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![Instance::crd(), Node::crd()]
}

/// Renders CRDs as one multi-document YAML stream, the form `kubectl apply -f` takes.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(crd)?);
    }
    Ok(out)
}

/// The file name a CRD is committed under in `crds/` (and the chart's copy).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Installs or updates every CRD by server-side apply and waits until each is
/// Established, so that its resources can be used right after.
pub async fn apply(client: &Client, timeout: Duration) -> Result<(), ApplyError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| ApplyError::Apply {
                name: name.clone(),
                source,
            })?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            _ => return Err(ApplyError::NotEstablished { name, timeout }),
        }
    }
    Ok(())
}
