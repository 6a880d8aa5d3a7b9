//! An Instance's status as a pure function of what the controller observed: its
//! Pod, its node, and whether a Pod could be built at all. Conditions keep their
//! lastTransitionTime while their status holds, so an unchanged world yields an
//! identical status and the controller writes nothing.

use super::observed::{ObservedCondition, ObservedContainer, ObservedPod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::pod::{ANNOTATION_REINSTALL_OF, ANNOTATION_RESTART_OF};
use crate::crd::{Instance, InstanceState, InstanceStatus, Power, PowerState};

/// Condition type: the Pod is placed on its node.
pub const SCHEDULED: &str = "Scheduled";
/// Condition type: the game server is running and ready.
pub const READY: &str = "Ready";

/// Ready reason: the game server crashed again and the kubelet waits before
/// starting it (the kubelet's own word for it).
const CRASH_LOOP: &str = "CrashLoopBackOff";

/// Container waiting reasons that mean the game server cannot run until something changes.
const FAILING: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    CRASH_LOOP,
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// What the controller saw while reconciling one Instance.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    /// The Instance's Pod, if it exists.
    pub pod: Option<&'a ObservedPod>,
    /// Why no Pod can be placed yet (no Berth Node, no matching Kubernetes node), if so.
    pub unplaceable: Option<(&'static str, String)>,
    /// Why the Instance cannot run as specified (e.g. a bad catalog entry), if so.
    pub invalid: Option<String>,
    /// The Kubernetes node the Instance is pinned to, when known.
    pub kube_node: Option<String>,
    /// Whether that node is Ready (None: unknown).
    pub kube_node_ready: Option<bool>,
    /// The address of the Berth Node (used when the Pod reports no host IP).
    pub node_address: Option<String>,
    /// Whether a graceful stop of the server is under way.
    pub stopping: bool,
    /// Whether the server just ended while it was meant to run (its Pod was removed).
    pub crashed: bool,
}

struct Cond {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

fn cond(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Cond {
    Cond {
        type_,
        ok,
        reason: reason.to_owned(),
        message: message.into(),
    }
}

fn pod_condition<'a>(pod: &'a ObservedPod, type_: &str) -> Option<&'a ObservedCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The first container (init containers first) that is failing: stuck with a
/// failing waiting reason, or crashed and waiting to be started again.
fn failing_container(pod: &ObservedPod) -> Option<(String, String, bool)> {
    let status = pod.status.as_ref()?;
    let init = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|c| (c, true));
    let main = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| (c, false));
    let going = pod.metadata.deletion_timestamp.is_some();
    init.chain(main).find_map(|(c, is_init)| {
        let (reason, message) = stuck_waiting(c).or_else(|| (!going).then(|| crashed(c))?)?;
        Some((reason, message, is_init))
    })
}

/// A container waiting with one of the [`FAILING`] reasons.
fn stuck_waiting(c: &ObservedContainer) -> Option<(String, String)> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.clone()?;
    if !FAILING.contains(&reason.as_str()) {
        return None;
    }
    let mut message = waiting
        .message
        .clone()
        .unwrap_or_else(|| format!("container {} is {reason}", c.name));
    // A crash loop's own message says only "back-off"; why it crashed is
    // in the previous run's termination.
    if let Some(exit) = c.last_exit() {
        message = format!(
            "last exit {exit} after {} restarts; {message}",
            c.restart_count
        );
    }
    Some((reason, message))
}

/// A container that crashed again and waits out the kubelet's back-off before its
/// next start. The waiting reason CrashLoopBackOff cannot be waited for: the
/// kubelet syncs a Pod in back-off again only when the back-off ends (pod_workers
/// requeues at its expiry, Kubernetes 1.36), so that reason is reported in the
/// instant before the restart and the container reads `terminated` for the whole
/// back-off. A first crash is not one: the kubelet starts it again at once (the
/// Crashed Event tells it). A Pod being deleted is a stop or a restart, not a crash.
fn crashed(c: &ObservedContainer) -> Option<(String, String)> {
    let failed = c.terminated().is_some_and(|t| t.exit_code != 0);
    (failed && c.restart_count > 0).then(|| {
        let exit = c.last_exit().unwrap_or_default();
        let n = c.restart_count;
        let message = format!("last exit {exit} after {n} restarts; waiting before the next start");
        (CRASH_LOOP.to_owned(), message)
    })
}

