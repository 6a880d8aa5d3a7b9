//! `/api/instances`, `/api/instances/deploy`, `/api/instance/delete`,
//! `/api/getUserInstance`, `/api/getInstance`, `/api/instances/{suspend,unsuspend}/:id`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde::Serialize;
use serde_json::{Value, json};

use super::body::{Fields, has_control};
use super::error::{ApiError, ApiResult};
use super::idempotency::{self, IdempotencyKey};
use super::{AppState, Caller};
use crate::crd::{Instance, InstanceSpec, InstanceState, Node, PortMapping};
use crate::names::{ANNOTATION_IDEMPOTENCY, FIELD_MANAGER, LABEL_NODE, LABEL_USER};
use crate::store::claims::{ClaimError, ClaimKind, host_port_key};
use crate::store::users::owner_ref;
use crate::store::{INDEX_NODE, INDEX_USER};

/// Most ports one instance may have.
pub const MAX_PORTS: usize = 64;
/// Largest memory of one instance, in MiB (1 TiB).
pub const MAX_MEMORY: i64 = 1 << 20;
/// Largest disk of one instance, in MiB (64 TiB).
pub const MAX_DISK: i64 = 1 << 26;
/// Most CPU cores of one instance.
pub const MAX_CPU: f64 = 1024.0;
/// Most variables of one instance.
pub const MAX_VARIABLES: usize = 128;
/// How many fresh ids a deploy tries before giving up (8 hex digits rarely collide).
const ID_ATTEMPTS: usize = 5;

/// Routes of the instance endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/instances", get(list))
        .route("/api/instances/deploy", post(deploy))
        .route("/api/instance/delete", delete(remove))
        .route("/api/getUserInstance", post(user_instances))
        .route("/api/getInstance", post(get_instance))
        .route("/api/instances/suspend/{id}", post(suspend))
        .route("/api/instances/unsuspend/{id}", post(unsuspend))
}

// ---------------------------------------------------------------------------
// Parsing (pure)

/// Parses Skyport's port list: comma-separated `container:host` pairs or bare ports
/// (the same port on both sides). Host ports must be unique.
pub fn parse_ports(text: &str) -> Result<Vec<PortMapping>, String> {
    let port = |s: &str| -> Result<i32, String> {
        match s.trim().parse::<u32>() {
            Ok(p @ 1..=65535) => Ok(p as i32),
            _ => Err(format!(
                "ports: {:?} is not a port between 1 and 65535",
                s.trim()
            )),
        }
    };
    let mut mappings = Vec::new();
    let mut hosts = BTreeSet::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (container, host) = match item.split_once(':') {
            Some((c, h)) => (port(c)?, port(h)?),
            None => (port(item)?, port(item)?),
        };
        if !hosts.insert(host) {
            return Err(format!("ports: host port {host} is listed twice"));
        }
        mappings.push(PortMapping {
            container_port: container,
            host_port: host,
        });
    }
    if mappings.is_empty() {
        return Err("ports must list at least one port, e.g. \"25565:25565\"".into());
    }
    if mappings.len() > MAX_PORTS {
        return Err(format!("ports: at most {MAX_PORTS} ports"));
    }
    Ok(mappings)
}

/// Parses the primary port (`25565`, `"25565"` or `"25565:25565"`, whose host side
/// counts) and checks that it is one of the host ports.
pub fn parse_primary(value: &Value, ports: &[PortMapping]) -> Result<i32, String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err("primary must be a port".into()),
    };
    let host = text.rsplit(':').next().unwrap_or_default();
    let port = match host.parse::<u32>() {
        Ok(p @ 1..=65535) => p as i32,
        _ => {
            return Err(format!(
                "primary: {text:?} is not a port between 1 and 65535"
            ));
        }
    };
    if ports.iter().any(|p| p.host_port == port) {
        Ok(port)
    } else {
        Err(format!(
            "primary port {port} is not one of the instance's ports"
        ))
    }
}

