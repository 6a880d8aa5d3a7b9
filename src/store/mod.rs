//! Berth's view of the cluster: watched, indexed caches of everything the API reads
//! (Instances, Nodes, user and API-key Secrets, claims, the catalog), and the
//! stores that write users, keys and claims.

pub mod apikeys;
pub mod cache;
pub mod catalog;
pub mod claims;
pub mod users;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::crd::{Instance, Node};
use crate::names::{LABEL_CATALOG, SECRET_TYPE_API_KEY, SECRET_TYPE_USER};
use cache::Cache;
use catalog::Catalog;
use claims::{ClaimKind, Claims};
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

/// Every cache and store of one namespace, cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The namespace everything lives in.
    pub namespace: String,
    /// The client everything uses.
    pub client: Client,
    /// Instances, indexed by user and by node.
    pub instances: Cache<Instance>,
    /// Berth Nodes.
    pub nodes: Cache<Node>,
    /// Users.
    pub users: Users,
    /// API key checker.
    pub keys: apikeys::KeyChecker,
    /// Claims (usernames, emails, host ports; only the first two are cached).
    pub claims: Claims,
    /// The image catalog.
    pub catalog: Catalog,
    user_secrets: Cache<Secret>,
    key_secrets: Cache<Secret>,
    claim_maps: Cache<ConfigMap>,
    catalog_maps: Cache<ConfigMap>,
    /// Whether everything the REST API reads is watched (else only the catalog).
    full: bool,
}

impl Store {
    /// Empty caches for `namespace`; [`Store::run`] fills them: everything when
    /// `full`, else only the catalog (what the controllers need).
    pub fn new(client: Client, namespace: &str, full: bool) -> Self {
        let user_secrets = Cache::default();
        let key_secrets = Cache::default();
        let claim_maps = Cache::default();
        let claims = Claims::new(
            Api::namespaced(client.clone(), namespace),
            claim_maps.clone(),
        );
        Self {
            namespace: namespace.to_owned(),
            instances: Cache::new(instance_index),
            nodes: Cache::default(),
            users: Users::new(
                Api::namespaced(client.clone(), namespace),
                user_secrets.clone(),
                claims.clone(),
            ),
            keys: apikeys::KeyChecker::new(key_secrets.clone()),
            claims,
            catalog: Catalog::default(),
            user_secrets,
            key_secrets,
            claim_maps,
            catalog_maps: Cache::default(),
            full,
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

    /// Runs every watch until the process ends.
    pub async fn run(self) {
        let ns = &self.namespace;
        let catalog = async {
            tokio::join!(
                self.catalog_maps.clone().run(
                    Api::namespaced(self.client.clone(), ns),
                    watcher::Config::default().labels(LABEL_CATALOG)
                ),
                self.catalog.clone().follow(self.catalog_maps.clone()),
            );
        };
        if !self.full {
            return catalog.await;
        }
        // By type alone: API key Secrets may be made by Helm, which labels what it makes.
        let secrets = |kind: &str| watcher::Config::default().fields(&format!("type={kind}"));
        tokio::join!(
            self.instances
                .clone()
                .run(self.instance_api(), watcher::Config::default()),
            self.nodes
                .clone()
                .run(self.node_api(), watcher::Config::default()),
            self.user_secrets.clone().run(
                Api::namespaced(self.client.clone(), ns),
                secrets(SECRET_TYPE_USER)
            ),
            self.key_secrets.clone().run(
                Api::namespaced(self.client.clone(), ns),
                secrets(SECRET_TYPE_API_KEY)
            ),
            self.claim_maps.clone().run(
                Api::namespaced(self.client.clone(), ns),
                watcher::Config::default().labels(&ClaimKind::cached_selector())
            ),
            catalog,
        );
    }

    /// Resolves once every cache has its first full list.
    pub async fn synced(&self) {
        self.catalog_maps.synced().await;
        if !self.full {
            return;
        }
        self.instances.synced().await;
        self.nodes.synced().await;
        self.user_secrets.synced().await;
        self.key_secrets.synced().await;
        self.claim_maps.synced().await;
        self.catalog_maps.synced().await;
    }

    /// Whether every cache has its first full list.
    pub fn is_synced(&self) -> bool {
        if !self.full {
            return self.catalog_maps.is_synced();
        }
        self.instances.is_synced()
            && self.nodes.is_synced()
            && self.user_secrets.is_synced()
            && self.key_secrets.is_synced()
            && self.claim_maps.is_synced()
            && self.catalog_maps.is_synced()
    }
}

/// Shared handle, as the API holds it.
pub type SharedStore = Arc<Store>;