/// Summary of a Pod's situation: state and the two conditions.
fn from_pod(pod: &ObservedPod, obs: &Observed) -> (InstanceState, Cond, Cond) {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if matches!(phase, "Failed" | "Succeeded") {
        let reason = status
            .and_then(|s| s.reason.clone())
            .unwrap_or_else(|| "PodFailed".into());
        let message = status
            .and_then(|s| s.message.clone())
            .unwrap_or_else(|| format!("the Pod ended ({phase})"));
        return (
            InstanceState::Failed,
            cond(
                SCHEDULED,
                node.is_some(),
                "Scheduled",
                format!("placed on {}", node.unwrap_or_default()),
            ),
            cond(
                READY,
                false,
                &reason,
                format!("{message}; the Pod is being recreated"),
            ),
        );
    }
    let Some(node) = node else {
        // Not placed: the scheduler says why in PodScheduled.
        let (reason, message) = pod_condition(pod, "PodScheduled")
            .filter(|c| c.status == "False")
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                    c.message.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_else(|| ("Scheduling".into(), "waiting for the scheduler".into()));
        return (
            InstanceState::Pending,
            cond(SCHEDULED, false, &reason, message),
            cond(
                READY,
                false,
                "NotScheduled",
                "the Pod is not placed on a node yet",
            ),
        );
    };
    let scheduled = cond(SCHEDULED, true, "Scheduled", format!("placed on {node}"));
    if obs.kube_node_ready == Some(false) {
        return (
            InstanceState::Pending,
            scheduled,
            cond(
                READY,
                false,
                "NodeNotReady",
                format!("Kubernetes node {node} is not Ready"),
            ),
        );
    }
    if let Some((reason, message, is_init)) = failing_container(pod) {
        let message = if is_init {
            format!("install step: {message}")
        } else {
            message
        };
        return (
            InstanceState::Failed,
            scheduled,
            cond(READY, false, &reason, message),
        );
    }
    match pod_condition(pod, "Ready") {
        Some(c) if c.status == "True" => (
            InstanceState::Running,
            scheduled,
            cond(READY, true, "Running", "the game server is running"),
        ),
        Some(c) if phase == "Running" => (
            InstanceState::Installing,
            scheduled,
            cond(
                READY,
                false,
                c.reason.as_deref().unwrap_or("ContainersNotReady"),
                c.message
                    .clone()
                    .unwrap_or_else(|| "the game server is starting".into()),
            ),
        ),
        _ => (
            InstanceState::Installing,
            scheduled,
            cond(
                READY,
                false,
                "Installing",
                "installing and pulling the image",
            ),
        ),
    }
}

/// What the game server is doing, in the panel's words.
fn power_state(inst: &Instance, obs: &Observed, state: InstanceState) -> PowerState {
    let going = obs
        .pod
        .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
    if inst.spec.suspended {
        PowerState::Offline
    } else if obs.stopping || (going && inst.spec.power != Power::Running) {
        PowerState::Stopping
    } else if inst.spec.power != Power::Running {
        if obs.pod.is_some() {
            PowerState::Stopping
        } else {
            PowerState::Offline
        }
    } else {
        match state {
            InstanceState::Running => PowerState::Running,
            InstanceState::Failed => PowerState::Offline,
            _ => PowerState::Starting,
        }
    }
}

/// Times the server ended while meant to run: what was counted, plus the
/// kubelet's restarts in this Pod since the last count, plus a removed Pod.
fn crashes(previous: Option<&InstanceStatus>, restarts: Option<i32>, crashed: bool) -> Option<i32> {
    let counted = previous.and_then(|s| s.crashes).unwrap_or(0);
    let seen = previous.and_then(|s| s.restarts).unwrap_or(0);
    let new = (restarts.unwrap_or(0) - seen).max(0) + i32::from(crashed);
    Some(counted + new).filter(|n| *n > 0)
}

