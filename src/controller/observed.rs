//! What the controller keeps of each instance Pod it watches: only what deciding
//! the Pod's fate ([`pod_action`]) and the Instance's status read. The Pods are
//! watched as this type, not as `k8s_openapi`'s `Pod`: that type holds every field
//! of the Pod API inline (about 2.4 KiB before any content, some 20 KiB for a
//! running Pod), and Berth watches one Pod per instance.
//!
//! [`pod_action`]: super::instance::pod_action

use k8s_openapi::api::core::v1::{ContainerStateWaiting, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use serde::Deserialize;

use super::pod::{
    ANNOTATION_POD_HASH, ANNOTATION_REINSTALL_OF, ANNOTATION_RESTART_OF, SERVER_CONTAINER,
};

/// A Pod as the controller sees it (the same JSON, fewer fields).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObservedPod {
    /// The Pod's metadata (name, uid, owner, annotations, deletion).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Where the Pod is placed.
    pub spec: Option<ObservedPodSpec>,
    /// How the Pod is doing.
    pub status: Option<ObservedPodStatus>,
    /// Berth's annotations ([`ANNOTATIONS_READ`], in that order), moved out of
    /// the metadata by [`ObservedPod::slim`]: a map of one entry still holds a
    /// whole B-tree node (~0.5 KiB).
    #[serde(skip)]
    kept_annotations: [Option<Box<str>>; 3],
    /// The game server's CPU limit in cores, read by [`ObservedPod::slim`] from
    /// the containers it then drops (whose limits map is another B-tree node).
    #[serde(skip)]
    kept_server_cpu: Option<f64>,
}

/// The part of a Pod's spec the controller reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedPodSpec {
    /// The node the scheduler placed the Pod on. (Not the node affinity that pins
    /// it: a Pod's placement never changes, and the name is all that is read.)
    pub node_name: Option<String>,
    /// The containers (only the game server's is kept, for its CPU).
    #[serde(default)]
    pub containers: Vec<ObservedContainerSpec>,
}

/// A container's name and resource limits.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObservedContainerSpec {
    /// Container name.
    pub name: String,
    /// Its resources (limits only are read).
    pub resources: Option<ObservedResources>,
}

/// Resource limits of a container.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObservedResources {
    /// Limits by resource name.
    pub limits: Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
}

/// The part of a Pod's status the controller reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedPodStatus {
    /// Pending, Running, Succeeded, Failed, Unknown.
    pub phase: Option<String>,
    /// Why the Pod is in this phase (e.g. Evicted).
    pub reason: Option<String>,
    /// Details of the reason.
    pub message: Option<String>,
    /// The node's address.
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
    /// PodScheduled and Ready (others are dropped by [`ObservedPod::slim`]).
    pub conditions: Option<Vec<ObservedCondition>>,
    /// The game server container.
    pub container_statuses: Option<Vec<ObservedContainer>>,
    /// The install step.
    pub init_container_statuses: Option<Vec<ObservedContainer>>,
}

/// A Pod condition without its timestamps (never read; `PodCondition` keeps
/// two parsed times and a generation inline).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObservedCondition {
    /// PodScheduled, Ready, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// Why, in one word (e.g. Unschedulable, ContainersNotReady).
    pub reason: Option<String>,
    /// Why, for people.
    pub message: Option<String>,
}

/// A container's name, why it waits, if it does, and how it last ended.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedContainer {
    /// Container name.
    pub name: String,
    /// Its state: whether it waits or has ended.
    pub state: Option<ObservedContainerState>,
    /// How the previous run of the container ended (a real kubelet says; kwok never restarts).
    pub last_state: Option<ObservedLastState>,
    /// How many times the kubelet restarted the container.
    #[serde(default)]
    pub restart_count: i32,
}

/// How a container's previous run ended.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObservedLastState {
    /// Set when it ended.
    pub terminated: Option<ObservedTermination>,
}

/// Why a container's run ended.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedTermination {
    /// The kubelet's reason (`OOMKilled`, `Error`, `Completed`).
    pub reason: Option<String>,
    /// The exit code.
    #[serde(default)]
    pub exit_code: i32,
}

impl ObservedContainer {
    /// How its latest finished run ended, as people read it: `OOMKilled (exit 137)`.
    /// That is the current state while the container waits to be started again
    /// (terminated), else the previous run.
    pub fn last_exit(&self) -> Option<String> {
        let t = self
            .terminated()
            .or_else(|| self.last_state.as_ref()?.terminated.as_ref())?;
        let reason = t.reason.as_deref().unwrap_or("Exited");
        Some(format!("{reason} (exit {})", t.exit_code))
    }

    /// How the container's current run ended, if it has.
    pub fn terminated(&self) -> Option<&ObservedTermination> {
        self.state.as_ref()?.terminated.as_ref()
    }
}

