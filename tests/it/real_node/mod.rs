//! End to end on the test cluster's real node (a kubelet with containerd): what
//! only a real runtime shows. Instances are deployed through Berth's REST API and
//! run the stand-in game server (tests/cluster/images/gameserver) from the test
//! catalog: install files fetched by the init container, the data folder owned by
//! the game server's user, a host port that answers, logs, stdin, a memory limit
//! that really kills, a crash that really restarts, a delete that really removes.
//!
//! Without a real node these tests fail, saying why (`make cluster-up` writes the
//! reason to target/cluster/real-node.unavailable); they never pass without it.
//!
//! This module holds what the tests share; `runs` is a server's life on the node
//! (install, ports, console, limits, restarts), `power` its lifecycle (stop with
//! the StopCommand, kill, reinstall).

mod console;
mod page;
mod power;
mod runs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::crd::{Instance, InstanceState};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, AttachParams, LogParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;
use crate::server::TestServer;

/// The real node's name.
pub const REAL_NODE: &str = "real-node-1";
/// The install file the stand-in's catalog entry fetches.
const INSTALL_FILE: &[u8] = b"not really a jar, but fetched by the install step\n";

fn cluster_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cluster")
}

/// The real node's address; fails the test, saying why, when there is none.
pub async fn real_node_ip(client: &kube::Client) -> String {
    if let Ok(why) = std::fs::read_to_string(cluster_dir().join("real-node.unavailable")) {
        panic!("the test cluster has no real node: {}", why.trim());
    }
    let node = Api::<KubeNode>::all(client.clone())
        .get(REAL_NODE)
        .await
        .unwrap_or_else(|e| {
            panic!("{REAL_NODE} is missing ({e}): bring the cluster up with `make cluster-up`")
        });
    node.status
        .and_then(|s| s.addresses)
        .and_then(|a| a.into_iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address)
        .expect("an InternalIP")
}

/// Arguments that let Berth place game servers on the real node: its taint
/// tolerated, the install step run by the locally built busybox image.
pub const ON_REAL_NODE: [&str; 4] = [
    "--init-image",
    "berth.local/install:test",
    "--instance-tolerations",
    r#"[{"key":"berth.dev/real-node","operator":"Exists","effect":"NoSchedule"}]"#,
];

/// A tiny HTTP server on the node's address serving the install file, counting
/// the requests it answered.
pub struct FileServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How many requests it answered.
    pub served: Arc<AtomicUsize>,
    body: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    /// Serves the install file on `ip`.
    pub async fn start(ip: &str) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("bind on the node's address");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(Mutex::new(INSTALL_FILE.to_vec()));
        let (count, serving) = (served.clone(), body.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = count.clone();
                let body = serving.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let _ = conn.read(&mut request).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    count.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            served,
            body,
            task,
        }
    }

    /// Serves `body` as the install file from now on (a new release of it).
    pub fn set_body(&self, body: &[u8]) {
        *self.body.lock().expect("lock") = body.to_vec();
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Berth server for the real node, a user, a Berth Node at the real node's
/// address, and the install file server.
async fn setup(test: &str) -> (TestServer, String, String, FileServer) {
    setup_with(test, &[]).await
}

/// As [`setup`], with more arguments for Berth.
async fn setup_with(test: &str, more: &[&str]) -> (TestServer, String, String, FileServer) {
    let args: Vec<&str> = ON_REAL_NODE.iter().chain(more).copied().collect();
    let srv = TestServer::start_with(test, &args).await;
    let ip = real_node_ip(&srv.client).await;
    srv.user("u1").await;
    let node = srv.node(&ip).await;
    let files = FileServer::start(&ip).await;
    (srv, ip, node, files)
}

/// Deploys the stand-in game server on `node` with `memory` MiB and extra variables.
async fn deploy(
    srv: &TestServer,
    node: &str,
    files: &FileServer,
    memory: i64,
    vars: Value,
) -> (String, i32) {
    let port = common::random_port();
    let mut variables = json!({ "INSTALL_FROM": files.addr.to_string() });
    if let (Some(all), Some(extra)) = (variables.as_object_mut(), vars.as_object()) {
        all.extend(extra.clone());
    }
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(
                json!({ "image": "Berth stand-in game server", "memory": memory, "cpu": 0.2,
                         "ports": port.to_string(), "nodeId": node, "name": "standin", "user": "u1",
                         "primary": port, "variables": variables }),
            ),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    (a.body["Id"].as_str().expect("Id").to_owned(), port)
}

async fn instance(srv: &TestServer, id: &str) -> Instance {
    Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
        .get(id)
        .await
        .expect("instance")
}

async fn wait_state(
    srv: &TestServer,
    id: &str,
    state: InstanceState,
    timeout: Duration,
) -> Instance {
    let mut last = None;
    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(i) = api.get(id).await {
            if i.status.as_ref().and_then(|s| s.state) == Some(state) {
                return i;
            }
            last = i.status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} not {state:?} within {timeout:?}; status {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn logs(srv: &TestServer, id: &str) -> String {
    Api::<Pod>::namespaced(srv.client.clone(), &srv.ns)
        .logs(
            id,
            &LogParams {
                container: Some("server".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_or_default()
}

/// Runs a command in the game server's container and returns its output.
async fn exec(srv: &TestServer, id: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", "-n", &srv.ns, id, "-c", "server", "--"];
    args.extend(cmd);
    common::kubectl(&args).await
}

/// As [`exec`], but `None` when it fails (no container yet, a file not there).
async fn try_exec(srv: &TestServer, id: &str, cmd: &[&str]) -> Option<String> {
    let mut args = vec!["exec", "-n", &srv.ns, id, "-c", "server", "--"];
    args.extend(cmd);
    let out = common::run("kubectl", &args).await;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Types `line` into the game server's console: an attach to its stdin, with a
/// TTY as the container has one (a real kubelet refuses a TTY-less attach with
/// stderr to a TTY container; kwok never did).
async fn type_line(srv: &TestServer, id: &str, line: &str) {
    let pods: Api<Pod> = Api::namespaced(srv.client.clone(), &srv.ns);
    let mut attached = pods
        .attach(id, &AttachParams::interactive_tty().container("server"))
        .await
        .expect("attach to the game server");
    let mut stdin = attached.stdin().expect("stdin");
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("type");
    stdin.flush().await.expect("flush");
    // Let the line through before the attach goes.
    let mut out = attached.stdout().expect("stdout");
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(2), out.read(&mut buf)).await;
    attached.abort();
}

/// The containerd task id and host pid of the game server's container.
async fn server_process(srv: &TestServer, id: &str) -> (String, u32) {
    let pod = Api::<Pod>::namespaced(srv.client.clone(), &srv.ns)
        .get(id)
        .await
        .expect("pod");
    let container = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().find(|c| c.name == "server"))
        .and_then(|c| c.container_id)
        .expect("a container id");
    let task = container.trim_start_matches("containerd://").to_owned();
    let out = ctr(&["tasks", "ls"]).await;
    let pid = out
        .lines()
        .find(|l| l.starts_with(&task))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no task {task} in:\n{out}"));
    (task, pid)
}

/// `ctr` against the real node's containerd, in the Kubernetes namespace.
async fn ctr(args: &[&str]) -> String {
    let sock = cluster_dir().join("node/containerd/containerd.sock");
    let out = tokio::process::Command::new("ctr")
        .args([
            "--address",
            sock.to_str().expect("path"),
            "--namespace",
            "k8s.io",
        ])
        .args(args)
        .output()
        .await
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
