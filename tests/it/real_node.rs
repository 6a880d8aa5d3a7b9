//! End to end on the test cluster's real node (a kubelet with containerd): what
//! only a real runtime shows. Instances are deployed through Berth's REST API and
//! run the stand-in game server (tests/cluster/images/gameserver) from the test
//! catalog: install files fetched by the init container, the data folder owned by
//! the game server's user, a host port that answers, logs, stdin, a memory limit
//! that really kills, a crash that really restarts, a delete that really removes.
//!
//! Without a real node these tests fail, saying why (`make cluster-up` writes the
//! reason to target/cluster/real-node.unavailable); they never pass without it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth::crd::{Instance, InstanceState};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, AttachParams, ListParams, LogParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, eventually};
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
        let count = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 4096];
                    let _ = conn.read(&mut request).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        INSTALL_FILE.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(INSTALL_FILE).await;
                    count.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, served, task }
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
    let srv = TestServer::start_with(test, &ON_REAL_NODE).await;
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

#[tokio::test]
async fn a_game_server_runs_for_real_through_berths_api() {
    let (srv, ip, node, files) = setup("real-runs").await;
    let (id, port) = deploy(&srv, &node, &files, 64, json!({})).await;
    let inst = wait_state(&srv, &id, InstanceState::Running, Duration::from_secs(60)).await;
    assert_eq!(
        inst.status
            .as_ref()
            .and_then(|s| s.kubernetes_node.as_deref()),
        Some(REAL_NODE)
    );

    // The install step fetched the file, as the game server's user (fsGroup).
    assert!(
        files.served.load(Ordering::SeqCst) >= 1,
        "the install file was never fetched"
    );
    let owned = exec(
        &srv,
        &id,
        &["stat", "-c", "%u:%g %s", "/app/data/standin.jar"],
    )
    .await;
    assert_eq!(owned.trim(), format!("1000:1000 {}", INSTALL_FILE.len()));

    // Its host port answers on the node's address, on TCP and UDP.
    let mut tcp = tokio::net::TcpStream::connect((ip.as_str(), port as u16))
        .await
        .expect("connect");
    let mut line = String::new();
    tcp.read_to_string(&mut line).await.expect("read");
    assert!(line.contains("berth stand-in game server"), "{line:?}");
    let udp = tokio::net::UdpSocket::bind((ip.as_str(), 0))
        .await
        .expect("udp");
    udp.connect((ip.as_str(), port as u16))
        .await
        .expect("udp connect");
    let mut answer = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            udp.send(b"ping").await.expect("send");
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), udp.recv(&mut answer)).await
            {
                return n;
            }
        }
    })
    .await
    .expect("a UDP answer");
    assert!(String::from_utf8_lossy(&answer[..got]).contains("stand-in"));

    // Its output is in the logs, and what is typed reaches its stdin.
    let banner = logs(&srv, &id).await;
    assert!(
        banner.contains("Starting Berth stand-in game server") && banner.contains("Done ("),
        "{banner}"
    );
    assert!(banner.contains("Found standin.jar"), "{banner}");
    type_line(&srv, &id, "say hello from the test").await;
    eventually(
        Duration::from_secs(10),
        "the said line in the logs",
        || async {
            logs(&srv, &id)
                .await
                .contains("[Server] hello from the test")
        },
    )
    .await;

    // Deleted: the Pod and its containers go from the node.
    let (task, _) = server_process(&srv, &id).await;
    let a = srv
        .call("DELETE", "/api/instance/delete", Some(json!({ "id": id })))
        .await;
    assert_eq!(a.status, 201);
    eventually(
        Duration::from_secs(60),
        "the container gone from containerd",
        || async {
            !ctr(&["containers", "ls", "-q"])
                .await
                .lines()
                .any(|l| l == task)
        },
    )
    .await;
    srv.finish().await;
}

#[tokio::test]
async fn a_server_over_its_memory_limit_is_oom_killed_and_says_so() {
    let (srv, _ip, node, files) = setup("real-oom").await;
    // 48 MiB allowed, 160 MiB taken: the kernel kills it, again and again.
    let (id, _) = deploy(&srv, &node, &files, 48, json!({ "HOG_MIB": "160" })).await;
    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    eventually(
        Duration::from_secs(120),
        "the Instance to say it was OOMKilled",
        || async {
            api.get(&id)
                .await
                .ok()
                .and_then(|i| i.status)
                .is_some_and(|s| {
                    s.restarts.unwrap_or(0) >= 1
                        && s.last_exit.as_deref() == Some("OOMKilled (exit 137)")
                })
        },
    )
    .await;
    let failed = wait_state(&srv, &id, InstanceState::Failed, Duration::from_secs(120)).await;
    let ready = failed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .expect("Ready");
    assert_eq!(ready.reason, "CrashLoopBackOff");
    assert!(ready.message.contains("OOMKilled (exit 137)"), "{ready:?}");
    let events = common::kubectl(&[
        "get",
        "events",
        "-n",
        &srv.ns,
        "--field-selector",
        &format!("involvedObject.name={id}"),
    ])
    .await;
    assert!(
        events.contains("Crashed") && events.contains("OOMKilled"),
        "{events}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_killed_server_is_restarted_and_runs_again() {
    let (srv, _ip, node, files) = setup("real-kill").await;
    let (id, _) = deploy(&srv, &node, &files, 64, json!({})).await;
    wait_state(&srv, &id, InstanceState::Running, Duration::from_secs(60)).await;
    let (_, pid) = server_process(&srv, &id).await;
    common::signal(pid, libc::SIGKILL);
    eventually(
        Duration::from_secs(60),
        "the restart counted, and Running again",
        || async {
            let i = instance(&srv, &id).await;
            i.status.is_some_and(|s| {
                s.restarts == Some(1)
                    && s.last_exit
                        .as_deref()
                        .is_some_and(|e| e.contains("exit 137"))
                    && s.state == Some(InstanceState::Running)
            })
        },
    )
    .await;
    let (_, again) = server_process(&srv, &id).await;
    assert_ne!(again, pid, "a new process runs");
    let pods = Api::<Pod>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default().labels(&format!("berth.dev/instance={id}")))
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 1, "restarted in place, not replaced");
    srv.finish().await;
}
