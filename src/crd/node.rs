//! The Node resource: a machine of the panel's, standing for one Kubernetes node.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A node as the panel registered it. Berth places instances on the Kubernetes
/// node it stands for: `kubernetesNode` when set, else the one node whose name or
/// address equals `address` (never a guess among several).
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Node",
    plural = "nodes",
    shortname = "bnode",
    category = "berth",
    namespaced,
    status = "NodeStatus",
    derive = "PartialEq",
    doc = "A panel node hosting Berth instances. Its name is the node id the REST API shows.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Kubernetes node",
        type_ = "string",
        json_path = ".status.kubernetesNode"
    ),
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".status.instances"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Display name of the node, as the panel shows it.
    #[schemars(length(min = 1, max = 256))]
    pub display_name: String,
    /// Free-form tags, as the panel sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub tags: Option<String>,
    /// Memory of the node in MiB; when set, deploys may not allocate more in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ram: Option<i64>,
    /// Disk of the node in MiB, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub disk: Option<i64>,
    /// Processor description, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub processor: Option<String>,
    /// Address of the node: an IP address or host name. Players connect to it, and
    /// it is matched against the Kubernetes nodes' names and addresses.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// Port of the node's daemon in Skyport's model, kept for clients that show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Name of the Kubernetes node this node stands for. When unset it is found by
    /// matching `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub kubernetes_node: Option<String>,
}

/// What the controller last saw of the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Online when the Kubernetes node is Ready, Offline when it is not, Unknown when
    /// no Kubernetes node matches or several do (deploys to it are then refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NodeState>,
    /// Why the node is in its state, when it is not Online, in one word:
    /// NoKubernetesNode, AmbiguousAddress, NotReady or ReadinessUnknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the node is in its state, when it is not Online, for people (an
    /// ambiguous address names every Kubernetes node it matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Name of the Kubernetes node this node was matched to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_node: Option<String>,
    /// Allocatable resources of the Kubernetes node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeResources>,
    /// Resources the instances on this node are allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<NodeResources>,
    /// Number of instances on this node.
    #[serde(default)]
    pub instances: i32,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An amount of CPU and memory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    /// CPU in cores.
    pub cpu: f64,
    /// Memory in MiB.
    pub memory: i64,
}

/// Reachability of a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodeState {
    /// The Kubernetes node is Ready.
    Online,
    /// The Kubernetes node exists but is not Ready.
    Offline,
    /// No Kubernetes node matches, several do, or its readiness is unknown.
    Unknown,
}