/// Whether `name` can be an environment variable name.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Parses `variables`: an object, or a JSON string holding one. Values become text.
pub fn parse_variables(value: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let parsed;
    let object = match value {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o,
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(BTreeMap::new()),
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|_| "variables must be an object or a JSON string of one")?;
            parsed
                .as_object()
                .ok_or("variables must be an object or a JSON string of one")?
        }
        Some(_) => return Err("variables must be an object or a JSON string of one".into()),
    };
    if object.len() > MAX_VARIABLES {
        return Err(format!("variables: at most {MAX_VARIABLES}"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in object {
        if !valid_env_name(k) {
            return Err(format!("variables: {k:?} is not a valid variable name"));
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(format!(
                    "variables: {k} must be a string, number or boolean"
                ));
            }
        };
        if text.len() > 4096 || text.contains('\0') {
            return Err(format!(
                "variables: {k} is too long or holds a NUL character"
            ));
        }
        out.insert(k.clone(), text);
    }
    Ok(out)
}

/// The canonical port string of an instance (`container:host,...`).
pub fn ports_string(ports: &[PortMapping]) -> String {
    ports
        .iter()
        .map(|p| format!("{}:{}", p.container_port, p.host_port))
        .collect::<Vec<_>>()
        .join(",")
}

/// Skyport's `InternalState` of a Berth state.
pub fn internal_state(state: Option<InstanceState>) -> &'static str {
    match state {
        Some(InstanceState::Running | InstanceState::Suspended) => "READY",
        Some(InstanceState::Failed) => "FAILED",
        Some(InstanceState::Pending | InstanceState::Installing) | None => "INSTALLING",
    }
}

// ---------------------------------------------------------------------------
// Views

/// The node of an instance, as clients see it inside the instance (no credentials).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct InstanceNode {
    id: String,
    name: Option<String>,
    address: Option<String>,
    port: Option<i32>,
    tags: Option<String>,
}

/// An instance as clients see it (Skyport's field names). Its schema is what
/// `/api/openapi.json` documents.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[allow(non_snake_case)]
pub struct InstanceView {
    Id: String,
    Name: String,
    /// The owner's userId.
    User: String,
    Node: InstanceNode,
    Image: String,
    ImageName: Option<String>,
    /// MiB.
    Memory: i64,
    /// Cores.
    Cpu: f64,
    /// MiB.
    Disk: Option<i64>,
    /// `container:host` pairs.
    Ports: String,
    Primary: i32,
    /// `INSTALLING`, `READY` or `FAILED`.
    #[schema(value_type = String)]
    InternalState: &'static str,
    /// Berth's state: Pending, Installing, Running, Failed, Suspended.
    #[schema(value_type = String)]
    State: &'static str,
    /// Where players connect: node address and primary port.
    Address: Option<String>,
    suspended: bool,
    Env: Vec<String>,
    ContainerId: Option<String>,
    VolumeId: String,
    CreatedAt: Option<String>,
}

fn state_name(state: Option<InstanceState>) -> &'static str {
    match state {
        Some(InstanceState::Pending) | None => "Pending",
        Some(InstanceState::Installing) => "Installing",
        Some(InstanceState::Running) => "Running",
        Some(InstanceState::Failed) => "Failed",
        Some(InstanceState::Suspended) => "Suspended",
    }
}

