//! `POST /api/instances/:id/power`, `PATCH /api/instances/:id`,
//! `POST /api/instances/:id/reinstall`: a server's lifecycle, as panels drive it.
//! Each writes an intent into the Instance; the controller carries it out, so the
//! answers are 202 (power, reinstall) or the instance as written (edit).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::body::{Fields, has_control};
use super::super::error::{ApiError, ApiResult};
use super::parse;
use super::view::{InstanceView, power_name, view};
use crate::store::{edit, instances};

/// An id from the path, or the reference's 400.
fn instance_id(id: &str) -> ApiResult<&str> {
    if has_control(id) || id.is_empty() || id.len() > 253 {
        return Err(ApiError::bad_request("Instance not found"));
    }
    Ok(id)
}

/// Starts, stops, restarts or kills a server (Wings' `set state`).
#[utoipa::path(post, path = "/api/instances/{id}/power", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    request_body(content = super::super::openapi::PowerDoc, content_type = "application/json"),
    responses((status = 202, description = "Accepted: the desired power, and the power now", body = super::super::openapi::PoweredDoc),
              (status = 400, description = "Instance not found, or an unknown action", body = super::super::openapi::ErrorDoc),
              (status = 401, description = "API key or token missing or invalid", body = super::super::openapi::ErrorDoc),
              (status = 403, description = "The token does not allow power actions on this instance", body = super::super::openapi::ErrorDoc),
              (status = 409, description = "The instance is suspended", body = super::super::openapi::ErrorDoc),
              (status = 429, description = "Too many invalid tokens from this address", body = super::super::openapi::ErrorDoc)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn power(
    State(state): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(who): axum::Extension<super::super::principal::Principal>,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = instance_id(&id)?;
    if let Some(inst) = state.store.instances.get(id) {
        who.may(&inst, crate::store::tokens::Perm::Power)?;
    }
    let action = fields.required_text("action", 16)?;
    let action: instances::Action = action.parse().map_err(|()| {
        ApiError::bad_request(format!(
            "action must be start, stop, restart or kill, not {action:?}"
        ))
    })?;
    let inst = instances::power(&state.store, id, action).await?;
    let now = view(&state, &inst);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "Id": id,
            "desired": inst.spec.power,
            "power": power_name(&inst),
            "generation": inst.metadata.generation,
            "State": now.state(),
        })),
    ))
}

/// Changes a deployed instance: any of the deploy's fields, checked as a deploy is.
#[utoipa::path(patch, path = "/api/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    request_body(content = super::super::openapi::EditDoc, content_type = "application/json"),
    responses((status = 200, description = "The instance as changed (rolled out by the controller)", body = InstanceView),
              (status = 400, description = "Instance not found, or the change cannot be made (nothing changed)", body = super::super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::super::openapi::ErrorDoc),
              (status = 409, description = "The instance changed meanwhile (nothing changed)", body = super::super::openapi::ErrorDoc)))]
pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    fields: Fields,
) -> ApiResult<Json<InstanceView>> {
    let id = instance_id(&id)?;
    let req = parse::edit_request(&fields)?;
    let inst = edit::edit(&state.store, &state.events, id, &req).await?;
    Ok(Json(view(&state, &inst)))
}

/// Runs the install step again: keeping the data (install files fetched anew) or
/// on an emptied data folder (`wipe`).
#[utoipa::path(post, path = "/api/instances/{id}/reinstall", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    request_body(content = super::super::openapi::ReinstallDoc, content_type = "application/json"),
    responses((status = 202, description = "Accepted", body = super::super::openapi::ReinstalledDoc),
              (status = 400, description = "Instance not found", body = super::super::openapi::ErrorDoc),
              (status = 401, description = "API key missing or invalid", body = super::super::openapi::ErrorDoc)))]
pub async fn reinstall(
    State(state): State<AppState>,
    Path(id): Path<String>,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = instance_id(&id)?;
    let wipe = fields.boolean("wipe")?.unwrap_or(false);
    let inst = instances::reinstall(&state.store, id, wipe).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "Id": inst.name_any(),
            "message": if wipe { "Reinstall requested: the data folder is emptied first" } else { "Reinstall requested: the data stays" },
            "wipe": wipe,
        })),
    ))
}
