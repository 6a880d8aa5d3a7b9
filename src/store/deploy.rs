//! The deploy write protocol: an Instance and every host-port claim it needs, or
//! nothing.
//!
//! 1. **Check** the request against the informers ([`plan`]): the node and the
//!    Kubernetes node it stands for (host ports are claimed per Kubernetes node:
//!    two Berth Nodes on one machine share one port space), the user, the catalog
//!    image, the variables, ports already in use, the node's memory.
//! 2. **Create** the Instance, under a fresh short id, or under the id an
//!    `Idempotency-Key` decides so that a retry meets its first attempt.
//! 3. **Complete** it: claim its host ports (the API server decides races) and
//!    re-read its node (a node delete racing this deploy marks the node first, so
//!    exactly one of them wins). On any failure the Instance is rolled back.
//!
//! Steps 2 and 3 run as a task of its own that the request awaits: a client that
//! disconnects or a request timeout cannot stop the protocol half-way and leave
//! an Instance without its claims (not even while the create is in flight).

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams, Preconditions};
use tracing::{error, info, warn};

use super::Store;
use super::claims::{ClaimError, ClaimKind, host_port_key};
use super::placement::Placement;
use super::users::owner_ref;
use crate::crd::{Instance, InstanceSpec, PortMapping};
use crate::names::{
    ANNOTATION_IDEMPOTENCY, ANNOTATION_REQUEST, FIELD_MANAGER, LABEL_NODE, LABEL_USER,
};

/// How many fresh ids a deploy tries before giving up (8 hex digits rarely collide).
const ID_ATTEMPTS: usize = 5;
/// How long a deploy waits for a racing node delete to finish.
const MARK_WAIT: Duration = Duration::from_secs(10);
/// How long a rollback keeps trying to delete its Instance.
const ROLLBACK_FOR: Duration = Duration::from_secs(30);

/// What a deploy asks for: parsed by the API, not yet checked against the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployRequest {
    /// Display name.
    pub name: String,
    /// The owner's userId.
    pub user_id: String,
    /// The Berth Node's id.
    pub node_id: String,
    /// The catalog image, by `Image`, `AltImages`, `Id` or `Name`.
    pub image: String,
    /// The catalog entry's name as the client sent it (informational in Skyport).
    pub image_name: Option<String>,
    /// MiB.
    pub memory: i64,
    /// Cores.
    pub cpu: f64,
    /// MiB.
    pub disk: Option<i64>,
    /// Ports.
    pub ports: Vec<PortMapping>,
    /// The host port players connect to.
    pub primary_port: i32,
    /// Variables as sent (the catalog's defaults fill the rest).
    pub variables: BTreeMap<String, String>,
}

/// A deploy sent with an `Idempotency-Key`.
#[derive(Clone, Debug)]
pub struct Keyed {
    /// Digest of the caller and the key: decides the instance id.
    pub key: String,
    /// Digest of the request body: a key reused with another body is refused.
    pub request: String,
}

/// Why a deploy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The request cannot be served as it is (400); the message names the problem.
    #[error("{0}")]
    Invalid(String),
    /// The `Idempotency-Key` was used before with a different request (422).
    #[error("Idempotency-Key was already used with a different request")]
    KeyReused,
    /// The API server failed while doing the action.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// Every id tried was taken.
    #[error("every instance id tried was taken")]
    NoFreeId,
    /// The protocol's task ended abnormally.
    #[error("the deploy task failed: {0}")]
    Task(String),
}

pub(super) fn failed(action: &'static str) -> impl FnOnce(kube::Error) -> DeployError {
    move |source| DeployError::Api { action, source }
}

pub(super) fn invalid(message: impl Into<String>) -> DeployError {
    DeployError::Invalid(message.into())
}

/// A deploy checked against the informers.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The Instance to create.
    pub spec: InstanceSpec,
    /// The Kubernetes node whose port space the host ports are claimed in.
    pub kube_node: String,
    /// The Berth Node's uid when checked (a node re-made under the same id is another).
    pub node_uid: Option<String>,
}

