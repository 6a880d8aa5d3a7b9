//! The controllers. The Instance controller turns each Instance into a Pod pinned to
//! its node and keeps the Instance's status true; the Node controller keeps each
//! Berth Node's status. Both read shared, watched caches (one watch per kind) and
//! write only when something changed, so a steady state makes no writes.

pub mod events;
pub mod instance;
pub mod leader;
pub mod node;
pub mod observed;
pub mod pod;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use observed::ObservedPod;
use tracing::{info, warn};

use crate::crd::{Instance, Node};
use crate::metrics;
use crate::names::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::serve::Shutdown;
use crate::store::catalog::Catalog;
pub use pod::PodSettings;

/// Why a reconcile failed; named after the action that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a Pod failed.
    #[error("failed to apply pod: {0}")]
    ApplyPod(#[source] kube::Error),
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

/// An Instance whose status waits to be written.
struct Settling {
    /// Since when.
    since: Instant,
    /// Events held meanwhile.
    held: Vec<events::Happening>,
}

/// What every reconcile reads and writes through.
pub struct Context {
    /// Client for writes.
    pub client: Client,
    /// The namespace Berth owns.
    pub namespace: String,
    /// Operator-wide Pod settings.
    pub settings: PodSettings,
    /// The image catalog.
    pub catalog: Catalog,
    /// Instances (watched).
    pub instances: Store<Instance>,
    /// Instance Pods (watched).
    pub pods: Store<ObservedPod>,
    /// Berth Nodes (watched).
    pub nodes: Store<Node>,
    /// Kubernetes nodes (watched).
    pub kube_nodes: Store<KubeNode>,
    /// Publishes Events.
    pub events: events::Events,
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

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Backoff after `failures` consecutive failures: 1 s doubling to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
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

/// A channel's receiving end as a stream.
fn receive<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
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
    let source = match err {
        Error::ApplyPod(e)
        | Error::DeletePod(e)
        | Error::ApplyClaim(e)
        | Error::PatchInstanceStatus(e)
        | Error::PatchNodeStatus(e) => e,
    };
    let permanent = matches!(source, kube::Error::Api(s) if s.code == 400 || s.code == 422);
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
    let result = f(obj, ctx.clone()).await;
    metrics::count_reconcile(name, result.is_ok());
    if result.is_ok() {
        ctx.succeeded(&k);
    }
    result
}

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace Berth owns.
    pub namespace: String,
    /// Pod settings.
    pub pods: PodSettings,
    /// How many Instances reconcile at once.
    pub concurrency: u16,
    /// Name this process reports Events as.
    pub identity: String,
}

