//! The Berth Node write protocols: create, and delete with its mark.
//!
//! A node holding instances cannot be deleted, and a deploy racing the delete of
//! its node must not leave an Instance on a node that is gone. The delete marks
//! the node, then asks the API server (not an informer) for its instances, then
//! deletes it; a deploy creates its Instance, then re-reads the node
//! (`deploy::node_survives`). Either the delete sees the Instance and gives up,
//! or the deploy sees the mark and waits for the outcome: exactly one wins.

use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::{INDEX_NODE, Store};
use crate::crd::{Node, NodeSpec};
use crate::names::{ANNOTATION_DELETING, FIELD_MANAGER, LABEL_NODE};

/// A deletion mark older than this is a leftover of a crash and is ignored.
const MARK_TTL_SECS: i64 = 30;

/// Why a node write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No node has this id (400 in the reference).
    #[error("Node not found")]
    NotFound,
    /// Instances remain on the node (400 in the reference).
    #[error("There are instances on the node")]
    HasInstances,
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

fn failed(action: &'static str) -> impl FnOnce(kube::Error) -> NodeError {
    move |source| NodeError::Api { action, source }
}

/// Registers a node under a fresh id.
pub async fn create(store: &Store, spec: NodeSpec) -> Result<Node, NodeError> {
    let id = uuid::Uuid::new_v4().to_string();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let created = store
        .node_api()
        .create(&params, &Node::new(&id, spec))
        .await
        .map_err(failed("create the node"))?;
    store.nodes.upsert(created.clone());
    tracing::info!(node = %id, "node created");
    Ok(created)
}

/// Whether a node delete is under way (a fresh deletion mark).
pub fn being_deleted(node: &Node) -> bool {
    node.annotations()
        .get(ANNOTATION_DELETING)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|t| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(t)
                .as_secs()
                < MARK_TTL_SECS
        })
}

async fn set_mark(store: &Store, id: &str, mark: Option<String>) -> Result<(), kube::Error> {
    let patch = json!({ "metadata": { "annotations": { ANNOTATION_DELETING: mark } } });
    store
        .node_api()
        .patch(id, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Deletes a node that holds no instance: mark, list from the API server, delete.
pub async fn delete(store: &Store, id: &str) -> Result<(), NodeError> {
    let node = store.nodes.get(id).ok_or(NodeError::NotFound)?;
    if store.instances.count_by_index(INDEX_NODE, id) > 0 {
        return Err(NodeError::HasInstances);
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    match set_mark(store, id, Some(now)).await {
        Ok(()) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(NodeError::NotFound),
        Err(e) => return Err(failed("mark the node for deletion")(e)),
    }
    let on_node = store
        .instance_api()
        .list(
            &ListParams::default()
                .labels(&format!("{LABEL_NODE}={id}"))
                .limit(1),
        )
        .await
        .map_err(failed("list the node's instances"))?;
    if !on_node.items.is_empty() {
        if let Err(e) = set_mark(store, id, None).await {
            tracing::warn!(node = %id, error = %e, "failed to clear a deletion mark; it expires by itself");
        }
        return Err(NodeError::HasInstances);
    }
    // Delete this very node (uid), not one re-created under the same name meanwhile.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: node.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let deleted = match store.node_api().delete(id, &params).await {
        Ok(either) => either.left().unwrap_or_else(|| (*node).clone()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            return Err(NodeError::NotFound);
        }
        Err(e) => return Err(failed("delete the node")(e)),
    };
    store.nodes.remove(&deleted);
    tracing::info!(node = %id, "node deleted");
    Ok(())
}
