//! Power: stop, start and restart through Berth (request to the state in the
//! Instance's status) against the same done to Pods directly (kwok nodes); and on
//! the real node, a stop by the image's StopCommand against a plain delete of the
//! same Pod (SIGTERM, which the stand-in server also obeys).

use berth::crd::PowerState;
use k8s_openapi::api::core::v1::Toleration;

use super::*;

/// A catalog entry without a StopCommand: on kwok nobody reads a console, so a
/// StopCommand would only wait out its timeout. The stop measured here is the
/// controller's path (spec, watch, delete, status); the StopCommand's is measured
/// on the real node.
pub const KWOK_IMAGE: &str = "Bench (no StopCommand)";
/// The test cluster's stand-in game server without an install step.
pub const REAL_IMAGE: &str = "Bench stand-in";
/// Instances cycled on kwok; `BENCH_POWER` overrides.
pub const INSTANCES: usize = 100;
/// Stops on the real node, each way.
const REAL_ROUNDS: usize = 5;
/// Host ports of the real node's instances and floor Pods.
const REAL_PORTS: i32 = 45_000;

/// The catalog entries the power phases deploy, as catalog ConfigMap data.
pub fn catalog_entries() -> Vec<(String, String)> {
    let kwok = json!({
        "Id": "bench-no-stop", "Name": KWOK_IMAGE, "Description": "benchmarks", "Author": "bench@berth.dev",
        "AuthorName": "Berth", "Image": "example.invalid/bench:1", "AltImages": [], "Cmd": "",
        "Env": [], "features": [], "Scripts": { "Install": [] }, "Variables": {}, "Meta": { "Version": "bench" }
    });
    let real = json!({
        "Id": "bench-standin", "Name": REAL_IMAGE, "Description": "benchmarks", "Author": "bench@berth.dev",
        "AuthorName": "Berth", "Image": "berth.local/gameserver:test", "AltImages": [], "Cmd": "gameserver",
        "Env": [], "StopCommand": "stop", "features": [], "Scripts": { "Install": [] }, "Variables": {},
        "Meta": { "Version": "bench" }
    });
    [("bench-no-stop.json", kwok), ("bench-standin.json", real)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_string()))
        .collect()
}

/// Berth's arguments for instances on the real node (harmless on kwok).
pub const SERVER_ARGS: [&str; 4] = [
    "--init-image",
    "berth.local/install:test",
    "--instance-tolerations",
    r#"[{"key":"berth.dev/real-node","operator":"Exists","effect":"NoSchedule"}]"#,
];

/// One status as the watch delivered it: when, the power, the restart answered.
type Sighting = (Instant, Option<PowerState>, Option<String>);

/// Instance statuses as a watch delivers them, with when each arrived.
#[derive(Clone, Default)]
pub struct Statuses(Arc<Mutex<HashMap<String, Vec<Sighting>>>>);

impl Statuses {
    /// Keeps the statuses of namespace `ns`'s Instances, forever.
    pub async fn watch(self, client: Client, ns: String) {
        let api: Api<Instance> = Api::namespaced(client, &ns);
        let _ = watcher(api, watcher::Config::default())
            .try_for_each(|ev| {
                if let watcher::Event::Apply(i) | watcher::Event::InitApply(i) = ev {
                    let status = i.status.clone().unwrap_or_default();
                    let restarted = status.restarted_at.map(|t| t.0.to_string());
                    self.0
                        .lock()
                        .expect("lock")
                        .entry(i.name_any())
                        .or_default()
                        .push((Instant::now(), status.power, restarted));
                }
                futures::future::ready(Ok(()))
            })
            .await;
    }

    /// The restart the Instance's status last answered.
    fn restarted(&self, name: &str) -> Option<String> {
        self.0
            .lock()
            .expect("lock")
            .get(name)
            .and_then(|h| h.last())
            .and_then(|s| s.2.clone())
    }