/// A request acknowledged: the later of what the status said and what the Pod
/// was made for.
fn acknowledged(previous: Option<Time>, obs: &Observed, annotation: &str) -> Option<Time> {
    let from_pod = obs
        .pod
        .and_then(|p| p.annotation(annotation))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(Time);
    match (previous, from_pod) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Reasons of a Pending Instance that is only on its way: waiting for its Pod to
/// be made or placed. Any other reason (Unschedulable, NodeNotReady, ...) is news.
const ON_THE_WAY: [&str; 3] = ["Creating", "Scheduling", "NotScheduled"];

/// How long a step on the way to Running may go unwritten. Where Pods start within
/// it (kwok, cached images, a small server) Pending and Installing would each be a
/// status write and an Event nobody sees; waiting coalesces them into the write of
/// Running. Where Pods take longer (image pulls) every step is still shown. Three
/// seconds because a wave of deploys slows every start: at one second half the
/// starts of a 32-wide wave outlasted it (measured with `make bench`).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// The condition saying why a Pending Instance is stuck rather than on its way.
pub fn stuck(status: &InstanceStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.status == "False" && !ON_THE_WAY.contains(&c.reason.as_str()))
}

/// Whether `status` is a step on the way to Running: Pending without a reason to
/// worry, or Installing.
pub fn is_on_the_way(status: &InstanceStatus) -> bool {
    match status.state {
        Some(InstanceState::Installing) => true,
        Some(InstanceState::Pending) => stuck(status).is_none(),
        _ => false,
    }
}

/// Whether writing `new` over `old` may wait up to [`SETTLE`]: only a step on the
/// way replacing nothing or another step on the way, the power state unchanged.
/// Leaving a settled state (a Running server going down, a suspension lifted) is
/// news and is written at once, and so is a power change: a stopped server whose
/// Pod is gone derives Pending (no Pod), and over a terminating Pod's Installing
/// its Offline waited the whole 3 s (a stop in `make bench` took 3.05 s).
pub fn may_wait(old: Option<&InstanceStatus>, new: &InstanceStatus) -> bool {
    is_on_the_way(new) && old.is_none_or(|o| is_on_the_way(o) && o.power == new.power)
}

