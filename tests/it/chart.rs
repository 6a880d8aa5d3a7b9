//! The Helm chart end to end: lint, schema, server-side dry run, install, the
//! RBAC matrix, the user story under the chart's ServiceAccount, upgrade, uninstall.

use std::path::PathBuf;
use std::time::Duration;

use berth::crd::{Instance, InstanceState};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::common::{self, eventually};
use crate::server;

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

#[tokio::test]
async fn helm_install_then_the_user_story_then_upgrade_and_uninstall() {
    let client = common::client().await;
    common::crds(&client).await;
    let ns = common::namespace(&client, "chart-e2e").await;
    let (ok, text) = helm(&[
        "install",
        RELEASE,
        &chart(),
        "-n",
        &ns,
        "--wait",
        "--timeout",
        "120s",
    ])
    .await;
    assert!(ok, "helm install: {text}");

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
    ] {
        assert!(
            !can_i(&ns, denied).await,
            "the ServiceAccount must not be allowed to {denied:?}"
        );
    }

    // The user story, with Berth running as the chart's ServiceAccount.
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
    let kubeconfig = common::service_account_kubeconfig(&ns, SA).await;
    let berth = server::spawn_berth_as(&ns, &[], &kubeconfig).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut req = http
            .request(method, format!("{}{path}", berth.base))
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
    let (status, _) = call(reqwest::Method::POST, "/api/users/create",
        Some(json!({ "username": "steve", "email": "steve@example.com", "password": "correct horse", "userId": "u1" }))).await;
    assert_eq!(status, 201);
    let (status, node) = call(
        reqwest::Method::POST,
        "/api/nodes/create",
        Some(json!({ "name": "Node 1", "address": "127.0.10.1" })),
    )
    .await;
    assert_eq!(status, 201);
    let port = common::random_port();
    let (status, deployed) = call(reqwest::Method::POST, "/api/instances/deploy", Some(json!({
        "image": "Python", "memory": 128, "cpu": 0.25, "ports": port.to_string(), "nodeId": node["id"],
        "name": "bot", "user": "u1", "primary": port
    }))).await;
    assert_eq!(status, 201, "{deployed}");
    let id = deployed["Id"].as_str().expect("Id").to_owned();
    let (status, list) = call(reqwest::Method::GET, "/api/instances", None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "instance Running", || async {
        instances.get(&id).await.ok().and_then(|i| i.status?.state) == Some(InstanceState::Running)
    })
    .await;
    let table = common::kubectl(&["get", "inst", "-n", &ns]).await;
    assert!(
        table.contains("Running") && table.contains(&format!("127.0.10.1:{port}")),
        "{table}"
    );

    // Upgrade with a changed value: the key and the instance survive.
    let (ok, text) = helm(&[
        "upgrade",
        RELEASE,
        &chart(),
        "-n",
        &ns,
        "--set",
        "concurrency=8",
        "--wait",
        "--timeout",
        "120s",
    ])
    .await;
    assert!(ok, "helm upgrade: {text}");
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
    assert_eq!(
        call(reqwest::Method::GET, "/api/users", None).await.0,
        200,
        "the key still works"
    );
    assert!(
        instances.get_opt(&id).await.expect("get").is_some(),
        "the instance survives an upgrade"
    );

    // Delete the instance: its Pod goes.
    let (status, _) = call(
        reqwest::Method::DELETE,
        "/api/instance/delete",
        Some(json!({ "id": id })),
    )
    .await;
    assert_eq!(status, 201);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
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
    drop(berth);
    std::fs::remove_file(&kubeconfig).ok();
}
