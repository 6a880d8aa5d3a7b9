//! `make bench`: Berth's speed against the raw API server floor, on the local
//! control plane. Each comparison is a ratio taken in the same run (the machines
//! are shared and noisy). Prints a table and writes target/bench/results.json.
//!
//! Phases: latency (sequential deploys vs direct Pods), power (stop, start and
//! restart vs deleting and creating Pods; on the real node a stop by StopCommand vs
//! a plain delete), consoles (1,000 sockets on 100 instances: RSS per socket, line
//! to socket), memory and idle writes at 1,000 instances, throughput (deploys
//! at concurrency 32 vs direct Pods, several runs), then 10,000 instances across
//! 1,000 users for reads (wrk, another process; whole, gzip and paged lists),
//! memory and the restart time (against a plain client's one list of the
//! Instances); then reads during a 2,000-deploy wave, and 100 nodes (throughput
//! against 10, the node controller's writes at steady state).

mod console;
mod cpu;
mod power;
mod scale;
mod wrk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::controller::pod::{PodSettings, build_pod};
use berth::crd::{Instance, InstanceSpec, InstanceState, PortMapping};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node as KubeNode, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use wrk::Load;

const FAKE_NODES: usize = 10;
const LATENCY_DEPLOYS: usize = 200;
const THROUGHPUT_DEPLOYS: usize = 2000;
/// How long the namespaces of earlier runs may take to be emptied.
const LEFTOVERS_GONE_WITHIN: Duration = Duration::from_secs(20 * 60);
/// Runs of the throughput phase; `BENCH_RUNS` overrides (for quick looks).
const THROUGHPUT_RUNS: usize = 3;
const CONCURRENCY: usize = 32;
const USERS: usize = 1000;
/// Instances at the end; `BENCH_INSTANCES` overrides (for quick looks).
const TOTAL_INSTANCES: usize = 10_000;
const IDLE_WINDOW: Duration = Duration::from_secs(60);

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// When each Pod was first seen and first seen Running, and each Instance Running.
#[derive(Clone, Default)]
struct Clock {
    pod_seen: Seen,
    pod_running: Seen,
    instance_running: Seen,
}

fn mark(map: &Seen, name: String) {
    map.lock()
        .expect("lock")
        .entry(name)
        .or_insert_with(Instant::now);
}

fn count(map: &Seen) -> usize {
    map.lock().expect("lock").len()
}

fn at(map: &Seen, name: &str) -> Option<Instant> {
    map.lock().expect("lock").get(name).copied()
}

async fn watch_pods(client: Client, ns: String, clock: Clock) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let _ = watcher(api, watcher::Config::default())
        .try_for_each(|ev| {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                mark(&clock.pod_seen, p.name_any());
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    mark(&clock.pod_running, p.name_any());
                }
            }
            futures::future::ready(Ok(()))
        })
        .await;
}

async fn watch_instances(client: Client, ns: String, clock: Clock) {
    let api: Api<Instance> = Api::namespaced(client, &ns);
    let _ = watcher(api, watcher::Config::default())
        .try_for_each(|ev| {
            if let watcher::Event::Apply(i) | watcher::Event::InitApply(i) = ev
                && i.status.as_ref().and_then(|s| s.state) == Some(InstanceState::Running)
            {
                mark(&clock.instance_running, i.name_any());
            }
            futures::future::ready(Ok(()))
        })
        .await;
}

