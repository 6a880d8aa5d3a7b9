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

/// How long the Pod watch waits for the API's first lists (see [`Store::run`]).
const API_LISTS_FIRST: Duration = Duration::from_secs(10);

/// Index of Instances by owner userId.
pub const INDEX_USER: &str = "user";
/// Index of Instances by Node name.
pub const INDEX_NODE: &str = "node";

/// Index of Instances by the host ports they hold: `node/port` (see [`node_port`]).
pub const INDEX_NODE_PORT: &str = "node-port";

/// The [`INDEX_NODE_PORT`] key of host port `port` on Berth Node `node`.
pub fn node_port(node: &str, port: i32) -> String {
    format!("{node}/{port}")
}

fn instance_index(i: &Instance) -> Vec<(&'static str, String)> {
    let mut keys = vec![
        (INDEX_USER, i.spec.user_id.clone()),
        (INDEX_NODE, i.spec.node.clone()),
    ];
    keys.extend(
        i.spec
            .ports
            .iter()
            .map(|p| (INDEX_NODE_PORT, node_port(&i.spec.node, p.host_port))),
    );
    keys
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

/// An informer as readiness sees it, whatever it holds.
trait Followed: Sync {
    fn health(&self) -> &watch::WatchHealth;
    fn is_synced(&self) -> bool;
    fn synced(&self) -> futures::future::BoxFuture<'_, ()>;
}

impl<K: informer::Watched> Followed for Informer<K> {
    fn health(&self) -> &watch::WatchHealth {
        Informer::health(self)
    }

    fn is_synced(&self) -> bool {
        Informer::is_synced(self)
    }

    fn synced(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(Informer::synced(self))
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
    /// Whether watches start with a streaming list (see [`watch::streams_lists`]).
    pub streaming_lists: bool,
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
            streaming_lists: false,
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
        let streaming = self.streaming_lists;
        let all = move || {
            let config = watcher::Config::default();
            if streaming {
                config.streaming_lists()
            } else {
                config
            }
        };
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
                // The API's lists first: listing the Pods (the largest objects,
                // which the API never reads) at the same time competes with them
                // for the API server and the CPU. Not for long: a watch of the
                // API's that keeps failing must not hold the controllers back.
                if self.roles.api {
                    let _ = tokio::time::timeout(API_LISTS_FIRST, self.synced()).await;
                }
                let managed = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
                watch::run(self.pods.clone(), self.api(), all().labels(&managed)).await;
            }
        };
        tokio::join!(shared, for_api, for_controllers);
    }

    /// Every informer this process runs, and whether readiness counts it: the
    /// API's where the API runs, else the controllers'.
    fn watches(&self) -> Vec<(&dyn Followed, bool)> {
        let counts_for_api = self.roles.api;
        let mut all: Vec<(&dyn Followed, bool)> = vec![
            (&self.instances, true),
            (&self.nodes, true),
            (&self.kube_nodes, true),
            (&self.catalog_maps, true),
        ];
        if self.roles.api {
            all.extend([
                (&self.user_secrets as &dyn Followed, true),
                (&self.key_secrets, true),
                (&self.signing_secrets, true),
                (&self.claim_maps, true),
            ]);
        }
        if self.roles.controllers {
            all.push((&self.pods, !counts_for_api));
        }
        all
    }

    /// Whether every informer this process runs for its readiness has its first
    /// full list (the ones [`Store::stale`] counts). Where the API runs, the Pod
    /// informer is not among them: the API's answers never read it, and the
    /// controllers wait for their caches themselves ([`Store::controllers_synced`]);
    /// at 10,000 instances its list is the largest of all.
    pub fn is_synced(&self) -> bool {
        self.watches()
            .into_iter()
            .filter(|(_, counts)| *counts)
            .all(|(i, _)| i.is_synced())
    }

    /// Resolves once [`Store::is_synced`] holds.
    pub async fn synced(&self) {
        let waits = self
            .watches()
            .into_iter()
            .filter(|(_, counts)| *counts)
            .map(|(i, _)| i.synced());
        futures::future::join_all(waits).await;
    }

    /// Resolves once every informer the controllers read has its first full list
    /// (what they wait for before their first decision). Not the API's users,
    /// keys and claims: a watch of those that fails must not stop the controllers.
    pub async fn controllers_synced(&self) {
        let read: [&dyn Followed; 5] = [
            &self.instances,
            &self.nodes,
            &self.kube_nodes,
            &self.catalog_maps,
            &self.pods,
        ];
        futures::future::join_all(read.map(Followed::synced)).await;
    }

    /// The first watch that readiness counts and that has been failing for longer
    /// than `threshold`: while one is, this process may serve a stale view.
    pub fn stale(&self, threshold: Duration) -> Option<Stale> {
        self.watches()
            .into_iter()
            .filter(|(_, counts)| *counts)
            .find_map(|(i, _)| {
                let h = i.health();
                h.failing_for().filter(|d| *d > threshold).map(|d| Stale {
                    kind: h.kind().to_owned(),
                    for_secs: d.as_secs(),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    /// A store whose informers are fed by hand (its client never sends a request).
    fn store(roles: Roles) -> Store {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        Store::new(Client::try_from(config).expect("client"), "berth", roles)
    }

    fn list_nothing<K: informer::Watched>(i: &Informer<K>) {
        i.apply(Event::Init);
        i.apply(Event::InitDone);
    }

    /// Lists every informer but the Pods'.
    fn list_all_but_pods(s: &Store) {
        list_nothing(&s.instances);
        list_nothing(&s.nodes);
        list_nothing(&s.kube_nodes);
        list_nothing(&s.catalog_maps);
        list_nothing(&s.user_secrets);
        list_nothing(&s.key_secrets);
        list_nothing(&s.signing_secrets);
        list_nothing(&s.claim_maps);
    }

    #[tokio::test]
    async fn the_api_is_ready_without_the_pod_list_and_the_controllers_wait_for_it() {
        let s = store(Roles {
            api: true,
            controllers: true,
        });
        assert!(!s.is_synced(), "nothing listed yet");
        list_all_but_pods(&s);
        assert!(s.is_synced(), "the API's answers never read Pods");
        tokio::time::timeout(Duration::from_secs(1), s.synced())
            .await
            .expect("synced resolves as is_synced says");
        let mut controllers = std::pin::pin!(s.controllers_synced());
        assert!(
            futures::poll!(controllers.as_mut()).is_pending(),
            "the controllers decide nothing before the Pods are listed"
        );
        list_nothing(&s.pods);
        tokio::time::timeout(Duration::from_secs(1), controllers)
            .await
            .expect("the controllers start once the Pods are listed");

        let only_controllers = store(Roles {
            api: false,
            controllers: true,
        });
        list_all_but_pods(&only_controllers);
        assert!(
            !only_controllers.is_synced(),
            "without the API, readiness is the controllers'"
        );
        list_nothing(&only_controllers.pods);
        assert!(only_controllers.is_synced());

        // The API's own watches (users, keys, claims) never listing does not
        // hold the controllers back.
        let api_stuck = store(Roles {
            api: true,
            controllers: true,
        });
        list_nothing(&api_stuck.instances);
        list_nothing(&api_stuck.nodes);
        list_nothing(&api_stuck.kube_nodes);
        list_nothing(&api_stuck.catalog_maps);
        list_nothing(&api_stuck.pods);
        assert!(!api_stuck.is_synced());
        tokio::time::timeout(Duration::from_secs(1), api_stuck.controllers_synced())
            .await
            .expect("the controllers wait only for what they read");
    }
}
