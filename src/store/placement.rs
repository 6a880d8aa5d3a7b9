//! Which Kubernetes node a Berth Node stands for (pure). Both the REST API (host
//! ports are claimed per Kubernetes node) and the controllers (Pods are pinned to
//! it) decide it the same way, from the same watched Kubernetes nodes.
//!
//! `kubernetesNode`, when set, names the node. Otherwise `address` is matched
//! against every node's name and addresses; exactly one node must match. An
//! address that several nodes share (two nodes with one InternalIP, or
//! `127.0.0.1`) is ambiguous: Berth never guesses, since pinning to whichever
//! matched first puts game servers on the wrong machine.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::ResourceExt;

use crate::crd::NodeSpec;

/// Where a Berth Node's instances go.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// On this Kubernetes node.
    On(Arc<KubeNode>),
    /// Nowhere: no Kubernetes node matches (the message says what was looked for).
    Missing(String),
    /// Nowhere: several Kubernetes nodes match; their names, sorted.
    Ambiguous(Vec<String>),
}

/// Machine-readable reason of a Berth Node that has no Kubernetes node.
pub const REASON_MISSING: &str = "NoKubernetesNode";
/// Machine-readable reason of a Berth Node whose address matches several nodes.
pub const REASON_AMBIGUOUS: &str = "AmbiguousAddress";

impl Placement {
    /// The Kubernetes node, when exactly one matched.
    pub fn node(&self) -> Option<&Arc<KubeNode>> {
        match self {
            Self::On(n) => Some(n),
            _ => None,
        }
    }

    /// Why there is no Kubernetes node: a reason and a message naming what was
    /// looked for or the candidates.
    pub fn problem(&self, spec: &NodeSpec) -> Option<(&'static str, String)> {
        match self {
            Self::On(_) => None,
            Self::Missing(why) => Some((REASON_MISSING, why.clone())),
            Self::Ambiguous(names) => Some((
                REASON_AMBIGUOUS,
                format!(
                    "address {} matches {} Kubernetes nodes ({}); set kubernetesNode to the one this node stands for",
                    spec.address,
                    names.len(),
                    names.join(", ")
                ),
            )),
        }
    }
}

/// Whether `node` answers to `address` by name or by one of its addresses.
fn answers_to(node: &KubeNode, address: &str) -> bool {
    node.metadata.name.as_deref() == Some(address)
        || node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .is_some_and(|a| a.iter().any(|a| a.address == address))
}

/// The Kubernetes node `spec` stands for among `kube_nodes` (pure).
pub fn resolve(spec: &NodeSpec, kube_nodes: &[Arc<KubeNode>]) -> Placement {
    if let Some(name) = &spec.kubernetes_node {
        return match kube_nodes.iter().find(|n| n.name_any() == *name) {
            Some(n) => Placement::On(n.clone()),
            None => Placement::Missing(format!("Kubernetes node {name} does not exist")),
        };
    }
    let mut matching: Vec<&Arc<KubeNode>> = kube_nodes
        .iter()
        .filter(|n| answers_to(n, &spec.address))
        .collect();
    match matching.len() {
        0 => Placement::Missing(format!(
            "no Kubernetes node has the name or address {}",
            spec.address
        )),
        1 => Placement::On(matching.remove(0).clone()),
        _ => {
            let mut names: Vec<String> = matching.iter().map(|n| n.name_any()).collect();
            names.sort();
            Placement::Ambiguous(names)
        }
    }
}

/// Whether a change of Kubernetes node `kube` may change where a Berth Node with
/// `spec` (and `matched`, the Kubernetes node it was matched to) is placed.
pub fn concerns(spec: &NodeSpec, matched: Option<&str>, kube: &KubeNode) -> bool {
    let name = kube.name_any();
    spec.kubernetes_node.as_deref() == Some(name.as_str())
        || matched == Some(name.as_str())
        || (spec.kubernetes_node.is_none() && answers_to(kube, &spec.address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kube_node(name: &str, ip: &str) -> Arc<KubeNode> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name },
                "status": { "addresses": [{ "type": "InternalIP", "address": ip }, { "type": "Hostname", "address": name }] }
            }))
            .expect("kube node"),
        )
    }

    fn spec(address: &str, kubernetes_node: Option<&str>) -> NodeSpec {
        NodeSpec {
            display_name: "N".into(),
            tags: None,
            ram: None,
            disk: None,
            processor: None,
            address: address.into(),
            port: None,
            kubernetes_node: kubernetes_node.map(str::to_owned),
        }
    }

    fn name(p: &Placement) -> Option<String> {
        p.node().map(|n| n.name_any())
    }

    #[test]
    fn an_explicit_name_wins_else_exactly_one_match() {
        let kube = [
            kube_node("kwok-node-1", "127.0.10.1"),
            kube_node("kwok-node-2", "127.0.10.2"),
        ];
        assert_eq!(
            name(&resolve(&spec("127.0.10.2", None), &kube)).as_deref(),
            Some("kwok-node-2")
        );
        assert_eq!(
            name(&resolve(&spec("kwok-node-1", None), &kube)).as_deref(),
            Some("kwok-node-1")
        );
        assert_eq!(
            name(&resolve(&spec("127.0.10.2", Some("kwok-node-1")), &kube)).as_deref(),
            Some("kwok-node-1")
        );
        assert!(matches!(
            resolve(&spec("10.9.9.9", None), &kube),
            Placement::Missing(_)
        ));
        assert!(matches!(
            resolve(&spec("127.0.10.1", Some("gone")), &kube),
            Placement::Missing(_)
        ));
    }

    #[test]
    fn a_shared_address_is_ambiguous_and_names_the_candidates() {
        let kube = [
            kube_node("b-node", "127.0.0.1"),
            kube_node("a-node", "127.0.0.1"),
            kube_node("c-node", "10.0.0.3"),
        ];
        let p = resolve(&spec("127.0.0.1", None), &kube);
        assert_eq!(
            p,
            Placement::Ambiguous(vec!["a-node".into(), "b-node".into()])
        );
        let (reason, message) = p.problem(&spec("127.0.0.1", None)).expect("a problem");
        assert_eq!(reason, REASON_AMBIGUOUS);
        assert!(message.contains("a-node, b-node"), "{message}");
        // Naming the node settles it.
        assert_eq!(
            name(&resolve(&spec("127.0.0.1", Some("b-node")), &kube)).as_deref(),
            Some("b-node")
        );
        // A node whose name and Hostname address both match counts once.
        assert_eq!(
            name(&resolve(&spec("c-node", None), &kube)).as_deref(),
            Some("c-node")
        );
    }

    #[test]
    fn changes_concern_the_named_matched_or_matching_nodes() {
        let k = kube_node("kwok-node-1", "127.0.10.1");
        assert!(concerns(&spec("127.0.10.1", None), None, &k));
        assert!(concerns(&spec("x", Some("kwok-node-1")), None, &k));
        assert!(concerns(&spec("x", None), Some("kwok-node-1"), &k));
        assert!(!concerns(&spec("127.0.10.9", None), None, &k));
    }
}