/// POSTs `body` to Berth's `path` with the API key; the JSON answer.
async fn api_post(http: &reqwest::Client, base: &str, key: &str, path: &str, body: Value) -> Value {
    http.post(format!("{base}{path}"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("bench: POST {path}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("bench: POST {path} answered no JSON: {e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "bench: timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `berth serve` under test, in release mode.
struct Server {
    child: tokio::process::Child,
    base: String,
    pid: u32,
}

async fn start_server(ns: &str, port: u16, log: &Path) -> (Server, Duration) {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/berth");
    assert!(
        bin.exists(),
        "{} is missing: `make bench` builds it",
        bin.display()
    );
    let started = Instant::now();
    let child = tokio::process::Command::new(bin)
        .args([
            "--log-format",
            "json",
            "serve",
            "-n",
            ns,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(power::SERVER_ARGS)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
        .kill_on_drop(true)
        .spawn()
        .expect("start berth");
    let pid = child.id().expect("pid");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    loop {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "berth not ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (Server { child, base, pid }, started.elapsed())
}

/// Peak and current RSS of a process, in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Writes Berth made to the API server so far, of `resource` only when given.
async fn kube_writes(base: &str, resource: Option<&str>) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let of = resource.map(|r| format!("resource=\"{r}\""));
    counter_sum(&text, |l| {
        ["create", "update", "patch", "delete"]
            .iter()
            .any(|v| l.starts_with(&format!("berth_kube_requests_total{{verb=\"{v}\",")))
            && of.as_ref().is_none_or(|r| l.contains(r.as_str()))
    })
}

/// The sum of the counter samples in a metrics page whose lines `wanted` picks.
fn counter_sum(text: &str, wanted: impl Fn(&str) -> bool) -> u64 {
    text.lines()
        .filter(|l| wanted(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until `server` has reconciled each of `instances` since it started.
async fn steady(server: &Server, instances: usize) {
    let by = Instant::now() + Duration::from_secs(300);
    while reconciles(&server.base, "instance").await < instances as u64 {
        assert!(Instant::now() < by, "bench: berth never steady");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reconciles `controller` made since the process started (0 while it does not answer).
async fn reconciles(base: &str, controller: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("{base}/metrics")).await else {
        return 0;
    };
    let series = format!("berth_reconciles_total{{controller=\"{controller}\",");
    counter_sum(&r.text().await.unwrap_or_default(), |l| {
        l.starts_with(&series)
    })
}

/// Deploys through the REST API, handing out host ports per node.
struct Deployer {
    http: reqwest::Client,
    base: String,
    key: String,
    nodes: Vec<String>,
    /// The first host port handed out on each node.
    port_base: i32,
    next: Mutex<usize>,
}

/// One deploy: the instance, when it was sent and when its 201 came.
struct Deployed {
    id: String,
    sent: Instant,
    answered: Instant,
}

impl Deployer {
    fn slot(&self) -> (String, i32) {
        let mut n = self.next.lock().expect("lock");
        let i = *n;
        *n += 1;
        (
            self.nodes[i % self.nodes.len()].clone(),
            self.port_base + (i / self.nodes.len()) as i32,
        )
    }

    async fn deploy(&self, user: &str) -> Deployed {
        self.deploy_as(user, "Python").await
    }

    async fn deploy_as(&self, user: &str, image: &str) -> Deployed {
        let (node, port) = self.slot();
        let body = json!({ "image": image, "memory": 16, "cpu": 0.01, "ports": port.to_string(), "nodeId": node,
                           "name": "bench", "user": user, "primary": port });
        let start = Instant::now();
        let resp = self
            .http
            .post(format!("{}/api/instances/deploy", self.base))
            .header("x-api-key", &self.key)
            .json(&body)
            .send()
            .await
            .expect("deploy request");
        let status = resp.status();
        let v: Value = resp.json().await.expect("json");
        let answered = Instant::now();
        assert_eq!(status, 201, "deploy failed: {v}");
        Deployed {
            id: v["Id"].as_str().expect("Id").to_owned(),
            sent: start,
            answered,
        }
    }

    async fn deploy_many(self: &Arc<Self>, n: usize, users: &[String]) -> Vec<String> {
        let users = Arc::new(users.to_vec());
        futures::stream::iter(0..n)
            .map(|i| {
                let me = self.clone();
                let users = users.clone();
                async move { me.deploy(&users[i % users.len()]).await.id }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }
}

/// The Pod Berth would make for an instance, created directly: the floor.
fn floor_pod(ns: &str, name: &str, kube_node: &str, port: i32) -> Pod {
    let inst: Instance = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
        "metadata": { "name": name, "namespace": ns, "generation": 1 },
        "spec": serde_json::to_value(InstanceSpec {
            display_name: "floor".into(), user_id: "u".into(), image: "example.invalid/floor:1".into(), image_name: None,
            node: "floor".into(), memory: 16, cpu: 0.01, disk: None,
            ports: vec![PortMapping { container_port: port, host_port: port }], primary_port: port,
            variables: Default::default(), suspended: false, power: Default::default(),
            restart_requested_at: None, reinstall: None,
        }).expect("spec")
    }))
    .expect("instance");
    let mut pod = build_pod(
        &inst,
        kube_node,
        None,
        &PodSettings::default(),
        &Default::default(),
    )
    .expect("pod");
    pod.metadata.owner_references = None;
    pod
}

async fn create_floor(
    client: &Client,
    ns: &str,
    names: &[(String, String, i32)],
    concurrency: usize,
) -> HashMap<String, (Instant, Instant)> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(names.iter().cloned())
        .map(|(name, node, port)| {
            let api = api.clone();
            let ns = ns.to_owned();
            async move {
                let start = Instant::now();
                api.create(&PostParams::default(), &floor_pod(&ns, &name, &node, port))
                    .await
                    .expect("floor pod");
                (name, (start, Instant::now()))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Removes what an earlier run left (an interrupted one, or one whose namespaces
/// are still being emptied): its namespaces and fake nodes, and waits until the
/// namespaces are gone. A leftover node with this run's addresses would make them
/// ambiguous (Berth refuses to place instances on an ambiguous address), and the
/// garbage collection of a finished run's ~24,000 objects keeps etcd and the API
/// server busy for minutes: measured during it, this run's figures halved.
async fn remove_leftovers(client: &Client) {
    let lp = ListParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in namespaces
        .list(&lp.clone().labels("berth.dev/bench=true"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let _ = namespaces
            .delete(&n.name_any(), &DeleteParams::background())
            .await;
    }
    let nodes: Api<KubeNode> = Api::all(client.clone());
    for n in nodes
        .list(&lp.labels("type=kwok-bench"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let _ = nodes.delete(&n.name_any(), &DeleteParams::default()).await;
    }
    let deadline = Instant::now() + LEFTOVERS_GONE_WITHIN;
    loop {
        let left = namespaces
            .list(&ListParams::default().labels("berth.dev/bench=true"))
            .await
            .map_or(0, |l| l.items.len());
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} namespaces of earlier runs still terminating after {LEFTOVERS_GONE_WITHIN:?}"
        );
        eprintln!("bench: waiting for {left} namespaces of earlier runs to be emptied");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Fake nodes `from..to` of this run (name, address), Ready.
async fn fake_nodes(
    client: &Client,
    run: &str,
    nodes: std::ops::Range<usize>,
) -> Vec<(String, String)> {
    let api: Api<KubeNode> = Api::all(client.clone());
    let mut out = Vec::new();
    // Addresses of this run's own (the second octet from the run id), so that two
    // runs never share one even if a cleanup failed.
    let octet = 30 + u8::from_str_radix(&run[..2], 16).unwrap_or(0) % 200;
    for i in nodes {
        let name = format!("kwok-bench-{run}-{i}");
        let ip = format!("127.{octet}.{}.{}", 30 + i / 200, i % 200 + 1);
        let node: KubeNode = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name, "type": "kwok-bench" },
                          "annotations": { "kwok.x-k8s.io/node": "fake", "berth.dev/test-node-ip": ip } }
        }))
        .expect("node");
        api.create(&PostParams::default(), &node)
            .await
            .expect("create fake node");
        out.push((name, ip));
    }
    for (name, _) in &out {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = api
                .get(name)
                .await
                .ok()
                .and_then(|n| n.status?.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "fake node {name} not Ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

/// Registers a Berth Node for each fake node (name, address) through the API; their ids.
async fn register_nodes(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    nodes: &[(String, String)],
) -> Vec<String> {
    let mut ids = Vec::new();
    for (_, ip) in nodes {
        let body = json!({ "name": ip, "address": ip });
        let r = api_post(http, base, key, "/api/nodes/create", body).await;
        ids.push(r["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// A constant, unless the environment variable `name` says otherwise.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let total_instances = knob("BENCH_INSTANCES", TOTAL_INSTANCES);
    let throughput_runs = knob("BENCH_RUNS", THROUGHPUT_RUNS);
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run `make bench`"
    );
    let client = Client::try_default().await.expect("client");
    remove_leftovers(&client).await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let ns = format!("bench-{run}");
    let floor_ns = format!("bench-floor-{run}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in [&ns, &floor_ns] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({ "metadata": { "name": n, "labels": { "berth.dev/bench": "true" } } }),
                )
                .expect("ns"),
            )
            .await
            .expect("namespace");
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // the default ServiceAccounts
    berth::crd::apply(&client, Duration::from_secs(30))
        .await
        .expect("crds");
    let catalog: ConfigMap = {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/berth/catalog");
        let mut data = serde_json::Map::new();
        for e in std::fs::read_dir(dir).expect("catalog") {
            let p = e.expect("entry").path();
            data.insert(
                p.file_name().expect("name").to_string_lossy().into_owned(),
                Value::String(std::fs::read_to_string(&p).expect("read")),
            );
        }
        for (name, entry) in power::catalog_entries() {
            data.insert(name, Value::String(entry));
        }
        serde_json::from_value(json!({ "metadata": { "name": "catalog", "labels": { "berth.dev/catalog": "true" } }, "data": data })).expect("cm")
    };
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &catalog)
        .await
        .expect("catalog");
    let (_, key) =
        berth::store::apikeys::create(&Api::namespaced(client.clone(), &ns), Some("bench".into()))
            .await
            .expect("key");
    let nodes = fake_nodes(&client, &run, 0..FAKE_NODES).await;
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .map_or(String::new(), |kb| format!(
                "{} GiB",
                kb.parse::<u64>().unwrap_or(0) / 1024 / 1024
            ))
    );
    eprintln!(
        "bench: namespace {ns}, {} fake nodes, {machine}",
        nodes.len()
    );

    let clock = Clock::default();
    tokio::spawn(watch_pods(client.clone(), ns.clone(), clock.clone()));
    tokio::spawn(watch_instances(client.clone(), ns.clone(), clock.clone()));
    let floor_clock = Clock::default();
    tokio::spawn(watch_pods(
        client.clone(),
        floor_ns.clone(),
        floor_clock.clone(),
    ));
    let statuses = power::Statuses::default();
    tokio::spawn(statuses.clone().watch(client.clone(), ns.clone()));
    let floor_gone = Seen::default();
    tokio::spawn(power::watch_gone(
        client.clone(),
        floor_ns.clone(),
        floor_gone.clone(),
    ));

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (mut server, _) = start_server(&ns, port, &out_dir.join("berth.log")).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http");
    let (rss_peak_0, _) = rss(server.pid);

    // Users and Berth Nodes.
    let users: Vec<String> = futures::stream::iter(0..USERS)
        .map(|i| {
            let http = http.clone();
            let (base, key) = (server.base.clone(), key.clone());
            async move {
                let id = format!("user-{i}");
                let r = http.post(format!("{base}/api/users/create")).header("x-api-key", key)
                    .json(&json!({ "username": id, "email": format!("{id}@bench.invalid"), "password": "bench-password", "userId": id }))
                    .send().await.expect("user");
                assert_eq!(r.status(), 201);
                id
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let berth_nodes = register_nodes(&http, &server.base, &key, &nodes).await;
    let deployer = Arc::new(Deployer {
        http: http.clone(),
        base: server.base.clone(),
        key: key.clone(),
        nodes: berth_nodes,
        port_base: 10_000,
        next: Mutex::new(0),
    });
    eprintln!("bench: {USERS} users, {} nodes ready", nodes.len());

    // 1. Latency: sequential deploys vs direct Pods.
    let mut to_pod = Vec::new();
    let mut to_running = Vec::new();
    let mut to_created = Vec::new();
    for _ in 0..LATENCY_DEPLOYS {
        let Deployed {
            id,
            sent: start,
            answered,
        } = deployer.deploy(&users[0]).await;
        to_created.push(ms(answered - start));
        wait_until("instance Running", Duration::from_secs(30), || {
            at(&clock.instance_running, &id).is_some()
        })
        .await;
        to_pod.push(ms(at(&clock.pod_seen, &id).expect("pod seen") - start));
        to_running.push(ms(
            at(&clock.instance_running, &id).expect("running") - start
        ));
    }
    let mut floor_to_pod = Vec::new();
    let mut floor_to_running = Vec::new();
    for i in 0..LATENCY_DEPLOYS {
        let name = format!("lat-{i}");
        let (node, _) = &nodes[i % nodes.len()];
        let started = create_floor(
            &client,
            &floor_ns,
            &[(
                name.clone(),
                node.clone(),
                40_000 + (i / nodes.len()) as i32,
            )],
            1,
        )
        .await;
        let (start, created) = started[&name];
        wait_until("floor Running", Duration::from_secs(30), || {
            at(&floor_clock.pod_running, &name).is_some()
        })
        .await;
        floor_to_pod.push(ms(created - start));
        floor_to_running.push(ms(
            at(&floor_clock.pod_running, &name).expect("running") - start
        ));
    }
    for v in [
        &mut to_created,
        &mut to_pod,
        &mut to_running,
        &mut floor_to_pod,
        &mut floor_to_running,
    ] {
        v.sort_by(f64::total_cmp);
    }
    eprintln!("bench: latency done");

    // Power: stop, start, restart, one instance at a time, vs the floor.
    let power_instances = knob("BENCH_POWER", power::INSTANCES);
    let cycled: Vec<String> = futures::stream::iter(0..power_instances)
        .map(|i| {
            let (deployer, user) = (deployer.clone(), users[i % users.len()].clone());
            async move { deployer.deploy_as(&user, power::KWOK_IMAGE).await.id }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    wait_until("power instances Running", Duration::from_secs(300), || {
        cycled
            .iter()
            .all(|id| at(&clock.instance_running, id).is_some())
    })
    .await;
    let bench = power::Bench {
        client: &client,
        http: &http,
        base: &server.base,
        key: &key,
        floor_ns: &floor_ns,
        statuses: &statuses,
        floor_running: &floor_clock.pod_running,
        floor_gone: &floor_gone,
    };
    let cycles = bench.kwok(&cycled, &nodes).await;
    eprintln!("bench: power on kwok done");
    let real_stops = bench.real_node().await;
    eprintln!("bench: power on the real node done");
    let consoles = console::run(&bench, &ns, &cycled, server.pid, &out_dir.join("console")).await;
    eprintln!("bench: consoles done");

    // 4/5. Memory and idle writes at 1,000 instances.
    let have = LATENCY_DEPLOYS + power_instances;
    deployer.deploy_many(1000 - have, &users).await;
    wait_until("1,000 Running", Duration::from_secs(300), || {
        count(&clock.instance_running) >= 1000
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await; // events and node status settle
    let (rss_peak_1k, _) = rss(server.pid);
    let writes_before = kube_writes(&server.base, None).await;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_writes = kube_writes(&server.base, None).await - writes_before;
    eprintln!("bench: idle window done ({idle_writes} writes)");

    // 2. Throughput: deploys at concurrency 32 vs direct Pods, several runs.
    let mut berth_rates = Vec::new();
    let mut floor_rates = Vec::new();
    let mut berth_cpu = Vec::new();
    let mut floor_cpu = Vec::new();
    for r in 0..throughput_runs {
        let before = count(&clock.instance_running);
        let cpu_before = cpu::snapshot();
        let profile =
            cpu::apiserver_profile(10, out_dir.join(format!("apiserver-berth-{r}.pprof")));
        let start = Instant::now();
        deployer.deploy_many(THROUGHPUT_DEPLOYS, &users).await;
        wait_until("throughput run Running", Duration::from_secs(600), || {
            count(&clock.instance_running) >= before + THROUGHPUT_DEPLOYS
        })
        .await;
        berth_rates.push(THROUGHPUT_DEPLOYS as f64 / start.elapsed().as_secs_f64());
        berth_cpu.push(cpu::per_item(
            &cpu_before,
            &cpu::snapshot(),
            THROUGHPUT_DEPLOYS,
        ));
        let _ = profile.await;

        let names: Vec<(String, String, i32)> = (0..THROUGHPUT_DEPLOYS)
            .map(|i| {
                (
                    format!("tp{r}-{i}"),
                    nodes[i % nodes.len()].0.clone(),
                    41_000 + (r * THROUGHPUT_DEPLOYS + i) as i32 / nodes.len() as i32,
                )
            })
            .collect();
        let before = count(&floor_clock.pod_running);
        let cpu_before = cpu::snapshot();
        let profile =
            cpu::apiserver_profile(10, out_dir.join(format!("apiserver-floor-{r}.pprof")));
        let start = Instant::now();
        create_floor(&client, &floor_ns, &names, CONCURRENCY).await;
        wait_until("floor run Running", Duration::from_secs(600), || {
            count(&floor_clock.pod_running) >= before + THROUGHPUT_DEPLOYS
        })
        .await;
        floor_rates.push(THROUGHPUT_DEPLOYS as f64 / start.elapsed().as_secs_f64());
        floor_cpu.push(cpu::per_item(
            &cpu_before,
            &cpu::snapshot(),
            THROUGHPUT_DEPLOYS,
        ));
        let _ = profile.await;
        eprintln!(
            "bench: throughput run {r}: berth {:.0}/s, floor {:.0}/s",
            berth_rates[r], floor_rates[r]
        );
    }

    // 3/4. 10,000 instances: memory, reads, restart.
    let now = count(&clock.instance_running);
    deployer
        .deploy_many(total_instances.saturating_sub(now), &users)
        .await;
    wait_until("10,000 Running", Duration::from_secs(900), || {
        count(&clock.instance_running) >= total_instances
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_peak_10k, rss_now_10k) = rss(server.pid);
    eprintln!("bench: {total_instances} instances running");
    let sample_user = users[1].clone();
    let sample_instance = {
        let r: Value = http
            .post(format!("{}/api/getUserInstance", server.base))
            .header("x-api-key", &key)
            .json(&json!({ "userId": sample_user }))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        r[0]["Id"].as_str().expect("an instance").to_owned()
    };
    // 6. Restart to /readyz with 10,000 instances; the reads go to the last
    // process started, whose peak RSS is then that of a process that started
    // with 10,000 instances and served them (not of the whole run: consoles, waves).
    // Its floor: a plain client's one list of the Instances (no limit: a consistent
    // list from the API server's cache, the cheapest way to know them all). Each
    // round starts from a steady Berth (every instance reconciled since its start)
    // and takes the floor just before the restart: the machine drifts (the garbage
    // collector, kwok, the reads just run), and three restarts then three lists
    // compared a busier minute with a calmer one; a restart right after the last
    // one's readiness met its controllers still listing the Pods.
    let mut restarts = Vec::new();
    let mut raw_lists = Vec::new();
    for _ in 0..3 {
        steady(&server, total_instances).await;
        let started = Instant::now();
        let all = Api::<Instance>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .expect("list instances");
        assert!(all.items.len() >= total_instances, "every instance listed");
        raw_lists.push(ms(started.elapsed()));
        let _ = server.child.start_kill();
        let _ = server.child.wait().await;
        let (s, took) = start_server(&ns, port, &out_dir.join("berth-restart.log")).await;
        server = s;
        restarts.push(ms(took));
    }
    // The reads measure serving, not a start: its controllers' first pass (the
    // Pods' list, a reconcile of each instance) is done first.
    steady(&server, total_instances).await;
    let reads = [
        ("GET /api/instances", Load::new("GET", "/api/instances")),
        (
            "GET /api/instances, gzip",
            Load {
                headers: &[("accept-encoding", "gzip")],
                ..Load::new("GET", "/api/instances")
            },
        ),
        (
            "GET /api/instances?page=1&perPage=100",
            Load::new("GET", "/api/instances?page=1&perPage=100"),
        ),
        (
            "POST /api/getUserInstance",
            Load {
                body: Some(json!({ "userId": sample_user })),
                ..Load::new("POST", "/api/getUserInstance")
            },
        ),
        (
            "POST /api/getInstance",
            Load {
                body: Some(json!({ "id": sample_instance })),
                ..Load::new("POST", "/api/getInstance")
            },
        ),
        ("GET /api/users", Load::new("GET", "/api/users")),
    ];
    let mut read_figures = Vec::new();
    for (name, load) in reads {
        read_figures.push((name, wrk::run(&server.base, &key, load, &out_dir).await));
    }
    let reads = read_figures;
    let (rss_peak_fresh, _) = rss(server.pid);

    eprintln!("bench: restarts done");

    // 7. Reads during a deploy wave, then 100 nodes.
    let during_wave = scale::reads_during_wave(
        &deployer,
        &users,
        &clock,
        (&http, &server.base, &key),
        &sample_instance,
    )
    .await;
    eprintln!("bench: reads during a wave done");
    let (hundred, more_nodes) = scale::hundred_nodes(
        &deployer,
        &users,
        &clock,
        (&client, &http, &run),
        (&server.base, &key),
    )
    .await;
    eprintln!("bench: 100 nodes done");

    let latency = json!({
        "deploys": LATENCY_DEPLOYS,
        "to_pod_ms": { "p50": percentile(&to_pod, 0.5), "p99": percentile(&to_pod, 0.99) },
        "to_running_ms": { "p50": percentile(&to_running, 0.5), "p99": percentile(&to_running, 0.99) },
        "floor_to_pod_ms": { "p50": percentile(&floor_to_pod, 0.5), "p99": percentile(&floor_to_pod, 0.99) },
        "floor_to_running_ms": { "p50": percentile(&floor_to_running, 0.5), "p99": percentile(&floor_to_running, 0.99) },
        "ratio_to_running_p50": percentile(&to_running, 0.5) / percentile(&floor_to_running, 0.5),
        "to_created_ms": { "p50": percentile(&to_created, 0.5), "p99": percentile(&to_created, 0.99) },
    });
    let throughput = json!({
        "deploys": THROUGHPUT_DEPLOYS, "concurrency": CONCURRENCY, "runs": throughput_runs,
        "berth_per_s": berth_rates, "floor_per_s": floor_rates,
        "median_berth_per_s": median(berth_rates.clone()), "median_floor_per_s": median(floor_rates.clone()),
        "ratio": median(berth_rates.clone()) / median(floor_rates.clone()),
        "cpu_ms_per_deploy": berth_cpu, "floor_cpu_ms_per_pod": floor_cpu,
    });
    let reads_json: Vec<Value> = reads
        .iter()
        .map(
            |(n, w)| json!({ "endpoint": n, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "rps": w.rps }),
        )
        .collect();
    let results = json!({
        "machine": machine,
        "instances": total_instances,
        "latency": latency,
        "throughput": throughput,
        "reads_at_10000": reads_json,
        "memory_mib": { "peak_at_0": rss_peak_0, "peak_at_1000": rss_peak_1k, "peak_at_10000": rss_peak_10k, "rss_at_10000": rss_now_10k, "peak_restarted_at_10000": rss_peak_fresh },
        "idle_writes_60s_at_1000": idle_writes,
        "restart_to_ready_ms": { "runs": restarts, "median": median(restarts.clone()) },
        "raw_list_of_instances_ms": { "runs": raw_lists, "median": median(raw_lists.clone()) },
        "reads_during_wave": {
            "deploys": THROUGHPUT_DEPLOYS, "concurrency": CONCURRENCY, "deploys_per_s": during_wave.deploys_per_s,
            "list": { "per_s": 20, "reads": during_wave.list.len(), "p50_ms": percentile(&during_wave.list, 0.5), "p99_ms": percentile(&during_wave.list, 0.99) },
            "get_instance": { "per_s": 200, "reads": during_wave.get.len(), "p50_ms": percentile(&during_wave.get, 0.5), "p99_ms": percentile(&during_wave.get, 0.99) },
        },
        "hundred_nodes": {
            "deploys_per_s_10_nodes": hundred.per_s_10, "deploys_per_s_100_nodes": hundred.per_s_100,
            "node_writes_per_min": hundred.node_writes_per_min, "writes_per_min": hundred.writes_per_min,
        },
        "power_kwok": { "stop": cycles.stop.json(), "start": cycles.start.json(), "restart": cycles.restart.json() },
        "consoles": consoles.json(),
        "power_real_node_stop": match &real_stops {
            Ok(f) => f.json(),
            Err(why) => json!({ "skipped": why }),
        },
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results).expect("json"),
    )
    .expect("write results");

    println!("\nBerth benchmarks ({machine}; medians; ratios within this run)\n");
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "figure", "berth", "floor", "ratio"
    );
    let row =
        |name: &str, b: f64, f: f64| println!("{name:<44} {b:>12.1} {f:>12.1} {:>8.2}", b / f);
    row(
        "deploy → Pod exists, p50 (ms)",
        percentile(&to_pod, 0.5),
        percentile(&floor_to_pod, 0.5),
    );
    row(
        "deploy → Pod exists, p99 (ms)",
        percentile(&to_pod, 0.99),
        percentile(&floor_to_pod, 0.99),
    );
    row(
        "deploy → Running, p50 (ms)",
        percentile(&to_running, 0.5),
        percentile(&floor_to_running, 0.5),
    );
    row(
        "deploy → Running, p99 (ms)",
        percentile(&to_running, 0.99),
        percentile(&floor_to_running, 0.99),
    );
    row(
        "throughput, 2,000 at c=32 (instances/s)",
        median(berth_rates.clone()),
        median(floor_rates.clone()),
    );
    for (what, f) in [
        ("stop", &cycles.stop),
        ("start", &cycles.start),
        ("restart", &cycles.restart),
    ] {
        for p in [0.5, 0.99] {
            row(
                &format!("{what} → state reached, p{} (ms)", (p * 100.0) as u32),
                percentile(&f.berth, p),
                percentile(&f.floor, p),
            );
        }
    }
    match &real_stops {
        Ok(f) => row(
            "real node: stop by StopCommand vs delete, p50 (ms)",
            percentile(&f.berth, 0.5),
            percentile(&f.floor, 0.5),
        ),
        Err(why) => println!("real node stop: skipped ({why})"),
    }
    println!(
        "console line → socket p50 / p99 (ms): {:.1} / {:.1}; → every socket of its instance p50 / p99: {:.1} / {:.1}",
        percentile(&consoles.berth, 0.5),
        percentile(&consoles.berth, 0.99),
        percentile(&consoles.every, 0.5),
        percentile(&consoles.every, 0.99)
    );
    println!(
        "console: {} sockets on {} instances, {:.1} KiB of Berth's RSS per socket, {} lines missed",
        consoles.sockets, consoles.instances, consoles.kib_per_socket, consoles.missed
    );
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        format!("reads at {total_instances} instances"),
        "p50 ms",
        "p99 ms",
        "req/s"
    );
    for (n, w) in &reads {
        println!(
            "{n:<44} {:>10.2} {:>10.2} {:>10.0}",
            w.p50_ms, w.p99_ms, w.rps
        );
    }
    println!();
    println!(
        "{:<44} {:>10.1}",
        "peak RSS at 0 instances (MiB)", rss_peak_0
    );
    println!(
        "{:<44} {:>10.1}",
        "peak RSS at 1,000 instances (MiB)", rss_peak_1k
    );
    println!(
        "{:<44} {:>10.1}",
        format!("peak RSS at {total_instances} instances (MiB)"),
        rss_peak_10k
    );
    println!(
        "{:<44} {:>10.1}",
        format!("peak RSS, restarted at {total_instances} + reads (MiB)"),
        rss_peak_fresh
    );
    println!(
        "{:<44} {:>10}",
        "API writes in 60 s idle at 1,000", idle_writes
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        format!("restart to /readyz at {total_instances} / floor (ms)"),
        median(restarts),
        median(raw_lists)
    );
    println!(
        "{:<44} {:>10.1} {:>10.1}",
        "deploy → 201 p50 / p99, idle (ms)",
        percentile(&to_created, 0.5),
        percentile(&to_created, 0.99)
    );
    println!(
        "during 2,000 deploys at c=32 ({:.0}/s): GET /api/instances (20/s) p50 / p99 {:.1} / {:.1} ms, getInstance (200/s) {:.1} / {:.1} ms",
        during_wave.deploys_per_s,
        percentile(&during_wave.list, 0.5),
        percentile(&during_wave.list, 0.99),
        percentile(&during_wave.get, 0.5),
        percentile(&during_wave.get, 0.99)
    );
    println!(
        "100 nodes: deploys {:.1}/s vs {:.1}/s on 10 ({:.2}); writes in a steady minute: {} to Berth Nodes, {} in all",
        hundred.per_s_100,
        hundred.per_s_10,
        hundred.per_s_100 / hundred.per_s_10,
        hundred.node_writes_per_min,
        hundred.writes_per_min
    );
    if let (Some(b), Some(f)) = (berth_cpu.last(), floor_cpu.last()) {
        println!("\nCPU ms per deploy (Berth) / per Pod (floor), last throughput run:");
        for (name, ms) in b {
            println!(
                "{name:<44} {ms:>10.2} {:>10.2}",
                f.get(name).copied().unwrap_or(0.0)
            );
        }
    }
    println!("\nwritten to target/bench/results.json");

    let _ = server.child.start_kill();
    for n in [&ns, &floor_ns] {
        let _ = namespaces.delete(n, &DeleteParams::background()).await;
    }
    let kube_nodes: Api<KubeNode> = Api::all(client.clone());
    for (name, _) in nodes.iter().chain(&more_nodes) {
        let _ = kube_nodes.delete(name, &DeleteParams::default()).await;
    }
}