/// The status of `inst` given what was observed. `now` stamps conditions that change.
pub fn derive(inst: &Instance, obs: &Observed, now: &Time) -> InstanceStatus {
    let (state, scheduled, ready) = if inst.spec.suspended {
        (
            InstanceState::Suspended,
            cond(SCHEDULED, false, "Suspended", "the instance is suspended"),
            cond(READY, false, "Suspended", "the instance is suspended"),
        )
    } else if let Some(message) = &obs.invalid {
        (
            InstanceState::Failed,
            cond(SCHEDULED, false, "InvalidSpec", message.clone()),
            cond(READY, false, "InvalidSpec", message.clone()),
        )
    } else if let Some((reason, message)) = &obs.unplaceable {
        (
            InstanceState::Pending,
            cond(SCHEDULED, false, reason, message.clone()),
            cond(READY, false, "NotScheduled", "the Pod cannot be placed yet"),
        )
    } else if let Some(pod) = obs.pod {
        from_pod(pod, obs)
    } else {
        (
            InstanceState::Pending,
            cond(SCHEDULED, false, "Creating", "creating the Pod"),
            cond(
                READY,
                false,
                "NotScheduled",
                "the Pod is not placed on a node yet",
            ),
        )
    };

    let placed = matches!(state, InstanceState::Running | InstanceState::Installing);
    let host = obs
        .pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.host_ip.clone())
        .or_else(|| obs.node_address.clone());
    let address = placed
        .then_some(host)
        .flatten()
        .map(|h| format!("{h}:{}", inst.spec.primary_port));
    let generation = inst.metadata.generation;
    let old = inst
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions = [scheduled, ready]
        .into_iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            // Keep the transition time while the condition's status holds.
            let since = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason,
                message: c.message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect();
    let server = obs
        .pod
        .and_then(|p| p.container(super::pod::SERVER_CONTAINER));
    let restarts = server.map(|c| c.restart_count).filter(|n| *n > 0);
    let previous = inst.status.as_ref();
    InstanceStatus {
        power: Some(power_state(inst, obs, state)),
        crashes: crashes(previous, restarts, obs.crashed),
        restarted_at: acknowledged(
            previous.and_then(|s| s.restarted_at.clone()),
            obs,
            ANNOTATION_RESTART_OF,
        ),
        reinstalled_at: acknowledged(
            previous.and_then(|s| s.reinstalled_at.clone()),
            obs,
            ANNOTATION_REINSTALL_OF,
        ),
        state: Some(state),
        conditions,
        restarts,
        last_exit: server.and_then(|c| c.last_exit()),
        pod_name: obs.pod.and_then(|p| p.metadata.name.clone()),
        kubernetes_node: obs
            .pod
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.node_name.clone())
            .or_else(|| obs.kube_node.clone()),
        address,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(suspended: bool) -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
            "metadata": { "name": "abc", "generation": 2 },
            "spec": { "displayName": "x", "userId": "u", "image": "i", "node": "n", "memory": 64, "cpu": 0.5,
                      "ports": [{ "containerPort": 25565, "hostPort": 25565 }], "primaryPort": 25565, "suspended": suspended }
        }))
        .expect("instance")
    }

    fn pod(status: serde_json::Value, node: Option<&str>) -> ObservedPod {
        serde_json::from_value(json!({ "metadata": { "name": "abc" }, "spec": { "containers": [], "nodeName": node }, "status": status }))
            .expect("pod")
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("ts"))
    }

    fn ready_of(s: &InstanceStatus) -> (&str, &str) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_running_pod_makes_a_running_instance_with_an_address() {
        let p = pod(
            json!({ "phase": "Running", "hostIP": "127.0.10.2", "conditions": [{ "type": "Ready", "status": "True" }] }),
            Some("kwok-node-2"),
        );
        let obs = Observed {
            pod: Some(&p),
            ..Observed::default()
        };
        let s = derive(&instance(false), &obs, &now());
        assert_eq!(s.state, Some(InstanceState::Running));
        assert_eq!(s.address.as_deref(), Some("127.0.10.2:25565"));
        assert_eq!(s.kubernetes_node.as_deref(), Some("kwok-node-2"));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(ready_of(&s), ("True", "Running"));
    }

    #[test]
    fn an_unschedulable_pod_carries_the_schedulers_reason() {
        let p = pod(
            json!({ "phase": "Pending", "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/4 nodes are available: 1 node(s) didn't have free ports for the requested pod ports." }] }),
            None,
        );
        let s = derive(
            &instance(false),
            &Observed {
                pod: Some(&p),
                ..Observed::default()
            },
            &now(),
        );
        assert_eq!(s.state, Some(InstanceState::Pending));
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == SCHEDULED)
            .expect("Scheduled");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Unschedulable")
        );
        assert!(c.message.contains("free ports"));
        assert_eq!(s.address, None);
    }

    #[test]
    fn image_pull_failures_and_crash_loops_fail_the_instance() {
        for (reason, init) in [
            ("ImagePullBackOff", false),
            ("CrashLoopBackOff", false),
            ("CrashLoopBackOff", true),
        ] {
            let statuses = json!([{ "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                                    "state": { "waiting": { "reason": reason, "message": "back-off" } } }]);
            let key = if init {
                "initContainerStatuses"
            } else {
                "containerStatuses"
            };
            let p = pod(json!({ "phase": "Pending", key: statuses }), Some("n1"));
            let s = derive(
                &instance(false),
                &Observed {
                    pod: Some(&p),
                    ..Observed::default()
                },
                &now(),
            );
            assert_eq!(s.state, Some(InstanceState::Failed), "{reason}");
            assert_eq!(ready_of(&s), ("False", reason));
        }
    }

    #[test]
    fn a_restarted_server_says_how_it_last_ended() {
        let statuses = json!([{ "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 2,
                                "lastState": { "terminated": { "reason": "OOMKilled", "exitCode": 137 } },
                                "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 20s" } } }]);
        let p = pod(
            json!({ "phase": "Running", "containerStatuses": statuses }),
            Some("n1"),
        );
        let s = derive(
            &instance(false),
            &Observed {
                pod: Some(&p),
                ..Observed::default()
            },
            &now(),
        );
        assert_eq!(s.state, Some(InstanceState::Failed));
        assert_eq!(
            (s.restarts, s.last_exit.as_deref()),
            (Some(2), Some("OOMKilled (exit 137)"))
        );
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(
            ready.message,
            "last exit OOMKilled (exit 137) after 2 restarts; back-off 20s"
        );
    }

    /// A 1.36 kubelet reports a crashed server as `terminated` for its whole
    /// back-off (the waiting reason comes only as it ends): that is the crash loop.
    #[test]
    fn a_server_ended_in_failure_and_waiting_to_restart_is_a_crash_loop() {
        let terminated = |restarts: i32, deleting: bool| {
            let statuses = json!([{ "name": "server", "image": "i", "imageID": "", "ready": false,
                                    "restartCount": restarts,
                                    "lastState": { "terminated": { "reason": "Error", "exitCode": 1 } },
                                    "state": { "terminated": { "reason": "OOMKilled", "exitCode": 137 } } }]);
            let mut p = pod(
                json!({ "phase": "Running", "containerStatuses": statuses,
                        "conditions": [{ "type": "Ready", "status": "False", "reason": "ContainersNotReady" }] }),
                Some("n1"),
            );
            if deleting {
                p.metadata.deletion_timestamp = Some(now());
            }
            derive(
                &instance(false),
                &Observed {
                    pod: Some(&p),
                    ..Observed::default()
                },
                &now(),
            )
        };
        let looping = terminated(2, false);
        assert_eq!(looping.state, Some(InstanceState::Failed));
        assert_eq!(looping.power, Some(PowerState::Offline));
        assert_eq!(ready_of(&looping), ("False", "CrashLoopBackOff"));
        assert_eq!(looping.last_exit.as_deref(), Some("OOMKilled (exit 137)"));
        let ready = looping.conditions.iter().find(|c| c.type_ == READY);
        assert!(
            ready.is_some_and(|c| c
                .message
                .starts_with("last exit OOMKilled (exit 137) after 2 restarts")),
            "{ready:?}"
        );
        // A first crash is started again at once; a Pod being deleted is a stop.
        for (restarts, deleting) in [(0, false), (2, true)] {
            let s = terminated(restarts, deleting);
            assert_eq!(
                s.state,
                Some(InstanceState::Installing),
                "{restarts} {deleting}"
            );
        }
    }

    #[test]
    fn node_problems_suspension_and_missing_pods() {
        let p = pod(
            json!({ "phase": "Running", "conditions": [{ "type": "Ready", "status": "True" }] }),
            Some("n1"),
        );
        let obs = Observed {
            pod: Some(&p),
            kube_node_ready: Some(false),
            ..Observed::default()
        };
        let s = derive(&instance(false), &obs, &now());
        assert_eq!(
            (s.state, ready_of(&s)),
            (Some(InstanceState::Pending), ("False", "NodeNotReady"))
        );

        let s = derive(&instance(true), &Observed::default(), &now());
        assert_eq!(s.state, Some(InstanceState::Suspended));

        let obs = Observed {
            unplaceable: Some(("NodeNotFound", "no Berth Node n".into())),
            ..Observed::default()
        };
        let s = derive(&instance(false), &obs, &now());
        assert_eq!(s.state, Some(InstanceState::Pending));
        assert_eq!(s.conditions[0].reason, "NodeNotFound");

        let p = pod(
            json!({ "phase": "Failed", "reason": "Evicted", "message": "low on memory" }),
            Some("n1"),
        );
        let s = derive(
            &instance(false),
            &Observed {
                pod: Some(&p),
                ..Observed::default()
            },
            &now(),
        );
        assert_eq!(
            (s.state, ready_of(&s)),
            (Some(InstanceState::Failed), ("False", "Evicted"))
        );
    }

    #[test]
    fn an_unchanged_world_yields_an_identical_status() {
        let p = pod(
            json!({ "phase": "Running", "conditions": [{ "type": "Ready", "status": "True" }] }),
            Some("n1"),
        );
        let obs = Observed {
            pod: Some(&p),
            node_address: Some("10.1.1.1".into()),
            ..Observed::default()
        };
        let mut inst = instance(false);
        let first = derive(&inst, &obs, &now());
        inst.status = Some(first.clone());
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_900_000_000).expect("ts"));
        assert_eq!(
            derive(&inst, &obs, &later),
            first,
            "transition times are kept"
        );
    }
}
