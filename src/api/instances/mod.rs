//! `/api/instances`, `/api/instances/deploy`, `/api/instance/delete`,
//! `/api/getUserInstance`, `/api/getInstance`, `/api/instances/{suspend,unsuspend}/:id`.
//! Handlers parse ([`parse`]), call the store's protocols and render ([`view`]).

pub mod lifecycle;
pub mod parse;
pub mod view;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::body::{Fields, has_control};
use super::error::{ApiError, ApiResult};
use super::idempotency::{self, IdempotencyKey};
use super::lists::{ListRequest, Rendered};
use super::{AppState, Caller};
use crate::store::deploy::{self, Keyed};
use crate::store::{INDEX_USER, instances};
pub use view::{InstanceView, view};

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
        .route("/api/instances/{id}", patch(lifecycle::edit))
        .route("/api/instances/{id}/reinstall", post(lifecycle::reinstall))
}

/// Routes the panel or a user's token calls.
pub fn shared_router() -> Router<AppState> {
    Router::new().route("/api/instances/{id}/power", post(lifecycle::power))
}

/// Every instance, or a page of them (`?page=&perPage=`; without them the
/// Skyport answer, gzip-compressed when the client accepts it).
#[utoipa::path(get, path = "/api/instances", tag = "instances",
    params(super::lists::PageQuery),
    responses((status = 200, description = "List of instances, by id (a page: `X-Total-Count` and `Link` headers)", body = [InstanceView]),
              (status = 400, description = "A bad page or perPage", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc)))]
pub async fn list(State(state): State<AppState>, request: ListRequest) -> axum::response::Response {
    let versions = vec![state.store.instances.version(), state.store.nodes.version()];
    let build_state = state.clone();
    let list = state
        .lists()
        .get("instances", versions, move |previous| {
            let state = build_state;
            // A view reads its Instance and its Berth Node's spec.
            let nodes = view::nodes_stamp(&state.store.nodes.list());
            let instances = state.store.instances.list();
            let items = instances.iter().map(|i| {
                let rv = i
                    .resource_version()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                (
                    i.metadata.name.as_deref().unwrap_or_default(),
                    (rv, nodes),
                    i,
                )
            });
            Rendered::reusing(previous.as_deref(), items, |i| view(&state, i))
        })
        .await;
    request.respond(&list).await
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

/// Deploys an instance. With an `Idempotency-Key` header, a retried request gets
/// the instance of its first attempt; the same key with another body is a 422.
#[utoipa::path(post, path = "/api/instances/deploy", tag = "instances",
    request_body(content = super::openapi::DeployDoc, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this deploy safe")),
    responses((status = 201, description = "Instance created", body = super::openapi::DeployedDoc),
              (status = 400, description = "Missing or invalid parameters", body = super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::openapi::ErrorDoc),
              (status = 422, description = "The Idempotency-Key was used with a different request", body = super::openapi::ErrorDoc)))]
pub async fn deploy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    IdempotencyKey(key): IdempotencyKey,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let keyed = key.map(|k| Keyed {
        key: idempotency::digest(&caller.key_digest, &k),
        request: fields.digest(),
    });
    let request = parse::deploy_request(&fields)?;
    let inst = deploy::deploy(&state.store, request, keyed).await?;
    let id = inst.name_any();
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "message": "Instance deployed", "Id": id, "volumeId": id, "state": "INSTALLING" }),
        ),
    ))
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
    instances::delete(&state.store, &id).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "message": "Instance deleted" })),
    ))
}

async fn set_suspended(state: &AppState, id: &str, suspended: bool) -> ApiResult<Json<Value>> {
    if has_control(id) || id.len() > 253 {
        return Err(ApiError::bad_request("Instance not found"));
    }
    instances::set_suspended(&state.store, id, suspended).await?;
    let word = if suspended {
        "suspended"
    } else {
        "unsuspended"
    };
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