/// Checks `req` against the informers (step 1).
pub fn plan(store: &Store, req: DeployRequest) -> Result<Plan, DeployError> {
    let node = store
        .nodes
        .get(&req.node_id)
        .ok_or_else(|| invalid(format!("Node not found: {}", req.node_id)))?;
    let placement = store.placement(&node);
    let Placement::On(kube_node) = &placement else {
        let (_, why) = placement.problem(&node.spec).unwrap_or_default();
        return Err(invalid(format!(
            "Node {} has no Kubernetes node to run on: {why}",
            req.node_id
        )));
    };
    let kube_node = kube_node.name_any();
    if store.users.by_id(&req.user_id).is_none() {
        return Err(invalid(format!("User not found: {}", req.user_id)));
    }
    // Skyport never checked `imagename`: it is tried only when `image` names nothing.
    let (image, container_image) = store
        .catalog
        .find(&req.image)
        .or_else(|| {
            req.image_name
                .as_deref()
                .and_then(|n| store.catalog.find(n))
        })
        .ok_or_else(|| invalid(format!("Image not found in the catalog: {}", req.image)))?;
    let variables = effective_variables(&image.variables, req.variables)?;
    ports_free(store, &req.node_id, &kube_node, &req.ports, None)?;
    if let Some(ram) = node.spec.ram.filter(|r| *r > 0) {
        let used: i64 = store
            .instances
            .by_index(super::INDEX_NODE, &req.node_id)
            .iter()
            .map(|i| i.spec.memory)
            .sum();
        if used + req.memory > ram {
            return Err(invalid(format!(
                "Not enough memory on node {}: {} MiB free, {} MiB requested",
                req.node_id,
                (ram - used).max(0),
                req.memory
            )));
        }
    }
    Ok(Plan {
        spec: InstanceSpec {
            display_name: req.name,
            user_id: req.user_id,
            image: container_image,
            image_name: Some(image.name.clone()),
            node: req.node_id,
            memory: req.memory,
            cpu: req.cpu,
            disk: req.disk,
            ports: req.ports,
            primary_port: req.primary_port,
            variables,
            suspended: false,
            power: crate::crd::Power::Running,
            restart_requested_at: None,
            reinstall: None,
        },
        kube_node,
        node_uid: node.uid(),
    })
}