/// A shared reflector of `K`: a watch feeding a store, fanned out to subscribers.
fn shared<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    reflector::store::Writer<K>,
    watcher::Config,
    Api<K>,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store_shared(1024);
    (reader, writer, config, api)
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(client: Client, catalog: Catalog, config: Config, shutdown: Shutdown) {
    let ns = config.namespace.clone();
    let managed = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
    let (instances, instances_w, instances_cfg, instances_api) = shared(
        Api::<Instance>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    );
    let (pods, pods_w, pods_cfg, pods_api) = shared(
        Api::<ObservedPod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels(&managed),
    );
    let (nodes, nodes_w, nodes_cfg, nodes_api) = shared(
        Api::<Node>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    );
    let (kube_nodes, kube_nodes_w, kube_nodes_cfg, kube_nodes_api) = shared(
        Api::<KubeNode>::all(client.clone()),
        watcher::Config::default(),
    );

    // Subscriptions: each controller gets its own handle on each shared stream.
    // (store_shared writers always hand them out; the else branch is unreachable.)
    let (
        Some(inst_for_inst),
        Some(inst_for_node),
        Some(pods_for_inst),
        Some(nodes_for_inst),
        Some(nodes_for_node),
        Some(kn_for_node),
    ) = (
        instances_w.subscribe(),
        instances_w.subscribe(),
        pods_w.subscribe(),
        nodes_w.subscribe(),
        nodes_w.subscribe(),
        kube_nodes_w.subscribe(),
    )
    else {
        warn!("shared watch streams are not subscribable; controllers not started");
        return;
    };

    // Managed fields are never read: dropping them saves memory on large fleets.
    fn slim<K: Resource>(obj: &mut K) {
        obj.meta_mut().managed_fields = None;
    }
    // Shared streams hand subscribers only added or changed objects, so deletions
    // are routed by hand: a deleted Pod wakes its Instance, a deleted Berth Node its
    // Instances, a deleted Instance its Node, a deleted Kubernetes node its Nodes.
    let (inst_tx, inst_rx) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<Instance>>();
    let (node_tx, node_rx) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<Node>>();
    fn on_delete<K: Clone>(
        f: impl Fn(&K) + Send + 'static,
    ) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
        move |ev| {
            if let watcher::Event::Delete(obj) = ev {
                f(obj);
            }
        }
    }
    let tx = inst_tx.clone();
    let pod_ns = ns.clone();
    let instances_stream = watcher(instances_api, instances_cfg)
        .default_backoff()
        .modify(slim)
        .inspect_ok(on_delete({
            let node_tx = node_tx.clone();
            let ns = ns.clone();
            move |i: &Instance| {
                let _ = node_tx.send(ObjectRef::new(&i.spec.node).within(&ns));
            }
        }))
        .reflect_shared(instances_w);
    let pods_stream = watcher(pods_api, pods_cfg)
        .default_backoff()
        .modify(ObservedPod::slim)
        .inspect_ok(on_delete(move |p: &ObservedPod| {
            for owner in p.owner_references().iter().filter(|o| o.kind == "Instance") {
                let _ = tx.send(ObjectRef::new(&owner.name).within(&pod_ns));
            }
        }))
        .reflect_shared(pods_w);
    let on_node_instances = instances.clone();
    let nodes_stream = watcher(nodes_api, nodes_cfg)
        .default_backoff()
        .modify(slim)
        .inspect_ok(on_delete(move |n: &Node| {
            let id = n.name_any();
            for i in on_node_instances
                .state()
                .iter()
                .filter(|i| i.spec.node == id)
            {
                let _ = inst_tx.send(ObjectRef::from_obj(i.as_ref()));
            }
        }))
        .reflect_shared(nodes_w);
    let nodes_for_deleted = nodes.clone();
    let kube_nodes_stream = watcher(kube_nodes_api, kube_nodes_cfg)
        .default_backoff()
        .modify(|n: &mut KubeNode| {
            n.metadata.managed_fields = None;
            if let Some(s) = n.status.as_mut() {
                s.images = None; // real nodes list every cached image; we never look
            }
        })
        .inspect_ok(on_delete(move |kn: &KubeNode| {
            for r in node::nodes_for_kube_node(&nodes_for_deleted, kn) {
                let _ = node_tx.send(r);
            }
        }))
        .reflect_shared(kube_nodes_w);
    let drain =
        |s: std::pin::Pin<Box<dyn futures::Stream<Item = ()> + Send>>| s.for_each(|()| async {});
    let watches = futures::future::join4(
        drain(instances_stream.map(|_| ()).boxed()),
        drain(pods_stream.map(|_| ()).boxed()),
        drain(nodes_stream.map(|_| ()).boxed()),
        drain(kube_nodes_stream.map(|_| ()).boxed()),
    );

    let ctx = Arc::new(Context {
        events: events::Events::new(client.clone(), MANAGED_BY, &config.identity),
        client,
        namespace: ns.clone(),
        settings: config.pods.clone(),
        catalog,
        instances: instances.clone(),
        pods,
        nodes: nodes.clone(),
        kube_nodes,
        failures: Mutex::default(),
        settling: Mutex::new((HashMap::new(), Instant::now())),
    });

    let by_node = instances.clone();
    let last_placement: Mutex<HashMap<String, Placement>> = Mutex::default();
    let instance_controller = Controller::for_shared_stream(inst_for_inst, instances.clone())
        .owns_shared_stream(pods_for_inst)
        .watches_shared_stream(nodes_for_inst, move |node: Arc<Node>| {
            // Only what places a Pod concerns the instances: the spec and the matched
            // Kubernetes node. Allocation counts change with every deploy, and waking
            // every instance on the node for them would cost O(instances²).
            let id = node.name_any();
            let placement = placement_of(&node);
            let changed = last_placement
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), placement.clone())
                != Some(placement);
            if !changed {
                return Vec::new();
            }
            by_node
                .state()
                .iter()
                .filter(|i| i.spec.node == id)
                .map(|i| ObjectRef::from_obj(i.as_ref()))
                .collect::<Vec<_>>()
        })
        .reconcile_on(receive(inst_rx))
        .with_config(ControllerConfig::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            |obj, ctx| counted("instance", obj, ctx, instance::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});

    let node_ns = ns.clone();
    let nodes_for_kube = nodes.clone();
    let node_controller = Controller::for_shared_stream(nodes_for_node, nodes)
        .watches_shared_stream(kn_for_node, move |kn: Arc<KubeNode>| {
            node::nodes_for_kube_node(&nodes_for_kube, &kn)
        })
        .watches_shared_stream(inst_for_node, move |inst: Arc<Instance>| {
            Some(ObjectRef::<Node>::new(&inst.spec.node).within(&node_ns))
        })
        .reconcile_on(receive(node_rx))
        // Coalesce bursts: during a wave of deploys the allocation is written once a
        // second per node, not once per deploy.
        .with_config(
            ControllerConfig::default()
                .concurrency(4)
                .debounce(Duration::from_millis(300)),
        )
        .graceful_shutdown_on(shutdown.clone().wait())
        .run(
            |obj, ctx| counted("node", obj, ctx, node::reconcile),
            error_policy,
            ctx,
        )
        .for_each(|_| async {});

    info!(namespace = %ns, "controllers running");
    tokio::select! {
        _ = futures::future::join(instance_controller, node_controller) => {}
        _ = watches => {}
        () = shutdown.wait() => {}
    }
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