/// Whether a container waits or has ended, and why.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObservedContainerState {
    /// Set while the container waits (e.g. CrashLoopBackOff, ImagePullBackOff).
    pub waiting: Option<ContainerStateWaiting>,
    /// Set once the container has ended, until the kubelet starts it again.
    pub terminated: Option<ObservedTermination>,
}

impl Resource for ObservedPod {
    const API_VERSION: &'static str = Pod::API_VERSION;
    const GROUP: &'static str = Pod::GROUP;
    const KIND: &'static str = Pod::KIND;
    const VERSION: &'static str = Pod::VERSION;
    const URL_PATH_SEGMENT: &'static str = Pod::URL_PATH_SEGMENT;
    type Scope = NamespaceResourceScope;
}

impl Metadata for ObservedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Pod conditions the status is derived from.
const CONDITIONS_READ: [&str; 2] = ["PodScheduled", "Ready"];
/// Pod annotations the controller reads.
const ANNOTATIONS_READ: [&str; 3] = [
    ANNOTATION_POD_HASH,
    ANNOTATION_RESTART_OF,
    ANNOTATION_REINSTALL_OF,
];

impl ObservedPod {
    /// Drops what is never read: managed fields, labels (the watch selected by
    /// them already), annotations other than Berth's, containers (keeping the
    /// game server's CPU limit), conditions other than PodScheduled and Ready.
    pub fn slim(&mut self) {
        let meta = &mut self.metadata;
        meta.managed_fields = None;
        meta.labels = None;
        if let Some(mut all) = meta.annotations.take() {
            for (kept, key) in self.kept_annotations.iter_mut().zip(ANNOTATIONS_READ) {
                *kept = all.remove(key).map(String::into_boxed_str);
            }
        }
        self.kept_server_cpu = self.server_cpu();
        if let Some(spec) = self.spec.as_mut() {
            spec.containers = Vec::new();
        }
        if let Some(c) = self.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c.retain(|c| CONDITIONS_READ.contains(&c.type_.as_str()));
            c.shrink_to_fit();
        }
    }

    /// One of the annotations Berth puts on its Pods ([`ANNOTATIONS_READ`]).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        let kept = ANNOTATIONS_READ
            .iter()
            .position(|k| *k == key)
            .and_then(|i| self.kept_annotations[i].as_deref());
        kept.or_else(|| {
            let all = self.metadata.annotations.as_ref()?;
            all.get(key).map(String::as_str)
        })
    }

    /// The game server's CPU limit, in cores.
    pub fn server_cpu(&self) -> Option<f64> {
        if self.kept_server_cpu.is_some() {
            return self.kept_server_cpu;
        }
        let q = self
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == SERVER_CONTAINER)?
            .resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("cpu")?;
        super::node::cpu_cores(&q.0)
    }

    /// Whether the Pod has ended (its phase is Succeeded or Failed).
    pub fn ended(&self) -> bool {
        matches!(
            self.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    }

    /// The status of the container named `name`.
    pub fn container(&self, name: &str) -> Option<&ObservedContainer> {
        self.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_pod_as_the_api_server_sends_it() {
        let mut pod: ObservedPod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "a1b2c3d4", "uid": "u1", "labels": { "x": "y" },
                          "annotations": { ANNOTATION_POD_HASH: "2", "other": "z" },
                          "managedFields": [{ "manager": "berth" }] },
            "spec": { "nodeName": "kwok-node-1", "containers": [{ "name": "server", "image": "i", "resources": { "limits": { "cpu": "1500m", "memory": "1Gi" } } },
                                     { "name": "sidecar", "image": "j", "resources": { "limits": { "cpu": "2" } } }],
                      "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [
                          { "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["kwok-node-1"] }] }] } } } },
            "status": { "phase": "Running", "hostIP": "127.0.10.1", "podIP": "10.0.0.1", "qosClass": "Guaranteed",
                        "conditions": [{ "type": "Initialized", "status": "True" }, { "type": "Ready", "status": "True" },
                                       { "type": "PodScheduled", "status": "True" }],
                        "containerStatuses": [{ "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                                                "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off" } } }] }
        }))
        .expect("pod");
        pod.slim();
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("kwok-node-1"));
        let meta = &pod.metadata;
        assert!(meta.labels.is_none() && meta.managed_fields.is_none());
        assert!(meta.annotations.is_none(), "moved out of the map");
        assert_eq!(pod.annotation(ANNOTATION_POD_HASH), Some("2"));
        assert_eq!(pod.annotation("other"), None, "only Berth's stay");
        assert_eq!(
            pod.server_cpu(),
            Some(1.5),
            "kept from the dropped containers"
        );
        assert!(spec.containers.is_empty());
        let status = pod.status.as_ref().expect("status");
        assert_eq!(status.host_ip.as_deref(), Some("127.0.10.1"));
        let kept: Vec<&str> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(kept, ["Ready", "PodScheduled"]);
        let waiting = status.container_statuses.as_ref().expect("containers")[0]
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref());
        assert_eq!(waiting, Some("CrashLoopBackOff"));
    }
}
