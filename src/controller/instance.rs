//! The Instance controller: read → build (pure, `pod.rs`) → apply → status.
//! It is the only writer of instance Pods, their volume claims and Instance status.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

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
pub fn pod_action(inst: &Instance, existing: Option<&Pod>, kube_node: Option<&str>) -> PodAction {
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
    if kube_node.is_some_and(|n| pod::pinned_node(existing) != Some(n)) {
        return PodAction::Delete("NodeChanged");
    }
    PodAction::Keep
}

/// Reconciles one Instance.
pub async fn reconcile(inst: Arc<Instance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = &ctx.namespace;
    let name = inst.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let existing = ctx.pods.get(&ObjectRef::new(&name).within(ns));

    // Read: the Berth Node, the Kubernetes node it stands for, the catalog image.
    let mut obs = Observed::default();
    let berth_node = ctx.nodes.get(&ObjectRef::new(&inst.spec.node).within(ns));
    let kube_nodes = ctx.kube_nodes.state();
    let kube_node = match &berth_node {
        None => {
            obs.unplaceable = Some((
                "NodeNotFound",
                format!("Berth Node {} does not exist", inst.spec.node),
            ));
            None
        }
        Some(n) => {
            obs.node_address = Some(n.spec.address.clone());
            match node::resolve(&n.spec, &kube_nodes) {
                Some(k) => {
                    obs.kube_node_ready = node::is_ready(k);
                    Some(k.name_any())
                }
                None => {
                    let why = match &n.spec.kubernetes_node {
                        Some(k) => format!("Kubernetes node {k} does not exist"),
                        None => format!(
                            "no Kubernetes node has the name or address {}",
                            n.spec.address
                        ),
                    };
                    obs.unplaceable = Some(("NoKubernetesNode", why));
                    None
                }
            }
        }
    };
    obs.kube_node = kube_node.clone();
    let image = inst
        .spec
        .image_name
        .as_deref()
        .and_then(|n| ctx.catalog.find(n))
        .or_else(|| ctx.catalog.find(&inst.spec.image))
        .map(|(image, _)| image);

    // Build and apply.
    let mut current = existing.clone();
    match (
        pod_action(&inst, existing.as_deref(), kube_node.as_deref()),
        existing.as_deref(),
    ) {
        (PodAction::Keep, _) | (PodAction::Delete(_), None) => {}
        (PodAction::Delete(reason), Some(old)) => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: old.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(Error::DeletePod(e)),
            }
            let note = match reason {
                "Suspended" => "suspended: Pod deleted".to_owned(),
                "PodEnded" => "the Pod ended; recreating it".to_owned(),
                other => format!("{other}: recreating the Pod"),
            };
            ctx.event(&inst, EventType::Normal, "PodDeleted", &note)
                .await;
            current = None;
        }
        (PodAction::Create, _) => {
            let kube_node = kube_node.as_deref().unwrap_or_default();
            match pod::build_pod(&inst, kube_node, image.as_deref(), &ctx.settings) {
                Ok(desired) => {
                    if let Some(claim) = pod::build_claim(&inst, &ctx.settings) {
                        let claims: Api<PersistentVolumeClaim> =
                            Api::namespaced(ctx.client.clone(), ns);
                        claims
                            .patch(
                                &pod::claim_name(&inst),
                                &PatchParams::apply(FIELD_MANAGER).force(),
                                &Patch::Apply(&claim),
                            )
                            .await
                            .map_err(Error::ApplyClaim)?;
                    }
                    let created = pods
                        .patch(
                            &name,
                            &PatchParams::apply(FIELD_MANAGER).force(),
                            &Patch::Apply(&desired),
                        )
                        .await
                        .map_err(Error::ApplyPod)?;
                    info!(instance = %name, node = %kube_node, "pod created");
                    let note = if inst
                        .status
                        .as_ref()
                        .and_then(|s| s.pod_name.as_ref())
                        .is_some()
                    {
                        format!("Pod recreated, pinned to {kube_node}")
                    } else {
                        format!("Pod created, pinned to {kube_node}")
                    };
                    ctx.event(&inst, EventType::Normal, "PodCreated", &note)
                        .await;
                    current = Some(Arc::new(created));
                }
                Err(e @ BuildError::InstallPath(_)) => obs.invalid = Some(e.to_string()),
            }
        }
    }

    // Status.
    obs.pod = current.as_deref();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::derive(&inst, &obs, &now);
    if inst.status.as_ref() != Some(&status) {
        let api: Api<Instance> = Api::namespaced(ctx.client.clone(), ns);
        let patch =
            json!({ "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "status": status });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::PatchInstanceStatus)?;
        announce(&ctx, &inst, inst.status.as_ref(), &status).await;
    }
    // Changes wake the controller; the periodic look is a safety net only (it
    // reads caches and writes nothing when nothing changed).
    Ok(Action::requeue(RESYNC))
}

/// Events for state changes, with the reason of the condition that explains them.
async fn announce(
    ctx: &Context,
    inst: &Instance,
    old: Option<&InstanceStatus>,
    new: &InstanceStatus,
) {
    let old_state = old.and_then(|s| s.state);
    if old_state == new.state {
        return;
    }
    let Some(state) = new.state else { return };
    let explain = |type_: &str| {
        new.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default()
    };
    let (type_, reason, note) = match state {
        InstanceState::Running => (
            EventType::Normal,
            "Running",
            format!("running at {}", new.address.clone().unwrap_or_default()),
        ),
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
            let stuck = new.conditions.iter().find(|c| {
                c.status == "False"
                    && !matches!(
                        c.reason.as_str(),
                        "Creating" | "Scheduling" | "NotScheduled"
                    )
            });
            match stuck {
                Some(c) => (
                    EventType::Warning,
                    "Pending",
                    format!("{}: {}", c.reason, c.message),
                ),
                None => return,
            }
        }
    };
    ctx.event(inst, type_, reason, &note).await;
}

impl Context {
    /// Publishes an Event on the Instance in the background: an Event is a record,
    /// not a step of the reconcile, so the status write does not wait for it.
    /// Failures are logged, never fatal.
    pub async fn event(&self, inst: &Instance, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1024).collect()),
            action: reason.to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let reference = inst.object_ref(&());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "failed to publish event");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(generation: i64, suspended: bool) -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "metadata": { "name": "i", "generation": generation },
            "spec": { "displayName": "x", "userId": "u", "image": "i", "node": "n", "memory": 64, "cpu": 0.5,
                      "ports": [{ "containerPort": 1, "hostPort": 1 }], "primaryPort": 1, "suspended": suspended }
        }))
        .expect("instance")
    }

    fn existing(generation: &str, node: &str, phase: &str) -> Pod {
        let mut pod = pod::build_pod(
            &instance(1, false),
            node,
            None,
            &pod::PodSettings::default(),
        )
        .expect("pod");
        pod.metadata.annotations =
            Some([(ANNOTATION_GENERATION.to_owned(), generation.to_owned())].into());
        pod.status = Some(serde_json::from_value(json!({ "phase": phase })).expect("status"));
        pod
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
}
