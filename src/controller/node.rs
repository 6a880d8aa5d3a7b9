//! The Node controller: each Berth Node's status from the Kubernetes node it stands
//! for (Ready → Online), that node's allocatable resources, and what the instances
//! placed on it have allocated.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::crd::{Instance, Node, NodeResources, NodeSpec, NodeState, NodeStatus};
use crate::names::FIELD_MANAGER;

/// Parses a CPU quantity (`2`, `500m`, `1.5`) into cores.
pub fn cpu_cores(q: &str) -> Option<f64> {
    let q = q.trim();
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => q.parse::<f64>().ok(),
    }
}

/// Parses a memory quantity (`256Gi`, `1G`, `1048576Ki`, `123456789`) into MiB.
pub fn memory_mib(q: &str) -> Option<i64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        _ => return None,
    };
    Some((n * factor / (1024.0 * 1024.0)).floor() as i64)
}

/// The Kubernetes node a Berth Node stands for: the named one when `kubernetesNode`
/// is set, else the one whose name or one of whose addresses equals `address`.
pub fn resolve<'a>(spec: &NodeSpec, kube_nodes: &'a [Arc<KubeNode>]) -> Option<&'a Arc<KubeNode>> {
    if let Some(name) = &spec.kubernetes_node {
        return kube_nodes.iter().find(|n| n.name_any() == *name);
    }
    let by_name = kube_nodes.iter().find(|n| n.name_any() == spec.address);
    by_name.or_else(|| {
        kube_nodes.iter().find(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .is_some_and(|a| a.iter().any(|a| a.address == spec.address))
        })
    })
}

/// Whether a Kubernetes node is Ready (None: it does not say).
pub fn is_ready(node: &KubeNode) -> Option<bool> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    match ready.status.as_str() {
        "True" => Some(true),
        "False" => Some(false),
        _ => None,
    }
}

/// The status of a Berth Node.
pub fn node_status(
    node: &Node,
    kube: Option<&KubeNode>,
    instances: &[Arc<Instance>],
) -> NodeStatus {
    let id = node.name_any();
    let mine: Vec<&Arc<Instance>> = instances.iter().filter(|i| i.spec.node == id).collect();
    let running: Vec<&&Arc<Instance>> = mine.iter().filter(|i| !i.spec.suspended).collect();
    let allocated = NodeResources {
        cpu: (running.iter().map(|i| i.spec.cpu).sum::<f64>() * 1000.0).round() / 1000.0,
        memory: running.iter().map(|i| i.spec.memory).sum(),
    };
    let (state, message) = match kube {
        None => (
            NodeState::Unknown,
            Some(match &node.spec.kubernetes_node {
                Some(n) => format!("Kubernetes node {n} does not exist"),
                None => format!(
                    "no Kubernetes node has the name or address {}",
                    node.spec.address
                ),
            }),
        ),
        Some(k) => match is_ready(k) {
            Some(true) => (NodeState::Online, None),
            Some(false) => (
                NodeState::Offline,
                Some(format!("Kubernetes node {} is not Ready", k.name_any())),
            ),
            None => (
                NodeState::Unknown,
                Some(format!(
                    "Kubernetes node {} reports no readiness",
                    k.name_any()
                )),
            ),
        },
    };
    let capacity = kube
        .and_then(|k| k.status.as_ref()?.allocatable.as_ref())
        .map(|a| NodeResources {
            cpu: a
                .get("cpu")
                .and_then(|q| cpu_cores(&q.0))
                .unwrap_or_default(),
            memory: a
                .get("memory")
                .and_then(|q| memory_mib(&q.0))
                .unwrap_or_default(),
        });
    NodeStatus {
        state: Some(state),
        message,
        kubernetes_node: kube.map(|k| k.name_any()),
        capacity,
        allocated: Some(allocated),
        instances: i32::try_from(mine.len()).unwrap_or(i32::MAX),
        observed_generation: node.meta().generation,
    }
}

/// Reconciles one Berth Node: writes its status when it changed.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let kube_nodes = ctx.kube_nodes.state();
    let kube = resolve(&node.spec, &kube_nodes);
    let status = node_status(&node, kube.map(|k| k.as_ref()), &ctx.instances.state());
    if node.status.as_ref() != Some(&status) {
        let api: Api<Node> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let patch = json!({ "apiVersion": "berth.dev/v1alpha1", "kind": "Node", "status": status });
        api.patch_status(
            &node.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::PatchNodeStatus)?;
    }
    Ok(Action::await_change())
}

