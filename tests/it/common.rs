//! Helpers shared by the integration tests: the client, a namespace per test, and
//! the control plane's own binaries (kubectl, helm).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// Label on every namespace a test creates, so leftovers can be found.
pub const TEST_LABEL: &str = "berth.dev/test";

/// Path of the test control plane's kubeconfig, from KUBECONFIG. Panics with the way
/// to get one when it is missing: a test that needs the cluster must not pass without it.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "KUBECONFIG is not set: these tests need the test control plane; run them with `make test`"
        ),
    }
}

/// The client configuration of the test control plane.
pub async fn kube_config() -> Config {
    let path = kubeconfig();
    let kc = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig is usable")
}

/// A client for the test control plane.
pub async fn client() -> Client {
    Client::try_from(kube_config().await).expect("client builds")
}

/// A control plane binary (kubectl, helm, ...).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("BERTH_CLUSTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cluster/bin"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the control plane with `make cluster-up`",
        path.display()
    );
    path
}

/// Runs a control plane binary against the test cluster and returns its output.
pub async fn run(name: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(bin(name))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs kubectl and returns stdout; panics with stderr when it fails.
pub async fn kubectl(args: &[&str]) -> String {
    let out = run("kubectl", args).await;
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl until it succeeds (discovery of new CRDs can lag), returning stdout.
pub async fn kubectl_eventually(args: &[&str], timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let out = run("kubectl", args).await;
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubectl {args:?} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates a fresh namespace named after the test and waits for its default
/// ServiceAccount (Pods cannot be created before it exists).
pub async fn namespace(client: &Client, test: &str) -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let name = format!("t-{}-{suffix}", test.replace('_', "-"));
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { TEST_LABEL: "true" } }
    }))
    .expect("namespace literal");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create test namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    eventually(
        Duration::from_secs(30),
        "default ServiceAccount",
        || async { sas.get_opt("default").await.ok().flatten().is_some() },
    )
    .await;
    name
}

/// Installs the CRDs once per test run.
pub async fn crds(client: &Client) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        berth::crd::apply(client, Duration::from_secs(30))
            .await
            .expect("CRDs apply and become Established");
    })
    .await;
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A host port unlikely to be used by another test running at the same time.
pub fn random_port() -> i32 {
    30000 + (uuid::Uuid::new_v4().as_u128() % 30000) as i32
}

/// A fake node of a test's own (kwok makes it Ready), so a test that disturbs a
/// node, or fills it, does not disturb others. Deleted by [`FakeNode::delete`].
pub struct FakeNode {
    /// The Kubernetes node's name.
    pub name: String,
    /// Its InternalIP.
    pub ip: String,
}

impl FakeNode {
    /// Creates the node and waits until it is Ready.
    pub async fn create(client: &Client) -> Self {
        Self::create_with(client, None, None).await
    }

    /// Creates a node at `ip` (random when `None`) whose `kubernetes.io/hostname`
    /// label is `hostname` (its name when `None`), and waits until it is Ready.
    pub async fn create_with(client: &Client, ip: Option<&str>, hostname: Option<&str>) -> Self {
        use k8s_openapi::api::core::v1::Node;
        let n = uuid::Uuid::new_v4().as_u128();
        let name = format!(
            "kwok-test-{}",
            &uuid::Uuid::from_u128(n).simple().to_string()[..8]
        );
        let ip = ip.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "127.0.{}.{}",
                20 + (n % 200) as u8,
                1 + ((n >> 8) % 250) as u8
            )
        });
        let hostname = hostname.unwrap_or(&name);
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": { "kubernetes.io/hostname": hostname, "type": "kwok-test", TEST_LABEL: "true" },
                "annotations": { "kwok.x-k8s.io/node": "fake", "berth.dev/test-node-ip": ip }
            }
        }))
        .expect("node literal");
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create fake node");
        eventually(Duration::from_secs(30), "fake node Ready", || async {
            nodes
                .get(&name)
                .await
                .ok()
                .and_then(|n| n.status?.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await;
        Self { name, ip }
    }

    /// Sets the node's Ready condition, as a kubelet would report it. kwok is told
    /// to let go of the node first (it would set it Ready again at once), so the node
    /// stays as set for the rest of the test.
    pub async fn set_ready(&self, client: &Client, ready: bool) {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(client.clone());
        let release =
            serde_json::json!({ "metadata": { "annotations": { "kwok.x-k8s.io/node": null } } });
        nodes
            .patch(
                &self.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(release),
            )
            .await
            .expect("release node from kwok");
        let node = nodes.get_status(&self.name).await.expect("get node");
        let mut conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
        for c in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
            c.status = if ready { "True" } else { "False" }.into();
            c.reason = Some(
                if ready {
                    "KubeletReady"
                } else {
                    "KubeletNotReady"
                }
                .into(),
            );
            c.message = Some(format!("set by a test: ready={ready}"));
        }
        let patch = serde_json::json!({ "status": { "conditions": conditions } });
        nodes
            .patch_status(
                &self.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(patch),
            )
            .await
            .expect("patch node status");
    }

    /// Deletes the node.
    pub async fn delete(self, client: &Client) {
        use k8s_openapi::api::core::v1::Node;
        let _ = Api::<Node>::all(client.clone())
            .delete(&self.name, &Default::default())
            .await;
    }
}

/// How many Instances in `ns` are Running.
pub async fn running_instances(client: &Client, ns: &str) -> usize {
    Api::<berth::crd::Instance>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|i| {
                    i.status.as_ref().and_then(|s| s.state)
                        == Some(berth::crd::InstanceState::Running)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Sends `signal` to a process this test started (SIGSTOP, SIGCONT, SIGTERM, ...).
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child process the calling test started and still owns.
    let sent = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

/// Waits until `read` gives the same value three times in a row, 300 ms apart
/// (quiescence: nothing more happens), and returns it.
pub async fn settled<F, Fut, T>(timeout: Duration, what: &str, mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: PartialEq + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = read().await;
    let mut same = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = read().await;
        if now == last {
            same += 1;
            if same == 2 {
                return now;
            }
        } else {
            same = 0;
            last = now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} kept changing for {timeout:?} (last {last:?})"
        );
    }
}

/// A kubeconfig for ServiceAccount `sa` of `ns`, with a token from the TokenRequest API.
pub async fn service_account_kubeconfig(ns: &str, sa: &str) -> PathBuf {
    let token = kubectl(&["create", "token", sa, "-n", ns, "--duration", "1h"]).await;
    let admin = std::fs::read_to_string(kubeconfig()).expect("admin kubeconfig");
    let admin: serde_json::Value = serde_yaml::from_str(&admin).expect("kubeconfig yaml");
    let cluster = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "c", "cluster": cluster }],
        "users": [{ "name": "sa", "user": { "token": token.trim() } }],
        "contexts": [{ "name": "sa", "context": { "cluster": "c", "user": "sa", "namespace": ns } }],
        "current-context": "sa"
    });
    let path = std::env::temp_dir().join(format!("berth-sa-{ns}-{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).expect("yaml")).expect("write kubeconfig");
    path
}
