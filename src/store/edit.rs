//! The edit write protocol: change any of a deployed instance's fields, checked
//! exactly as a deploy is checked (catalog, variables, ports, node memory), and
//! made atomically:
//!
//! 1. **Check** the merged spec against the informers ([`next_spec`]).
//! 2. **Claim** the host ports it adds; a taken one fails the edit, and the claims
//!    made so far are released: nothing changed.
//! 3. **Write** the changed fields in one JSON merge patch that carries the
//!    resourceVersion checked against: an Instance changed meanwhile refuses it
//!    (409), and the new claims are released.
//! 4. **Release** the host ports it gave up.
//!
//! The controller rolls the change out: CPU in place (the Pod `resize`
//! subresource), anything else that shapes the Pod (image, memory, disk, ports,
//! variables) by a graceful stop and a new Pod. Memory is not resized in place:
//! game servers size their heap from `SERVER_MEMORY` when they start, so a larger
//! limit would go unused until a restart, and a smaller one could kill them.

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use super::claims::{ClaimKind, host_port_key};
use super::deploy::{self, DeployError};
use super::{INDEX_NODE, Store};
use crate::controller::events::{EventType, Events, Happening};
use crate::crd::{Instance, InstanceSpec, PortMapping};
use crate::names::FIELD_MANAGER;

/// The fields an edit changes (absent: unchanged), parsed by the API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EditRequest {
    /// Display name.
    pub name: Option<String>,
    /// MiB.
    pub memory: Option<i64>,
    /// Cores.
    pub cpu: Option<f64>,
    /// MiB; may only grow.
    pub disk: Option<i64>,
    /// Another catalog image (of the same entry or another), by `Image`,
    /// `AltImages`, `Id` or `Name`.
    pub image: Option<String>,
    /// The catalog entry's name, tried when `image` names nothing.
    pub image_name: Option<String>,
    /// The whole new port list.
    pub ports: Option<Vec<PortMapping>>,
    /// The primary host port (must be one of the ports).
    pub primary_port: Option<i32>,
    /// The variables as sent (the catalog's defaults fill the rest).
    pub variables: Option<BTreeMap<String, String>>,
}

impl EditRequest {
    /// Whether it asks for anything.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why an edit did not happen (and changed nothing).
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No Instance has this id (400 in the reference).
    #[error("Instance not found")]
    NotFound,
    /// The edit cannot be made as asked (400); the message names the problem.
    #[error("{0}")]
    Invalid(String),
    /// The Instance changed while the edit was checked (409); nothing was written.
    #[error("The instance changed meanwhile; try again")]
    Changed,
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

impl From<DeployError> for EditError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Api { action, source } => Self::Api { action, source },
            other => Self::Invalid(other.to_string()),
        }
    }
}

fn invalid(message: impl Into<String>) -> EditError {
    EditError::Invalid(message.into())
}

/// The spec after the edit, checked against the informers as a deploy is.
pub fn next_spec(
    store: &Store,
    current: &Instance,
    req: &EditRequest,
) -> Result<InstanceSpec, EditError> {
    let mut next = current.spec.clone();
    if let Some(name) = &req.name {
        next.display_name = name.clone();
    }
    if let Some(cpu) = req.cpu {
        next.cpu = cpu;
    }
    if let Some(disk) = req.disk {
        if current.spec.disk.is_some_and(|d| disk < d) {
            return Err(invalid(format!(
                "disk can only grow: {} MiB now, {disk} MiB asked",
                current.spec.disk.unwrap_or_default()
            )));
        }
        next.disk = Some(disk);
    }
    // (Growing a volume claim is checked against its storage class in `edit`.)
    // The catalog entry: the one asked for, else the one it runs.
    let reference = req.image.as_deref().unwrap_or(&current.spec.image);
    let found = store
        .catalog
        .find(reference)
        .or_else(|| {
            req.image_name
                .as_deref()
                .and_then(|n| store.catalog.find(n))
        })
        .or_else(|| {
            req.image
                .is_none()
                .then(|| {
                    current
                        .spec
                        .image_name
                        .as_deref()
                        .and_then(|n| store.catalog.find(n))
                })
                .flatten()
        });
    match (&req.image, found) {
        (Some(_), None) => {
            return Err(invalid(format!(
                "Image not found in the catalog: {reference}"
            )));
        }
        (_, Some((image, container_image))) => {
            if req.image.is_some() {
                next.image = container_image;
                next.image_name = Some(image.name.clone());
            }
            if req.image.is_some() || req.variables.is_some() {
                let given = req
                    .variables
                    .clone()
                    .unwrap_or_else(|| current.spec.variables.clone());
                next.variables = deploy::effective_variables(&image.variables, given)?;
            }
        }
        (None, None) => {
            if let Some(v) = &req.variables {
                next.variables = v.clone();
            }
        }
    }
    if let Some(ports) = &req.ports {
        next.ports = ports.clone();
    }
    if let Some(primary) = req.primary_port {
        next.primary_port = primary;
    }
    if !next.ports.iter().any(|p| p.host_port == next.primary_port) {
        return Err(invalid(format!(
            "primary port {} is not one of the instance's ports",
            next.primary_port
        )));
    }
    if let Some(memory) = req.memory {
        next.memory = memory;
        memory_fits(store, current, memory)?;
    }
    Ok(next)
}

