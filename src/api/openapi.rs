//! `GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! annotations and the schema types below. Request bodies are read field by field
//! (see [`super::body`]), so their shapes are described here as schema-only types.
// The request and response shapes below exist for the document only.
#![allow(dead_code)]

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::AppState;

/// Routes of the document.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(|| async { Json(document()) }))
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Berth", description = "Skyport-compatible API for game-server instances on Kubernetes"),
    paths(
        super::users::list, super::users::get_user, super::users::create,
        super::instances::list, super::instances::deploy, super::instances::remove,
        super::instances::user_instances, super::instances::get_instance,
        super::instances::suspend, super::instances::unsuspend,
        super::instances::lifecycle::power, super::instances::lifecycle::edit,
        super::instances::lifecycle::reinstall,
        super::nodes::list, super::nodes::create, super::nodes::remove,
        super::images::list,
        super::login::login,
        super::console::console_token, super::console::logs, super::console::stats_now,
        super::console::socket,
    ),
    modifiers(&Security),
    security(("api_key" = [])),
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(
                super::auth::API_KEY_HEADER,
            ))),
        );
        // A user token (from /api/auth/login) or a console token.
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // The same body and answers as /api/users/create, under Skyport's newer path.
        if let Some(item) = doc.paths.paths.get("/api/users/create").cloned() {
            doc.paths
                .paths
                .insert("/api/auth/create-user".to_owned(), item);
        }
    }
}

/// A number, or a string holding one (clients send both).
pub struct NumberOrString;

impl PartialSchema for NumberOrString {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .into()
    }
}
impl ToSchema for NumberOrString {}

/// An error answer.
#[derive(ToSchema)]
pub struct ErrorDoc {
    /// What went wrong.
    error: String,
}

/// A confirmation.
#[derive(ToSchema)]
pub struct MessageDoc {
    /// What was done.
    message: String,
}

/// `POST /api/getUser` body.
#[derive(ToSchema)]
pub struct GetUserDoc {
    /// `email` or `username`.
    #[schema(rename = "type", pattern = "^(email|username)$")]
    kind: String,
    /// The email or username to look for.
    value: String,
}

/// `POST /api/users/create` body.
#[derive(ToSchema)]
pub struct CreateUserDoc {
    #[schema(max_length = 64, min_length = 1)]
    username: String,
    #[schema(max_length = 254)]
    email: String,
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// Chosen by the caller (e.g. a Discord snowflake); a UUIDv4 when absent.
    #[schema(rename = "userId", max_length = 128)]
    user_id: Option<String>,
    admin: Option<bool>,
}

/// `POST /api/nodes/create` body.
#[derive(ToSchema)]
pub struct CreateNodeDoc {
    name: String,
    tags: Option<String>,
    /// MiB, or a size with a unit such as `8GB`.
    ram: Option<NumberOrString>,
    /// MiB, or a size with a unit such as `100GB`.
    disk: Option<NumberOrString>,
    processor: Option<String>,
    /// IP address or host name.
    address: String,
    port: Option<NumberOrString>,
    /// The Kubernetes node this node stands for (else matched by address).
    #[schema(rename = "kubernetesNode")]
    kubernetes_node: Option<String>,
}

/// `DELETE /api/nodes/delete` body.
#[derive(ToSchema)]
pub struct DeleteNodeDoc {
    #[schema(rename = "nodeId")]
    node_id: String,
}

/// `POST /api/instances/deploy` body.
#[derive(ToSchema)]
pub struct DeployDoc {
    /// The catalog image: its `Image` reference, `Id` or `Name`.
    image: String,
    /// MiB.
    memory: NumberOrString,
    /// Cores.
    cpu: NumberOrString,
    /// `container:host` pairs, comma-separated, or a bare port.
    ports: String,
    #[schema(rename = "nodeId")]
    node_id: String,
    name: String,
    /// The owner's userId.
    user: String,
    /// The primary port: `25565` or `"25565:25565"`.
    primary: NumberOrString,
    /// The catalog entry's Name.
    imagename: Option<String>,
    /// The image's variables: an object, or a JSON string of one.
    #[schema(value_type = Option<Object>)]
    variables: Option<serde_json::Value>,
    /// MiB.
    disk: Option<NumberOrString>,
}

/// A deploy's answer.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct DeployedDoc {
    message: String,
    Id: String,
    #[schema(rename = "volumeId")]
    volume_id: String,
    /// `INSTALLING`.
    state: String,
}

