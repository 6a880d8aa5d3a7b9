//! The controllers. The Instance controller turns each Instance into a Pod pinned to
//! its node and keeps the Instance's status true; the Node controller keeps each
//! Berth Node's status. Both are fed by the informers the REST API reads too (one
//! watch per kind, see [`crate::store`]), and write only when something changed,
//! so a steady state makes no writes.

pub mod events;
pub mod instance;
pub mod leader;
pub mod merge;
pub mod node;
pub mod observed;
pub mod pod;
pub mod power;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::{Instance, Node};
use crate::metrics;
use crate::names::MANAGED_BY;
use crate::serve::Shutdown;
use crate::store::{INDEX_NODE, Store};
pub use pod::PodSettings;

/// Why a reconcile failed; named after the action that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating (or resizing) a Pod failed.
    #[error("failed to write pod: {0}")]
    WritePod(#[source] kube::Error),
    /// Deleting a Pod failed.
    #[error("failed to delete pod: {0}")]
    DeletePod(#[source] kube::Error),
    /// Server-side apply of a volume claim failed.
    #[error("failed to apply volume claim: {0}")]
    ApplyClaim(#[source] kube::Error),
    /// Writing an Instance's status failed.
    #[error("failed to patch instance status: {0}")]
    PatchInstanceStatus(#[source] kube::Error),
    /// Writing a Node's status failed.
    #[error("failed to patch node status: {0}")]
    PatchNodeStatus(#[source] kube::Error),
}

impl Error {
    fn source_error(&self) -> &kube::Error {
        match self {
            Self::WritePod(e)
            | Self::DeletePod(e)
            | Self::ApplyClaim(e)
            | Self::PatchInstanceStatus(e)
            | Self::PatchNodeStatus(e) => e,
        }
    }
}

/// An Instance whose status waits to be written.
struct Settling {
    /// Since when.
    since: Instant,
    /// Events held meanwhile.
    held: Vec<events::Happening>,
}

/// What every reconcile reads and writes through.
pub struct Context {
    /// Client for writes (refused unless this process leads; see [`leader::Gate`]).
    pub client: Client,
    /// The namespace Berth owns.
    pub namespace: String,
    /// Operator-wide Pod settings.
    pub settings: PodSettings,
    /// The informers (shared with the REST API).
    pub store: Store,
    /// Publishes Events.
    pub events: events::Events,
    /// Graceful stops under way.
    pub stopper: power::Stopper,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Instances whose status waits to be written (see [`status::may_wait`]), and
    /// when that map was last pruned.
    settling: Mutex<(HashMap<String, Settling>, Instant)>,
}

impl Context {
    fn failed(&self, key: String) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How long the status of Instance `name` has waited to be written.
    fn settling(&self, name: &str) -> Duration {
        self.with_settling(name, |s| s.since.elapsed())
    }

    /// Holds an Event on Instance `name` until its status is written, so that it
    /// can be told together with what happened next.
    fn hold(&self, name: &str, what: events::Happening) {
        self.with_settling(name, |s| s.held.push(what));
    }

    fn with_settling<R>(&self, name: &str, f: impl FnOnce(&mut Settling) -> R) -> R {
        let mut guard = self.settling.lock().unwrap_or_else(|e| e.into_inner());
        let (waiting, pruned) = &mut *guard;
        // Forget Instances deleted while waiting (whatever waits a minute is long
        // settled), now and then rather than on every call of this hot path.
        if pruned.elapsed() > Duration::from_secs(60) {
            waiting.retain(|_, w| w.since.elapsed() < Duration::from_secs(60));
            *pruned = Instant::now();
        }
        f(waiting.entry(name.to_owned()).or_insert_with(|| Settling {
            since: Instant::now(),
            held: Vec::new(),
        }))
    }

    /// The status of Instance `name` is being written: the Events held for it.
    fn settled(&self, name: &str) -> Vec<events::Happening> {
        self.settling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .remove(name)
            .map(|s| s.held)
            .unwrap_or_default()
    }
}

/// Backoff after `failures` consecutive failures: 1 s doubling to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!("{}/{}", K::kind(&()), obj.name_any())
}

/// The one error policy: temporary failures back off per object; the API server
/// refusing what we sent (a malformed resource) waits for the object to change.
fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let permanent =
        matches!(err.source_error(), kube::Error::Api(s) if s.code == 400 || s.code == 422);
    warn!(object = %key(obj.as_ref()), error = %err, permanent, "reconcile failed");
    if permanent {
        return Action::await_change();
    }
    Action::requeue(backoff(ctx.failed(key(obj.as_ref()))))
}

/// Runs a reconcile, counting it and resetting the object's backoff on success.
async fn counted<K, F, Fut>(
    name: &'static str,
    obj: Arc<K>,
    ctx: Arc<Context>,
    f: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let k = key(obj.as_ref());
    let started = std::time::Instant::now();
    let result = f(obj, ctx.clone()).await;
    metrics::observe_reconcile(name, result.is_ok(), started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&k);
    }
    result
}

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pod settings.
    pub pods: PodSettings,
    /// How many Instances reconcile at once.
    pub concurrency: u16,
    /// Name this process reports Events as.
    pub identity: String,
    /// How long a server may take to stop by itself (unless its catalog entry says).
    pub stop_timeout: Duration,
}

/// What of a Berth Node decides where its instances' Pods go.
type Placement = (Option<i64>, Option<String>, Option<crate::crd::NodeState>);

fn placement_of(node: &Node) -> Placement {
    let status = node.status.as_ref();
    (
        node.metadata.generation,
        status.and_then(|s| s.kubernetes_node.clone()),
        status.and_then(|s| s.state),
    )
}