/// Which Berth Nodes a change of a Kubernetes node concerns.
pub fn nodes_for_kube_node(
    nodes: &Store<Node>,
    kube: &KubeNode,
) -> Vec<kube::runtime::reflector::ObjectRef<Node>> {
    let name = kube.name_any();
    let addresses: Vec<String> = kube
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| a.iter().map(|a| a.address.clone()).collect())
        .unwrap_or_default();
    nodes
        .state()
        .iter()
        .filter(|n| {
            n.spec.kubernetes_node.as_deref() == Some(name.as_str())
                || n.spec.address == name
                || addresses.contains(&n.spec.address)
                || n.status.as_ref().and_then(|s| s.kubernetes_node.as_deref())
                    == Some(name.as_str())
        })
        .map(|n| kube::runtime::reflector::ObjectRef::from_obj(n.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kube_node(name: &str, ip: &str, ready: &str) -> Arc<KubeNode> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name },
                "status": {
                    "addresses": [{ "type": "InternalIP", "address": ip }, { "type": "Hostname", "address": name }],
                    "allocatable": { "cpu": "64", "memory": "256Gi", "pods": "110" },
                    "conditions": [{ "type": "Ready", "status": ready }]
                }
            }))
            .expect("kube node"),
        )
    }

    fn node(address: &str, kubernetes_node: Option<&str>) -> Node {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Node",
            "metadata": { "name": "n1", "generation": 1 },
            "spec": { "displayName": "N", "address": address, "kubernetesNode": kubernetes_node }
        }))
        .expect("node")
    }

    fn instance(memory: i64, cpu: f64, suspended: bool) -> Arc<Instance> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "metadata": { "name": "i" },
                "spec": { "displayName": "x", "userId": "u", "image": "i", "node": "n1", "memory": memory, "cpu": cpu,
                          "ports": [{ "containerPort": 1, "hostPort": 1 }], "primaryPort": 1, "suspended": suspended }
            }))
            .expect("instance"),
        )
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_cores("500m"), Some(0.5));
        assert_eq!(cpu_cores("64"), Some(64.0));
        assert_eq!(memory_mib("256Gi"), Some(262_144));
        assert_eq!(memory_mib("1048576Ki"), Some(1024));
        assert_eq!(memory_mib("1G"), Some(953));
        assert_eq!(memory_mib("1073741824"), Some(1024));
        assert_eq!(memory_mib("lots"), None);
    }

    #[test]
    fn nodes_resolve_by_explicit_name_then_name_then_address() {
        let kube = [
            kube_node("kwok-node-1", "127.0.10.1", "True"),
            kube_node("kwok-node-2", "127.0.10.2", "True"),
        ];
        let name = |n: Option<&Arc<KubeNode>>| n.map(|n| n.name_any());
        assert_eq!(
            name(resolve(&node("127.0.10.2", None).spec, &kube)).as_deref(),
            Some("kwok-node-2")
        );
        assert_eq!(
            name(resolve(&node("kwok-node-1", None).spec, &kube)).as_deref(),
            Some("kwok-node-1")
        );
        assert_eq!(
            name(resolve(
                &node("127.0.10.2", Some("kwok-node-1")).spec,
                &kube
            ))
            .as_deref(),
            Some("kwok-node-1")
        );
        assert_eq!(name(resolve(&node("10.9.9.9", None).spec, &kube)), None);
        assert_eq!(
            name(resolve(&node("127.0.10.1", Some("gone")).spec, &kube)),
            None
        );
    }

    #[test]
    fn status_follows_readiness_and_sums_allocations() {
        let n = node("127.0.10.1", None);
        let instances = [
            instance(1024, 0.5, false),
            instance(2048, 1.25, false),
            instance(4096, 2.0, true),
        ];
        let s = node_status(
            &n,
            Some(&kube_node("kwok-node-1", "127.0.10.1", "True")),
            &instances,
        );
        assert_eq!(s.state, Some(NodeState::Online));
        assert_eq!(s.instances, 3);
        assert_eq!(
            s.allocated,
            Some(NodeResources {
                cpu: 1.75,
                memory: 3072
            }),
            "suspended instances hold nothing"
        );
        assert_eq!(
            s.capacity,
            Some(NodeResources {
                cpu: 64.0,
                memory: 262_144
            })
        );
        let s = node_status(
            &n,
            Some(&kube_node("kwok-node-1", "127.0.10.1", "False")),
            &instances,
        );
        assert_eq!(s.state, Some(NodeState::Offline));
        let s = node_status(&n, None, &[]);
        assert_eq!((s.state, s.instances), (Some(NodeState::Unknown), 0));
        assert!(s.message.is_some_and(|m| m.contains("127.0.10.1")));
    }
}