/// The client's view of an instance.
pub fn view(state: &AppState, inst: &Instance) -> InstanceView {
    let id = inst.name_any();
    let node: Option<Arc<Node>> = state.store.nodes.get(&inst.spec.node);
    let status = inst.status.as_ref();
    let primary_container = inst
        .spec
        .ports
        .iter()
        .find(|p| p.host_port == inst.spec.primary_port)
        .map_or(inst.spec.primary_port, |p| p.container_port);
    let mut env: Vec<String> = inst
        .spec
        .variables
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("PRIMARY_PORT={primary_container}"));
    InstanceView {
        Name: inst.spec.display_name.clone(),
        User: inst.spec.user_id.clone(),
        Node: InstanceNode {
            id: inst.spec.node.clone(),
            name: node.as_ref().map(|n| n.spec.display_name.clone()),
            address: node.as_ref().map(|n| n.spec.address.clone()),
            port: node.as_ref().and_then(|n| n.spec.port),
            tags: node.as_ref().and_then(|n| n.spec.tags.clone()),
        },
        Image: inst.spec.image.clone(),
        ImageName: inst.spec.image_name.clone(),
        Memory: inst.spec.memory,
        Cpu: inst.spec.cpu,
        Disk: inst.spec.disk,
        Ports: ports_string(&inst.spec.ports),
        Primary: inst.spec.primary_port,
        InternalState: internal_state(status.and_then(|s| s.state)),
        State: state_name(status.and_then(|s| s.state)),
        Address: status.and_then(|s| s.address.clone()),
        suspended: inst.spec.suspended,
        Env: env,
        ContainerId: status.and_then(|s| s.pod_name.clone()),
        VolumeId: id.clone(),
        CreatedAt: inst.creation_timestamp().map(|t| t.0.to_string()),
        Id: id,
    }
}

// ---------------------------------------------------------------------------
// Handlers