/// A body naming an instance.
#[derive(ToSchema)]
pub struct InstanceIdDoc {
    id: String,
}

/// A body naming a user.
#[derive(ToSchema)]
pub struct UserIdDoc {
    #[schema(rename = "userId")]
    user_id: String,
}

/// A suspend or unsuspend answer.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct SuspendedDoc {
    message: String,
    Id: String,
    suspended: bool,
}

/// `POST /api/instances/:id/power` body.
#[derive(ToSchema)]
pub struct PowerDoc {
    /// `start`, `stop` (StopCommand, then the stop timeout), `restart` or `kill` (at once).
    #[schema(pattern = "^(start|stop|restart|kill)$")]
    action: String,
}

/// A power request's answer.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct PoweredDoc {
    Id: String,
    /// What was asked: Running, Stopped or Killed.
    desired: String,
    /// What the server is doing now: Starting, Running, Stopping or Offline.
    power: String,
    /// The Instance's generation after the request (later requests have higher ones).
    generation: i64,
    /// Berth's state.
    State: String,
}

/// `PATCH /api/instances/:id` body: any of the deploy's fields.
#[derive(ToSchema)]
pub struct EditDoc {
    name: Option<String>,
    /// MiB.
    memory: Option<NumberOrString>,
    /// Cores (changed in place, without a restart).
    cpu: Option<NumberOrString>,
    /// MiB; may only grow.
    disk: Option<NumberOrString>,
    /// Another catalog image: its `Image` reference, `Id` or `Name`.
    image: Option<String>,
    imagename: Option<String>,
    /// The whole new port list: `container:host` pairs, comma-separated.
    ports: Option<String>,
    /// The primary port; one of the ports.
    primary: Option<NumberOrString>,
    /// The image's variables: an object, or a JSON string of one.
    #[schema(value_type = Option<Object>)]
    variables: Option<serde_json::Value>,
}

/// `POST /api/instances/:id/reinstall` body.
#[derive(ToSchema)]
pub struct ReinstallDoc {
    /// Empty the data folder first (default: keep the data, fetch the install files anew).
    wipe: Option<bool>,
}

/// A reinstall request's answer.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct ReinstalledDoc {
    Id: String,
    message: String,
    wipe: bool,
}

/// A Skyport image document, as the catalog holds it.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct ImageDoc {
    Id: Option<String>,
    Name: String,
    Image: String,
}

/// `POST /api/auth/login` body: `username` or `email`, and `password`.
#[derive(ToSchema)]
pub struct LoginDoc {
    #[schema(max_length = 64)]
    username: Option<String>,
    #[schema(max_length = 254)]
    email: Option<String>,
    #[schema(max_length = 1024)]
    password: String,
}

/// A login's answer.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct LoginAnswerDoc {
    /// A user token (1 hour): `Authorization: Bearer <token>`, or the console
    /// socket's `auth` frame, on the user's own instances.
    token: String,
    /// RFC 3339.
    expiresAt: String,
    user: crate::store::users::User,
}

/// `POST /api/instances/:id/console-token` body.
#[derive(ToSchema)]
pub struct ConsoleTokenDoc {
    /// The user the token is for: the instance's owner, or an admin.
    #[schema(rename = "userId")]
    user_id: String,
    /// What the token allows (default: all).
    permissions: Option<Vec<crate::store::tokens::Perm>>,
}

/// A console token's answer.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct ConsoleTokenAnswerDoc {
    /// A 10-minute token for the socket's `auth` frame (or `Authorization: Bearer`).
    token: String,
    /// The console websocket's URL.
    socket: String,
    /// RFC 3339.
    expiresAt: String,
    permissions: Vec<crate::store::tokens::Perm>,
}

/// A logs answer.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct LogsDoc {
    Id: String,
    lines: Vec<String>,
}

/// Stats, as Wings' `stats` event carries them.
#[derive(ToSchema)]
pub struct StatsDoc {
    /// starting, running, stopping or offline.
    state: String,
    memory_limit_bytes: u64,
    /// The CPU limit in percent of one core.
    cpu_limit: f64,
    /// Milliseconds the server has run.
    uptime: u64,
    /// Absent where the cluster has no metrics API.
    memory_bytes: Option<u64>,
    /// Percent of one core; absent where the cluster has no metrics API.
    cpu_absolute: Option<f64>,
}
