//! `/api/nodes`, `/api/nodes/create`, `/api/nodes/delete`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};

use super::AppState;
use super::body::Fields;
use super::error::{ApiError, ApiResult};
use crate::crd::{Node, NodeSpec, NodeState};
use crate::store::{INDEX_NODE, nodes};

/// Largest node memory or disk accepted, in MiB (1 PiB).
const MAX_SIZE_MIB: i64 = 1 << 30;

/// Routes of the node endpoints.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/nodes", get(list))
        .route("/api/nodes/create", post(create))
        .route("/api/nodes/delete", delete(remove))
}

/// A node as clients see it (Skyport's field names; no credentials). Its schema
/// is what `/api/openapi.json` documents.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// The node's id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Tags as sent.
    pub tags: Option<String>,
    /// Memory in MiB.
    pub ram: Option<i64>,
    /// Disk in MiB.
    pub disk: Option<i64>,
    /// Processor description.
    pub processor: Option<String>,
    /// Address.
    pub address: String,
    /// Daemon port.
    pub port: Option<i32>,
    /// Online, Offline or Unknown.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// The Kubernetes node it stands for, once matched.
    pub kubernetes_node: Option<String>,
    /// Number of instances on it.
    #[schema(value_type = u32)]
    pub instances: usize,
}

/// The wire name of a node state.
pub fn state_name(state: Option<NodeState>) -> &'static str {
    match state {
        Some(NodeState::Online) => "Online",
        Some(NodeState::Offline) => "Offline",
        Some(NodeState::Unknown) | None => "Unknown",
    }
}

/// The client's view of `node`.
pub fn view(state: &AppState, node: &Node) -> NodeView {
    let id = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.as_ref();
    NodeView {
        instances: state.store.instances.count_by_index(INDEX_NODE, &id),
        id,
        name: node.spec.display_name.clone(),
        tags: node.spec.tags.clone(),
        ram: node.spec.ram,
        disk: node.spec.disk,
        processor: node.spec.processor.clone(),
        address: node.spec.address.clone(),
        port: node.spec.port,
        status: state_name(status.and_then(|s| s.state)),
        kubernetes_node: status.and_then(|s| s.kubernetes_node.clone()),
    }
}

/// Every node with its status.
#[utoipa::path(get, path = "/api/nodes", tag = "nodes",
    responses((status = 200, description = "List of nodes", body = [NodeView]),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<NodeView>> {
    Json(
        state
            .store
            .nodes
            .list()
            .iter()
            .map(|n| view(&state, n))
            .collect(),
    )
}

/// Parses a size in MiB: a number, a numeric string, or a string with a unit
/// (`512MB`, `8 GB`, `8GiB`, `1T`); units are binary, as panels mean them.
pub fn parse_mib(value: &Value) -> Option<i64> {
    let (number, unit) = match value {
        Value::Number(n) => (n.as_f64()?, String::new()),
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            (
                s[..split].parse::<f64>().ok()?,
                s[split..].trim().to_ascii_lowercase(),
            )
        }
        _ => return None,
    };
    let factor = match unit.as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        _ => return None,
    };
    let mib = number * factor;
    (mib.is_finite() && mib >= 0.0 && mib.fract() == 0.0 && mib <= MAX_SIZE_MIB as f64)
        .then_some(mib as i64)
}

fn size(fields: &Fields, key: &str) -> ApiResult<Option<i64>> {
    match fields.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(v) => parse_mib(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{key} must be a size in MiB, or with a unit such as 8GB"
            ))
        }),
    }
}

/// Whether `address` is an IP address or a DNS name.
pub fn valid_address(address: &str) -> bool {
    if address.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Reads and checks a node-create body.
fn node_spec(fields: &Fields) -> ApiResult<NodeSpec> {
    fields.require(&["name", "address"])?;
    let address = fields.required_text("address", 253)?.trim().to_owned();
    if !valid_address(&address) {
        return Err(ApiError::bad_request(
            "address must be an IP address or a host name",
        ));
    }
    let tags = match fields.get("tags") {
        Some(Value::Array(items)) => {
            let tags: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            Some(
                tags.ok_or_else(|| {
                    ApiError::bad_request("tags must be a string or a list of strings")
                })?
                .join(","),
            )
        }
        _ => fields.text("tags", 1024)?,
    };
    let kubernetes_node = fields.text("kubernetesNode", 253)?;
    if kubernetes_node
        .as_deref()
        .is_some_and(|n| !valid_address(n))
    {
        return Err(ApiError::bad_request(
            "kubernetesNode must be a Kubernetes node name",
        ));
    }
    Ok(NodeSpec {
        display_name: fields.required_text("name", 256)?,
        tags,
        ram: size(fields, "ram")?,
        disk: size(fields, "disk")?,
        processor: fields.text("processor", 256)?,
        address,
        port: fields.integer("port", 1, 65535)?.map(|p| p as i32),
        kubernetes_node,
    })
}

/// Registers a node.
#[utoipa::path(post, path = "/api/nodes/create", tag = "nodes",
    request_body(content = super::openapi::CreateNodeDoc, content_type = "application/json"),
    responses((status = 201, description = "Node created", body = NodeView),
              (status = 400, description = "Missing or invalid parameters", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn create(
    State(state): State<AppState>,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<NodeView>)> {
    let spec = node_spec(&fields)?;
    let created = nodes::create(&state.store, spec).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &created))))
}

/// Removes a node that holds no instance (see [`nodes::delete`] for how a deploy
/// racing it is decided).
#[utoipa::path(delete, path = "/api/nodes/delete", tag = "nodes",
    request_body(content = super::openapi::DeleteNodeDoc, content_type = "application/json"),
    responses((status = 201, description = "Node deleted", body = super::openapi::MessageDoc),
              (status = 400, description = "Invalid or missing node ID, or instances remain on it", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn remove(
    State(state): State<AppState>,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = fields.required_text("nodeId", 253)?;
    nodes::delete(&state.store, &id).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "message": "Node deleted" })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_mib_with_or_without_units() {
        let cases = [
            (json!(8192), Some(8192)),
            (json!("8192"), Some(8192)),
            (json!("8GB"), Some(8192)),
            (json!("8 gib"), Some(8192)),
            (json!("512M"), Some(512)),
            (json!("1T"), Some(1_048_576)),
            (json!("1.5G"), Some(1536)),
            (json!("0.3"), None),
            (json!("-1"), None),
            (json!("lots"), None),
            (json!("8XB"), None),
            (json!(true), None),
            (json!(1e300), None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_mib(&input), expected, "{input}");
        }
    }

    #[test]
    fn addresses_are_ips_or_host_names() {
        for ok in ["127.0.10.1", "::1", "node-1.example.com", "kwok-node-1"] {
            assert!(valid_address(ok), "{ok}");
        }
        for bad in ["", "a..b", "-a", "a b", "a/b", "ü.de", "x:1"] {
            assert!(!valid_address(bad), "{bad}");
        }
    }
}