/// References to every Instance on Berth Node `node`.
fn instances_on(store: &Store, node: &str) -> Vec<ObjectRef<Instance>> {
    store
        .instances
        .by_index(INDEX_NODE, node)
        .iter()
        .map(|i| ObjectRef::from_obj(i.as_ref()))
        .collect()
}

/// Fires once: a controller that starts after the informers synced (a new leader)
/// looks at everything once.
fn at_start() -> impl Stream<Item = ()> + Send {
    futures::stream::once(async {})
}

/// The Instance controller: Instances, their Pods, and the Berth Nodes they run on.
fn instance_controller(
    ctx: &Arc<Context>,
    config: &Config,
    stopped: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Instance>>,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + use<> {
    let store = ctx.store.clone();
    let ns = ctx.namespace.clone();
    // Deletions wake what depended on the object: a deleted Pod its Instance (to
    // recreate it), a deleted Berth Node its Instances (to say so).
    let pod_deleted = store.pods.deleted().flat_map(move |p| {
        let owners: Vec<ObjectRef<Instance>> = p
            .owner_references()
            .iter()
            .filter(|o| o.kind == Instance::kind(&()))
            .map(|o| ObjectRef::new(&o.name).within(&ns))
            .collect();
        futures::stream::iter(owners)
    });
    let node_deleted = {
        let store = store.clone();
        store
            .nodes
            .deleted()
            .flat_map(move |n| futures::stream::iter(instances_on(&store, &n.name_any())))
    };
    // Only what places a Pod concerns the instances of a node: its spec and the
    // matched Kubernetes node. Allocation counts change with every deploy, and
    // waking every instance on the node for them would cost O(instances²).
    let last_placement: Mutex<HashMap<String, Placement>> = Mutex::default();
    let by_node = store.clone();
    let node_changed = move |node: Arc<Node>| {
        let id = node.name_any();
        let placement = placement_of(&node);
        let changed = last_placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), placement.clone())
            != Some(placement);
        if changed {
            instances_on(&by_node, &id)
        } else {
            Vec::new()
        }
    };
    Controller::for_shared_stream(store.instances.applied(), store.instances.reader())
        .owns_shared_stream(store.pods.applied())
        .watches_shared_stream(store.nodes.applied(), node_changed)
        .reconcile_on(futures::stream::select(pod_deleted, node_deleted))
        // A graceful stop is over: what comes next (nothing, or a new Pod).
        .reconcile_on(crate::store::informer::receive(stopped))
        .reconcile_all_on(at_start())
        .with_config(ControllerConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown.wait())
        .run(
            |obj, ctx| counted("instance", obj, ctx, instance::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {})
}

/// The Node controller: Berth Nodes, the Kubernetes nodes they stand for, and the
/// Instances placed on them (for the allocation).
fn node_controller(
    ctx: &Arc<Context>,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + use<> {
    let store = ctx.store.clone();
    let ns = ctx.namespace.clone();
    let for_kube = store.clone();
    let kube_node_deleted = {
        let store = store.clone();
        store
            .kube_nodes
            .deleted()
            .flat_map(move |kn| futures::stream::iter(node::nodes_for_kube_node(&store, &kn)))
    };
    let instance_deleted = {
        let ns = ns.clone();
        store
            .instances
            .deleted()
            .map(move |i| ObjectRef::<Node>::new(&i.spec.node).within(&ns))
    };
    Controller::for_shared_stream(store.nodes.applied(), store.nodes.reader())
        .watches_shared_stream(store.kube_nodes.applied(), move |kn| {
            node::nodes_for_kube_node(&for_kube, &kn)
        })
        .watches_shared_stream(store.instances.applied(), move |inst: Arc<Instance>| {
            Some(ObjectRef::<Node>::new(&inst.spec.node).within(&ns))
        })
        .reconcile_on(futures::stream::select(kube_node_deleted, instance_deleted))
        .reconcile_all_on(at_start())
        // Coalesce bursts: during a wave of deploys the allocation is written once a
        // second per node, not once per deploy.
        .with_config(
            ControllerConfig::default()
                .concurrency(4)
                .debounce(Duration::from_millis(300)),
        )
        .graceful_shutdown_on(shutdown.wait())
        .run(
            |obj, ctx| counted("node", obj, ctx, node::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {})
}

/// Runs both controllers until `shutdown` resolves. `client` makes their writes;
/// `store` is the process's informers (the Instance, Node, Kubernetes node and
/// Pod watches must run).
pub async fn run(client: Client, store: Store, config: Config, shutdown: Shutdown) {
    // No decision from a half-listed cache: a Pod not listed yet would look
    // missing, and its Instance's status would say so. (`/readyz` does not wait
    // for the Pod list where the API runs.)
    tokio::select! {
        () = store.controllers_synced() => {}
        () = shutdown.clone().wait() => return,
    }
    let namespace = store.namespace.clone();
    let events = events::Events::new(client.clone(), MANAGED_BY, &config.identity);
    let (stopped_tx, stopped) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        stopper: power::Stopper::new(
            client.clone(),
            &namespace,
            store.pods.clone(),
            events.clone(),
            config.stop_timeout,
            stopped_tx,
        ),
        events,
        client,
        namespace: namespace.clone(),
        settings: config.pods.clone(),
        store,
        failures: Mutex::default(),
        settling: Mutex::new((HashMap::new(), Instant::now())),
    });
    let instances = instance_controller(&ctx, &config, stopped, shutdown.clone());
    let nodes = node_controller(&ctx, shutdown.clone());
    info!(%namespace, "controllers running");
    futures::future::join(instances, nodes).await;
    info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
