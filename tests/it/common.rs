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

/// A client for the test control plane.
pub async fn client() -> Client {
    let path = kubeconfig();
    let kc = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
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
