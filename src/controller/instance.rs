//! The Instance controller: read → decide (pure, `power.rs`) → build (pure,
//! `pod.rs`) → apply → status. It is the only writer of instance Pods, their
//! volume claims and Instance status.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::events::{EventType, Happening};
use super::merge;
use super::observed::{ObservedContainer, ObservedPod};
use super::pod::{self, BuildError, Launch};
use super::power::{self, Facts, Step};
use super::status::{self, Observed};
use super::{Context, Error, node};
use crate::crd::{Instance, InstanceState, InstanceStatus};
use crate::names::FIELD_MANAGER;

/// How often an Instance is looked at even when nothing announced a change.
pub const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

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
    let outcome = converge_pod(&inst, &ctx, &placed, existing).await?;
    let obs = Observed {
        pod: outcome.pod.as_deref(),
        invalid: outcome.invalid,
        stopping: ctx.stopper.is_stopping(&inst.name_any()),
        crashed: outcome.crashed,
        ..seen
    };
    write_status(&inst, &ctx, &obs).await
}

/// What converging the Pod left.
#[derive(Default)]
struct Outcome {
    /// The Pod as it now is.
    pod: Option<Arc<ObservedPod>>,
    /// Why no Pod can be built, if so.
    invalid: Option<String>,
    /// The server ended while it was meant to run (its Pod was removed).
    crashed: bool,
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

/// Makes the Pod what power and spec say (kept, created, stopped, killed,
/// removed, resized); returns what is left.
async fn converge_pod(
    inst: &Instance,
    ctx: &Context,
    placed: &Placed,
    existing: Option<Arc<ObservedPod>>,
) -> Result<Outcome, Error> {
    let facts = Facts {
        inst,
        pod: existing.as_deref(),
        kube_node: placed.kube_node.as_deref(),
        stopping: ctx.stopper.is_stopping(&inst.name_any()),
    };
    let keep = |pod| Outcome {
        pod,
        ..Outcome::default()
    };
    match (power::step(&facts), existing) {
        (Step::Keep, existing) => Ok(keep(existing)),
        (Step::Create(launch), _) => create(inst, ctx, placed, &launch).await,
        (Step::Stop(why), Some(pod)) => {
            let image = placed.image.as_deref();
            ctx.stopper.start(
                inst,
                &pod,
                image
                    .and_then(|i| i.stop_command.as_deref())
                    .and_then(power::stop_input),
                image.and_then(|i| i.stop_timeout),
                why,
            );
            Ok(keep(Some(pod)))
        }
        (Step::Kill, Some(pod)) => {
            ctx.stopper.cancel(&inst.name_any());
            ctx.stopper
                .delete(&inst.name_any(), pod.uid(), Some(0))
                .await;
            ctx.event(
                inst,
                Happening::new(
                    EventType::Normal,
                    "Killed",
                    "killed: the Pod was deleted at once",
                ),
            );
            Ok(keep(None))
        }
        (Step::Remove(reason), Some(pod)) => {
            delete_pod(inst, ctx, &pod, reason).await?;
            Ok(Outcome {
                crashed: reason == REASON_ENDED,
                ..Outcome::default()
            })
        }
        (Step::Resize(cpu), Some(pod)) => resize(inst, ctx, pod, cpu).await,
        (_, None) => Ok(keep(None)),
    }
}

/// Why a Pod is removed when its server ended while meant to run.
const REASON_ENDED: &str = "PodEnded";

/// Builds and creates the Pod for `launch`.
async fn create(
    inst: &Instance,
    ctx: &Context,
    placed: &Placed,
    launch: &Launch,
) -> Result<Outcome, Error> {
    let kube_node = placed.kube_node.as_deref().unwrap_or_default();
    match pod::build_pod(
        inst,
        kube_node,
        placed.image.as_deref(),
        &ctx.settings,
        launch,
    ) {
        Ok(desired) => Ok(Outcome {
            pod: Some(create_pod(inst, ctx, kube_node, desired, launch).await?),
            ..Outcome::default()
        }),
        Err(e @ BuildError::InstallPath(_)) => Ok(Outcome {
            invalid: Some(e.to_string()),
            ..Outcome::default()
        }),
    }
}

/// Changes the game server's CPU in place (the Pod `resize` subresource): it
/// takes effect at once, without a restart. Where the cluster refuses, the Pod is
/// replaced gracefully instead.
async fn resize(
    inst: &Instance,
    ctx: &Context,
    pod: Arc<ObservedPod>,
    cpu: f64,
) -> Result<Outcome, Error> {
    let pods: Api<ObservedPod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let q = pod::cpu_quantity(cpu);
    let patch = json!({ "spec": { "containers": [{ "name": pod::SERVER_CONTAINER,
        "resources": { "requests": { "cpu": q }, "limits": { "cpu": q } } }] } });
    let before = pod.server_cpu().unwrap_or_default();
    match pods
        .patch_subresource(
            "resize",
            &inst.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(resized) => {
            ctx.event(
                inst,
                Happening::new(
                    EventType::Normal,
                    "Resized",
                    format!("Resized in place: cpu {before} -> {cpu} cores"),
                ),
            );
            Ok(Outcome {
                pod: Some(Arc::new(resized)),
                ..Outcome::default()
            })
        }
        Err(kube::Error::Api(e)) if e.code != 409 => {
            tracing::info!(instance = %inst.name_any(), error = %e.message, "in-place resize refused; replacing the Pod");
            ctx.stopper
                .start(inst, &pod, None, None, power::Why::Change);
            Ok(Outcome {
                pod: Some(pod),
                ..Outcome::default()
            })
        }
        Err(e) => Err(Error::WritePod(e)),
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
    let happening = match reason {
        "Suspended" => Happening::new(EventType::Normal, "PodDeleted", "suspended: Pod deleted"),
        REASON_ENDED => {
            let how = old
                .container(pod::SERVER_CONTAINER)
                .and_then(ObservedContainer::terminated)
                .map_or_else(
                    || "the Pod ended".to_owned(),
                    |t| format!("exit {}", t.exit_code),
                );
            Happening::new(
                EventType::Warning,
                "Crashed",
                format!("Crashed ({how}): restarting"),
            )
        }
        // Stopped: the stop already told its story.
        _ => return Ok(()),
    };
    ctx.event(inst, happening);
    Ok(())
}

/// Applies the volume claim (when one is configured) and the Pod; tells it.
async fn create_pod(
    inst: &Instance,
    ctx: &Context,
    kube_node: &str,
    desired: k8s_openapi::api::core::v1::Pod,
    launch: &pod::Launch,
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
    let created = post_pod(ctx, &name, &desired).await?;
    info!(instance = %name, node = %kube_node, "pod created");
    let recreated = inst
        .status
        .as_ref()
        .and_then(|s| s.pod_name.as_ref())
        .is_some();
    let made = if recreated { "recreated" } else { "created" };
    let answers = match &launch.reinstall {
        Some((_, true)) => ", reinstalling on wiped data",
        Some((_, false)) => ", reinstalling",
        None => "",
    };
    let note = format!("Pod {made}, pinned to {kube_node}{answers}");
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

/// Creates the Pod (POST: Berth never updates a Pod, a change makes a new one, so
/// an apply would only cost the API server more) and reads the answer as what
/// the controller keeps. A Pod that already exists (the cache had not shown it
/// yet) is the one made before: it is read and kept, and the next look replaces
/// it if it is not of the Instance's current shape; a Pod of that name that
/// is not this Instance's is left alone (the error says so).
async fn post_pod(
    ctx: &Context,
    name: &str,
    desired: &k8s_openapi::api::core::v1::Pod,
) -> Result<ObservedPod, Error> {
    let owner = desired.owner_references().first().map(|o| &o.uid);
    let pods: Api<ObservedPod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let body =
        serde_json::to_vec(desired).map_err(|e| Error::WritePod(kube::Error::SerdeError(e)))?;
    let request = kube::core::Request::new(pods.resource_url())
        .create(&params, body)
        .map_err(|e| Error::WritePod(kube::Error::BuildRequest(e)))?;
    match ctx.client.request::<ObservedPod>(request).await {
        Ok(pod) => Ok(pod),
        Err(kube::Error::Api(taken)) if taken.code == 409 => {
            let pod = pods.get(name).await.map_err(Error::WritePod)?;
            // Made before for this very Instance: kept. Anyone else's: not ours to take.
            if pod.owner_references().iter().any(|o| Some(&o.uid) == owner) {
                Ok(pod)
            } else {
                Err(Error::WritePod(kube::Error::Api(taken)))
            }
        }
        Err(e) => Err(Error::WritePod(e)),
    }
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
        // A JSON merge patch of what changed, from the version read: the
        // controller is the status's only writer, and a merge patch costs the API
        // server about half of an apply. The resourceVersion guard makes the diff
        // exact: read from a stale copy, it is refused, and the next look (the
        // fresh copy is on its way) derives it again.
        let before = serde_json::to_value(&inst.status).unwrap_or_default();
        let after = serde_json::to_value(&status).unwrap_or_default();
        let changes = merge::diff(&before, &after).unwrap_or_default();
        let patch = json!({
            "metadata": { "resourceVersion": inst.resource_version() },
            "status": changes,
        });
        let api: Api<Instance> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match api
            .patch_status(&name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                return Ok(Action::requeue(STALE_RETRY));
            }
            Err(e) => return Err(Error::PatchInstanceStatus(e)),
        }
        let held = ctx.settled(&name);
        announce(ctx, inst, inst.status.as_ref(), &status, held);
    }
    // Changes wake the controller; the periodic look is a safety net only (it
    // reads informers and writes nothing when nothing changed).
    Ok(Action::requeue(RESYNC))
}

/// When to look again after a status write was refused for a stale read.
const STALE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

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
            "Crashed",
            format!("Crashed ({how}): restarting ({restarts} restarts so far)"),
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
    use crate::crd::PowerState;
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
    fn observed(node: &str, status: serde_json::Value) -> ObservedPod {
        let mut pod = pod::build_pod(
            &instance(1, false),
            node,
            None,
            &pod::PodSettings::default(),
            &Launch::default(),
        )
        .expect("pod");
        pod.status = Some(serde_json::from_value(status).expect("status"));
        serde_json::from_value(serde_json::to_value(pod).expect("json")).expect("observed")
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
            let mut full = observed("n1", status.clone());
            full.spec.as_mut().expect("spec").node_name = Some("n1".into());
            let mut slim = full.clone();
            slim.slim();
            let i = instance(1, false);
            let step = |pod| {
                power::step(&Facts {
                    inst: &i,
                    pod: Some(pod),
                    kube_node: Some("n1"),
                    stopping: false,
                })
            };
            assert_eq!(step(&full), step(&slim), "{status}");
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
            (EventType::Warning, "Crashed")
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

    #[test]
    fn a_stop_reached_is_written_at_once() {
        // The Pod terminating (not Ready: Installing), then gone (Pending): both
        // steps on the way by their state, but the power state moved.
        let mut stopping = status_of(InstanceState::Installing);
        stopping.power = Some(PowerState::Stopping);
        let mut stopped = status_of(InstanceState::Pending);
        stopped.power = Some(PowerState::Offline);
        assert!(
            !status::may_wait(Some(&stopping), &stopped),
            "Offline is news"
        );
        let mut starting = status_of(InstanceState::Pending);
        starting.power = Some(PowerState::Starting);
        let mut installing = status_of(InstanceState::Installing);
        installing.power = Some(PowerState::Starting);
        assert!(status::may_wait(Some(&starting), &installing));
    }
}
