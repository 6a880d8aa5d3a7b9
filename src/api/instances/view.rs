//! Instances as clients see them: Skyport's field names, plus Berth's state and
//! address. The schema of [`InstanceView`] is what `/api/openapi.json` documents.

use std::sync::Arc;

use kube::ResourceExt;
use serde::Serialize;

use super::super::AppState;
use crate::crd::{Instance, InstanceState, Node, Power, PowerState, ports_string};

/// The node of an instance, as clients see it inside the instance (no credentials).
#[derive(Clone, Debug, Hash, Serialize, utoipa::ToSchema)]
pub struct InstanceNode {
    id: String,
    name: Option<String>,
    address: Option<String>,
    port: Option<i32>,
    tags: Option<String>,
}

impl InstanceNode {
    /// Node `id` as an instance shows it; `node` is its Berth Node, if it exists.
    /// Only the Node's spec is read: its status (allocations, counts) changes with
    /// every deploy and shows nowhere in an instance.
    fn of(id: &str, node: Option<&Node>) -> Self {
        Self {
            id: id.to_owned(),
            name: node.map(|n| n.spec.display_name.clone()),
            address: node.map(|n| n.spec.address.clone()),
            port: node.and_then(|n| n.spec.port),
            tags: node.and_then(|n| n.spec.tags.clone()),
        }
    }
}

/// A fingerprint of what instance views read from `nodes` (in name order): it
/// changes when a view's node part would, and only then. A list build keeps an
/// instance's rendering while its Instance and this are unchanged; a Node's
/// version would not do, for the node controller writes its status with every
/// deploy, and every item would be rendered again during a deploy wave.
pub fn nodes_stamp(nodes: &[Arc<Node>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for node in nodes {
        InstanceNode::of(&node.name_any(), Some(node)).hash(&mut hasher);
    }
    hasher.finish()
}

/// An instance as clients see it (Skyport's field names). Its schema is what
/// `/api/openapi.json` documents.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[allow(non_snake_case)]
pub struct InstanceView {
    Id: String,
    Name: String,
    /// The owner's userId.
    User: String,
    Node: InstanceNode,
    Image: String,
    ImageName: Option<String>,
    /// MiB.
    Memory: i64,
    /// Cores.
    Cpu: f64,
    /// MiB.
    Disk: Option<i64>,
    /// `container:host` pairs.
    Ports: String,
    Primary: i32,
    /// `INSTALLING`, `READY` or `FAILED`.
    #[schema(value_type = String)]
    InternalState: &'static str,
    /// Berth's state: Pending, Installing, Running, Failed, Suspended.
    #[schema(value_type = String)]
    State: &'static str,
    /// Where players connect: node address and primary port.
    Address: Option<String>,
    /// What the game server is doing: Starting, Running, Stopping or Offline.
    #[schema(value_type = String)]
    Power: &'static str,
    /// What it was asked to do: Running, Stopped or Killed.
    #[schema(value_type = String)]
    DesiredPower: &'static str,
    /// Times it ended while meant to run.
    Crashes: i32,
    suspended: bool,
    Env: Vec<String>,
    ContainerId: Option<String>,
    VolumeId: String,
    CreatedAt: Option<String>,
}

impl InstanceView {
    /// Berth's state, as shown.
    pub fn state(&self) -> &'static str {
        self.State
    }
}

/// What the game server is doing, as panels say it: the status' word, or before
/// the controller has written one, what the desired power implies.
pub fn power_name(inst: &Instance) -> &'static str {
    let known = inst.status.as_ref().and_then(|s| s.power);
    match known {
        Some(PowerState::Starting) => "Starting",
        Some(PowerState::Running) => "Running",
        Some(PowerState::Stopping) => "Stopping",
        Some(PowerState::Offline) => "Offline",
        None if inst.spec.power == Power::Running && !inst.spec.suspended => "Starting",
        None => "Offline",
    }
}