/// Every instance.
#[utoipa::path(get, path = "/api/instances", tag = "instances",
    responses((status = 200, description = "List of instances", body = [InstanceView]),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn list(State(state): State<AppState>) -> axum::response::Response {
    let versions = vec![state.store.instances.version(), state.store.nodes.version()];
    state.lists().get("instances", versions, || {
        let views: Vec<InstanceView> = state
            .store
            .instances
            .list()
            .iter()
            .map(|i| view(&state, i))
            .collect();
        serde_json::to_vec(&views).unwrap_or_default()
    })
}

/// One instance.
#[utoipa::path(post, path = "/api/getInstance", tag = "instances",
    request_body(content = super::openapi::InstanceIdDoc, content_type = "application/json"),
    responses((status = 200, description = "Instance details", body = InstanceView),
              (status = 400, description = "Missing instance ID or instance not found", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn get_instance(
    State(state): State<AppState>,
    fields: Fields,
) -> ApiResult<Json<InstanceView>> {
    let id = fields.required_text("id", 253)?;
    let inst = state
        .store
        .instances
        .get(&id)
        .ok_or_else(|| ApiError::bad_request("Instance not found"))?;
    Ok(Json(view(&state, &inst)))
}

/// The instances of one user.
#[utoipa::path(post, path = "/api/getUserInstance", tag = "instances",
    request_body(content = super::openapi::UserIdDoc, content_type = "application/json"),
    responses((status = 200, description = "List of user instances", body = [InstanceView]),
              (status = 400, description = "Missing user ID or user not found", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn user_instances(
    State(state): State<AppState>,
    fields: Fields,
) -> ApiResult<Json<Vec<InstanceView>>> {
    let user_id = fields.required_text("userId", 256)?;
    if state.store.users.by_id(&user_id).is_none() {
        return Err(ApiError::bad_request("User not found"));
    }
    let instances = state.store.instances.by_index(INDEX_USER, &user_id);
    Ok(Json(instances.iter().map(|i| view(&state, i)).collect()))
}

/// Everything a deploy asked for, checked.
struct Deploy {
    spec: InstanceSpec,
}

/// Reads and checks a deploy body against the caches: the node, the user, the
/// catalog, host ports in use and the node's memory.
fn check_deploy(state: &AppState, fields: &Fields) -> ApiResult<Deploy> {
    fields.require(&[
        "image", "memory", "cpu", "ports", "nodeId", "name", "user", "primary",
    ])?;
    fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
        ApiError::bad_request(message)
    }
    let name = fields.required_text("name", 256)?;
    let memory = fields
        .integer("memory", 1, MAX_MEMORY)
        .map_err(|_| {
            bad(format!(
                "memory must be a whole number of MiB between 1 and {MAX_MEMORY}"
            ))
        })?
        .ok_or_else(|| bad("Missing required field: memory"))?;
    let cpu = fields
        .number("cpu")?
        .ok_or_else(|| bad("Missing required field: cpu"))?;
    if !(cpu > 0.0 && cpu <= MAX_CPU) {
        return Err(bad(format!(
            "cpu must be a number of cores greater than 0 and at most {MAX_CPU}"
        )));
    }
    let disk = fields.integer("disk", 1, MAX_DISK).map_err(|_| {
        bad(format!(
            "disk must be a whole number of MiB between 1 and {MAX_DISK}"
        ))
    })?;
    let ports_text = match fields.get("ports") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(bad(
                "ports must be a string such as \"25565:25565,25566:25566\"",
            ));
        }
    };
    if has_control(&ports_text) || ports_text.len() > 4096 {
        return Err(bad(
            "ports must be a string such as \"25565:25565,25566:25566\"",
        ));
    }
    let ports = parse_ports(&ports_text).map_err(bad)?;
    let primary_port =
        parse_primary(fields.get("primary").unwrap_or(&Value::Null), &ports).map_err(bad)?;
    let variables = parse_variables(fields.get("variables")).map_err(bad)?;

    let node_id = fields.required_text("nodeId", 253)?;
    let node = state
        .store
        .nodes
        .get(&node_id)
        .ok_or_else(|| bad(format!("Node not found: {node_id}")))?;
    let user_id = fields.required_text("user", 256)?;
    if state.store.users.by_id(&user_id).is_none() {
        return Err(bad(format!("User not found: {user_id}")));
    }
    let reference = fields.required_text("image", 1024)?;
    let (image, container_image) = state
        .store
        .catalog
        .find(&reference)
        .ok_or_else(|| bad(format!("Image not found in the catalog: {reference}")))?;
    if let Some(name) = fields.text("imagename", 256)?
        && name != image.name
        && image.id.as_deref() != Some(name.as_str())
    {
        return Err(bad(format!(
            "imagename {name:?} does not match the image {:?}",
            image.name
        )));
    }
    // Effective variables: the catalog's defaults, overridden by the deploy.
    let mut effective = BTreeMap::new();
    for (key, var) in &image.variables {
        match (variables.get(key), &var.default) {
            (Some(v), _) => {
                effective.insert(key.clone(), v.clone());
            }
            (None, Some(d)) => {
                effective.insert(key.clone(), d.clone());
            }
            (None, None) if var.required => {
                return Err(bad(format!("Missing required variable: {key}")));
            }
            (None, None) => {}
        }
    }
    effective.extend(variables);

    let on_node = state.store.instances.by_index(INDEX_NODE, &node_id);
    for p in &ports {
        if on_node
            .iter()
            .any(|i| i.spec.ports.iter().any(|q| q.host_port == p.host_port))
        {
            return Err(bad(format!(
                "Host port {} is already in use on node {node_id}",
                p.host_port
            )));
        }
    }
    if let Some(ram) = node.spec.ram.filter(|r| *r > 0) {
        let used: i64 = on_node.iter().map(|i| i.spec.memory).sum();
        if used + memory > ram {
            return Err(bad(format!(
                "Not enough memory on node {node_id}: {} MiB free, {memory} MiB requested",
                (ram - used).max(0)
            )));
        }
    }
    Ok(Deploy {
        spec: InstanceSpec {
            display_name: name,
            user_id,
            image: container_image,
            image_name: Some(image.name.clone()),
            node: node_id,
            memory,
            cpu,
            disk,
            ports,
            primary_port,
            variables: effective,
            suspended: false,
        },
    })
}

/// A fresh short id: the first 8 hex digits of a UUIDv4, as Skyport made them.
fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// The 201 answer of a deploy.
fn deployed(id: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(
            json!({ "message": "Instance deployed", "Id": id, "volumeId": id, "state": "INSTALLING" }),
        ),
    )
}

/// The Instance a keyed request made before, if it did (asked of the API server:
/// after a crash the cache may not have it yet).
async fn earlier_attempt(state: &AppState, idem: &str) -> ApiResult<Option<Instance>> {
    let found = state
        .store
        .instance_api()
        .get_opt(&idem[..8])
        .await
        .map_err(|e| ApiError::kube("look up an earlier attempt", e))?;
    Ok(found.filter(|i| {
        i.annotations()
            .get(ANNOTATION_IDEMPOTENCY)
            .map(String::as_str)
            == Some(idem)
    }))
}

/// Undoes a deploy: its claims (the garbage collector would free them too, slower) and the Instance.
async fn roll_back(state: &AppState, inst: &Instance) {
    let uid = inst.uid().unwrap_or_default();
    for p in &inst.spec.ports {
        let key = host_port_key(&inst.spec.node, p.host_port);
        state
            .store
            .claims
            .release(ClaimKind::HostPort, &key, &uid)
            .await;
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: inst.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(e) = state
        .store
        .instance_api()
        .delete(&inst.name_any(), &params)
        .await
    {
        tracing::warn!(instance = %inst.name_any(), error = %e, "failed to roll back an instance");
    }
    state.store.instances.remove(inst);
}

/// Claims the instance's host ports on its node: of two racing deploys only one
/// gets each port. A claim this instance already holds (a retry) counts as made.
async fn claim_ports(state: &AppState, inst: &Instance) -> ApiResult<()> {
    let api = state.store.instance_api();
    let owner = owner_ref(inst);
    for p in &inst.spec.ports {
        let key = host_port_key(&inst.spec.node, p.host_port);
        let alive = |o: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference| {
            let api = api.clone();
            async move {
                Ok(api
                    .get_opt(&o.name)
                    .await?
                    .is_some_and(|x| x.uid().as_deref() == Some(o.uid.as_str())))
            }
        };
        match state
            .store
            .claims
            .create(
                ClaimKind::HostPort,
                &key,
                &inst.name_any(),
                owner.clone(),
                alive,
            )
            .await
        {
            Ok(()) => {}
            Err(ClaimError::Taken { .. }) => {
                return Err(ApiError::bad_request(format!(
                    "Host port {} is already in use on node {}",
                    p.host_port, inst.spec.node
                )));
            }
            Err(ClaimError::Api(e)) => return Err(ApiError::kube("claim the host ports", e)),
        }
    }
    Ok(())
}

/// Whether the instance's node survives a deletion racing this deploy. A node
/// delete marks the node, then lists its instances, then deletes it; a deploy
/// creates its Instance, then reads the node. So either the delete sees the
/// Instance and gives up, or the deploy sees the mark and waits for the outcome:
/// exactly one of them wins.
async fn node_survives(state: &AppState, node_id: &str, node_uid: Option<&str>) -> ApiResult<bool> {
    let deadline = tokio::time::Instant::now() + MARK_WAIT;
    loop {
        let node = state
            .store
            .node_api()
            .get_opt(node_id)
            .await
            .map_err(|e| ApiError::kube("read the node", e))?;
        let Some(node) = node.filter(|n| node_uid.is_none() || n.uid().as_deref() == node_uid)
        else {
            return Ok(false);
        };
        if !super::nodes::being_deleted(&node) || tokio::time::Instant::now() >= deadline {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How long a deploy waits for a racing node delete to finish.
const MARK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Deploys an instance. With an `Idempotency-Key` header, a retried request gets
/// the instance of its first attempt.
#[utoipa::path(post, path = "/api/instances/deploy", tag = "instances",
    request_body(content = super::openapi::DeployDoc, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this deploy safe")),
    responses((status = 201, description = "Instance created", body = super::openapi::DeployedDoc),
              (status = 400, description = "Missing or invalid parameters", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn deploy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    IdempotencyKey(key): IdempotencyKey,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let idem = key.map(|k| idempotency::digest(&caller.key_digest, &k));
    if let Some(d) = &idem
        && let Some(earlier) = earlier_attempt(&state, d).await?
    {
        // A retry: finish what the first attempt may not have (its claims).
        claim_ports(&state, &earlier).await?;
        state.store.instances.upsert(earlier.clone());
        return Ok(deployed(&earlier.name_any()));
    }
    let Deploy { spec } = check_deploy(&state, &fields)?;
    let node_uid = state.store.nodes.get(&spec.node).and_then(|n| n.uid());
    let api = state.store.instance_api();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut labels = std::collections::BTreeMap::new();
    for (label, value) in [(LABEL_NODE, &spec.node), (LABEL_USER, &spec.user_id)] {
        if crate::controller::pod::label_safe(value) {
            labels.insert(label.to_owned(), value.clone());
        }
    }
    let mut created = None;
    for attempt in 0..ID_ATTEMPTS {
        // A keyed request's first id comes from its key, so a retry meets its first attempt.
        let keyed = attempt == 0 && idem.is_some();
        let id = match (&idem, keyed) {
            (Some(d), true) => d[..8].to_owned(),
            _ => short_id(),
        };
        let mut inst = Instance::new(&id, spec.clone());
        inst.metadata.labels = Some(labels.clone());
        if let Some(d) = &idem {
            inst.metadata.annotations =
                Some([(ANNOTATION_IDEMPOTENCY.to_owned(), d.clone())].into());
        }
        match api.create(&params, &inst).await {
            Ok(c) => {
                created = Some(c);
                break;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                if keyed
                    && let Some(d) = &idem
                    && let Some(earlier) = earlier_attempt(&state, d).await?
                {
                    // A concurrent retry of the same request got there first.
                    claim_ports(&state, &earlier).await?;
                    return Ok(deployed(&earlier.name_any()));
                }
            }
            Err(e) => return Err(ApiError::kube("create the instance", e)),
        }
    }
    let created = created
        .ok_or_else(|| ApiError::internal("find a free instance id", &"every attempt collided"))?;
    let id = created.name_any();
    // Both only need the Instance to exist; neither waits for the other.
    let (claimed, survives) = tokio::join!(
        claim_ports(&state, &created),
        node_survives(&state, &spec.node, node_uid.as_deref())
    );
    let outcome = claimed.and_then(|()| match survives {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::bad_request(format!(
            "Node not found: {}",
            spec.node
        ))),
        Err(e) => Err(e),
    });
    if let Err(e) = outcome {
        roll_back(&state, &created).await;
        return Err(e);
    }
    state.store.instances.upsert(created);
    tracing::info!(instance = %id, node = %spec.node, user = %spec.user_id, "instance deployed");
    Ok(deployed(&id))
}

/// Deletes an instance; the controller and the garbage collector remove what it owns.
#[utoipa::path(delete, path = "/api/instance/delete", tag = "instances",
    request_body(content = super::openapi::InstanceIdDoc, content_type = "application/json"),
    responses((status = 201, description = "Instance deleted", body = super::openapi::MessageDoc),
              (status = 400, description = "Missing ID or instance not found", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn remove(
    State(state): State<AppState>,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = fields.required_text("id", 253)?;
    let existing = match state
        .store
        .instance_api()
        .delete(&id, &DeleteParams::background())
        .await
    {
        Ok(either) => either.left(),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(ApiError::bad_request("Instance not found"));
        }
        Err(e) => return Err(ApiError::kube("delete the instance", e)),
    };
    if let Some(inst) = existing.or_else(|| state.store.instances.get(&id).map(|i| (*i).clone())) {
        state.store.instances.remove(&inst);
    }
    tracing::info!(instance = %id, "instance deleted");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "message": "Instance deleted" })),
    ))
}

async fn set_suspended(state: &AppState, id: &str, suspended: bool) -> ApiResult<Json<Value>> {
    if has_control(id) || id.len() > 253 || state.store.instances.get(id).is_none() {
        return Err(ApiError::bad_request("Instance not found"));
    }
    let patch = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
        "spec": { "suspended": suspended }
    });
    // Forced: the API is the one writer of spec, and it created the object with
    // a plain create, which server-side apply counts as another manager.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let updated = match state
        .store
        .instance_api()
        .patch(id, &params, &Patch::Apply(&patch))
        .await
    {
        Ok(u) => u,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(ApiError::bad_request("Instance not found"));
        }
        Err(e) => return Err(ApiError::kube("update the instance", e)),
    };
    state.store.instances.upsert(updated);
    let word = if suspended {
        "suspended"
    } else {
        "unsuspended"
    };
    tracing::info!(instance = %id, "instance {word}");
    Ok(Json(
        json!({ "message": format!("Instance {word}"), "Id": id, "suspended": suspended }),
    ))
}