/// The catalog's defaults, overridden by the deploy's variables; a required
/// variable without a default must be given.
pub(super) fn effective_variables(
    declared: &BTreeMap<String, super::catalog::Variable>,
    given: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, DeployError> {
    let mut effective = BTreeMap::new();
    for (key, var) in declared {
        match (given.get(key), &var.default) {
            (Some(v), _) | (None, Some(v)) => {
                effective.insert(key.clone(), v.clone());
            }
            (None, None) if var.required => {
                return Err(invalid(format!("Missing required variable: {key}")));
            }
            (None, None) => {}
        }
    }
    effective.extend(given);
    Ok(effective)
}

/// Fails early when a host port is held by an instance (other than `except`) on
/// any Berth Node that stands for the same Kubernetes node (the claims decide
/// for real).
pub(super) fn ports_free(
    store: &Store,
    node_id: &str,
    kube_node: &str,
    ports: &[PortMapping],
    except: Option<&str>,
) -> Result<(), DeployError> {
    let kube_nodes = store.kube_nodes.state();
    let sharing: Vec<String> = store
        .nodes
        .state()
        .iter()
        .filter(|n| {
            super::placement::resolve(&n.spec, &kube_nodes)
                .node()
                .is_some_and(|k| k.name_any() == kube_node)
        })
        .map(|n| n.name_any())
        .collect();
    // Each port asked for, on each Berth Node of that Kubernetes node: an index
    // lookup, not a walk of the node's instances (a deploy wave to nodes of a
    // thousand instances each spent a tenth of Berth's CPU in that walk).
    for p in ports {
        for other in &sharing {
            let key = super::node_port(other, p.host_port);
            let holders = store.instances.by_index(super::INDEX_NODE_PORT, &key);
            if holders.iter().any(|h| h.metadata.name.as_deref() != except) {
                return Err(port_taken(p.host_port, node_id, other, kube_node));
            }
        }
    }
    Ok(())
}

pub(super) fn port_taken(
    port: i32,
    node_id: &str,
    holder_node: &str,
    kube_node: &str,
) -> DeployError {
    if holder_node == node_id {
        invalid(format!(
            "Host port {port} is already in use on node {node_id}"
        ))
    } else {
        invalid(format!(
            "Host port {port} is already in use on Kubernetes node {kube_node} (by an instance on node {holder_node})"
        ))
    }
}

/// Deploys: a keyed retry gets its first attempt's Instance (completing it if a
/// crash interrupted it); anything else is checked, created and completed.
///
/// Everything from the create on runs as a task of its own that this awaits: a
/// caller dropped mid-way (a client that disconnects, a request timeout) cannot
/// stop it, not even while the create itself is in flight, when the Instance may
/// exist without anyone knowing yet.
pub async fn deploy(
    store: &Store,
    req: DeployRequest,
    keyed: Option<Keyed>,
) -> Result<Instance, DeployError> {
    // A keyed request is checked only once it is known not to be a retry: a
    // retry meets its first attempt whatever has changed since.
    let checked = match keyed {
        None => Checked::Now(plan(store, req)?),
        Some(_) => Checked::Later(req),
    };
    let store = store.clone();
    tokio::spawn(async move {
        if let Some(k) = &keyed
            && let Some(earlier) = earlier_attempt(&store, k).await?
        {
            return finish_earlier(&store, earlier).await;
        }
        let plan = match checked {
            Checked::Now(p) => p,
            Checked::Later(req) => plan(&store, req)?,
        };
        match create(&store, &plan, keyed.as_ref()).await? {
            Created::New(i) => complete(&store, i, &plan.kube_node, plan.node_uid.as_deref()).await,
            // A concurrent retry of the same request got there first.
            Created::Earlier(i) => finish_earlier(&store, i).await,
        }
    })
    .await
    .map_err(|e| DeployError::Task(e.to_string()))?
}

/// The Instance a keyed request made before, if it did (asked of the API server:
/// after a crash the informer may not have it yet). The same key with another
/// body is refused.
async fn earlier_attempt(store: &Store, k: &Keyed) -> Result<Option<Instance>, DeployError> {
    let found = store
        .instance_api()
        .get_opt(&k.key[..8])
        .await
        .map_err(failed("look up an earlier attempt"))?;
    let Some(found) = found.filter(|i| {
        i.annotations()
            .get(ANNOTATION_IDEMPOTENCY)
            .map(String::as_str)
            == Some(k.key.as_str())
    }) else {
        return Ok(None);
    };
    if found.annotations().get(ANNOTATION_REQUEST) != Some(&k.request) {
        return Err(DeployError::KeyReused);
    }
    Ok(Some(found))
}

/// Completes an earlier attempt of a keyed deploy (its claims may be missing
/// after a crash); rolls it back when that cannot be done.
async fn finish_earlier(store: &Store, earlier: Instance) -> Result<Instance, DeployError> {
    let node = store.nodes.get(&earlier.spec.node);
    let kube_node = node
        .as_ref()
        .and_then(|n| store.placement(n).node().map(|k| k.name_any()));
    let node_uid = node.and_then(|n| n.uid());
    match kube_node {
        Some(k) => complete(store, earlier, &k, node_uid.as_deref()).await,
        None => {
            let node = earlier.spec.node.clone();
            roll_back(store, &earlier, None).await;
            Err(invalid(format!("Node not found: {node}")))
        }
    }
}

/// A deploy checked before its task starts, or in it.
enum Checked {
    Now(Plan),
    Later(DeployRequest),
}

enum Created {
    New(Instance),
    Earlier(Instance),
}

/// Creates the Instance (step 2).
async fn create(store: &Store, plan: &Plan, keyed: Option<&Keyed>) -> Result<Created, DeployError> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut labels = BTreeMap::new();
    for (label, value) in [
        (LABEL_NODE, &plan.spec.node),
        (LABEL_USER, &plan.spec.user_id),
    ] {
        if crate::controller::pod::label_safe(value) {
            labels.insert(label.to_owned(), value.clone());
        }
    }
    let api = store.instance_api();
    for attempt in 0..ID_ATTEMPTS {
        // A keyed request's first id comes from its key, so a retry meets its first attempt.
        let keyed_id = keyed.filter(|_| attempt == 0);
        let id = keyed_id.map_or_else(short_id, |k| k.key[..8].to_owned());
        let mut inst = Instance::new(&id, plan.spec.clone());
        inst.metadata.labels = Some(labels.clone());
        if let Some(k) = keyed {
            inst.metadata.annotations = Some(BTreeMap::from([
                (ANNOTATION_IDEMPOTENCY.to_owned(), k.key.clone()),
                (ANNOTATION_REQUEST.to_owned(), k.request.clone()),
            ]));
        }
        match api.create(&params, &inst).await {
            Ok(created) => return Ok(Created::New(created)),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                if let Some(k) = keyed_id
                    && let Some(earlier) = earlier_attempt(store, k).await?
                {
                    return Ok(Created::Earlier(earlier));
                }
            }
            Err(e) => return Err(failed("create the instance")(e)),
        }
    }
    Err(DeployError::NoFreeId)
}