/// Whether `memory` fits on the instance's node with the others already there.
fn memory_fits(store: &Store, current: &Instance, memory: i64) -> Result<(), EditError> {
    let Some(node) = store.nodes.get(&current.spec.node) else {
        return Ok(());
    };
    let Some(ram) = node.spec.ram.filter(|r| *r > 0) else {
        return Ok(());
    };
    let others: i64 = store
        .instances
        .by_index(INDEX_NODE, &current.spec.node)
        .iter()
        .filter(|i| i.metadata.name != current.metadata.name)
        .map(|i| i.spec.memory)
        .sum();
    if others + memory > ram {
        return Err(invalid(format!(
            "Not enough memory on node {}: {} MiB free, {memory} MiB requested",
            current.spec.node,
            (ram - others).max(0)
        )));
    }
    Ok(())
}

/// The spec fields that differ, as a merge patch (pure).
pub fn changes(current: &InstanceSpec, next: &InstanceSpec) -> Map<String, Value> {
    let (Ok(Value::Object(old)), Ok(Value::Object(new))) =
        (serde_json::to_value(current), serde_json::to_value(next))
    else {
        return Map::new();
    };
    let mut out = Map::new();
    for (k, v) in &new {
        if old.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

/// What an edit changed, for people: `memory 1024 -> 2048 MiB; cpu 1 -> 2 cores`.
pub fn describe(current: &InstanceSpec, next: &InstanceSpec) -> String {
    let mut said = Vec::new();
    if current.memory != next.memory {
        said.push(format!("memory {} -> {} MiB", current.memory, next.memory));
    }
    if current.cpu != next.cpu {
        said.push(format!("cpu {} -> {} cores", current.cpu, next.cpu));
    }
    if current.disk != next.disk {
        said.push(format!(
            "disk {} -> {} MiB",
            current
                .disk
                .map_or_else(|| "default".to_owned(), |d| d.to_string()),
            next.disk.unwrap_or_default()
        ));
    }
    if current.image != next.image {
        said.push(format!("image {} -> {}", current.image, next.image));
    }
    if current.ports != next.ports || current.primary_port != next.primary_port {
        said.push(format!(
            "ports {} -> {}",
            crate::crd::ports_string(&current.ports),
            crate::crd::ports_string(&next.ports)
        ));
    }
    if current.variables != next.variables {
        said.push("variables".to_owned());
    }
    if current.display_name != next.display_name {
        said.push(format!(
            "name {:?} -> {:?}",
            current.display_name, next.display_name
        ));
    }
    said.join("; ")
}

/// Edits Instance `id` (see the module's steps); returns it as written.
pub async fn edit(
    store: &Store,
    events: &Events,
    id: &str,
    req: &EditRequest,
) -> Result<Instance, EditError> {
    let current = store.instances.get(id).ok_or(EditError::NotFound)?;
    let next = next_spec(store, &current, req)?;
    let patch = changes(&current.spec, &next);
    if patch.is_empty() {
        return Ok((*current).clone());
    }
    if next.disk != current.spec.disk {
        disk_can_grow(store).await?;
    }
    let old_hosts: Vec<i32> = current.spec.ports.iter().map(|p| p.host_port).collect();
    let added: Vec<PortMapping> = next
        .ports
        .iter()
        .filter(|p| !old_hosts.contains(&p.host_port))
        .cloned()
        .collect();
    let kube_node = kube_node_of(store, &current)?;
    if !added.is_empty() {
        deploy::ports_free(store, &current.spec.node, &kube_node, &added, Some(id))?;
        if let Err(e) = deploy::claim_these(store, &current, &kube_node, &added).await {
            release(store, &current, &kube_node, &added).await;
            return Err(e.into());
        }
    }
    let written = match write(store, &current, patch).await {
        Ok(w) => w,
        Err(e) => {
            release(store, &current, &kube_node, &added).await;
            return Err(e);
        }
    };
    let dropped: Vec<PortMapping> = current
        .spec
        .ports
        .iter()
        .filter(|p| !next.ports.iter().any(|q| q.host_port == p.host_port))
        .cloned()
        .collect();
    release(store, &current, &kube_node, &dropped).await;
    store.instances.upsert(written.clone());
    let what = describe(&current.spec, &next);
    tracing::info!(instance = %id, changes = %what, "instance edited");
    events.publish(
        written.object_ref(&()),
        Happening::new(EventType::Normal, "Edited", format!("Edited: {what}")),
    );
    Ok(written)
}

/// Whether instances' volume claims may grow: always for emptyDir volumes (their
/// size limit changes with the next Pod), else as the storage class allows.
async fn disk_can_grow(store: &Store) -> Result<(), EditError> {
    let Some(class) = store.storage_class.as_deref() else {
        return Ok(());
    };
    let classes: kube::Api<k8s_openapi::api::storage::v1::StorageClass> =
        kube::Api::all(store.client.clone());
    let found = classes
        .get_opt(class)
        .await
        .map_err(|source| EditError::Api {
            action: "read the storage class",
            source,
        })?;
    if found.and_then(|c| c.allow_volume_expansion) == Some(true) {
        Ok(())
    } else {
        Err(invalid(format!(
            "disk cannot grow: storage class {class} does not allow volume expansion"
        )))
    }
}

/// The Kubernetes node whose port space the instance's host ports are in.
fn kube_node_of(store: &Store, inst: &Instance) -> Result<String, EditError> {
    let node = store
        .nodes
        .get(&inst.spec.node)
        .ok_or_else(|| invalid(format!("Node not found: {}", inst.spec.node)))?;
    store
        .placement(&node)
        .node()
        .map(|k| k.name_any())
        .ok_or_else(|| {
            invalid(format!(
                "Node {} has no Kubernetes node to run on",
                inst.spec.node
            ))
        })
}

/// Tries of the write while only the status moves under it.
const WRITE_TRIES: usize = 5;

/// One merge patch of the changed fields, guarded by a resourceVersion. The edit
/// was checked against the spec of `current`: when the guard fails but the spec is
/// the same (its generation unchanged: only the controller's status moved), the
/// write is tried again on the fresh version; another spec is a 409.
async fn write(
    store: &Store,
    current: &Instance,
    spec: Map<String, Value>,
) -> Result<Instance, EditError> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let api = store.instance_api();
    let name = current.name_any();
    let mut version = current.resource_version();
    for _ in 0..WRITE_TRIES {
        let patch = json!({
            "metadata": { "resourceVersion": version },
            "spec": spec,
        });
        match api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(w) => return Ok(w),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let fresh = match api.get_opt(&name).await {
                    Ok(Some(fresh)) => fresh,
                    Ok(None) => return Err(EditError::NotFound),
                    Err(source) => {
                        return Err(EditError::Api {
                            action: "read the instance",
                            source,
                        });
                    }
                };
                if fresh.metadata.generation != current.metadata.generation
                    || fresh.uid() != current.uid()
                {
                    return Err(EditError::Changed);
                }
                version = fresh.resource_version();
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Err(EditError::NotFound),
            Err(source) => {
                return Err(EditError::Api {
                    action: "edit the instance",
                    source,
                });
            }
        }
    }
    Err(EditError::Changed)
}

/// Releases `ports`' claims held by `inst`.
async fn release(store: &Store, inst: &Instance, kube_node: &str, ports: &[PortMapping]) {
    let uid = inst.uid().unwrap_or_default();
    for p in ports {
        store
            .claims
            .release(
                ClaimKind::HostPort,
                &host_port_key(kube_node, p.host_port),
                &uid,
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        serde_json::from_value(
            json!({ "displayName": "x", "userId": "u", "image": "i", "node": "n", "memory": 1024,
            "cpu": 1.0, "ports": [{ "containerPort": 1, "hostPort": 1 }], "primaryPort": 1 }),
        )
        .expect("spec")
    }

    #[test]
    fn only_changed_fields_are_written_and_told() {
        let current = spec();
        let mut next = current.clone();
        assert!(changes(&current, &next).is_empty());
        next.memory = 2048;
        next.cpu = 2.0;
        let patch = changes(&current, &next);
        assert_eq!(Value::Object(patch), json!({ "memory": 2048, "cpu": 2.0 }));
        assert_eq!(
            describe(&current, &next),
            "memory 1024 -> 2048 MiB; cpu 1 -> 2 cores"
        );
    }
}
