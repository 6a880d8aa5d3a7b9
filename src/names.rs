//! Every name Berth puts on the cluster, said once.

/// The API group of Berth's custom resources.
pub const GROUP: &str = "berth.dev";
/// The version of Berth's custom resources.
pub const VERSION: &str = "v1alpha1";
/// The field manager of every server-side apply Berth makes.
pub const FIELD_MANAGER: &str = "berth";
/// The category that `kubectl get berth` lists.
pub const CATEGORY: &str = "berth";

/// Standard label marking the objects Berth manages.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on Berth's objects.
pub const MANAGED_BY: &str = "berth";
/// Label holding the id of the Instance an object belongs to.
pub const LABEL_INSTANCE: &str = "berth.dev/instance";
/// Label holding the userId of the owner of an object.
pub const LABEL_USER: &str = "berth.dev/user";
/// Label holding the id of the Berth Node an object is placed on.
pub const LABEL_NODE: &str = "berth.dev/node";

/// The field instance Pods are pinned by: a node's name (as the DaemonSet controller
/// pins; the `kubernetes.io/hostname` label need not equal it).
pub const FIELD_NODE_NAME: &str = "metadata.name";
/// Label on claim ConfigMaps, holding what they make unique (username, email, hostport).
pub const LABEL_CLAIM: &str = "berth.dev/claim";
/// Label marking ConfigMaps that hold image catalog documents.
pub const LABEL_CATALOG: &str = "berth.dev/catalog";

/// Secret type of a user.
pub const SECRET_TYPE_USER: &str = "berth.dev/user";
/// Secret type of an API key (holding only its SHA-256).
pub const SECRET_TYPE_API_KEY: &str = "berth.dev/api-key";
/// Secret type of the keys that sign console and user tokens.
pub const SECRET_TYPE_SIGNING_KEY: &str = "berth.dev/signing-key";
/// The Secret holding the token signing keys (made by the chart, or by Berth
/// when missing).
pub const SIGNING_SECRET: &str = "berth-token-signing";

/// Annotation on an Instance: the digest of the Idempotency-Key it was deployed with.
pub const ANNOTATION_IDEMPOTENCY: &str = "berth.dev/idempotency";
/// Annotation on a keyed Instance: the digest of the request body, so that a key
/// reused with another request is refused.
pub const ANNOTATION_REQUEST: &str = "berth.dev/request";
/// Annotation on a Node being deleted (RFC 3339 time): deploys to it wait for the outcome.
pub const ANNOTATION_DELETING: &str = "berth.dev/deleting";