/// A fresh short id: the first 8 hex digits of a UUIDv4, as Skyport made them.
fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Claims the host ports and re-checks the node; rolls the Instance back on failure.
async fn complete(
    store: &Store,
    inst: Instance,
    kube_node: &str,
    node_uid: Option<&str>,
) -> Result<Instance, DeployError> {
    // Both only need the Instance to exist; neither waits for the other.
    let (claimed, survives) = tokio::join!(
        claim_ports(store, &inst, kube_node),
        node_survives(store, &inst.spec.node, node_uid)
    );
    let outcome = claimed.and_then(|()| match survives {
        Ok(true) => Ok(()),
        Ok(false) => Err(invalid(format!("Node not found: {}", inst.spec.node))),
        Err(e) => Err(e),
    });
    match outcome {
        Ok(()) => {
            info!(instance = %inst.name_any(), node = %inst.spec.node, user = %inst.spec.user_id, "instance deployed");
            store.instances.upsert(inst.clone());
            Ok(inst)
        }
        Err(e) => {
            roll_back(store, &inst, Some(kube_node)).await;
            Err(e)
        }
    }
}

/// Claims the instance's host ports on its Kubernetes node: of two racing deploys
/// only one gets each port. A claim this instance already holds (a retry) counts
/// as made.
async fn claim_ports(store: &Store, inst: &Instance, kube_node: &str) -> Result<(), DeployError> {
    claim_these(store, inst, kube_node, &inst.spec.ports).await
}

/// Claims `ports` for `inst` on its Kubernetes node, one at a time in ascending
/// order, as locks are taken: deploys racing for some of the same ports meet at
/// the lowest of them, and its winner goes on to the rest. Claimed in parallel (or
/// in each request's own order), each racer could win some ports and every one
/// of them fail.
pub(super) async fn claim_these(
    store: &Store,
    inst: &Instance,
    kube_node: &str,
    ports: &[PortMapping],
) -> Result<(), DeployError> {
    let api = store.instance_api();
    let owner = owner_ref(inst);
    let mut ports: Vec<&PortMapping> = ports.iter().collect();
    ports.sort_by_key(|p| p.host_port);
    for p in ports {
        let key = host_port_key(kube_node, p.host_port);
        let alive = |o: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference| {
            let api = api.clone();
            async move {
                Ok(api
                    .get_opt(&o.name)
                    .await?
                    .is_some_and(|x| x.uid().as_deref() == Some(o.uid.as_str())))
            }
        };
        let made = store
            .claims
            .create(
                ClaimKind::HostPort,
                &key,
                &inst.name_any(),
                owner.clone(),
                alive,
            )
            .await;
        match made {
            Ok(()) => {}
            Err(ClaimError::Taken { holder }) => {
                let holder_node = store
                    .instances
                    .get(&holder)
                    .map_or_else(|| inst.spec.node.clone(), |h| h.spec.node.clone());
                return Err(port_taken(
                    p.host_port,
                    &inst.spec.node,
                    &holder_node,
                    kube_node,
                ));
            }
            Err(ClaimError::Api(e)) => return Err(failed("claim the host ports")(e)),
        }
    }
    Ok(())
}