    /// When a status that `done` accepts first arrived after `since`.
    async fn reached(
        &self,
        name: &str,
        since: Instant,
        done: impl Fn(&Sighting) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let found = self
                .0
                .lock()
                .expect("lock")
                .get(name)
                .and_then(|h| h.iter().find(|s| s.0 >= since && done(s)).map(|s| s.0));
            if let Some(at) = found {
                return at;
            }
            assert!(Instant::now() < deadline, "bench: {name} never got there");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// When each Pod of a namespace was seen deleted, by name.
pub async fn watch_gone(client: Client, ns: String, gone: Seen) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let _ = watcher(api, watcher::Config::default())
        .try_for_each(|ev| {
            if let watcher::Event::Delete(p) = ev {
                mark(&gone, p.name_any());
            }
            futures::future::ready(Ok(()))
        })
        .await;
}

/// What the power phases work with.
pub struct Bench<'a> {
    pub client: &'a Client,
    pub http: &'a reqwest::Client,
    pub base: &'a str,
    pub key: &'a str,
    pub floor_ns: &'a str,
    pub statuses: &'a Statuses,
    pub floor_running: &'a Seen,
    pub floor_gone: &'a Seen,
}

/// p50 and p99 of Berth's and the floor's figures (ms).
pub struct Figures {
    pub berth: Vec<f64>,
    pub floor: Vec<f64>,
}

impl Figures {
    fn new() -> Self {
        Self {
            berth: Vec::new(),
            floor: Vec::new(),
        }
    }

    fn sorted(mut self) -> Self {
        self.berth.sort_by(f64::total_cmp);
        self.floor.sort_by(f64::total_cmp);
        self
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.berth.len(),
            "berth_ms": { "p50": percentile(&self.berth, 0.5), "p99": percentile(&self.berth, 0.99) },
            "floor_ms": { "p50": percentile(&self.floor, 0.5), "p99": percentile(&self.floor, 0.99) },
            "ratio_p50": percentile(&self.berth, 0.5) / percentile(&self.floor, 0.5),
        })
    }
}

/// Stop, start and restart on kwok.
pub struct KwokFigures {
    pub stop: Figures,
    pub start: Figures,
    pub restart: Figures,
}

