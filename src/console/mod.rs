//! Live consoles: what the console websocket serves. Per instance (and per
//! replica: any replica serves any console, no leader needed) one [`Console`]
//! holds the server's output (one log stream, fanned out, with history), its input
//! (one attach, shared) and its power state; it lives while a socket holds it.
//! [`session`] is one socket's life in Wings' protocol ([`protocol`]);
//! [`stats`] reads usage from the resource metrics API.

pub mod input;
pub mod output;
pub mod protocol;
pub mod session;
pub mod stats;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::controller::observed::ObservedPod;
use crate::controller::pod::SERVER_CONTAINER;
use crate::crd::{Instance, Power, PowerState};
use crate::store::Informer;
use input::Input;
use output::Output;

/// A server's state in Wings' words.
pub fn wings_state(inst: &Instance) -> &'static str {
    match inst.status.as_ref().and_then(|s| s.power) {
        Some(PowerState::Starting) => "starting",
        Some(PowerState::Running) => "running",
        Some(PowerState::Stopping) => "stopping",
        Some(PowerState::Offline) => "offline",
        None if inst.spec.power == Power::Running && !inst.spec.suspended => "starting",
        None => "offline",
    }
}

/// One server's console, shared by its sockets.
pub struct Console {
    /// The instance's id.
    pub id: String,
    namespace: String,
    /// What the server prints.
    pub output: Output,
    /// What is typed into it.
    pub input: Input,
    state: watch::Sender<&'static str>,
    /// The last stats read, shared by the sockets (one read per interval however
    /// many watch).
    stats: tokio::sync::Mutex<Option<(tokio::time::Instant, serde_json::Value)>>,
}

/// How long stats read for one socket serve the others.
const STATS_FRESH: std::time::Duration = std::time::Duration::from_millis(1500);

impl Console {
    /// The server's stats: the last read when fresh, else a new one.
    pub async fn stats(&self, client: &Client, inst: &Instance) -> serde_json::Value {
        let mut last = self.stats.lock().await;
        let now = tokio::time::Instant::now();
        let state = wings_state(inst);
        if let Some((at, value)) = last.as_ref()
            && now.duration_since(*at) < STATS_FRESH
            && value["state"] == state
        {
            return value.clone();
        }
        let value = stats::stats(client, &self.namespace, inst, state).await;
        *last = Some((now, value.clone()));
        value
    }

    /// The server's state now, and its changes.
    pub fn state(&self) -> watch::Receiver<&'static str> {
        self.state.subscribe()
    }
}

/// The consoles open on this replica.
#[derive(Clone)]
pub struct Consoles {
    client: Client,
    namespace: String,
    open: Arc<Mutex<HashMap<String, Weak<Console>>>>,
    pods: Informer<ObservedPod>,
}

impl Consoles {
    /// Consoles of `namespace`'s instances; their states follow `instances`, their
    /// input the runs of `pods`.
    pub fn new(
        client: Client,
        namespace: &str,
        instances: &Informer<Instance>,
        pods: &Informer<ObservedPod>,
    ) -> Self {
        let me = Self {
            client,
            namespace: namespace.to_owned(),
            open: Arc::default(),
            pods: pods.clone(),
        };
        tokio::spawn(me.clone().follow_states(instances.applied()));
        me
    }

    /// The console of `inst`, opened if none is.
    pub fn open(&self, inst: &Instance) -> Arc<Console> {
        let id = inst.name_any();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = open.get(&id).and_then(Weak::upgrade) {
            return c;
        }
        open.retain(|_, c| c.strong_count() > 0);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let console = Arc::new(Console {
            output: Output::follow(pods.clone(), &id),
            input: Input::new(pods, &id, self.incarnation(&id)),
            state: watch::Sender::new(wings_state(inst)),
            stats: tokio::sync::Mutex::default(),
            namespace: self.namespace.clone(),
            id: id.clone(),
        });
        open.insert(id, Arc::downgrade(&console));
        console
    }

    /// The current run of instance `id`'s server, from the Pod cache.
    fn incarnation(&self, id: &str) -> input::Incarnation {
        let pods = self.pods.clone();
        let id = id.to_owned();
        Box::new(move || {
            let pod = pods.get(&id)?;
            let restarts = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.iter().find(|c| c.name == SERVER_CONTAINER))
                .map_or(0, |c| c.restart_count);
            Some((pod.metadata.uid.clone().unwrap_or_default(), restarts))
        })
    }

    /// How many consoles are open.
    pub fn len(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().filter(|c| c.strong_count() > 0).count()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Passes every Instance change to its console, if one is open.
    async fn follow_states(self, changes: impl futures::Stream<Item = Arc<Instance>>) {
        let mut changes = std::pin::pin!(changes);
        while let Some(inst) = changes.next().await {
            let console = {
                let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                open.get(&inst.name_any()).and_then(Weak::upgrade)
            };
            if let Some(c) = console {
                let now = wings_state(&inst);
                c.state
                    .send_if_modified(|s| std::mem::replace(s, now) != now);
            }
        }
    }
}
