//! Berth's view of the cluster and the write protocols that keep it consistent.
//!
//! One watch per kind feeds one [`Informer`] that the REST API and the
//! controllers share (Instances, Berth Nodes, Kubernetes nodes, instance Pods,
//! user and API-key Secrets, claims, the catalog). Beside the informers live the
//! protocols that write through them: users and API keys, claims, the deploy with
//! its claims and rollback ([`deploy`]), and the node delete with its mark
//! ([`nodes`]). Handlers parse, call these and render.

pub mod apikeys;
pub mod catalog;
pub mod claims;
pub mod deploy;
pub mod edit;
pub mod informer;
pub mod instances;
pub mod nodes;
pub mod placement;
pub mod tokens;
pub mod users;
pub mod watch;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node as KubeNode, Secret};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::controller::observed::ObservedPod;
use crate::crd::{Instance, Node};
use crate::names::{
    LABEL_CATALOG, LABEL_MANAGED_BY, MANAGED_BY, SECRET_TYPE_API_KEY, SECRET_TYPE_SIGNING_KEY,
    SECRET_TYPE_USER,
};
use catalog::Catalog;
use claims::{ClaimKind, Claims};
pub use informer::Informer;
use informer::Watched;
use placement::Placement;
use users::Users;

/// Index of Instances by owner userId.
pub const INDEX_USER: &str = "user";
/// Index of Instances by Node name.
pub const INDEX_NODE: &str = "node";

fn instance_index(i: &Instance) -> Vec<(&'static str, String)> {
    vec![
        (INDEX_USER, i.spec.user_id.clone()),
        (INDEX_NODE, i.spec.node.clone()),
    ]
}

/// Instances keep what the REST API and the controllers read: the spec, the status
/// and the metadata that names and versions them. Labels (for the API server's
/// selectors) and annotations (the idempotency key, read from the API server
/// itself after a crash) are never read from the cache.
fn slim_instance(i: &mut Instance) {
    i.metadata.managed_fields = None;
    i.metadata.labels = None;
    i.metadata.annotations = None;
}

/// Kubernetes nodes keep little of what they carry: a real node lists every image
/// it has cached, and Berth never looks.
fn slim_kube_node(n: &mut KubeNode) {
    n.metadata.managed_fields = None;
    if let Some(s) = n.status.as_mut() {
        s.images = None;
    }
}

/// What this process serves, which decides what it watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The REST API (users, keys, claims on top of the shared kinds).
    pub api: bool,
    /// The controllers (instance Pods on top of the shared kinds).
    pub controllers: bool,
}

/// Every informer and store of one namespace, cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The namespace everything lives in.
    pub namespace: String,
    /// The client everything reads with (and the API writes with).
    pub client: Client,
    /// What this process serves.
    pub roles: Roles,
    /// Instances, indexed by user and by node.
    pub instances: Informer<Instance>,
    /// Berth Nodes.
    pub nodes: Informer<Node>,
    /// Kubernetes nodes (cluster-scoped).
    pub kube_nodes: Informer<KubeNode>,
    /// Instance Pods, as the controller keeps them (controllers only).
    pub pods: Informer<ObservedPod>,
    /// Users.
    pub users: Users,
    /// API key checker.
    pub keys: apikeys::KeyChecker,
    /// Console and user tokens.
    pub tokens: tokens::Tokens,
    /// Claims (usernames, emails, host ports; only the first two are watched).
    pub claims: Claims,
    /// The image catalog.
    pub catalog: Catalog,
    /// The storage class of instances' volume claims (`None`: emptyDir volumes).
    pub storage_class: Option<String>,
    user_secrets: Informer<Secret>,
    key_secrets: Informer<Secret>,
    signing_secrets: Informer<Secret>,
    claim_maps: Informer<ConfigMap>,
    catalog_maps: Informer<ConfigMap>,
}

/// A watch that is failing, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The kind watched.
    pub kind: String,
    /// For how long, in whole seconds.
    pub for_secs: u64,
}

impl Store {
    /// Empty informers for `namespace`; [`Store::run`] fills those `roles` need.
    pub fn new(client: Client, namespace: &str, roles: Roles) -> Self {
        let ns = Some(namespace);
        let user_secrets = Informer::new(ns);
        let key_secrets = Informer::new(ns);
        let signing_secrets = Informer::new(ns);
        let claim_maps = Informer::new(ns);
        let claims = Claims::new(
            Api::namespaced(client.clone(), namespace),
            claim_maps.clone(),
        );
        Self {
            namespace: namespace.to_owned(),
            roles,
            instances: Informer::with(ns, instance_index, slim_instance),
            nodes: Informer::new(ns),
            kube_nodes: Informer::with(None, |_| Vec::new(), slim_kube_node),
            pods: Informer::with(ns, |_| Vec::new(), ObservedPod::slim),
            users: Users::new(
                Api::namespaced(client.clone(), namespace),
                user_secrets.clone(),
                claims.clone(),
            ),
            keys: apikeys::KeyChecker::new(key_secrets.clone()),
            tokens: tokens::Tokens::new(signing_secrets.clone()),
            claims,
            catalog: Catalog::default(),
            storage_class: None,
            user_secrets,
            key_secrets,
            signing_secrets,
            claim_maps,
            catalog_maps: Informer::new(ns),
            client,
        }
    }

