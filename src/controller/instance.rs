//! The Instance controller: read → build (pure, `pod.rs`) → apply → status.
//! It is the only writer of instance Pods, their volume claims and Instance status.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::events::{EventType, Happening};
use super::observed::ObservedPod;
use super::pod::{self, ANNOTATION_GENERATION, BuildError};
use super::status::{self, Observed};
use super::{Context, Error, node};
use crate::crd::{Instance, InstanceState, InstanceStatus};
use crate::names::FIELD_MANAGER;

/// How often an Instance is looked at even when nothing announced a change.
pub const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

/// What to do with the Pod that exists (or not).
#[derive(Debug, PartialEq, Eq)]
pub enum PodAction {
    /// The Pod is as it should be.
    Keep,
    /// There is no Pod: create it.
    Create,
    /// The Pod must go (suspended, ended, or built from an older spec); the next
    /// reconcile creates its replacement.
    Delete(&'static str),
}

/// Decides, from the existing Pod, what to do (pure).
pub fn pod_action(
    inst: &Instance,
    existing: Option<&ObservedPod>,
    kube_node: Option<&str>,
) -> PodAction {
    let Some(existing) = existing else {
        return if inst.spec.suspended || kube_node.is_none() {
            PodAction::Keep
        } else {
            PodAction::Create
        };
    };
    if existing.metadata.deletion_timestamp.is_some() {
        return PodAction::Keep; // going already; recreated once gone
    }
    if inst.spec.suspended {
        return PodAction::Delete("Suspended");
    }
    let phase = existing.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) {
        return PodAction::Delete("PodEnded");
    }
    let generation = inst.metadata.generation.unwrap_or_default().to_string();
    let built_from = existing.annotations().get(ANNOTATION_GENERATION);
    if built_from != Some(&generation) {
        return PodAction::Delete("SpecChanged");
    }
    if kube_node.is_some_and(|n| existing.pinned_node() != Some(n)) {
        return PodAction::Delete("NodeChanged");
    }
    PodAction::Keep
}

/// Where an Instance's Pod goes and what it runs, as read from the informers.
struct Placed {
    /// The Kubernetes node to pin to, when exactly one is known.
    kube_node: Option<String>,
    /// The catalog entry, when the image is in the catalog.
    image: Option<Arc<crate::store::catalog::Image>>,
}

/// Reconciles one Instance: read → converge the Pod → write the status.
pub async fn reconcile(inst: Arc<Instance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (placed, seen) = read(&inst, &ctx);
    let existing = ctx.store.pods.get(&inst.name_any());
    let (pod, invalid) = converge_pod(&inst, &ctx, &placed, existing).await?;
    let obs = Observed {
        pod: pod.as_deref(),
        invalid,
        ..seen
    };
    write_status(&inst, &ctx, &obs).await
}

/// Reads the Berth Node, the Kubernetes node it stands for and the catalog image,
/// and what the status says of them (why the Instance cannot be placed, if so).
fn read(inst: &Instance, ctx: &Context) -> (Placed, Observed<'static>) {
    let mut obs = Observed::default();
    let store = &ctx.store;
    let kube_node = match store.nodes.get(&inst.spec.node) {
        None => {
            obs.unplaceable = Some((
                "NodeNotFound",
                format!("Berth Node {} does not exist", inst.spec.node),
            ));
            None
        }
        Some(n) => {
            obs.node_address = Some(n.spec.address.clone());
            let placement = store.placement(&n);
            if let Some(k) = placement.node() {
                obs.kube_node_ready = node::is_ready(k);
                Some(k.name_any())
            } else {
                obs.unplaceable = placement.problem(&n.spec);
                None
            }
        }
    };
    obs.kube_node = kube_node.clone();
    let image = inst
        .spec
        .image_name
        .as_deref()
        .and_then(|n| store.catalog.find(n))
        .or_else(|| store.catalog.find(&inst.spec.image))
        .map(|(image, _)| image);
    (Placed { kube_node, image }, obs)
}

/// Makes the Pod what it should be (kept, created, or deleted to be recreated);
/// returns the Pod as it now is, and why none can be built, if so.
async fn converge_pod(
    inst: &Instance,
    ctx: &Context,
    placed: &Placed,
    existing: Option<Arc<ObservedPod>>,
) -> Result<(Option<Arc<ObservedPod>>, Option<String>), Error> {
    match pod_action(inst, existing.as_deref(), placed.kube_node.as_deref()) {
        PodAction::Keep => Ok((existing, None)),
        PodAction::Delete(reason) => {
            if let Some(old) = existing {
                delete_pod(inst, ctx, &old, reason).await?;
            }
            Ok((None, None))
        }
        PodAction::Create => {
            let kube_node = placed.kube_node.as_deref().unwrap_or_default();
            match pod::build_pod(inst, kube_node, placed.image.as_deref(), &ctx.settings) {
                Ok(desired) => {
                    let made = create_pod(inst, ctx, kube_node, desired).await?;
                    Ok((Some(made), None))
                }
                Err(e @ BuildError::InstallPath(_)) => Ok((None, Some(e.to_string()))),
            }
        }
    }
}