impl Bench<'_> {
    async fn power(&self, id: &str, action: &str) {
        let r = self
            .http
            .post(format!("{}/api/instances/{id}/power", self.base))
            .header("x-api-key", self.key)
            .json(&json!({ "action": action }))
            .send()
            .await
            .expect("power request");
        assert_eq!(r.status(), 202, "{action}: {:?}", r.text().await);
    }

    async fn floor_create(&self, name: &str, pod: Pod) -> Instant {
        let start = Instant::now();
        Api::<Pod>::namespaced(self.client.clone(), self.floor_ns)
            .create(&PostParams::default(), &pod)
            .await
            .expect("floor pod");
        let name = name.to_owned();
        wait_until("floor Running", Duration::from_secs(120), || {
            at(self.floor_running, &name).is_some()
        })
        .await;
        start
    }

    async fn floor_delete(&self, name: &str) -> Instant {
        let start = Instant::now();
        Api::<Pod>::namespaced(self.client.clone(), self.floor_ns)
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete floor pod");
        let name = name.to_owned();
        wait_until("floor Pod gone", Duration::from_secs(120), || {
            at(self.floor_gone, &name).is_some()
        })
        .await;
        start
    }

    /// `ids` (Running, of [`KWOK_IMAGE`]) stopped, started and restarted one at a
    /// time; floor Pods on `nodes` deleted, created, and deleted and created.
    pub async fn kwok(&self, ids: &[String], nodes: &[(String, String)]) -> KwokFigures {
        let s = self.statuses;
        let (mut stop, mut start, mut restart) = (Figures::new(), Figures::new(), Figures::new());
        for id in ids {
            let t = Instant::now();
            self.power(id, "stop").await;
            let done = s.reached(id, t, |x| x.1 == Some(PowerState::Offline)).await;
            stop.berth.push(ms(done - t));

            let t = Instant::now();
            self.power(id, "start").await;
            let done = s.reached(id, t, |x| x.1 == Some(PowerState::Running)).await;
            start.berth.push(ms(done - t));

            let before = s.restarted(id);
            let t = Instant::now();
            self.power(id, "restart").await;
            let done = s
                .reached(id, t, |x| {
                    x.1 == Some(PowerState::Running) && x.2.is_some() && x.2 != before
                })
                .await;
            restart.berth.push(ms(done - t));
        }
        for (i, _) in ids.iter().enumerate() {
            let (node, _) = &nodes[i % nodes.len()];
            let port = 44_000 + (i / nodes.len()) as i32;
            let pod = |n: &str| floor_pod(self.floor_ns, n, node, port);
            let first = format!("pw{i}-a");
            self.floor_create(&first, pod(&first)).await;

            let t = self.floor_delete(&first).await;
            stop.floor
                .push(ms(at(self.floor_gone, &first).expect("gone") - t));

            let second = format!("pw{i}-b");
            let t = self.floor_create(&second, pod(&second)).await;
            start
                .floor
                .push(ms(at(self.floor_running, &second).expect("running") - t));

            let third = format!("pw{i}-c");
            let t = self.floor_delete(&second).await;
            self.floor_create(&third, pod(&third)).await;
            restart
                .floor
                .push(ms(at(self.floor_running, &third).expect("running") - t));
        }
        KwokFigures {
            stop: stop.sorted(),
            start: start.sorted(),
            restart: restart.sorted(),
        }
    }

    /// On the real node: stand-in servers stopped through Berth (the StopCommand
    /// typed, the server saves and exits, its Pod removed) against the same Pod
    /// deleted directly. `Err` says why there is no real node.
    pub async fn real_node(&self) -> Result<Figures, String> {
        let ip = real_node_ip(self.client).await?;
        let node = api_post(
            self.http,
            self.base,
            self.key,
            "/api/nodes/create",
            json!({ "name": "real", "address": ip }),
        )
        .await;
        let node = node["id"].as_str().expect("node id").to_owned();
        let mut stops = Figures::new();
        for i in 0..REAL_ROUNDS {
            let port = REAL_PORTS + i as i32;
            let asked = Instant::now();
            let id = self.deploy_real(&node, port).await;
            self.statuses
                .reached(&id, asked, |x| x.1 == Some(PowerState::Running))
                .await;
            let t = Instant::now();
            self.power(&id, "stop").await;
            let done = self
                .statuses
                .reached(&id, t, |x| x.1 == Some(PowerState::Offline))
                .await;
            stops.berth.push(ms(done - t));
        }
        for i in 0..REAL_ROUNDS {
            let name = format!("real-{i}");
            let pod = real_floor_pod(self.floor_ns, &name, REAL_PORTS + 100 + i as i32);
            self.floor_create(&name, pod).await;
            let t = self.floor_delete(&name).await;
            stops
                .floor
                .push(ms(at(self.floor_gone, &name).expect("gone") - t));
        }
        Ok(stops.sorted())
    }

    async fn deploy_real(&self, node: &str, port: i32) -> String {
        let body = json!({ "image": REAL_IMAGE, "memory": 64, "cpu": 0.1, "ports": port.to_string(),
                           "nodeId": node, "name": "bench-real", "user": "user-0", "primary": port });
        let r = self
            .http
            .post(format!("{}/api/instances/deploy", self.base))
            .header("x-api-key", self.key)
            .json(&body)
            .send()
            .await
            .expect("deploy");
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.expect("json");
        v["Id"].as_str().expect("Id").to_owned()
    }
}

/// The real node's address, or why there is none.
async fn real_node_ip(client: &Client) -> Result<String, String> {
    let unavailable =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cluster/real-node.unavailable");
    if let Ok(why) = std::fs::read_to_string(unavailable) {
        return Err(why.trim().to_owned());
    }
    let node = Api::<KubeNode>::all(client.clone())
        .get(REAL_NODE)
        .await
        .map_err(|e| format!("{REAL_NODE}: {e}"))?;
    node.status
        .and_then(|s| s.addresses)
        .and_then(|a| a.into_iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address)
        .ok_or_else(|| format!("{REAL_NODE} has no InternalIP"))
}

const REAL_NODE: &str = "real-node-1";

/// The stand-in's Pod as Berth would make it on the real node, made directly.
fn real_floor_pod(ns: &str, name: &str, port: i32) -> Pod {
    let mut pod = floor_pod(ns, name, REAL_NODE, port);
    let spec = pod.spec.as_mut().expect("spec");
    spec.containers[0].image = Some("berth.local/gameserver:test".into());
    spec.tolerations = Some(vec![Toleration {
        key: Some("berth.dev/real-node".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }]);
    pod
}