    /// Instances in this namespace.
    pub fn instance_api(&self) -> Api<Instance> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Berth Nodes in this namespace.
    pub fn node_api(&self) -> Api<Node> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Objects of kind `K` in this namespace.
    fn api<K>(&self) -> Api<K>
    where
        K: Watched + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Kubernetes node a Berth Node stands for, from the watched nodes.
    pub fn placement(&self, node: &Node) -> Placement {
        placement::resolve(&node.spec, &self.kube_nodes.state())
    }

    /// Runs every watch this process needs until it ends; none ends on errors.
    pub async fn run(self) {
        let all = watcher::Config::default;
        // By type alone: API key Secrets may be made by Helm, which labels what it makes.
        let secrets = |kind: &str| all().fields(&format!("type={kind}"));
        let shared = async {
            tokio::join!(
                watch::run(self.instances.clone(), self.api(), all()),
                watch::run(self.nodes.clone(), self.api(), all()),
                watch::run(
                    self.kube_nodes.clone(),
                    Api::all(self.client.clone()),
                    all()
                ),
                watch::run(
                    self.catalog_maps.clone(),
                    self.api(),
                    all().labels(LABEL_CATALOG)
                ),
                self.catalog.clone().follow(self.catalog_maps.clone()),
            );
        };
        let for_api = async {
            if self.roles.api {
                tokio::join!(
                    watch::run(
                        self.user_secrets.clone(),
                        self.api(),
                        secrets(SECRET_TYPE_USER)
                    ),
                    watch::run(
                        self.key_secrets.clone(),
                        self.api(),
                        secrets(SECRET_TYPE_API_KEY)
                    ),
                    watch::run(
                        self.signing_secrets.clone(),
                        self.api(),
                        secrets(SECRET_TYPE_SIGNING_KEY)
                    ),
                    watch::run(
                        self.claim_maps.clone(),
                        self.api(),
                        all().labels(&ClaimKind::cached_selector())
                    ),
                );
            }
        };
        let for_controllers = async {
            if self.roles.controllers {
                let managed = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
                watch::run(self.pods.clone(), self.api(), all().labels(&managed)).await;
            }
        };
        tokio::join!(shared, for_api, for_controllers);
    }

    /// The health of every watch this process runs, and whether readiness counts it:
    /// the API's watches where the API runs, else the controllers'.
    fn watches(&self) -> Vec<(&watch::WatchHealth, bool)> {
        let counts_for_api = self.roles.api;
        let mut all = vec![
            (self.instances.health(), true),
            (self.nodes.health(), true),
            (self.kube_nodes.health(), true),
            (self.catalog_maps.health(), true),
        ];
        if self.roles.api {
            all.extend([
                (self.user_secrets.health(), true),
                (self.key_secrets.health(), true),
                (self.signing_secrets.health(), true),
                (self.claim_maps.health(), true),
            ]);
        }
        if self.roles.controllers {
            all.push((self.pods.health(), !counts_for_api));
        }
        all
    }

    fn synced_all(&self) -> Vec<bool> {
        let mut s = vec![
            self.instances.is_synced(),
            self.nodes.is_synced(),
            self.kube_nodes.is_synced(),
            self.catalog_maps.is_synced(),
        ];
        if self.roles.api {
            s.extend([
                self.user_secrets.is_synced(),
                self.key_secrets.is_synced(),
                self.signing_secrets.is_synced(),
                self.claim_maps.is_synced(),
            ]);
        }
        if self.roles.controllers {
            s.push(self.pods.is_synced());
        }
        s
    }

    /// Whether every informer this process runs has its first full list.
    pub fn is_synced(&self) -> bool {
        self.synced_all().into_iter().all(|s| s)
    }

    /// Resolves once every informer this process runs has its first full list.
    pub async fn synced(&self) {
        let mut waits: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = vec![
            Box::pin(self.instances.synced()),
            Box::pin(self.nodes.synced()),
            Box::pin(self.kube_nodes.synced()),
            Box::pin(self.catalog_maps.synced()),
        ];
        if self.roles.api {
            waits.push(Box::pin(self.user_secrets.synced()));
            waits.push(Box::pin(self.key_secrets.synced()));
            waits.push(Box::pin(self.signing_secrets.synced()));
            waits.push(Box::pin(self.claim_maps.synced()));
        }
        if self.roles.controllers {
            waits.push(Box::pin(self.pods.synced()));
        }
        futures::future::join_all(waits).await;
    }

    /// The first watch that readiness counts and that has been failing for longer
    /// than `threshold`: while one is, this process may serve a stale view.
    pub fn stale(&self, threshold: Duration) -> Option<Stale> {
        self.watches()
            .into_iter()
            .filter(|(_, counts)| *counts)
            .find_map(|(h, _)| {
                h.failing_for().filter(|d| *d > threshold).map(|d| Stale {
                    kind: h.kind().to_owned(),
                    for_secs: d.as_secs(),
                })
            })
    }
}