/// Whether the instance's node survives a deletion racing this deploy. A node
/// delete marks the node, then lists its instances, then deletes it; a deploy
/// creates its Instance, then reads the node. So either the delete sees the
/// Instance and gives up, or the deploy sees the mark and waits for the outcome:
/// exactly one of them wins.
async fn node_survives(
    store: &Store,
    node_id: &str,
    node_uid: Option<&str>,
) -> Result<bool, DeployError> {
    let deadline = tokio::time::Instant::now() + MARK_WAIT;
    loop {
        let node = store
            .node_api()
            .get_opt(node_id)
            .await
            .map_err(failed("read the node"))?;
        let Some(node) = node.filter(|n| node_uid.is_none() || n.uid().as_deref() == node_uid)
        else {
            return Ok(false);
        };
        if !super::nodes::being_deleted(&node) || tokio::time::Instant::now() >= deadline {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Undoes a deploy: deletes the Instance (retrying: an Instance left without its
/// claims would be half-made), then releases its claims at once (the garbage
/// collector frees them too, later). A delete that never succeeds leaves the
/// Instance visible, as it is.
async fn roll_back(store: &Store, inst: &Instance, kube_node: Option<&str>) {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: inst.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let deadline = tokio::time::Instant::now() + ROLLBACK_FOR;
    let mut pause = Duration::from_millis(200);
    let deleted = loop {
        match store.instance_api().delete(&inst.name_any(), &params).await {
            Ok(either) => break Some(either.left().unwrap_or_else(|| inst.clone())),
            // Gone already, or another object of this name now: ours is gone.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => break Some(inst.clone()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(instance = %inst.name_any(), error = %e, "failed to roll back an instance; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                error!(instance = %inst.name_any(), error = %e, "failed to roll back an instance: it stays, without all its host ports; delete it");
                break None;
            }
        }
    };
    let Some(deleted) = deleted else { return };
    store.instances.remove(&deleted);
    if let Some(kube_node) = kube_node {
        let uid = inst.uid().unwrap_or_default();
        for p in &inst.spec.ports {
            let key = host_port_key(kube_node, p.host_port);
            store.claims.release(ClaimKind::HostPort, &key, &uid).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::catalog::Variable;

    #[test]
    fn variables_take_catalog_defaults_and_require_what_has_none() {
        let declared = BTreeMap::from([
            (
                "VERSION".to_owned(),
                Variable {
                    default: Some("1.21".into()),
                    required: true,
                },
            ),
            (
                "EULA".to_owned(),
                Variable {
                    default: None,
                    required: true,
                },
            ),
            (
                "MOTD".to_owned(),
                Variable {
                    default: None,
                    required: false,
                },
            ),
        ]);
        let given = BTreeMap::from([
            ("EULA".to_owned(), "true".to_owned()),
            ("EXTRA".to_owned(), "x".to_owned()),
        ]);
        let effective = effective_variables(&declared, given).expect("valid");
        assert_eq!(effective.get("VERSION").map(String::as_str), Some("1.21"));
        assert_eq!(effective.get("EULA").map(String::as_str), Some("true"));
        assert_eq!(
            effective.get("EXTRA").map(String::as_str),
            Some("x"),
            "undeclared variables pass"
        );
        assert!(!effective.contains_key("MOTD"));
        let missing =
            effective_variables(&declared, BTreeMap::new()).expect_err("EULA is required");
        assert_eq!(missing.to_string(), "Missing required variable: EULA");
    }

    #[test]
    fn a_taken_port_names_the_node_holding_it() {
        assert_eq!(
            port_taken(25565, "n1", "n1", "kwok-node-1").to_string(),
            "Host port 25565 is already in use on node n1"
        );
        assert_eq!(
            port_taken(25565, "n1", "n2", "kwok-node-1").to_string(),
            "Host port 25565 is already in use on Kubernetes node kwok-node-1 (by an instance on node n2)"
        );
    }
}