/// Deletes this very Pod (uid precondition) and says why.
async fn delete_pod(
    inst: &Instance,
    ctx: &Context,
    old: &ObservedPod,
    reason: &'static str,
) -> Result<(), Error> {
    let pods: Api<ObservedPod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: old.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&inst.name_any(), &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(Error::DeletePod(e)),
    }
    let note = match reason {
        "Suspended" => "suspended: Pod deleted".to_owned(),
        "PodEnded" => "the Pod ended; recreating it".to_owned(),
        other => format!("{other}: recreating the Pod"),
    };
    ctx.event(inst, Happening::new(EventType::Normal, "PodDeleted", note));
    Ok(())
}

/// Applies the volume claim (when one is configured) and the Pod; tells it.
async fn create_pod(
    inst: &Instance,
    ctx: &Context,
    kube_node: &str,
    desired: k8s_openapi::api::core::v1::Pod,
) -> Result<Arc<ObservedPod>, Error> {
    let name = inst.name_any();
    if let Some(claim) = pod::build_claim(inst, &ctx.settings) {
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(ctx.client.clone(), &ctx.namespace);
        claims
            .patch(
                &pod::claim_name(inst),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&claim),
            )
            .await
            .map_err(Error::ApplyClaim)?;
    }
    // Pods are written as full Pods and read back as what the controller keeps.
    let pods: Api<ObservedPod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let created = pods
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(Error::ApplyPod)?;
    info!(instance = %name, node = %kube_node, "pod created");
    let recreated = inst
        .status
        .as_ref()
        .and_then(|s| s.pod_name.as_ref())
        .is_some();
    let note = if recreated {
        format!("Pod recreated, pinned to {kube_node}")
    } else {
        format!("Pod created, pinned to {kube_node}")
    };
    let what = Happening::new(EventType::Normal, REASON_POD_CREATED, note);
    // While the status is on its way to Running, the creation is told with the
    // next state written (one Event, not two).
    if inst.status.as_ref().is_none_or(status::is_on_the_way) {
        ctx.hold(&name, what);
    } else {
        ctx.event(inst, what);
    }
    Ok(Arc::new(created))
}

