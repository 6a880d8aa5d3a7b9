//! The Helm chart end to end: lint, schema, server-side dry run, install, the
//! RBAC matrix, the user story under the chart's ServiceAccount, upgrade, uninstall.

use std::path::PathBuf;
use std::time::Duration;

use berth::crd::{Instance, InstanceState};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::common::{self, eventually};
use crate::real_node;

const RELEASE: &str = "berth";
const SA: &str = "berth";

fn chart() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("charts/berth")
        .to_string_lossy()
        .into_owned()
}

async fn helm(args: &[&str]) -> (bool, String) {
    let out = common::run("helm", args).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_chart_lints_renders_valid_objects_and_refuses_bad_values() {
    let client = common::client().await;
    let (ok, text) = helm(&["lint", "--strict", &chart()]).await;
    assert!(ok, "helm lint --strict: {text}");

    let ns = common::namespace(&client, "chart-render").await;
    let (ok, rendered) = helm(&["template", RELEASE, &chart(), "-n", &ns]).await;
    assert!(ok, "{rendered}");
    let dir = std::env::temp_dir().join(format!("berth-chart-{ns}.yaml"));
    std::fs::write(&dir, &rendered).expect("write rendered chart");
    let out = common::run(
        "kubectl",
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &ns,
            "-f",
            dir.to_str().expect("path"),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "server dry run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&dir).ok();

    for (set, complaint) in [
        ("replicas=0", "replicas"),
        ("logFormat=xml", "logFormat"),
        ("service.type=Magic", "/service/type"),
        ("apiKey.sha256=not-hex", "sha256"),
        ("surprise=1", "surprise"),
    ] {
        let (ok, text) = helm(&["template", RELEASE, &chart(), "--set", set]).await;
        assert!(!ok, "--set {set} must be refused");
        assert!(
            text.contains("values don't meet the specifications of the schema")
                && text.contains(complaint),
            "{set}: {text}"
        );
    }
}

async fn can_i(ns: &str, args: &[&str]) -> bool {
    let who = format!("system:serviceaccount:{ns}:{SA}");
    let mut all = vec!["auth", "can-i", "--as", &who];
    all.extend(args);
    let out = common::run("kubectl", &all).await;
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// `kubectl port-forward` to the release's Service: the base URL, and the process.
async fn port_forward(ns: &str) -> (String, tokio::process::Child) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(common::bin("kubectl"))
        .args(["port-forward", "-n", ns, "svc/berth", ":80"])
        .env("KUBECONFIG", common::kubeconfig())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl port-forward");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("port-forward says where it listens")
        .expect("read")
        .expect("a line");
    // "Forwarding from 127.0.0.1:40127 -> 8080"
    let local = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("unexpected port-forward output: {line}"))
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (format!("http://{local}"), child)
}

#[tokio::test]
async fn helm_install_on_the_real_node_then_the_user_story_then_upgrade_and_uninstall() {
    let client = common::client().await;
    common::crds(&client).await;
    let node_ip = real_node::real_node_ip(&client).await;
    let ns = common::namespace(&client, "chart-e2e").await;
    // Berth's own image, built from the release binary and imported on the real
    // node by `make test`; its Pod and the game servers' go to the real node.
    let standin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/catalog/standin.json");
    let real_node = r#"[{"key":"berth.dev/real-node","operator":"Exists","effect":"NoSchedule"}]"#;
    let (ok, text) = helm(&[
        "install",
        RELEASE,
        &chart(),
        "-n",
        &ns,
        "--set",
        "image.repository=berth.local/berth,image.tag=test,image.pullPolicy=IfNotPresent",
        "--set-json",
        r#"nodeSelector={"type":"real"}"#,
        "--set-json",
        &format!("tolerations={real_node}"),
        "--set",
        "instances.initImage=berth.local/install:test",
        "--set-json",
        &format!("instances.tolerations={real_node}"),
        "--set-file",
        &format!("catalog.images.standin={}", standin.display()),
        "--wait",
        "--timeout",
        "120s",
    ])
    .await;
    assert!(ok, "helm install: {text}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let berth_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=berth"))
        .await
        .expect("pods");
    let berth_pod = berth_pods.items.first().expect("Berth's Pod");
    assert_eq!(
        berth_pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(real_node::REAL_NODE),
        "Berth runs in the cluster, on the real node"
    );
    assert_eq!(
        berth_pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
        Some(SA)
    );

    // Every object exists.
    for object in [
        "deployment/berth",
        "service/berth",
        "serviceaccount/berth",
        "role/berth",
        "rolebinding/berth",
        "configmap/berth-catalog",
        "secret/berth-apikey-berth",
        "secret/berth-initial-api-key",
    ] {
        common::kubectl(&["get", "-n", &ns, object]).await;
    }
    common::kubectl(&["get", "clusterrole", &format!("berth-{ns}")]).await;
    common::kubectl(&["get", "clusterrolebinding", &format!("berth-{ns}")]).await;

    // Least privilege.
    for allowed in [
        &["create", "instances.berth.dev", "-n", &ns][..],
        &[
            "patch",
            "instances.berth.dev",
            "--subresource=status",
            "-n",
            &ns,
        ],
        &["create", "pods", "-n", &ns],
        &["list", "secrets", "-n", &ns],
        &["create", "configmaps", "-n", &ns],
        &["create", "events.events.k8s.io", "-n", &ns],
        &[
            "update",
            "leases.coordination.k8s.io/berth-controller",
            "-n",
            &ns,
        ],
        &["list", "nodes"],
        &["get", "pods", "--subresource=log", "-n", &ns],
        &["create", "pods", "--subresource=attach", "-n", &ns],
        &["get", "pods", "--subresource=attach", "-n", &ns],
        &["patch", "pods", "--subresource=resize", "-n", &ns],
        &["list", "pods.metrics.k8s.io", "-n", &ns],
    ] {
        assert!(
            can_i(&ns, allowed).await,
            "the ServiceAccount should be allowed to {allowed:?}"
        );
    }
    for denied in [
        &["list", "secrets", "-n", "default"][..],
        &["get", "secrets", "-n", "kube-system"],
        &["create", "pods", "-n", "default"],
        &["patch", "nodes"],
        &["delete", "nodes"],
        &["create", "instances.berth.dev", "-n", "default"],
        &["update", "leases.coordination.k8s.io/other", "-n", &ns],
        &["create", "clusterroles"],
        &["create", "customresourcedefinitions"],
        &["update", "secrets", "-n", &ns],
        &["create", "pods", "--subresource=exec", "-n", &ns],
        &["create", "pods", "--subresource=attach", "-n", "default"],
        &["get", "pods", "--subresource=log", "-n", "kube-system"],
    ] {
        assert!(
            !can_i(&ns, denied).await,
            "the ServiceAccount must not be allowed to {denied:?}"
        );
    }

    // The user story, through the Service, with Berth using its ServiceAccount
    // from inside the cluster.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let initial = secrets
        .get("berth-initial-api-key")
        .await
        .expect("initial key");
    let key = String::from_utf8(initial.data.expect("data")["api-key"].0.clone()).expect("utf-8");
    let sha_before = secrets
        .get("berth-apikey-berth")
        .await
        .expect("hashed key")
        .data
        .expect("data")["sha256"]
        .clone();
    let signing_before = secrets
        .get("berth-token-signing")
        .await
        .expect("the chart makes the token signing key")
        .data;
    let (mut base, mut forward) = port_forward(&ns).await;
    let http = reqwest::Client::new();
    let call =
        |base: String, method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
            let mut req = http
                .request(method, format!("{base}{path}"))
                .header("x-api-key", &key);
            if let Some(b) = body {
                req = req.json(&b);
            }
            async move {
                let resp = req.send().await.expect("request");
                let status = resp.status().as_u16();
                (
                    status,
                    resp.json::<serde_json::Value>().await.expect("json"),
                )
            }
        };
    let (status, _) = call(base.clone(), reqwest::Method::POST, "/api/users/create",
        Some(json!({ "username": "steve", "email": "steve@example.com", "password": "correct horse", "userId": "u1" }))).await;
    assert_eq!(status, 201);
    let (status, node) = call(
        base.clone(),
        reqwest::Method::POST,
        "/api/nodes/create",
        Some(json!({ "name": "Node 1", "address": node_ip })),
    )
    .await;
    assert_eq!(status, 201);
    let files = real_node::FileServer::start(&node_ip).await;
    let port = common::random_port();
    let (status, deployed) = call(base.clone(), reqwest::Method::POST, "/api/instances/deploy", Some(json!({
        "image": "Berth stand-in game server", "memory": 64, "cpu": 0.2, "ports": port.to_string(),
        "nodeId": node["id"], "name": "standin", "user": "u1", "primary": port,
        "variables": { "INSTALL_FROM": files.addr.to_string() }
    }))).await;
    assert_eq!(status, 201, "{deployed}");
    let id = deployed["Id"].as_str().expect("Id").to_owned();
    let (status, list) = call(base.clone(), reqwest::Method::GET, "/api/instances", None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(90), "instance Running", || async {
        instances.get(&id).await.ok().and_then(|i| i.status?.state) == Some(InstanceState::Running)
    })
    .await;
    let table = common::kubectl(&["get", "inst", "-n", &ns]).await;
    assert!(
        table.contains("Running") && table.contains(&format!("{node_ip}:{port}")),
        "{table}"
    );
    let mut game = tokio::net::TcpStream::connect((node_ip.as_str(), port as u16))
        .await
        .expect("the game server's port");
    let mut hello = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut game, &mut hello)
        .await
        .expect("read");
    assert!(hello.contains("stand-in"), "{hello:?}");

    // Upgrade with a changed value: the key and the instance survive.
    let (ok, text) = helm(&[
        "upgrade",
        RELEASE,
        &chart(),
        "-n",
        &ns,
        "--reuse-values",
        "--set",
        "concurrency=8",
        "--wait",
        "--timeout",
        "120s",
    ])
    .await;
    assert!(ok, "helm upgrade: {text}");
    // The upgrade replaced Berth's Pod: forward to the new one.
    drop(forward);
    (base, forward) = port_forward(&ns).await;
    let deployment = common::kubectl(&[
        "get",
        "deployment",
        "berth",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ])
    .await;
    assert!(
        deployment.contains(r#""name":"BERTH_CONCURRENCY","value":"8""#),
        "{deployment}"
    );
    let sha_after = secrets
        .get("berth-apikey-berth")
        .await
        .expect("hashed key")
        .data
        .expect("data")["sha256"]
        .clone();
    assert_eq!(sha_before, sha_after, "the API key survives an upgrade");
    let signing_after = secrets
        .get("berth-token-signing")
        .await
        .expect("signing key")
        .data;
    assert_eq!(
        signing_before, signing_after,
        "the token signing key survives an upgrade"
    );
    assert_eq!(
        call(base.clone(), reqwest::Method::GET, "/api/users", None)
            .await
            .0,
        200,
        "the key still works"
    );
    assert!(
        instances.get_opt(&id).await.expect("get").is_some(),
        "the instance survives an upgrade"
    );

    // Delete the instance: its Pod goes.
    let (status, _) = call(
        base.clone(),
        reqwest::Method::DELETE,
        "/api/instance/delete",
        Some(json!({ "id": id })),
    )
    .await;
    assert_eq!(status, 201);
    eventually(Duration::from_secs(60), "instance Pod gone", || async {
        pods.list(&ListParams::default().labels(&format!("berth.dev/instance={id}")))
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;

    // Uninstall removes what the chart made and keeps the CRDs, as the README says.
    let (ok, text) = helm(&["uninstall", RELEASE, "-n", &ns, "--wait"]).await;
    assert!(ok, "helm uninstall: {text}");
    for object in [
        "deployment/berth",
        "role/berth",
        "configmap/berth-catalog",
        "secret/berth-apikey-berth",
    ] {
        let out = common::run("kubectl", &["get", "-n", &ns, object]).await;
        assert!(
            !out.status.success(),
            "{object} should be gone after uninstall"
        );
    }
    common::kubectl(&["get", "crd", "instances.berth.dev", "nodes.berth.dev"]).await;
    // Kept (helm.sh/resource-policy: keep): deleting it would end every token.
    common::kubectl(&["get", "-n", &ns, "secret/berth-token-signing"]).await;
    drop(forward);
}
