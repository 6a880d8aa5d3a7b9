//! The Instance resource: one game server, as a panel deployed it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired game server: what the REST API's deploy wrote. The controller turns
/// it into a Pod pinned to the Kubernetes node that `node` stands for.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Instance",
    plural = "instances",
    shortname = "inst",
    category = "berth",
    namespaced,
    status = "InstanceStatus",
    derive = "PartialEq",
    doc = "A game-server instance hosted by Berth. Its name is the instance id the REST API shows.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Power", type_ = "string", json_path = ".status.power"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address"),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "User", type_ = "string", json_path = ".spec.userId"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.ports.exists(p, p.hostPort == self.primaryPort)").message("primaryPort must be one of the instance's host ports"))]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    /// Display name of the instance, as the panel shows it.
    #[schemars(length(min = 1, max = 256))]
    pub display_name: String,

    /// userId of the user who owns the instance. Cannot be changed after creation.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("userId is immutable: an instance cannot change owner"))]
    pub user_id: String,

    /// Container image reference the game server runs, e.g. `ghcr.io/skyport/java:21`.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// Name of the catalog image this instance was deployed from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub image_name: Option<String>,

    /// Name of the Berth Node (in this namespace) the instance runs on. Cannot be
    /// changed after creation: delete and redeploy to move an instance.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("node is immutable: delete and redeploy the instance to move it"))]
    pub node: String,

    /// Memory in MiB. It is both the request and the limit of the game server.
    #[x_kube(validation = Rule::new("self >= 1").message("memory must be at least 1 MiB"))]
    pub memory: i64,

    /// CPU in cores (0.5 is half a core). It is both the request and the limit.
    #[x_kube(validation = Rule::new("self > 0.0").message("cpu must be greater than 0 cores"))]
    pub cpu: f64,

    /// Disk for the instance's data in MiB. When unset, the operator's default applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("disk must be at least 1 MiB"))]
    pub disk: Option<i64>,

    /// Ports the game server listens on, each exposed on TCP and UDP at a port of the node.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(p, self.filter(q, q.hostPort == p.hostPort).size() == 1)").message("host ports must be unique within an instance"))]
    pub ports: Vec<PortMapping>,

    /// The host port players connect to; must be one of `ports`' host ports. The game
    /// server sees the matching container port as `PRIMARY_PORT`.
    #[schemars(range(min = 1, max = 65535))]
    pub primary_port: i32,

    /// Values of the image's variables, passed to the game server as environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,

    /// A suspended instance keeps its resource and data but runs no Pod: the host's
    /// lock, which a power request cannot lift.
    #[serde(default)]
    pub suspended: bool,

    /// Whether the game server should run: Running (the default), Stopped (the
    /// image's StopCommand is typed into its console, it is given its stop timeout
    /// to exit by itself, then its Pod is deleted), or Killed (its Pod is deleted
    /// at once). Stopped and killed servers keep their data and host ports.
    #[serde(default)]
    pub power: Power,

    /// A restart is requested when this is later than `status.restartedAt`: the
    /// server is stopped gracefully and started in a new Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_requested_at: Option<Time>,

    /// A reinstall is requested when its time is later than `status.reinstalledAt`:
    /// the install step runs again (fetching the install files anew, or on an
    /// emptied data folder with `wipe`) in a new Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinstall: Option<Reinstall>,
}

/// Whether a game server should run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Power {
    /// A Pod runs the game server; a server that exits by itself is restarted.
    #[default]
    Running,
    /// Stopped gracefully: StopCommand, then the stop timeout, then the Pod deleted.
    Stopped,
    /// Stopped at once: the Pod deleted without a grace period.
    Killed,
}

/// A request to run the install step again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reinstall {
    /// When it was requested; it is done once `status.reinstalledAt` reaches it.
    pub requested_at: Time,
    /// Empty the data folder first (otherwise the data stays and only the install
    /// files are fetched again).
    #[serde(default)]
    pub wipe: bool,
}

/// The canonical port string of an instance (`container:host,...`), as Skyport shows it.
pub fn ports_string(ports: &[PortMapping]) -> String {
    ports
        .iter()
        .map(|p| format!("{}:{}", p.container_port, p.host_port))
        .collect::<Vec<_>>()
        .join(",")
}

impl InstanceSpec {
    /// The container side of the primary port: what the game server listens on,
    /// and what it sees as `PRIMARY_PORT`.
    pub fn primary_container_port(&self) -> i32 {
        self.ports
            .iter()
            .find(|p| p.host_port == self.primary_port)
            .map_or(self.primary_port, |p| p.container_port)
    }
}

/// One port of a game server: where it listens in the container and which port of
/// the node forwards to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port inside the container (1-65535).
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,
    /// Port on the node that players connect to (1-65535), on TCP and UDP.
    #[schemars(range(min = 1, max = 65535))]
    pub host_port: i32,
}

/// What the controller last saw of the instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Summary state: Pending, Installing, Running, Failed or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InstanceState>,
    /// Scheduled and Ready conditions, with the scheduler's or kubelet's reason when stuck.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Name of the Pod running the game server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Kubernetes node the Pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_node: Option<String>,
    /// Address players connect to: the node's address and the primary port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How many times the game server was restarted in its current Pod (it
    /// crashed, was killed, or ran out of memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i32>,
    /// How the game server's previous run ended, e.g. `OOMKilled (exit 137)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// What the game server is doing, in the words panels show: Starting, Running,
    /// Stopping or Offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerState>,
    /// How many times the game server ended while it was meant to run (crashed,
    /// was killed, ran out of memory, or exited by itself), over all its Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashes: Option<i32>,
    /// The last restart request done (see `spec.restartRequestedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<Time>,
    /// The last reinstall request done (see `spec.reinstall`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinstalled_at: Option<Time>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What a game server is doing, as panels say it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PowerState {
    /// Its Pod is being made, installed or started.
    Starting,
    /// It runs.
    Running,
    /// It was asked to stop and has not yet.
    Stopping,
    /// No game server process runs (stopped, killed, suspended, or not placed).
    Offline,
}

/// Summary state of an instance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InstanceState {
    /// Waiting for a Pod, a node or the scheduler.
    Pending,
    /// The Pod is placed and its install step or image pull is under way.
    Installing,
    /// The game server is running.
    Running,
    /// The game server cannot run; the conditions say why.
    Failed,
    /// Suspended by the panel: no Pod runs.
    Suspended,
}