/// Suspends an instance: its Pod goes, its data and resource stay.
#[utoipa::path(post, path = "/api/instances/suspend/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Instance suspended", body = super::openapi::SuspendedDoc),
              (status = 400, description = "Instance not found", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn suspend(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_suspended(&state, &id, true).await
}

/// Brings a suspended instance back.
#[utoipa::path(post, path = "/api/instances/unsuspend/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses((status = 200, description = "Instance unsuspended", body = super::openapi::SuspendedDoc),
              (status = 400, description = "Instance not found", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn unsuspend(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_suspended(&state, &id, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(c: i32, h: i32) -> PortMapping {
        PortMapping {
            container_port: c,
            host_port: h,
        }
    }

    #[test]
    fn ports_parse_pairs_and_bare_ports() {
        assert_eq!(
            parse_ports("25565:25565,25566:25567").expect("ok"),
            [pm(25565, 25565), pm(25566, 25567)]
        );
        assert_eq!(parse_ports(" 25565 ").expect("ok"), [pm(25565, 25565)]);
        assert_eq!(
            parse_ports("7777, 27015:27016").expect("ok"),
            [pm(7777, 7777), pm(27015, 27016)]
        );
        for bad in [
            "",
            ",",
            "0",
            "70000",
            "a:b",
            "1:2:3",
            "25565:25565,1:25565",
            "-1",
            "1.5",
        ] {
            assert!(parse_ports(bad).is_err(), "{bad:?}");
        }
        let many = (1..=65)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_ports(&many).is_err());
    }

    #[test]
    fn primary_is_one_of_the_host_ports() {
        let ports = [pm(25565, 25565), pm(8080, 30080)];
        assert_eq!(parse_primary(&json!(25565), &ports), Ok(25565));
        assert_eq!(parse_primary(&json!("25565"), &ports), Ok(25565));
        assert_eq!(parse_primary(&json!("8080:30080"), &ports), Ok(30080));
        assert!(parse_primary(&json!(8080), &ports).is_err());
        assert!(parse_primary(&json!("x"), &ports).is_err());
        assert!(parse_primary(&json!(null), &ports).is_err());
    }

    #[test]
    fn variables_come_as_objects_or_json_strings() {
        let expected = BTreeMap::from([
            ("VERSION".to_owned(), "1.21".to_owned()),
            ("EULA".to_owned(), "true".to_owned()),
        ]);
        assert_eq!(
            parse_variables(Some(&json!({ "VERSION": "1.21", "EULA": true }))),
            Ok(expected.clone())
        );
        assert_eq!(
            parse_variables(Some(&json!(r#"{"VERSION":"1.21","EULA":true}"#))),
            Ok(expected)
        );
        assert_eq!(parse_variables(None), Ok(BTreeMap::new()));
        assert!(parse_variables(Some(&json!("[1]"))).is_err());
        assert!(parse_variables(Some(&json!({ "BAD NAME": "x" }))).is_err());
        assert!(parse_variables(Some(&json!({ "A": { "nested": 1 } }))).is_err());
        assert!(parse_variables(Some(&json!(5))).is_err());
    }

    #[test]
    fn states_map_to_skyport() {
        assert_eq!(internal_state(None), "INSTALLING");
        assert_eq!(
            internal_state(Some(InstanceState::Installing)),
            "INSTALLING"
        );
        assert_eq!(internal_state(Some(InstanceState::Running)), "READY");
        assert_eq!(internal_state(Some(InstanceState::Failed)), "FAILED");
    }
}
