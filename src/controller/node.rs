//! The Node controller: each Berth Node's status from the Kubernetes node it stands
//! for (Ready → Online), that node's allocatable resources, and what the instances
//! placed on it have allocated.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::crd::{Instance, Node, NodeResources, NodeState, NodeStatus};
use crate::names::FIELD_MANAGER;
use crate::store::placement::{self, Placement};
use crate::store::{INDEX_NODE, Store};

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

/// The status of a Berth Node placed by `placement`, holding `instances` (pure).
pub fn node_status(node: &Node, placement: &Placement, instances: &[Arc<Instance>]) -> NodeStatus {
    let running: Vec<&Arc<Instance>> = instances.iter().filter(|i| !i.spec.suspended).collect();
    let allocated = NodeResources {
        cpu: (running.iter().map(|i| i.spec.cpu).sum::<f64>() * 1000.0).round() / 1000.0,
        memory: running.iter().map(|i| i.spec.memory).sum(),
    };
    let kube = placement.node();
    let (state, reason, message) = match (kube, placement.problem(&node.spec)) {
        (_, Some((reason, why))) => (NodeState::Unknown, Some(reason.to_owned()), Some(why)),
        (None, None) => (NodeState::Unknown, None, None),
        (Some(k), None) => match is_ready(k) {
            Some(true) => (NodeState::Online, None, None),
            Some(false) => (
                NodeState::Offline,
                Some("NotReady".to_owned()),
                Some(format!("Kubernetes node {} is not Ready", k.name_any())),
            ),
            None => (
                NodeState::Unknown,
                Some("ReadinessUnknown".to_owned()),
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
        reason,
        message,
        kubernetes_node: kube.map(|k| k.name_any()),
        capacity,
        allocated: Some(allocated),
        instances: i32::try_from(instances.len()).unwrap_or(i32::MAX),
        observed_generation: node.meta().generation,
    }
}

/// Reconciles one Berth Node: writes its status when it changed.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let store = &ctx.store;
    let placement = store.placement(&node);
    let instances = store.instances.by_index(INDEX_NODE, &node.name_any());
    let status = node_status(&node, &placement, &instances);
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
pub fn nodes_for_kube_node(store: &Store, kube: &KubeNode) -> Vec<ObjectRef<Node>> {
    store
        .nodes
        .state()
        .iter()
        .filter(|n| {
            let matched = n.status.as_ref().and_then(|s| s.kubernetes_node.as_deref());
            placement::concerns(&n.spec, matched, kube)
        })
        .map(|n| ObjectRef::from_obj(n.as_ref()))
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
    fn status_follows_readiness_and_sums_allocations() {
        let n = node("127.0.10.1", None);
        let instances = [
            instance(1024, 0.5, false),
            instance(2048, 1.25, false),
            instance(4096, 2.0, true),
        ];
        let on = |ready| Placement::On(kube_node("kwok-node-1", "127.0.10.1", ready));
        let s = node_status(&n, &on("True"), &instances);
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
        let s = node_status(&n, &on("False"), &instances);
        assert_eq!(s.state, Some(NodeState::Offline));
        assert_eq!(s.reason.as_deref(), Some("NotReady"));
        let missing = placement::resolve(&n.spec, &[]);
        let s = node_status(&n, &missing, &[]);
        assert_eq!((s.state, s.instances), (Some(NodeState::Unknown), 0));
        assert!(s.message.is_some_and(|m| m.contains("127.0.10.1")));
        assert_eq!(s.reason.as_deref(), Some(placement::REASON_MISSING));
    }

    #[test]
    fn a_node_whose_address_several_nodes_share_is_unknown_naming_them() {
        let n = node("127.0.0.1", None);
        let both = [
            kube_node("kwok-node-1", "127.0.0.1", "True"),
            kube_node("kwok-node-2", "127.0.0.1", "True"),
        ];
        let s = node_status(&n, &placement::resolve(&n.spec, &both), &[]);
        assert_eq!(s.state, Some(NodeState::Unknown));
        assert_eq!(s.reason.as_deref(), Some(placement::REASON_AMBIGUOUS));
        assert!(
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("kwok-node-1, kwok-node-2")),
            "{s:?}"
        );
        assert_eq!(s.kubernetes_node, None, "never pinned to the first match");
    }
}