/// Writes the status when it changed, unless it is a step on the way to Running
/// that has not lasted (see [`status::may_wait`]).
async fn write_status(inst: &Instance, ctx: &Context, obs: &Observed<'_>) -> Result<Action, Error> {
    let name = inst.name_any();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::derive(inst, obs, &now);
    if inst.status.as_ref() != Some(&status) {
        if status::may_wait(inst.status.as_ref(), &status) {
            let waited = ctx.settling(&name);
            if waited < status::SETTLE {
                return Ok(Action::requeue(status::SETTLE - waited));
            }
        }
        let held = ctx.settled(&name);
        let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let patch =
            json!({ "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "status": status });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::PatchInstanceStatus)?;
        announce(ctx, inst, inst.status.as_ref(), &status, held);
    }
    // Changes wake the controller; the periodic look is a safety net only (it
    // reads informers and writes nothing when nothing changed).
    Ok(Action::requeue(RESYNC))
}

/// Reason of the Event telling a Pod was created.
pub const REASON_POD_CREATED: &str = "PodCreated";

/// Publishes the Events of a status change.
fn announce(
    ctx: &Context,
    inst: &Instance,
    old: Option<&InstanceStatus>,
    new: &InstanceStatus,
    held: Vec<Happening>,
) {
    for what in announcements(old, new, held) {
        ctx.event(inst, what);
    }
}

/// The Events of a status change from `old` to `new`, after the Events `held` while
/// the status waited (pure). A Running reached without its steps on the way being
/// written tells them in its own note: one Event instead of three.
pub fn announcements(
    old: Option<&InstanceStatus>,
    new: &InstanceStatus,
    mut held: Vec<Happening>,
) -> Vec<Happening> {
    let old_state = old.and_then(|s| s.state);
    // A restart is news whatever the state: the kubelet restarted a crashed or
    // killed server (kwok never does).
    let restarts = new.restarts.unwrap_or(0);
    if restarts > old.and_then(|s| s.restarts).unwrap_or(0) {
        let how = new.last_exit.as_deref().unwrap_or("unknown");
        held.push(Happening::new(
            EventType::Warning,
            "Restarted",
            format!("the game server ended ({how}); restarted by the kubelet, {restarts} restarts so far"),
        ));
    }
    let Some(state) = new.state.filter(|s| Some(*s) != old_state) else {
        return held;
    };
    let explain = |type_: &str| {
        new.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default()
    };
    let (type_, reason, note) = match state {
        InstanceState::Running => {
            let mut steps = Vec::new();
            if let Some(i) = held.iter().position(|h| h.reason == REASON_POD_CREATED) {
                steps.push(held.remove(i).note);
            } else if old_state != Some(InstanceState::Installing)
                && let Some(node) = &new.kubernetes_node
            {
                steps.push(format!("scheduled on {node}"));
            }
            steps.push(format!(
                "running at {}",
                new.address.as_deref().unwrap_or_default()
            ));
            (EventType::Normal, "Running", steps.join("; "))
        }
        InstanceState::Installing => (EventType::Normal, "Scheduled", explain(status::SCHEDULED)),
        InstanceState::Suspended => (
            EventType::Normal,
            "Suspended",
            "the instance is suspended".to_owned(),
        ),
        InstanceState::Failed => (EventType::Warning, "Failed", explain(status::READY)),
        InstanceState::Pending => {
            // Waiting for the scheduler or for the Pod to be made is no news; a
            // reason such as Unschedulable or NodeNotReady is.
            match status::stuck(new) {
                Some(c) => (
                    EventType::Warning,
                    "Pending",
                    format!("{}: {}", c.reason, c.message),
                ),
                None => return held,
            }
        }
    };
    held.push(Happening::new(type_, reason, note));
    held
}

impl Context {
    /// Publishes an Event on the Instance, in the background.
    pub fn event(&self, inst: &Instance, what: Happening) {
        self.events.publish(inst.object_ref(&()), what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use serde_json::json;

    fn instance(generation: i64, suspended: bool) -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "metadata": { "name": "i", "generation": generation },
            "spec": { "displayName": "x", "userId": "u", "image": "i", "node": "n", "memory": 64, "cpu": 0.5,
                      "ports": [{ "containerPort": 1, "hostPort": 1 }], "primaryPort": 1, "suspended": suspended }
        }))
        .expect("instance")
    }

    /// The Pod Berth builds, with `status`, read back as the watch reads it.
    fn observed(generation: &str, node: &str, status: serde_json::Value) -> ObservedPod {
        let mut pod = pod::build_pod(
            &instance(1, false),
            node,
            None,
            &pod::PodSettings::default(),
        )
        .expect("pod");
        pod.metadata.annotations =
            Some([(ANNOTATION_GENERATION.to_owned(), generation.to_owned())].into());
        pod.status = Some(serde_json::from_value(status).expect("status"));
        serde_json::from_value(serde_json::to_value(pod).expect("json")).expect("observed")
    }

    fn existing(generation: &str, node: &str, phase: &str) -> ObservedPod {
        observed(generation, node, json!({ "phase": phase }))
    }

    #[test]
    fn pods_are_created_kept_or_replaced() {
        let i = instance(1, false);
        assert_eq!(pod_action(&i, None, Some("n1")), PodAction::Create);
        assert_eq!(
            pod_action(&i, None, None),
            PodAction::Keep,
            "nowhere to put it yet"
        );
        assert_eq!(
            pod_action(&i, Some(&existing("1", "n1", "Running")), Some("n1")),
            PodAction::Keep
        );
        assert_eq!(
            pod_action(&i, Some(&existing("1", "n1", "Failed")), Some("n1")),
            PodAction::Delete("PodEnded")
        );
        assert_eq!(
            pod_action(
                &instance(2, false),
                Some(&existing("1", "n1", "Running")),
                Some("n1")
            ),
            PodAction::Delete("SpecChanged")
        );
        assert_eq!(
            pod_action(&i, Some(&existing("1", "n1", "Running")), Some("n2")),
            PodAction::Delete("NodeChanged")
        );
        assert_eq!(
            pod_action(
                &instance(1, true),
                Some(&existing("1", "n1", "Running")),
                Some("n1")
            ),
            PodAction::Delete("Suspended")
        );
        assert_eq!(
            pod_action(&instance(1, true), None, Some("n1")),
            PodAction::Keep
        );
    }

    #[test]
    fn slimming_a_pod_changes_no_decision() {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let statuses = [
            json!({ "phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.1.0.1",
                    "conditions": [{ "type": "PodScheduled", "status": "True" }, { "type": "Ready", "status": "True" }],
                    "containerStatuses": [{ "name": "server", "image": "i", "imageID": "sha256:x", "ready": true,
                                            "restartCount": 0, "state": { "running": {} } }] }),
            json!({ "phase": "Pending", "hostIP": "10.0.0.1",
                    "conditions": [{ "type": "PodScheduled", "status": "True" }],
                    "containerStatuses": [{ "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                                            "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off" } } }] }),
            json!({ "phase": "Pending", "conditions": [{ "type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": "0/3 nodes are available" }] }),
            json!({ "phase": "Failed", "reason": "Evicted", "message": "low on memory" }),
        ];
        for status in statuses {
            let mut full = observed("1", "n1", status.clone());
            full.spec.as_mut().expect("spec").node_name = Some("n1".into());
            let mut slim = full.clone();
            slim.slim();
            let i = instance(1, false);
            assert_eq!(
                pod_action(&i, Some(&full), Some("n1")),
                pod_action(&i, Some(&slim), Some("n1")),
                "{status}"
            );
            let observed = |pod| Observed {
                pod: Some(pod),
                kube_node: Some("n1".into()),
                kube_node_ready: Some(true),
                ..Observed::default()
            };
            assert_eq!(
                status::derive(&i, &observed(&full), &now),
                status::derive(&i, &observed(&slim), &now),
                "{status}"
            );
        }
    }

    fn status_of(state: InstanceState) -> InstanceStatus {
        InstanceStatus {
            state: Some(state),
            kubernetes_node: Some("kwok-node-3".into()),
            address: Some("127.0.10.3:25565".into()),
            ..InstanceStatus::default()
        }
    }

    fn created() -> Happening {
        Happening::new(
            EventType::Normal,
            REASON_POD_CREATED,
            "Pod created, pinned to kwok-node-3",
        )
    }

    #[test]
    fn a_fast_start_is_one_event_and_a_slow_one_tells_every_step() {
        let running = status_of(InstanceState::Running);
        let fast = announcements(None, &running, vec![created()]);
        assert_eq!(fast.len(), 1, "{fast:?}");
        assert_eq!(fast[0].reason, "Running");
        assert_eq!(
            fast[0].note,
            "Pod created, pinned to kwok-node-3; running at 127.0.10.3:25565"
        );

        // Pending was written (and the creation told with it), then Installing.
        let pending = status_of(InstanceState::Pending);
        let first = announcements(None, &pending, vec![created()]);
        assert_eq!(first, vec![created()], "waiting is no news of its own");
        let installing = status_of(InstanceState::Installing);
        let second = announcements(Some(&pending), &installing, Vec::new());
        assert_eq!(second[0].reason, "Scheduled");
        let third = announcements(Some(&installing), &running, Vec::new());
        assert_eq!(third[0].note, "running at 127.0.10.3:25565");

        // Running reached from Pending without Installing: the placement is told.
        let skipped = announcements(Some(&pending), &running, Vec::new());
        assert_eq!(
            skipped[0].note,
            "scheduled on kwok-node-3; running at 127.0.10.3:25565"
        );
        assert!(announcements(Some(&running), &running, Vec::new()).is_empty());
    }

    #[test]
    fn a_restart_by_the_kubelet_is_told_once() {
        let running = status_of(InstanceState::Running);
        let mut restarted = running.clone();
        restarted.restarts = Some(1);
        restarted.last_exit = Some("OOMKilled (exit 137)".into());
        let told = announcements(Some(&running), &restarted, Vec::new());
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(
            (told[0].type_, told[0].reason.as_str()),
            (EventType::Warning, "Restarted")
        );
        assert!(told[0].note.contains("OOMKilled (exit 137)"), "{told:?}");
        assert!(announcements(Some(&restarted), &restarted, Vec::new()).is_empty());
    }

    #[test]
    fn only_steps_on_the_way_may_wait() {
        let pending = status_of(InstanceState::Pending);
        let installing = status_of(InstanceState::Installing);
        let running = status_of(InstanceState::Running);
        assert!(status::may_wait(None, &pending));
        assert!(status::may_wait(Some(&pending), &installing));
        assert!(
            !status::may_wait(None, &running),
            "Running is written at once"
        );
        assert!(
            !status::may_wait(Some(&running), &pending),
            "a running server going down is news"
        );
        let mut stuck = status_of(InstanceState::Pending);
        stuck.conditions.push(Condition {
            type_: status::SCHEDULED.into(),
            status: "False".into(),
            reason: "Unschedulable".into(),
            message: "0/3 nodes are available".into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            observed_generation: None,
        });
        assert!(!status::may_wait(None, &stuck), "stuck is news");
    }
}