/// The desired power's word.
pub fn desired_name(power: Power) -> &'static str {
    match power {
        Power::Running => "Running",
        Power::Stopped => "Stopped",
        Power::Killed => "Killed",
    }
}

fn state_name(state: Option<InstanceState>) -> &'static str {
    match state {
        Some(InstanceState::Pending) | None => "Pending",
        Some(InstanceState::Installing) => "Installing",
        Some(InstanceState::Running) => "Running",
        Some(InstanceState::Failed) => "Failed",
        Some(InstanceState::Suspended) => "Suspended",
    }
}

/// The client's view of an instance.
pub fn view(state: &AppState, inst: &Instance) -> InstanceView {
    let id = inst.name_any();
    let node: Option<Arc<Node>> = state.store.nodes.get(&inst.spec.node);
    let status = inst.status.as_ref();
    let primary_container = inst.spec.primary_container_port();
    let mut env: Vec<String> = inst
        .spec
        .variables
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("PRIMARY_PORT={primary_container}"));
    InstanceView {
        Name: inst.spec.display_name.clone(),
        User: inst.spec.user_id.clone(),
        Node: InstanceNode::of(&inst.spec.node, node.as_deref()),
        Image: inst.spec.image.clone(),
        ImageName: inst.spec.image_name.clone(),
        Memory: inst.spec.memory,
        Cpu: inst.spec.cpu,
        Disk: inst.spec.disk,
        Ports: ports_string(&inst.spec.ports),
        Primary: inst.spec.primary_port,
        InternalState: internal_state(status.and_then(|s| s.state)),
        State: state_name(status.and_then(|s| s.state)),
        Address: status.and_then(|s| s.address.clone()),
        Power: power_name(inst),
        DesiredPower: desired_name(inst.spec.power),
        Crashes: status.and_then(|s| s.crashes).unwrap_or(0),
        suspended: inst.spec.suspended,
        Env: env,
        ContainerId: status.and_then(|s| s.pod_name.clone()),
        VolumeId: id.clone(),
        CreatedAt: inst.creation_timestamp().map(|t| t.0.to_string()),
        Id: id,
    }
}

/// Skyport's `InternalState` of a Berth state.
pub fn internal_state(state: Option<InstanceState>) -> &'static str {
    match state {
        Some(InstanceState::Running | InstanceState::Suspended) => "READY",
        Some(InstanceState::Failed) => "FAILED",
        Some(InstanceState::Pending | InstanceState::Installing) | None => "INSTALLING",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, display: &str, allocated_memory: i64) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "Node",
                "metadata": { "name": name, "resourceVersion": allocated_memory.to_string() },
                "spec": { "displayName": display, "address": "10.0.0.1" },
                "status": { "allocated": { "memory": allocated_memory, "cpu": 0.0 }, "instances": 1 }
            }))
            .expect("node"),
        )
    }

    #[test]
    fn the_nodes_stamp_follows_what_views_show_not_node_status() {
        let stamp = |nodes: &[Arc<Node>]| nodes_stamp(nodes);
        let before = stamp(&[node("a", "A", 1), node("b", "B", 1)]);
        assert_eq!(
            before,
            stamp(&[node("a", "A", 2048), node("b", "B", 1)]),
            "a deploy's status write shows in no instance"
        );
        assert_ne!(
            before,
            stamp(&[node("a", "A2", 1), node("b", "B", 1)]),
            "renamed"
        );
        assert_ne!(before, stamp(&[node("a", "A", 1)]), "one gone");
        assert_ne!(
            before,
            stamp(&[node("a", "B", 1), node("b", "A", 1)]),
            "swapped"
        );
    }

    #[test]
    fn states_map_to_skyport() {
        assert_eq!(internal_state(None), "INSTALLING");
        assert_eq!(
            internal_state(Some(InstanceState::Installing)),
            "INSTALLING"
        );
        assert_eq!(internal_state(Some(InstanceState::Running)), "READY");
        assert_eq!(internal_state(Some(InstanceState::Failed)), "FAILED");
    }
}
